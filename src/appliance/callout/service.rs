//! The callout service: subscribes `$SYS.REQ.USER.AUTH` in a queue group and answers each
//! request on its own task.
//!
//! Shaped like mini-redis' listener/handler split: [`serve`] owns the subscription, each request
//! is handled by [`CalloutState::process`], a straight line — open → decode → verify → look up
//! the key (memory) → permissions → sign → seal — and the reply is published. Nothing on that
//! path waits on storage or holds a lock across an await; audit records go to a channel.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use futures_util::StreamExt;

use super::admission;
use super::audit::{AuditRecord, AuditSink, Source, Verdict};
use super::decide::{self, Decision, KeyLookup, Trust};
use super::protocol::{self, Channel, ProtocolError, XKEY_HEADER};
use super::readmit::{self, Grant};
use super::sessions::{CalloutStats, EnrolLimiter, RecentDecisions, Session, SessionTable};
use crate::authority::Authority;
use crate::home::now_unix;
use crate::identity::keys::UserKey;
use crate::net::connect::Presence;
use crate::permissions::{Role, AUTH_CALLOUT_SUBJECT};
use crate::wire::AUTH_TIMEOUT_SECS;

/// The queue group every zester callout joins (several nodes share the load, DESIGN §9).
pub const QUEUE_GROUP: &str = "zester-callout";

/// How long a request may wait in zester's queue before it is dropped unanswered: nats-server
/// holds a client for its auth timeout ([`AUTH_TIMEOUT_SECS`]) counted from accepting it, TLS
/// handshake and its own queues included, so an answer later than this would mostly arrive
/// after the server has refused the client anyway.
pub const SHED_AFTER: std::time::Duration =
    std::time::Duration::from_secs(AUTH_TIMEOUT_SECS as u64 - 2);

/// How far back a reconnect or a shed request counts for [`CalloutState::may_have_missed_requests`]:
/// the server's auth timeout plus the time its auth-error event takes to arrive.
pub const MISSED_WINDOW: std::time::Duration =
    std::time::Duration::from_secs(AUTH_TIMEOUT_SECS as u64 + 5);

/// Key lookups shared with the key store's cache, swappable once the store is open.
pub type SharedKeys = Arc<dyn KeyLookup + Send + Sync>;

/// Everything a request handler needs; shared by all handlers.
pub struct CalloutState {
    authority: Arc<Authority>,
    trust: RwLock<Arc<Trust>>,
    keys: RwLock<SharedKeys>,
    session_ttl: i64,
    audit: AuditSink,
    /// Decision counters and latencies.
    pub stats: CalloutStats,
    /// Live sessions, for kicks.
    pub sessions: SessionTable,
    /// Connections decided on recently (to skip the server's duplicate auth-error events).
    pub recent: RecentDecisions,
    /// Whether the (first) callout connection is up, and since when.
    pub connection: Presence,
    channels: RwLock<std::collections::HashMap<String, Arc<Channel>>>,
    /// Where admissions go to be told to the other nodes (set on a node of a cluster).
    announcer: std::sync::OnceLock<tokio::sync::mpsc::Sender<Session>>,
    enrol_limiter: EnrolLimiter,
    enrol_per_minute: std::sync::atomic::AtomicU32,
}

/// Servers a node talks to are few; past this many cached channels the cache starts over.
const MAX_CHANNELS: usize = 64;

/// What handling one request produced.
pub struct Outcome {
    /// The reply payload (absent when the request could not even be opened).
    pub reply: Option<Vec<u8>>,
    /// The audit record.
    pub audit: AuditRecord,
    /// Whether the client was let in.
    pub allowed: bool,
}

impl Outcome {
    /// A request that cannot be answered at all (it does not open or verify): audited, and
    /// left for the server to time out, since there is no user key to answer to.
    fn unanswerable(now: i64, error: ProtocolError) -> Outcome {
        let mut audit = AuditRecord::at(now, Source::Callout, Verdict::Refuse);
        audit.code = "bad_request".into();
        audit.reason = error.to_string();
        Outcome {
            reply: None,
            audit,
            allowed: false,
        }
    }
}

impl CalloutState {
    /// A state with no peel keys yet (until the key store is open every peel is "unknown").
    pub fn new(
        authority: Arc<Authority>,
        trust: Trust,
        session_ttl: i64,
        audit: AuditSink,
    ) -> Self {
        let no_keys: SharedKeys = Arc::new(std::collections::HashMap::new());
        CalloutState {
            authority,
            trust: RwLock::new(Arc::new(trust)),
            keys: RwLock::new(no_keys),
            session_ttl,
            audit,
            stats: CalloutStats::default(),
            sessions: SessionTable::default(),
            recent: RecentDecisions::default(),
            connection: Presence::default(),
            channels: RwLock::new(std::collections::HashMap::new()),
            announcer: std::sync::OnceLock::new(),
            enrol_limiter: EnrolLimiter::default(),
            enrol_per_minute: std::sync::atomic::AtomicU32::new(10),
        }
    }

    /// True when the callout may have left a request unanswered lately: its connection is down
    /// or was down within [`MISSED_WINDOW`] (nats-server restarted), or it shed requests in
    /// that time (overload).
    pub fn may_have_missed_requests(&self) -> bool {
        self.connection.down_within(MISSED_WINDOW) || self.stats.shed_within(MISSED_WINDOW)
    }

    /// Hands every admission from now on to `announcer` (the task that tells the other nodes
    /// of a cluster, `appliance::cluster::relay_sessions`); set once, later calls change
    /// nothing.
    pub fn announce_sessions(&self, announcer: tokio::sync::mpsc::Sender<Session>) {
        let _ = self.announcer.set(announcer);
    }

    /// Hands `session` to the announcer without waiting: when its queue is full the notice is
    /// dropped and counted (the answer never waits for the cluster; the other nodes then learn
    /// of the session only when their server lists reconcile, see `SessionTable`).
    fn announce(&self, session: Session) {
        if let Some(announcer) = self.announcer.get() {
            if announcer.try_send(session).is_err() {
                self.stats.record_unannounced();
            }
        }
    }

    /// How many enrolment connections one address may make per minute.
    pub fn set_enrol_rate(&self, per_minute: u32) {
        self.enrol_per_minute
            .store(per_minute, std::sync::atomic::Ordering::Relaxed);
    }

    /// Points lookups at the key store's cache.
    pub fn set_keys(&self, keys: SharedKeys) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// Replaces the trust anchors (e.g. after the account JWT changed). The other nodes' users
    /// ([`Trust::peers`]) are kept as they are: only [`CalloutState::set_peers`] changes them,
    /// so a change made from an older snapshot never undoes what the cluster announced meanwhile.
    pub fn set_trust(&self, trust: Trust) {
        let mut current = self.trust.write().unwrap_or_else(|p| p.into_inner());
        let peers = current.peers.clone();
        *current = Arc::new(Trust { peers, ..trust });
    }

    /// Replaces only the account JWT of the trust anchors (`appliance::account` follows the
    /// cluster's): what else changed meanwhile stays as it is.
    pub fn set_account(&self, account: crate::identity::jwt::AccountJwt) {
        let mut current = self.trust.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(Trust {
            account,
            ..(**current).clone()
        });
    }

    /// Replaces the other nodes' own users (what `appliance::cluster` heard them announce).
    pub fn set_peers(&self, peers: std::collections::HashMap<UserKey, Role>) {
        let mut current = self.trust.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(Trust {
            peers,
            ..(**current).clone()
        });
    }

    /// The current trust anchors.
    pub fn trust(&self) -> Arc<Trust> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The box to a server's curve key, derived once per server.
    fn channel(&self, server_xkey: &str) -> Result<Arc<Channel>, ProtocolError> {
        if let Some(channel) = self
            .channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(server_xkey)
        {
            return Ok(channel.clone());
        }
        let channel = Arc::new(Channel::new(&self.authority.callout_xkey, server_xkey)?);
        let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
        if channels.len() >= MAX_CHANNELS {
            channels.clear();
        }
        channels.insert(server_xkey.to_string(), channel.clone());
        Ok(channel)
    }

    /// The audit trail's sink (its health for `status`).
    pub fn audit(&self) -> &AuditSink {
        &self.audit
    }

    /// Why a connection the decision let in must be refused anyway: records cannot be written
    /// and `[audit] on_overflow = "refuse"`. Not for zester's own service and store users (the
    /// appliance itself, which must come back to write and publish the trail) nor for a live
    /// connection nats-server asks about again (a reload: not a new connection). Atomic
    /// reads only.
    fn audit_refusal(&self, role: &crate::permissions::Role, asked_again: bool) -> Option<String> {
        use crate::permissions::Role;
        if asked_again || matches!(role, Role::Service | Role::Store) {
            return None;
        }
        self.audit.refusal()
    }

    /// The peel id bound to `nkey` in the key cache, if any (for audit lines about a key).
    pub fn peel_of(&self, nkey: &str) -> Option<String> {
        Some(self.keys().peel_key(nkey)?.0.to_string())
    }

    fn keys(&self) -> SharedKeys {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Handles one request payload at `now`: the whole decision, synchronously.
    pub fn process(&self, payload: &[u8], server_xkey: Option<&str>, now: i64) -> Outcome {
        let trust = self.trust();
        let account = trust.account.subject().to_string();
        let channel = match server_xkey.map(|k| self.channel(k)).transpose() {
            Ok(channel) => channel,
            Err(e) => return Outcome::unanswerable(now, e),
        };
        let request = match protocol::open_request(payload, channel.as_deref(), &account, now) {
            Ok(request) => request,
            Err(e) => return Outcome::unanswerable(now, e),
        };
        let request = &request.claims().nats;
        self.recent
            .remember(&request.server.id, request.client_info.id);
        let per_minute = self
            .enrol_per_minute
            .load(std::sync::atomic::Ordering::Relaxed);
        // Only a request that repeats a connection's nonce signature without a JWT can be
        // nats-server asking again (a reload); only then is the session table looked at.
        let live = readmit::is_asked_again(request, &trust, now)
            .then(|| {
                self.sessions
                    .admitted(&request.server.id, request.client_info.id)
            })
            .flatten();
        let admitted = admission::admit(
            request,
            &trust,
            self.keys().as_ref(),
            |ip| self.enrol_limiter.allow(ip, now, per_minute),
            live.as_ref(),
            now,
        );
        let mut audit = admitted.audit;
        let unaudited = match &admitted.decision {
            Decision::Allow(admission) => self.audit_refusal(&admission.role, live.is_some()),
            Decision::Refuse { .. } => None,
        };
        let (verdict, allowed) = match (&admitted.decision, admitted.filing) {
            (Decision::Allow(admission), Some(_)) if unaudited.is_some() => {
                audit.code = crate::wire::audit::UNAVAILABLE.into();
                audit.reason = format!(
                    "refused because its record cannot be written: {} ([audit] on_overflow = \"refuse\")",
                    unaudited.unwrap_or_default()
                );
                audit.nkey = admission.nkey.to_string();
                audit.role = admission.role.name().to_string();
                (Err(audit.reason.clone()), false)
            }
            (Decision::Allow(admission), Some(filing)) => {
                let exp = decide::session_expiry(admission.expires, self.session_ttl, now);
                match self.authority.issue_session(
                    &request.user_nkey,
                    &filing.identity,
                    &admission.role,
                    now,
                    exp,
                ) {
                    Ok(session) => {
                        audit.decision = Verdict::Allow;
                        audit.nkey = admission.nkey.to_string();
                        audit.peel_id = filing.peel;
                        audit.role = admission.role.name().to_string();
                        if let crate::permissions::Role::Admin(_) = admission.role {
                            audit.admin = admission.role.identity();
                        }
                        let filed = self.sessions.insert_granted(
                            &filing.identity,
                            (&request.server.id, request.client_info.id),
                            admission.nkey.clone(),
                            now,
                            filing.ip.as_deref(),
                            Some(Grant {
                                role: admission.role.clone(),
                                expires: exp,
                                identity: admission.identity.clone(),
                            }),
                        );
                        self.announce(filed);
                        (Ok(session.token().to_string()), true)
                    }
                    Err(e) => {
                        audit.code = "internal".into();
                        audit.reason = format!("could not sign the session JWT: {e}");
                        (Err(audit.reason.clone()), false)
                    }
                }
            }
            _ => (Err(audit.reason.clone()), false),
        };
        let verdict = match &verdict {
            Ok(jwt) => Ok(jwt.as_str()),
            Err(reason) => Err(reason.as_str()),
        };
        let reply = protocol::answer(
            request,
            verdict,
            &self.authority.zester_signer,
            &account,
            channel.as_deref(),
            now,
        );
        match reply {
            Ok(bytes) => Outcome {
                reply: Some(bytes),
                audit,
                allowed,
            },
            Err(e) => {
                audit.decision = Verdict::Refuse;
                audit.code = "internal".into();
                audit.reason = e.to_string();
                Outcome {
                    reply: None,
                    audit,
                    allowed: false,
                }
            }
        }
    }
}

/// Subscribes to authorization requests on `client` (the callout user's connection) and serves
/// them until the subscription ends. Returns once the subscription is live on the server.
pub async fn serve(
    client: async_nats::Client,
    state: Arc<CalloutState>,
) -> Result<tokio::task::JoinHandle<()>, async_nats::Error> {
    let mut requests = client
        .queue_subscribe(AUTH_CALLOUT_SUBJECT, QUEUE_GROUP.to_string())
        .await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let client = client.clone();
            let state = state.clone();
            let received = Instant::now();
            tokio::spawn(async move {
                // Under a reconnect storm requests queue up here. One that waited this long is
                // one nats-server is about to give up on: deciding it would
                // only take the time of requests that can still be answered.
                if received.elapsed() > SHED_AFTER {
                    state.stats.record_shed();
                    return;
                }
                // Latency counts from receipt, so time spent queued behind other requests
                // shows in the audit log and the status percentiles.
                let started = received;
                let Some(reply_to) = message.reply.clone() else {
                    return;
                };
                let server_xkey = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(XKEY_HEADER))
                    .map(|v| v.as_str().to_string());
                let mut outcome =
                    state.process(&message.payload, server_xkey.as_deref(), now_unix());
                let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                if let Some(reply) = outcome.reply.take() {
                    if let Err(e) = client.publish(reply_to, reply.into()).await {
                        tracing::warn!("could not answer an authorization request: {e}");
                    }
                }
                outcome.audit.micros = u64::from(micros);
                state.stats.record(outcome.allowed, micros);
                state.audit.record(outcome.audit);
            });
        }
        tracing::info!("callout subscription ended");
    }))
}
