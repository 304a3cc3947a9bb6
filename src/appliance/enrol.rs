//! Enrolment, the appliance's half (DESIGN §6): serves `zester.enrol.<nkey>` on zester's
//! service connection, answering only to that key's inbox. It refuses ids bound to another key
//! (no squatting), malformed or reserved ids, stale or future timestamps (replays), a key that
//! already holds another id, more than `max_pending` pending keys, and requests past the rate
//! per key and per address; it records pending keys (or accepted ones under the `auto-trusted`
//! / `auto-all` policies) one at a time, and hands accepted keys their user JWT.

use crate::wire::subjects::SERVICE_QUEUE;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::appliance::callout::audit::{AuditRecord, AuditSink, Source, Verdict};
use crate::appliance::callout::service::CalloutState;
use crate::appliance::callout::sessions::EnrolLimiter;
use crate::appliance::keys::{KeyRecord, KeyState, KeyStore};
use crate::appliance::respond;
use crate::authority::Authority;
use crate::home::config::AcceptPolicy;
use crate::home::now_unix;
use crate::identity::peel_id::PeelId;
use crate::permissions::Role;
pub use crate::wire::enrol::RequestError;
use crate::wire::enrol::{verify_request, EnrolAnswer, EnrolRequest, Op};
use crate::wire::reply::Asker;
use crate::wire::subjects;

/// Subjects enrolment requests arrive on (`zester.enrol.<nkey>`).
pub const ENROL_SUBJECTS: &str = subjects::ENROL_REQUESTS;

/// Why an enrolment request was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// Not a valid signed request.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A bad id.
    #[error(transparent)]
    PeelId(#[from] crate::identity::peel_id::PeelIdError),
    /// The id belongs to another key.
    #[error("peel id {id} is already bound to another key ({state}): pick another id, or ask an admin to revoke and delete the old key")]
    IdTaken {
        /// The id.
        id: String,
        /// State of the key holding it.
        state: KeyState,
    },
    /// Too many pending keys.
    #[error("too many keys are waiting for approval ({pending}, the limit is {max}): ask an admin to accept or reject some")]
    TooManyPending {
        /// Pending now.
        pending: usize,
        /// The limit.
        max: usize,
    },
    /// The key already holds another id.
    #[error("this key is already enrolled as peel {id}: one key enrols one id (make a new key for another id)")]
    KeyInUse {
        /// The id it holds.
        id: String,
    },
    /// Too many requests.
    #[error("too many enrolment requests from {what} (at most {max} a minute): slow down")]
    RateLimited {
        /// The key or address.
        what: String,
        /// The limit.
        max: u32,
    },
    /// Fetch before enrolling.
    #[error("no enrolment for peel {id} with this key: enrol first")]
    NotEnrolled {
        /// The id.
        id: String,
    },
    /// The join token may not be used, or its bucket failed.
    #[error(transparent)]
    Token(#[from] crate::appliance::tokens::TokenStoreError),
    /// A join token was given but this appliance keeps no tokens.
    #[error("this appliance takes no join tokens")]
    NoTokens,
    /// The key store failed.
    #[error(transparent)]
    Store(#[from] crate::appliance::keys::KeyStoreError),
    /// Signing failed.
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
    /// A record could not be made.
    #[error(transparent)]
    Record(#[from] crate::appliance::keys::KeyError),
}

/// The master's side: records enrolments and hands out JWTs to accepted keys.
pub struct EnrolService {
    /// Signs the peels' user JWTs.
    pub authority: Arc<Authority>,
    /// The key store.
    pub keys: Arc<KeyStore>,
    /// Accept policy.
    pub policy: AcceptPolicy,
    /// Id globs accepted under `auto-trusted`.
    pub trusted: Vec<String>,
    /// Most pending keys.
    pub max_pending: usize,
    /// Lifetime of the JWTs handed out, seconds (0 = never).
    pub peel_expiry: i64,
    /// Where enrolment decisions are audited.
    pub audit: AuditSink,
    /// Request rates per key and per address.
    pub limits: EnrolLimits,
    /// Serialises the creation of records (see [`EnrolService::handle`]).
    pub creating: tokio::sync::Mutex<()>,
    /// Join tokens (`None`: enrolments with a token are refused).
    pub tokens: Option<Arc<crate::appliance::tokens::TokenStore>>,
    /// The policy hook (`keys.accept = "hook"`).
    pub hook: Option<crate::appliance::hook::Hook>,
    /// Joining nodes' requests (`None`: a single node, which refuses them).
    pub nodes: Option<Arc<crate::appliance::nodes::NodeService>>,
}

/// Most enrolment requests one key may make per minute (`peel enrol --wait` asks every 2 s).
pub const REQUESTS_PER_KEY_MINUTE: u32 = 60;
/// Most enrolment requests the enrolling keys of one address may make per minute.
pub const REQUESTS_PER_ADDRESS_MINUTE: u32 = 600;

/// The request-rate windows of enrolment, and where an enrolling key's address is known from.
pub struct EnrolLimits {
    per_key: EnrolLimiter,
    per_address: EnrolLimiter,
    callout: Option<Arc<CalloutState>>,
}

impl EnrolLimits {
    /// Limits that learn addresses from the callout's sessions (`None`: per key only).
    pub fn new(callout: Option<Arc<CalloutState>>) -> EnrolLimits {
        EnrolLimits {
            per_key: EnrolLimiter::default(),
            per_address: EnrolLimiter::default(),
            callout,
        }
    }

    /// The address the enrolling connection of `nkey` came from, as the callout saw it.
    fn address_of(&self, nkey: &str) -> Option<String> {
        let sessions = self.callout.as_ref()?.sessions.of(nkey);
        sessions
            .iter()
            .find_map(|s| s.ip.as_deref().map(str::to_string))
    }
}

impl EnrolService {
    /// Serves `zester.enrol.*` on `client` (zester's service connection).
    pub async fn serve(
        self: Arc<Self>,
        client: async_nats::Client,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::Error> {
        if self.policy == AcceptPolicy::AutoAll {
            tracing::warn!(
                "keys.accept = \"auto-all\": every enrolling key is accepted (labs only)"
            );
        }
        let mut requests = client
            .queue_subscribe(ENROL_SUBJECTS, SERVICE_QUEUE.into())
            .await?;
        client.flush().await?;
        Ok(tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let Some(nkey) = subjects::enrol_nkey(message.subject.as_str()) else {
                    continue;
                };
                let nkey = nkey.to_string();
                let Some(reply) = respond::checked_reply(
                    &message,
                    Asker::Enrolling(&nkey),
                    Source::Enrol,
                    &self.audit,
                ) else {
                    continue;
                };
                let service = self.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let now = now_unix();
                    if crate::wire::node::is_node_request(&message.payload) {
                        let outcome = match service.over_rate(&nkey, now) {
                            Some(EnrolError::RateLimited { what, max }) => {
                                Err(crate::appliance::nodes::NodeError::RateLimited { what, max })
                            }
                            Some(_) => Err(crate::appliance::nodes::NodeError::Busy {
                                name: String::new(),
                            }),
                            None => service.handle_node(&message.payload, &nkey, now).await,
                        };
                        service
                            .audit
                            .record(node_audit(&outcome, &message.payload, &nkey, now));
                        respond::answer(&client, reply, outcome, "a node's request").await;
                        return;
                    }
                    let outcome = match service.over_rate(&nkey, now) {
                        Some(refusal) => Err(refusal),
                        None => service.handle(&message.payload, &nkey, now).await,
                    };
                    service
                        .audit
                        .record(enrol_audit(&outcome, &message.payload, &nkey, now));
                    respond::answer(&client, reply, outcome, "an enrolment request").await;
                });
            }
        }))
    }

    /// A refusal when `nkey`, or the address its enrolling connection came from, asked more
    /// than its share this minute.
    fn over_rate(&self, nkey: &str, now: i64) -> Option<EnrolError> {
        if !self
            .limits
            .per_key
            .allow(nkey, now, REQUESTS_PER_KEY_MINUTE)
        {
            return Some(EnrolError::RateLimited {
                what: "this key".into(),
                max: REQUESTS_PER_KEY_MINUTE,
            });
        }
        let address = self.limits.address_of(nkey)?;
        (!self
            .limits
            .per_address
            .allow(&address, now, REQUESTS_PER_ADDRESS_MINUTE))
        .then(|| EnrolError::RateLimited {
            what: format!("address {address}"),
            max: REQUESTS_PER_ADDRESS_MINUTE,
        })
    }

    /// Every accepted node's client URL (none on a single node): what a peel fails over among.
    async fn node_urls(&self) -> Vec<String> {
        let Some(nodes) = &self.nodes else {
            return Vec::new();
        };
        nodes
            .store
            .list()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.state == crate::wire::node::NodeState::Accepted)
            .map(|n| n.client_url)
            .collect()
    }

    /// Handles one request of a node joining the cluster.
    pub async fn handle_node(
        &self,
        payload: &[u8],
        nkey: &str,
        now: i64,
    ) -> Result<crate::wire::node::NodeAnswer, crate::appliance::nodes::NodeError> {
        match &self.nodes {
            Some(nodes) => nodes.handle(payload, nkey, now).await,
            None => Err(crate::appliance::nodes::NodeError::NotClustered),
        }
    }

    /// Handles one request from `nkey` at `now`.
    pub async fn handle(
        &self,
        payload: &[u8],
        nkey: &str,
        now: i64,
    ) -> Result<EnrolAnswer, EnrolError> {
        let request = verify_request(payload, nkey, now)?;
        let id = PeelId::parse(&request.id)?;
        let existing = self.keys.get(&id).await?;
        match request.op {
            Op::Enrol => {
                if let Some((record, revision)) = &existing {
                    if record.nkey != request.nkey {
                        self.keep_denied(record, *revision, &request, now).await;
                        return Err(EnrolError::IdTaken {
                            id: id.to_string(),
                            state: record.state,
                        });
                    }
                    if let (KeyState::Pending, Some(proof)) = (record.state, &request.token) {
                        // Enrolled earlier without a token, now with one.
                        let token = self.take_token(proof, &request.nkey, &id, now).await?;
                        let accepted = accepted_with(record, token, now)?;
                        let revision = self.keys.update(&id, *revision, &accepted).await?;
                        let _ = self
                            .keys
                            .wait_for_revision(revision, Duration::from_secs(2))
                            .await;
                        return Ok(EnrolAnswer::state(KeyState::Accepted));
                    }
                    return Ok(EnrolAnswer::state(record.state));
                }
                // One creation at a time, each visible in the cache before the next is
                // checked: otherwise concurrent requests all pass the checks below.
                let one_at_a_time = self.creating.lock().await;
                let cache = self.keys.cache();
                if let Some(held) = cache.lookup_nkey(&request.nkey) {
                    if held.id == id {
                        return Ok(EnrolAnswer::state(held.state));
                    }
                    return Err(EnrolError::KeyInUse {
                        id: held.id.to_string(),
                    });
                }
                if let Some(record) = cache.lookup_id(&id) {
                    return Err(EnrolError::IdTaken {
                        id: id.to_string(),
                        state: record.state,
                    });
                }
                let pending = cache.counts().pending;
                if pending >= self.max_pending && request.token.is_none() {
                    return Err(EnrolError::TooManyPending {
                        pending,
                        max: self.max_pending,
                    });
                }
                // The hostname is the client's word: kept short and with its control
                // characters escaped, since `zester key show` prints it in a terminal.
                let hostname: String = request.hostname.chars().take(253).collect();
                let reason = format!(
                    "enrolled from {}",
                    crate::appliance::callout::audit::escape_control(&hostname)
                );
                let mut record = KeyRecord::new_pending(
                    id.clone(),
                    &request.nkey,
                    request.xkey.as_deref(),
                    "enrolment",
                    &reason,
                    now,
                )?;
                if let Some(proof) = &request.token {
                    // The last check before the record exists: a use is only taken for a
                    // record that will be created.
                    let token = self.take_token(proof, &request.nkey, &id, now).await?;
                    record = accepted_with(&record, token, now)?;
                } else if let Some(policy) = self.auto_accepts(&id) {
                    record = record.transition(KeyState::Accepted, policy, "accept policy", now)?;
                }
                let revision = self.keys.create(&record).await?;
                if self
                    .keys
                    .wait_for_revision(revision, Duration::from_secs(2))
                    .await
                    .is_err()
                {
                    tracing::warn!(peel = %id, "the key store's cache did not show a new enrolment within 2 s");
                }
                tracing::info!(target: "audit", peel = %id, state = %record.state, fingerprint = %record.fingerprint(), "key enrolled");
                drop(one_at_a_time);
                let state = match (&self.hook, record.state) {
                    (Some(hook), KeyState::Pending) => {
                        self.ask_hook(hook, &record, revision, &request, now)
                            .await?
                    }
                    (_, state) => state,
                };
                Ok(EnrolAnswer {
                    fingerprint: Some(record.fingerprint()),
                    ..EnrolAnswer::state(state)
                })
            }
            Op::Fetch => match existing {
                Some((record, revision)) if record.nkey == request.nkey => {
                    if record.state != KeyState::Accepted {
                        return Ok(EnrolAnswer::state(record.state));
                    }
                    let jwt = self.authority.issue_user(
                        &record.nkey,
                        id.as_str(),
                        &Role::Peel(id.clone()),
                        now,
                        self.peel_expiry,
                    )?;
                    // A peel that had creds before and fetches again (back after its creds
                    // expired) renews this way.
                    let renewal = record.jwt_expires_at.is_some();
                    let issued = record.jwt_issued(jwt.claims().exp, renewal, now);
                    if let Err(e) = self.keys.update(&id, revision, &issued).await {
                        tracing::warn!(peel = %id, "creds fetched, but the key record could not say when they expire: {e}");
                    }
                    // The master's curve key goes into the peel's profile: the sender of
                    // every secret sealed for it.
                    Ok(EnrolAnswer {
                        jwt: Some(jwt.token().to_string()),
                        master_xkey: Some(self.authority.master_xkey.public_key()),
                        servers: self.node_urls().await,
                        ..EnrolAnswer::state(record.state)
                    })
                }
                _ => Err(EnrolError::NotEnrolled { id: id.to_string() }),
            },
        }
    }

    /// Runs the policy hook on a new pending `record` (outside the creation lock: a slow hook
    /// holds up no other enrolment) and applies its decision; returns the key's state.
    async fn ask_hook(
        &self,
        hook: &crate::appliance::hook::Hook,
        record: &KeyRecord,
        revision: u64,
        request: &EnrolRequest,
        now: i64,
    ) -> Result<KeyState, EnrolError> {
        use crate::appliance::hook::HookOutcome;
        let input = serde_json::json!({
            "id": record.id.as_str(),
            "nkey": record.nkey,
            "xkey": record.xkey,
            "fingerprint": record.fingerprint(),
            "address": self.limits.address_of(&record.nkey).unwrap_or_default(),
            "hostname": request.hostname.chars().take(253).collect::<String>(),
            "facts": {},
            "token_tags": serde_json::Value::Null,
        });
        let outcome = hook.decide(&input).await;
        let mut audit = AuditRecord::at(
            now_unix(),
            Source::Enrol,
            match outcome {
                HookOutcome::Accept(_) => Verdict::Allow,
                _ => Verdict::Refuse,
            },
        );
        audit.code = outcome.code().into();
        audit.reason = format!("{} (input: {input})", outcome.reason());
        audit.peel_id = record.id.to_string();
        audit.nkey = record.nkey.clone();
        audit.role = "enrolling".into();
        self.audit.record(audit);
        let to = match &outcome {
            HookOutcome::Accept(_) => KeyState::Accepted,
            HookOutcome::Reject(_) => KeyState::Rejected,
            HookOutcome::Pending(why) => {
                tracing::warn!(peel = %record.id, "the policy hook did not decide, the key stays pending: {why}");
                return Ok(KeyState::Pending);
            }
        };
        let reason = if outcome.reason().is_empty() {
            "policy hook".to_string()
        } else {
            outcome.reason().to_string()
        };
        let decided = record.transition(to, "policy hook", &reason, now)?;
        let revision = self.keys.update(&record.id, revision, &decided).await?;
        let _ = self
            .keys
            .wait_for_revision(revision, Duration::from_secs(2))
            .await;
        tracing::info!(target: "audit", peel = %record.id, state = %to, reason = %reason, "policy hook decided");
        Ok(to)
    }

    /// Takes one use of the join token `proof` names for `nkey` enrolling as `id`.
    async fn take_token(
        &self,
        proof: &crate::wire::token::TokenProof,
        nkey: &str,
        id: &PeelId,
        now: i64,
    ) -> Result<crate::wire::token::TokenRecord, EnrolError> {
        let tokens = self.tokens.as_ref().ok_or(EnrolError::NoTokens)?;
        Ok(tokens.take(proof, nkey, id.as_str(), now).await?)
    }

    /// Keeps an enrolment that claimed `record`'s id with another key as a denied claim of
    /// that record (its key, fingerprint, address, hostname and time), for an admin to see.
    async fn keep_denied(
        &self,
        record: &KeyRecord,
        revision: u64,
        request: &EnrolRequest,
        now: i64,
    ) {
        let hostname: String = request.hostname.chars().take(253).collect();
        let claim = crate::wire::record::DeniedClaim {
            nkey: request.nkey.clone(),
            fingerprint: crate::wire::record::fingerprint(&request.nkey),
            xkey: request.xkey.clone(),
            address: self.limits.address_of(&request.nkey).unwrap_or_default(),
            hostname: crate::appliance::callout::audit::escape_control(&hostname),
            at: now,
        };
        // A claimant that keeps asking (`--wait`) is one entry; its first time is kept.
        if record.denied.iter().any(|d| d.nkey == claim.nkey) {
            return;
        }
        if let Err(e) = self
            .keys
            .update(&record.id, revision, &record.with_denied(claim))
            .await
        {
            tracing::warn!(peel = %record.id, "could not keep a denied claim: {e}");
        }
    }

    fn auto_accepts(&self, id: &PeelId) -> Option<&'static str> {
        match self.policy {
            AcceptPolicy::Manual | AcceptPolicy::Hook => None,
            AcceptPolicy::AutoAll => Some("policy auto-all"),
            AcceptPolicy::AutoTrusted => self
                .trusted
                .iter()
                .any(|glob| crate::appliance::admin::glob_matches(glob, id.as_str()))
                .then_some("policy auto-trusted"),
        }
    }
}

/// `record` accepted by the join token `token` (which gives it its trusted tags).
fn accepted_with(
    record: &KeyRecord,
    token: crate::wire::token::TokenRecord,
    now: i64,
) -> Result<KeyRecord, crate::appliance::keys::KeyError> {
    let mut accepted = record.transition(
        KeyState::Accepted,
        &format!("token {}", token.id),
        "join token",
        now,
    )?;
    accepted.tags = token.tags;
    Ok(accepted)
}

impl EnrolError {
    /// A short stable code for the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            EnrolError::Request(e) => e.code(),
            EnrolError::PeelId(_) => "enrol_bad_id",
            EnrolError::IdTaken { .. } => "enrol_id_taken",
            EnrolError::TooManyPending { .. } => "enrol_too_many_pending",
            EnrolError::NotEnrolled { .. } => "enrol_not_enrolled",
            EnrolError::KeyInUse { .. } => "enrol_key_in_use",
            EnrolError::RateLimited { .. } => "enrol_rate_limited",
            EnrolError::Token(e) => e.code(),
            EnrolError::NoTokens => "token_unknown",
            EnrolError::Store(_) | EnrolError::Authority(_) | EnrolError::Record(_) => "internal",
        }
    }
}

/// The audit record of one enrolment request (the id is read unverified for a refusal, to say
/// what was asked for).
/// The audit record of a node's request: who asked to join or fetch, and the outcome (never
/// the bundle).
fn node_audit(
    outcome: &Result<crate::wire::node::NodeAnswer, crate::appliance::nodes::NodeError>,
    payload: &[u8],
    nkey: &str,
    now: i64,
) -> AuditRecord {
    let asked = crate::wire::enrol::claimed_body::<crate::wire::node::NodeRequest>(payload);
    let op = asked.as_ref().map_or("node request", |a| match a.op {
        crate::wire::node::NodeOp::NodeJoin => "node join",
        crate::wire::node::NodeOp::NodeFetch => "node fetch",
    });
    let mut record = match outcome {
        Ok(answer) => {
            let mut record = AuditRecord::at(now, Source::Enrol, Verdict::Allow);
            record.code = match (answer.state, answer.bundle.is_some()) {
                (_, true) => "node_bundle_sent",
                (crate::wire::node::NodeState::Pending, _) => "node_pending",
                _ => "node_answered",
            }
            .into();
            record.reason = format!("{op} answered: {}", answer.state.as_str());
            record
        }
        Err(e) => {
            let mut record = AuditRecord::at(now, Source::Enrol, Verdict::Refuse);
            record.code = e.code().to_string();
            record.reason = format!("{op}: {e}");
            record
        }
    };
    record.nkey = nkey.chars().take(64).collect();
    if let Some(asked) = asked {
        record.peel_id = format!("node:{}", asked.name.chars().take(64).collect::<String>());
        record.connection_name = asked.hostname.chars().take(128).collect();
    }
    record.role = "enrolling".to_string();
    record
}

fn enrol_audit(
    outcome: &Result<EnrolAnswer, EnrolError>,
    payload: &[u8],
    nkey: &str,
    now: i64,
) -> AuditRecord {
    let asked = crate::wire::enrol::claimed_body::<EnrolRequest>(payload);
    let mut record = match outcome {
        Ok(answer) => {
            let mut record = AuditRecord::at(now, Source::Enrol, Verdict::Allow);
            record.reason = format!(
                "{} request answered: {}{}",
                asked.as_ref().map_or("enrolment", |a| match a.op {
                    Op::Enrol => "enrol",
                    Op::Fetch => "fetch",
                }),
                answer.state,
                asked
                    .as_ref()
                    .and_then(|a| a.token.as_ref())
                    .map_or(String::new(), |t| format!(" (join token {})", t.id))
            );
            record
        }
        Err(e) => {
            let mut record = AuditRecord::at(now, Source::Enrol, Verdict::Refuse);
            record.code = e.code().to_string();
            record.reason = e.to_string();
            record
        }
    };
    record.nkey = nkey.chars().take(64).collect();
    if let Some(asked) = asked {
        record.peel_id = asked.id.chars().take(128).collect();
        record.connection_name = asked.hostname.chars().take(128).collect();
    }
    record.role = "enrolling".to_string();
    record
}
