//! The session table (who is connected where) and the callout's counters.
//!
//! Revoking a key must cut its live connections, and nats-server only kicks by server id and
//! client id, so every admission is remembered here (DESIGN §5) until the server reports the
//! disconnect. Counters and a window of recent decision latencies feed `zester status` and the
//! benchmark. Locks are held for a few instructions and never across an await.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::announce::Heard;
use super::readmit::Grant;
use crate::identity::keys::{ServerId, UserKey};

/// How many recent latencies the percentiles are computed over.
const LATENCY_WINDOW: usize = 65_536;

/// One admitted connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    /// The server it is on (shared by every session on that server).
    pub server_id: ServerId,
    /// Its client id there.
    pub client_id: u64,
    /// The identity key it proved.
    pub nkey: UserKey,
    /// When it was admitted (unix seconds).
    pub since: i64,
    /// The client's address, kept for enrolling keys only (their requests are rate-limited per
    /// address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<Arc<str>>,
    /// What it was let in with, to decide again when the server asks about it a second time
    /// (see [`readmit`](super::readmit)); `None` for sessions filed without one.
    #[serde(skip)]
    pub grant: Option<Arc<Grant>>,
}

/// Sessions by identity (peel id, the nkey of an enrolling key, or the role name of a service
/// user; peel ids can be neither), with an index by
/// connection so that forgetting one is a lookup, not a scan: under a reconnect storm the
/// server reports thousands of disconnects while every admission waits for this lock. Server
/// ids and identities are stored once and shared, which keeps the index small.
///
/// Nothing is evicted silently: a session stays until its server reports it closed, or until
/// its server is known to be gone ([`SessionTable::forget_server`]), so a revocation finds
/// every session. In a cluster the table holds every node's admissions, not only this node's
/// callout's: the others announce theirs ([`SessionTable::hear`]), so that any node can let a
/// live connection in again after a reload and a revocation on any node kicks every session.
#[derive(Debug, Default)]
pub struct SessionTable {
    inner: Mutex<Sessions>,
}

/// A connection: its server id (shared) and client id there.
type Connection = (ServerId, u64);

#[derive(Debug, Default)]
struct Sessions {
    by_identity: HashMap<Arc<str>, VecDeque<Session>>,
    by_connection: HashMap<Connection, Arc<str>>,
    servers: HashSet<ServerId>,
}

/// Past this many known server ids, the ones no session is on any more are dropped.
const MAX_SERVERS: usize = 64;

impl Sessions {
    /// The shared copy of a server id.
    fn server(&mut self, server_id: &str) -> ServerId {
        if let Some(known) = self.servers.get(server_id) {
            return known.clone();
        }
        if self.servers.len() >= MAX_SERVERS {
            // Referenced only by this set: no session is on that server.
            self.servers.retain(|id| id.holders() > 1);
        }
        let id = ServerId::new(server_id);
        self.servers.insert(id.clone());
        id
    }

    /// Drops `connection` from the sessions of `identity` (and the identity once it has none).
    fn forget(&mut self, identity: &str, connection: &Connection) {
        if let Some(list) = self.by_identity.get_mut(identity) {
            list.retain(|s| !(s.client_id == connection.1 && s.server_id == connection.0));
            if list.is_empty() {
                self.by_identity.remove(identity);
            }
        }
    }
}

impl SessionTable {
    /// Remembers an admission of client `client_id` on `server_id` as `identity` (the server id
    /// is taken as a `&str` so that the table's shared copy is the only one made).
    pub fn insert(
        &self,
        identity: &str,
        server_id: &str,
        client_id: u64,
        nkey: UserKey,
        since: i64,
        ip: Option<&str>,
    ) {
        self.insert_granted(identity, (server_id, client_id), nkey, since, ip, None);
    }

    /// [`SessionTable::insert`] with what the connection was let in with; returns the session
    /// filed (to announce it to the other nodes of a cluster).
    pub fn insert_granted(
        &self,
        identity: &str,
        (server_id, client_id): (&str, u64),
        nkey: UserKey,
        since: i64,
        ip: Option<&str>,
        grant: Option<Grant>,
    ) -> Session {
        let mut sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Self::file(
            &mut sessions,
            identity,
            (server_id, client_id),
            nkey,
            since,
            ip,
            grant,
        )
    }

    /// Files a session another node's callout let in (see
    /// [`announce`](super::announce)), unless the table holds a newer admission of the same
    /// connection (notices from several nodes may arrive out of order). True when filed.
    pub fn hear(&self, heard: Heard) -> bool {
        let mut sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = sessions.servers.get(heard.server.as_str()).cloned() {
            let newer = sessions
                .by_connection
                .get(&(server, heard.client))
                .and_then(|identity| sessions.by_identity.get(identity))
                .into_iter()
                .flatten()
                .any(|s| {
                    s.client_id == heard.client
                        && s.server_id.as_str() == heard.server
                        && s.since > heard.since
                });
            if newer {
                return false;
            }
        }
        Self::file(
            &mut sessions,
            &heard.identity,
            (&heard.server, heard.client),
            heard.nkey,
            heard.since,
            heard.ip.as_deref(),
            Some(heard.grant),
        );
        true
    }

    fn file(
        sessions: &mut Sessions,
        identity: &str,
        (server_id, client_id): (&str, u64),
        nkey: UserKey,
        since: i64,
        ip: Option<&str>,
        grant: Option<Grant>,
    ) -> Session {
        let session = Session {
            server_id: sessions.server(server_id),
            client_id,
            nkey,
            since,
            ip: ip.map(Arc::from),
            grant: grant.map(Arc::new),
        };
        let connection = (session.server_id.clone(), session.client_id);
        let identity: Arc<str> = match sessions.by_identity.get_key_value(identity) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(identity),
        };
        let list = sessions.by_identity.entry(identity.clone()).or_default();
        // The same connection admitted twice as the same identity is one session.
        list.retain(|s| !(s.client_id == session.client_id && s.server_id == session.server_id));
        list.push_back(session.clone());
        // The same connection admitted again under another identity (a peel that enrolled,
        // then was let in as itself) belongs to the newer one only.
        if let Some(previous) = sessions
            .by_connection
            .insert(connection.clone(), identity.clone())
        {
            if previous != identity {
                sessions.forget(&previous, &connection);
            }
        }
        session
    }

    /// Forgets a connection that closed.
    pub fn remove(&self, server_id: &str, client_id: u64) {
        let mut sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(server) = sessions.servers.get(server_id).cloned() else {
            return;
        };
        let connection = (server, client_id);
        if let Some(identity) = sessions.by_connection.remove(&connection) {
            sessions.forget(&identity, &connection);
        }
    }

    /// Forgets every session on `server_id`, a server that is gone (a restarted child has a
    /// new server id, and the old one never reports its connections closed); returns how many
    /// went. In a cluster the table holds the sessions of every node's server, so only the
    /// server known to be gone is forgotten, never "all but this node's".
    pub fn forget_server(&self, server_id: &str) -> usize {
        let mut sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let before = sessions.by_connection.len();
        sessions
            .by_connection
            .retain(|(server, _), _| server.as_str() != server_id);
        sessions.by_identity.retain(|_, list| {
            list.retain(|s| s.server_id.as_str() != server_id);
            !list.is_empty()
        });
        sessions.servers.remove(server_id);
        before - sessions.by_connection.len()
    }

    /// Every session (for a node that asks for this node's table when it starts).
    pub fn all(&self) -> Vec<Session> {
        let sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        sessions.by_identity.values().flatten().cloned().collect()
    }

    /// The servers some session is on.
    pub fn servers(&self) -> Vec<String> {
        let sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut servers: Vec<String> = sessions
            .by_connection
            .keys()
            .map(|(server, _)| server.to_string())
            .collect();
        servers.sort_unstable();
        servers.dedup();
        servers
    }

    /// Forgets the sessions on `server_id` that the server no longer has (`live` client ids),
    /// except those admitted at or after `listed_at` (the server may not list a connection it
    /// is still letting in); returns how many went. Disconnect events missed while the system
    /// connection was away leave such ghosts.
    pub fn reconcile(&self, server_id: &str, live: &HashSet<u64>, listed_at: i64) -> usize {
        let mut sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<(Connection, Arc<str>)> = sessions
            .by_identity
            .iter()
            .flat_map(|(identity, list)| {
                list.iter()
                    .filter(|s| {
                        s.server_id.as_str() == server_id
                            && !live.contains(&s.client_id)
                            && s.since < listed_at
                    })
                    .map(|s| ((s.server_id.clone(), s.client_id), identity.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (connection, identity) in &gone {
            sessions.by_connection.remove(connection);
            sessions.forget(identity, connection);
        }
        gone.len()
    }

    /// The live session of client `client_id` on `server_id`, if it was let in.
    pub fn admitted(&self, server_id: &str, client_id: u64) -> Option<Session> {
        let sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let server = sessions.servers.get(server_id)?.clone();
        let identity = sessions.by_connection.get(&(server, client_id))?;
        sessions
            .by_identity
            .get(identity)?
            .iter()
            .find(|s| s.client_id == client_id && s.server_id.as_str() == server_id)
            .cloned()
    }

    /// The live sessions of `identity`.
    pub fn of(&self, identity: &str) -> Vec<Session> {
        let sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .by_identity
            .get(identity)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        let sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        sessions.by_identity.values().map(VecDeque::len).sum()
    }

    /// True when none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The connections the callout decided on recently, so that the server's own auth-error
/// event for the same connection is not audited twice. Remembered as a 64-bit hash of (server
/// id, client id) in a set for the lookups (one per auth-error event, thousands in a storm) and
/// a queue for the order of forgetting; a collision would only skip auditing one event.
#[derive(Debug, Default)]
pub struct RecentDecisions {
    inner: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<u64>,
    members: HashSet<u64>,
}

/// How many recent decisions are remembered.
const RECENT_DECISIONS: usize = 4096;

/// The key a connection is remembered by.
fn connection_key(server_id: &str, client_id: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (server_id, client_id).hash(&mut hasher);
    hasher.finish()
}

impl RecentDecisions {
    /// Remembers a decision about client `client_id` on `server_id`.
    pub fn remember(&self, server_id: &str, client_id: u64) {
        let key = connection_key(server_id, client_id);
        let mut recent = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !recent.members.insert(key) {
            return;
        }
        if recent.order.len() >= RECENT_DECISIONS {
            if let Some(oldest) = recent.order.pop_front() {
                recent.members.remove(&oldest);
            }
        }
        recent.order.push_back(key);
    }

    /// True when the callout decided on that connection recently.
    pub fn contains(&self, server_id: &str, client_id: u64) -> bool {
        let key = connection_key(server_id, client_id);
        let recent = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        recent.members.contains(&key)
    }
}

/// Counts enrolment connections per client address over the last minute.
#[derive(Debug, Default)]
pub struct EnrolLimiter {
    inner: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl EnrolLimiter {
    /// Records an attempt from `ip` at `now`; false when it is over `per_minute`.
    pub fn allow(&self, ip: &str, now: i64, per_minute: u32) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, times| times.back().is_some_and(|t| now - t < 60));
        }
        let times = map.entry(ip.to_string()).or_default();
        while times.front().is_some_and(|t| now - t >= 60) {
            times.pop_front();
        }
        if times.len() >= per_minute as usize {
            return false;
        }
        times.push_back(now);
        true
    }
}

/// Decision counters and latencies.
#[derive(Debug, Default)]
pub struct CalloutStats {
    allowed: AtomicU64,
    refused: AtomicU64,
    shed: AtomicU64,
    unannounced: AtomicU64,
    /// When a request was last shed (only written under overload, so a lock is cheap enough).
    last_shed: Mutex<Option<std::time::Instant>>,
    latencies: Mutex<VecDeque<u32>>,
}

/// A copy of the counters for reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsSnapshot {
    /// Clients let in.
    pub allowed: u64,
    /// Clients refused.
    pub refused: u64,
    /// Requests dropped unanswered because they waited too long in zester's queue (the server
    /// had given up on them; see `callout::service`).
    pub shed: u64,
    /// Admissions not told to the other nodes of a cluster because the announcer's queue was
    /// full (0 on a single node).
    pub unannounced: u64,
    /// Median decision time, µs (over the recent window).
    pub p50_micros: u32,
    /// 99th percentile decision time, µs.
    pub p99_micros: u32,
    /// Largest decision time in the window, µs.
    pub max_micros: u32,
    /// How many decisions the percentiles cover.
    pub samples: usize,
}

impl CalloutStats {
    /// Counts one request dropped unanswered (see `CalloutStats::shed`).
    pub fn record_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        *self.last_shed.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    }

    /// Counts one admission the other nodes were not told about (the announcer's queue was
    /// full).
    pub fn record_unannounced(&self) {
        self.unannounced.fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests were shed since start.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// True if a request was shed within `window`.
    pub fn shed_within(&self, window: std::time::Duration) -> bool {
        self.last_shed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() <= window)
    }

    /// Counts one decision that took `micros`.
    pub fn record(&self, allowed: bool, micros: u32) {
        let counter = if allowed {
            &self.allowed
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut window = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        if window.len() >= LATENCY_WINDOW {
            window.pop_front();
        }
        window.push_back(micros);
    }

    /// Forgets the latency window (counters stay), e.g. between benchmark phases.
    pub fn reset_latencies(&self) {
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The current numbers.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut sorted: Vec<u32> = self
            .latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        sorted.sort_unstable();
        let at = |q: f64| -> u32 {
            if sorted.is_empty() {
                return 0;
            }
            let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
            sorted[index.min(sorted.len() - 1)]
        };
        StatsSnapshot {
            allowed: self.allowed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            unannounced: self.unannounced.load(Ordering::Relaxed),
            p50_micros: at(0.50),
            p99_micros: at(0.99),
            max_micros: sorted.last().copied().unwrap_or(0),
            samples: sorted.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One user key for sessions whose key does not matter.
    fn key() -> UserKey {
        static KEY: std::sync::OnceLock<UserKey> = std::sync::OnceLock::new();
        KEY.get_or_init(|| UserKey::parse(&nkeys::KeyPair::new_user().public_key()).unwrap())
            .clone()
    }

    fn session(server: &str, id: u64) -> Session {
        Session {
            server_id: ServerId::new(server),
            client_id: id,
            nkey: key(),
            since: 0,
            ip: None,
            grant: None,
        }
    }

    #[test]
    fn sessions_come_and_go() {
        let table = SessionTable::default();
        table.insert("web-01", "N1", 5, key(), 0, None);
        table.insert("web-01", "N1", 6, key(), 0, None);
        table.insert("web-02", "N1", 7, key(), 0, None);
        assert_eq!(table.of("web-01").len(), 2);
        table.remove("N1", 5);
        assert_eq!(table.of("web-01"), vec![session("N1", 6)]);
        table.remove("N2", 6);
        assert_eq!(
            table.len(),
            2,
            "a client id on another server is another connection"
        );
        for i in 0..100 {
            table.insert("busy", "N1", 100 + i, key(), 0, None);
        }
        assert_eq!(table.of("busy").len(), 100, "nothing is evicted silently");
        table.remove("N1", 100);
        table.remove("N1", 199);
        assert_eq!(table.of("busy").len(), 98);
        table.insert("busy", "N1", 101, key(), 0, None);
        assert_eq!(
            table.of("busy").len(),
            98,
            "the same connection is one session"
        );
    }

    #[test]
    fn sessions_the_server_no_longer_has_are_forgotten_unless_just_admitted() {
        let table = SessionTable::default();
        table.insert("web-01", "N1", 1, key(), 100, None);
        table.insert("web-02", "N1", 2, key(), 100, None);
        table.insert("web-03", "N1", 3, key(), 200, None);
        table.insert("web-04", "N2", 4, key(), 100, None);
        let live: HashSet<u64> = [1].into_iter().collect();
        assert_eq!(table.reconcile("N1", &live, 150), 1);
        assert_eq!(table.of("web-01").len(), 1);
        assert!(table.of("web-02").is_empty(), "gone from the server");
        assert_eq!(
            table.of("web-03").len(),
            1,
            "admitted after the list was taken"
        );
        assert_eq!(table.of("web-04").len(), 1, "another server");
        table.remove("N1", 2);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn sessions_of_a_server_that_is_gone_are_forgotten() {
        let table = SessionTable::default();
        table.insert("web-01", "OLD", 1, key(), 0, None);
        table.insert("web-01", "NEW", 1, key(), 0, None);
        table.insert("web-02", "OLD", 2, key(), 0, Some("10.0.0.9"));
        table.insert("web-03", "OTHER", 3, key(), 0, None);
        assert_eq!(table.servers(), ["NEW", "OLD", "OTHER"]);
        assert_eq!(table.forget_server("OLD"), 2);
        assert_eq!(table.of("web-01"), vec![session("NEW", 1)]);
        assert!(table.of("web-02").is_empty());
        assert_eq!(table.of("web-03").len(), 1, "another node's server stays");
        assert_eq!(table.len(), 2);
        table.remove("OLD", 1);
        assert_eq!(table.len(), 2);
        assert_eq!(table.servers(), ["NEW", "OTHER"]);
        assert_eq!(table.all().len(), 2);
    }

    #[test]
    fn a_heard_session_is_filed_unless_a_newer_admission_is() {
        let table = SessionTable::default();
        let grant = Grant {
            role: crate::permissions::Role::Store,
            expires: 0,
            identity: None,
        };
        let heard = |since| Heard {
            node: "b".into(),
            identity: "store".into(),
            server: "N2".into(),
            client: 4,
            nkey: key(),
            since,
            ip: None,
            grant: grant.clone(),
        };
        assert!(table.hear(heard(10)));
        let found = table.admitted("N2", 4).expect("filed");
        assert_eq!(found.grant.as_deref(), Some(&grant));
        assert!(table.hear(heard(20)), "a re-admission replaces it");
        assert!(
            !table.hear(heard(15)),
            "an older one arriving late does not"
        );
        assert_eq!(table.admitted("N2", 4).map(|s| s.since), Some(20));
        assert_eq!(table.len(), 1);
        table.remove("N2", 4);
        assert!(
            table.is_empty(),
            "a disconnect event forgets it as any other"
        );
    }

    #[test]
    fn server_ids_are_shared_and_forgotten_once_unused() {
        let table = SessionTable::default();
        table.insert("web-01", "N1", 1, key(), 0, None);
        table.insert("web-02", "N1", 2, key(), 0, None);
        let (a, b) = (table.of("web-01"), table.of("web-02"));
        assert!(
            a[0].server_id.is_same_copy(&b[0].server_id),
            "one copy per server"
        );
        drop((a, b));
        // Servers come and go (restarts of the child): ids nobody is on any more are dropped.
        for server in 0..3 * MAX_SERVERS as u64 {
            let id = format!("S{server}");
            table.insert("web-03", &id, server, key(), 0, None);
            table.remove(&id, server);
        }
        let known = table.inner.lock().unwrap().servers.len();
        assert!(known <= MAX_SERVERS, "{known} server ids kept");
        assert_eq!(table.len(), 2);
        table.remove("N1", 1);
        assert_eq!(table.of("web-02").len(), 1);
    }

    #[test]
    fn a_live_connection_is_found_with_its_grant() {
        let table = SessionTable::default();
        let grant = Grant {
            role: crate::permissions::Role::Master,
            expires: 0,
            identity: None,
        };
        table.insert_granted("master", ("N1", 3), key(), 5, None, Some(grant.clone()));
        let found = table.admitted("N1", 3).expect("live");
        assert_eq!(found.grant.as_deref(), Some(&grant));
        assert_eq!(found.since, 5);
        assert!(table.admitted("N1", 4).is_none());
        assert!(table.admitted("N2", 3).is_none());
        table.remove("N1", 3);
        assert!(table.admitted("N1", 3).is_none());
    }

    #[test]
    fn a_connection_admitted_again_belongs_to_its_newest_identity() {
        let table = SessionTable::default();
        table.insert("_enrolling", "N1", 9, key(), 0, None);
        table.insert("web-01", "N1", 9, key(), 0, None);
        assert!(table.of("_enrolling").is_empty());
        table.remove("N1", 9);
        assert!(table.is_empty());
    }

    #[test]
    fn recent_decisions_are_remembered_up_to_a_bound() {
        let recent = RecentDecisions::default();
        recent.remember("N1", 1);
        recent.remember("N1", 1);
        assert!(recent.contains("N1", 1));
        assert!(!recent.contains("N2", 1));
        for id in 2..=RECENT_DECISIONS as u64 {
            recent.remember("N1", id);
        }
        assert!(recent.contains("N1", 1), "still within the bound");
        recent.remember("N1", 0);
        assert!(!recent.contains("N1", 1), "the oldest is forgotten");
        assert!(recent.contains("N1", 0));
    }

    #[test]
    fn enrolment_attempts_are_limited_per_address_and_minute() {
        let limiter = EnrolLimiter::default();
        assert!(limiter.allow("10.0.0.1", 100, 2));
        assert!(limiter.allow("10.0.0.1", 101, 2));
        assert!(!limiter.allow("10.0.0.1", 102, 2));
        assert!(limiter.allow("10.0.0.2", 102, 2));
        assert!(limiter.allow("10.0.0.1", 161, 2));
    }

    #[test]
    fn percentiles() {
        let stats = CalloutStats::default();
        for micros in 1..=100 {
            stats.record(micros % 10 != 0, micros);
        }
        let s = stats.snapshot();
        assert_eq!((s.allowed, s.refused), (90, 10));
        assert_eq!(s.p50_micros, 51);
        assert_eq!(s.p99_micros, 99);
        assert_eq!(s.max_micros, 100);
    }
}
