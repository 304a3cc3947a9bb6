//! Enrolment, the peel's half (`zester peel enrol`): make (or reuse) the nkey and curve key
//! locally, connect with the nkey alone (the callout admits an enrolling session that may only
//! publish on `zester.enrol.<its nkey>`), ask with a request signed by that nkey, and once an
//! admin accepted it fetch the user JWT and write `<dir>/<id>.creds` and the profile itself.
//! The seed never leaves the machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nkeys::{KeyPair, XKey};
use serde_json::Value;

use crate::home::{self, now_unix};
use crate::identity::creds::Creds;
use crate::identity::keys::{self, KeyRole};
use crate::identity::peel_id::PeelId;
use crate::wire::enrol::{sign_request, EnrolAnswer, EnrolRequest, Op};
use crate::wire::record::KeyState;
use crate::wire::subjects;

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
    /// A join token (`zjt1.…`): the key is accepted at once if the token allows it.
    pub token: Option<String>,
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
    #[error("cannot connect to {url} to enrol: {source}{hint}")]
    Connect {
        /// The URL.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
        /// What a refusal of this key means (empty otherwise).
        hint: &'static str,
    },
    /// The master refused the request, in its own words.
    #[error("enrolment refused: {0}")]
    Refused(String),
    /// No answer in time.
    #[error("the master did not answer the enrolment request within {} s", after.as_secs())]
    NoAnswer {
        /// How long was waited.
        after: Duration,
    },
    /// The request could not be sent.
    #[error("sending the enrolment request: {0}")]
    Request(#[from] async_nats::RequestError),
    /// The request could not be signed.
    #[error(transparent)]
    Sign(#[from] crate::wire::enrol::RequestError),
    /// The profile could not be written.
    #[error(transparent)]
    Profile(#[from] crate::peel::profile::ProfileError),
    /// The answer is not an enrolment answer.
    #[error("the master's answer is not an enrolment answer: {0}")]
    BadAnswer(#[from] serde_json::Error),
    /// A bad id.
    #[error(transparent)]
    PeelId(#[from] crate::identity::peel_id::PeelIdError),
    /// The join token is not one.
    #[error("--token: {0}")]
    Token(#[from] crate::wire::token::TokenError),
    /// Neither a CA file nor a pin says how to trust the master.
    #[error("give the master's CA file (--ca) or its pin (--pin sha256:…)")]
    NoTrust,
    /// The CA file is not the pinned CA.
    #[error("{} has pin {found}, not {pin}: do not trust this CA file", ca.display())]
    PinMismatch {
        /// The CA file.
        ca: PathBuf,
        /// Its pin.
        found: String,
        /// The pin given.
        pin: String,
    },
    /// The CA file is not a certificate.
    #[error("{}: {source}", ca.display())]
    NotACa {
        /// The file.
        ca: PathBuf,
        /// Why.
        source: crate::pki::PkiError,
    },
    /// The pinned TLS configuration could not be made.
    #[error("TLS with the pinned CA: {0}")]
    Tls(#[from] rustls::Error),
    /// The JWT handed out is not a user JWT.
    #[error("the master handed out an invalid JWT: {0}")]
    BadJwt(#[from] crate::identity::jwt::JwtError),
    /// The JWT handed out does not fit the key.
    #[error("the master handed out creds that do not fit this key: {0}")]
    BadCreds(#[from] crate::identity::creds::CredsError),
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
    let found = pin_of_ca_file(ca)?;
    if found.eq_ignore_ascii_case(pin.trim()) {
        Ok(())
    } else {
        Err(PeelEnrolError::PinMismatch {
            ca: ca.to_path_buf(),
            found,
            pin: pin.to_string(),
        })
    }
}

/// The peel side: make (or reuse) the keys in `options.dir`, enrol, and with `wait` poll until
/// an admin decides; writes `<dir>/<id>.creds` (and the profile) once accepted. `progress`
/// hears each step.
pub async fn enrol(
    options: &EnrolOptions,
    progress: impl Fn(&str),
) -> Result<EnrolOutcome, PeelEnrolError> {
    let id = PeelId::parse(&options.id)?;
    home::create_private_dir(&options.dir)?;
    let (key, xkey) = peel_keys(&options.dir, &id)?;
    let nkey = key.public_key();
    let fingerprint = crate::wire::record::fingerprint(&nkey);
    progress(&format!("key {nkey} (fingerprint {fingerprint})"));
    let ca_pin = ca_pin_of(options)?;
    let client = connect_enrolling(options, &id, &key, &progress).await?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let token = options
        .token
        .as_deref()
        .map(|text| crate::wire::token::prove(text, &nkey))
        .transpose()?;
    let request = |op: Op| EnrolRequest {
        op,
        id: id.to_string(),
        nkey: nkey.clone(),
        xkey: Some(xkey.clone()),
        hostname: hostname.clone(),
        at: now_unix(),
        token: (op == Op::Enrol).then(|| token.clone()).flatten(),
    };
    let enrolled = ask(&client, &key, &request(Op::Enrol)).await?;
    progress(&format!("enrolment recorded: {}", enrolled.state));
    loop {
        let fetched = ask(&client, &key, &request(Op::Fetch)).await?;
        match fetched.state {
            KeyState::Accepted => {
                let creds = write_enrolled(options, &id, key, &fetched, &ca_pin)?;
                return Ok(EnrolOutcome::Enrolled { creds });
            }
            KeyState::Rejected | KeyState::Revoked => return Ok(EnrolOutcome::Rejected),
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

/// The peel's nkey and curve public key, made on first use and kept in `dir` (`<id>.nk`,
/// `<id>.xk`, seeds 0600).
fn peel_keys(dir: &Path, id: &PeelId) -> Result<(KeyPair, String), PeelEnrolError> {
    let seed_path = dir.join(format!("{id}.nk"));
    let xkey_path = dir.join(format!("{id}.xk"));
    let seed = load_or_create_seed(
        &seed_path,
        || KeyPair::new_user().seed().unwrap_or_default(),
        |s| keys::pair_from_seed(s, &[KeyRole::User]).is_ok(),
    )?;
    let xkey_seed = load_or_create_seed(
        &xkey_path,
        || XKey::new().seed().unwrap_or_default(),
        |s| XKey::from_seed(s).is_ok(),
    )?;
    let key = keys::pair_from_seed(&seed, &[KeyRole::User])
        .map_err(|_| PeelEnrolError::BadSeed { path: seed_path })?;
    let xkey = XKey::from_seed(&xkey_seed)
        .map(|x| x.public_key())
        .map_err(|_| PeelEnrolError::BadSeed { path: xkey_path })?;
    Ok((key, xkey))
}

/// The pin of the CA the peel trusts, for its profile: `--pin`, else the pin of `--ca`.
fn ca_pin_of(options: &EnrolOptions) -> Result<String, PeelEnrolError> {
    Ok(match (&options.pin, &options.ca) {
        (Some(pin), _) => pin.trim().to_string(),
        (None, Some(ca)) => pin_of_ca_file(ca)?,
        (None, None) => String::new(),
    })
}

/// The pin of the CA certificate in `ca`; a file that is not one is a trust problem.
fn pin_of_ca_file(ca: &Path) -> Result<String, PeelEnrolError> {
    home::cert_file_pin(ca).map_err(|e| match e {
        home::HomeError::Pki(source) => PeelEnrolError::NotACa {
            ca: ca.to_path_buf(),
            source,
        },
        other => PeelEnrolError::Home(other),
    })
}

/// Connects with the nkey alone, trusting the CA file or the pinned CA; with `--wait` a
/// master that is down (or not up yet) is waited for, like an admin's decision.
async fn connect_enrolling(
    options: &EnrolOptions,
    id: &PeelId,
    key: &KeyPair,
    progress: &impl Fn(&str),
) -> Result<async_nats::Client, PeelEnrolError> {
    let connect_error = |source: async_nats::ConnectError| {
        let refused = crate::net::connect::is_refusal(&source);
        PeelEnrolError::Connect {
            url: options.server.clone(),
            source,
            hint: if refused {
                " (the master refused this key: it was rejected or revoked, or this address made too many enrolment attempts; see the master's audit log)"
            } else {
                ""
            },
        }
    };
    let trust = async_nats::ConnectOptions::with_nkey(key.seed().unwrap_or_default());
    let trust = match (&options.ca, &options.pin) {
        (Some(ca), pin) => {
            if let Some(pin) = pin {
                check_ca_pin(ca, pin)?;
            }
            trust.add_root_certificates(ca.clone())
        }
        (None, Some(pin)) => trust.tls_client_config(crate::net::tls::pinned_client_config(pin)?),
        (None, None) => return Err(PeelEnrolError::NoTrust),
    };
    let trust = trust
        .require_tls(true)
        .name(format!("zester-peel-{id}"))
        .custom_inbox_prefix(format!("_INBOX.{}", key.public_key()))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(3));
    crate::net::connect::connect_waiting(&trust, &options.server, options.wait, progress)
        .await
        .map_err(connect_error)
}

/// Sends one signed request and unwraps the `{"ok": …}` / `{"error": …}` answer.
async fn ask(
    client: &async_nats::Client,
    key: &KeyPair,
    request: &EnrolRequest,
) -> Result<EnrolAnswer, PeelEnrolError> {
    let signed = sign_request(key, request)?;
    let body = serde_json::to_vec(&signed)?;
    let wait = Duration::from_secs(10);
    let reply = tokio::time::timeout(
        wait,
        client.request(subjects::enrol(&request.nkey), body.into()),
    )
    .await
    .map_err(|_| PeelEnrolError::NoAnswer { after: wait })??;
    let answer: Value = serde_json::from_slice(&reply.payload)?;
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Err(PeelEnrolError::Refused(error.to_string()));
    }
    Ok(serde_json::from_value(answer["ok"].clone())?)
}

/// Once accepted: the creds from the JWT the master handed out and this key, and the profile
/// (server, CA pin, the master's curve key) beside them. Returns the creds file.
fn write_enrolled(
    options: &EnrolOptions,
    id: &PeelId,
    key: KeyPair,
    fetched: &EnrolAnswer,
    ca_pin: &str,
) -> Result<PathBuf, PeelEnrolError> {
    let jwt_text = fetched.jwt.as_deref().unwrap_or_default();
    let jwt = crate::identity::jwt::decode_ignoring_time(jwt_text)?;
    let creds = Creds::new(jwt, key)?;
    let path = options.dir.join(format!("{id}.creds"));
    home::write_creds(&path, &creds)?;
    if let Some(master_xkey) = &fetched.master_xkey {
        let profile = crate::peel::PeelProfile {
            id: id.to_string(),
            servers: {
                // The one it enrolled through first, then every other node of the cluster.
                let mut servers: Vec<String> = crate::net::connect::server_list(&options.server)
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                for url in &fetched.servers {
                    if !servers.contains(url) {
                        servers.push(url.clone());
                    }
                }
                servers
            },
            ca_pin: ca_pin.to_string(),
            master_xkey: master_xkey.to_string(),
        };
        let at = crate::peel::PeelProfile::path_in(&options.dir, id.as_str());
        crate::peel::profile::write(&profile, &at)?;
    }
    Ok(path)
}
