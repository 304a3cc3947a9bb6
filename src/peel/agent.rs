//! The peel agent: one long-lived NATS connection that announces the host and answers the
//! master's commands.
//!
//! The connection follows DESIGN §4 and §6: TLS always (the server checked against our CA when
//! one is given), the connection name `zester-peel-<id>`, the inbox prefix `_INBOX.<id>` (the only
//! inboxes a peel may subscribe to), and reconnects forever, 2 s plus up to 1 s of random jitter
//! apart (backing off to 30 s plus jitter while attempts keep failing) so that a fleet does not
//! stampede a restarted server. With several servers (a cluster: the ones it was given and the
//! ones the servers announce) the pause is taken once per pass over the servers, not once per
//! server: a dead node is passed over at once for a live one instead of costing a backoff step
//! (see `ReconnectPacing::choose`). The peel id is the `name` of the
//! creds' user JWT, never something the agent makes up.
//!
//! Credentials are not held in memory: every (re)connect reads the creds file again
//! ([`sign_in`]), so creds rotated on disk are picked up at the next reconnect without a restart.
//!
//! Work is split into three tasks over the shared client, each with one concern: the client's
//! event callback only forwards (`Connected` → the facts task, `Closed` → [`Agent::stop`]); the
//! facts task publishes `zester.fact.<id>` after every connect; the command task serves
//! `zester.cmd.<id>` through a small dispatch table (parse → look up → answer).
//!
//! async-nats has no byte-bounded reconnect buffer (nats.go's `ReconnectBufSize`): while
//! disconnected, publishes wait in the client's command channel (2048 commands, its default
//! `client_capacity`) and a publish waits once that is full; data already written to a dropped
//! connection is lost. The agent publishes little (facts and events), so that is enough, but
//! the 8 MB bound of the design is not enforced.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Auth, AuthError, Client, ConnectErrorKind, ConnectOptions, Event, Subscriber};
use futures_util::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::facts::{Facts, ZESTER_VERSION};
use crate::home::{self, now_unix, HomeError};
use crate::identity::creds::Creds;
use crate::identity::peel_id::{PeelId, PeelIdError};
use crate::identity::time::rfc3339;

/// How long one connect attempt may take, from TCP to the server's answer to CONNECT (the first
/// `start` gives up after it; reconnects try again). Longer than the server's auth timeout, so
/// that a peel waiting for a busy callout hears the server's verdict rather than giving up first.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(crate::wire::AUTH_TIMEOUT_SECS as u64 + 5);
/// The pause before the first reconnect attempt after a disconnect, before jitter; it doubles
/// with every failed attempt in a row up to [`RECONNECT_DELAY_MAX`].
const RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// The longest pause between attempts, before jitter.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(30);
/// The most random jitter added to a pause, in thousandths of the pause (up to half of it).
const RECONNECT_JITTER_MAX: u64 = 500;
/// How long [`Agent::stop`] waits for the connection to drain.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest command name echoed back in an error answer.
const MAX_ECHOED_NAME: usize = 128;

pub use super::profile::AgentOptions;

/// What the agent needs to open the secrets in its settings: its own curve key and the
/// master's curve public key (printed by `zester init` as "master xkey").
#[derive(Debug, Clone)]
pub struct SettingsKey {
    /// The peel's curve seed file (`<dir>/<id>.xk`, written by `zester peel enrol`).
    pub xkey_seed: PathBuf,
    /// The master's curve public key (`X…`).
    pub master_xkey: String,
}

/// The agent's settings, opened in memory only (never written or logged).
#[derive(Debug, Default)]
pub struct PeelState {
    settings: std::sync::RwLock<Option<Value>>,
}

impl PeelState {
    fn settings(&self) -> Option<Value> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Why the agent could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The creds file cannot be read or parsed (the source names the file).
    #[error("cannot use the peel creds: {source}")]
    Creds {
        /// The creds file.
        path: PathBuf,
        /// What is wrong with it.
        source: HomeError,
    },
    /// The creds' user JWT carries no `name`, so the peel id is unknown.
    #[error("{}: the user JWT has no name; peel creds carry the peel id there (issue them with `zester creds issue ID`)", path.display())]
    NoPeelId {
        /// The creds file.
        path: PathBuf,
    },
    /// The creds' `name` is not a valid peel id.
    #[error("{}: the user JWT's name is not a peel id: {source}", path.display())]
    InvalidPeelId {
        /// The creds file.
        path: PathBuf,
        /// Why the name was refused.
        source: PeelIdError,
    },
    /// The creds file was replaced by creds of another peel while the agent runs.
    #[error("{} now holds creds for peel {found:?}, but this agent runs as {expected:?}: restart the agent to change its id", path.display())]
    PeelIdChanged {
        /// The creds file.
        path: PathBuf,
        /// The id the agent runs as.
        expected: String,
        /// The id in the file now.
        found: String,
    },
    /// The creds' JWT has expired and fresh ones could not be fetched with the key alone.
    #[error("{}: the creds expired at {at}, and fresh ones could not be fetched: {why}", path.display())]
    Expired {
        /// The creds file.
        path: PathBuf,
        /// When (RFC 3339).
        at: String,
        /// Why the fetch failed (the master unreachable, or the key not accepted).
        why: Box<crate::peel::renew::RenewError>,
    },
    /// The nonce could not be signed with the creds' key.
    #[error("{}: cannot sign the server's nonce: {reason}", path.display())]
    Sign {
        /// The creds file.
        path: PathBuf,
        /// The key library's message.
        reason: String,
    },
    /// The CA certificate cannot be read.
    #[error("cannot read the CA certificate {}: {source}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server refused the creds.
    #[error("{url} refused peel {id} with the creds {}: {source}. Check that the peel's key is accepted and its creds not revoked", creds.display())]
    Refused {
        /// The server URL.
        url: String,
        /// The peel id.
        id: String,
        /// The creds file.
        creds: PathBuf,
        /// The client's error.
        source: async_nats::ConnectError,
    },
    /// The server could not be reached or the TLS handshake failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The server URL.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
    /// A NATS operation failed after connecting.
    #[error("{what}: {source}")]
    Nats {
        /// What was being done.
        what: String,
        /// The client's error.
        source: async_nats::Error,
    },
    /// The curve seed (for settings) cannot be used.
    #[error("reading the curve seed {}: {}", path.display(), source.as_ref().map_or_else(|| "not a curve seed".to_string(), |e| e.to_string()))]
    Seed {
        /// The file.
        path: PathBuf,
        /// The OS error, or none when the file holds no curve seed.
        source: Option<std::io::Error>,
    },
    /// A signal handler could not be installed.
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        /// `SIGINT` or `SIGTERM`.
        signal: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--connect-timeout` passed without a connection.
    #[error("gave up after {}s without a connection: {last}", after.as_secs())]
    GaveUp {
        /// How long the agent tried.
        after: Duration,
        /// The last reason.
        last: Box<AgentError>,
    },
    /// The connection did not drain in time (typically: not connected to the server).
    #[error("the connection did not drain within {}s (is the server reachable?); messages not yet sent were dropped", after.as_secs())]
    StopTimeout {
        /// How long was waited.
        after: Duration,
    },
}

/// What the agent presents on one (re)connect: its user JWT and the server's nonce signed with
/// the JWT's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// The user JWT, as in the creds file.
    pub jwt: String,
    /// Ed25519 signature of the nonce (raw bytes; the client encodes them).
    pub signature: Vec<u8>,
}

/// Reads the creds file now and signs `nonce` with it, checking the file still belongs to peel
/// `expected`. Called by the client on every (re)connect, so rotated creds take effect at the
/// next reconnect.
pub fn sign_in(creds_path: &Path, expected: &PeelId, nonce: &[u8]) -> Result<SignIn, AgentError> {
    let (creds, id) = load_creds(creds_path)?;
    if &id != expected {
        return Err(AgentError::PeelIdChanged {
            path: creds_path.to_path_buf(),
            expected: expected.to_string(),
            found: id.to_string(),
        });
    }
    let signature = creds.key().sign(nonce).map_err(|e| AgentError::Sign {
        path: creds_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(SignIn {
        jwt: creds.jwt().token().to_string(),
        signature,
    })
}

/// Reads the creds and the peel id they are for.
/// Reads a peel's creds file and the peel id its JWT names.
pub fn load_creds(path: &Path) -> Result<(Creds, PeelId), AgentError> {
    let creds = home::read_creds(path).map_err(|source| AgentError::Creds {
        path: path.to_path_buf(),
        source,
    })?;
    let name = &creds.jwt().claims().name;
    if name.is_empty() {
        return Err(AgentError::NoPeelId {
            path: path.to_path_buf(),
        });
    }
    let id = PeelId::parse(name).map_err(|source| AgentError::InvalidPeelId {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((creds, id))
}

/// A running peel agent.
#[derive(Debug)]
pub struct Agent {
    id: PeelId,
    client: Client,
    commands: JoinHandle<()>,
    facts: JoinHandle<()>,
    renewal: JoinHandle<()>,
    stop_facts: oneshot::Sender<()>,
    closed: watch::Receiver<bool>,
}

impl Agent {
    /// Connects (giving up after 5 s on the first connect), subscribes to `zester.cmd.<id>`,
    /// emits `zester.event.<id>.start` and publishes the facts; from then on the agent
    /// reconnects forever and re-publishes its facts after every reconnect.
    pub async fn start(options: AgentOptions) -> Result<Agent, AgentError> {
        Agent::start_with_settings(options, None).await
    }

    /// [`Agent::start`], and with `settings_key` the agent also fetches its settings after
    /// every connect and opens their secrets in memory.
    pub async fn start_with_settings(
        options: AgentOptions,
        settings_key: Option<SettingsKey>,
    ) -> Result<Agent, AgentError> {
        let secret_key = match &settings_key {
            Some(key) => {
                let text =
                    std::fs::read_to_string(&key.xkey_seed).map_err(|source| AgentError::Seed {
                        path: key.xkey_seed.clone(),
                        source: Some(source),
                    })?;
                let xkey = nkeys::XKey::from_seed(text.trim()).map_err(|_| AgentError::Seed {
                    path: key.xkey_seed.clone(),
                    source: None,
                })?;
                Some((xkey, key.master_xkey.clone()))
            }
            None => None,
        };
        let state = Arc::new(PeelState::default());
        let (creds, id) = load_creds(&options.creds)?;
        let exp = creds.jwt().claims().exp;
        drop(creds);
        if exp != 0 && exp <= now_unix() {
            refetch_expired(&options, &id, exp).await?;
        }
        if let Some(ca) = &options.ca {
            std::fs::metadata(ca).map_err(|source| AgentError::Ca {
                path: ca.clone(),
                source,
            })?;
        }

        // Connected events reach the facts task through a one-slot channel: a connect that
        // happens while facts are pending is covered by the publish already queued.
        let (connected_tx, connected_rx) = mpsc::channel::<()>(1);
        let (closed_tx, closed) = watch::channel(false);
        let pacing = Arc::new(ReconnectPacing::default());
        let client = connect_options(&options, &id, connected_tx, closed_tx, pacing.clone())
            .connect(crate::net::connect::server_list(&options.server))
            .await
            .map_err(|source| match source.kind() {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    AgentError::Refused {
                        url: options.server.clone(),
                        id: id.to_string(),
                        creds: options.creds.clone(),
                        source,
                    }
                }
                _ => AgentError::Connect {
                    url: options.server.clone(),
                    source,
                },
            })?;
        tracing::info!(peel = %id, url = %options.server, "peel agent connected");

        let subject = crate::wire::subjects::cmd(id.as_str());
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| AgentError::Nats {
                what: format!("subscribing to {subject}"),
                source: e.into(),
            })?;
        // The subscription is sent before the start event on the same connection, so whoever
        // hears `start` can already command the peel.
        let start =
            json!({"id": id.as_str(), "zester_version": ZESTER_VERSION, "at": rfc3339(now_unix())});
        let start_subject = crate::wire::subjects::event(id.as_str(), "start");
        client
            .publish(start_subject.clone(), start.to_string().into())
            .await
            .map_err(|e| AgentError::Nats {
                what: format!("publishing {start_subject}"),
                source: e.into(),
            })?;
        client.flush().await.map_err(|e| AgentError::Nats {
            what: format!("flushing {start_subject}"),
            source: e.into(),
        })?;

        let (stop_facts, facts_stopped) = oneshot::channel();
        let facts = tokio::spawn(publish_facts(
            client.clone(),
            id.clone(),
            connected_rx,
            facts_stopped,
            secret_key.map(|key| (key, state.clone())),
        ));
        let (renewed_tx, renewed_rx) = mpsc::channel(1);
        let renewal = tokio::spawn(crate::peel::renew::renew_forever(
            client.clone(),
            options.creds.clone(),
            renewed_tx,
        ));
        tokio::spawn(reconnect_after_renewal(client.clone(), pacing, renewed_rx));
        let commands = tokio::spawn(serve_commands(
            client.clone(),
            id.clone(),
            subscriber,
            state,
        ));
        Ok(Agent {
            id,
            client,
            commands,
            facts,
            renewal,
            stop_facts,
            closed,
        })
    }

    /// The peel id the agent runs as (the `name` of its creds).
    pub fn peel_id(&self) -> &PeelId {
        &self.id
    }

    /// The agent's connection, for callers that publish on the peel's behalf (the load runner
    /// sends its traffic through it). It has the peel's permissions and no more.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Stops publishing facts, drains the connection (pending answers and publishes are sent,
    /// the command subscription is closed) and waits for the tasks. An agent that is not
    /// connected (cut off, or its server gone) just stops. Gives up after 10 s, e.g. when the
    /// server stops answering while draining, with [`AgentError::StopTimeout`].
    pub async fn stop(self) -> Result<(), AgentError> {
        let Agent {
            id,
            client,
            mut commands,
            mut facts,
            renewal,
            stop_facts,
            mut closed,
        } = self;
        renewal.abort();
        let _ = stop_facts.send(());
        // Cut off (revoked, or the server gone): nothing can be delivered, so there is
        // nothing to drain, and a person pressing Ctrl-C expects the agent to stop cleanly.
        if client.connection_state() != async_nats::connection::State::Connected {
            facts.abort();
            commands.abort();
            tracing::info!(peel = %id, "peel agent stopped (it was not connected: nothing to drain)");
            return Ok(());
        }
        let drained = tokio::time::timeout(STOP_TIMEOUT, async {
            let _ = (&mut facts).await;
            client.drain().await.map_err(|e| AgentError::Nats {
                what: "draining the connection".to_string(),
                source: e.into(),
            })?;
            let _ = (&mut commands).await;
            // An error means the client is gone altogether, which is closed too.
            let _ = closed.wait_for(|closed| *closed).await;
            Ok(())
        })
        .await;
        match drained {
            Ok(result) => {
                tracing::info!(peel = %id, "peel agent stopped");
                result
            }
            Err(_) => {
                facts.abort();
                commands.abort();
                Err(AgentError::StopTimeout {
                    after: STOP_TIMEOUT,
                })
            }
        }
    }
}

/// After every renewal, reconnects at once with the fresh creds. nats-server ends a
/// connection when the JWT it was opened with expires (it arms that timer when it checks the
/// JWT, before it asks the callout, and the callout's answer cannot move it: `auth.go`,
/// `setExpiration(juc.Claims(), …)`), so a peel that only renewed on disk would be dropped at
/// the old expiry and wait out its reconnect pause. Reconnecting on purpose right away takes
/// milliseconds and keeps the subscriptions (async-nats re-sends them); ends when the renewal
/// task does.
pub(crate) async fn reconnect_after_renewal(
    client: Client,
    pacing: Arc<ReconnectPacing>,
    mut renewed: mpsc::Receiver<()>,
) {
    while renewed.recv().await.is_some() {
        pacing.plan_immediate();
        if let Err(e) = client.force_reconnect().await {
            tracing::warn!("reconnecting with the renewed creds: {e}");
        }
    }
}

/// Creds that expired while the peel was off (or cut off): fresh ones are fetched with the key
/// alone, as an enrolling key, while the key is accepted (DESIGN §11).
async fn refetch_expired(options: &AgentOptions, id: &PeelId, exp: i64) -> Result<(), AgentError> {
    tracing::warn!(peel = %id, "the creds expired at {}: fetching fresh ones with the key alone", rfc3339(exp));
    match crate::peel::renew::refetch(options).await {
        Ok(renewed) => {
            tracing::info!(peel = %id, until = %rfc3339(renewed.expires_at), "fresh creds fetched");
            Ok(())
        }
        Err(why) => Err(AgentError::Expired {
            path: options.creds.clone(),
            at: rfc3339(exp),
            why: Box::new(why),
        }),
    }
}

/// Runs an agent until SIGINT or SIGTERM, then stops it (draining the connection).
pub async fn run(options: AgentOptions) -> Result<(), AgentError> {
    run_with_settings(options, None).await
}

/// [`run`], fetching and opening the settings with `settings_key`.
pub async fn run_with_settings(
    options: AgentOptions,
    settings_key: Option<SettingsKey>,
) -> Result<(), AgentError> {
    run_waiting(options, settings_key, None).await
}

/// How often, at most, the agent says it is still waiting for its server.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(60);

impl AgentError {
    /// True for what a later attempt may not meet: the server down or not reachable yet, or
    /// refusing a key that is not accepted yet. Local problems (creds, CA, signals) are final.
    pub fn is_worth_retrying(&self) -> bool {
        matches!(
            self,
            AgentError::Connect { .. } | AgentError::Refused { .. } | AgentError::Expired { .. }
        )
    }
}

/// [`run_with_settings`] for `zester peel run`: a peel that boots before its master, or whose
/// key is not accepted yet, waits instead of exiting — every attempt paced like a reconnect
/// (2 s doubling to 30 s, with jitter), the reason logged at most once a minute — until it
/// connects, SIGINT/SIGTERM arrives (exit 0), or `connect_timeout` passes
/// ([`AgentError::GaveUp`]).
pub async fn run_waiting(
    options: AgentOptions,
    settings_key: Option<SettingsKey>,
    connect_timeout: Option<Duration>,
) -> Result<(), AgentError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before connecting so that a signal during start is not lost.
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|source| AgentError::Signal {
        signal: "SIGINT",
        source,
    })?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|source| AgentError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let started = std::time::Instant::now();
    let mut failures = 0usize;
    let mut last_said: Option<std::time::Instant> = None;
    let agent = loop {
        let attempt = Agent::start_with_settings(options.clone(), settings_key.clone());
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        };
        let error = match outcome {
            Ok(agent) => break agent,
            Err(error) if error.is_worth_retrying() => error,
            Err(error) => return Err(error),
        };
        failures += 1;
        let waited = started.elapsed();
        if let Some(limit) = connect_timeout.filter(|limit| waited >= *limit) {
            return Err(AgentError::GaveUp {
                after: limit,
                last: Box::new(error),
            });
        }
        if last_said.is_none_or(|at| at.elapsed() >= WAITING_LOG_EVERY) {
            tracing::warn!(
                "not connected yet, retrying until it works (said at most once a minute): {error}"
            );
            last_said = Some(std::time::Instant::now());
        }
        let jitter = rand::thread_rng().gen_range(0..=RECONNECT_JITTER_MAX);
        let mut pause = reconnect_delay(false, failures, jitter);
        if let Some(limit) = connect_timeout {
            pause = pause.min(limit.saturating_sub(waited));
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        }
    };
    crate::net::notify::tell(&format!(
        "READY=1\nMAINPID={}\nSTATUS=connected as peel {}",
        std::process::id(),
        agent.peel_id()
    ));
    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
    }
    crate::net::notify::tell("STOPPING=1");
    agent.stop().await
}

/// The client options of DESIGN §4/§6 for the agent of peel `id`: [`peel_options`] plus the
/// agent's own connection events (facts after every connect, the closed signal).
fn connect_options(
    options: &AgentOptions,
    id: &PeelId,
    connected: mpsc::Sender<()>,
    closed: watch::Sender<bool>,
    pacing: Arc<ReconnectPacing>,
) -> ConnectOptions {
    let events_id = id.clone();
    let closed = Arc::new(closed);
    peel_options(options, id, pacing.clone()).event_callback(move |event| {
        pacing.on_event(&event);
        let (connected, closed, id) = (connected.clone(), closed.clone(), events_id.clone());
        async move { on_event(event, &id, &connected, &closed) }
    })
}

/// What every client of peel `id` needs (DESIGN §4/§6): its creds read again at every
/// (re)connect (so rotated creds just work), TLS required and trusted by the CA file or the
/// pinned CA, the name `zester-peel-<id>`, the inbox prefix `_INBOX.<id>` (the only inbox its
/// permissions let it read), and reconnects forever paced by `pacing` (whose
/// [`ReconnectPacing::on_event`] the caller's event callback must feed).
pub fn peel_options(
    options: &AgentOptions,
    id: &PeelId,
    pacing: Arc<ReconnectPacing>,
) -> ConnectOptions {
    let creds = options.creds.clone();
    let signer = id.clone();
    let endpoint = options.clone();
    let auth = ConnectOptions::with_auth_callback(move |nonce: Vec<u8>| {
        let (creds, id, endpoint) = (creds.clone(), signer.clone(), endpoint.clone());
        async move {
            // Expired while disconnected (a long outage): fetch fresh creds with the key alone
            // first; if that fails the server refuses the old ones and the next attempt tries
            // again.
            if let Ok((old, _)) = load_creds(&creds) {
                let exp = old.jwt().claims().exp;
                if exp != 0 && exp <= now_unix() {
                    // On a task of its own: the callback's future must be Sync, a connection's
                    // is not.
                    let peel = id.clone();
                    let fetched =
                        tokio::spawn(async move { refetch_expired(&endpoint, &peel, exp).await });
                    if let Ok(Err(e)) = fetched.await {
                        tracing::warn!(peel = %id, "{e}");
                    }
                }
            }
            let signed = sign_in(&creds, &id, &nonce).map_err(|e| {
                tracing::warn!(peel = %id, "cannot sign in: {e}");
                AuthError::new(e)
            })?;
            let mut auth = Auth::new();
            auth.jwt = Some(signed.jwt);
            auth.signature = Some(signed.signature);
            Ok(auth)
        }
    });
    let mut client_options = with_fleet_reconnects(auth, pacing)
        .require_tls(true)
        .name(format!("zester-peel-{id}"))
        .custom_inbox_prefix(format!("_INBOX.{id}"));
    match (&options.ca, &options.pin) {
        (Some(ca), _) => client_options = client_options.add_root_certificates(ca.clone()),
        (None, Some(pin)) => match crate::net::tls::pinned_client_config(pin) {
            Ok(config) => client_options = client_options.tls_client_config(config),
            Err(e) => tracing::warn!(peel = %id, "cannot trust the pinned CA {pin}: {e}"),
        },
        (None, None) => {}
    }
    client_options
}

/// The most random pause, in ms, before trying the next server of a pass (the pass's first
/// attempt takes the paced pause): enough to spread a fleet's moves off a dead node.
const PASS_JITTER_MS: u64 = 250;

/// How long a connection must have lasted for its loss not to count as one more failure in a
/// row (longer than any auth timeout of the server's).
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Failed connects in a row, as the peel counts them, for the backoff. async-nats counts
/// attempts only until a connection is "up", and it calls one up as soon as the server says
/// anything after CONNECT: nats-server pings a client 2 s after its CONNECT even while the
/// callout is still deciding. Under a storm its count would start over at every attempt and
/// the backoff would never grow, so a connection only resets the count once it has lasted
/// `STABLE_AFTER`.
#[derive(Debug, Default)]
pub struct ReconnectPacing {
    attempted: AtomicBool,
    /// The next reconnect is the agent's own (fresh creds after a renewal): no pause.
    planned: AtomicBool,
    streak: std::sync::atomic::AtomicU32,
    up_since: std::sync::Mutex<Option<std::time::Instant>>,
    /// The servers (`host:port`) tried since the last connection, in this pass over the pool.
    tried: std::sync::Mutex<std::collections::HashSet<(String, u16)>>,
}

impl ReconnectPacing {
    /// The pause before the next connect attempt (none before the very first).
    fn next_delay(&self) -> Duration {
        if self.planned.swap(false, Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let first = !self.attempted.swap(true, Ordering::Relaxed);
        // The connection just lost may have lasted: async-nats asks for this pause before its
        // `Disconnected` event reaches `on_event` (another task), so the streak would
        // otherwise still count the failures from before it (4 s and more instead of 2 s).
        if self
            .up_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some_and(|t| t.elapsed() >= STABLE_AFTER)
        {
            self.streak.store(0, Ordering::Relaxed);
        }
        let streak = self
            .streak
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let jitter = rand::thread_rng().gen_range(0..=RECONNECT_JITTER_MAX);
        reconnect_delay(first, streak as usize, jitter)
    }

    /// The server to try next and the pause before it, from the client's pool: one pass tries
    /// every distinct server (`host:port`: the pool holds a server once as given, `tls://…`,
    /// and again as announced, `nats://…`) once, those that failed least first and at random
    /// among equals (so that a fleet spreads over the live nodes). Only the first attempt of a
    /// pass takes [`ReconnectPacing::next_delay`]'s pause and counts as a failure in a row;
    /// the others follow after a short jitter. Without this, async-nats's own choice takes a
    /// backoff step per attempt and tries each server once per scheme, so a peel whose node
    /// died spent up to half a minute on it (36 s measured with 300 peels on three nodes).
    fn choose(&self, servers: &[async_nats::Server]) -> Option<async_nats::ReconnectToServer> {
        // The first connect is async-nats's own: one call that tries every server given.
        if !self.attempted.load(Ordering::Relaxed) {
            return None;
        }
        let mut failures: std::collections::HashMap<(String, u16), (usize, &async_nats::Server)> =
            std::collections::HashMap::new();
        for server in servers {
            let key = (server.addr.host().to_string(), server.addr.port());
            let entry = failures.entry(key).or_insert((0, server));
            // The as-given entry is kept (its scheme says TLS); failures count for the server.
            if entry.1.is_discovered && !server.is_discovered {
                entry.1 = server;
            }
            entry.0 = entry.0.max(server.failed_attempts);
        }
        let mut tried = self.tried.lock().unwrap_or_else(|p| p.into_inner());
        if failures.keys().all(|key| tried.contains(key)) {
            tried.clear();
        }
        let fresh_pass = tried.is_empty();
        let fewest = failures
            .iter()
            .filter(|(key, _)| !tried.contains(*key))
            .map(|(_, (n, _))| *n)
            .min()?;
        let candidates: Vec<_> = failures
            .iter()
            .filter(|(key, (n, _))| !tried.contains(*key) && *n == fewest)
            .collect();
        let (key, (_, server)) = candidates[rand::thread_rng().gen_range(0..candidates.len())];
        tried.insert(key.clone());
        let addr = server.addr.clone();
        drop(tried);
        let delay = if fresh_pass {
            self.next_delay()
        } else {
            Duration::from_millis(rand::thread_rng().gen_range(0..=PASS_JITTER_MS))
        };
        Some(async_nats::ReconnectToServer {
            addr,
            delay: Some(delay),
        })
    }

    /// Makes the next reconnect immediate and not count as a failure: the agent reconnects on
    /// purpose, right after a renewal.
    pub fn plan_immediate(&self) {
        self.planned.store(true, Ordering::Relaxed);
    }

    /// Follows the client's connection events.
    pub fn on_event(&self, event: &Event) {
        let mut up_since = self.up_since.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Connected => {
                *up_since = Some(std::time::Instant::now());
                self.tried.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
            // Taking the time also forgets it: the next loss counts from the next connect.
            Event::Disconnected | Event::Closed
                if up_since.take().is_some_and(|t| t.elapsed() >= STABLE_AFTER) =>
            {
                self.streak.store(0, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// The connect timeout and reconnect behaviour of every peel: reconnects forever, paced by
/// `pacing` (whose [`ReconnectPacing::on_event`] the caller's event callback must feed).
/// Public so that the load runner's native-auth baseline reconnects the same way.
pub fn with_fleet_reconnects(
    options: ConnectOptions,
    pacing: Arc<ReconnectPacing>,
) -> ConnectOptions {
    let chooser = pacing.clone();
    options
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None)
        .reconnect_delay_callback(move |_attempt| pacing.next_delay())
        .reconnect_to_server_callback(move |servers, _info| {
            let choice = chooser.choose(&servers);
            async move { choice }
        })
}

/// The delay before connect attempt `attempt` (counted by [`ReconnectPacing`] from 1 since the
/// last connection that lasted): none before the first ever; then 2 s, doubling with each
/// failure in a row up to 30 s, plus `jitter` thousandths of that (capped at half of it). A
/// fleet that lost its server thus comes back spread out, and when the server is too busy to
/// let everyone in at once the retries thin out instead of piling up (each one costs the server
/// a TLS handshake and a callout request).
fn reconnect_delay(first_ever: bool, attempt: usize, jitter: u64) -> Duration {
    if first_ever {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempt.saturating_sub(1).min(8)).unwrap_or(8);
    let pause = RECONNECT_DELAY
        .saturating_mul(1 << doublings)
        .min(RECONNECT_DELAY_MAX);
    pause + pause.mul_f64(jitter.min(RECONNECT_JITTER_MAX) as f64 / 1000.0)
}

/// Forwards what other tasks wait for and logs the rest.
fn on_event(event: Event, id: &PeelId, connected: &mpsc::Sender<()>, closed: &watch::Sender<bool>) {
    match event {
        Event::Connected => {
            tracing::info!(peel = %id, "connected");
            // Full means facts are already due: one publish covers this connect as well.
            let _ = connected.try_send(());
        }
        Event::Closed => {
            tracing::info!(peel = %id, "connection closed");
            closed.send_replace(true);
        }
        Event::Disconnected => tracing::warn!(peel = %id, "disconnected; reconnecting"),
        Event::ServerError(e) => tracing::warn!(peel = %id, "server error: {e}"),
        Event::ClientError(e) => tracing::warn!(peel = %id, "client error: {e}"),
        other => tracing::info!(peel = %id, "connection event: {other}"),
    }
}

/// Publishes the facts after every connect until told to stop.
async fn publish_facts(
    client: Client,
    id: PeelId,
    mut connected: mpsc::Receiver<()>,
    mut stop: oneshot::Receiver<()>,
    settings: Option<((nkeys::XKey, String), Arc<PeelState>)>,
) {
    let subject = crate::wire::subjects::fact(id.as_str());
    loop {
        tokio::select! {
            _ = &mut stop => return,
            signal = connected.recv() => {
                if signal.is_none() {
                    return;
                }
            }
        }
        let facts = Facts::gather(&id, now_unix());
        match client
            .publish(subject.clone(), facts.to_json().into())
            .await
        {
            Ok(()) => tracing::debug!(peel = %id, "facts published"),
            Err(e) => tracing::warn!(peel = %id, "cannot publish facts: {e}"),
        }
        if let Some(((xkey, master), state)) = &settings {
            let opened = crate::peel::settings::fetch(&client, &id)
                .await
                .and_then(|doc| {
                    doc.map(|doc| crate::peel::settings::open_secrets(&doc, xkey, master))
                        .transpose()
                });
            match opened {
                Ok(doc) => {
                    tracing::info!(peel = %id, present = doc.is_some(), "settings loaded");
                    *state.settings.write().unwrap_or_else(|p| p.into_inner()) = doc;
                }
                // The error names the place in the document, never a value.
                Err(e) => tracing::warn!(peel = %id, "cannot load settings: {e}"),
            }
        }
    }
}

/// Answers the master's commands until the subscription ends (on drain).
async fn serve_commands(
    client: Client,
    id: PeelId,
    mut commands: Subscriber,
    state: Arc<PeelState>,
) {
    while let Some(message) = commands.next().await {
        let Some(reply) = message.reply else {
            tracing::warn!(peel = %id, subject = %message.subject, "command without a reply subject ignored");
            continue;
        };
        // The answer goes out with this peel's right to reply, to wherever the sender said:
        // only into the admin's or the master's inbox, so no command can use the peel to
        // write somewhere its sender may not.
        if let Err(refused) = crate::wire::reply::check_command_reply(&reply) {
            tracing::warn!(peel = %id, "command not answered: {refused}");
            continue;
        }
        let answer = answer(&message.payload, &state);
        if let Err(e) = client.publish(reply, answer.to_string().into()).await {
            tracing::warn!(peel = %id, "cannot answer a command: {e}");
        }
    }
}

/// A command handler: the request in (`Value::Null` when the master sent only the name), the
/// JSON answer out.
type Handler = fn(&Value, &PeelState) -> Value;

/// The commands a peel knows, by name. A new command is one function and one line here.
const COMMANDS: &[(&str, Handler)] = &[("test.ping", test_ping), ("settings.keys", settings_keys)];

/// `test.ping`: the master checks the peel is alive and answering.
fn test_ping(_request: &Value, _state: &PeelState) -> Value {
    Value::Bool(true)
}

/// `settings.keys`: which settings the peel holds (names only, never values), and how many
/// secrets it opened.
fn settings_keys(_request: &Value, state: &PeelState) -> Value {
    match state.settings() {
        Some(Value::Object(map)) => {
            let keys: Vec<&String> = map.keys().collect();
            json!({ "keys": keys })
        }
        _ => json!({ "keys": [] }),
    }
}

/// A command as the master sent it.
#[derive(Debug, Clone, PartialEq)]
struct CommandRequest {
    /// The command name (`test.ping`).
    fun: String,
    /// The whole JSON request, or `Null` when the payload was the bare name.
    body: Value,
}

/// Parses a command payload: either the bare name (`test.ping`) or a JSON object with the name
/// in `fun` (`{"fun":"test.ping"}`).
fn parse_command(payload: &[u8]) -> Result<CommandRequest, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the command is not UTF-8".to_string())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("empty command".to_string());
    }
    if !text.starts_with('{') {
        return Ok(CommandRequest {
            fun: text.to_string(),
            body: Value::Null,
        });
    }
    let body: Value =
        serde_json::from_str(text).map_err(|e| format!("the command is not valid JSON: {e}"))?;
    let fun = body
        .get("fun")
        .and_then(Value::as_str)
        .ok_or_else(|| "the command has no \"fun\" string".to_string())?
        .to_string();
    Ok(CommandRequest { fun, body })
}

/// The answer to a command payload: the handler's answer, or `{"error": …}`.
fn answer(payload: &[u8], state: &PeelState) -> Value {
    let request = match parse_command(payload) {
        Ok(request) => request,
        Err(message) => return json!({ "error": message }),
    };
    match COMMANDS.iter().find(|(name, _)| *name == request.fun) {
        Some((_, handler)) => handler(&request.body, state),
        None => {
            let name: String = request.fun.chars().take(MAX_ECHOED_NAME).collect();
            json!({ "error": format!("unknown command {name}") })
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pass_tries_each_server_once_and_pauses_only_before_the_first() {
        let server = |url: &str, discovered: bool, failed: usize| async_nats::Server {
            addr: url.parse().unwrap(),
            failed_attempts: failed,
            did_connect: true,
            is_discovered: discovered,
            last_error: None,
        };
        let pool = [
            server("tls://127.0.0.1:4001", false, 0),
            server("nats://127.0.0.1:4001", true, 0),
            server("tls://127.0.0.1:4002", false, 0),
            server("nats://127.0.0.1:4003", true, 0),
        ];
        let pacing = super::ReconnectPacing::default();
        assert!(
            pacing.choose(&pool).is_none(),
            "the first connect is async-nats's"
        );
        assert_eq!(pacing.next_delay(), super::Duration::ZERO);
        let mut ports = Vec::new();
        for n in 0..3 {
            let choice = pacing.choose(&pool).unwrap();
            let delay = choice.delay.unwrap();
            if n == 0 {
                assert!(delay >= super::RECONNECT_DELAY, "{delay:?}");
            } else {
                assert!(
                    delay.as_millis() <= super::PASS_JITTER_MS as u128,
                    "{delay:?}"
                );
            }
            // The as-given entry of a server, which says TLS.
            if choice.addr.port() == 4001 {
                assert_eq!(choice.addr.as_url_str(), "tls://127.0.0.1:4001");
            }
            ports.push(choice.addr.port());
        }
        ports.sort();
        assert_eq!(ports, [4001, 4002, 4003]);
        // The next pass pauses again, longer, and tries the server that failed least first.
        let pool = [
            server("tls://127.0.0.1:4001", false, 2),
            server("tls://127.0.0.1:4002", false, 0),
            server("nats://127.0.0.1:4003", true, 1),
        ];
        let choice = pacing.choose(&pool).unwrap();
        assert_eq!(choice.addr.port(), 4002);
        assert!(choice.delay.unwrap() >= 2 * super::RECONNECT_DELAY);
    }

    use super::*;
    use crate::authority::Authority;
    use crate::permissions::Role;
    use nkeys::KeyPair;

    #[test]
    fn ping_is_answered_in_both_forms() {
        assert_eq!(
            answer(b"test.ping", &PeelState::default()),
            Value::Bool(true)
        );
        assert_eq!(
            answer(b"  test.ping\n", &PeelState::default()),
            Value::Bool(true)
        );
        assert_eq!(
            answer(br#"{"fun":"test.ping"}"#, &PeelState::default()),
            Value::Bool(true)
        );
    }

    #[test]
    fn unknown_and_malformed_commands_get_an_error() {
        assert_eq!(
            answer(b"test.pong", &PeelState::default()),
            json!({"error": "unknown command test.pong"})
        );
        assert_eq!(
            answer(br#"{"fun":"nope"}"#, &PeelState::default()),
            json!({"error": "unknown command nope"})
        );
        for payload in [
            &b""[..],
            b"  ",
            b"\xff\xfe",
            b"{not json",
            br#"{"fun":1}"#,
            b"{}",
        ] {
            let got = answer(payload, &PeelState::default());
            assert!(got["error"].is_string(), "{payload:?} gave {got}");
        }
        let long = "x".repeat(1000);
        let got = answer(long.as_bytes(), &PeelState::default());
        assert_eq!(
            got["error"].as_str().unwrap().len(),
            "unknown command ".len() + MAX_ECHOED_NAME
        );
    }

    #[test]
    fn a_json_command_keeps_its_body() {
        let request = parse_command(br#"{"fun":"test.ping","arg":[1]}"#).unwrap();
        assert_eq!(request.fun, "test.ping");
        assert_eq!(request.body["arg"], json!([1]));
        assert_eq!(parse_command(b"test.ping").unwrap().body, Value::Null);
    }

    #[test]
    fn connections_that_drop_soon_count_as_failures_and_lasting_ones_reset_the_backoff() {
        let pacing = ReconnectPacing::default();
        assert_eq!(
            pacing.next_delay(),
            Duration::ZERO,
            "the very first attempt"
        );
        // Up for a moment (the server's early PING), then refused: the backoff keeps growing.
        for streak in 2..=4u32 {
            pacing.on_event(&Event::Connected);
            pacing.on_event(&Event::Disconnected);
            let floor = RECONNECT_DELAY * (1 << (streak - 1));
            let delay = pacing.next_delay();
            assert!(
                delay >= floor && delay <= floor.mul_f64(1.5),
                "{delay:?} after {streak} failures"
            );
        }
        // A connection that lasted starts the count over.
        pacing.on_event(&Event::Connected);
        *pacing.up_since.lock().unwrap() = Some(std::time::Instant::now() - STABLE_AFTER);
        pacing.on_event(&Event::Disconnected);
        let delay = pacing.next_delay();
        assert!(
            delay >= RECONNECT_DELAY && delay <= RECONNECT_DELAY.mul_f64(1.5),
            "{delay:?}"
        );
    }

    #[test]
    fn only_the_very_first_attempt_is_not_delayed_and_failures_back_off() {
        assert_eq!(reconnect_delay(true, 1, 300), Duration::ZERO);
        assert_eq!(reconnect_delay(false, 1, 0), Duration::from_secs(2));
        assert_eq!(reconnect_delay(false, 1, 350), Duration::from_millis(2700));
        assert_eq!(reconnect_delay(false, 1, 5000), Duration::from_secs(3));
        assert_eq!(reconnect_delay(false, 2, 0), Duration::from_secs(4));
        assert_eq!(reconnect_delay(false, 3, 500), Duration::from_secs(12));
        assert_eq!(reconnect_delay(false, 50, 0), Duration::from_secs(30));
        // async-nats may ask with 0 before its first attempt: treated like the first.
        assert_eq!(reconnect_delay(false, 0, 0), Duration::from_secs(2));
    }

    fn issue(authority: &Authority, key: KeyPair, name: &str) -> Creds {
        let role = match PeelId::parse(name) {
            Ok(id) => Role::Peel(id),
            Err(_) => Role::Master,
        };
        authority
            .issue_creds(key, name, &role, now_unix(), 3600)
            .unwrap()
    }

    #[test]
    fn sign_in_reads_the_file_on_every_call() {
        let (authority, _) = Authority::generate(now_unix()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web-01.creds");
        let id = PeelId::parse("web-01").unwrap();

        let a = issue(&authority, KeyPair::new_user(), "web-01");
        home::write_creds(&path, &a).unwrap();
        let first = sign_in(&path, &id, b"nonce-1").unwrap();
        assert_eq!(first.jwt, a.jwt().token());
        a.key().verify(b"nonce-1", &first.signature).unwrap();

        // Rotated on disk (a new key here; a renewed JWT for the same key works the same way).
        let b = issue(&authority, KeyPair::new_user(), "web-01");
        home::write_creds(&path, &b).unwrap();
        let second = sign_in(&path, &id, b"nonce-2").unwrap();
        assert_eq!(second.jwt, b.jwt().token());
        assert_ne!(second.jwt, first.jwt);
        b.key().verify(b"nonce-2", &second.signature).unwrap();
    }

    #[test]
    fn sign_in_refuses_broken_or_foreign_creds_naming_the_file() {
        let (authority, _) = Authority::generate(now_unix()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web-01.creds");
        let id = PeelId::parse("web-01").unwrap();

        let missing = sign_in(&path, &id, b"n").unwrap_err();
        assert!(matches!(missing, AgentError::Creds { .. }), "{missing}");
        assert!(missing.to_string().contains("web-01.creds"), "{missing}");

        std::fs::write(&path, "garbage").unwrap();
        let garbage = sign_in(&path, &id, b"n").unwrap_err();
        assert!(matches!(garbage, AgentError::Creds { .. }), "{garbage}");
        assert!(garbage.to_string().contains("web-01.creds"), "{garbage}");

        home::write_creds(&path, &issue(&authority, KeyPair::new_user(), "web-02")).unwrap();
        let other = sign_in(&path, &id, b"n").unwrap_err();
        assert!(
            matches!(&other, AgentError::PeelIdChanged { found, .. } if found == "web-02"),
            "{other}"
        );

        home::write_creds(&path, &issue(&authority, KeyPair::new_user(), "")).unwrap();
        let nameless = sign_in(&path, &id, b"n").unwrap_err();
        assert!(
            matches!(nameless, AgentError::NoPeelId { .. }),
            "{nameless}"
        );

        home::write_creds(&path, &issue(&authority, KeyPair::new_user(), "_master")).unwrap();
        let reserved = sign_in(&path, &id, b"n").unwrap_err();
        assert!(
            matches!(reserved, AgentError::InvalidPeelId { .. }),
            "{reserved}"
        );
    }
}
