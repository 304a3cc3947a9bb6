//! The named admins of the whole cluster: one list in the KV bucket `zester-admins`, which every
//! node copies into its `auth/admins.json` and its callout's trust.
//!
//! Every node's services answer admin requests in one queue group and every node's callout
//! answers connections in another, neither preferring the local node (DESIGN §9). A list kept
//! per home would make an admin added through one node a stranger to the others, and an admin
//! removed through one node still trusted by the others. So the list lives under one key
//! ([`KEY`]) of a replicated bucket, and every change is a compare-and-set on its revision
//! ([`AdminBucket::change`]): two nodes never overwrite each other, the loser reads again and
//! makes its change on what won.
//!
//! `auth/admins.json` stays the node's local copy: the callout's trust is built from it at start
//! before anything connects, and the CLI reads and writes it when no appliance runs. At start
//! ([`AdminBucket::open`]) a bucket with no list is seeded from that file when it names anyone
//! (a single node growing into a cluster keeps its admins); otherwise the bucket wins, except that what the CLI changed
//! here with no appliance running (the file against `admins.synced.json`, the list as this node
//! last had it in common with the bucket) is made on the bucket's list first. A node that was
//! down while an admin was added or removed elsewhere thus follows the cluster, and the admin a
//! stale file still names is not trusted again.
//!
//! A task ([`AdminBucket::follow`]) watches the key and reads it again every [`RECHECK`] (a
//! watch can stall without saying so, see `keys::store`), so every node converges within about
//! a second. Whoever writes this bucket decides who is an admin everywhere, so only zester's
//! store connection may: peels and admins have no JetStream rights, and the master's publish
//! denies cover every bucket in `wire::subjects::BUCKETS`, which this one is in. And still: a
//! record that does not parse, or a deleted one, never wipes the trust. The last good list is
//! kept, the record logged, and the next change writes a good list over it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;

use crate::appliance::callout::decide::Trust;
use crate::appliance::callout::service::CalloutState;
use crate::appliance::keys::store::{is_transient, ELECTION_POLL, ELECTION_WAIT};
use crate::home::admins::AdminList;
use crate::home::{Home, HomeError};
use crate::identity::keys::UserKey;
use crate::permissions::Role;

/// The bucket.
pub const BUCKET: &str = crate::wire::subjects::ADMINS_BUCKET;
/// The one key holding the list (the document of `auth/admins.json`).
pub const KEY: &str = "list";
/// How often the list is read again besides the watch.
pub const RECHECK: Duration = Duration::from_secs(1);
/// Revisions kept (for whoever looks into the bucket after the fact).
const HISTORY: i64 = 10;
/// How often a compare-and-set is tried again after losing to another writer.
const ATTEMPTS: usize = 20;
/// The largest list the bucket takes (a thousand admins are about 200 KiB).
const MAX_LIST_BYTES: i32 = 1024 * 1024;

/// What went wrong with the cluster's admin list.
#[derive(Debug, thiserror::Error)]
pub enum AdminsError {
    /// The bucket could neither be opened nor created.
    #[error("could not open or create the JetStream KV bucket {BUCKET}: {source}")]
    Bucket {
        /// The error from the server.
        source: async_nats::Error,
    },
    /// Reading or writing the list failed (on a node cut off from the cluster's majority, the
    /// bucket answers nowhere).
    #[error("could not {action} the named admins in bucket {BUCKET}: {source}; in a cluster, make the change through another node, or again once this one reaches the others (`zester status`)")]
    Kv {
        /// "read", "write".
        action: &'static str,
        /// The error from the server.
        source: async_nats::Error,
    },
    /// Other writers kept changing the list.
    #[error("the named admins in bucket {BUCKET} changed under every one of {attempts} attempts; try again")]
    Contended {
        /// How often it was tried.
        attempts: usize,
    },
    /// The local copy could not be read or written.
    #[error(transparent)]
    Home(#[from] HomeError),
}

/// The list as the bucket holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// No list (never written, or deleted).
    Missing {
        /// The revision a write must expect (0: none; else the delete marker's).
        revision: u64,
    },
    /// A record that is not a list zester would write.
    Damaged {
        /// Its revision.
        revision: u64,
        /// Why it was refused.
        why: String,
    },
    /// A good list.
    List {
        /// The list.
        list: AdminList,
        /// Its revision.
        revision: u64,
    },
}

impl Stored {
    /// The revision a compare-and-set over this must expect.
    fn revision(&self) -> u64 {
        match self {
            Stored::Missing { revision }
            | Stored::Damaged { revision, .. }
            | Stored::List { revision, .. } => *revision,
        }
    }
}

/// Reads a record of the bucket: a list whose every key is a user key and whose names and keys
/// are each there once, or why not.
pub fn parse(value: &[u8]) -> Result<AdminList, String> {
    let list: AdminList = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    let mut names = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for admin in &list.admins {
        UserKey::parse(&admin.nkey).map_err(|e| format!("admin {}: {e}", admin.name))?;
        if !names.insert(&admin.name) {
            return Err(format!("admin {} is listed twice", admin.name));
        }
        if !keys.insert(&admin.nkey) {
            return Err(format!("key of admin {} is listed twice", admin.name));
        }
    }
    Ok(list)
}

/// `services` with the named admins replaced by `list`'s: zester's own users, the master and
/// the home's admin stay, and a named admin never takes the place of one of them.
pub fn with_admins(services: &HashMap<UserKey, Role>, list: &AdminList) -> HashMap<UserKey, Role> {
    let mut services: HashMap<UserKey, Role> = services
        .iter()
        .filter(|(_, role)| !matches!(role, Role::Admin(Some(_))))
        .map(|(key, role)| (key.clone(), role.clone()))
        .collect();
    for admin in &list.admins {
        if let Ok(key) = UserKey::parse(&admin.nkey) {
            services
                .entry(key)
                .or_insert_with(|| Role::Admin(Some(admin.name.clone())));
        }
    }
    services
}

/// This node's view of the cluster's admin list: the bucket, and what it applies to.
pub struct AdminBucket {
    kv: kv::Store,
    home: Home,
    callout: Arc<CalloutState>,
    /// The revision last applied here (file and trust), and the damaged or missing revision
    /// last logged (so a bad record is logged once, not at every re-read).
    applied: Mutex<Applied>,
}

#[derive(Debug, Default)]
struct Applied {
    revision: u64,
    complained: u64,
}

impl AdminBucket {
    /// Opens the bucket (made with `replicas` copies when missing) on zester's store connection
    /// and brings list, file and trust together: seeds a bucket that has no list from this
    /// home's file, else carries this home's offline changes into the bucket's list and takes it.
    pub async fn open(
        client: async_nats::Client,
        replicas: usize,
        home: Home,
        callout: Arc<CalloutState>,
    ) -> Result<Arc<AdminBucket>, AdminsError> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => match js
                .create_key_value(kv::Config {
                    bucket: BUCKET.to_string(),
                    description: "zester: the named admins of the whole cluster".into(),
                    history: HISTORY,
                    max_value_size: MAX_LIST_BYTES,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
            {
                Ok(kv) => kv,
                // Another node may have made it meanwhile.
                Err(error) => js
                    .get_key_value(BUCKET)
                    .await
                    .map_err(|_| AdminsError::Bucket {
                        source: error.into(),
                    })?,
            },
        };
        let bucket = Arc::new(AdminBucket {
            kv,
            home,
            callout,
            applied: Mutex::new(Applied::default()),
        });
        bucket.reconcile().await?;
        Ok(bucket)
    }

    /// The start's step: see [`AdminBucket::open`].
    async fn reconcile(&self) -> Result<(), AdminsError> {
        let local = AdminList::read(&self.home)?;
        let synced = AdminList::read_synced(&self.home)?;
        for _ in 0..ATTEMPTS {
            let stored = self.read().await?;
            let (list, how) = match &stored {
                // Nothing to seed with: nothing written, so that a node that starts before the
                // one growing into the cluster has carried its bucket over (`grow`) leaves the
                // key to that copy, or to the first change.
                Stored::Missing { .. } if local.admins.is_empty() => return Ok(()),
                Stored::Missing { .. } => (local.clone(), "seeded from this home's admins.json"),
                Stored::Damaged { revision, why } => {
                    tracing::error!(
                        bucket = BUCKET,
                        revision,
                        why,
                        "the named admins in the bucket do not parse: trusting this home's admins.json until a good list is written"
                    );
                    self.complained(*revision);
                    return Ok(());
                }
                Stored::List { list, revision } => {
                    let offline = match &synced {
                        Some(synced) => local.changes_since(synced),
                        None => {
                            let unknown: Vec<String> = local
                                .admins
                                .iter()
                                .filter(|a| list.get(&a.name) != Some(*a))
                                .map(|a| a.name.to_string())
                                .collect();
                            if !unknown.is_empty() {
                                tracing::warn!(
                                    bucket = BUCKET,
                                    admins = ?unknown,
                                    "this home's admins.json names admins the cluster's list does not have (or has with another key); the cluster's list wins: add them again through the cluster if they are still wanted"
                                );
                            }
                            Vec::new()
                        }
                    };
                    let mut merged = list.clone();
                    merged.apply(&offline);
                    if merged == *list {
                        self.apply(list, *revision, "start")?;
                        return Ok(());
                    }
                    tracing::info!(
                        bucket = BUCKET,
                        changes = offline.len(),
                        "carrying what `zester admin` changed in this home with no appliance running into the cluster's list"
                    );
                    (merged, "with this home's offline changes")
                }
            };
            match self.write(&list, stored.revision()).await? {
                Some(revision) => {
                    tracing::info!(
                        bucket = BUCKET,
                        revision,
                        admins = list.admins.len(),
                        how,
                        "named admins written"
                    );
                    self.apply(&list, revision, "start")?;
                    return Ok(());
                }
                None => continue,
            }
        }
        Err(AdminsError::Contended { attempts: ATTEMPTS })
    }

    /// The list as the bucket holds it now.
    /// A bucket just made, or whose leader is being elected, answers "no responders" for a
    /// moment: that is waited out, as the key store does.
    pub async fn read(&self) -> Result<Stored, AdminsError> {
        let mut waited = Duration::ZERO;
        let entry = loop {
            match self.kv.entry(KEY).await {
                Ok(entry) => break entry,
                Err(error) if waited < ELECTION_WAIT && is_transient(&error.to_string()) => {
                    tokio::time::sleep(ELECTION_POLL).await;
                    waited += ELECTION_POLL;
                }
                Err(error) => {
                    return Err(AdminsError::Kv {
                        action: "read",
                        source: error.into(),
                    })
                }
            }
        };
        Ok(match entry {
            None => Stored::Missing { revision: 0 },
            Some(entry) => classify(entry.operation, &entry.value, entry.revision),
        })
    }

    /// The list to answer `admin list` with: the bucket's, or this node's copy when the bucket
    /// has no good list.
    pub async fn list(&self) -> Result<AdminList, AdminsError> {
        match self.read().await? {
            Stored::List { list, .. } => Ok(list),
            _ => Ok(AdminList::read(&self.home)?),
        }
    }

    /// Makes `change` on the cluster's list with a compare-and-set, reading again and making it
    /// again when another writer came first; then applies the result here at once (the other
    /// nodes follow through [`AdminBucket::follow`]). A bucket with no good list is written
    /// from this node's last good one. `change` refusing ends it, nothing written.
    pub async fn change<T, E>(
        &self,
        mut change: impl FnMut(&mut AdminList) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<AdminsError>,
    {
        for _ in 0..ATTEMPTS {
            let stored = self.read().await?;
            let mut list = match &stored {
                Stored::List { list, .. } => list.clone(),
                Stored::Missing { .. } | Stored::Damaged { .. } => {
                    tracing::warn!(
                        bucket = BUCKET,
                        revision = stored.revision(),
                        "the bucket has no good list of named admins: changing this node's last good one, and writing it over"
                    );
                    AdminList::read(&self.home).map_err(AdminsError::from)?
                }
            };
            let answer = change(&mut list)?;
            if let Some(revision) = self.write(&list, stored.revision()).await? {
                self.apply(&list, revision, "this node's change")?;
                return Ok(answer);
            }
            tracing::debug!(
                bucket = BUCKET,
                "another node changed the named admins first: reading again"
            );
        }
        Err(AdminsError::Contended { attempts: ATTEMPTS }.into())
    }

    /// Writes `list` if the key is still at `expected` (0: no record yet); `None` when another
    /// writer came first.
    /// Nobody answering is waited out as in [`AdminBucket::read`] (such a write never landed);
    /// a write that timed out may have, and is not tried again here.
    async fn write(&self, list: &AdminList, expected: u64) -> Result<Option<u64>, AdminsError> {
        let mut waited = Duration::ZERO;
        loop {
            match self.kv.update(KEY, list.to_json().into(), expected).await {
                Ok(revision) => return Ok(Some(revision)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return Ok(None),
                Err(e)
                    if waited < ELECTION_WAIT
                        && e.to_string().to_lowercase().contains("no responders") =>
                {
                    tokio::time::sleep(ELECTION_POLL).await;
                    waited += ELECTION_POLL;
                }
                Err(e) => {
                    return Err(AdminsError::Kv {
                        action: "write",
                        source: e.into(),
                    })
                }
            }
        }
    }

    /// Takes `list` at `revision` unless something as new was taken already: the callout's
    /// trust first (a removal holds from that moment), then `admins.json` and the synced copy.
    fn apply(&self, list: &AdminList, revision: u64, via: &str) -> Result<bool, AdminsError> {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if revision <= applied.revision {
            return Ok(false);
        }
        let trust = self.callout.trust();
        self.callout.set_trust(Trust {
            services: with_admins(&trust.services, list),
            ..(*trust).clone()
        });
        list.write(&self.home)?;
        list.write_synced(&self.home)?;
        applied.revision = revision;
        tracing::info!(
            bucket = BUCKET,
            revision,
            admins = list.admins.len(),
            via,
            "named admins applied to admins.json and the callout's trust"
        );
        Ok(true)
    }

    /// Notes that a bad record at `revision` was logged; whether it had been already.
    fn complained(&self, revision: u64) -> bool {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let before = applied.complained == revision;
        applied.complained = revision;
        before
    }

    /// Takes what the watch or a re-read found.
    fn take(&self, stored: Stored, via: &str) {
        match stored {
            Stored::List { list, revision } => {
                if let Err(error) = self.apply(&list, revision, via) {
                    tracing::error!(bucket = BUCKET, revision, %error, "could not apply the named admins here");
                }
            }
            Stored::Damaged { revision, why } => {
                if !self.complained(revision) {
                    tracing::error!(
                        bucket = BUCKET,
                        revision,
                        why,
                        "a record of the named admins does not parse: keeping the last good list"
                    );
                }
            }
            Stored::Missing { revision } => {
                if revision > 0 && !self.complained(revision) {
                    tracing::error!(
                        bucket = BUCKET,
                        revision,
                        "the list of named admins was deleted from the bucket (zester never does): keeping the last good list; the next admin change writes it again"
                    );
                }
            }
        }
    }

    /// Follows the bucket for as long as the appliance runs: every change is applied to this
    /// node's file and trust, from the watch or from the re-read every [`RECHECK`].
    pub async fn follow(self: Arc<Self>) {
        let mut watch = self.watch().await;
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = next_change(&mut watch) => match next {
                    Some(Ok(entry)) => {
                        self.take(classify(entry.operation, &entry.value, entry.revision), "watch");
                    }
                    Some(Err(error)) => {
                        tracing::info!(bucket = BUCKET, %error, "the watch of the named admins failed; watching again");
                        watch = None;
                    }
                    None => {
                        tracing::info!(bucket = BUCKET, "the watch of the named admins ended; watching again");
                        watch = None;
                    }
                },
                _ = recheck.tick() => {
                    match self.read().await {
                        Ok(stored) => self.take(stored, "re-read"),
                        Err(error) => tracing::debug!(%error, "could not read the named admins again"),
                    }
                    if watch.is_none() {
                        watch = self.watch().await;
                    }
                }
            }
        }
    }

    async fn watch(&self) -> Option<kv::Watch> {
        match self.kv.watch(KEY).await {
            Ok(watch) => Some(watch),
            Err(error) => {
                tracing::info!(bucket = BUCKET, %error, "could not watch the named admins (read again every second meanwhile)");
                None
            }
        }
    }
}

/// The next change the watch delivers; never, when there is no watch.
async fn next_change(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

/// What a record of the bucket is.
fn classify(operation: kv::Operation, value: &[u8], revision: u64) -> Stored {
    match operation {
        kv::Operation::Put => match parse(value) {
            Ok(list) => Stored::List { list, revision },
            Err(why) => Stored::Damaged { revision, why },
        },
        kv::Operation::Delete | kv::Operation::Purge => Stored::Missing { revision },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::admin_name::AdminName;
    use crate::wire::admin::AdminEntry;

    fn entry(name: &str, nkey: &str) -> AdminEntry {
        AdminEntry {
            name: AdminName::parse(name).unwrap(),
            nkey: nkey.to_string(),
            added_at: 1,
            added_by: "admin".into(),
        }
    }

    #[test]
    fn only_a_list_zester_would_write_parses() {
        let alice = nkeys::KeyPair::new_user().public_key();
        let bob = nkeys::KeyPair::new_user().public_key();
        let list = AdminList {
            admins: vec![entry("alice", &alice), entry("bob", &bob)],
        };
        assert_eq!(parse(&list.to_json()).unwrap(), list);
        assert!(parse(b"").is_err());
        assert!(parse(b"{\"admins\": 3}").is_err());
        let account = nkeys::KeyPair::new_account().public_key();
        let not_a_user = AdminList {
            admins: vec![entry("alice", &account)],
        };
        assert!(parse(&not_a_user.to_json()).is_err());
        let twice = AdminList {
            admins: vec![entry("alice", &alice), entry("alice", &bob)],
        };
        assert!(parse(&twice.to_json()).unwrap_err().contains("twice"));
        let shared = AdminList {
            admins: vec![entry("alice", &alice), entry("bob", &alice)],
        };
        assert!(parse(&shared.to_json()).unwrap_err().contains("twice"));
        assert_eq!(
            classify(kv::Operation::Put, b"junk", 7),
            Stored::Damaged {
                revision: 7,
                why: parse(b"junk").unwrap_err()
            }
        );
        assert_eq!(
            classify(kv::Operation::Delete, b"", 8),
            Stored::Missing { revision: 8 }
        );
    }

    #[test]
    fn the_trust_takes_the_list_and_keeps_zesters_own_users() {
        let key = || UserKey::parse(&nkeys::KeyPair::new_user().public_key()).unwrap();
        let (master, home_admin, gone, stays, new) = (key(), key(), key(), key(), key());
        let mut services = HashMap::new();
        services.insert(master.clone(), Role::Master);
        services.insert(home_admin.clone(), Role::Admin(None));
        services.insert(
            gone.clone(),
            Role::Admin(Some(AdminName::parse("gone").unwrap())),
        );
        services.insert(
            stays.clone(),
            Role::Admin(Some(AdminName::parse("stays").unwrap())),
        );
        let list = AdminList {
            admins: vec![
                entry("stays", stays.as_str()),
                entry("new", new.as_str()),
                // A named admin with the master's key stays the master.
                entry("sneaky", master.as_str()),
            ],
        };
        let trusted = with_admins(&services, &list);
        assert_eq!(trusted.len(), 4, "{trusted:?}");
        assert_eq!(trusted[&master], Role::Master);
        assert_eq!(trusted[&home_admin], Role::Admin(None));
        assert!(!trusted.contains_key(&gone));
        assert_eq!(
            trusted[&new],
            Role::Admin(Some(AdminName::parse("new").unwrap()))
        );
        assert_eq!(
            trusted[&stays],
            Role::Admin(Some(AdminName::parse("stays").unwrap()))
        );
    }
}
