//! Identity-JWT renewal, the peel's half (DESIGN §11).
//!
//! - [`renew`]: over a live connection, ask `zester.event.<id>.renew` with a request signed by
//!   the creds' key and write the fresh JWT, with the same key, atomically (0600) over the creds
//!   file; the running client uses it from its next reconnect on (its session is not bound to
//!   the old JWT's expiry, so nothing is dropped).
//! - [`refetch`]: for creds that expired while the peel was off, connect with the nkey alone
//!   (the enrolment path) and fetch fresh creds, if the key is still accepted.
//! - [`renew_forever`]: the agent's task — renew at 2/3 of the lifetime plus jitter, retry on
//!   failure, keep the current creds on a refusal.
//! - [`renew_once`]: `zester peel renew`, either way as the creds need.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

use crate::home::{self, now_unix, HomeError};
use crate::identity::creds::{Creds, CredsError};
use crate::identity::jwt::JwtError;
use crate::identity::peel_id::PeelId;
use crate::identity::time::rfc3339;
use crate::peel::ask::{ask, AskError};
use crate::peel::profile::AgentOptions;
use crate::wire::enrol::{sign_request, EnrolAnswer, EnrolRequest, Op, RequestError};
use crate::wire::record::KeyState;
use crate::wire::renew::{
    renew_at, retry_after, sign_renewal, InvalidRenewal, RenewAnswer, Renewal,
};
use crate::wire::subjects;

/// How long the appliance has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// Reading or writing the creds file.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The creds are not a peel's (their JWT names no peel id).
    #[error("{}: the creds name no peel: {source}", path.display())]
    NotAPeel {
        /// The creds file.
        path: PathBuf,
        /// Why.
        source: crate::identity::peel_id::PeelIdError,
    },
    /// The request could not be made.
    #[error(transparent)]
    Invalid(#[from] InvalidRenewal),
    /// The enrolment request could not be made.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// No answer, or the appliance refused (its reason).
    #[error(transparent)]
    Ask(#[from] AskError),
    /// The answer is not a renewal answer.
    #[error("the master's answer is not a renewal answer: {0}")]
    BadAnswer(#[from] serde_json::Error),
    /// The JWT handed out is not a user JWT.
    #[error("the master handed out an invalid JWT: {0}")]
    BadJwt(#[from] JwtError),
    /// The JWT handed out is not for this key.
    #[error("the master handed out a JWT for another key: {0}")]
    BadCreds(#[from] CredsError),
    /// The key is not accepted (any more): it may not fetch creds.
    #[error("the master holds the key of peel {id} as {state}: it may not fetch creds{hint}")]
    NotAccepted {
        /// The peel.
        id: String,
        /// Where the key stands.
        state: KeyState,
        /// What to do.
        hint: &'static str,
    },
    /// Connecting failed.
    #[error("cannot connect to {url} {how}: {source}{hint}")]
    Connect {
        /// The URL.
        url: String,
        /// With what: the creds, or the key alone (to fetch fresh creds).
        how: &'static str,
        /// The client's error.
        source: async_nats::ConnectError,
        /// What a refusal means.
        hint: &'static str,
    },
    /// The server did not let the client in, in its own words (a refused key).
    #[error("{url} did not let this peel in (the master refused this key: it was rejected or revoked; see the master's audit log): {said}")]
    NotLetIn {
        /// The URL.
        url: String,
        /// What the server said.
        said: String,
    },
    /// The pinned TLS configuration could not be made.
    #[error("TLS with the pinned CA: {0}")]
    Tls(#[from] rustls::Error),
    /// The creds file now holds another key (rotated meanwhile): the renewed JWT is not
    /// written over it.
    #[error("{} changed while renewing (rotated?): the renewed JWT was not written", path.display())]
    Changed {
        /// The creds file.
        path: PathBuf,
    },
}

impl RenewError {
    /// True when the appliance itself said no (the key may not renew), rather than being
    /// unreachable or slow.
    pub fn is_refusal(&self) -> bool {
        matches!(self, RenewError::NotAccepted { .. })
            || matches!(self, RenewError::Ask(e) if e.refusal().is_some())
    }
}

/// What a renewal wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The peel.
    pub id: PeelId,
    /// The creds file written.
    pub creds: PathBuf,
    /// The new JWT's `exp` (0 = never).
    pub expires_at: i64,
    /// How: `"renew"` over a live connection, `"enrol"` with the key alone (expired creds).
    pub via: &'static str,
}

/// Reads a peel's creds file and the peel id its JWT names.
pub fn load_creds(path: &Path) -> Result<(Creds, PeelId), RenewError> {
    let creds = home::read_creds(path)?;
    let id = PeelId::parse(&creds.jwt().claims().name).map_err(|source| RenewError::NotAPeel {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((creds, id))
}

/// Writes `jwt_text` with the key of `creds` over `path`, unless the file meanwhile holds
/// another key (a rotation wrote it).
fn write_renewed(path: &Path, creds: &Creds, jwt_text: &str) -> Result<i64, RenewError> {
    let jwt = crate::identity::jwt::decode_ignoring_time(jwt_text)?;
    let expires_at = jwt.claims().exp;
    let renewed = Creds::new(jwt, home::owned_key(path, creds)?)?;
    let (on_disk, _) = load_creds(path)?;
    if on_disk.key().public_key() != creds.key().public_key() {
        return Err(RenewError::Changed {
            path: path.to_path_buf(),
        });
    }
    home::write_creds(path, &renewed)?;
    Ok(expires_at)
}

/// The signed renewal request for the creds in `path`.
fn renewal_request(path: &Path) -> Result<(Creds, PeelId, String, Vec<u8>), RenewError> {
    let (creds, id) = load_creds(path)?;
    let renewal = Renewal {
        id: id.to_string(),
        nkey: creds.key().public_key(),
        at: now_unix(),
    };
    let body = serde_json::to_vec(&sign_renewal(&renewal, creds.key())?)?;
    let subject = subjects::renew(id.as_str());
    Ok((creds, id, subject, body))
}

/// Renews the JWT in `path` over `client` (connected as that peel).
pub async fn renew(client: &async_nats::Client, path: &Path) -> Result<Renewed, RenewError> {
    let (creds, id, subject, body) = renewal_request(path)?;
    let answer = ask(client, subject, body, ANSWER_TIMEOUT).await?;
    finish_renewal(path, &creds, id, answer)
}

/// [`renew`] over a connection of `zester peel renew`.
async fn renew_on(connection: &Connection, path: &Path) -> Result<Renewed, RenewError> {
    let (creds, id, subject, body) = renewal_request(path)?;
    let answer = connection.ask(subject, body).await?;
    finish_renewal(path, &creds, id, answer)
}

fn finish_renewal(
    path: &Path,
    creds: &Creds,
    id: PeelId,
    answer: serde_json::Value,
) -> Result<Renewed, RenewError> {
    let answer: RenewAnswer = serde_json::from_value(answer)?;
    let expires_at = write_renewed(path, creds, &answer.jwt)?;
    Ok(Renewed {
        id,
        creds: path.to_path_buf(),
        expires_at,
        via: "renew",
    })
}

/// True when the creds in `path` have expired (or expire within `margin` seconds).
pub fn expired(path: &Path, margin: i64) -> Result<bool, RenewError> {
    let (creds, _) = load_creds(path)?;
    let exp = creds.jwt().claims().exp;
    Ok(exp != 0 && exp <= now_unix() + margin)
}

/// For creds that expired: connects to `options.server` with the creds' key alone (as an
/// enrolling key), fetches a fresh JWT if the key is still accepted and writes it over the
/// creds file.
pub async fn refetch(options: &AgentOptions) -> Result<Renewed, RenewError> {
    let (creds, id) = load_creds(&options.creds)?;
    let key = creds.key();
    let nkey = key.public_key();
    let client = connect_once(
        options,
        &id,
        async_nats::ConnectOptions::with_nkey(key.seed().unwrap_or_default()),
        format!("_INBOX.{nkey}"),
        "with the key alone to fetch fresh creds",
    )
    .await?;
    let request = EnrolRequest {
        op: Op::Fetch,
        id: id.to_string(),
        nkey: nkey.clone(),
        xkey: None,
        hostname: String::new(),
        at: now_unix(),
        token: None,
    };
    let body = serde_json::to_vec(&sign_request(key, &request)?)?;
    let answer = client.ask(subjects::enrol(&nkey), body).await?;
    drop(client);
    let answer: EnrolAnswer = serde_json::from_value(answer)?;
    let Some(jwt) = answer.jwt.filter(|_| answer.state == KeyState::Accepted) else {
        return Err(RenewError::NotAccepted {
            id: id.to_string(),
            state: answer.state,
            hint: match answer.state {
                KeyState::Pending => ": an admin must accept it (`zester key accept`)",
                _ => ": enrol again with a new key (`zester peel enrol`)",
            },
        });
    };
    let expires_at = write_renewed(&options.creds, &creds, &jwt)?;
    Ok(Renewed {
        id,
        creds: options.creds.clone(),
        expires_at,
        via: "enrol",
    })
}

/// A short-lived connection and what the server said against it.
struct Connection {
    client: async_nats::Client,
    refused: Arc<Mutex<Option<String>>>,
    url: String,
}

impl Connection {
    /// [`ask`], or the server's refusal as soon as it comes.
    async fn ask(&self, subject: String, body: Vec<u8>) -> Result<serde_json::Value, RenewError> {
        let refusal = async {
            loop {
                if let Some(said) = self.said() {
                    return said;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            answer = ask(&self.client, subject, body, ANSWER_TIMEOUT) => match answer {
                Ok(answer) => Ok(answer),
                Err(e) => Err(match self.said() {
                    Some(said) => RenewError::NotLetIn { url: self.url.clone(), said },
                    None => e.into(),
                }),
            },
            said = refusal => Err(RenewError::NotLetIn { url: self.url.clone(), said }),
        }
    }

    fn said(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// One short-lived connection of peel `id` (TLS trusted as `options` says; the inbox prefix
/// its permissions allow).
async fn connect_once(
    options: &AgentOptions,
    id: &PeelId,
    auth: async_nats::ConnectOptions,
    inbox: String,
    how: &'static str,
) -> Result<Connection, RenewError> {
    // async-nats calls a connection up as soon as the server says anything, also while the
    // callout is still deciding; a refusal arrives later as the server's error.
    let refused = Arc::new(Mutex::new(None));
    let seen = refused.clone();
    let mut connect = auth
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
            }
        })
        .require_tls(true)
        .name(format!("zester-peel-{id}"))
        .custom_inbox_prefix(inbox)
        .connection_timeout(Duration::from_secs(
            crate::wire::AUTH_TIMEOUT_SECS as u64 + 5,
        ))
        .max_reconnects(Some(1));
    match (&options.ca, &options.pin) {
        (Some(ca), _) => connect = connect.add_root_certificates(ca.clone()),
        (None, Some(pin)) => {
            connect = connect.tls_client_config(crate::net::tls::pinned_client_config(pin)?)
        }
        (None, None) => {}
    }
    let client = connect
        .connect(crate::net::connect::server_list(&options.server))
        .await
        .map_err(|source| {
            let refused = matches!(
                source.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication
            );
            RenewError::Connect {
                url: options.server.clone(),
                how,
                source,
                hint: if refused {
                    " (the master refused this key: it was rejected or revoked; see the master's audit log)"
                } else {
                    ""
                },
            }
        })?;
    Ok(Connection {
        client,
        refused,
        url: options.server.clone(),
    })
}

/// `zester peel renew`: renews over a connection with the creds while they are valid, else
/// fetches fresh ones with the key alone.
pub async fn renew_once(options: &AgentOptions) -> Result<Renewed, RenewError> {
    if expired(&options.creds, 0)? {
        return refetch(options).await;
    }
    let (creds, id) = load_creds(&options.creds)?;
    let auth =
        async_nats::ConnectOptions::with_credentials(&creds.to_text()).map_err(|source| {
            HomeError::Io {
                action: "read creds",
                path: options.creds.clone(),
                source,
            }
        })?;
    let connection =
        connect_once(options, &id, auth, format!("_INBOX.{id}"), "with its creds").await?;
    let renewed = renew_on(&connection, &options.creds).await;
    let _ = connection.client.drain().await;
    renewed
}

/// The agent's renewal task: renews the creds in `path` over `client` at 2/3 of their
/// lifetime plus up to a tenth of jitter, for as long as it runs, and says so on `renewed`
/// (the agent then reconnects with them). A failure (the appliance
/// unreachable, slow, or refusing) is logged and retried sooner as expiry nears; a refusal
/// keeps the current creds. Creds that never expire are looked at again once an hour (a
/// rotation may bring ones that do).
pub async fn renew_forever(
    client: async_nats::Client,
    path: PathBuf,
    renewed: tokio::sync::mpsc::Sender<()>,
) {
    const NEVER_EXPIRES_CHECK: Duration = Duration::from_secs(3600);
    let mut retry_at: Option<i64> = None;
    loop {
        let (iat, exp, token) = match load_creds(&path) {
            Ok((creds, _)) => (
                creds.jwt().claims().iat,
                creds.jwt().claims().exp,
                creds.jwt().token().to_string(),
            ),
            Err(e) => {
                tracing::warn!("renewal: cannot read the creds: {e}");
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
        };
        let jitter: f64 = rand::thread_rng().gen_range(0.0..1.0);
        let Some(due) = retry_at.or_else(|| renew_at(iat, exp, jitter)) else {
            tokio::time::sleep(NEVER_EXPIRES_CHECK).await;
            continue;
        };
        let wait = (due - now_unix()).max(0) as u64;
        if wait > 0 {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            // The file may have changed meanwhile (rotation, `peel renew`): look again.
            if retry_at.is_none() && changed_since(&path, &token) {
                continue;
            }
        }
        match renew(&client, &path).await {
            Ok(done) => {
                retry_at = None;
                tracing::info!(peel = %done.id, until = %rfc3339(done.expires_at), "identity JWT renewed");
                let _ = renewed.try_send(());
            }
            Err(e) => {
                let after = retry_after(iat, exp, now_unix());
                retry_at = Some(now_unix() + after);
                if e.is_refusal() {
                    tracing::warn!("renewal refused, keeping the current creds (until {}); asking again in {after} s: {e}", rfc3339(exp));
                } else {
                    tracing::warn!("renewal failed, asking again in {after} s: {e}");
                }
            }
        }
    }
}

/// True when the creds in `path` no longer hold the JWT `token`.
fn changed_since(path: &Path, token: &str) -> bool {
    load_creds(path).is_ok_and(|(creds, _)| creds.jwt().token() != token)
}
