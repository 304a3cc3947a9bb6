//! The nodes of a cluster, on the appliance side: their records (bucket `zester-nodes`), a
//! node's own record kept fresh while it runs, and the server half of `zester node join`.
//!
//! A joining node proves its key like an enrolling peel (its connection signs the nonce, its
//! requests are signed and arrive on `zester.enrol.<its key>`, which only it may publish),
//! waits as `pending` until an admin runs `zester node accept NAME`, then fetches its
//! [`NodeBundle`], sealed to its curve key. What travels and why: `wire::node`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use data_encoding::BASE64URL_NOPAD;
use futures_util::StreamExt;

use crate::authority::Authority;
use crate::home::{self, Home};
use crate::identity::claims::AccountNats;
use crate::identity::jwt::{decode_ignoring_time, AccountJwt};
use crate::pki::{self, P256PublicKey, ServerNames};
use crate::wire::enrol::RequestError;
use crate::wire::node::{
    seal_bundle, verify_node_request, BundleError, NodeAnswer, NodeBundle, NodeOp, NodeRecord,
    NodeState,
};
use crate::wire::subjects::NODES_BUCKET;

/// How often a running node refreshes its own record's `seen_at`.
pub const SEEN_EVERY: Duration = Duration::from_secs(30);

/// The most nodes that may wait for `zester node accept` at once; further joins are refused
/// (an unknown key may ask, so what it can make must be bounded).
pub const MAX_PENDING: usize = 16;

/// How many times a compare-and-set is tried before giving up.
const CAS_ATTEMPTS: usize = 5;

/// What went wrong with the node records or a node's request.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request itself is not acceptable.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Too many requests from this key or address this minute (as for enrolment).
    #[error("too many requests from {what} this minute (at most {max}); wait a minute")]
    RateLimited {
        /// The key or address.
        what: String,
        /// The limit.
        max: u32,
    },
    /// This zester is a single node.
    #[error("this zester runs as a single node: start it with --cluster-listen HOST:PORT (or [cluster] listen in zester.toml) before other nodes join")]
    NotClustered,
    /// The name belongs to another node (or key).
    #[error("node name {name:?} is taken by another node ({state}): pick another name, or `zester node remove {name}` first")]
    NameTaken {
        /// The name.
        name: String,
        /// Its record's state.
        state: &'static str,
    },
    /// A removed node asked again.
    #[error("node {name} was removed from the cluster; it cannot fetch again")]
    Removed {
        /// The name.
        name: String,
    },
    /// The removed node's system user could not be revoked; nothing was changed.
    #[error("cannot revoke the node's system user (nothing was changed; try again): {0}")]
    Revoke(String),
    /// No such node.
    #[error("no node named {name:?} (see `zester node list`)")]
    NoSuchNode {
        /// The name.
        name: String,
    },
    /// Accept with a fingerprint that is not the node's.
    #[error("node {name}'s key has fingerprint {found}, not {given}: it is not the machine you think; refused")]
    Fingerprint {
        /// The name.
        name: String,
        /// Its key's fingerprint.
        found: String,
        /// The one given.
        given: String,
    },
    /// Too many nodes wait already.
    #[error("{pending} nodes already wait for `zester node accept` (at most {MAX_PENDING}): accept or remove some first")]
    TooManyPending {
        /// How many wait.
        pending: usize,
    },
    /// A node that made the cluster (it did not join) cannot be accepted or removed by name.
    #[error("node {name} is in state {state}, not pending")]
    NotPending {
        /// The name.
        name: String,
        /// Its state.
        state: &'static str,
    },
    /// The bucket could not be opened or created.
    #[error("node bucket {NODES_BUCKET}: {0}")]
    Bucket(#[from] jetstream::context::CreateKeyValueError),
    /// A read failed.
    #[error("node bucket {NODES_BUCKET}: {0}")]
    Get(#[from] kv::EntryError),
    /// A create failed.
    #[error("node bucket {NODES_BUCKET}: {0}")]
    Create(#[from] kv::CreateError),
    /// An update failed.
    #[error("node bucket {NODES_BUCKET}: {0}")]
    Update(#[from] kv::UpdateError),
    /// Listing failed.
    #[error("node bucket {NODES_BUCKET}: {0}")]
    Keys(#[from] kv::WatchError),
    /// A stored record is not one.
    #[error("node bucket {NODES_BUCKET}: record {key:?} is damaged: {source}")]
    Corrupt {
        /// Its key.
        key: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The records kept changing under a compare-and-set.
    #[error("node {name} kept changing meanwhile; try again")]
    Busy {
        /// The name.
        name: String,
    },
    /// This node's home could not give what a joining node needs.
    #[error("cannot hand a joining node what it needs: {0}")]
    Home(#[from] home::HomeError),
    /// The node's certificate could not be signed.
    #[error("cannot certify the joining node's TLS key: {0}")]
    Pki(#[from] pki::PkiError),
    /// The bundle could not be sealed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

impl NodeError {
    /// A short stable code for the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::Request(e) => e.code(),
            NodeError::RateLimited { .. } => "enrol_rate_limited",
            NodeError::NotClustered => "node_not_clustered",
            NodeError::NameTaken { .. } => "node_name_taken",
            NodeError::Removed { .. } => "node_removed",
            NodeError::NoSuchNode { .. } => "node_unknown",
            NodeError::Fingerprint { .. } => "node_fingerprint_mismatch",
            NodeError::NotPending { .. } => "node_not_pending",
            NodeError::TooManyPending { .. } => "node_too_many_pending",
            NodeError::Busy { .. } => "node_busy",
            NodeError::Revoke(_) => "node_revoke_failed",
            _ => "node_store_error",
        }
    }
}

/// The node bucket.
pub struct NodeStore {
    kv: kv::Store,
    revoker: Option<Revoker>,
}

/// The revocation time given to a removed node's system user: every JWT of that key, issued
/// before or after the removal, is refused (9999-12-31T23:59:59Z). A revocation at the time of
/// removal would let the node's own renewal of its creds (same key, later `iat`) back in.
pub const REVOKED_FOR_GOOD: i64 = 253_402_300_799;

/// How long `zester node remove` waits for the servers to confirm the SYS account JWT.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(3);

/// What `zester node remove` needs besides the records: this node's keys and home, and
/// where its nats-server listens. The SYS account JWT with the revocation is pushed over a
/// system connection of its own, made for the push with a one-off system user: the admin API
/// answers in a queue group, so the node removed may be the one answering, and its own system
/// connection is among those the push closes.
#[derive(Clone)]
pub struct Revoker {
    /// Its keys (the operator signing key signs the SYS account JWT, the SYS signing key the
    /// one-off user).
    pub authority: Arc<Authority>,
    /// Its home (`auth/sys.jwt` is kept there).
    pub home: Home,
    /// Its nats-server.
    pub endpoint: crate::net::connect::Endpoint,
}

impl NodeStore {
    /// Opens (or creates, with `replicas` copies) the bucket on zester's store connection.
    pub async fn open(client: async_nats::Client, replicas: usize) -> Result<NodeStore, NodeError> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(NODES_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => {
                js.create_key_value(kv::Config {
                    bucket: NODES_BUCKET.to_string(),
                    description: "zester: the cluster's nodes (names, URLs, keys, state)".into(),
                    history: 5,
                    max_value_size: 64 * 1024,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await?
            }
        };
        Ok(NodeStore { kv, revoker: None })
    }

    /// The store that revokes what a removed node holds with `revoker` (see
    /// [`NodeStore::remove`]).
    pub fn with_revoker(self, revoker: Revoker) -> NodeStore {
        NodeStore {
            revoker: Some(revoker),
            ..self
        }
    }

    /// Every change of a record from now on (for [`crate::appliance::pinning::follow`]).
    pub async fn changes(&self) -> Result<kv::Watch, NodeError> {
        Ok(self.kv.watch_all().await?)
    }

    /// The record of node `name` and its revision.
    pub async fn get(&self, name: &str) -> Result<Option<(NodeRecord, u64)>, NodeError> {
        let Some(entry) = crate::appliance::kv_leader::latest(&self.kv, name).await? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record = serde_json::from_slice(&entry.value).map_err(|source| NodeError::Corrupt {
            key: name.to_string(),
            source,
        })?;
        Ok(Some((record, entry.revision)))
    }

    /// Every node's record, by name.
    pub async fn list(&self) -> Result<Vec<NodeRecord>, NodeError> {
        let mut keys = self.kv.keys().await?;
        let mut records = Vec::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Some((record, _)) = self.get(&key).await? {
                records.push(record);
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    async fn create(&self, record: &NodeRecord) -> Result<u64, NodeError> {
        let body = serde_json::to_vec(record).unwrap_or_default();
        Ok(self.kv.create(&record.name, body.into()).await?)
    }

    /// Applies `change` to node `name`'s record with compare-and-set (retried when it changed
    /// meanwhile); `change` may refuse. Returns the record written.
    pub async fn update(
        &self,
        name: &str,
        change: impl Fn(&NodeRecord) -> Result<NodeRecord, NodeError>,
    ) -> Result<NodeRecord, NodeError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((record, revision)) = self.get(name).await? else {
                return Err(NodeError::NoSuchNode {
                    name: name.to_string(),
                });
            };
            let changed = change(&record)?;
            let body = serde_json::to_vec(&changed).unwrap_or_default();
            match self.kv.update(name, body.into(), revision).await {
                Ok(_) => return Ok(changed),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(NodeError::Busy {
            name: name.to_string(),
        })
    }

    /// Records this running node: created `accepted` if it is new (it made the cluster), else
    /// its URLs and `seen_at` refreshed. A node that was removed stays removed.
    pub async fn register_self(&self, me: &NodeRecord, now: i64) -> Result<NodeRecord, NodeError> {
        match self.get(&me.name).await? {
            None => {
                let record = NodeRecord {
                    seen_at: now,
                    ..me.clone()
                };
                match self.create(&record).await {
                    Ok(_) => Ok(record),
                    // Created meanwhile (a restart racing itself): refresh instead.
                    Err(_) => self.refresh_self(me, now).await,
                }
            }
            Some(_) => self.refresh_self(me, now).await,
        }
    }

    async fn refresh_self(&self, me: &NodeRecord, now: i64) -> Result<NodeRecord, NodeError> {
        self.update(&me.name, |record| {
            Ok(NodeRecord {
                client_url: me.client_url.clone(),
                cluster_url: me.cluster_url.clone(),
                seen_at: now,
                route_pin: match me.route_pin.is_empty() {
                    true => record.route_pin.clone(),
                    false => me.route_pin.clone(),
                },
                sys_user: match me.sys_user.is_empty() {
                    true => record.sys_user.clone(),
                    false => me.sys_user.clone(),
                },
                ..record.clone()
            })
        })
        .await
    }

    /// `zester node accept NAME [--fingerprint FP]`, by `by`.
    pub async fn accept(
        &self,
        name: &str,
        fingerprint: Option<&str>,
        by: &str,
        now: i64,
    ) -> Result<NodeRecord, NodeError> {
        self.update(name, |record| {
            if record.state != NodeState::Pending {
                return Err(NodeError::NotPending {
                    name: name.to_string(),
                    state: record.state.as_str(),
                });
            }
            if let Some(given) = fingerprint {
                let found = record.fingerprint();
                if !found.eq_ignore_ascii_case(given.trim()) {
                    return Err(NodeError::Fingerprint {
                        name: name.to_string(),
                        found,
                        given: given.to_string(),
                    });
                }
            }
            Ok(NodeRecord {
                state: NodeState::Accepted,
                changed_at: now,
                changed_by: by.to_string(),
                ..record.clone()
            })
        })
        .await
    }

    /// `zester node remove NAME`, by `by`: first its system user is revoked (the SYS account
    /// JWT, with every removed node's system user in its revocations, pushed to every server
    /// while the node is still routed, so its own server drops its system connection too),
    /// then its record is marked `removed`, which every node follows by dropping it from
    /// `pinned_certs` ([`crate::appliance::pinning`]). The record keeps what was revoked.
    /// Nothing changes when the revocation cannot be pushed.
    pub async fn remove(&self, name: &str, by: &str, now: i64) -> Result<NodeRecord, NodeError> {
        let Some((record, _)) = self.get(name).await? else {
            return Err(NodeError::NoSuchNode {
                name: name.to_string(),
            });
        };
        let mut records = self.list().await?;
        let sys_updated_on = match &self.revoker {
            Some(revoker) if !record.sys_user.is_empty() => {
                let servers = records
                    .iter()
                    .filter(|n| n.state == NodeState::Accepted)
                    .count();
                let users: Vec<String> = records
                    .iter()
                    .filter(|n| n.state == NodeState::Removed || n.name == name)
                    .map(|n| n.sys_user.clone())
                    .filter(|k| !k.is_empty())
                    .collect();
                revoker.revoke_sys_users(&users, servers, now).await?
            }
            _ => 0,
        };
        for n in records.iter_mut().filter(|n| n.name == name) {
            n.state = NodeState::Removed;
        }
        let unpinned = crate::appliance::pinning::unpinnable(&records);
        let revoked = crate::wire::node::Revocation {
            sys_user: record.sys_user.clone(),
            sys_updated_on,
            routes_refused: unpinned.is_none(),
            routes_note: unpinned.unwrap_or_default(),
        };
        tracing::warn!(target: "audit", node = %name, sys_user = %revoked.sys_user, sys_updated_on, routes_refused = revoked.routes_refused, by, "node removed: its system user revoked (when known), its routes refused (when pinned)");
        self.update(name, |record| {
            Ok(NodeRecord {
                state: NodeState::Removed,
                changed_at: now,
                changed_by: by.to_string(),
                revoked: Some(revoked.clone()),
                ..record.clone()
            })
        })
        .await
    }
}

impl Revoker {
    /// Puts `users` (system-account user keys) into the SYS account JWT's revocations for
    /// good ([`REVOKED_FOR_GOOD`]), signs it with the operator signing key, pushes it to every
    /// server (`$SYS.REQ.ACCOUNT.<SYS>.CLAIMS.UPDATE`, answered by each; waits for `servers`
    /// answers, at most [`CONFIRM_WAIT`]) and keeps it in `auth/sys.jwt`. Built on the newest
    /// SYS account JWT there is (the resolver's or the home's), so no earlier revocation made
    /// by another node is lost. Returns how many servers confirmed.
    pub async fn revoke_sys_users(
        &self,
        users: &[String],
        servers: usize,
        now: i64,
    ) -> Result<usize, NodeError> {
        let creds = self
            .authority
            .issue_sys_creds(now)
            .map_err(|e| NodeError::Revoke(e.to_string()))?;
        let sys = crate::net::connect::connect_in_memory(
            &self.endpoint,
            Arc::new(creds),
            "zester-sys-revoke",
            crate::appliance::cluster::SYSTEM_INBOX.trim_end_matches('.'),
            Default::default(),
        )
        .await
        .map_err(|e| NodeError::Revoke(e.to_string()))?;
        let confirmed = self.push_revocations(&sys, users, servers, now).await;
        let _ = sys.drain().await;
        confirmed
    }

    async fn push_revocations(
        &self,
        sys: &async_nats::Client,
        users: &[String],
        servers: usize,
        now: i64,
    ) -> Result<usize, NodeError> {
        let current = self.newest_sys_jwt(sys).await;
        let mut claims = current.claims().clone();
        for user in users {
            if crate::identity::keys::expect_role(user, &[crate::identity::keys::KeyRole::User])
                .is_ok()
            {
                claims
                    .nats
                    .revocations
                    .insert(user.clone(), REVOKED_FOR_GOOD);
            }
        }
        claims.iat = now.max(claims.iat + 1);
        let jwt = self
            .authority
            .sign_account(claims)
            .map_err(|e| NodeError::Revoke(e.to_string()))?;
        let subject = format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", jwt.subject());
        let inbox = sys.new_inbox();
        let mut answers = sys
            .subscribe(inbox.clone())
            .await
            .map_err(|e| NodeError::Revoke(e.to_string()))?;
        sys.publish_with_reply(subject, inbox, jwt.token().as_bytes().to_vec().into())
            .await
            .map_err(|e| NodeError::Revoke(e.to_string()))?;
        let mut confirmed = 0;
        let mut refused = None;
        let deadline = tokio::time::sleep(CONFIRM_WAIT);
        tokio::pin!(deadline);
        while confirmed < servers.max(1) {
            tokio::select! {
                answer = answers.next() => {
                    let Some(answer) = answer else { break };
                    let answer: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
                    match answer.get("error") {
                        Some(error) => refused = Some(error.to_string()),
                        None => confirmed += 1,
                    }
                }
                _ = &mut deadline => break,
            }
        }
        if confirmed == 0 {
            return Err(NodeError::Revoke(refused.unwrap_or_else(|| {
                format!("no server confirmed the SYS account JWT within {CONFIRM_WAIT:?}")
            })));
        }
        home::write_atomic(
            &self.home.auth_dir().join("sys.jwt"),
            format!("{}\n", jwt.token()).as_bytes(),
            home::PUBLIC_MODE,
        )?;
        Ok(confirmed)
    }

    /// The newest valid SYS account JWT: the resolver's (`CLAIMS.LOOKUP`), the home's
    /// `auth/sys.jwt` or the one loaded at start, by `iat`; only one for the SYS account
    /// signed by this operator's signing key counts.
    async fn newest_sys_jwt(&self, client: &async_nats::Client) -> AccountJwt {
        let sys = self.authority.sys.public_key();
        let signer = self.authority.operator_signer.public_key();
        let ours = |token: &str| {
            decode_ignoring_time::<AccountNats>(token.trim())
                .ok()
                .filter(|jwt| jwt.subject() == sys && jwt.claims().iss == signer)
        };
        let subject = format!("$SYS.REQ.ACCOUNT.{sys}.CLAIMS.LOOKUP");
        let looked_up =
            tokio::time::timeout(Duration::from_secs(2), client.request(subject, "".into()))
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|answer| ours(&String::from_utf8_lossy(&answer.payload)));
        let kept = std::fs::read_to_string(self.home.auth_dir().join("sys.jwt"))
            .ok()
            .and_then(|text| ours(&text));
        [looked_up, kept]
            .into_iter()
            .flatten()
            .chain(std::iter::once(self.authority.sys_jwt.clone()))
            .max_by_key(|jwt| jwt.claims().iat)
            .unwrap_or_else(|| self.authority.sys_jwt.clone())
    }
}

/// The server half of `zester node join`.
pub struct NodeService {
    /// The node records.
    pub store: Arc<NodeStore>,
    /// This node's home (what the bundle is made of).
    pub home: Home,
    /// This node's keys.
    pub authority: Arc<Authority>,
    /// The cluster's name.
    pub cluster_name: String,
    /// Lifetime of the joining node's server certificate (`[server] cert_lifetime`).
    pub cert_lifetime: Duration,
}

impl NodeService {
    /// Handles one node request from `nkey` at `now`.
    pub async fn handle(
        &self,
        payload: &[u8],
        nkey: &str,
        now: i64,
    ) -> Result<NodeAnswer, NodeError> {
        let request = verify_node_request(payload, nkey, now)?;
        let existing = self.store.get(&request.name).await?;
        let answer = |record: &NodeRecord| NodeAnswer {
            state: record.state,
            fingerprint: record.fingerprint(),
            bundle: None,
            sender: None,
        };
        let taken = |record: &NodeRecord| NodeError::NameTaken {
            name: request.name.clone(),
            state: record.state.as_str(),
        };
        match (request.op, existing) {
            (_, Some((record, _))) if record.nkey != request.nkey => Err(taken(&record)),
            (NodeOp::NodeJoin, Some((record, _))) => Ok(answer(&record)),
            (NodeOp::NodeJoin, None) => {
                let pending = self
                    .store
                    .list()
                    .await?
                    .iter()
                    .filter(|n| n.state == NodeState::Pending)
                    .count();
                if pending >= MAX_PENDING {
                    return Err(NodeError::TooManyPending { pending });
                }
                let hostname: String = request.hostname.chars().take(253).collect();
                let record = NodeRecord {
                    name: request.name.clone(),
                    nkey: request.nkey.clone(),
                    xkey: request.xkey.clone(),
                    state: NodeState::Pending,
                    client_url: request.client_url.clone(),
                    cluster_url: request.cluster_url.clone(),
                    tls_key: request.tls_key.clone(),
                    tls_names: request.tls_names.clone(),
                    hostname: crate::appliance::callout::audit::escape_control(&hostname),
                    since: now,
                    changed_at: now,
                    changed_by: "node".into(),
                    seen_at: 0,
                    // The key it asks to have certified is the key of its certificate.
                    route_pin: P256PublicKey::from_point(
                        &BASE64URL_NOPAD
                            .decode(request.tls_key.as_bytes())
                            .unwrap_or_default(),
                    )
                    .map(|key| key.route_pin())
                    .unwrap_or_default(),
                    sys_user: String::new(),
                    revoked: None,
                };
                match self.store.create(&record).await {
                    Ok(_) => Ok(answer(&record)),
                    // Another request for the name won the race: judge against it.
                    Err(_) => match self.store.get(&request.name).await? {
                        Some((held, _)) if held.nkey == request.nkey => Ok(answer(&held)),
                        Some((held, _)) => Err(taken(&held)),
                        None => Err(NodeError::Busy {
                            name: request.name.clone(),
                        }),
                    },
                }
            }
            (NodeOp::NodeFetch, None) => Err(NodeError::NoSuchNode {
                name: request.name.clone(),
            }),
            (NodeOp::NodeFetch, Some((record, _))) => match record.state {
                NodeState::Pending => Ok(answer(&record)),
                NodeState::Removed => Err(NodeError::Removed {
                    name: record.name.clone(),
                }),
                NodeState::Accepted => {
                    let bundle = self.bundle_for(&record, now).await?;
                    let (sealed, sender) = seal_bundle(&bundle, &record.xkey)?;
                    Ok(NodeAnswer {
                        bundle: Some(sealed),
                        sender: Some(sender),
                        ..answer(&record)
                    })
                }
            },
        }
    }

    /// What node `record` needs: this home's signing keys, JWTs, creds and CA, a certificate
    /// for its own TLS key, and the other nodes' routes and URLs.
    async fn bundle_for(&self, record: &NodeRecord, now: i64) -> Result<NodeBundle, NodeError> {
        let read = |path: std::path::PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| home::HomeError::Io {
                action: "read",
                path,
                source,
            })
        };
        let ca_cert = read(self.home.ca_cert())?;
        let ca_key = read(self.home.ca_key())?;
        let point = BASE64URL_NOPAD
            .decode(record.tls_key.as_bytes())
            .map_err(|_| RequestError::Malformed("tls_key is not base64url".into()))?;
        let mut names = ServerNames::default();
        for name in &record.tls_names {
            names.add(name)?;
        }
        let server_cert = pki::issue_server_cert_for(
            &ca_cert,
            &ca_key,
            &P256PublicKey::from_point(&point)?,
            &names,
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(now).unwrap_or(0)),
            self.cert_lifetime,
        )?;
        let others: Vec<NodeRecord> = self
            .store
            .list()
            .await?
            .into_iter()
            .filter(|n| n.state == NodeState::Accepted && n.name != record.name)
            .collect();
        let stored = self.authority.to_stored();
        let creds = |name: &str| read(self.home.service_creds(name));
        Ok(NodeBundle {
            cluster_name: self.cluster_name.clone(),
            routes: others.iter().map(|n| n.cluster_url.clone()).collect(),
            client_urls: others
                .iter()
                .map(|n| n.client_url.clone())
                .chain(std::iter::once(record.client_url.clone()))
                .collect(),
            operator_jwt: stored.operator_jwt,
            sys_jwt: stored.sys_jwt,
            zester_jwt: stored.zester_jwt,
            operator_signing_seed: stored.operator_signing_seed,
            sys_signing_seed: stored.sys_signing_seed,
            zester_signing_seed: stored.zester_signing_seed,
            callout_xkey_seed: stored.callout_xkey_seed,
            master_xkey_seed: stored.master_xkey_seed,
            callout_creds: creds("callout")?,
            master_creds: creds("master")?,
            admin_creds: creds("admin")?,
            ca_cert,
            ca_key,
            server_cert,
        })
    }
}

/// Keeps this node's own record fresh (`seen_at`) and the home's copy of every node's record
/// ([`write_cache`]) current, every [`SEEN_EVERY`] while it runs.
pub async fn keep_seen(store: Arc<NodeStore>, me: NodeRecord, home: Home) {
    loop {
        if let Err(e) = store.refresh_self(&me, crate::home::now_unix()).await {
            tracing::debug!(node = %me.name, "could not refresh this node's record: {e}");
        }
        if let Ok(nodes) = store.list().await {
            write_cache(&home, &nodes);
        }
        tokio::time::sleep(SEEN_EVERY).await;
    }
}

/// Writes the home's copy of the node records ([`Home::write_node_records`]); a failure is
/// logged, the next round writes it again.
pub fn write_cache(home: &Home, nodes: &[NodeRecord]) {
    if let Err(e) = home.write_node_records(nodes) {
        tracing::warn!(
            "could not keep the node list in {}: {e}",
            home.nodes_file().display()
        );
    }
}

/// The node records the home keeps ([`Home::node_records`]).
pub fn read_cache(home: &Home) -> Vec<NodeRecord> {
    home.node_records()
}

/// The routes a node renders: the configured ones, then every other accepted node's route
/// address, each once.
pub fn routes_for(configured: &[String], known: &[NodeRecord], me: &str) -> Vec<String> {
    let mut routes: Vec<String> = Vec::new();
    let others = known
        .iter()
        .filter(|n| n.name != me && n.state == NodeState::Accepted)
        .map(|n| &n.cluster_url);
    for route in configured.iter().chain(others) {
        if !route.is_empty() && !routes.contains(route) {
            routes.push(route.clone());
        }
    }
    routes
}
