//! How zester's own processes connect to the appliance: creds, TLS with our CA, a name, and the
//! inbox prefix the role's permissions allow (DESIGN §4). Used by `zester up` for its callout,
//! system, service and store connections, and by CLI clients such as `zester status`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The creds file cannot be used.
    #[error("cannot read creds {}: {source}", path.display())]
    Creds {
        /// The file.
        path: PathBuf,
        /// The problem.
        source: std::io::Error,
    },
    /// The server refused or could not be reached.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
}

/// Connects with `options` to `servers` (a [`server_list`]); with `wait`, a server that is down
/// or not up yet is waited for — attempts 2 s apart doubling to 30 s, with jitter, and
/// `progress` told at most once a minute — while a refusal of the key (authorization,
/// authentication) ends it at once, as does every error without `wait`. For commands a person
/// runs with `--wait` (`peel enrol`, `node join`): the next step of a walkthrough may come
/// before the server it talks to is up.
pub async fn connect_waiting(
    options: &async_nats::ConnectOptions,
    servers: &str,
    wait: bool,
    progress: &impl Fn(&str),
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut pause = Duration::from_secs(2);
    let mut said: Option<Instant> = None;
    loop {
        match options.clone().connect(server_list(servers)).await {
            Ok(client) => return Ok(client),
            Err(e) if wait && !is_refusal(&e) => {
                if said.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    progress(&format!(
                        "cannot reach {servers} yet ({e}); retrying (said at most once a minute, Ctrl-C stops)"
                    ));
                    said = Some(Instant::now());
                }
                let jitter = pause.mul_f64(rand::random::<f64>() / 2.0);
                tokio::time::sleep(pause + jitter).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a connect error is the server refusing the key (not worth trying again as is).
pub fn is_refusal(error: &async_nats::ConnectError) -> bool {
    matches!(
        error.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication
    )
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `tls://host:port` (TLS is required regardless of the scheme).
    pub url: String,
    /// The CA certificate the server's certificate must chain to.
    pub ca: PathBuf,
}

/// The URLs of a server list: `tls://a:4222,tls://b:4222` (every node of a cluster), as
/// `zester peel run --server` and profiles give them. A client connects to one of them and
/// fails over to the others.
pub fn server_list(servers: &str) -> Vec<&str> {
    servers
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Connection settings of one of zester's clients.
#[derive(Debug, Clone)]
pub struct ClientSpec<'a> {
    /// The creds file.
    pub creds: &'a Path,
    /// Connection name, as the server and the audit log show it.
    pub name: &'a str,
    /// Inbox prefix (must be one the role may subscribe to).
    pub inbox_prefix: &'a str,
    /// The appliance's own clients: reconnect forever (the child may restart). CLI clients
    /// give up after one reconnect attempt.
    pub long_lived: bool,
}

/// Whether one of the appliance's own connections is up, for connections that must not
/// reconnect before it: the master signs in through the callout, so a master that reaches a
/// restarted nats-server before the callout connection has resubscribed gets no answer and is
/// held for the server's whole auth timeout and then refused.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// Milliseconds since [`epoch`] at which the connection came up, plus one; 0 while down.
    up_since: Arc<AtomicU64>,
    /// Milliseconds since [`epoch`] at which it last went down, plus one; 0 if it never did.
    down_at: Arc<AtomicU64>,
}

/// How long a connection must have been up before the ones waiting for it go ahead (it sends
/// its subscriptions right after the connect; the server has them well within this).
const PRESENCE_SETTLE: Duration = Duration::from_millis(25);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Presence {
    /// Records the connection going up or down.
    pub fn mark(&self, up: bool) {
        let now = epoch().elapsed().as_millis() as u64 + 1;
        if up {
            self.up_since.store(now, Ordering::Relaxed);
        } else {
            self.up_since.store(0, Ordering::Relaxed);
            self.down_at.store(now, Ordering::Relaxed);
        }
    }

    /// True while the connection is down, and for `window` after it went down.
    pub fn down_within(&self, window: Duration) -> bool {
        if self.up_since.load(Ordering::Relaxed) == 0 {
            return true;
        }
        match self.down_at.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let now = epoch().elapsed().as_millis() as u64 + 1;
                now.saturating_sub(at) <= window.as_millis() as u64
            }
        }
    }

    /// How long the connection has been up; `None` while it is down.
    pub fn up_for(&self) -> Option<Duration> {
        match self.up_since.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let now = epoch().elapsed().as_millis() as u64 + 1;
                Some(Duration::from_millis(now.saturating_sub(since)))
            }
        }
    }

    /// True once the connection has been up for `PRESENCE_SETTLE`.
    pub fn is_settled(&self) -> bool {
        self.up_for().is_some_and(|up| up >= PRESENCE_SETTLE)
    }
}

/// How a long-lived connection relates to the appliance's other connections.
#[derive(Debug, Clone, Default)]
pub struct ConnectionOrder {
    /// Kept current with this connection's state.
    pub announce: Option<Presence>,
    /// Reconnect only once this one is up (see [`Presence`]).
    pub after: Option<Presence>,
}

/// Connects over TLS with creds.
pub async fn connect(
    endpoint: &Endpoint,
    spec: &ClientSpec<'_>,
) -> Result<async_nats::Client, ConnectError> {
    connect_ordered(endpoint, spec, ConnectionOrder::default()).await
}

/// [`connect`], announcing this connection's state and/or reconnecting only after another's.
pub async fn connect_ordered(
    endpoint: &Endpoint,
    spec: &ClientSpec<'_>,
    order: ConnectionOrder,
) -> Result<async_nats::Client, ConnectError> {
    // Read once now so a broken file is reported at once, then again at every (re)connect so
    // that rotated creds (`zester creds rotate`) are picked up without a restart.
    crate::home::read_creds(spec.creds).map_err(|e| ConnectError::Creds {
        path: spec.creds.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let auth = creds_file_auth(spec.creds.to_path_buf());
    connect_with_auth(
        endpoint,
        auth,
        spec.name,
        spec.inbox_prefix,
        spec.long_lived,
        order,
    )
    .await
}

/// A long-lived connection of the appliance signing in with `creds` held in memory only (zester's
/// own per-run users, whose keys never touch the disk).
pub async fn connect_in_memory(
    endpoint: &Endpoint,
    creds: Arc<crate::identity::creds::Creds>,
    name: &str,
    inbox_prefix: &str,
    order: ConnectionOrder,
) -> Result<async_nats::Client, ConnectError> {
    let auth = async_nats::ConnectOptions::with_auth_callback(move |nonce: Vec<u8>| {
        let creds = creds.clone();
        async move { sign_in(&creds, &nonce) }
    });
    connect_with_auth(endpoint, auth, name, inbox_prefix, true, order).await
}

/// The CONNECT fields that prove `creds`: its JWT and its key's signature over the nonce.
fn sign_in(
    creds: &crate::identity::creds::Creds,
    nonce: &[u8],
) -> Result<async_nats::Auth, async_nats::AuthError> {
    let signature = creds
        .key()
        .sign(nonce)
        .map_err(|e| async_nats::AuthError::new(e.to_string()))?;
    let mut auth = async_nats::Auth::new();
    auth.jwt = Some(creds.jwt().token().to_string());
    auth.signature = Some(signature);
    Ok(auth)
}

async fn connect_with_auth(
    endpoint: &Endpoint,
    auth: async_nats::ConnectOptions,
    name: &str,
    inbox_prefix: &str,
    long_lived: bool,
    order: ConnectionOrder,
) -> Result<async_nats::Client, ConnectError> {
    let mut options = auth
        .add_root_certificates(endpoint.ca.clone())
        .require_tls(true)
        .name(name)
        .custom_inbox_prefix(inbox_prefix)
        .connection_timeout(Duration::from_secs(5));
    if long_lived {
        let after = order.after;
        options = options
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempt| reconnect_delay(attempt, after.as_ref()));
        if let Some(presence) = order.announce {
            presence.mark(true);
            options = options.event_callback(move |event| {
                let presence = presence.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => presence.mark(true),
                        async_nats::Event::Disconnected => presence.mark(false),
                        _ => {}
                    }
                }
            });
        }
    } else {
        options = options.max_reconnects(Some(1));
    }
    options
        .connect(endpoint.url.as_str())
        .await
        .map_err(|source| ConnectError::Connect {
            url: endpoint.url.clone(),
            source,
        })
}

/// Connect options that sign in with the creds in `path`, read again at every connect.
pub fn creds_file_auth(path: PathBuf) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::with_auth_callback(move |nonce: Vec<u8>| {
        let path = path.clone();
        async move {
            let creds = crate::home::read_creds(&path).map_err(async_nats::AuthError::new)?;
            sign_in(&creds, &nonce)
        }
    })
}

/// Delay before connect attempt `attempt` (async-nats asks before the very first one too):
/// none for the first, then 50 ms for a second's worth of attempts: the server is on this
/// host, so the appliance's connections are back moments after a restarted child listens.
/// After that, one a second: a connection refused for good (a removed node's system user,
/// revoked) must not knock 20 times a second on every server, each refusal an audit line there.
/// A connection that waits for another (`after`) retries every second until that one is up.
fn reconnect_delay(attempt: usize, after: Option<&Presence>) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    match after {
        Some(presence) if !presence.is_settled() => WAIT_FOR_PRESENCE,
        _ if attempt > FAST_RETRIES => SLOW_RETRY,
        _ => RETRY,
    }
}

/// The pause between the first reconnect attempts of the appliance's own connections.
const RETRY: Duration = Duration::from_millis(50);
/// How many attempts are made [`RETRY`] apart (about a second).
const FAST_RETRIES: usize = 20;
/// The pause between later attempts.
const SLOW_RETRY: Duration = Duration::from_secs(1);
/// The pause of a connection whose prerequisite connection is down.
const WAIT_FOR_PRESENCE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_attempt_is_not_delayed() {
        assert_eq!(reconnect_delay(0, None), Duration::ZERO);
        assert_eq!(reconnect_delay(1, None), Duration::ZERO);
        assert_eq!(reconnect_delay(2, None), RETRY);
        assert_eq!(reconnect_delay(FAST_RETRIES, None), RETRY);
        assert_eq!(reconnect_delay(FAST_RETRIES + 1, None), SLOW_RETRY);
        assert_eq!(reconnect_delay(500, None), SLOW_RETRY);
    }

    #[test]
    fn a_connection_waits_until_the_one_it_follows_has_settled() {
        let callout = Presence::default();
        assert!(!callout.is_settled());
        assert_eq!(reconnect_delay(1, Some(&callout)), Duration::ZERO);
        assert_eq!(reconnect_delay(2, Some(&callout)), WAIT_FOR_PRESENCE);
        callout.mark(true);
        std::thread::sleep(PRESENCE_SETTLE + Duration::from_millis(5));
        assert!(callout.is_settled());
        assert_eq!(reconnect_delay(2, Some(&callout)), RETRY);
        assert!(!callout.down_within(Duration::from_secs(10)));
        callout.mark(false);
        assert_eq!(reconnect_delay(3, Some(&callout)), WAIT_FOR_PRESENCE);
        assert!(callout.down_within(Duration::ZERO));
        callout.mark(true);
        assert!(callout.down_within(Duration::from_secs(10)));
    }
}
