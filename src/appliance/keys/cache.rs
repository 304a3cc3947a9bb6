//! The in-memory mirror of the key store, which the callout decides from.
//!
//! The callout has about two seconds per connection and must never wait on storage (DESIGN §5),
//! so it reads a [`KeyCache`]: an immutable [`Snapshot`] behind an `Arc`, swapped whole by the
//! store's watch task. A lookup takes a read lock just long enough to clone that `Arc`, so no lock
//! is ever held across an await and readers never see half of an update. Writers are rare
//! (enrolments, approvals, revocations), so each batch of changes rebuilds the snapshot, which
//! keeps the indexes (by id, by nkey, the counts) trivially consistent.
//!
//! The cache also publishes the store revision it has caught up with on a `watch` channel, so
//! whoever wrote revision `r` can wait until lookups see it ([`KeyCache::wait_for_revision`]).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::identity::peel_id::PeelId;
use crate::wire::record::{KeyRecord, KeyState};

/// Why waiting for the cache failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache did not reach the revision in time.
    #[error("the key cache did not catch up with revision {wanted} within {after:?} (it is at {reached}); is the nats-server reachable?")]
    TimedOut {
        /// The revision waited for.
        wanted: u64,
        /// The revision reached.
        reached: u64,
        /// How long was waited.
        after: Duration,
    },
    /// Nothing updates this cache any more (its store was closed).
    #[error("the key cache stopped at revision {reached} before reaching {wanted}: its key store was closed")]
    Closed {
        /// The revision waited for.
        wanted: u64,
        /// The revision reached.
        reached: u64,
    },
}

/// How many records are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCounts {
    /// Waiting for a decision.
    pub pending: usize,
    /// Admitted.
    pub accepted: usize,
    /// Refused at enrolment.
    pub rejected: usize,
    /// Withdrawn.
    pub revoked: usize,
}

impl KeyCounts {
    /// All records.
    pub fn total(&self) -> usize {
        self.pending + self.accepted + self.rejected + self.revoked
    }

    fn add(&mut self, state: KeyState) {
        match state {
            KeyState::Pending => self.pending += 1,
            KeyState::Accepted => self.accepted += 1,
            KeyState::Rejected => self.rejected += 1,
            KeyState::Revoked => self.revoked += 1,
        }
    }
}

/// A record with the store revision that last wrote it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) record: Arc<KeyRecord>,
    pub(crate) revision: u64,
}

/// One consistent view of every record.
#[derive(Debug, Default)]
pub struct Snapshot {
    by_id: BTreeMap<PeelId, Stored>,
    by_nkey: HashMap<String, Arc<KeyRecord>>,
    counts: KeyCounts,
}

impl Snapshot {
    /// Indexes `by_id`. When several records hold the same nkey (a bug or a hand edit, since
    /// every enrolment makes a fresh key), the most restrictive one is what the nkey resolves
    /// to, and among equals the smallest id: a key revoked under one id is never admitted under
    /// another.
    pub(crate) fn build(by_id: BTreeMap<PeelId, Stored>) -> Snapshot {
        let mut by_nkey: HashMap<String, Arc<KeyRecord>> = HashMap::with_capacity(by_id.len());
        let mut counts = KeyCounts::default();
        for stored in by_id.values() {
            let record = &stored.record;
            counts.add(record.state);
            match by_nkey.entry(record.nkey.clone()) {
                Entry::Vacant(slot) => {
                    slot.insert(record.clone());
                }
                Entry::Occupied(mut slot) => {
                    let held = slot.get_mut();
                    tracing::warn!(
                        nkey = %record.nkey,
                        first = %held.id,
                        second = %record.id,
                        "two key records hold the same nkey; the more restrictive one wins"
                    );
                    if record.state.restrictiveness() > held.state.restrictiveness() {
                        *held = record.clone();
                    }
                }
            }
        }
        Snapshot {
            by_id,
            by_nkey,
            counts,
        }
    }

    /// The records by id, with revisions (for the store's watch task to start its next batch
    /// from).
    pub(crate) fn by_id(&self) -> &BTreeMap<PeelId, Stored> {
        &self.by_id
    }
}

/// A cheap, cloneable, `Send + Sync` reader of the key records.
#[derive(Debug, Clone)]
pub struct KeyCache {
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    revision: watch::Receiver<u64>,
}

/// The writing side, owned by the store's watch task.
#[derive(Debug)]
pub(crate) struct CacheWriter {
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    revision: watch::Sender<u64>,
}

impl KeyCache {
    /// An empty cache and the writer that fills it.
    pub(crate) fn new() -> (KeyCache, CacheWriter) {
        let snapshot = Arc::new(RwLock::new(Arc::new(Snapshot::default())));
        let (sender, receiver) = watch::channel(0);
        (
            KeyCache {
                snapshot: snapshot.clone(),
                revision: receiver,
            },
            CacheWriter {
                snapshot,
                revision: sender,
            },
        )
    }

    /// A fixed cache holding `records` (revision 0), for tests and tools that decide without a
    /// store. Later records with the same id replace earlier ones.
    pub fn from_records(records: impl IntoIterator<Item = KeyRecord>) -> KeyCache {
        let (cache, writer) = KeyCache::new();
        let by_id = records
            .into_iter()
            .map(|record| {
                let stored = Stored {
                    record: Arc::new(record),
                    revision: 0,
                };
                (stored.record.id.clone(), stored)
            })
            .collect();
        writer.publish(Snapshot::build(by_id), 0);
        cache
    }

    /// The current snapshot. Hold it to make several lookups against one consistent view.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a writer panicked between two whole-`Arc` swaps; the value
        // inside is still a complete snapshot.
        self.snapshot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The record bound to `nkey` (see [`Snapshot::lookup_nkey`]).
    pub fn lookup_nkey(&self, nkey: &str) -> Option<Arc<KeyRecord>> {
        self.snapshot().lookup_nkey(nkey)
    }

    /// The record of peel `id`.
    pub fn lookup_id(&self, id: &PeelId) -> Option<Arc<KeyRecord>> {
        self.snapshot().lookup_id(id)
    }

    /// The record of peel `id` with the revision that wrote it (to compare-and-set against).
    pub fn lookup_id_with_revision(&self, id: &PeelId) -> Option<(Arc<KeyRecord>, u64)> {
        self.snapshot().lookup_id_with_revision(id)
    }

    /// How many records are in each state.
    pub fn counts(&self) -> KeyCounts {
        self.snapshot().counts()
    }

    /// Every record, ordered by id.
    pub fn all(&self) -> Vec<Arc<KeyRecord>> {
        self.snapshot().all()
    }

    /// The store revision the cache has caught up with.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// A receiver of the caught-up revision, changed after each new snapshot is visible.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.clone()
    }

    /// Waits until the cache has caught up with store revision `revision` (for example the one
    /// a write returned), so lookups see that write. Not for the callout's hot path.
    pub async fn wait_for_revision(
        &self,
        revision: u64,
        timeout: Duration,
    ) -> Result<u64, CacheError> {
        let mut receiver = self.revision.clone();
        let waited = tokio::time::timeout(timeout, async {
            receiver
                .wait_for(|reached| *reached >= revision)
                .await
                .map(|reached| *reached)
        })
        .await;
        match waited {
            Ok(Ok(reached)) => Ok(reached),
            Ok(Err(_)) => Err(CacheError::Closed {
                wanted: revision,
                reached: self.revision(),
            }),
            Err(_) => Err(CacheError::TimedOut {
                wanted: revision,
                reached: self.revision(),
                after: timeout,
            }),
        }
    }
}

impl Snapshot {
    /// The record bound to `nkey`; when several records hold it, the most restrictive one.
    pub fn lookup_nkey(&self, nkey: &str) -> Option<Arc<KeyRecord>> {
        self.by_nkey.get(nkey).cloned()
    }

    /// The record of peel `id`.
    pub fn lookup_id(&self, id: &PeelId) -> Option<Arc<KeyRecord>> {
        self.by_id.get(id).map(|stored| stored.record.clone())
    }

    /// The record of peel `id` with the revision that wrote it.
    pub fn lookup_id_with_revision(&self, id: &PeelId) -> Option<(Arc<KeyRecord>, u64)> {
        self.by_id
            .get(id)
            .map(|stored| (stored.record.clone(), stored.revision))
    }

    /// How many records are in each state.
    pub fn counts(&self) -> KeyCounts {
        self.counts
    }

    /// Every record, ordered by id.
    pub fn all(&self) -> Vec<Arc<KeyRecord>> {
        self.by_id
            .values()
            .map(|stored| stored.record.clone())
            .collect()
    }
}

impl CacheWriter {
    /// The snapshot readers currently see.
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The revision readers currently see.
    pub(crate) fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Makes `snapshot` visible, then announces `revision` (in that order, so a reader woken by
    /// the revision always finds the snapshot that contains it).
    pub(crate) fn publish(&self, snapshot: Snapshot, revision: u64) {
        let snapshot = Arc::new(snapshot);
        *self
            .snapshot
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot;
        self.revision.send_replace(revision);
    }
}

/// One change read from the bucket, before decoding.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change<'a> {
    /// A value was written under `key`.
    Put {
        /// The bucket key.
        key: &'a str,
        /// The raw value.
        value: &'a [u8],
        /// Its revision.
        revision: u64,
    },
    /// `key` was deleted or purged.
    Remove {
        /// The bucket key.
        key: &'a str,
    },
}

/// Applies one change to a working copy of the records.
///
/// A change that cannot be understood (a key that is no peel id, a value that is no valid
/// record) is logged and skipped: the record keeps what was known before, so damaged data can
/// neither crash the node nor turn a revoked key back into an unknown one.
pub(crate) fn apply(by_id: &mut BTreeMap<PeelId, Stored>, change: Change<'_>) {
    let key = match change {
        Change::Put { key, .. } | Change::Remove { key } => key,
    };
    let id = match PeelId::parse(key) {
        Ok(id) => id,
        Err(error) => {
            tracing::warn!(key, %error, "skipping a key store entry whose key is not a peel id");
            return;
        }
    };
    match change {
        Change::Put {
            key,
            value,
            revision,
        } => match KeyRecord::from_kv(key, value) {
            Ok(record) => {
                by_id.insert(
                    id,
                    Stored {
                        record: Arc::new(record),
                        revision,
                    },
                );
            }
            Err(error) => {
                tracing::warn!(key, revision, %error, "skipping an undecodable key record");
            }
        },
        Change::Remove { .. } => {
            by_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nkeys::KeyPair;

    fn record(id: &str, state: KeyState, nkey: &str) -> KeyRecord {
        let mut record =
            KeyRecord::new_accepted(PeelId::parse(id).unwrap(), nkey, "t", "", 1).unwrap();
        record.state = state;
        record
    }

    #[test]
    fn lookups_by_nkey_and_id_and_counts() {
        let a = KeyPair::new_user().public_key();
        let b = KeyPair::new_user().public_key();
        let c = KeyPair::new_user().public_key();
        let cache = KeyCache::from_records([
            record("a", KeyState::Accepted, &a),
            record("b", KeyState::Pending, &b),
            record("c", KeyState::Revoked, &c),
        ]);
        let found = cache.lookup_nkey(&a).unwrap();
        assert_eq!(found.id.as_str(), "a");
        assert_eq!(
            cache.lookup_id(&PeelId::parse("b").unwrap()).unwrap().state,
            KeyState::Pending
        );
        assert!(cache
            .lookup_nkey(&KeyPair::new_user().public_key())
            .is_none());
        assert!(cache.lookup_id(&PeelId::parse("zz").unwrap()).is_none());
        assert_eq!(
            cache.counts(),
            KeyCounts {
                pending: 1,
                accepted: 1,
                rejected: 0,
                revoked: 1
            }
        );
        assert_eq!(cache.counts().total(), 3);
        let ids: Vec<_> = cache.all().iter().map(|r| r.id.to_string()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let clone = cache.clone();
        assert!(Arc::ptr_eq(&clone.snapshot(), &cache.snapshot()));
    }

    #[test]
    fn a_shared_nkey_resolves_to_the_most_restrictive_record() {
        let key = KeyPair::new_user().public_key();
        let cache = KeyCache::from_records([
            record("a", KeyState::Accepted, &key),
            record("z", KeyState::Revoked, &key),
        ]);
        assert_eq!(cache.lookup_nkey(&key).unwrap().id.as_str(), "z");
        let cache = KeyCache::from_records([
            record("b", KeyState::Accepted, &key),
            record("a", KeyState::Accepted, &key),
        ]);
        assert_eq!(cache.lookup_nkey(&key).unwrap().id.as_str(), "a");
    }

    #[test]
    fn apply_puts_removes_and_skips_garbage() {
        let key = KeyPair::new_user().public_key();
        let good = record("web", KeyState::Accepted, &key);
        let mut by_id = BTreeMap::new();
        let json = good.to_json();
        apply(
            &mut by_id,
            Change::Put {
                key: "web",
                value: &json,
                revision: 3,
            },
        );
        assert_eq!(by_id[&good.id].revision, 3);
        // Garbage on top keeps the last good record.
        apply(
            &mut by_id,
            Change::Put {
                key: "web",
                value: b"{not json",
                revision: 4,
            },
        );
        assert_eq!(by_id[&good.id].revision, 3);
        // A record filed under another id, and a key that is no peel id, are skipped.
        apply(
            &mut by_id,
            Change::Put {
                key: "other",
                value: &json,
                revision: 5,
            },
        );
        apply(
            &mut by_id,
            Change::Put {
                key: "_master",
                value: &json,
                revision: 6,
            },
        );
        assert_eq!(by_id.len(), 1);
        apply(&mut by_id, Change::Remove { key: "web" });
        assert!(by_id.is_empty());
    }

    #[tokio::test]
    async fn waiting_for_a_revision() {
        let (cache, writer) = KeyCache::new();
        let waiter = cache.clone();
        let task =
            tokio::spawn(async move { waiter.wait_for_revision(7, Duration::from_secs(5)).await });
        writer.publish(Snapshot::default(), 5);
        writer.publish(Snapshot::default(), 7);
        assert_eq!(task.await.unwrap().unwrap(), 7);
        assert!(matches!(
            cache.wait_for_revision(8, Duration::from_millis(20)).await,
            Err(CacheError::TimedOut {
                wanted: 8,
                reached: 7,
                ..
            })
        ));
        drop(writer);
        assert!(matches!(
            cache.wait_for_revision(8, Duration::from_secs(5)).await,
            Err(CacheError::Closed { .. })
        ));
        assert_eq!(
            cache
                .wait_for_revision(7, Duration::from_millis(1))
                .await
                .unwrap(),
            7
        );
    }
}
