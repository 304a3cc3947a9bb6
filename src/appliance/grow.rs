//! A single node grows into a cluster without losing anything (issue 18 part 4, DESIGN §9).
//!
//! nats-server never hands a standalone server's streams to a cluster. Measured with 2.15.1:
//! when a store made standalone starts clustered, the server restores its streams from disk,
//! the cluster's JetStream API does not list them (the meta group never heard of them), and
//! 30 s after the start it logs `Detected orphaned stream '… > KV_zester-keys', will cleanup`
//! and deletes their files (nats-server issue #5467). So a clustered nats-server of zester never
//! sees a standalone store:
//!
//! 1. Before the child starts, [`survey`] reads what the home holds and [`next_step`] (pure)
//!    decides. `nats/jetstream.mode` records the mode JetStream last ran in ([`mark`]); a home
//!    from before that marker counts as standalone when its store holds streams but no meta
//!    group. A standalone store about to run clustered is renamed to
//!    `nats/jetstream.standalone` (one atomic rename; nothing is deleted) and the clustered
//!    server starts on a fresh, empty store.
//! 2. A private standalone nats-server (127.0.0.1, a port the OS picks, a user key only this
//!    process holds, gone within seconds) opens the set-aside store, and every zester
//!    bucket (`KV_zester-*`) is read into memory with its configuration and each key's whole
//!    history (`read_bucket`).
//! 3. Once clustered JetStream has a meta leader and zester's store connection is up — before
//!    any of this node's stores opens and before it serves anything — [`carry_over`] creates
//!    the buckets the cluster lacks (with the standalone one's configuration and the cluster's
//!    replicas) and appends, per key, the revisions the cluster's history lacks at its end
//!    ([`plan_key`], pure). A key whose history in the cluster went its own way (another node
//!    enrolled, accepted or revoked it meanwhile) keeps the cluster's history, and is logged.
//! 4. Every bucket is read back and planned again: only when nothing is left to write does the
//!    marker say `clustered` and is the set-aside store removed.
//!
//! A crash or an error anywhere before step 4 ends leaves the set-aside store in place, and the
//! next `zester up` resumes at step 2: the plan writes only what the cluster lacks, so a rerun
//! never writes a revision twice. A node started standalone while a set-aside store waits is
//! refused (it would serve without the records).
//!
//! zester keeps no stream of its own besides the buckets (the audit trail is `audit.log`), so
//! the buckets are all there is to carry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;

use crate::appliance::broker::config::{quote, quote_path, HostPort};
use crate::appliance::broker::supervisor::{BrokerError, Supervisor, SupervisorSettings};
use crate::appliance::kv_leader;
use crate::home::{self, Home, HomeError};

/// What the copy says of a key another node wrote while it was being copied.
const CHANGED_WHILE_COPIED: &str =
    "grow: this key changed in the cluster while it was copied: the cluster's history is kept";

/// The stream-name prefix of zester's buckets (`KV_zester-keys` …).
pub const BUCKET_STREAMS: &str = "KV_zester-";
/// How long reading a bucket may wait for its next revision.
const READ_STALL: Duration = Duration::from_secs(10);
/// How many times one bucket's copy is tried when it fails otherwise than on a cluster that
/// cannot answer yet (a bucket just made answers once it has a leader). A cluster that cannot
/// answer at all, the copy waits for as long as it takes.
const COPY_ATTEMPTS: u32 = 20;
/// The pause after the first failed attempt, growing by as much after each, up to
/// [`COPY_BACKOFF_MAX`].
const COPY_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between two attempts.
const COPY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a copy still waiting for the cluster says so at WARN.
const SETTLING_WARN: Duration = Duration::from_secs(30);
/// How long the private standalone server may take to restore the set-aside store.
const READER_READY: Duration = Duration::from_secs(60);

/// The mode JetStream ran a store in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A single node, no cluster.
    Standalone,
    /// A node of a cluster (clustered JetStream, a meta group).
    Clustered,
}

impl Mode {
    /// The word in `nats/jetstream.mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Clustered => "clustered",
        }
    }

    /// The mode a marker names, `None` for anything else.
    pub fn parse(text: &str) -> Option<Mode> {
        match text.trim() {
            "standalone" => Some(Mode::Standalone),
            "clustered" => Some(Mode::Clustered),
            _ => None,
        }
    }
}

/// What the home holds before the child starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// What `nats/jetstream.mode` says, if it exists (and names a mode).
    pub marker: Option<Mode>,
    /// The store holds at least one stream.
    pub has_streams: bool,
    /// The store holds a JetStream meta group (`$SYS/_js_`): it ran clustered.
    pub has_meta: bool,
    /// A standalone store set aside by an earlier, unfinished grow is there.
    pub set_aside: bool,
}

/// What to do before the child starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start as it is.
    Nothing,
    /// Set the standalone store aside, then copy its buckets into the cluster.
    SetAside,
    /// An earlier grow did not finish: copy from the store already set aside.
    Resume,
    /// Refuse to start standalone while a set-aside store waits to be copied.
    Refuse,
}

/// Decides, from what the home holds, what a node starting `clustered` (or not) does first.
pub fn next_step(clustered: bool, survey: &Survey) -> Step {
    if survey.set_aside {
        return if clustered {
            Step::Resume
        } else {
            Step::Refuse
        };
    }
    if !clustered {
        return Step::Nothing;
    }
    let was_standalone = match survey.marker {
        Some(mode) => mode == Mode::Standalone,
        None => !survey.has_meta,
    };
    if was_standalone && survey.has_streams {
        Step::SetAside
    } else {
        Step::Nothing
    }
}

/// One revision of a key, as the copy compares and writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revision {
    /// A value.
    Put(Vec<u8>),
    /// A delete marker.
    Delete,
    /// A purge marker (the revisions before it are gone).
    Purge,
}

impl Revision {
    /// What a record read from a bucket is.
    fn of(entry: &kv::Entry) -> Revision {
        match entry.operation {
            kv::Operation::Put => Revision::Put(entry.value.to_vec()),
            kv::Operation::Delete => Revision::Delete,
            kv::Operation::Purge => Revision::Purge,
        }
    }

    /// The marker a record of `operation` is (`None` for a put, whose value tells it apart).
    fn marker_of(operation: &kv::Operation) -> Option<&'static Revision> {
        match operation {
            kv::Operation::Put => None,
            kv::Operation::Delete => Some(&Revision::Delete),
            kv::Operation::Purge => Some(&Revision::Purge),
        }
    }
}

/// Every key of a bucket with its history, oldest revision first.
pub type Histories = BTreeMap<String, Vec<Revision>>;

/// What the copy does with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlan {
    /// The cluster holds the same history: nothing to write.
    Same,
    /// The cluster's history is the start of the standalone one (empty when the cluster lacks
    /// the key): these revisions are appended.
    Append(Vec<Revision>),
    /// The cluster's history went its own way (changed since the node grew): it is kept.
    ClusterNewer,
}

/// Plans one key: the revisions the cluster's history lacks at its end, if it is a start of
/// the standalone history.
pub fn plan_key(standalone: &[Revision], cluster: &[Revision]) -> KeyPlan {
    if standalone == cluster {
        KeyPlan::Same
    } else if cluster.len() < standalone.len() && standalone.starts_with(cluster) {
        KeyPlan::Append(standalone[cluster.len()..].to_vec())
    } else {
        KeyPlan::ClusterNewer
    }
}

/// The plan of one bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketPlan {
    /// Keys with the revisions to append, in key order.
    pub append: Vec<(String, Vec<Revision>)>,
    /// Keys the cluster already holds the same.
    pub same: usize,
    /// Keys whose history in the cluster is kept as it is.
    pub kept: Vec<String>,
}

impl BucketPlan {
    /// Revisions to write.
    pub fn revisions(&self) -> usize {
        self.append
            .iter()
            .map(|(_, revisions)| revisions.len())
            .sum()
    }
}

/// Plans a bucket key by key ([`plan_key`]); keys only the cluster has are not touched.
pub fn plan_bucket(standalone: &Histories, cluster: &Histories) -> BucketPlan {
    let mut plan = BucketPlan::default();
    for (key, history) in standalone {
        let there = cluster.get(key).map(Vec::as_slice).unwrap_or_default();
        match plan_key(history, there) {
            KeyPlan::Same => plan.same += 1,
            KeyPlan::Append(revisions) => plan.append.push((key.clone(), revisions)),
            KeyPlan::ClusterNewer => plan.kept.push(key.clone()),
        }
    }
    plan
}

/// A bucket read from the standalone store.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Its stream's configuration (made again in the cluster with the cluster's replicas).
    pub config: jetstream::stream::Config,
    /// Its keys' histories.
    pub keys: Histories,
}

impl Bucket {
    /// The bucket's name (`zester-keys` …).
    pub fn name(&self) -> &str {
        self.config
            .name
            .strip_prefix("KV_")
            .unwrap_or(&self.config.name)
    }
}

/// What the set-aside store held, to be carried into the cluster ([`carry_over`]).
#[derive(Debug, Clone)]
pub struct Carried {
    /// Every zester bucket.
    pub buckets: Vec<Bucket>,
}

/// What [`carry_over`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CarryReport {
    /// Buckets carried.
    pub buckets: usize,
    /// Keys written.
    pub keys: usize,
    /// Revisions written.
    pub revisions: usize,
    /// Keys the cluster already held the same (a rerun).
    pub same: usize,
    /// Keys whose history in the cluster was kept.
    pub kept: usize,
}

/// Why growing into a cluster stopped. Every failure keeps the standalone store where it is.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    /// The home's files.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// A node is started standalone while a grow waits to finish.
    #[error("{} holds the standalone store of this node, set aside when it started as a node of a cluster, and not yet copied into the cluster: start it with [cluster] (or --cluster-listen) again to finish, or, to stay a single node, stop zester, move {} back to {} and delete nats/jetstream.mode", set_aside.display(), set_aside.display(), store.display())]
    Interrupted {
        /// The set-aside store.
        set_aside: PathBuf,
        /// Where a standalone node's store lives.
        store: PathBuf,
    },
    /// The private standalone server did not start on the set-aside store.
    #[error("could not start a standalone nats-server on the set-aside store {} to read it: {source}; the store is kept there and the next `zester up` tries again", set_aside.display())]
    Reader {
        /// The set-aside store.
        set_aside: PathBuf,
        /// Why.
        source: BrokerError,
    },
    /// Reading the set-aside store, or writing or reading the cluster, failed.
    #[error("growing into a cluster: could not {action} bucket {bucket}: {source}; the standalone store is kept in {} and the next `zester up` resumes the copy", set_aside.display())]
    Bucket {
        /// What was being done.
        action: &'static str,
        /// The bucket.
        bucket: String,
        /// The set-aside store.
        set_aside: PathBuf,
        /// The client's error.
        source: async_nats::Error,
    },
    /// Reading a bucket stopped making progress.
    #[error("growing into a cluster: reading bucket {bucket} made no progress for {after:?}; the standalone store is kept in {} and the next `zester up` resumes the copy", set_aside.display())]
    Stalled {
        /// The bucket.
        bucket: String,
        /// How long nothing arrived.
        after: Duration,
        /// The set-aside store.
        set_aside: PathBuf,
    },
    /// Read back, the cluster still lacks revisions.
    #[error("growing into a cluster: bucket {bucket} still lacks the revisions of {keys} key(s) after the copy (first: {first}); the standalone store is kept in {} and the next `zester up` resumes the copy", set_aside.display())]
    Unverified {
        /// The bucket.
        bucket: String,
        /// How many keys.
        keys: usize,
        /// The first of them.
        first: String,
        /// The set-aside store.
        set_aside: PathBuf,
    },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> GrowError + 'a {
    move |source| {
        GrowError::Home(HomeError::Io {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Reads what the home holds: the marker, and whether the store holds streams and a meta group.
pub fn survey(home: &Home) -> Result<Survey, GrowError> {
    let marker_file = home.jetstream_mode_file();
    let marker = match std::fs::read_to_string(&marker_file) {
        Ok(text) => Mode::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error("read", &marker_file)(e)),
    };
    let accounts = home.jetstream_dir().join("jetstream");
    let mut has_streams = false;
    if let Ok(entries) = std::fs::read_dir(&accounts) {
        for account in entries.flatten() {
            if account.file_name() == "$SYS" {
                continue;
            }
            let streams = account.path().join("streams");
            if std::fs::read_dir(&streams).is_ok_and(|mut s| s.next().is_some()) {
                has_streams = true;
            }
        }
    }
    Ok(Survey {
        marker,
        has_streams,
        has_meta: accounts.join("$SYS").join("_js_").exists(),
        set_aside: home.jetstream_set_aside_dir().exists(),
    })
}

/// Records that JetStream now runs this store in `mode` (written only when it changes).
pub fn mark(home: &Home, mode: Mode) -> Result<(), GrowError> {
    let file = home.jetstream_mode_file();
    if std::fs::read_to_string(&file)
        .ok()
        .as_deref()
        .and_then(Mode::parse)
        == Some(mode)
    {
        return Ok(());
    }
    home::write_atomic(
        &file,
        format!("{}\n", mode.as_str()).as_bytes(),
        home::PUBLIC_MODE,
    )?;
    Ok(())
}

/// Steps 1 and 2, before the child starts: sets a standalone store aside when this node starts
/// clustered, and reads its buckets with a private standalone server (`binary`); `account` is
/// the ZESTER account, whose directory in the store holds the buckets. `None` when there is
/// nothing to carry.
pub async fn before_start(
    home: &Home,
    clustered: bool,
    binary: &Path,
    account: &str,
) -> Result<Option<Carried>, GrowError> {
    let set_aside = home.jetstream_set_aside_dir();
    match next_step(clustered, &survey(home)?) {
        Step::Nothing => return Ok(None),
        Step::Refuse => {
            return Err(GrowError::Interrupted {
                set_aside,
                store: home.jetstream_dir(),
            })
        }
        Step::SetAside => {
            let store = home.jetstream_dir();
            std::fs::rename(&store, &set_aside).map_err(io_error("rename", &store))?;
            tracing::info!(
                from = %store.display(),
                to = %set_aside.display(),
                "grow: this node's JetStream store was made by a single node, and nats-server would delete its streams as orphans once it runs clustered: set it aside; its buckets are copied into the cluster"
            );
        }
        Step::Resume => tracing::info!(
            set_aside = %set_aside.display(),
            "grow: an earlier start did not finish copying the standalone store into the cluster: resuming"
        ),
    }
    let buckets = read_set_aside(home, binary, account).await?;
    Ok(Some(Carried { buckets }))
}

/// Step 2: a private standalone nats-server on the set-aside store, each bucket read, the
/// server stopped and its files removed.
async fn read_set_aside(
    home: &Home,
    binary: &Path,
    account: &str,
) -> Result<Vec<Bucket>, GrowError> {
    let set_aside = home.jetstream_set_aside_dir();
    let dir = home.grow_dir();
    home::create_private_dir(&dir)?;
    // A user key made for this reader alone: nobody else can sign in, and nothing is kept.
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().map_err(|e| {
        GrowError::Home(HomeError::Io {
            action: "make a key for the reader of",
            path: set_aside.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    })?;
    let config = format!(
        "# zester: a private standalone nats-server reading the set-aside store of a node that\n\
         # grew into a cluster (appliance::grow); it runs for seconds and this file goes with it.\n\
         host: \"127.0.0.1\"\n\
         port: -1\n\
         ports_file_dir: {dir}\n\
         jetstream {{\n  store_dir: {store}\n}}\n\
         accounts {{\n  {account}: {{\n    jetstream: enabled\n    users: [{{nkey: {user}}}]\n  }}\n}}\n",
        dir = quote_path(&dir),
        store = quote_path(&set_aside),
        account = quote(account),
        user = quote(&user.public_key()),
    );
    let config_file = dir.join("nats-server.conf");
    home::write_atomic(&config_file, config.as_bytes(), home::SECRET_MODE)?;
    let listen = HostPort::parse("grow.listen", "127.0.0.1:0").map_err(|e| {
        GrowError::Home(HomeError::Io {
            action: "parse the reader's address",
            path: config_file.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    })?;
    let mut settings = SupervisorSettings::new(binary, &config_file, &dir, listen, None);
    settings.ready_timeout = READER_READY;
    let reader = Supervisor::start(settings)
        .await
        .map_err(|source| GrowError::Reader {
            set_aside: set_aside.clone(),
            source,
        })?;
    let url = format!("nats://{}", reader.info().ports.client);
    let read = async {
        let client = async_nats::ConnectOptions::with_nkey(seed.clone())
            .connect(&url)
            .await
            .map_err(|e| bucket_error("connect to the reader of", "(all)", &set_aside)(e.into()))?;
        let buckets = read_buckets(&jetstream::new(client.clone()), &set_aside).await;
        drop(client);
        buckets
    }
    .await;
    if let Err(e) = reader.shutdown().await {
        tracing::warn!("grow: stopping the reader of the set-aside store: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let buckets = read?;
    for bucket in &buckets {
        tracing::info!(
            bucket = bucket.name(),
            keys = bucket.keys.len(),
            revisions = bucket.keys.values().map(Vec::len).sum::<usize>(),
            "grow: read the standalone bucket"
        );
    }
    Ok(buckets)
}

fn bucket_error<'a>(
    action: &'static str,
    bucket: &'a str,
    set_aside: &'a Path,
) -> impl FnOnce(async_nats::Error) -> GrowError + 'a {
    move |source| GrowError::Bucket {
        action,
        bucket: bucket.to_string(),
        set_aside: set_aside.to_path_buf(),
        source,
    }
}

/// Every zester bucket the server at `js` holds, with configuration and histories.
async fn read_buckets(js: &jetstream::Context, set_aside: &Path) -> Result<Vec<Bucket>, GrowError> {
    let mut names = js.stream_names();
    let mut streams = Vec::new();
    while let Some(name) = names.next().await {
        let name =
            name.map_err(|e| bucket_error("list the streams of", "(all)", set_aside)(e.into()))?;
        if name.starts_with(BUCKET_STREAMS) {
            streams.push(name);
        }
    }
    streams.sort();
    let mut buckets = Vec::new();
    for name in streams {
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|e| bucket_error("open", &name, set_aside)(e.into()))?;
        let info = stream
            .info()
            .await
            .map_err(|e| bucket_error("read the configuration of", &name, set_aside)(e.into()))?
            .clone();
        let bucket = name.strip_prefix("KV_").unwrap_or(&name).to_string();
        let kv = js
            .get_key_value(&bucket)
            .await
            .map_err(|e| bucket_error("open", &bucket, set_aside)(e.into()))?;
        let state = (info.state.messages, info.state.last_sequence);
        let keys = read_bucket(&kv, &bucket, state, set_aside).await?;
        buckets.push(Bucket {
            config: info.config,
            keys,
        });
    }
    Ok(buckets)
}

/// Every key of bucket `kv` with its whole history, up to at least revision `last` (the
/// stream's last sequence as its leader reported it; `messages`, how many it holds).
///
/// The watch's consumer may run on a follower that has not applied the latest writes yet: it
/// then says "nothing pending" before `last` (in a full test run the check right after the
/// copy saw a key one revision short, and the grow refused). Such a read goes on until `last`
/// arrives.
async fn read_bucket(
    kv: &kv::Store,
    bucket: &str,
    (messages, last): (u64, u64),
    set_aside: &Path,
) -> Result<Histories, GrowError> {
    let mut keys = Histories::new();
    if messages == 0 {
        return Ok(keys);
    }
    let mut watch = kv
        .watch_all_from_revision(1)
        .await
        .map_err(|e| bucket_error("read", bucket, set_aside)(e.into()))?;
    loop {
        let entry = match tokio::time::timeout(READ_STALL, watch.next()).await {
            Err(_) => {
                return Err(GrowError::Stalled {
                    bucket: bucket.to_string(),
                    after: READ_STALL,
                    set_aside: set_aside.to_path_buf(),
                })
            }
            Ok(None) => break,
            Ok(Some(entry)) => {
                entry.map_err(|e| bucket_error("read", bucket, set_aside)(e.into()))?
            }
        };
        let revision = Revision::of(&entry);
        let caught_up = entry.delta == 0 && entry.revision >= last;
        keys.entry(entry.key).or_default().push(revision);
        if caught_up {
            break;
        }
    }
    Ok(keys)
}

/// Steps 3 and 4, on the store connection of a clustered node with a meta leader: every
/// carried bucket made in the cluster if missing (`replicas` copies), the missing revisions
/// appended, everything read back and checked; then the marker says `clustered` and the
/// set-aside store is removed.
pub async fn carry_over(
    home: &Home,
    store: &async_nats::Client,
    carried: Carried,
    replicas: usize,
) -> Result<CarryReport, GrowError> {
    let set_aside = home.jetstream_set_aside_dir();
    let js = jetstream::new(store.clone());
    let mut report = CarryReport::default();
    for bucket in &carried.buckets {
        let mut attempt = 0;
        let started = std::time::Instant::now();
        let mut warned = started;
        let done = loop {
            attempt += 1;
            match copy_bucket(&js, bucket, replicas, &set_aside).await {
                Ok(done) => break done,
                // A bucket just made in the cluster answers only once its replicas elected a
                // leader; the plan is made again from what the cluster holds, so retrying never
                // writes a revision twice. While the cluster cannot answer at all (its peers not
                // up yet, no quorum), the copy waits for it as long as it takes.
                Err(e) if !matches!(e, GrowError::Unverified { .. }) => {
                    let transient = crate::appliance::keys::store::is_transient(&e.to_string());
                    if !transient && attempt >= COPY_ATTEMPTS {
                        return Err(e);
                    }
                    if warned.elapsed() >= SETTLING_WARN {
                        warned = std::time::Instant::now();
                        tracing::warn!(
                            bucket = bucket.name(),
                            attempt,
                            waited_s = started.elapsed().as_secs(),
                            "grow: {e}; still trying: are more than half of the nodes up and \
                             routed? (`zester status` on one of them shows which)"
                        );
                    } else {
                        tracing::info!(bucket = bucket.name(), attempt, "grow: {e}; trying again");
                    }
                    tokio::time::sleep((COPY_BACKOFF * attempt).min(COPY_BACKOFF_MAX)).await;
                }
                Err(e) => return Err(e),
            }
        };
        report.buckets += 1;
        report.keys += done.append.len();
        report.revisions += done.revisions();
        report.same += done.same;
        report.kept += done.kept.len();
    }
    mark(home, Mode::Clustered)?;
    std::fs::remove_dir_all(&set_aside).map_err(io_error("remove", &set_aside))?;
    tracing::info!(
        buckets = report.buckets,
        keys = report.keys,
        revisions = report.revisions,
        same = report.same,
        kept = report.kept,
        removed = %set_aside.display(),
        "grow: every standalone bucket is in the cluster, verified; the set-aside store is removed"
    );
    Ok(report)
}

/// One bucket: made in the cluster if missing, planned from what the cluster holds, the
/// missing revisions appended, read back and planned again (nothing may be left). Returns the
/// plan that was carried out.
async fn copy_bucket(
    js: &jetstream::Context,
    bucket: &Bucket,
    replicas: usize,
    set_aside: &Path,
) -> Result<BucketPlan, GrowError> {
    let name = bucket.name();
    let kv = open_in_cluster(js, bucket, replicas, set_aside).await?;
    let plan = plan_bucket(
        &bucket.keys,
        &read_cluster(js, &kv, bucket, set_aside).await?,
    );
    tracing::info!(
        bucket = %name,
        keys = plan.append.len(),
        revisions = plan.revisions(),
        same = plan.same,
        kept = plan.kept.len(),
        "grow: copying the standalone bucket into the cluster"
    );
    for key in &plan.kept {
        tracing::warn!(bucket = %name, %key, "grow: this key changed in the cluster since the node grew: the cluster's history is kept, the standalone one is not copied");
    }
    // What a write expects comes from this copy's own writes, or else from the stream's
    // leader (`kv_leader`): a follower that has not applied the latest write yet gives an
    // older revision, which the write then fails on as if another node had changed the key
    // (CI: zester-nodes was left one key short and the grow refused).
    for (key, revisions) in &plan.append {
        // Each write expects the revision the key had when it was read: a node that changed
        // the key meanwhile (they serve while this one copies) keeps its change, and this
        // key's old history is left out, as for one that changed before the plan.
        let history = bucket.keys.get(key).map(Vec::as_slice).unwrap_or_default();
        let there = history.len().saturating_sub(revisions.len());
        let mut expected = match there {
            // The cluster lacked the key: the first write creates it, or fails if it is there.
            0 => 0,
            // The cluster's latest record must still be the one the plan saw.
            _ => match kv_leader::entry(&kv, key)
                .await
                .map_err(|e| bucket_error("read", name, set_aside)(e.into()))?
            {
                Some(entry) if Revision::of(&entry) == history[there - 1] => entry.revision,
                _ => {
                    tracing::warn!(bucket = %name, %key, "{CHANGED_WHILE_COPIED}");
                    continue;
                }
            },
        };
        for revision in revisions {
            // The next write expects the revision this one made, never one read afterwards:
            // a node that wrote the key in between (its own record at start, say) must make
            // the next write fail, not be overwritten by the old history.
            let written: Result<Option<u64>, async_nats::Error> = match revision {
                Revision::Put(value) => kv
                    .update(key, value.clone().into(), expected)
                    .await
                    .map(Some)
                    .map_err(Into::into),
                Revision::Delete => kv
                    .delete_expect_revision(key, Some(expected))
                    .await
                    .map(|_| None)
                    .map_err(Into::into),
                Revision::Purge => kv
                    .purge_expect_revision(key, Some(expected))
                    .await
                    .map(|_| None)
                    .map_err(Into::into),
            };
            let made = match written {
                Ok(Some(made)) => made,
                // A delete or a purge says no revision: the leader's latest record is this
                // one only if it is that marker.
                Ok(None) => match kv_leader::entry(&kv, key)
                    .await
                    .map_err(|e| bucket_error("read", name, set_aside)(e.into()))?
                {
                    Some(entry) if Revision::marker_of(&entry.operation) == Some(revision) => {
                        entry.revision
                    }
                    _ => {
                        tracing::warn!(bucket = %name, %key, "{CHANGED_WHILE_COPIED}");
                        break;
                    }
                },
                Err(e) if e.to_string().to_lowercase().contains("wrong last") => {
                    tracing::warn!(bucket = %name, %key, "{CHANGED_WHILE_COPIED}");
                    break;
                }
                Err(e) => return Err(bucket_error("write into", name, set_aside)(e)),
            };
            expected = made;
        }
    }
    let check = plan_bucket(
        &bucket.keys,
        &read_cluster(js, &kv, bucket, set_aside).await?,
    );
    if let Some((first, _)) = check.append.first() {
        return Err(GrowError::Unverified {
            bucket: name.to_string(),
            keys: check.append.len(),
            first: first.clone(),
            set_aside: set_aside.to_path_buf(),
        });
    }
    Ok(plan)
}

/// The bucket in the cluster, made with the standalone configuration if it is missing.
async fn open_in_cluster(
    js: &jetstream::Context,
    bucket: &Bucket,
    replicas: usize,
    set_aside: &Path,
) -> Result<kv::Store, GrowError> {
    let name = bucket.name();
    if js.get_stream(&bucket.config.name).await.is_err() {
        let mut config = bucket.config.clone();
        config.num_replicas = replicas;
        // Placement and the server-made metadata belong to the old server.
        config.placement = None;
        config.metadata.retain(|key, _| !key.starts_with("_nats."));
        if let Err(e) = js.create_stream(config).await {
            // Another node may have made it meanwhile; opening it below says.
            tracing::info!(bucket = %name, "grow: could not create the bucket in the cluster ({e}); opening it");
        }
    }
    js.get_key_value(name)
        .await
        .map_err(|e| bucket_error("open in the cluster", name, set_aside)(e.into()))
}

/// What the cluster holds of `bucket` now (the stream's state asked afresh: a `kv::Store`
/// keeps the state it was opened with).
async fn read_cluster(
    js: &jetstream::Context,
    kv: &kv::Store,
    bucket: &Bucket,
    set_aside: &Path,
) -> Result<Histories, GrowError> {
    let name = bucket.name();
    let state = js
        .get_stream(&bucket.config.name)
        .await
        .map_err(|e| bucket_error("read the state in the cluster of", name, set_aside)(e.into()))?
        .cached_info()
        .state
        .clone();
    read_bucket(kv, name, (state.messages, state.last_sequence), set_aside).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(v: &str) -> Revision {
        Revision::Put(v.as_bytes().to_vec())
    }

    #[test]
    fn a_store_made_standalone_is_set_aside_only_when_starting_clustered() {
        let standalone = Survey {
            marker: Some(Mode::Standalone),
            has_streams: true,
            ..Survey::default()
        };
        assert_eq!(next_step(true, &standalone), Step::SetAside);
        assert_eq!(next_step(false, &standalone), Step::Nothing);
        // A home from before the marker: streams and no meta group.
        let old = Survey {
            has_streams: true,
            ..Survey::default()
        };
        assert_eq!(next_step(true, &old), Step::SetAside);
        // Clustered already (marker, or a meta group without one), or nothing stored.
        let clustered = Survey {
            marker: Some(Mode::Clustered),
            has_streams: true,
            ..Survey::default()
        };
        assert_eq!(next_step(true, &clustered), Step::Nothing);
        let meta = Survey {
            has_streams: true,
            has_meta: true,
            ..Survey::default()
        };
        assert_eq!(next_step(true, &meta), Step::Nothing);
        assert_eq!(next_step(true, &Survey::default()), Step::Nothing);
    }

    #[test]
    fn an_unfinished_grow_resumes_and_is_never_started_past() {
        let waiting = Survey {
            set_aside: true,
            marker: Some(Mode::Clustered),
            has_streams: true,
            has_meta: true,
        };
        assert_eq!(next_step(true, &waiting), Step::Resume);
        assert_eq!(next_step(false, &waiting), Step::Refuse);
    }

    #[test]
    fn a_key_gets_what_the_cluster_lacks_at_the_end_of_its_history() {
        let history = [put("a"), put("b"), Revision::Delete, put("c")];
        assert_eq!(plan_key(&history, &[]), KeyPlan::Append(history.to_vec()));
        // A rerun after a crash half-way writes only the rest.
        assert_eq!(
            plan_key(&history, &history[..2]),
            KeyPlan::Append(history[2..].to_vec())
        );
        assert_eq!(plan_key(&history, &history), KeyPlan::Same);
        // Changed in the cluster since: kept as it is.
        assert_eq!(plan_key(&history, &[put("x")]), KeyPlan::ClusterNewer);
        let mut newer = history.to_vec();
        newer.push(put("d"));
        assert_eq!(plan_key(&history, &newer), KeyPlan::ClusterNewer);
    }

    #[test]
    fn a_bucket_is_planned_key_by_key_and_keys_only_the_cluster_has_are_left() {
        let standalone: Histories = [
            ("one".to_string(), vec![put("1")]),
            ("two".to_string(), vec![put("2"), Revision::Purge]),
            ("three".to_string(), vec![put("3")]),
        ]
        .into();
        let cluster: Histories = [
            ("one".to_string(), vec![put("1")]),
            ("three".to_string(), vec![put("changed")]),
            ("four".to_string(), vec![put("4")]),
        ]
        .into();
        let plan = plan_bucket(&standalone, &cluster);
        assert_eq!(
            plan.append,
            vec![("two".to_string(), vec![put("2"), Revision::Purge])]
        );
        assert_eq!(plan.revisions(), 2);
        assert_eq!(plan.same, 1);
        assert_eq!(plan.kept, vec!["three".to_string()]);
    }

    #[test]
    fn the_marker_names_a_mode() {
        for mode in [Mode::Standalone, Mode::Clustered] {
            assert_eq!(Mode::parse(&format!("{}\n", mode.as_str())), Some(mode));
        }
        assert_eq!(Mode::parse("cluster"), None);
    }

    #[test]
    fn the_survey_reads_the_marker_the_streams_and_the_meta_group() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        assert_eq!(survey(&home).unwrap(), Survey::default());
        let streams = home
            .jetstream_dir()
            .join("jetstream/AZESTER/streams/KV_zester-keys");
        std::fs::create_dir_all(&streams).unwrap();
        std::fs::create_dir_all(home.jetstream_dir().join("jetstream/$SYS/_js_/_meta_")).unwrap();
        mark(&home, Mode::Standalone).unwrap();
        assert_eq!(
            survey(&home).unwrap(),
            Survey {
                marker: Some(Mode::Standalone),
                has_streams: true,
                has_meta: true,
                set_aside: false,
            }
        );
    }
}
