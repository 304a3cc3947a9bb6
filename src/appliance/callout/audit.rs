//! The audit trail: one JSON line per decision, in `<home>/audit.log` (rotated by size), in
//! the JetStream stream `zester-audit`, and as a tracing event.
//!
//! The callout hands records to a bounded queue and never waits on the disk or the network
//! ([`AuditSink::record`]); a writer task numbers each record and links it to the one before
//! (`node`, `seq`, `prev`: the hash chain of [`crate::wire::audit`], continued at start from the
//! newest file), appends it (mode 0600, flushed, so a failing disk is seen at once), and hands
//! the line as written to a publisher task that sends it to the stream with an ack, in order,
//! retrying with backoff; its backlog is bounded too. Whatever cannot be written or published
//! is counted ([`AuditSink::health`]), and with `[audit] on_overflow = "refuse"` the callout
//! refuses new connections while records cannot be written ([`AuditSink::refusal`]).
//! Records hold who and why — never a JWT, a seed, a password or a token.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::identity::time::rfc3339;
use crate::wire::audit::{ChainHead, Overflow};

/// How many records may wait for the writer by default (`[audit] queue`) before new ones are
/// dropped (and counted) or, with `on_overflow = "refuse"`, connections are refused.
pub const QUEUE: usize = 8192;

/// How many written lines may wait for the stream (while it is unreachable) before further
/// ones are left out of it (and counted); they stay in `audit.log`, and a restart publishes
/// what the stream lacks from the files still kept.
pub const STREAM_BACKLOG: usize = 16_384;

/// How many lines go to the stream before their acks are awaited.
const STREAM_BATCH: usize = 256;

/// The longest wait between two attempts to reach the stream.
const STREAM_RETRY_MAX: Duration = Duration::from_secs(30);

/// Who decided: the callout, nats-server itself, or one of zester's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The callout's admission decision.
    Callout,
    /// A refusal nats-server made itself, before the callout saw the client.
    Server,
    /// The enrolment service.
    Enrol,
    /// The rotation service.
    Rotate,
    /// The settings service.
    Settings,
    /// The admin API.
    Admin,
    /// The status endpoint.
    Status,
    /// Renewal of a credential: a peel's identity JWT, zester's own users' creds, the TLS
    /// server certificate.
    Renew,
}

impl Source {
    /// The name written in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Callout => "callout",
            Source::Server => "server",
            Source::Enrol => "enrol",
            Source::Rotate => "rotate",
            Source::Settings => "settings",
            Source::Admin => "admin",
            Source::Status => "status",
            Source::Renew => "renew",
        }
    }
}

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Let in, or acted on.
    Allow,
    /// Refused.
    Refuse,
}

/// One audited decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// The node that wrote it (nats-server's `server_name`); set by the writer.
    pub node: String,
    /// Its number in the node's chain, from 1, continuing across restarts and rotations; set
    /// by the writer.
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// Who decided.
    pub source: Source,
    /// `allow` or `refuse`.
    pub decision: Verdict,
    /// Stable reason code ("key_unknown", "jwt_expired"…); empty when allowed.
    pub code: String,
    /// Why, for people.
    pub reason: String,
    /// Client IP as the server saw it.
    pub client_ip: String,
    /// Client connection id on that server.
    pub client_id: u64,
    /// The connection name the client chose.
    pub connection_name: String,
    /// The identity key presented, if any.
    pub nkey: String,
    /// The peel id, for peels.
    pub peel_id: String,
    /// The role granted.
    pub role: String,
    /// The server that asked.
    pub server_id: String,
    /// Time spent deciding, microseconds (callout only).
    pub micros: u64,
    /// The admin identity the appliance verified (`admin`, `admin:<name>`): who was let in as
    /// an admin, or who asked for an admin action. Empty (and left out) otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub admin: String,
    /// The hex SHA-256 of the node's previous line as written ([`crate::wire::audit::GENESIS`]
    /// for its first); set by the writer.
    pub prev: String,
}

impl AuditRecord {
    /// A record stamped at `now`, all other fields empty.
    pub fn at(now: i64, source: Source, decision: Verdict) -> AuditRecord {
        AuditRecord {
            node: String::new(),
            seq: 0,
            time: rfc3339(now),
            source,
            decision,
            code: String::new(),
            reason: String::new(),
            client_ip: String::new(),
            client_id: 0,
            connection_name: String::new(),
            nkey: String::new(),
            peel_id: String::new(),
            role: String::new(),
            server_id: String::new(),
            micros: 0,
            admin: String::new(),
            prev: String::new(),
        }
    }
}

/// `text` with its control characters (newlines, carriage returns, escapes) written as Rust
/// escapes (`\n`, `\u{1b}`), for log lines that quote client-chosen strings.
pub fn escape_control(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The sending side, cloned into every handler.
#[derive(Debug, Clone)]
pub struct AuditSink {
    sender: mpsc::Sender<AuditRecord>,
    dropped: Arc<AtomicU64>,
    /// Counts every record as it is made, queued or not (see [`AuditSink::counted_by`]).
    metrics: Option<std::sync::Weak<crate::appliance::metrics::Metrics>>,
    shared: Arc<Shared>,
}

/// What the writer and the publisher report, read by `status` and the callout.
#[derive(Debug)]
struct Shared {
    overflow: Overflow,
    queue: usize,
    node: String,
    path: PathBuf,
    written: AtomicU64,
    failing: AtomicBool,
    error: Mutex<Option<String>>,
    stream: StreamShared,
    /// The lines waiting for the stream, until a publisher takes them.
    backlog: Mutex<Option<mpsc::Receiver<(u64, String)>>>,
    backlog_sender: mpsc::Sender<(u64, String)>,
}

#[derive(Debug, Default)]
struct StreamShared {
    attached: AtomicBool,
    failing: AtomicBool,
    published: AtomicU64,
    dropped: AtomicU64,
    error: Mutex<Option<String>>,
}

fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = value;
}

fn get(slot: &Mutex<Option<String>>) -> Option<String> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The audit trail's health, as `zester status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditHealth {
    /// `drop` or `refuse`.
    pub on_overflow: &'static str,
    /// The queue's size (`[audit] queue`).
    pub queue: usize,
    /// Records waiting for the writer now.
    pub queued: usize,
    /// Records written to `audit.log` since start.
    pub written: u64,
    /// Records lost since start: queue full, or `audit.log` could not be written.
    pub dropped: u64,
    /// True while `audit.log` cannot be written (the last attempt failed).
    pub failing: bool,
    /// The last write error, while failing.
    pub error: Option<String>,
    /// True while the callout refuses new connections for it (`on_overflow = "refuse"`).
    pub refusing: bool,
    /// The `zester-audit` stream.
    pub stream: StreamHealth,
}

/// The stream's side of [`AuditHealth`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamHealth {
    /// The stream's name.
    pub name: &'static str,
    /// Where this node publishes.
    pub subject: String,
    /// `ok`, `failing` (publishing is retried) or `not connected` (before the store
    /// connection is up).
    pub state: &'static str,
    /// Records acknowledged by the stream since start (or published again from the files).
    pub published: u64,
    /// Written records waiting for the stream.
    pub backlog: usize,
    /// Written records left out of the stream because its backlog was full.
    pub dropped: u64,
    /// The last error, while failing.
    pub error: Option<String>,
}

impl AuditSink {
    /// Queues a record without waiting; logs it as a tracing event too.
    pub fn record(&self, record: AuditRecord) {
        if let Some(metrics) = self.metrics.as_ref().and_then(std::sync::Weak::upgrade) {
            metrics.observe(&record);
        }
        // Names, ids and reasons quote what clients chose: Debug formatting escapes quotes,
        // newlines and control characters, so a client cannot forge a line of the text log.
        if record.decision == Verdict::Allow && !record.code.is_empty() {
            // Something zester did itself (a certificate renewal): what, not who connected.
            tracing::info!(target: "audit", source = record.source.as_str(), code = %record.code, reason = ?record.reason, admin = %record.admin, "done");
        } else if record.decision == Verdict::Allow {
            tracing::info!(target: "audit", peel = ?record.peel_id, role = %record.role, nkey = ?record.nkey, ip = %record.client_ip, name = ?record.connection_name, "allowed");
        } else {
            tracing::warn!(target: "audit", source = record.source.as_str(), code = %record.code, reason = ?record.reason, nkey = ?record.nkey, ip = %record.client_ip, name = ?record.connection_name, "refused");
        }
        if self.sender.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(target: "audit", "audit queue full or closed: a record was not written to audit.log");
        }
    }

    /// How many records were lost since start: the queue was full or closed, or the writer
    /// could not write them to `audit.log`.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// This sink with every record also counted by `metrics` (the Prometheus metrics). Held
    /// weakly: the metrics read live numbers from things that hold sinks, and a cycle would
    /// keep the writer task from ever seeing its last sink go.
    pub fn counted_by(self, metrics: &Arc<crate::appliance::metrics::Metrics>) -> AuditSink {
        AuditSink {
            metrics: Some(Arc::downgrade(metrics)),
            ..self
        }
    }
    /// Why records cannot be written right now (the queue is full, or the last write to
    /// `audit.log` failed), if they cannot. Two atomic reads on the way through.
    pub fn unavailable(&self) -> Option<String> {
        if self.shared.failing.load(Ordering::Relaxed) {
            let error = get(&self.shared.error).unwrap_or_default();
            return Some(format!("audit.log cannot be written ({error})"));
        }
        if self.sender.capacity() == 0 {
            return Some(format!(
                "the audit queue is full ({} records wait for the writer)",
                self.shared.queue
            ));
        }
        None
    }

    /// With `on_overflow = "refuse"`: why a new connection must be refused now, if it must.
    pub fn refusal(&self) -> Option<String> {
        match self.shared.overflow {
            Overflow::Drop => None,
            Overflow::Refuse => self.unavailable(),
        }
    }

    /// The trail's health for `status`.
    pub fn health(&self) -> AuditHealth {
        let stream = &self.shared.stream;
        let state = if !stream.attached.load(Ordering::Relaxed) {
            "not connected"
        } else if stream.failing.load(Ordering::Relaxed) {
            "failing"
        } else {
            "ok"
        };
        let failing = self.shared.failing.load(Ordering::Relaxed);
        AuditHealth {
            on_overflow: self.shared.overflow.as_str(),
            queue: self.shared.queue,
            queued: self.shared.queue - self.sender.capacity(),
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.dropped(),
            failing,
            error: failing.then(|| get(&self.shared.error)).flatten(),
            refusing: self.refusal().is_some(),
            stream: StreamHealth {
                name: crate::wire::audit::STREAM,
                subject: crate::wire::audit::subject(&self.shared.node),
                state,
                published: stream.published.load(Ordering::Relaxed),
                backlog: STREAM_BACKLOG - self.shared.backlog_sender.capacity(),
                dropped: stream.dropped.load(Ordering::Relaxed),
                error: get(&stream.error),
            },
        }
    }

    /// Starts publishing to the `zester-audit` stream through `js` (zester's store
    /// connection; the stream must exist, see [`stream_config`]): first what the stream lacks
    /// of this node's records from the files still kept, then every line as it is written.
    /// Does nothing when a publisher already runs.
    pub fn publish_to(&self, js: jetstream::Context) -> Option<tokio::task::JoinHandle<()>> {
        let backlog = self
            .shared
            .backlog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        self.shared.stream.attached.store(true, Ordering::Relaxed);
        Some(tokio::spawn(publish_loop(js, self.shared.clone(), backlog)))
    }
}

/// Starts the writer task appending to `path`; it ends when every sink is dropped.
pub fn start(path: &Path) -> (AuditSink, tokio::task::JoinHandle<()>) {
    start_with(path, Rotation::default())
}
/// When `audit.log` is rotated (`[audit] max_file_bytes`, `keep`): once the next record would
/// take it past `max_bytes`, it becomes `audit.log.1` (`.1` becomes `.2`, and so on; the file
/// past `keep` is dropped), so the log never grows without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The most bytes one file holds (one record more is never split).
    pub max_bytes: u64,
    /// How many rotated files are kept.
    pub keep: u32,
}

impl Default for Rotation {
    /// 64 MiB, 5 files.
    fn default() -> Self {
        Rotation {
            max_bytes: 64 << 20,
            keep: 5,
        }
    }
}

/// How the writer keeps the trail (`[audit]` of `zester.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Size rotation of `audit.log`.
    pub rotation: Rotation,
    /// How many records may wait for the writer (at least 1).
    pub queue: usize,
    /// What the callout does while records cannot be written.
    pub overflow: Overflow,
    /// This node's name (nats-server's `server_name`): the chain's and the subject's.
    pub node: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rotation: Rotation::default(),
            queue: QUEUE,
            overflow: Overflow::Drop,
            node: crate::home::config::DEFAULT_NODE_NAME.to_string(),
        }
    }
}

/// [`start`] with `rotation`.
pub fn start_with(path: &Path, rotation: Rotation) -> (AuditSink, tokio::task::JoinHandle<()>) {
    start_options(
        path,
        Options {
            rotation,
            ..Options::default()
        },
    )
}

/// [`start`] with every option.
pub fn start_options(path: &Path, options: Options) -> (AuditSink, tokio::task::JoinHandle<()>) {
    let queue = options.queue.max(1);
    let (sender, receiver) = mpsc::channel(queue);
    let (backlog_sender, backlog) = mpsc::channel(STREAM_BACKLOG);
    let dropped = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Shared {
        overflow: options.overflow,
        queue,
        node: options.node,
        path: path.to_path_buf(),
        written: AtomicU64::new(0),
        failing: AtomicBool::new(false),
        error: Mutex::new(None),
        stream: StreamShared::default(),
        backlog: Mutex::new(Some(backlog)),
        backlog_sender,
    });
    let handle = tokio::spawn(write_loop(
        receiver,
        options.rotation,
        shared.clone(),
        dropped.clone(),
    ));
    (
        AuditSink {
            sender,
            dropped,
            metrics: None,
            shared,
        },
        handle,
    )
}

/// The `zester-audit` stream (`[audit] max_age`, `max_bytes`; `replicas` like the key
/// store's buckets): file storage, every node's `zester.audit.<node>`, oldest records
/// discarded first, and no deleting or purging of single records through the API.
pub fn stream_config(
    max_age: Duration,
    max_bytes: i64,
    replicas: usize,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: crate::wire::audit::STREAM.to_string(),
        description: Some(
            "zester audit trail: one hash-chained JSON record per decision and admin action, per node"
                .to_string(),
        ),
        subjects: vec![crate::wire::audit::SUBJECTS.to_string()],
        storage: jetstream::stream::StorageType::File,
        max_age,
        max_bytes,
        num_replicas: replicas,
        discard: jetstream::stream::DiscardPolicy::Old,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        ..Default::default()
    }
}

async fn open(path: &Path) -> std::io::Result<(tokio::fs::File, u64)> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(crate::home::SECRET_MODE)
        .open(path)
        .await?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    Ok((file, size))
}

/// The most of a file's end read to find where its chain goes on.
const TAIL_BYTES: u64 = 1 << 20;

/// The complete lines in the last [`TAIL_BYTES`] of a regular file (nothing from a device or
/// a pipe, which have no end to read).
fn tail_lines(path: &Path) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    // Checked before opening: opening a pipe to read waits for a writer.
    let Ok(metadata) = std::fs::metadata(path) else {
        return Vec::new();
    };
    if !metadata.is_file() {
        return Vec::new();
    }
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let from = metadata.len().saturating_sub(TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err()
        || file.take(TAIL_BYTES).read_to_end(&mut bytes).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if from > 0 && !lines.is_empty() {
        // The first line read is the end of one that started before.
        lines.remove(0);
    }
    lines
}

/// Where this node's chain goes on: after the last chained record of the newest file that
/// has one, else from the start.
fn continue_chain(path: &Path, node: &str) -> ChainHead {
    for file in crate::home::audit_files_of(path).iter().rev() {
        let lines = tail_lines(file);
        let found = lines
            .iter()
            .rev()
            .find(|line| crate::wire::audit::Link::parse(line).is_ok_and(|link| link.node == node));
        if let Some(head) = found.and_then(|line| ChainHead::after(line)) {
            return head;
        }
    }
    ChainHead::genesis()
}

/// The `(from, to)` renames that rotate `path` keeping `keep` old files, oldest first.
pub fn rotation_renames(path: &Path, keep: u32) -> Vec<(PathBuf, PathBuf)> {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    let mut renames: Vec<(PathBuf, PathBuf)> = (1..keep)
        .rev()
        .map(|n| (numbered(n), numbered(n + 1)))
        .collect();
    if keep > 0 {
        renames.push((path.to_path_buf(), numbered(1)));
    }
    renames
}

async fn write_loop(
    mut receiver: mpsc::Receiver<AuditRecord>,
    rotation: Rotation,
    shared: Arc<Shared>,
    dropped: Arc<AtomicU64>,
) {
    let path = shared.path.clone();
    let node = shared.node.clone();
    let mut head = {
        let (path, node) = (path.clone(), node.clone());
        tokio::task::spawn_blocking(move || continue_chain(&path, &node))
            .await
            .unwrap_or_else(|_| ChainHead::genesis())
    };
    let mut file: Option<(tokio::fs::File, u64)> = None;
    // After a failed write part of a line may be on disk: the next one starts on a new line.
    let mut torn = false;
    let fail = |what: &str, error: std::io::Error| {
        dropped.fetch_add(1, Ordering::Relaxed);
        let message = format!("{what} {}: {error}", path.display());
        if !shared.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(target: "audit", "cannot write the audit log: {message}; records are lost (and counted) until it can");
        }
        set(&shared.error, Some(message));
    };
    while let Some(mut record) = receiver.recv().await {
        record.node.clone_from(&node);
        record.seq = head.seq;
        record.prev.clone_from(&head.prev);
        let Ok(line) = serde_json::to_string(&record) else {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut bytes = Vec::with_capacity(line.len() + 2);
        if torn {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if let Some((open_file, size)) = file.as_mut() {
            if *size > 0 && *size + bytes.len() as u64 > rotation.max_bytes {
                let _ = open_file.flush().await;
                let _ = open_file.sync_all().await;
                file = None;
                for (from, to) in rotation_renames(&path, rotation.keep) {
                    // A file not there yet (the first rotations) is nothing to move.
                    let _ = tokio::fs::rename(&from, &to).await;
                }
                if rotation.keep == 0 {
                    let _ = tokio::fs::remove_file(&path).await;
                }
            }
        }
        if file.is_none() {
            match open(&path).await {
                Ok(opened) => file = Some(opened),
                Err(e) => {
                    fail("opening", e);
                    continue;
                }
            }
        }
        let Some((open_file, size)) = file.as_mut() else {
            continue;
        };
        // Flushed at once: a full or failing disk shows on this record, not some later one.
        let written = match open_file.write_all(&bytes).await {
            Ok(()) => open_file.flush().await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                *size += bytes.len() as u64;
                torn = false;
                shared.written.fetch_add(1, Ordering::Relaxed);
                if shared.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(target: "audit", "the audit log can be written again");
                    set(&shared.error, None);
                }
                let seq = record.seq;
                head = ChainHead {
                    seq: seq + 1,
                    prev: crate::wire::audit::line_hash(&line),
                };
                if shared.backlog_sender.try_send((seq, line)).is_err() {
                    shared.stream.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                torn = true;
                // Opened again for the next record: the failure may have been the file's.
                file = None;
                fail("writing", e);
            }
        }
    }
    if let Some((mut open_file, _)) = file {
        let _ = open_file.flush().await;
    }
}

/// The `seq` of this node's last record in the stream: 0 when it has none, `None` when the
/// stream cannot be asked.
async fn last_in_stream(js: &jetstream::Context, subject: &str) -> Result<u64, String> {
    use jetstream::stream::LastRawMessageErrorKind;
    let stream = js
        .get_stream_no_info(crate::wire::audit::STREAM)
        .await
        .map_err(|e| e.to_string())?;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(std::str::from_utf8(&message.payload)
            .ok()
            .and_then(|line| crate::wire::audit::Link::parse(line).ok())
            .map_or(0, |link| link.seq)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends `lines` to the stream in order, each with the message id `<node>-<seq>` (so a line
/// sent again within the stream's duplicate window is stored once), then awaits their acks
/// (each within the context's timeout). Returns how many were acknowledged before a failure.
async fn publish_batch(
    js: &jetstream::Context,
    subject: &str,
    node: &str,
    lines: &[(u64, String)],
) -> Result<(), (usize, String)> {
    let mut acks = Vec::with_capacity(lines.len());
    for (seq, line) in lines {
        let message = jetstream::message::PublishMessage::build()
            .payload(line.clone().into_bytes().into())
            .message_id(format!("{node}-{seq}"));
        match js.send_publish(subject.to_string(), message).await {
            Ok(ack) => acks.push(ack),
            Err(e) => return Err((0, e.to_string())),
        }
    }
    for (done, ack) in acks.into_iter().enumerate() {
        if let Err(e) = ack.await {
            return Err((done, e.to_string()));
        }
    }
    Ok(())
}

/// [`publish_batch`] until the whole batch is in, waiting longer between attempts while the
/// stream stays out of reach (the backlog fills meanwhile, and what does not fit is counted).
async fn publish_all(
    js: &jetstream::Context,
    shared: &Shared,
    subject: &str,
    lines: &[(u64, String)],
) {
    let stream = &shared.stream;
    let mut from = 0;
    let mut wait = Duration::from_millis(250);
    while from < lines.len() {
        match publish_batch(js, subject, &shared.node, &lines[from..]).await {
            Ok(()) => {
                stream
                    .published
                    .fetch_add((lines.len() - from) as u64, Ordering::Relaxed);
                if stream.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(target: "audit", "the audit stream takes records again");
                    set(&stream.error, None);
                }
                return;
            }
            Err((acked, error)) => {
                stream.published.fetch_add(acked as u64, Ordering::Relaxed);
                from += acked;
                if !stream.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "audit", "cannot publish to the audit stream: {error}; retrying (audit.log has every record)");
                }
                set(&stream.error, Some(error));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(STREAM_RETRY_MAX);
            }
        }
    }
}

/// This node's records in the kept files with a `seq` above `after`, oldest first.
fn records_after(path: &Path, node: &str, after: u64) -> Vec<(u64, String)> {
    let mut found = Vec::new();
    for file in crate::home::audit_files_of(path) {
        // Regular files only: a pipe or a device has no history (and reading one would take
        // what the writer writes, or never end).
        if !std::fs::metadata(&file).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            if let Ok(link) = crate::wire::audit::Link::parse(line) {
                if link.node == node && link.seq > after {
                    found.push((link.seq, line.to_string()));
                }
            }
        }
    }
    found
}

async fn publish_loop(
    js: jetstream::Context,
    shared: Arc<Shared>,
    mut backlog: mpsc::Receiver<(u64, String)>,
) {
    let subject = crate::wire::audit::subject(&shared.node);
    // What the stream lacks from before (records of a run that ended while the stream was
    // away, or a home older than the stream) goes first, from the files.
    let mut wait = Duration::from_millis(250);
    let after = loop {
        match last_in_stream(&js, &subject).await {
            Ok(after) => break after,
            Err(error) => {
                if !shared.stream.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "audit", "cannot reach the audit stream: {error}; retrying");
                }
                set(&shared.stream.error, Some(error));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(STREAM_RETRY_MAX);
            }
        }
    };
    let missing = {
        let (path, node) = (shared.path.clone(), shared.node.clone());
        tokio::task::spawn_blocking(move || records_after(&path, &node, after))
            .await
            .unwrap_or_default()
    };
    let mut last = after;
    for chunk in missing.chunks(STREAM_BATCH) {
        publish_all(&js, &shared, &subject, chunk).await;
        last = chunk.last().map_or(last, |(seq, _)| *seq);
    }
    if !missing.is_empty() {
        tracing::info!(target: "audit", records = missing.len(), "published records the audit stream lacked from audit.log");
    }
    let mut batch = Vec::with_capacity(STREAM_BATCH);
    while backlog.recv_many(&mut batch, STREAM_BATCH).await > 0 {
        // Lines the files already gave above are in the stream.
        batch.retain(|(seq, _)| *seq > last);
        if let Some((seq, _)) = batch.last() {
            last = *seq;
            publish_all(&js, &shared, &subject, &batch).await;
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_control("web\n2026 INFO audit: allowed\r\u{1b}[2J"),
            "web\\n2026 INFO audit: allowed\\r\\u{1b}[2J"
        );
        assert_eq!(escape_control("plain – text"), "plain – text");
    }

    #[tokio::test]
    async fn the_log_rotates_by_size_and_keeps_what_it_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (sink, task) = start_with(
            &path,
            Rotation {
                max_bytes: 1000,
                keep: 2,
            },
        );
        for n in 0..100 {
            let mut record = AuditRecord::at(n, Source::Callout, Verdict::Allow);
            record.peel_id = format!("peel-{n:03}");
            sink.record(record);
        }
        drop(sink);
        task.await.unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let files = [
            path.clone(),
            dir.path().join("audit.log.1"),
            dir.path().join("audit.log.2"),
        ];
        for file in &files {
            let text = read(file);
            assert!(!text.is_empty(), "{} exists", file.display());
            assert!(
                text.len() <= 1000,
                "{} is {} bytes",
                file.display(),
                text.len()
            );
            assert!(text
                .lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        }
        assert!(!dir.path().join("audit.log.3").exists(), "only 2 are kept");
        // The newest records are in the live file, nothing is split, order is kept.
        let last: serde_json::Value =
            serde_json::from_str(read(&path).lines().last().unwrap()).unwrap();
        assert_eq!(last["peel_id"], "peel-099");
        assert_eq!(
            rotation_renames(&path, 2),
            vec![
                (
                    dir.path().join("audit.log.1"),
                    dir.path().join("audit.log.2")
                ),
                (path.clone(), dir.path().join("audit.log.1")),
            ]
        );
    }

    fn chain_report(dir: &Path) -> crate::wire::audit::Report {
        let files: Vec<(String, String)> = crate::home::audit_files_of(&dir.join("audit.log"))
            .iter()
            .map(|f| (f.display().to_string(), std::fs::read_to_string(f).unwrap()))
            .collect();
        crate::wire::audit::verify(files.iter().flat_map(|(file, text)| {
            text.lines()
                .enumerate()
                .map(move |(i, line)| crate::wire::audit::Line {
                    file,
                    number: i + 1,
                    text: line,
                })
        }))
    }

    #[tokio::test]
    async fn the_chain_goes_on_across_restarts_and_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let rotation = Rotation {
            max_bytes: 2000,
            keep: 50,
        };
        for run in 0..2 {
            let (sink, task) = start_with(&path, rotation);
            for n in 0..30 {
                let mut record = AuditRecord::at(n, Source::Callout, Verdict::Allow);
                record.peel_id = format!("peel-{run}-{n:03}");
                sink.record(record);
            }
            drop(sink);
            task.await.unwrap();
        }
        assert!(
            dir.path().join("audit.log.3").exists(),
            "rotated several times"
        );
        let report = chain_report(dir.path());
        assert!(report.intact(), "{:?}", report.first_break);
        let chain = &report.nodes["zester"];
        assert_eq!(
            (chain.records, chain.first_seq, chain.last_seq),
            (60, 1, 60)
        );
        assert!(chain.from_genesis);
    }

    #[tokio::test]
    async fn a_failing_disk_is_counted_and_refused_only_with_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        for overflow in [Overflow::Refuse, Overflow::Drop] {
            let options = Options {
                overflow,
                queue: 4,
                ..Options::default()
            };
            let (sink, task) = start_options(&path, options);
            sink.record(AuditRecord::at(0, Source::Callout, Verdict::Allow));
            // The writer fails on that record; wait until it has said so.
            for _ in 0..500 {
                if sink.health().failing {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let health = sink.health();
            assert!(health.failing, "{health:?}");
            assert_eq!(health.dropped, 1);
            assert!(health.error.unwrap_or_default().contains("writing"));
            assert!(sink.unavailable().unwrap().contains("cannot be written"));
            assert_eq!(sink.refusal().is_some(), overflow == Overflow::Refuse);
            assert_eq!(health.refusing, overflow == Overflow::Refuse);
            drop(sink);
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_with_refuse() {
        let dir = tempfile::tempdir().unwrap();
        // On the test's one thread the writer does not run while the loop queues records: a
        // queue of one is full after the first, whatever the writer would do with it.
        let path = dir.path().join("audit.log");
        let (sink, _task) = start_options(
            &path,
            Options {
                overflow: Overflow::Refuse,
                queue: 1,
                ..Options::default()
            },
        );
        assert_eq!(sink.refusal(), None);
        for n in 0..50 {
            sink.record(AuditRecord::at(n, Source::Callout, Verdict::Allow));
        }
        assert!(sink.refusal().is_some());
        assert!(sink.dropped() > 0);
    }

    #[tokio::test]
    async fn records_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (sink, task) = start(&path);
        let mut record = AuditRecord::at(0, Source::Callout, Verdict::Refuse);
        record.code = "key_unknown".into();
        sink.record(record.clone());
        sink.record(AuditRecord::at(1, Source::Callout, Verdict::Allow));
        drop(sink);
        task.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["code"], "key_unknown");
        assert_eq!(lines[1]["decision"], "allow");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
