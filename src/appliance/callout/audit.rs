//! The audit log: one JSON line per decision, in `<home>/audit.log` and as a tracing event.
//!
//! The callout hands records to a channel and never waits on the disk; a writer task appends
//! them (mode 0600). Records hold who and why — never a JWT, a seed, a password or a token.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::identity::time::rfc3339;

/// How many records may wait for the writer before new ones are dropped (and counted).
pub const QUEUE: usize = 8192;

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
}

impl AuditRecord {
    /// A record stamped at `now`, all other fields empty.
    pub fn at(now: i64, source: Source, decision: Verdict) -> AuditRecord {
        AuditRecord {
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
            tracing::info!(target: "audit", source = record.source.as_str(), code = %record.code, reason = ?record.reason, "done");
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

    /// How many records were dropped since start because the queue was full or closed.
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

/// [`start`] with `rotation`.
pub fn start_with(path: &Path, rotation: Rotation) -> (AuditSink, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let handle = tokio::spawn(write_loop(path.to_path_buf(), receiver, rotation));
    let dropped = Arc::new(AtomicU64::new(0));
    (
        AuditSink {
            sender,
            dropped,
            metrics: None,
        },
        handle,
    )
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

async fn write_loop(path: PathBuf, mut receiver: mpsc::Receiver<AuditRecord>, rotation: Rotation) {
    let (mut file, mut size) = match open(&path).await {
        Ok(opened) => opened,
        Err(e) => {
            tracing::error!(
                "cannot open audit log {}: {e}; decisions are only logged",
                path.display()
            );
            while receiver.recv().await.is_some() {}
            return;
        }
    };
    while let Some(record) = receiver.recv().await {
        let mut line = serde_json::to_vec(&record).unwrap_or_default();
        line.push(b'\n');
        if size > 0 && size + line.len() as u64 > rotation.max_bytes {
            let _ = file.flush().await;
            let _ = file.sync_all().await;
            for (from, to) in rotation_renames(&path, rotation.keep) {
                // A file not there yet (the first rotations) is nothing to move.
                let _ = tokio::fs::rename(&from, &to).await;
            }
            if rotation.keep == 0 {
                let _ = tokio::fs::remove_file(&path).await;
            }
            match open(&path).await {
                Ok(opened) => (file, size) = opened,
                Err(e) => tracing::error!(
                    "cannot open audit log {} after rotating it: {e}",
                    path.display()
                ),
            }
        }
        if let Err(e) = file.write_all(&line).await {
            tracing::error!("cannot write audit log {}: {e}", path.display());
        } else {
            size += line.len() as u64;
        }
    }
    let _ = file.flush().await;
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
