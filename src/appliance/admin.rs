//! The admin API over NATS (`zester.admin.key.*`), served by `zester up`, used by `zester key`.
//!
//! Requests and answers are JSON; every answer is `{"ok": …}` or `{"error": "…"}`. Key state
//! changes are compare-and-set writes to the key store, guarded by the fingerprint the admin
//! saw when given. Revoking a key also cuts it off at once (DESIGN §6): every live session of
//! the peel is kicked through the system account, and the peel's identity key is added to the
//! ZESTER account's revocations (pushed to the server and kept in the home), so the server
//! refuses it even before asking the callout. Globs are resolved by the CLI, which lists the
//! matches and asks before acting on several.

use crate::wire::subjects::SERVICE_QUEUE;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use serde_json::{json, Value};

use crate::appliance::callout::audit::{AuditRecord, AuditSink, Source, Verdict};
use crate::appliance::callout::decide::Trust;
use crate::appliance::callout::service::CalloutState;
use crate::appliance::keys::{KeyRecord, KeyState, KeyStore};
use crate::appliance::respond;
use crate::authority::Authority;
use crate::home::{self, now_unix, Home};
use crate::identity::keys::UserKey;
use crate::identity::peel_id::PeelId;
use crate::permissions::Role;
use crate::wire::reply::Asker;

pub use crate::wire::admin::*;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such key.
    #[error("no key record for peel {id}")]
    NoSuchKey {
        /// The id.
        id: String,
    },
    /// The fingerprint guard did not match (the key was re-created).
    #[error("peel {id} now has key {found}, not {expected}: it was re-created since you looked; check `zester key show {id}`")]
    FingerprintMismatch {
        /// The id.
        id: String,
        /// The fingerprint given.
        expected: String,
        /// The fingerprint found.
        found: String,
    },
    /// The key is no longer in the state the admin acted on.
    #[error("peel {id} is {found} now, not {expected}: someone changed it meanwhile (see `zester key show {id}`)")]
    StateChanged {
        /// The id.
        id: String,
        /// The state acted on.
        expected: KeyState,
        /// The state found.
        found: KeyState,
    },
    /// The key is in the state asked for already.
    #[error("peel {id} is {state} already: nothing changed (see `zester key show {id}`)")]
    AlreadyInState {
        /// The id.
        id: String,
        /// Its state.
        state: KeyState,
    },
    /// An accepted key cannot be deleted.
    #[error("peel {id} is accepted: revoke it first (`zester key revoke {id}`), then delete it")]
    DeleteAccepted {
        /// The id.
        id: String,
    },
    /// A bad request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// `--replace` names no denied claim of the id.
    #[error(
        "peel {id} has no denied claim with fingerprint {fingerprint} (see `zester key show {id}`)"
    )]
    NoDeniedClaim {
        /// The id.
        id: String,
        /// The fingerprint given.
        fingerprint: String,
    },
    /// The key store refused.
    #[error(transparent)]
    Store(#[from] crate::appliance::keys::KeyStoreError),
    /// This node of a cluster cannot reach the key bucket's leader: it is cut off from the
    /// majority of the nodes, and a key change here could not be made everywhere.
    #[error("could not {action} the key record of peel {id}: this node cannot reach a majority of the cluster (the key bucket answers nowhere: {why}), so key changes are refused here rather than made on this node alone; make the change through another node, or again once the network is back (`zester status` shows the routes)")]
    NoQuorum {
        /// What was being done ("update", "create", "read").
        action: &'static str,
        /// The id.
        id: String,
        /// What the bucket said.
        why: String,
    },
    /// A state change that is not allowed.
    #[error(transparent)]
    Record(#[from] crate::appliance::keys::KeyError),
    /// A key is not of the kind it must be.
    #[error(transparent)]
    Key(#[from] crate::identity::keys::KeyError),
    /// A file of the home could not be read or written.
    #[error(transparent)]
    Home(#[from] home::HomeError),
    /// Creds or the account JWT could not be signed.
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
    /// The claim update could not be sent to the server.
    #[error("updating the ZESTER account: {0}")]
    AccountRequest(#[from] async_nats::RequestError),
    /// The server did not answer the claim update.
    #[error("updating the ZESTER account: the server did not answer within {} s", after.as_secs())]
    AccountNoAnswer {
        /// How long was waited.
        after: Duration,
    },
    /// The server refused the claim update, in its own words.
    #[error("updating the ZESTER account: the server refused the update: {0}")]
    AccountRefused(String),
    /// A request that changes something came without an admin's signature.
    #[error("refused: {subject} changes something and must be signed by an admin's key (use the zester CLI with admin creds)")]
    Unsigned {
        /// The subject.
        subject: String,
    },
    /// The request's proof of identity does not verify.
    #[error("refused: {0}")]
    Proof(#[from] crate::wire::admin_auth::ProofError),
    /// The request was signed by a key that is not an admin's.
    #[error(
        "refused: the request is signed by {key}, which is not an admin this appliance trusts"
    )]
    NotAnAdmin {
        /// The key (shortened).
        key: String,
    },
    /// The same signature was seen before.
    #[error("refused: this admin signature was already used (a replayed request)")]
    Replayed,
    /// A bad admin name.
    #[error(transparent)]
    AdminName(#[from] crate::identity::admin_name::AdminNameError),
    /// No named admin of that name.
    #[error("no named admin {name} (see `zester admin list`)")]
    NoSuchAdmin {
        /// The name.
        name: String,
    },
    /// Removing the node would leave no majority of the cluster up.
    #[error("refused: removing node {name} now would leave {left}, and the cluster needs {needed} for key changes (a removal does not make it smaller); start the nodes that are down first (`zester status`), or pass --force to remove it anyway; nothing was changed")]
    RemoveWithoutMajority {
        /// The node asked about.
        name: String,
        /// What would be left.
        left: String,
        /// How many the meta group needs.
        needed: u64,
    },
    /// The master's or admin's creds cannot be rotated on one node of a cluster.
    #[error("refused: this appliance is a node of a cluster, where every node holds the {role} creds and trusts their key; rotating them on one node is not supported yet, and nothing was changed")]
    ClusterServiceCreds {
        /// `master` or `admin`.
        role: String,
    },
    /// A named admin of that name exists.
    #[error(
        "admin {name} exists already: pass --force to replace its key (the old one is revoked)"
    )]
    AdminExists {
        /// The name.
        name: String,
    },
    /// The cluster's list of named admins could not be read or changed.
    #[error(transparent)]
    Admins(#[from] crate::appliance::admins::AdminsError),
    /// The key must not go into the account's revocations.
    #[error(
        "updating the ZESTER account: refusing to revoke {:?}: {why}",
        crate::identity::keys::shorten(nkey)
    )]
    NotRevocable {
        /// The key.
        nkey: String,
        /// Why not.
        why: &'static str,
    },
}

/// What the admin service needs.
pub struct AdminService {
    /// The home (account JWT is rewritten there on revocation).
    pub home: Home,
    /// The keys (operator signer for account updates).
    pub authority: Arc<Authority>,
    /// The key store.
    pub keys: Arc<KeyStore>,
    /// The callout (sessions to kick, trust to update).
    pub callout: Arc<CalloutState>,
    /// The system-account connection (kicks, claim updates).
    pub sys: async_nats::Client,
    /// Serialises account JWT updates.
    pub account_lock: tokio::sync::Mutex<()>,
    /// Per-peel settings.
    pub settings: Arc<crate::appliance::settings::SettingsStore>,
    /// Join tokens.
    pub tokens: Arc<crate::appliance::tokens::TokenStore>,
    /// The named admins: the cluster's list, followed into `auth/admins.json` and the trust.
    pub admins: Arc<crate::appliance::admins::AdminBucket>,
    /// The cluster's node records (`None` on a single node).
    pub nodes: Option<Arc<crate::appliance::nodes::NodeStore>>,
    /// Where refused requests are audited.
    pub audit: AuditSink,
    /// Admin signatures seen within the replay window, with their signing time.
    pub seen: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

/// Who asked for an admin request, as the appliance verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// A read that came unsigned.
    Unsigned,
    /// An admin: `admin` (the home's creds) or `admin:<name>`.
    By(String),
}

impl Asked {
    /// The identity recorded for the request.
    pub fn identity(&self) -> &str {
        match self {
            Asked::Unsigned => "unsigned",
            Asked::By(identity) => identity,
        }
    }
}

impl AdminService {
    /// Serves `zester.admin.key.>`, settings and creds rotation on `client` (zester's service
    /// connection); answers go only to the admin's inbox (`_INBOX._admin.`).
    pub async fn serve(
        self: Arc<Self>,
        client: async_nats::Client,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::Error> {
        let keys = client
            .queue_subscribe(KEY_SUBJECTS, SERVICE_QUEUE.into())
            .await?;
        let creds = client
            .queue_subscribe(CREDS_ROTATE, SERVICE_QUEUE.into())
            .await?;
        let settings = client
            .queue_subscribe(SETTINGS_REQUESTS, SERVICE_QUEUE.into())
            .await?;
        let tokens = client
            .queue_subscribe(TOKEN_REQUESTS, SERVICE_QUEUE.into())
            .await?;
        let admins = client
            .queue_subscribe(ADMINS_REQUESTS, SERVICE_QUEUE.into())
            .await?;
        let nodes = client
            .queue_subscribe(crate::wire::admin::NODE_REQUESTS, SERVICE_QUEUE.into())
            .await?;
        let mut requests = futures_util::stream::select(
            futures_util::stream::select(keys, futures_util::stream::select(creds, nodes)),
            futures_util::stream::select(settings, futures_util::stream::select(tokens, admins)),
        );
        client.flush().await?;
        Ok(tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let Some(reply) =
                    respond::checked_reply(&request, Asker::Admin, Source::Admin, &self.audit)
                else {
                    continue;
                };
                let service = self.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let outcome = match service.identify(&request, now_unix()) {
                        Ok(asked) => {
                            service
                                .handle(&request.subject, &request.payload, &asked)
                                .await
                        }
                        Err(refused) => {
                            service.audit_refused(&request, &refused);
                            Err(refused)
                        }
                    };
                    respond::answer(&client, reply, outcome, "an admin request").await;
                });
            }
        }))
    }

    /// Who sent `request`: the admin whose key signed it (see `wire::admin_auth`), checked
    /// against the keys this appliance trusts as admins at this moment. Unsigned requests may
    /// only read.
    pub fn identify(&self, request: &async_nats::Message, now: i64) -> Result<Asked, AdminError> {
        use crate::wire::admin_auth::{
            AdminProof, KEY_HEADER, MAX_SKEW_SECS, NONCE_HEADER, SIGNATURE_HEADER, TIME_HEADER,
        };
        let header = |name: &str| {
            request
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        let proof = AdminProof::from_headers(
            header(KEY_HEADER),
            header(TIME_HEADER),
            header(NONCE_HEADER),
            header(SIGNATURE_HEADER),
        )?;
        let Some(proof) = proof else {
            if changes_something(request.subject.as_str()) {
                return Err(AdminError::Unsigned {
                    subject: request.subject.to_string(),
                });
            }
            return Ok(Asked::Unsigned);
        };
        let key = proof.verify(request.subject.as_str(), &request.payload, now)?;
        let role = match self.callout.trust().services.get(key.as_str()) {
            Some(role @ Role::Admin(_)) => role.clone(),
            _ => {
                return Err(AdminError::NotAnAdmin {
                    key: crate::identity::keys::shorten(key.as_str()),
                })
            }
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, at| (now - *at).abs() <= 2 * MAX_SKEW_SECS);
        if seen.insert(proof.signature.clone(), proof.time).is_some() {
            return Err(AdminError::Replayed);
        }
        Ok(Asked::By(role.identity()))
    }

    /// `zester node list|accept|remove`.
    async fn node_request(
        &self,
        subject: &str,
        payload: &[u8],
        asked: &Asked,
    ) -> Result<Value, AdminError> {
        use crate::wire::admin::{NodeChange, NODE_ACCEPT, NODE_LIST};
        let Some(nodes) = &self.nodes else {
            return Err(AdminError::BadRequest(
                crate::appliance::nodes::NodeError::NotClustered.to_string(),
            ));
        };
        let failed = |e: crate::appliance::nodes::NodeError| AdminError::BadRequest(e.to_string());
        if subject == NODE_LIST {
            return Ok(json!(nodes.list().await.map_err(failed)?));
        }
        let change: NodeChange =
            serde_json::from_slice(payload).map_err(|e| AdminError::BadRequest(e.to_string()))?;
        let by = asked.identity();
        let now = now_unix();
        let record = if subject == NODE_ACCEPT {
            let record = nodes
                .accept(&change.name, change.fingerprint.as_deref(), by, now)
                .await
                .map_err(failed)?;
            self.audit_action(
                asked,
                "node_accepted",
                "",
                format!(
                    "node {} ({}) accepted by {by}",
                    record.name,
                    record.fingerprint()
                ),
            );
            record
        } else {
            if !change.force {
                self.removal_keeps_a_majority(&change.name).await?;
            }
            let record = nodes.remove(&change.name, by, now).await.map_err(failed)?;
            self.audit_action(
                asked,
                "node_removed",
                "",
                format!("node {} removed by {by}", record.name),
            );
            record
        };
        // This node's next start routes to the nodes known now, even before its next refresh.
        if let Ok(all) = nodes.list().await {
            crate::appliance::nodes::write_cache(&self.home, &all);
        }
        Ok(json!(record))
    }

    /// Refuses to remove `name` when the nodes left up and current would be fewer than the
    /// JetStream meta group needs: the cluster would stop taking key changes until a node that
    /// is down comes back (a removal does not shrink the group).
    async fn removal_keeps_a_majority(&self, name: &str) -> Result<(), AdminError> {
        // Without a leader to ask (a node alone, or none elected) the removal's own write
        // says what is wrong.
        let jsz = crate::appliance::cluster::leader_document(&self.sys, "JSZ").await;
        let Some((live, needed)) = jsz
            .as_ref()
            .and_then(|jsz| crate::appliance::cluster::live_without(jsz, name))
        else {
            return Ok(());
        };
        let was_counted = |jsz: &Value| {
            let meta = &jsz["meta_cluster"];
            meta["leader"] == name
                || meta["replicas"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|peer| peer["name"] == name))
        };
        // A node the group never counted (still pending, say) changes no majority.
        if jsz.as_ref().is_some_and(was_counted) && (live.len() as u64) < needed {
            return Err(AdminError::RemoveWithoutMajority {
                name: name.to_string(),
                left: format!("only {} up and current", live.join(", ")),
                needed,
            });
        }
        Ok(())
    }

    /// Audits an admin request refused before it was acted on, with the claimed key.
    fn audit_refused(&self, request: &async_nats::Message, refused: &AdminError) {
        let mut record = AuditRecord::at(now_unix(), Source::Admin, Verdict::Refuse);
        record.code = match refused {
            AdminError::Unsigned { .. } => "admin_unsigned",
            AdminError::NotAnAdmin { .. } => "admin_not_trusted",
            AdminError::Replayed => "admin_replayed",
            _ => "admin_signature_invalid",
        }
        .into();
        record.reason = format!("{refused} (request on {} not acted on)", request.subject);
        record.role = "admin".into();
        record.nkey = request
            .headers
            .as_ref()
            .and_then(|h| h.get(crate::wire::admin_auth::KEY_HEADER))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        self.audit.record(record);
    }

    /// Audits an admin action that was carried out, attributed to the verified `asked`.
    fn audit_action(&self, asked: &Asked, code: &str, peel: &str, reason: String) {
        let mut record = AuditRecord::at(now_unix(), Source::Admin, Verdict::Allow);
        record.code = code.into();
        record.reason = reason;
        record.role = "admin".into();
        record.peel_id = peel.into();
        record.admin = asked.identity().to_string();
        record.client_ip = self.addresses_of(asked);
        self.audit.record(record);
    }

    /// Where the verified admin is connected from: the addresses of its live sessions
    /// (comma-separated when several). nats-server names no publisher on a plain subscription,
    /// so this is the callout's own record of the connections that identity holds.
    fn addresses_of(&self, asked: &Asked) -> String {
        let mut addresses: Vec<String> = self
            .callout
            .sessions
            .of(asked.identity())
            .into_iter()
            .filter_map(|session| session.ip.map(|ip| ip.to_string()))
            .collect();
        addresses.sort();
        addresses.dedup();
        addresses.join(",")
    }

    /// [`AdminService::handle_request`], with a key record that could not be read or written
    /// on a node of a cluster explained: where the key bucket answers nowhere (no leader this
    /// node can reach: it is cut off from the majority), the change is refused as
    /// [`AdminError::NoQuorum`] rather than with the JetStream error of the moment ("no stream
    /// found", a timeout), which read as if the bucket were gone.
    async fn handle(
        &self,
        subject: &str,
        payload: &[u8],
        asked: &Asked,
    ) -> Result<Value, AdminError> {
        let result = self.handle_request(subject, payload, asked).await;
        match result {
            Err(AdminError::Store(crate::appliance::keys::KeyStoreError::Kv {
                action,
                id,
                source,
            })) if self.nodes.is_some() => match self.keys.reachable().await {
                Err(why) => Err(AdminError::NoQuorum {
                    action,
                    id: id.to_string(),
                    why,
                }),
                Ok(()) => Err(AdminError::Store(
                    crate::appliance::keys::KeyStoreError::Kv { action, id, source },
                )),
            },
            other => other,
        }
    }

    async fn handle_request(
        &self,
        subject: &str,
        payload: &[u8],
        asked: &Asked,
    ) -> Result<Value, AdminError> {
        let by = asked.identity();
        let parse_error = |e: serde_json::Error| AdminError::BadRequest(e.to_string());
        match subject {
            KEY_LIST => {
                let request: ListRequest = serde_json::from_slice(payload).map_err(parse_error)?;
                let list: Vec<KeySummary> = self
                    .keys
                    .cache()
                    .all()
                    .iter()
                    .filter(|r| request.state.is_none_or(|s| s == r.state))
                    .filter(|r| !request.denied || !r.denied.is_empty())
                    .map(|r| KeySummary::of(r))
                    .collect();
                Ok(json!(list))
            }
            KEY_SHOW => {
                let request: KeyRequest = serde_json::from_slice(payload).map_err(parse_error)?;
                let (record, revision) = self.read(&request).await?;
                let mut sessions = self.callout.sessions.of(record.id.as_str());
                // An enrolling key's sessions are filed under the key itself.
                sessions.extend(self.callout.sessions.of(&record.nkey));
                Ok(json!({
                    "record": record,
                    "fingerprint": record.fingerprint(),
                    "revision": revision,
                    "sessions": sessions,
                }))
            }
            KEY_CHANGE => {
                let request: ChangeRequest =
                    serde_json::from_slice(payload).map_err(parse_error)?;
                let (id, to) = (request.id.clone(), request.to);
                let reply = self.change(request, by).await?;
                self.audit_action(
                    asked,
                    &format!("key_{}", to.as_str()),
                    &id,
                    format!("key of {id} {} by {by}", to.as_str()),
                );
                Ok(json!(reply))
            }
            KEY_REGISTER => {
                let mut record = KeyRecord::from_json(payload, "the registration request")
                    .map_err(|e| AdminError::BadRequest(e.to_string()))?;
                // Who registered it is the verified admin, not what the CLI wrote.
                if let Some(change) = record.history.last_mut() {
                    change.by = by.to_string();
                }
                if record.state != KeyState::Accepted {
                    return Err(AdminError::BadRequest(format!(
                        "only accepted keys are registered, not {}",
                        record.state
                    )));
                }
                let outcome = self.keys.create_or_same(&record).await?;
                let revision = outcome.revision();
                // Admitted once the answer is out: the callout decides from the cache.
                let _ = self
                    .keys
                    .wait_for_revision(revision, Duration::from_secs(5))
                    .await;
                tracing::info!(target: "audit", peel = %record.id, fingerprint = %record.fingerprint(), by, "key registered by creds issue");
                self.audit_action(
                    asked,
                    "key_registered",
                    record.id.as_str(),
                    format!(
                        "key {} registered by {by} (creds issue)",
                        record.fingerprint()
                    ),
                );
                Ok(json!({ "id": record.id.as_str(), "revision": revision }))
            }
            KEY_DELETE => {
                let request: KeyRequest = serde_json::from_slice(payload).map_err(parse_error)?;
                let (record, revision) = self.read(&request).await?;
                if record.state == KeyState::Accepted && !record.denied.is_empty() {
                    // An accepted key stays; what `delete` clears is the claims it denied.
                    let cleared = record.denied.len();
                    let kept = KeyRecord {
                        denied: Vec::new(),
                        ..record.clone()
                    };
                    self.keys.update(&record.id, revision, &kept).await?;
                    self.audit_action(
                        asked,
                        "key_denied_cleared",
                        record.id.as_str(),
                        format!("{cleared} denied claims on {} cleared by {by}", record.id),
                    );
                    return Ok(json!({ "id": record.id.as_str(), "cleared_denied": cleared }));
                }
                if record.state == KeyState::Accepted {
                    return Err(AdminError::DeleteAccepted { id: request.id });
                }
                self.keys.delete(&record.id, revision).await?;
                self.audit_action(
                    asked,
                    "key_deleted",
                    record.id.as_str(),
                    format!("key record of {} deleted by {by}", record.id),
                );
                Ok(json!({ "deleted": record.id.as_str() }))
            }
            SETTINGS_SET | SETTINGS_GET => {
                let request: Value = serde_json::from_slice(payload).map_err(parse_error)?;
                let id = PeelId::parse(request["id"].as_str().unwrap_or_default())
                    .map_err(|e| AdminError::BadRequest(e.to_string()))?;
                let settings_error = |e: crate::appliance::settings::SettingsError| {
                    AdminError::BadRequest(e.to_string())
                };
                if subject == SETTINGS_SET {
                    let revision = self
                        .settings
                        .set(&id, &request["document"])
                        .await
                        .map_err(settings_error)?;
                    tracing::info!(target: "audit", peel = %id, revision, by, "settings replaced");
                    self.audit_action(
                        asked,
                        "settings_replaced",
                        id.as_str(),
                        format!("settings of {id} replaced by {by} (revision {revision})"),
                    );
                    Ok(json!({ "id": id.as_str(), "revision": revision }))
                } else {
                    Ok(
                        json!({ "id": id.as_str(), "document": self.settings.get(&id).await.map_err(settings_error)? }),
                    )
                }
            }
            crate::wire::admin::NODE_LIST
            | crate::wire::admin::NODE_ACCEPT
            | crate::wire::admin::NODE_REMOVE => self.node_request(subject, payload, asked).await,
            TOKEN_CREATE | TOKEN_LIST | TOKEN_REVOKE => {
                let answer =
                    crate::appliance::tokens::handle_admin(&self.tokens, subject, payload, by)
                        .await
                        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
                // What the token allows, never its secret (`token` stays out of the record).
                if subject == TOKEN_CREATE {
                    self.audit_action(
                        asked,
                        "token_created",
                        "",
                        format!(
                            "join token {} (ids {}, {} uses, expires {}) created by {by}",
                            answer["id"].as_str().unwrap_or("?"),
                            answer["ids"].as_str().unwrap_or("?"),
                            answer["uses"],
                            answer["expires"],
                        ),
                    );
                } else if subject == TOKEN_REVOKE {
                    self.audit_action(
                        asked,
                        "token_revoked",
                        "",
                        format!(
                            "join token {} revoked by {by}",
                            answer["revoked"].as_str().unwrap_or("?")
                        ),
                    );
                }
                Ok(answer)
            }
            CREDS_ROTATE => {
                let request: Value = serde_json::from_slice(payload).map_err(parse_error)?;
                let role = request["role"].as_str().unwrap_or_default();
                let rotated = self.rotate_service_creds(role).await?;
                self.audit_action(
                    asked,
                    "service_creds_rotated",
                    "",
                    format!("{role} creds rotated by {by}"),
                );
                Ok(rotated)
            }
            ADMINS_LIST => Ok(json!(self.admins.list().await?.admins)),
            ADMINS_ADD => {
                let request: AdminAddRequest =
                    serde_json::from_slice(payload).map_err(parse_error)?;
                self.add_admin(request, asked).await
            }
            ADMINS_REMOVE => {
                let request: AdminRemoveRequest =
                    serde_json::from_slice(payload).map_err(parse_error)?;
                self.remove_admin(request, asked).await
            }
            other => Err(AdminError::BadRequest(format!(
                "unknown admin subject {other}"
            ))),
        }
    }

    async fn read(&self, request: &KeyRequest) -> Result<(KeyRecord, u64), AdminError> {
        let id = PeelId::parse(&request.id).map_err(|e| AdminError::BadRequest(e.to_string()))?;
        let (record, revision) =
            self.keys
                .get(&id)
                .await?
                .ok_or_else(|| AdminError::NoSuchKey {
                    id: request.id.clone(),
                })?;
        if let Some(expected) = &request.fingerprint {
            let found = record.fingerprint();
            if !found.eq_ignore_ascii_case(expected) {
                return Err(AdminError::FingerprintMismatch {
                    id: request.id.clone(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        Ok((record, revision))
    }

    async fn change(&self, request: ChangeRequest, by: &str) -> Result<ChangeReply, AdminError> {
        if request.replace {
            return self.replace(request, by).await;
        }
        let started = Instant::now();
        let (record, revision) = self
            .read(&KeyRequest {
                id: request.id.clone(),
                fingerprint: request.fingerprint.clone(),
            })
            .await?;
        if let Some(expected) = request.from {
            if record.state != expected && record.state == request.to {
                return Err(AdminError::AlreadyInState {
                    id: request.id,
                    state: record.state,
                });
            }
            if record.state != expected {
                return Err(AdminError::StateChanged {
                    id: request.id,
                    expected,
                    found: record.state,
                });
            }
        }
        let now = now_unix();
        // The history records the verified admin; `request.by` is only what the client claimed.
        let changed = record.transition(request.to, by, &request.reason, now)?;
        let new_revision = self.keys.update(&record.id, revision, &changed).await?;
        let _ = self
            .keys
            .wait_for_revision(new_revision, Duration::from_secs(2))
            .await;
        let mut reply = ChangeReply {
            record: changed,
            kicked: 0,
            cut_off_ms: None,
        };
        if request.to == KeyState::Revoked {
            reply.kicked = self.kick(record.id.as_str(), None).await;
            reply.cut_off_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            self.revoke_in_account(&record.nkey, now).await?;
            // Sessions the table does not know (admitted by a decision that raced this
            // change, or by another node): the servers' own connection lists.
            reply.kicked += self.kick_unlisted(record.id.as_str()).await;
            tracing::warn!(peel = %record.id, kicked = reply.kicked, ms = ?reply.cut_off_ms, "key revoked");
        } else {
            tracing::info!(peel = %record.id, state = %request.to, by, "key state changed");
        }
        Ok(reply)
    }

    /// `key accept ID --replace --fingerprint FP`: re-binds the id to the denied claim with
    /// that fingerprint (the rebuilt-machine case); the key it held is kicked and revoked.
    async fn replace(&self, request: ChangeRequest, by: &str) -> Result<ChangeReply, AdminError> {
        let started = Instant::now();
        let fingerprint = request.fingerprint.clone().ok_or_else(|| {
            AdminError::BadRequest(
                "--replace needs --fingerprint FP of the denied claim (see `zester key show ID`)"
                    .into(),
            )
        })?;
        let (record, revision) = self
            .read(&KeyRequest {
                id: request.id.clone(),
                fingerprint: None,
            })
            .await?;
        let now = now_unix();
        let reason = if request.reason.is_empty() {
            "replaced".to_string()
        } else {
            request.reason.clone()
        };
        let rebound = record
            .rebound(&fingerprint, by, &reason, now)?
            .ok_or_else(|| AdminError::NoDeniedClaim {
                id: request.id.clone(),
                fingerprint: fingerprint.clone(),
            })?;
        if self.keys.cache().lookup_nkey(&rebound.nkey).is_some() {
            return Err(AdminError::BadRequest(format!(
                "the key {fingerprint} already holds another id"
            )));
        }
        let new_revision = self.keys.update(&record.id, revision, &rebound).await?;
        let _ = self
            .keys
            .wait_for_revision(new_revision, Duration::from_secs(2))
            .await;
        // The key it held: cut off, for good, whatever state it was in.
        let mut kicked = self.kick(record.id.as_str(), Some(&record.nkey)).await;
        let cut_off_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        self.revoke_in_account(&record.nkey, now).await?;
        kicked += self.kick_unlisted(record.id.as_str()).await;
        tracing::warn!(target: "audit", peel = %record.id, from = %record.fingerprint(), to = %rebound.fingerprint(), kicked, by = %by, "id re-bound to a denied claim; the old key is revoked");
        Ok(ChangeReply {
            record: rebound,
            kicked,
            cut_off_ms,
        })
    }

    /// Kicks the live sessions of peel `id` (only those of `nkey` when given); returns how
    /// many the servers acknowledged.
    pub async fn kick(&self, id: &str, nkey: Option<&str>) -> usize {
        kick_sessions(&self.callout, &self.sys, id, nkey).await
    }

    /// Replaces the master's or the admin's creds: a new key, the file rewritten atomically,
    /// the callout told, and the old key's sessions kicked a moment later (a client that
    /// re-reads the file at reconnect comes back with the new key; zester's own services use
    /// their own per-run users).
    async fn rotate_service_creds(&self, role_name: &str) -> Result<Value, AdminError> {
        let role = match role_name {
            "master" => Role::Master,
            "admin" => Role::Admin(None),
            other => {
                return Err(AdminError::BadRequest(format!(
                    "cannot rotate {other:?}: use master or admin"
                )))
            }
        };
        // Every node holds these creds and trusts their key: a rotation on one node alone
        // would leave the others refusing the new creds and admitting the old ones.
        if self.home.is_cluster_node()? {
            return Err(AdminError::ClusterServiceCreds {
                role: role_name.to_string(),
            });
        }
        let path = self.home.service_creds(role_name);
        let old = home::read_creds(&path)?;
        let old_key = old.key().public_key();
        let creds = self.authority.issue_creds(
            nkeys::KeyPair::new_user(),
            role_name,
            &role,
            now_unix(),
            0,
        )?;
        let new_key = creds.key().public_key();
        home::write_creds(&path, &creds)?;
        let trust = self.callout.trust();
        let mut services = trust.services.clone();
        services.remove(old_key.as_str());
        services.insert(UserKey::parse(&new_key)?, role);
        self.callout.set_trust(Trust {
            services,
            ..(*trust).clone()
        });
        let (callout, sys, name) = (
            self.callout.clone(),
            self.sys.clone(),
            role_name.to_string(),
        );
        tokio::spawn(async move {
            // Let the answer reach the asking admin before its own session may go.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let kicked = kick_sessions(&callout, &sys, &name, Some(&old_key)).await;
            tracing::info!(target: "audit", role = %name, kicked, "service creds rotated; old key cut off");
        });
        Ok(json!({
            "role": role_name,
            "file": path,
            "fingerprint": crate::appliance::keys::fingerprint(&new_key),
        }))
    }

    /// Kicks every connection of peel `id` in the ZESTER account that the session table does
    /// not list, as the servers report them (`$SYS.REQ.ACCOUNT.<acc>.CONNZ` filtered by user:
    /// a callout session's user is the name in the JWT the callout issued, the peel id);
    /// returns how many were kicked.
    pub async fn kick_unlisted(&self, id: &str) -> usize {
        let account = self.callout.trust().account.subject().to_string();
        let listed: std::collections::HashSet<(String, u64)> = self
            .callout
            .sessions
            .of(id)
            .into_iter()
            .map(|s| (s.server_id.to_string(), s.client_id))
            .collect();
        let connections = crate::appliance::connz::list(&self.sys, &account, Some(id))
            .await
            .unwrap_or_default();
        let found = connections
            .into_iter()
            .filter(|c| c.user == id && !listed.contains(&(c.server_id.clone(), c.cid)))
            .map(|c| (c.server_id, c.cid));
        let kicks = found
            .into_iter()
            .map(|(server, cid)| kick_one(&self.sys, server, cid));
        let kicked = futures_util::future::join_all(kicks)
            .await
            .into_iter()
            .filter(|kicked| *kicked)
            .count();
        if kicked > 0 {
            tracing::warn!(target: "audit", kicked, "revocation: kicked connections the session table did not list");
        }
        kicked
    }

    /// `zester admin add` with the appliance running: the key joins the cluster's list (a
    /// compare-and-set on the bucket `zester-admins`), and with it this node's
    /// `auth/admins.json` and callout trust at once (as `Role::Admin(Some(name))`); the other
    /// nodes follow within a second. With `force`, an admin of that name gets the new key and
    /// its old key is revoked and its sessions kicked.
    async fn add_admin(
        &self,
        request: AdminAddRequest,
        asked: &Asked,
    ) -> Result<Value, AdminError> {
        let name = crate::identity::admin_name::AdminName::parse(&request.name)?;
        let key = UserKey::parse(&request.nkey)?;
        let now = now_unix();
        let replaced = {
            let _guard = self.account_lock.lock().await;
            let trust = self.callout.trust();
            self.admins
                .change(|list| {
                    if list.get(&name).is_some() && !request.force {
                        return Err(AdminError::AdminExists {
                            name: name.to_string(),
                        });
                    }
                    if trust.services.contains_key(key.as_str())
                        || trust.peers.contains_key(key.as_str())
                        || list.admins.iter().any(|a| a.nkey == key.as_str())
                    {
                        return Err(AdminError::BadRequest(
                            "that key already belongs to one of zester's own users or admins"
                                .into(),
                        ));
                    }
                    Ok(list.put(AdminEntry {
                        name: name.clone(),
                        nkey: key.to_string(),
                        added_at: now,
                        added_by: asked.identity().to_string(),
                    }))
                })
                .await?
        };
        let mut kicked = 0;
        if let Some(old) = &replaced {
            kicked = self.cut_off_admin(&name, &old.nkey, now).await?;
        }
        self.audit_action(
            asked,
            "admin_added",
            "",
            format!(
                "admin {name} (key {}) added by {}{}",
                crate::appliance::keys::fingerprint(key.as_str()),
                asked.identity(),
                if replaced.is_some() {
                    format!("; its previous key revoked, {kicked} session(s) kicked")
                } else {
                    String::new()
                }
            ),
        );
        Ok(json!({
            "name": name,
            "fingerprint": crate::appliance::keys::fingerprint(key.as_str()),
            "added_by": asked.identity(),
            "replaced": replaced.is_some(),
        }))
    }

    /// `zester admin remove`: out of the cluster's list, and with it this node's
    /// `auth/admins.json` and callout trust at once (refused from its next connection; the
    /// other nodes follow within a second), its key revoked in the account, its live sessions
    /// kicked on every node.
    async fn remove_admin(
        &self,
        request: AdminRemoveRequest,
        asked: &Asked,
    ) -> Result<Value, AdminError> {
        let name = crate::identity::admin_name::AdminName::parse(&request.name)?;
        let now = now_unix();
        let removed = {
            let _guard = self.account_lock.lock().await;
            self.admins
                .change(|list| {
                    list.remove(&name).ok_or_else(|| AdminError::NoSuchAdmin {
                        name: name.to_string(),
                    })
                })
                .await?
        };
        let kicked = self.cut_off_admin(&name, &removed.nkey, now).await?;
        tracing::warn!(target: "audit", admin = %name, kicked, by = asked.identity(), "named admin removed");
        self.audit_action(
            asked,
            "admin_removed",
            "",
            format!(
                "admin {name} removed by {}: key {} revoked, {kicked} live session(s) kicked",
                asked.identity(),
                crate::appliance::keys::fingerprint(&removed.nkey)
            ),
        );
        Ok(json!({ "name": name, "kicked": kicked, "revoked": removed.nkey }))
    }

    /// Revokes a named admin's (former) key and kicks its sessions, listed or not.
    async fn cut_off_admin(
        &self,
        name: &crate::identity::admin_name::AdminName,
        nkey: &str,
        now: i64,
    ) -> Result<usize, AdminError> {
        let identity = name.identity();
        let mut kicked = self.kick(&identity, Some(nkey)).await;
        self.revoke_in_account(nkey, now).await?;
        kicked += self.kick_unlisted(&identity).await;
        Ok(kicked)
    }

    /// Adds `nkey` to the ZESTER account's revocations, pushes the account JWT to the server,
    /// keeps it in the home and in the callout's trust. Only a peel's user key can be revoked
    /// this way: never `*`, another kind of key, or a key of zester's own users. It starts from
    /// the newest copy the cluster holds (this node's, or a resolver's signed elsewhere), with
    /// the revocations of both (`appliance::account`), so no revocation made on another node
    /// is dropped.
    pub async fn revoke_in_account(&self, nkey: &str, now: i64) -> Result<(), AdminError> {
        let _guard = self.account_lock.lock().await;
        let trust = self.callout.trust();
        check_revocable(nkey, &trust)?;
        let newest = crate::appliance::account::newest(self, &trust, now).await;
        let mut claims = crate::appliance::account::merged(&trust.account, newest.as_ref(), |k| {
            crate::appliance::account::is_unrevocable_own_user(&trust, k)
        });
        claims.nats.revocations.insert(nkey.to_string(), now);
        claims.iat = now.max(claims.iat + 1);
        let account = self.authority.sign_account(claims)?;
        crate::appliance::account::push(&self.sys, &account).await?;
        // Onto the trust as it is now, not as it was before the update's round trip: the named
        // admins may have changed meanwhile (`appliance::admins` follows the cluster's list).
        crate::appliance::account::keep(self, account)
    }
}

/// Refuses to put anything but a peel's user key into the account's revocations: `*` would
/// cut off every user of the account, zester's own included, and a service key zester itself.
pub fn check_revocable(nkey: &str, trust: &Trust) -> Result<(), AdminError> {
    let refuse = |why: &'static str| {
        Err(AdminError::NotRevocable {
            nkey: nkey.to_string(),
            why,
        })
    };
    if crate::identity::keys::expect_role(nkey, &[crate::identity::keys::KeyRole::User]).is_err() {
        return refuse("not a user key");
    }
    // A named admin's key may be revoked (`zester admin remove`); zester's own users' (this
    // node's or another node's) never.
    if let Some(role) = trust.service_role(nkey) {
        if !matches!(role, Role::Admin(Some(_))) {
            return refuse("it is a key of one of zester's own users");
        }
    }
    if trust
        .account
        .claims()
        .nats
        .authorization
        .auth_users
        .iter()
        .any(|k| k == nkey)
    {
        return refuse("it is the callout's key");
    }
    Ok(())
}

/// Kicks client `cid` on `server` through the system account; true when the server answered.
async fn kick_one(sys: &async_nats::Client, server: String, cid: u64) -> bool {
    let subject = format!("$SYS.REQ.SERVER.{server}.KICK");
    let body = json!({ "cid": cid }).to_string();
    let answer =
        tokio::time::timeout(Duration::from_secs(2), sys.request(subject, body.into())).await;
    matches!(answer, Ok(Ok(_)))
}

/// Kicks the live sessions remembered under `id` (only those of `nkey` when given) through the
/// system account; returns how many the servers acknowledged.
async fn kick_sessions(
    callout: &CalloutState,
    sys: &async_nats::Client,
    id: &str,
    nkey: Option<&str>,
) -> usize {
    let sessions = callout.sessions.of(id);
    let kicks = sessions
        .iter()
        .filter(|session| nkey.is_none_or(|k| session.nkey.as_str() == k))
        .map(|session| kick_one(sys, session.server_id.to_string(), session.client_id));
    futures_util::future::join_all(kicks)
        .await
        .into_iter()
        .filter(|kicked| *kicked)
        .count()
}

pub use crate::identity::peel_id::{glob_matches, is_glob};
