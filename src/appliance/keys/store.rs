//! The key store: key records in a JetStream KV bucket, mirrored into a [`KeyCache`].
//!
//! The bucket (`zester-keys`, file storage, 5 revisions per key) is the one source of truth,
//! shared by every node of a cluster (DESIGN §9); nothing is decided from a node's own memory
//! alone. Writes go straight to the bucket and use its revisions for compare-and-set, so two
//! admins (or two nodes) can never silently overwrite each other. Reads for decisions come from
//! the cache, which a background task keeps current by watching the bucket: at open the task
//! replays the latest value of every key, then applies each change as it is stored.
//!
//! The watch has to survive the supervisor restarting nats-server. async-nats reconnects by
//! itself and its ordered consumer resumes after the last delivered revision; when the watch
//! still ends, errors, stalls (the bucket has moved on and nothing arrives) or the bucket's
//! revisions go backwards (a restored store), the task reloads every record with a short backoff
//! and swaps the result in whole, logging at info level. Until then readers keep the last
//! complete snapshot.
//!
//! A stalled watch shows itself only after async-nats misses two idle heartbeats (10 s), too
//! late for a revoke that must hold on every node within a second. So the task is also told
//! which revision the bucket is known to have reached ([`KeyStore::expect`]): every write this
//! node makes, and every write another node announces (`appliance::cluster` relays them). When
//! the watch has not delivered that revision [`NOTICE_GRACE`] later, the task reloads at once.
//! A notice only ever makes the task read the bucket again, so a false one costs one reload
//! and changes nothing; the records always come from the bucket.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::cache::{self, CacheError, CacheWriter, Change, KeyCache, Snapshot, Stored};
use crate::identity::peel_id::PeelId;
use crate::wire::record::{KeyError, KeyRecord, KeyState};

/// The KV bucket holding the key records.
pub const BUCKET: &str = crate::wire::subjects::KEYS_BUCKET;
/// Revisions kept per key (the record's own `history` carries the longer story).
pub const BUCKET_HISTORY: i64 = 5;
/// The largest record the bucket accepts; a full record with 50 history entries is far smaller.
const MAX_RECORD_BYTES: i32 = 64 * 1024;

/// How long [`KeyStore::reachable`] waits for the bucket's leader to answer.
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(3);
/// A copy of the bucket the leader has not heard from for longer is counted lost (raft
/// heartbeats are a second apart).
const REPLICA_HEARD: Duration = Duration::from_secs(4);
/// How long loading may wait for the next record before giving up.
const LOAD_STALL: Duration = Duration::from_secs(10);
/// Backoff between attempts to re-establish the watch.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A watch that ran this long counts as healthy: the next failure starts the backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How often the watch task compares the bucket's last revision with the cache's.
const LAG_CHECK: Duration = Duration::from_secs(15);
/// The most changes folded into one snapshot.
const MAX_BATCH: usize = 256;
/// How long the watch may take to deliver a revision the bucket is known to have reached before
/// the task reloads (deliveries normally take milliseconds).
pub const NOTICE_GRACE: Duration = Duration::from_millis(500);

/// What went wrong with the key store.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The bucket could neither be opened nor created.
    #[error("could not open or create the JetStream KV bucket {BUCKET}: {source}. Is JetStream enabled on the nats-server, and may this user use $JS.API.> and $KV.{BUCKET}.>?")]
    Bucket {
        /// The last error from the server.
        source: async_nats::Error,
    },
    /// Reading all records failed.
    #[error("could not read the key records from bucket {BUCKET}: {source}")]
    Load {
        /// The error from the server.
        source: async_nats::Error,
    },
    /// Reading all records stopped making progress.
    #[error("reading the key records from bucket {BUCKET} made no progress for {after:?}; is the nats-server overloaded or restarting?")]
    LoadStalled {
        /// How long nothing arrived.
        after: Duration,
    },
    /// A record is invalid (before a write) or damaged (on a read).
    #[error(transparent)]
    Record(#[from] KeyError),
    /// `update` was given the record of another peel.
    #[error("the record of peel {record_id} cannot be written as the record of peel {id}")]
    IdMismatch {
        /// The id written under.
        id: PeelId,
        /// The id inside the record.
        record_id: PeelId,
    },
    /// `create` found the id already taken.
    #[error("peel id {id} is already registered to a {state} key ({fingerprint}); {}", already_hint(*.same_key, *.state))]
    AlreadyExists {
        /// The id.
        id: PeelId,
        /// The state of the record already there.
        state: KeyState,
        /// Fingerprint of the key already there.
        fingerprint: String,
        /// Whether the record already there holds the same nkey.
        same_key: bool,
    },
    /// Compare-and-set lost: the record changed since it was read.
    #[error("someone else changed the key record of peel {id} first (it was read at revision {expected}, {}); read it again and redo the change", found_text(*.found))]
    Conflict {
        /// The id.
        id: PeelId,
        /// The revision the caller read.
        expected: u64,
        /// The revision now stored, `None` when the record is gone.
        found: Option<u64>,
    },
    /// A read or write of one record failed.
    #[error("could not {action} the key record of peel {id} in bucket {BUCKET}: {source}")]
    Kv {
        /// What was being done ("create", "update", "read").
        action: &'static str,
        /// The id.
        id: PeelId,
        /// The error from the server.
        source: async_nats::Error,
    },
    /// The cache did not catch up.
    #[error(transparent)]
    CacheBehind(#[from] CacheError),
}

fn already_hint(same_key: bool, state: KeyState) -> String {
    if same_key {
        format!("it is the same key, but it is {state} and is not accepted again by registering it")
    } else {
        "an id is never taken over by a new key: choose another id, or deal with the old key first"
            .to_string()
    }
}

fn found_text(found: Option<u64>) -> String {
    match found {
        Some(revision) => format!("it is now at revision {revision}"),
        None => "it has been deleted since".to_string(),
    }
}

/// How [`KeyStore::create_or_same`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The record was written at this revision.
    Created(u64),
    /// The same key was already accepted under this id, at this revision; nothing was written.
    AlreadyPresent(u64),
}

impl CreateOutcome {
    /// The revision of the record in the bucket.
    pub fn revision(self) -> u64 {
        match self {
            CreateOutcome::Created(revision) | CreateOutcome::AlreadyPresent(revision) => revision,
        }
    }
}

/// How long a read waits for a cluster to elect the bucket's new leader.
pub(crate) const ELECTION_WAIT: Duration = Duration::from_secs(10);
/// How long a write refused at once is asked again while a leader may be being elected.
const WRITE_ELECTION_WAIT: Duration = Duration::from_secs(4);
/// How long opening the store waits for a load it can start from (a leader it knows of).
const START_LOAD_WAIT: Duration = Duration::from_secs(30);
/// How often it asks again meanwhile.
pub(crate) const ELECTION_POLL: Duration = Duration::from_millis(250);

/// Whether a JetStream error is one a leader election gives for a moment.
pub(crate) fn is_transient(error: &str) -> bool {
    let error = error.to_lowercase();
    [
        "no stream found",
        "no responders",
        "timed out",
        "temporarily unavailable",
        // A bucket made while a forming cluster's meta group still counts a peer offline
        // (CI: a second node exited with this making zester-tokens).
        "no suitable peers for placement",
    ]
    .iter()
    .any(|what| error.contains(what))
}

/// The key store of one node: the bucket, and the cache its watch task keeps current.
///
/// Dropping it (or [`KeyStore::close`]) stops the watch task; caches handed out keep their last
/// snapshot.
#[derive(Debug)]
pub struct KeyStore {
    kv: kv::Store,
    cache: KeyCache,
    watcher: Option<JoinHandle<()>>,
    /// The highest revision the bucket is known to have reached (read by the watch task).
    expected: watch::Sender<u64>,
    /// The highest revision this node wrote (for the cluster to announce).
    written: watch::Sender<u64>,
}

impl KeyStore {
    /// Opens the bucket (creating it if missing; an existing bucket is used as it is, whatever
    /// its settings), loads every record into the cache, and starts the watch task.
    pub async fn open(client: async_nats::Client) -> Result<KeyStore, KeyStoreError> {
        KeyStore::open_replicated(client, 1).await
    }

    /// [`KeyStore::open`], creating a missing bucket with `replicas` copies (a cluster's
    /// `min(3, nodes)`; `appliance::cluster::keep_replicated` raises them as the cluster grows).
    pub async fn open_replicated(
        client: async_nats::Client,
        replicas: usize,
    ) -> Result<KeyStore, KeyStoreError> {
        let kv = open_bucket(&jetstream::new(client), replicas).await?;
        let (cache, writer) = KeyCache::new();
        // Right after a start the bucket's leader may not be known yet (see `load`): asked
        // again for a while.
        let mut waited = Duration::ZERO;
        let watch = loop {
            match load(&kv, &writer).await {
                Ok(watch) => break watch,
                Err(error) if waited < START_LOAD_WAIT => {
                    tracing::debug!(bucket = BUCKET, %error, "key store not loaded yet; asking again");
                    tokio::time::sleep(ELECTION_POLL).await;
                    waited += ELECTION_POLL;
                }
                Err(error) => return Err(error),
            }
        };
        tracing::debug!(
            bucket = BUCKET,
            records = cache.counts().total(),
            revision = cache.revision(),
            "key store loaded"
        );
        let (expected, expected_rx) = watch::channel(cache.revision());
        let watcher = tokio::spawn(watch_forever(kv.clone(), writer, watch, expected_rx));
        Ok(KeyStore {
            kv,
            cache,
            watcher: Some(watcher),
            expected,
            written: watch::channel(0).0,
        })
    }

    /// Tells the watch task that the bucket has reached `revision` (another node announced a
    /// write): if the cache has not seen it within [`NOTICE_GRACE`], the task reloads.
    pub fn expect(&self, revision: u64) {
        self.expected.send_if_modified(|known| {
            let higher = revision > *known;
            *known = (*known).max(revision);
            higher
        });
    }

    /// The highest revision this node has written, for the cluster to announce (0 before the
    /// first write).
    pub fn written(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// After a write of this node at `revision`: expected here, and announced.
    fn wrote(&self, revision: u64) {
        self.expect(revision);
        self.written.send_if_modified(|last| {
            let higher = revision > *last;
            *last = (*last).max(revision);
            higher
        });
    }

    /// A reader of the records, kept current by this store's watch.
    pub fn cache(&self) -> KeyCache {
        self.cache.clone()
    }

    /// Registers `record` under its id and returns the revision. Fails with
    /// [`KeyStoreError::AlreadyExists`] when the id is taken, except that registering the same
    /// key again while it is accepted succeeds without writing (see [`KeyStore::create_or_same`]).
    pub async fn create(&self, record: &KeyRecord) -> Result<u64, KeyStoreError> {
        self.create_or_same(record)
            .await
            .map(CreateOutcome::revision)
    }

    /// [`KeyStore::create`], telling a new record from one that was already there.
    pub async fn create_or_same(&self, record: &KeyRecord) -> Result<CreateOutcome, KeyStoreError> {
        record.validate()?;
        let id = &record.id;
        // As for reads, wait out a leader election (a create that landed before its answer was
        // lost is found by the retry as "already exists", the same key: handled below).
        let mut waited = Duration::ZERO;
        let created = loop {
            match self.kv.create(id.as_str(), record.to_json().into()).await {
                Err(error)
                    if error.kind() != kv::CreateErrorKind::AlreadyExists
                        && waited < ELECTION_WAIT
                        && is_transient(&error.to_string()) =>
                {
                    tokio::time::sleep(ELECTION_POLL).await;
                    waited += ELECTION_POLL;
                }
                other => break other,
            }
        };
        match created {
            Ok(revision) => {
                self.wrote(revision);
                Ok(CreateOutcome::Created(revision))
            }
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                match self.get(id).await? {
                    Some((held, revision))
                        if held.nkey == record.nkey && held.state == KeyState::Accepted =>
                    {
                        Ok(CreateOutcome::AlreadyPresent(revision))
                    }
                    Some((held, _)) => Err(KeyStoreError::AlreadyExists {
                        id: id.clone(),
                        state: held.state,
                        fingerprint: held.fingerprint(),
                        same_key: held.nkey == record.nkey,
                    }),
                    // Deleted between the two calls: the caller may simply try again.
                    None => Err(KeyStoreError::Kv {
                        action: "create",
                        id: id.clone(),
                        source: Box::new(error),
                    }),
                }
            }
            Err(error) => Err(KeyStoreError::Kv {
                action: "create",
                id: id.clone(),
                source: Box::new(error),
            }),
        }
    }

    /// Whether the bucket's stream has a leader this node can reach (asked afresh; a node
    /// cut off from the majority answers from its own replica, with no leader): why not if not.
    pub async fn reachable(&self) -> Result<(), String> {
        match tokio::time::timeout(REACHABLE_TIMEOUT, self.kv.stream.get_info()).await {
            Ok(Ok(info)) => match info.cluster {
                Some(cluster) if cluster.leader.as_deref().unwrap_or_default().is_empty() => {
                    Err(format!("bucket {BUCKET} has no leader"))
                }
                // A leader that lost its followers stays leader in its own eyes for a while
                // (its writes just time out): it needs a majority it has heard from lately.
                Some(cluster) => {
                    let heard = cluster
                        .replicas
                        .iter()
                        .filter(|peer| !peer.offline && peer.active <= REPLICA_HEARD)
                        .count();
                    let (up, all) = (1 + heard, 1 + cluster.replicas.len());
                    if 2 * up > all {
                        Ok(())
                    } else {
                        Err(format!(
                            "bucket {BUCKET}: its leader {} has heard from {up} of {all} copies lately",
                            cluster.leader.unwrap_or_default()
                        ))
                    }
                }
                None => Ok(()),
            },
            Ok(Err(e)) => Err(format!("bucket {BUCKET}: {e}")),
            Err(_) => Err(format!(
                "bucket {BUCKET}: no answer within {} s",
                REACHABLE_TIMEOUT.as_secs()
            )),
        }
    }

    /// Replaces the record of `id` if, and only if, it is still at `expected_revision`
    /// (compare-and-set); returns the new revision. Losing the race gives
    /// [`KeyStoreError::Conflict`].
    pub async fn update(
        &self,
        id: &PeelId,
        expected_revision: u64,
        record: &KeyRecord,
    ) -> Result<u64, KeyStoreError> {
        if record.id != *id {
            return Err(KeyStoreError::IdMismatch {
                id: id.clone(),
                record_id: record.id.clone(),
            });
        }
        record.validate()?;
        // While a cluster elects the bucket's new leader (its node just died) a write is
        // refused at once for a few seconds ("no responders", "no stream found"): asked again
        // for WRITE_ELECTION_WAIT. Not after a timeout, which may have landed and takes seconds
        // itself; and not longer, so that a node cut off from the majority still answers the
        // admin (who waits 10 s) with why it refuses.
        let started = std::time::Instant::now();
        let mut retried = false;
        let outcome = loop {
            match self
                .kv
                .update(id.as_str(), record.to_json().into(), expected_revision)
                .await
            {
                Err(error)
                    if error.kind() != kv::UpdateErrorKind::WrongLastRevision
                        && started.elapsed() < WRITE_ELECTION_WAIT
                        && is_transient(&error.to_string())
                        && !error.to_string().to_lowercase().contains("timed out") =>
                {
                    retried = true;
                    tokio::time::sleep(ELECTION_POLL).await;
                }
                other => break other,
            }
        };
        match outcome {
            Ok(revision) => {
                self.wrote(revision);
                Ok(revision)
            }
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // An attempt refused "at once" may still have landed: if the bucket holds
                // exactly this record (its history carries this write's time), it is ours.
                if retried {
                    if let Ok(Some(entry)) = self.kv.entry(id.as_str()).await {
                        if entry.operation == kv::Operation::Put
                            && entry.value.as_ref() == record.to_json().as_slice()
                        {
                            self.wrote(entry.revision);
                            return Ok(entry.revision);
                        }
                    }
                }
                // Only for the message: if this read fails, say what we know.
                let found = match self.kv.entry(id.as_str()).await {
                    Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                        Some(entry.revision)
                    }
                    _ => None,
                };
                Err(KeyStoreError::Conflict {
                    id: id.clone(),
                    expected: expected_revision,
                    found,
                })
            }
            Err(error) => Err(KeyStoreError::Kv {
                action: "update",
                id: id.clone(),
                source: Box::new(error),
            }),
        }
    }

    /// Deletes the record of `id` if it is still at `expected_revision` (compare-and-set). The
    /// bucket keeps the history; the id becomes free for a new enrolment.
    pub async fn delete(&self, id: &PeelId, expected_revision: u64) -> Result<(), KeyStoreError> {
        match self
            .kv
            .delete_expect_revision(id.as_str(), Some(expected_revision))
            .await
        {
            Ok(()) => {
                // The delete's revision is its marker's (async-nats does not return it); if
                // that read fails, the watch delivers the delete as usual.
                if let Ok(Some(marker)) = self.kv.entry(id.as_str()).await {
                    self.wrote(marker.revision);
                }
                Ok(())
            }
            Err(error) => match self.get(id).await {
                Ok(Some((_, found))) if found != expected_revision => {
                    Err(KeyStoreError::Conflict {
                        id: id.clone(),
                        expected: expected_revision,
                        found: Some(found),
                    })
                }
                _ => Err(KeyStoreError::Kv {
                    action: "delete",
                    id: id.clone(),
                    source: Box::new(error),
                }),
            },
        }
    }

    /// Reads the record of `id` from the bucket (not the cache) with its revision; `None` when
    /// there is none (or it was deleted).
    ///
    /// A direct get, which any copy answers, not the stream's leader (`kv_leader`): while a
    /// cluster elects a new leader (its node just died) only the copies answer, and an admin's
    /// revoke must not wait seconds for the read (CI, with leader reads: "did not answer within
    /// 10 s"). A copy that lags can only make the compare-and-set that follows fail as a
    /// conflict, never lose a write.
    pub async fn get(&self, id: &PeelId) -> Result<Option<(KeyRecord, u64)>, KeyStoreError> {
        // While a cluster elects the bucket's new leader (its node just died), reads fail for a
        // few seconds ("no stream found", "no responders"): a read is safe to ask again.
        let mut waited = Duration::ZERO;
        let entry = loop {
            match self.kv.entry(id.as_str()).await {
                Ok(entry) => break entry,
                Err(error) if waited < ELECTION_WAIT && is_transient(&error.to_string()) => {
                    tokio::time::sleep(ELECTION_POLL).await;
                    waited += ELECTION_POLL;
                }
                Err(error) => {
                    return Err(KeyStoreError::Kv {
                        action: "read",
                        id: id.clone(),
                        source: Box::new(error),
                    })
                }
            }
        };
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => Ok(Some((
                KeyRecord::from_kv(&entry.key, &entry.value)?,
                entry.revision,
            ))),
            _ => Ok(None),
        }
    }

    /// Waits until the cache has caught up with `revision` (e.g. one a write returned).
    pub async fn wait_for_revision(
        &self,
        revision: u64,
        timeout: Duration,
    ) -> Result<u64, KeyStoreError> {
        Ok(self.cache.wait_for_revision(revision, timeout).await?)
    }

    /// Stops the watch task and waits for it to end.
    pub async fn close(mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
            // Cancelled is the expected outcome; a panic in the task was already reported.
            let _ = watcher.await;
        }
    }
}

impl Drop for KeyStore {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
    }
}

fn bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        num_replicas: replicas,
        bucket: BUCKET.to_string(),
        description: "zester key records: one JSON record per peel id (nkey, xkey, state, history)"
            .to_string(),
        history: BUCKET_HISTORY,
        max_value_size: MAX_RECORD_BYTES,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

async fn open_bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, KeyStoreError> {
    if let Ok(kv) = js.get_key_value(BUCKET).await {
        return Ok(kv);
    }
    match js.create_key_value(bucket_config(replicas)).await {
        Ok(kv) => {
            tracing::info!(bucket = BUCKET, "created the key store bucket");
            Ok(kv)
        }
        // Another node may have created it meanwhile, perhaps with other settings.
        Err(error) => js
            .get_key_value(BUCKET)
            .await
            .map_err(|_| KeyStoreError::Bucket {
                source: Box::new(error),
            }),
    }
}

/// Reads the latest value of every key into a fresh snapshot, publishes it, and returns the
/// watch positioned after it.
async fn load(kv: &kv::Store, writer: &CacheWriter) -> Result<kv::Watch, KeyStoreError> {
    let info = kv
        .stream
        .get_info()
        .await
        .map_err(|error| KeyStoreError::Load {
            source: Box::new(error),
        })?;
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|error| KeyStoreError::Load {
            source: Box::new(error),
        })?;
    // A node that just started may not know the bucket's leader yet, and then its own copy,
    // which may be behind what changed while it was down, answers: not a state to start from.
    if let Some(cluster) = &info.cluster {
        if cluster.leader.as_deref().unwrap_or_default().is_empty() {
            return Err(KeyStoreError::Load {
                source: "the bucket has no leader this node knows of yet".into(),
            });
        }
    }
    let mut by_id = BTreeMap::new();
    let last = info.state.last_sequence;
    let mut revision = 0;
    // An empty bucket delivers nothing; otherwise the entry with nothing pending after it marks
    // the end of the replay (it may be later than `last_sequence` if writes raced the load).
    // "Nothing pending" is counted on the copy the consumer lives on, which may still be
    // catching up: the replay also goes on until it has delivered the bucket's last revision as
    // the leader reported it (a bucket's newest message is always the latest of its key).
    if info.state.messages > 0 {
        loop {
            let entry = match tokio::time::timeout(LOAD_STALL, watch.next()).await {
                Err(_) => return Err(KeyStoreError::LoadStalled { after: LOAD_STALL }),
                Ok(None) => {
                    return Err(KeyStoreError::Load {
                        source: "the watch ended before all records were read".into(),
                    })
                }
                Ok(Some(Err(error))) => {
                    return Err(KeyStoreError::Load {
                        source: Box::new(error),
                    })
                }
                Ok(Some(Ok(entry))) => entry,
            };
            apply_entry(&mut by_id, &entry);
            revision = revision.max(entry.revision);
            if entry.delta == 0 && revision >= last {
                break;
            }
        }
    }
    writer.publish(Snapshot::build(by_id), revision.max(last));
    Ok(watch)
}

fn apply_entry(by_id: &mut BTreeMap<PeelId, Stored>, entry: &kv::Entry) {
    let change = match entry.operation {
        kv::Operation::Put => Change::Put {
            key: &entry.key,
            value: &entry.value,
            revision: entry.revision,
        },
        kv::Operation::Delete | kv::Operation::Purge => Change::Remove { key: &entry.key },
    };
    cache::apply(by_id, change);
}

/// Why [`follow`] stopped.
struct Stopped {
    reason: String,
    /// The bucket is known to be ahead of the watch: reload now, without the backoff.
    at_once: bool,
}

/// The watch task: follows the bucket, and reloads whenever following stops working.
async fn watch_forever(
    kv: kv::Store,
    writer: CacheWriter,
    mut watch: kv::Watch,
    mut expected: watch::Receiver<u64>,
) {
    let mut backoff = MIN_BACKOFF;
    // A notice the last reload did not bear out (the bucket is not there): not acted on again.
    let mut dismissed = 0;
    loop {
        let started = Instant::now();
        let stopped = follow(&kv, &mut watch, &writer, &mut expected, dismissed).await;
        if started.elapsed() >= HEALTHY_RUN {
            backoff = MIN_BACKOFF;
        }
        tracing::info!(
            bucket = BUCKET,
            revision = writer.revision(),
            reason = %stopped.reason,
            "key store watch stopped; reloading the key records"
        );
        let mut wait = if stopped.at_once {
            Duration::ZERO
        } else {
            backoff
        };
        loop {
            tokio::time::sleep(wait).await;
            wait = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match load(&kv, &writer).await {
                Ok(fresh) => {
                    watch = fresh;
                    let known = *expected.borrow();
                    if known > writer.revision() {
                        dismissed = known;
                    }
                    tracing::info!(
                        bucket = BUCKET,
                        revision = writer.revision(),
                        "key store watch re-established"
                    );
                    break;
                }
                Err(error) => tracing::info!(
                    bucket = BUCKET,
                    %error,
                    retry_in = ?backoff,
                    "could not re-establish the key store watch"
                ),
            }
        }
    }
}

/// Applies changes from `watch` until it ends, fails or falls behind (the bucket's revision, or
/// one it is known to have reached above `dismissed`); returns why it stopped.
async fn follow(
    kv: &kv::Store,
    watch: &mut kv::Watch,
    writer: &CacheWriter,
    expected: &mut watch::Receiver<u64>,
    dismissed: u64,
) -> Stopped {
    let mut lag_check = tokio::time::interval_at(Instant::now() + LAG_CHECK, LAG_CHECK);
    // The bucket's last revision at the previous check, if the cache was behind it then.
    let mut behind: Option<u64> = None;
    // When the watch must have delivered the revision the bucket is known to have reached.
    let mut due: Option<Instant> = None;
    let stop = |reason: String| Stopped {
        reason,
        at_once: false,
    };
    loop {
        let known = *expected.borrow_and_update();
        if known <= writer.revision() || known <= dismissed {
            due = None;
        } else if due.is_none() {
            due = Some(Instant::now() + NOTICE_GRACE);
        }
        let first = tokio::select! {
            next = watch.next() => next,
            _ = lag_check.tick() => {
                match check_lag(kv, writer.revision(), &mut behind).await {
                    Some(reason) => return stop(reason),
                    None => continue,
                }
            }
            changed = expected.changed() => {
                if changed.is_err() {
                    // The store is gone; the task is about to be stopped.
                    std::future::pending::<()>().await;
                }
                continue;
            }
            _ = sleep_until(due) => {
                return Stopped {
                    reason: format!(
                        "the bucket is known to be at revision {known}, and the watch has delivered only {} after {NOTICE_GRACE:?}",
                        writer.revision()
                    ),
                    at_once: true,
                };
            }
        };
        let mut by_id = writer.current().by_id().clone();
        let mut revision = writer.revision();
        let mut stopped = None;
        let mut next = Some(first);
        let mut applied = 0;
        while let Some(item) = next.take() {
            match item {
                None => stopped = Some("the watch ended".to_string()),
                Some(Err(error)) => stopped = Some(format!("the watch failed: {error}")),
                Some(Ok(entry)) => {
                    apply_entry(&mut by_id, &entry);
                    revision = entry.revision;
                    applied += 1;
                    // Fold whatever has already arrived into the same snapshot.
                    if applied < MAX_BATCH {
                        next = watch.next().now_or_never();
                    }
                }
            }
        }
        if applied > 0 {
            writer.publish(Snapshot::build(by_id), revision);
            behind = behind.filter(|&last| revision < last);
        }
        if let Some(reason) = stopped {
            return stop(reason);
        }
    }
}

/// Sleeps until `due`, or forever when there is none.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Compares the bucket's last revision with the cache's. A bucket behind the cache was reset
/// (a restored or replaced store); a cache still behind what the bucket had at the previous
/// check is not being fed. Either way the caller reloads. A failed check says nothing.
async fn check_lag(kv: &kv::Store, revision: u64, behind: &mut Option<u64>) -> Option<String> {
    let last = match kv.stream.get_info().await {
        Ok(info) => info.state.last_sequence,
        Err(error) => {
            tracing::debug!(bucket = BUCKET, %error, "could not check the key store watch");
            return None;
        }
    };
    if last < revision {
        return Some(format!(
            "the bucket is at revision {last}, behind the cache at {revision}: the store was reset"
        ));
    }
    if let Some(previous) = *behind {
        if revision < previous {
            return Some(format!(
                "the watch delivered nothing up to revision {previous} for {LAG_CHECK:?}"
            ));
        }
    }
    *behind = (last > revision).then_some(last);
    None
}
