//! Enrolment (DESIGN §6): a peel makes its nkey and curve key locally, connects with the nkey
//! alone (the callout admits it as an enrolling session that may only publish on
//! `zester.enrol.<its nkey>`), asks to be enrolled with a request signed by that nkey, and once
//! accepted fetches its user JWT there and writes its own `.creds`. The seed never leaves it.
//!
//! Requests are `{"request": base64url(json), "sig": base64url(ed25519)}`: the signature binds
//! the id, the curve key and the time to the nkey, and the subject must name the same key.
//! The master side refuses ids bound to another key (no squatting), malformed or reserved ids,
//! stale or future timestamps (replays), and more than `max_pending` pending keys; it records
//! pending keys, or accepted ones under the `auto-trusted` / `auto-all` policies.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use data_encoding::BASE64URL_NOPAD;
use futures_util::StreamExt;
use nkeys::{KeyPair, XKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::appliance::callout::audit::{AuditRecord, AuditSink};
use crate::appliance::callout::service::CalloutState;
use crate::appliance::callout::sessions::EnrolLimiter;
use crate::appliance::keys::{KeyRecord, KeyState, KeyStore};
use crate::appliance::respond;
use crate::authority::Authority;
use crate::home::config::AcceptPolicy;
use crate::home::{self, now_unix};
use crate::identity::creds::Creds;
use crate::identity::keys::{self, KeyRole};
use crate::identity::peel_id::PeelId;
use crate::permissions::Role;
use crate::wire::reply::Asker;
use crate::wire::subjects;

/// Subjects enrolment requests arrive on (`zester.enrol.<nkey>`).
pub const ENROL_SUBJECTS: &str = subjects::ENROL_REQUESTS;
/// How far a request's time may be from the master's clock.
pub const MAX_SKEW_SECS: i64 = 300;

/// What the peel asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Record my key for this id.
    Enrol,
    /// Give me my user JWT (once accepted).
    Fetch,
}

/// The signed body of an enrolment request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolRequest {
    /// What is asked.
    pub op: Op,
    /// The peel id wanted.
    pub id: String,
    /// The peel's user key (`U…`), the one signing the request.
    pub nkey: String,
    /// The peel's curve key (`X…`), for secrets.
    pub xkey: Option<String>,
    /// The peel's hostname, for the admin's eyes.
    pub hostname: String,
    /// Unix seconds when made.
    pub at: i64,
}

/// The wire form: the request as base64url JSON and its signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedRequest {
    /// base64url(JSON of [`EnrolRequest`]).
    pub request: String,
    /// base64url(Ed25519 signature of the decoded `request` bytes by `nkey`).
    pub sig: String,
}

/// Why an enrolment request was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// Not the wire form.
    #[error("malformed enrolment request: {0}")]
    Malformed(String),
    /// The signature does not verify, or the subject names another key.
    #[error("the enrolment request is not signed by the key it names")]
    BadSignature,
    /// Too old or from the future.
    #[error("the enrolment request is {age} s away from the master's clock (more than {MAX_SKEW_SECS} s): check the peel's clock")]
    Stale {
        /// Seconds off.
        age: i64,
    },
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

/// Signs `request` with `key`.
pub fn sign_request(key: &KeyPair, request: &EnrolRequest) -> Result<SignedRequest, EnrolError> {
    let body = serde_json::to_vec(request).map_err(|e| EnrolError::Malformed(e.to_string()))?;
    let sig = key.sign(&body).map_err(|_| EnrolError::BadSignature)?;
    Ok(SignedRequest {
        request: BASE64URL_NOPAD.encode(&body),
        sig: BASE64URL_NOPAD.encode(&sig),
    })
}

/// Verifies a request that arrived on `zester.enrol.<subject_nkey>` at `now`.
pub fn verify_request(
    payload: &[u8],
    subject_nkey: &str,
    now: i64,
) -> Result<EnrolRequest, EnrolError> {
    let signed: SignedRequest =
        serde_json::from_slice(payload).map_err(|e| EnrolError::Malformed(e.to_string()))?;
    let decode = |text: &str| {
        BASE64URL_NOPAD
            .decode(text.as_bytes())
            .map_err(|_| EnrolError::Malformed("not base64url".into()))
    };
    let body = decode(&signed.request)?;
    let sig = decode(&signed.sig)?;
    let request: EnrolRequest =
        serde_json::from_slice(&body).map_err(|e| EnrolError::Malformed(e.to_string()))?;
    if request.nkey != subject_nkey {
        return Err(EnrolError::BadSignature);
    }
    keys::expect_role(&request.nkey, &[KeyRole::User]).map_err(|_| EnrolError::BadSignature)?;
    keys::verify(&request.nkey, &body, &sig).map_err(|_| EnrolError::BadSignature)?;
    if (now - request.at).abs() > MAX_SKEW_SECS {
        return Err(EnrolError::Stale {
            age: now - request.at,
        });
    }
    if let Some(xkey) = &request.xkey {
        if XKey::from_public_key(xkey).is_err() {
            return Err(EnrolError::Malformed("xkey is not a curve key".into()));
        }
    }
    Ok(request)
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
        let mut requests = client.subscribe(ENROL_SUBJECTS).await?;
        client.flush().await?;
        Ok(tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let Some(nkey) = subjects::enrol_nkey(message.subject.as_str()) else {
                    continue;
                };
                let nkey = nkey.to_string();
                let Some(reply) =
                    respond::checked_reply(&message, Asker::Enrolling(&nkey), "enrol", &self.audit)
                else {
                    continue;
                };
                let service = self.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let now = now_unix();
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

    /// Handles one request from `nkey` at `now`.
    pub async fn handle(&self, payload: &[u8], nkey: &str, now: i64) -> Result<Value, EnrolError> {
        let request = verify_request(payload, nkey, now)?;
        let id = PeelId::parse(&request.id)?;
        let existing = self.keys.get(&id).await?;
        match request.op {
            Op::Enrol => {
                if let Some((record, _)) = &existing {
                    if record.nkey != request.nkey {
                        return Err(EnrolError::IdTaken {
                            id: id.to_string(),
                            state: record.state,
                        });
                    }
                    return Ok(json!({ "state": record.state }));
                }
                // One creation at a time, each visible in the cache before the next is
                // checked: otherwise concurrent requests all pass the checks below.
                let _one_at_a_time = self.creating.lock().await;
                let cache = self.keys.cache();
                if let Some(held) = cache.lookup_nkey(&request.nkey) {
                    if held.id == id {
                        return Ok(json!({ "state": held.state }));
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
                if pending >= self.max_pending {
                    return Err(EnrolError::TooManyPending {
                        pending,
                        max: self.max_pending,
                    });
                }
                let reason = format!("enrolled from {}", request.hostname);
                let mut record = KeyRecord::new_pending(
                    id.clone(),
                    &request.nkey,
                    request.xkey.as_deref(),
                    "enrolment",
                    &reason,
                    now,
                )?;
                if let Some(policy) = self.auto_accepts(&id) {
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
                Ok(json!({ "state": record.state, "fingerprint": record.fingerprint() }))
            }
            Op::Fetch => match existing {
                Some((record, _)) if record.nkey == request.nkey => {
                    if record.state != KeyState::Accepted {
                        return Ok(json!({ "state": record.state }));
                    }
                    let jwt = self.authority.issue_user(
                        &record.nkey,
                        id.as_str(),
                        &Role::Peel(id.clone()),
                        now,
                        self.peel_expiry,
                    )?;
                    // The master's curve key goes into the peel's profile: the sender of
                    // every secret sealed for it.
                    Ok(json!({
                        "state": record.state,
                        "jwt": jwt.token(),
                        "master_xkey": self.authority.master_xkey.public_key(),
                    }))
                }
                _ => Err(EnrolError::NotEnrolled { id: id.to_string() }),
            },
        }
    }

    fn auto_accepts(&self, id: &PeelId) -> Option<&'static str> {
        match self.policy {
            AcceptPolicy::Manual => None,
            AcceptPolicy::AutoAll => Some("policy auto-all"),
            AcceptPolicy::AutoTrusted => self
                .trusted
                .iter()
                .any(|glob| crate::appliance::admin::glob_matches(glob, id.as_str()))
                .then_some("policy auto-trusted"),
        }
    }
}

impl EnrolError {
    /// A short stable code for the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            EnrolError::Malformed(_) => "enrol_malformed",
            EnrolError::BadSignature => "enrol_bad_signature",
            EnrolError::Stale { .. } => "enrol_stale",
            EnrolError::PeelId(_) => "enrol_bad_id",
            EnrolError::IdTaken { .. } => "enrol_id_taken",
            EnrolError::TooManyPending { .. } => "enrol_too_many_pending",
            EnrolError::NotEnrolled { .. } => "enrol_not_enrolled",
            EnrolError::KeyInUse { .. } => "enrol_key_in_use",
            EnrolError::RateLimited { .. } => "enrol_rate_limited",
            EnrolError::Store(_) | EnrolError::Authority(_) | EnrolError::Record(_) => "internal",
        }
    }
}

/// The audit record of one enrolment request (the id is read unverified for a refusal, to say
/// what was asked for).
fn enrol_audit(
    outcome: &Result<Value, EnrolError>,
    payload: &[u8],
    nkey: &str,
    now: i64,
) -> AuditRecord {
    let asked = serde_json::from_slice::<SignedRequest>(payload)
        .ok()
        .and_then(|s| BASE64URL_NOPAD.decode(s.request.as_bytes()).ok())
        .and_then(|b| serde_json::from_slice::<EnrolRequest>(&b).ok());
    let mut record = match outcome {
        Ok(value) => {
            let mut record = AuditRecord::at(now, "enrol", "allow");
            record.reason = format!(
                "{} request answered: {}",
                asked.as_ref().map_or("enrolment", |a| match a.op {
                    Op::Enrol => "enrol",
                    Op::Fetch => "fetch",
                }),
                value["state"].as_str().unwrap_or("?")
            );
            record
        }
        Err(e) => {
            let mut record = AuditRecord::at(now, "enrol", "refuse");
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

/// What `zester peel enrol` needs.
#[derive(Debug, Clone)]
pub struct EnrolOptions {
    /// `nats://host:port`.
    pub server: String,
    /// The id wanted.
    pub id: String,
    /// CA certificate to verify the server with.
    pub ca: Option<PathBuf>,
    /// SPKI pin of the master's CA (`sha256:…`): with a CA file, checked against it; alone,
    /// the CA is taken from the server's chain only if it has this pin.
    pub pin: Option<String>,
    /// Where the seeds and the creds go (0700).
    pub dir: PathBuf,
    /// Keep asking until accepted.
    pub wait: bool,
}

/// How `zester peel enrol` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrolOutcome {
    /// Creds written.
    Enrolled {
        /// The creds file.
        creds: PathBuf,
    },
    /// Waiting for an admin (without `--wait`).
    Pending {
        /// The key's fingerprint, to compare with `zester key list`.
        fingerprint: String,
    },
    /// An admin rejected the key.
    Rejected,
}

/// Why the peel side failed.
#[derive(Debug, thiserror::Error)]
pub enum PeelEnrolError {
    /// A file problem.
    #[error(transparent)]
    Home(#[from] home::HomeError),
    /// The key files are unusable.
    #[error("{}: not a usable seed; move it away to make a new key", path.display())]
    BadSeed {
        /// The file.
        path: PathBuf,
    },
    /// Connecting failed.
    #[error("cannot connect to {url} to enrol: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The master refused or did not answer.
    #[error("enrolment refused: {0}")]
    Refused(String),
    /// A bad id.
    #[error(transparent)]
    PeelId(#[from] crate::identity::peel_id::PeelIdError),
    /// How to trust the master is missing or wrong.
    #[error("{0}")]
    Trust(String),
    /// The JWT handed out does not fit the key.
    #[error("the master handed out creds that do not fit this key: {0}")]
    BadCreds(String),
}

fn load_or_create_seed(
    path: &Path,
    make: impl FnOnce() -> String,
    valid: impl Fn(&str) -> bool,
) -> Result<String, PeelEnrolError> {
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|source| home::HomeError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let seed = text.trim().to_string();
        return if valid(&seed) {
            Ok(seed)
        } else {
            Err(PeelEnrolError::BadSeed {
                path: path.to_path_buf(),
            })
        };
    }
    let seed = make();
    home::write_atomic(path, format!("{seed}\n").as_bytes(), home::SECRET_MODE)?;
    Ok(seed)
}

/// Refuses a CA file whose pin is not `pin`.
pub fn check_ca_pin(ca: &Path, pin: &str) -> Result<(), PeelEnrolError> {
    let pem = std::fs::read_to_string(ca).map_err(|source| home::HomeError::Io {
        action: "read",
        path: ca.to_path_buf(),
        source,
    })?;
    let found = crate::pki::spki_pin_from_cert_pem(&pem)
        .map_err(|e| PeelEnrolError::Trust(format!("{}: {e}", ca.display())))?;
    if found.eq_ignore_ascii_case(pin.trim()) {
        Ok(())
    } else {
        Err(PeelEnrolError::Trust(format!(
            "{} has pin {found}, not {pin}: do not trust this CA file",
            ca.display()
        )))
    }
}

/// The peel side: make (or reuse) the keys in `options.dir`, enrol, and with `wait` poll until
/// an admin decides; writes `<dir>/<id>.creds` once accepted. `progress` hears each step.
pub async fn enrol(
    options: &EnrolOptions,
    progress: impl Fn(&str),
) -> Result<EnrolOutcome, PeelEnrolError> {
    let id = PeelId::parse(&options.id)?;
    home::create_private_dir(&options.dir)?;
    let seed_path = options.dir.join(format!("{id}.nk"));
    let seed = load_or_create_seed(
        &seed_path,
        || KeyPair::new_user().seed().unwrap_or_default(),
        |s| keys::pair_from_seed(s, &[KeyRole::User]).is_ok(),
    )?;
    let xkey_seed = load_or_create_seed(
        &options.dir.join(format!("{id}.xk")),
        || XKey::new().seed().unwrap_or_default(),
        |s| XKey::from_seed(s).is_ok(),
    )?;
    let key =
        keys::pair_from_seed(&seed, &[KeyRole::User]).map_err(|_| PeelEnrolError::BadSeed {
            path: seed_path.clone(),
        })?;
    let xkey = XKey::from_seed(&xkey_seed)
        .map(|x| x.public_key())
        .map_err(|_| PeelEnrolError::BadSeed {
            path: options.dir.join(format!("{id}.xk")),
        })?;
    let nkey = key.public_key();
    progress(&format!(
        "key {nkey} (fingerprint {})",
        crate::appliance::keys::fingerprint(&nkey)
    ));

    let connect_error = |reason: String| {
        let hint = if reason.to_lowercase().contains("authorization violation") {
            " (the master refused this key: it was rejected or revoked, or this address made too many enrolment attempts; see the master's audit log)"
        } else {
            ""
        };
        PeelEnrolError::Connect {
            url: options.server.clone(),
            reason: format!("{reason}{hint}"),
        }
    };
    let ca_pin = match (&options.pin, &options.ca) {
        (Some(pin), _) => pin.trim().to_string(),
        (None, Some(ca)) => {
            let pem = std::fs::read_to_string(ca).map_err(|source| home::HomeError::Io {
                action: "read",
                path: ca.clone(),
                source,
            })?;
            crate::pki::spki_pin_from_cert_pem(&pem)
                .map_err(|e| PeelEnrolError::Trust(format!("{}: {e}", ca.display())))?
        }
        (None, None) => String::new(),
    };
    let trust = async_nats::ConnectOptions::with_nkey(seed.clone());
    let trust = match (&options.ca, &options.pin) {
        (Some(ca), pin) => {
            if let Some(pin) = pin {
                check_ca_pin(ca, pin)?;
            }
            trust.add_root_certificates(ca.clone())
        }
        (None, Some(pin)) => trust.tls_client_config(
            crate::net::tls::pinned_client_config(pin)
                .map_err(|e| PeelEnrolError::Trust(e.to_string()))?,
        ),
        (None, None) => {
            return Err(PeelEnrolError::Trust(
                "give the master's CA file (--ca) or its pin (--pin sha256:…)".into(),
            ))
        }
    };
    let trust = trust
        .require_tls(true)
        .name(format!("zester-peel-{id}"))
        .custom_inbox_prefix(format!("_INBOX.{nkey}"))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(3));
    // With --wait a master that is down (or not up yet) is waited for, like an admin's decision.
    let mut pause = Duration::from_secs(2);
    let mut said: Option<std::time::Instant> = None;
    let client = loop {
        match trust.clone().connect(options.server.as_str()).await {
            Ok(client) => break client,
            Err(e)
                if options.wait
                    && !matches!(
                        e.kind(),
                        async_nats::ConnectErrorKind::AuthorizationViolation
                            | async_nats::ConnectErrorKind::Authentication
                    ) =>
            {
                if said.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    progress(&format!(
                        "cannot reach {} yet ({e}); retrying (said at most once a minute)",
                        options.server
                    ));
                    said = Some(std::time::Instant::now());
                }
                let jitter = pause.mul_f64(rand::random::<f64>() / 2.0);
                tokio::time::sleep(pause + jitter).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(connect_error(e.to_string())),
        }
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let ask = |op: Op| {
        let request = EnrolRequest {
            op,
            id: id.to_string(),
            nkey: nkey.clone(),
            xkey: Some(xkey.clone()),
            hostname: hostname.clone(),
            at: now_unix(),
        };
        let client = client.clone();
        let key = &key;
        async move {
            let signed =
                sign_request(key, &request).map_err(|e| PeelEnrolError::Refused(e.to_string()))?;
            let body = serde_json::to_vec(&signed).unwrap_or_default();
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                client.request(subjects::enrol(&request.nkey), body.into()),
            )
            .await
            .map_err(|_| PeelEnrolError::Refused("the master did not answer within 10 s".into()))?
            .map_err(|e| PeelEnrolError::Refused(e.to_string()))?;
            let answer: Value = serde_json::from_slice(&reply.payload)
                .map_err(|e| PeelEnrolError::Refused(e.to_string()))?;
            if let Some(error) = answer.get("error").and_then(Value::as_str) {
                return Err(PeelEnrolError::Refused(error.to_string()));
            }
            Ok(answer["ok"].clone())
        }
    };
    let enrolled = ask(Op::Enrol).await?;
    let fingerprint = crate::appliance::keys::fingerprint(&nkey);
    progress(&format!("enrolment recorded: {}", enrolled["state"]));
    loop {
        let fetched = ask(Op::Fetch).await?;
        match fetched["state"].as_str() {
            Some("accepted") => {
                let jwt_text = fetched["jwt"].as_str().unwrap_or_default();
                let jwt = crate::identity::jwt::decode_ignoring_time(jwt_text)
                    .map_err(|e| PeelEnrolError::BadCreds(e.to_string()))?;
                let creds =
                    Creds::new(jwt, key).map_err(|e| PeelEnrolError::BadCreds(e.to_string()))?;
                let path = options.dir.join(format!("{id}.creds"));
                home::write_creds(&path, &creds)?;
                if let Some(master_xkey) = fetched["master_xkey"].as_str() {
                    let profile = crate::peel::PeelProfile {
                        id: id.to_string(),
                        servers: vec![options.server.clone()],
                        ca_pin: ca_pin.clone(),
                        master_xkey: master_xkey.to_string(),
                    };
                    let at = crate::peel::PeelProfile::path_in(&options.dir, id.as_str());
                    crate::peel::profile::write(&profile, &at)
                        .map_err(|e| PeelEnrolError::Trust(e.to_string()))?;
                }
                return Ok(EnrolOutcome::Enrolled { creds: path });
            }
            Some("rejected") | Some("revoked") => return Ok(EnrolOutcome::Rejected),
            _ if !options.wait => return Ok(EnrolOutcome::Pending { fingerprint }),
            _ => {
                progress(&format!(
                    "waiting for approval: on the master run `zester key accept {id} --fingerprint {fingerprint}`"
                ));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn request(key: &KeyPair, at: i64) -> EnrolRequest {
        EnrolRequest {
            op: Op::Enrol,
            id: "web-01".into(),
            nkey: key.public_key(),
            xkey: Some(XKey::new().public_key()),
            hostname: "h".into(),
            at,
        }
    }

    #[test]
    fn signed_requests_verify_only_for_their_key_and_time() {
        let key = KeyPair::new_user();
        let signed = sign_request(&key, &request(&key, NOW)).unwrap();
        let body = serde_json::to_vec(&signed).unwrap();
        assert_eq!(
            verify_request(&body, &key.public_key(), NOW).unwrap().id,
            "web-01"
        );
        let other = KeyPair::new_user().public_key();
        assert!(matches!(
            verify_request(&body, &other, NOW),
            Err(EnrolError::BadSignature)
        ));
        assert!(matches!(
            verify_request(&body, &key.public_key(), NOW + 301),
            Err(EnrolError::Stale { .. })
        ));
        // A request signed by one key but claiming another.
        let thief = KeyPair::new_user();
        let forged = sign_request(&thief, &request(&key, NOW)).unwrap();
        let body = serde_json::to_vec(&forged).unwrap();
        assert!(matches!(
            verify_request(&body, &key.public_key(), NOW),
            Err(EnrolError::BadSignature)
        ));
        assert!(matches!(
            verify_request(b"{}", &key.public_key(), NOW),
            Err(EnrolError::Malformed(_))
        ));
    }
}
