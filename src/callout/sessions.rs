//! The session table (who is connected where) and the callout's counters.
//!
//! Revoking a key must cut its live connections, and nats-server only kicks by server id and
//! client id, so every admission is remembered here (DESIGN §5) until the server reports the
//! disconnect. Counters and a window of recent decision latencies feed `zester status` and the
//! benchmark. Locks are held for a few instructions and never across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// At most this many sessions are remembered per identity (older ones are forgotten).
const MAX_PER_IDENTITY: usize = 64;
/// How many recent latencies the percentiles are computed over.
const LATENCY_WINDOW: usize = 65_536;

/// One admitted connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    /// The server it is on.
    pub server_id: String,
    /// Its client id there.
    pub client_id: u64,
    /// The identity key it proved.
    pub nkey: String,
    /// When it was admitted (unix seconds).
    pub since: i64,
}

/// Sessions by identity (peel id, or the role name of a service user).
#[derive(Debug, Default)]
pub struct SessionTable {
    inner: Mutex<HashMap<String, VecDeque<Session>>>,
}

impl SessionTable {
    /// Remembers an admission.
    pub fn insert(&self, identity: &str, session: Session) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(identity.to_string()).or_default();
        if list.len() >= MAX_PER_IDENTITY {
            list.pop_front();
        }
        list.push_back(session);
    }

    /// Forgets a connection that closed.
    pub fn remove(&self, server_id: &str, client_id: u64) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, list| {
            list.retain(|s| !(s.client_id == client_id && s.server_id == server_id));
            !list.is_empty()
        });
    }

    /// The live sessions of `identity`.
    pub fn of(&self, identity: &str) -> Vec<Session> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(identity)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(VecDeque::len).sum()
    }

    /// True when none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The connections the callout decided on recently, so that the server's own auth-error
/// event for the same connection is not audited twice.
#[derive(Debug, Default)]
pub struct RecentDecisions {
    inner: Mutex<VecDeque<(String, u64)>>,
}

/// How many recent decisions are remembered.
const RECENT_DECISIONS: usize = 4096;

impl RecentDecisions {
    /// Remembers a decision about client `client_id` on `server_id`.
    pub fn remember(&self, server_id: &str, client_id: u64) {
        let mut recent = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_DECISIONS {
            recent.pop_front();
        }
        recent.push_back((server_id.to_string(), client_id));
    }

    /// True when the callout decided on that connection recently.
    pub fn contains(&self, server_id: &str, client_id: u64) -> bool {
        let recent = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .rev()
            .any(|(s, c)| *c == client_id && s == server_id)
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
    /// Counts one request dropped unanswered (see [`CalloutStats::shed`]).
    pub fn record_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        *self.last_shed.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
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

    fn session(server: &str, id: u64) -> Session {
        Session {
            server_id: server.into(),
            client_id: id,
            nkey: "U".into(),
            since: 0,
        }
    }

    #[test]
    fn sessions_come_and_go() {
        let table = SessionTable::default();
        table.insert("web-01", session("N1", 5));
        table.insert("web-01", session("N1", 6));
        table.insert("web-02", session("N1", 7));
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
            table.insert("busy", session("N1", 100 + i));
        }
        assert_eq!(table.of("busy").len(), MAX_PER_IDENTITY);
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
