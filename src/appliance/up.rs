//! `zester up`: the appliance — a supervised nats-server child and, in the same process, its
//! auth callout, the key store, the audit log and the admin status endpoint (DESIGN §1).
//!
//! [`Appliance::start`] walks the steps in order and each one fails with an error naming the
//! fix: initialise the home if needed, renew the TLS certificate if it is due (and keep
//! renewing it while running, see [`cert_renewal`](super::cert_renewal)), find and check the
//! binary, render the server config, start the child, connect the callout user (which bypasses
//! the callout) and subscribe, then the system user (kicks, auth-error and disconnect events),
//! then zester's own store and service users (through the callout, like everyone else, with
//! least privilege), open the key store, import the offline journal and serve the services.
//! Only then is the appliance ready. [`Appliance::stop`] goes in reverse with the callout last,
//! so that no client is ever left without an answer while the server still runs.

use crate::wire::subjects::SERVICE_QUEUE;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use serde_json::{json, Value};

use crate::appliance::admin::AdminService;
use crate::appliance::broker::binary::{self, BinaryError};
use crate::appliance::broker::config::{self as server_config, HostPort};
use crate::appliance::broker::supervisor::{BrokerError, Supervisor, SupervisorSettings};
use crate::appliance::callout::audit::{self, AuditRecord, AuditSink, Source, Verdict};
use crate::appliance::callout::decide::{self, KeyLookup, Trust};
use crate::appliance::callout::service::{self, CalloutState};
use crate::appliance::cert_renewal::CertRenewal;
use crate::appliance::cluster;
use crate::appliance::enrol::EnrolService;
use crate::appliance::grow;
use crate::appliance::keys::{journal, KeyCache, KeyState, KeyStore};
use crate::appliance::metrics::{self, Metrics};
use crate::appliance::own_renewal::{OwnConnections, OwnRenewal};
use crate::appliance::pinning;
use crate::appliance::rotate::RotateService;
use crate::appliance::scrape::{self, ScrapeError};
use crate::home::{self, now_unix, Home, HomeError};
use crate::identity::creds::Creds;
use crate::identity::keys::UserKey;
use crate::identity::peel_id::PeelId;
use crate::net::connect::{self, ClientSpec, ConnectionOrder, Endpoint};
use crate::permissions::{Role, ADMIN_INBOX_PREFIX};
use crate::wire::reply::Asker;
use crate::wire::subjects::{SERVICE_INBOX_PREFIX, STORE_INBOX_PREFIX};

/// SIGINT and SIGTERM, caught from before [`Appliance::start`] on: a signal that arrives while
/// the appliance starts (or just after it said it is ready) stops it cleanly once it is up,
/// instead of killing the process half-way.
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers (inside a tokio runtime).
    pub fn install() -> Result<StopSignals, UpError> {
        use tokio::signal::unix::{signal, SignalKind};
        let handler = |kind, signal_name| {
            signal(kind).map_err(|source| UpError::Signal {
                signal_name,
                source,
            })
        };
        Ok(StopSignals {
            interrupt: handler(SignalKind::interrupt(), "SIGINT")?,
            terminate: handler(SignalKind::terminate(), "SIGTERM")?,
        })
    }
}

/// Callout connections (each serves the queue group; see [`Appliance::start`]).
pub const CALLOUT_CONNECTIONS: usize = 4;

pub use crate::home::runtime::RuntimeInfo;
pub use crate::wire::admin::STATUS_SUBJECT;
/// How often the offline journal is imported while running.
const JOURNAL_INTERVAL: Duration = Duration::from_secs(2);

/// Why the appliance could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The home, config or keys.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The nats-server binary.
    #[error(transparent)]
    Binary(#[from] BinaryError),
    /// The join-token bucket could not be opened.
    #[error("join tokens: {0}")]
    Tokens(Box<crate::appliance::tokens::TokenStoreError>),
    /// The cluster's list of named admins could not be opened or brought together with the
    /// home's.
    #[error("named admins: {0}")]
    Admins(Box<crate::appliance::admins::AdminsError>),
    /// The node records could not be opened.
    #[error("node records: {0}")]
    Nodes(Box<crate::appliance::nodes::NodeError>),
    /// A creds file whose key is not a user's.
    #[error("a creds file of zester's own users: {0}")]
    Key(#[from] crate::identity::keys::KeyError),
    /// The server config could not be rendered or written.
    #[error(transparent)]
    Pinning(#[from] crate::appliance::pinning::PinningError),
    /// The server config could not be rendered.
    #[error("nats-server configuration: {0}")]
    Render(#[from] server_config::ConfigRenderError),
    /// The child process.
    #[error(transparent)]
    Broker(#[from] crate::appliance::broker::supervisor::BrokerError),
    /// One of zester's own connections.
    #[error("{what}: {source}")]
    Connect {
        /// Which connection.
        what: &'static str,
        /// The problem.
        source: connect::ConnectError,
    },
    /// A NATS operation failed.
    #[error("{what}: {source}")]
    Nats {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        source: async_nats::Error,
    },
    /// The settings bucket could not be opened.
    #[error(transparent)]
    Settings(#[from] crate::appliance::settings::SettingsError),
    /// A signal handler could not be installed.
    #[error("installing the {signal_name} handler: {source}")]
    Signal {
        /// `SIGINT` or `SIGTERM`.
        signal_name: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key store.
    #[error("key store: {0}")]
    Keys(#[from] crate::appliance::keys::KeyStoreError),
    /// Signing failed (a damaged key).
    #[error("signing: {0}")]
    Authority(#[from] crate::authority::AuthorityError),
    /// A command-line value that does not parse (`--metrics`).
    #[error(transparent)]
    Flag(crate::home::config::ConfigError),
    /// The metrics endpoint could not listen.
    #[error(transparent)]
    Scrape(#[from] ScrapeError),
    /// A single node's store could not be carried into the cluster it grew into.
    #[error(transparent)]
    Grow(#[from] crate::appliance::grow::GrowError),
}

fn nats_error(what: &'static str) -> impl FnOnce(async_nats::Error) -> UpError {
    move |source| UpError::Nats { what, source }
}

/// Command-line overrides of `zester.toml`.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// `--listen HOST:PORT`.
    pub listen: Option<String>,
    /// `--monitor HOST:PORT`.
    pub monitor: Option<String>,
    /// `--nats-server PATH`.
    pub nats_server: Option<PathBuf>,
    /// `--metrics HOST:PORT` (a bare port means 127.0.0.1, empty turns `[metrics] listen` off).
    pub metrics: Option<String>,
    /// This machine's hostname (for the TLS certificate at first init, and the node name of a
    /// cluster node without `[node] name`).
    pub hostname: String,
    /// `--cluster-listen HOST:PORT`: join a cluster, routes accepted there (`[cluster] listen`).
    pub cluster_listen: Option<String>,
    /// `--node-name NAME` (`[node] name`).
    pub node_name: Option<String>,
}

impl KeyLookup for KeyCache {
    fn peel_key(&self, nkey: &str) -> Option<(PeelId, KeyState)> {
        self.lookup_nkey(nkey).map(|r| (r.id.clone(), r.state))
    }
}

/// A running appliance.
pub struct Appliance {
    home: Home,
    supervisor: Supervisor,
    state: Arc<CalloutState>,
    callout: Vec<async_nats::Client>,
    sys: async_nats::Client,
    service: async_nats::Client,
    store: async_nats::Client,
    keys: Arc<KeyStore>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    audit_task: tokio::task::JoinHandle<()>,
    endpoint: Endpoint,
    runtime: RuntimeInfo,
    ready_after: Duration,
}

impl Appliance {
    /// Starts everything, step by step, and returns once the appliance is ready: the home
    /// (initialised if needed, its account JWT repaired), the TLS certificate (renewed if
    /// due), the nats-server child, the callout
    /// and the system connection, zester's own store and service connections, the key store,
    /// the services, and last `runtime.json` for the CLI.
    pub async fn start(home: Home, options: UpOptions) -> Result<Appliance, UpError> {
        let started = Instant::now();
        let started_at = now_unix();
        let mut prepared = prepare(&home, &options, started_at)?;
        let scrape = bind_metrics(&prepared, &options).await?;
        let metrics = scrape.is_some().then(|| Arc::new(Metrics::new()));
        let (audit, audit_task) = start_audit(&home, &prepared)?;
        let audit = match &metrics {
            Some(metrics) => audit.counted_by(metrics),
            None => audit,
        };
        let renewal = renew_certificate(&home, &prepared, &audit)?;
        let own_renewal = renew_own_creds(&home, &prepared, &audit)?;
        let mut broker = start_broker(&home, &prepared, &options).await?;
        let own = OwnUsers::issue(&prepared.authority, &mut prepared.services, started_at)?;
        let state = Arc::new(CalloutState::new(
            prepared.authority.clone(),
            prepared.trust(),
            prepared.session_ttl,
            audit.clone(),
        ));
        // On a node of a cluster every admission is told to the others, from the first one.
        let to_announce = prepared.clustered().then(|| {
            let (admitted, to_announce) = tokio::sync::mpsc::channel(cluster::SESSIONS_QUEUE);
            state.announce_sessions(admitted);
            to_announce
        });
        let (callout, mut tasks) = start_callout(&home, &broker.endpoint, &state).await?;
        let (sys, events) =
            start_system(&home, &broker.endpoint, &state, &audit, &prepared).await?;
        tasks.push(events);
        let (replicas, node) = match to_announce {
            Some(to_announce) => {
                let (task, replicas, node) = join_cluster(&prepared, &sys, &own, &state).await?;
                tasks.push(task);
                // Before this node's own connections sign in: wherever they are let in, every
                // node's table must hold them (a reload re-authorises them through any callout).
                tasks.push(
                    cluster::relay_sessions(
                        sys.clone(),
                        prepared.node_name.clone(),
                        state.clone(),
                        to_announce,
                    )
                    .await
                    .map_err(|e| nats_error("subscribing to the cluster's sessions")(e.into()))?,
                );
                (replicas, Some(node))
            }
            None => (1, None),
        };
        let (store, service) = own
            .connect(&broker.endpoint, &state.connection, node.as_ref())
            .await?;
        tasks.extend(open_audit_stream(&store, &prepared, &audit, replicas).await?);
        if let Some(carried) = broker.carried.take() {
            grow::carry_over(&home, &store, carried, replicas).await?;
        }
        grow::mark(
            &home,
            match prepared.clustered() {
                true => grow::Mode::Clustered,
                false => grow::Mode::Standalone,
            },
        )?;
        let keys = Arc::new(
            opened(
                crate::wire::subjects::KEYS_BUCKET,
                prepared.clustered(),
                || KeyStore::open_replicated(store.clone(), replicas),
            )
            .await?,
        );
        if prepared.clustered() {
            let mut streams: Vec<String> = crate::wire::subjects::BUCKETS
                .iter()
                .map(|bucket| format!("KV_{bucket}"))
                .collect();
            streams.push(crate::wire::audit::STREAM.to_string());
            tasks.push(tokio::spawn(cluster::keep_replicated(
                store.clone(),
                sys.clone(),
                streams,
            )));
            tasks.push(
                cluster::relay_key_writes(sys.clone(), prepared.node_name.clone(), keys.clone())
                    .await
                    .map_err(|e| {
                        nats_error("subscribing to the cluster's key notices")(e.into())
                    })?,
            );
        }
        // The named admins are one list for the whole cluster: from here on the bucket's, with
        // `auth/admins.json` (which the trust was built from so far) its local copy.
        let admins = opened(
            crate::wire::subjects::ADMINS_BUCKET,
            prepared.clustered(),
            || {
                crate::appliance::admins::AdminBucket::open(
                    store.clone(),
                    replicas,
                    home.clone(),
                    state.clone(),
                )
            },
        )
        .await
        .map_err(|e| UpError::Admins(Box::new(e)))?;
        tasks.push(tokio::spawn(admins.clone().follow()));
        state.set_keys(Arc::new(keys.cache()));
        import_journal(&home, &keys).await;
        let runtime = RuntimeInfo {
            pid: std::process::id(),
            url: broker.endpoint.url.clone(),
            monitor_url: broker.monitor.map(|m| format!("http://{m}")),
            metrics_url: scrape
                .as_ref()
                .and_then(|listener| listener.local_addr().ok())
                .map(|at| format!("http://{at}/metrics")),
            started_at,
        };
        let ready_after = started.elapsed();
        let status = StatusSource {
            home: home.clone(),
            peel_expiry: prepared
                .config
                .peel_expiry()
                .map_err(prepared.config_error())?,
            state: state.clone(),
            keys: keys.cache(),
            sys: sys.clone(),
            runtime: runtime.clone(),
            ready_after,
            supervisor: broker.supervisor.info_handle(),
            nats_version: broker.version.clone(),
            node: prepared.node_name.clone(),
            cluster: prepared
                .clustered()
                .then(|| prepared.config.cluster.name.clone()),
            store: store.clone(),
        };
        let ready = tokio::sync::watch::Sender::new(false);
        let context = ServiceContext {
            home: &home,
            prepared: &prepared,
            state: &state,
            keys: &keys,
            admins: &admins,
            store: &store,
            sys: &sys,
            audit: &audit,
            replicas,
            client_port: broker.client_port,
            follow: prepared.clustered().then(|| {
                let (rendering, addresses, rendered) = broker.rendering.clone();
                Follow {
                    rendering,
                    addresses,
                    reload: broker.supervisor.reload_handle(),
                    rendered,
                    ready: ready.subscribe(),
                }
            }),
            endpoint: &broker.endpoint,
        };
        tasks.extend(serve_services(context, &service, status).await?);
        if let (Some(listener), Some(metrics)) = (scrape, metrics) {
            metrics.read_live(Arc::new(MetricsSource {
                home: home.clone(),
                peel_expiry: prepared
                    .config
                    .peel_expiry()
                    .map_err(prepared.config_error())?,
                state: state.clone(),
                keys: keys.cache(),
                supervisor: broker.supervisor.info_handle(),
                audit: audit.clone(),
                cluster_nodes: prepared.clustered().then(|| {
                    let count = Arc::new(cluster::NodeCount::default());
                    tasks.push(tokio::spawn(cluster::watch_nodes(
                        sys.clone(),
                        count.clone(),
                    )));
                    count
                }),
            }));
            if let Some(url) = &runtime.metrics_url {
                tracing::info!(%url, "serving Prometheus metrics");
            }
            tasks.push(scrape::spawn(listener, metrics));
        }
        tasks.push(renewal.spawn(
            broker.supervisor.reload_handle(),
            broker.supervisor.info_handle(),
        ));
        tasks.push(own_renewal.spawn(OwnConnections {
            callout: callout.clone(),
            sys: sys.clone(),
        }));
        announce_ready(&home, &keys, &runtime, ready_after).await?;
        ready.send_replace(true);
        Ok(Appliance {
            home,
            supervisor: broker.supervisor,
            state,
            callout,
            sys,
            service,
            store,
            keys,
            tasks,
            audit_task,
            endpoint: broker.endpoint,
            runtime,
            ready_after,
        })
    }

    /// The client URL (TLS).
    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    /// What `runtime.json` says.
    pub fn runtime(&self) -> &RuntimeInfo {
        &self.runtime
    }

    /// Time from start to ready.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// The callout's shared state (stats, sessions).
    pub fn callout(&self) -> &Arc<CalloutState> {
        &self.state
    }

    /// The key store.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// The supervisor of the child.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Starts like [`Appliance::start`], unless SIGINT or SIGTERM (caught by `signals`) comes
    /// first: a start can wait long (a cluster node waits for JetStream's meta leader), and a
    /// signal then ends it (`None`); dropping the start takes the child down with the runtime
    /// (it is killed on drop).
    pub async fn start_unless_stopped(
        home: Home,
        options: UpOptions,
        signals: &mut StopSignals,
    ) -> Result<Option<Appliance>, UpError> {
        tokio::select! {
            started = Appliance::start(home, options) => started.map(Some),
            _ = signals.interrupt.recv() => {
                tracing::info!("SIGINT while starting: stopping");
                Ok(None)
            }
            _ = signals.terminate.recv() => {
                tracing::info!("SIGTERM while starting: stopping");
                Ok(None)
            }
        }
    }

    /// Runs until SIGINT/SIGTERM (caught by `signals`) or until the child cannot be kept up, then
    /// stops.
    pub async fn run_until_signal(self, mut signals: StopSignals) -> Result<(), UpError> {
        let gave_up = self.supervisor.gave_up();
        tokio::select! {
            _ = signals.interrupt.recv() => tracing::info!("SIGINT: stopping"),
            _ = signals.terminate.recv() => tracing::info!("SIGTERM: stopping"),
            error = gave_up => {
                self.stop().await;
                return Err(UpError::Broker(error));
            }
        }
        self.stop().await;
        Ok(())
    }

    /// Stops in reverse order: the child first, the callout last.
    pub async fn stop(self) {
        crate::net::notify::tell("STOPPING=1\nSTATUS=stopping");
        if let Err(e) = self.supervisor.shutdown().await {
            tracing::warn!("stopping nats-server: {e}");
        }
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        if let Ok(keys) = Arc::try_unwrap(self.keys) {
            keys.close().await;
        }
        drop(self.service);
        drop(self.store);
        drop(self.sys);
        drop(self.callout);
        drop(self.state);
        // Bounded: a writer stuck on a dead disk (or a pipe nobody reads) must not keep
        // zester from exiting; what it still held is lost, as it would be at a crash.
        if tokio::time::timeout(AUDIT_DRAIN, self.audit_task)
            .await
            .is_err()
        {
            tracing::error!(target: "audit", "the audit writer did not finish within {AUDIT_DRAIN:?}: records still queued are lost");
        }
        let _ = std::fs::remove_file(self.home.runtime_file());
        tracing::info!("zester stopped");
    }
}

/// How long the audit stream's API answers and publish acks are waited for.
const AUDIT_STREAM_WAIT: Duration = Duration::from_secs(5);
/// How often a start that could not make the audit stream asks again.
const AUDIT_STREAM_RETRY: Duration = Duration::from_secs(5);
/// How long a forming cluster may take to place the audit stream's copies before the failure
/// is a warning: on the nodes that start second and third it fails at first on every start.
const AUDIT_STREAM_SETTLING: Duration = Duration::from_secs(60);

/// How long [`Appliance::stop`] waits for the audit writer to write what is queued.
const AUDIT_DRAIN: Duration = Duration::from_secs(5);

/// Before anything decides, the audit trail's writer (`[audit]`: rotation, queue,
/// on_overflow), continuing the hash chain from the newest `audit.log`.
fn start_audit(
    home: &Home,
    prepared: &Prepared,
) -> Result<(AuditSink, tokio::task::JoinHandle<()>), UpError> {
    let config = &prepared.config;
    let options = audit::Options {
        rotation: audit::Rotation {
            max_bytes: config
                .audit_max_file_bytes()
                .map_err(prepared.config_error())?,
            keep: config.audit.keep,
        },
        queue: config.audit_queue().map_err(prepared.config_error())?,
        overflow: config.audit_overflow().map_err(prepared.config_error())?,
        node: prepared.node_name.clone(),
    };
    Ok(audit::start_options(&home.audit_log(), options))
}

/// Once the store connection is up: the `zester-audit` stream, created or brought to
/// `[audit] max_age` and `max_bytes` (replicated like the key store), and the publisher
/// that sends it every record (from the files first, what it lacks). A stream that cannot be
/// made is logged and retried by the publisher, not a reason to stay down: `audit.log` has
/// every record.
async fn open_audit_stream(
    store: &async_nats::Client,
    prepared: &Prepared,
    audit: &AuditSink,
    replicas: usize,
) -> Result<Vec<tokio::task::JoinHandle<()>>, UpError> {
    let (max_age, max_bytes) = prepared
        .config
        .audit_stream_limits()
        .map_err(prepared.config_error())?;
    // JetStream reserves a stream's max_bytes from `[jetstream] max_file` when it is made: an
    // audit stream as large as the store would leave the key store no room. A quarter at most.
    let room = prepared
        .config
        .jetstream_limits()
        .map_err(prepared.config_error())?
        .max_file()
        / 4;
    let max_bytes = if max_bytes > room {
        tracing::warn!(
            audit_max_bytes = max_bytes,
            jetstream_max_file = room * 4,
            "[audit] max_bytes is more than a quarter of [jetstream] max_file: the audit stream keeps {room} bytes"
        );
        room
    } else {
        max_bytes
    };
    // Bounded waits: an API request or a publish ack that does not come within 5 s is a
    // failure the publisher retries, never a hang.
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(AUDIT_STREAM_WAIT)
        .ack_timeout(AUDIT_STREAM_WAIT)
        .build(store.clone());
    // Never fewer copies than the stream has: a cluster that looks smaller at this start (a
    // node down) must not shrink it.
    let replicas = match js.get_stream(crate::wire::audit::STREAM).await {
        Ok(mut stream) => match stream.info().await {
            Ok(info) => info.config.num_replicas.max(replicas),
            Err(_) => replicas,
        },
        Err(_) => replicas,
    };
    let config = audit::stream_config(
        Duration::from_secs(u64::try_from(max_age).unwrap_or(0)),
        i64::try_from(max_bytes).unwrap_or(i64::MAX),
        replicas,
    );
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    match js.create_or_update_stream(config.clone()).await {
        Ok(info) => tracing::debug!(
            stream = %info.config.name,
            messages = info.state.messages,
            "audit stream ready"
        ),
        Err(e) => {
            // Typical of a cluster's first seconds (the stream's peers are still being placed):
            // asked again in the background, so the records reach the stream once it exists.
            // A single node has no such excuse; a cluster node warns once it lasts.
            let clustered = prepared.clustered();
            let what = format!(
                "the audit stream {} could not be created or updated: {e}; asked again every {} s, publishing is retried, audit.log has every record",
                crate::wire::audit::STREAM,
                AUDIT_STREAM_RETRY.as_secs()
            );
            match clustered {
                true => tracing::info!(target: "audit", "{what} (the cluster is forming)"),
                false => tracing::warn!(target: "audit", "{what}"),
            }
            let js = js.clone();
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let mut warned = !clustered;
                loop {
                    tokio::time::sleep(AUDIT_STREAM_RETRY).await;
                    if !warned && started.elapsed() >= AUDIT_STREAM_SETTLING {
                        warned = true;
                        tracing::warn!(
                            target: "audit",
                            waited_secs = started.elapsed().as_secs(),
                            "the audit stream {} is still not in the cluster: are more than half of the nodes up and routed? asked again every {} s, audit.log has every record",
                            crate::wire::audit::STREAM,
                            AUDIT_STREAM_RETRY.as_secs()
                        );
                    }
                    // Made meanwhile by another node: its copies are kept as they are.
                    if js.get_stream(crate::wire::audit::STREAM).await.is_ok() {
                        return;
                    }
                    match js.create_or_update_stream(config.clone()).await {
                        Ok(_) => {
                            tracing::info!(target: "audit", stream = crate::wire::audit::STREAM, "audit stream ready");
                            return;
                        }
                        Err(e) => tracing::debug!(target: "audit", %e, "the audit stream is not ready yet"),
                    }
                }
            }));
        }
    }
    tasks.extend(audit.publish_to(js));
    Ok(tasks)
}

/// What the home gives the appliance before anything runs.
struct Prepared {
    /// The home.
    home: Home,
    /// This machine's host name.
    hostname: String,
    /// `zester.toml` with the command line's overrides (`--cluster-listen`, `--node-name`).
    config: crate::home::config::Config,
    /// This node's name, nats-server's `server_name`.
    node_name: String,
    /// The routes this node renders: `[cluster] routes` and every other node the cluster's
    /// records know (`<home>/nats/nodes.json`, kept by [`start_nodes`]).
    routes: Vec<String>,
    config_file: PathBuf,
    authority: Arc<crate::authority::Authority>,
    /// zester's own users by key (master and admin from the home; service and store added
    /// by [`OwnUsers::issue`]), never by what they claim.
    services: std::collections::HashMap<UserKey, Role>,
    session_ttl: i64,
    sentinel: crate::identity::jwt::UserJwt,
}

impl Prepared {
    /// Whether nats-server runs clustered: `[cluster] listen` and at least one route. A node
    /// with a listen address but no other node yet (the first of a cluster) runs JetStream on
    /// its own, since nats-server's clustered JetStream waits for a route before it elects a
    /// leader; it answers joins, and is clustered from the start after the first node joined.
    fn clustered(&self) -> bool {
        self.config.clustered() && !self.routes.is_empty()
    }

    fn config_error(&self) -> impl Fn(crate::home::config::ConfigError) -> HomeError + '_ {
        |source| HomeError::Config {
            path: self.config_file.clone(),
            source,
        }
    }

    /// The callout's trust anchors.
    fn trust(&self) -> Trust {
        Trust {
            operator: self.authority.operator_jwt.clone(),
            account: self.authority.zester_jwt.clone(),
            sentinel: self.sentinel.token().to_string(),
            services: self.services.clone(),
            peers: Default::default(),
        }
    }
}

/// Step 1, the home: initialised if there is none, its configuration read, its account JWT
/// repaired if it revokes zester itself ([`repair_revocations`]), the sentinel signed.
fn prepare(home: &Home, options: &UpOptions, now: i64) -> Result<Prepared, UpError> {
    if !home.is_initialised() {
        tracing::info!(
            "no zester home at {}: initialising it",
            home.root().display()
        );
        let report = home.init(false, &options.hostname, now)?;
        tracing::info!(operator = %report.operator, ca_pin = %report.ca_pin, "home initialised");
    }
    let mut config = home.load_config()?;
    if let Some(listen) = &options.cluster_listen {
        config.cluster.listen = listen.clone();
    }
    if let Some(name) = &options.node_name {
        config.node.name = name.clone();
    }
    config.check_cluster().map_err(|source| HomeError::Config {
        path: home.config_file(),
        source,
    })?;
    let node_name = config.node_name(&options.hostname);
    let routes = crate::appliance::nodes::routes_for(
        &config.cluster.routes,
        &crate::appliance::nodes::read_cache(home),
        &node_name,
    );
    let session_ttl = config.session_ttl().map_err(|source| HomeError::Config {
        path: home.config_file(),
        source,
    })?;
    let services = service_roles(home)?;
    let authority = Arc::new(repair_revocations(
        home,
        home.load_authority()?,
        &services,
        now,
    )?);
    let sentinel = authority.issue_sentinel(now)?;
    Ok(Prepared {
        home: home.clone(),
        hostname: options.hostname.clone(),
        config,
        node_name,
        routes,
        config_file: home.config_file(),
        authority,
        services,
        session_ttl,
        sentinel,
    })
}

/// With step 1, the metrics endpoint (`--metrics`, else `[metrics] listen`; off when neither
/// names an address): bound before anything starts, so that a taken port fails the start at
/// once; served only once the appliance is ready.
async fn bind_metrics(
    prepared: &Prepared,
    options: &UpOptions,
) -> Result<Option<tokio::net::TcpListener>, UpError> {
    let address = match &options.metrics {
        Some(flag) => {
            crate::home::config::metrics_address("--metrics", flag).map_err(UpError::Flag)?
        }
        None => prepared
            .config
            .metrics_listen()
            .map_err(prepared.config_error())?,
    };
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = scrape::bind(&address).await?;
    if listener.local_addr().is_ok_and(|at| !at.ip().is_loopback()) {
        tracing::warn!(%address, "the metrics endpoint listens beyond this machine, in plain HTTP without authentication: keep it reachable by your Prometheus only");
    }
    Ok(Some(listener))
}

/// Between steps 1 and 2, the TLS certificate: re-issued before the child starts if it is due, expired or does
/// not match its key; then kept valid while running ([`CertRenewal::spawn`], started once the
/// services are up, since a renewal's reload re-authorises every client through the callout).
fn renew_certificate(
    home: &Home,
    prepared: &Prepared,
    audit: &AuditSink,
) -> Result<CertRenewal, UpError> {
    let lifetime = home.cert_lifetime(&prepared.config)?;
    let mut renewal = CertRenewal::new(home.clone(), lifetime, audit.clone());
    if prepared.config.clustered() {
        renewal = renewal.keeping_key();
    }
    renewal.at_start(prepared.clustered());
    Ok(renewal)
}

/// With the certificate, zester's own creds (`[service] expiry`): re-issued before anything
/// connects with them if due; then kept valid while running ([`OwnRenewal::spawn`], which
/// reconnects the callout and system connections after each re-issue).
fn renew_own_creds(
    home: &Home,
    prepared: &Prepared,
    audit: &AuditSink,
) -> Result<OwnRenewal, UpError> {
    let expiry = prepared
        .config
        .service_expiry()
        .map_err(prepared.config_error())?;
    let renewal = OwnRenewal {
        home: home.clone(),
        authority: prepared.authority.clone(),
        expiry,
        audit: audit.clone(),
    };
    renewal.at_start()?;
    Ok(renewal)
}

/// The running nats-server child and how to reach it.
struct Broker {
    supervisor: Supervisor,
    endpoint: Endpoint,
    /// The port clients connect to (a port 0 resolved).
    client_port: u16,
    monitor: Option<std::net::SocketAddr>,
    version: String,
    /// A single node's buckets, set aside before a clustered child started on its store, to
    /// be copied into the cluster once zester's store connection is up ([`grow`]).
    carried: Option<grow::Carried>,
    /// What its configuration is rendered from, the client and monitor addresses it was
    /// rendered with (ports picked), and what its cluster block holds: rendered again when the
    /// node records change ([`pinning::follow`]).
    rendering: (
        pinning::Rendering,
        (String, String),
        Option<pinning::Rendered>,
    ),
}

/// Step 2, the broker: find and check nats-server, render its configuration, start it as a
/// supervised child, and pin ports chosen at run time (port 0) so that clients (and this
/// process) find a restarted child where the first one was.
async fn start_broker(
    home: &Home,
    prepared: &Prepared,
    options: &UpOptions,
) -> Result<Broker, UpError> {
    let config = &prepared.config;
    let listen = options
        .listen
        .clone()
        .unwrap_or(config.server.listen.clone());
    let monitor = options
        .monitor
        .clone()
        .unwrap_or(config.server.monitor.clone());
    let explicit_binary = options.nats_server.clone().or_else(|| {
        (!config.server.nats_server.is_empty()).then(|| PathBuf::from(&config.server.nats_server))
    });
    let binary = binary::locate(explicit_binary.as_deref())?;
    let version = binary::check_version(&binary.path)?;
    tracing::info!(path = %binary.path.display(), found_by = %binary.found_by, %version, "nats-server");
    // Before the child sees the store: a clustered server would delete a standalone one's
    // streams as orphans.
    let carried = grow::before_start(
        home,
        prepared.clustered(),
        &binary.path,
        &prepared.authority.zester.public_key(),
    )
    .await?;

    for dir in [home.nats_dir(), home.resolver_dir(), home.jetstream_dir()] {
        home::create_private_dir(&dir)?;
    }
    if !home.server_chain().exists() {
        home.write_server_chain()?;
    }
    let limits = config.jetstream_limits().map_err(prepared.config_error())?;
    let rendering = pinning::Rendering {
        home: home.clone(),
        authority: prepared.authority.clone(),
        sentinel: prepared.sentinel.token().to_string(),
        limits,
        server_name: prepared.node_name.clone(),
        cluster: prepared.clustered().then(|| pinning::ClusterPlan {
            name: config.cluster.name.clone(),
            listen: config.cluster.listen.clone(),
            routes: prepared.routes.clone(),
        }),
    };
    let records = crate::appliance::nodes::read_cache(home);
    let render = |listen: &str, monitor: &str| -> Result<Option<pinning::Rendered>, UpError> {
        Ok(rendering.write(listen, monitor, &records)?)
    };
    // Checks the addresses (a monitor off loopback is refused) before anything is bound.
    if let Some(rendered) = render(&listen, &monitor)? {
        pinning::log_pins(&rendered);
    }

    let listen_at = HostPort::parse("server.listen", &listen)?;
    let requested_monitor = HostPort::parse("server.monitor", &monitor)?;
    let mut attempt = 0;
    let (supervisor, monitor_at) = loop {
        attempt += 1;
        // nats-server keeps a monitor port of `-1` as -1 in its options, and refuses a reload
        // whose config names the real port instead ("config reload not supported for
        // HTTPPort"), so a monitor on port 0 gets its port picked here. Another process may
        // take it before the child binds it; then the child says so and another is picked.
        let monitor_at = pick_port(&requested_monitor)?;
        render(&listen, &monitor_at.to_string())?;
        let started = Supervisor::start(SupervisorSettings::new(
            binary.path.clone(),
            home.nats_config_file(),
            home.nats_dir(),
            listen_at.clone(),
            monitor_at.clone(),
        ))
        .await;
        match started {
            Err(BrokerError::StartFailed { log_tail, .. })
                if requested_monitor.port() == 0
                    && attempt < PICK_PORT_ATTEMPTS
                    && log_tail
                        .iter()
                        .any(|l| l.contains("address already in use")) =>
            {
                tracing::info!(monitor = %monitor_at, "the monitor port picked was taken meanwhile: picking another");
            }
            started => break (started?, monitor_at),
        }
    };
    let child = supervisor.info();
    let pin = |at: &HostPort, port: Option<u16>| match port {
        Some(port) if at.port() == 0 => join_host_port(at.host(), port),
        _ => at.to_string(),
    };
    let addresses = (
        pin(&listen_at, Some(child.ports.client.port())),
        pin(&monitor_at, child.ports.monitor.map(|m| m.port())),
    );
    let rendered = render(&addresses.0, &addresses.1)?;
    let endpoint = Endpoint {
        // TLS is required: the URL says so, as the one a user pastes must.
        url: local_client_url(&listen_at, child.ports.client.port()),
        ca: home.ca_cert(),
    };
    tracing::info!(url = %endpoint.url, monitor = ?child.ports.monitor, pid = child.pid, "nats-server listening");
    Ok(Broker {
        supervisor,
        endpoint,
        client_port: child.ports.client.port(),
        monitor: child.ports.monitor,
        version,
        carried,
        rendering: (rendering.clone(), addresses, rendered),
    })
}

/// zester's own service and store users: fresh keys at every start, held in memory only, so
/// that only this run's are trusted.
struct OwnUsers {
    service: Arc<Creds>,
    store: Arc<Creds>,
}

impl OwnUsers {
    /// Step 3: signs both users and trusts their keys in `services`.
    fn issue(
        authority: &crate::authority::Authority,
        services: &mut std::collections::HashMap<UserKey, Role>,
        now: i64,
    ) -> Result<OwnUsers, UpError> {
        let mut issue = |name: &str, role: Role| -> Result<Arc<Creds>, UpError> {
            let creds = authority.issue_creds(nkeys::KeyPair::new_user(), name, &role, now, 0)?;
            services.insert(UserKey::parse(&creds.key().public_key())?, role);
            Ok(Arc::new(creds))
        };
        Ok(OwnUsers {
            service: issue("service", Role::Service)?,
            store: issue("store", Role::Store)?,
        })
    }

    /// Step 6: both connections through the callout, each with least privilege — the store
    /// connection alone speaks JetStream (its buckets only) and hears nothing a client can
    /// send; the service connection hears the requests and may only answer into inboxes
    /// (DESIGN §4). Returns `(store, service)`.
    /// In a cluster (`node`), a connection refused because the callout that answered does not
    /// know this run's users yet (its node missed the announcement: busy, or starting too) is
    /// tried again after announcing them once more, up to [`OWN_CONNECT_ATTEMPTS`] times.
    async fn connect(
        self,
        endpoint: &Endpoint,
        callout: &connect::Presence,
        node: Option<&cluster::Node>,
    ) -> Result<(async_nats::Client, async_nats::Client), UpError> {
        let store = connect_own_announcing(
            endpoint,
            self.store,
            ("zester-store", STORE_INBOX_PREFIX),
            "key store connection (through the callout)",
            callout,
            node,
        )
        .await?;
        let service = connect_own_announcing(
            endpoint,
            self.service,
            ("zester-service", SERVICE_INBOX_PREFIX),
            "service connection (through the callout)",
            callout,
            node,
        )
        .await?;
        Ok((store, service))
    }
}

/// How often a starting node of a cluster tries one of its own connections that a callout
/// refused, announcing its users again in between (1 s, 2 s, 4 s, 8 s apart).
const OWN_CONNECT_ATTEMPTS: u32 = 5;

/// [`connect_own_in_memory`], tried again on a refusal when this node is one of a cluster.
async fn connect_own_announcing(
    endpoint: &Endpoint,
    creds: Arc<Creds>,
    names: (&str, &str),
    what: &'static str,
    callout: &connect::Presence,
    node: Option<&cluster::Node>,
) -> Result<async_nats::Client, UpError> {
    let mut pause = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        match connect_own_in_memory(endpoint, creds.clone(), names, what, callout).await {
            Err(UpError::Connect {
                source: connect::ConnectError::Connect { source, .. },
                ..
            }) if node.is_some()
                && attempt < OWN_CONNECT_ATTEMPTS
                && connect::is_refusal(&source) =>
            {
                tracing::warn!(
                    what,
                    attempt,
                    "refused ({source}): the callout that answered may not know this run's users yet; announcing them again, then trying again in {pause:?}"
                );
                if let Some(node) = node {
                    node.announce().await;
                }
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// How long a single node's `zester up` asks again to open a bucket while its JetStream is
/// still settling (the API timing out under load). A node of a cluster asks as long as it
/// takes: its peers may be started by hand minutes apart, or be busy electing.
const BUCKET_OPEN_WAIT: Duration = Duration::from_secs(30);

/// `open()`, asked again once a second while it fails the way a settling JetStream makes it
/// fail for a moment (timeouts, "temporarily unavailable", no responders, a peer still counted
/// offline): for up to [`BUCKET_OPEN_WAIT`] on a single node, with no end on a node of a
/// cluster (`clustered`), which says every [`BUCKET_OPEN_WAIT`] that it is still waiting. Any
/// other error, or the last one, is returned.
async fn opened<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    bucket: &str,
    clustered: bool,
    open: impl FnMut() -> F,
) -> Result<T, E> {
    asked_until_settled(bucket, (!clustered).then_some(BUCKET_OPEN_WAIT), open).await
}

/// [`opened`] with its limit: `open()` asked again while it fails transiently, for up to
/// `limit` (`None`: without end, a WARN every [`BUCKET_OPEN_WAIT`]).
async fn asked_until_settled<T, E, F>(
    bucket: &str,
    limit: Option<Duration>,
    mut open: impl FnMut() -> F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut warned = started;
    loop {
        match open().await {
            Err(e)
                if limit.is_none_or(|limit| started.elapsed() < limit)
                    && crate::appliance::keys::store::is_transient(&e.to_string()) =>
            {
                if warned.elapsed() >= BUCKET_OPEN_WAIT {
                    warned = std::time::Instant::now();
                    let waited = started.elapsed().as_secs();
                    tracing::warn!(
                        bucket,
                        waited_s = waited,
                        "{e}; still asking: the cluster's JetStream has not settled for {waited} s \
                         (are more than half of the nodes up and routed? `zester status` on one \
                         of them shows which)"
                    );
                } else {
                    tracing::info!(bucket, "{e}; asking again (JetStream is still settling)");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Between steps 5 and 6, on a node of a cluster: waits for JetStream's meta leader, then
/// announces this run's service and store users to the other nodes (whose callouts answer for
/// this node's server too) and waits until the routed ones answered, so that both connect at
/// once wherever their auth request is answered. Returns the announcing task, the replicas
/// the buckets are made with (`min(3, nodes)`) and the node (to announce again).
async fn join_cluster(
    prepared: &Prepared,
    sys: &async_nats::Client,
    own: &OwnUsers,
    state: &Arc<CalloutState>,
) -> Result<(tokio::task::JoinHandle<()>, usize, cluster::Node), UpError> {
    let node = cluster::Node::new(
        sys.clone(),
        &prepared.node_name,
        (
            UserKey::parse(&own.service.key().public_key())?,
            UserKey::parse(&own.store.key().public_key())?,
        ),
        state.clone(),
        prepared.home.clone(),
    );
    let task = node
        .listen()
        .await
        .map_err(|e| nats_error("subscribing to the cluster's announcements")(e.into()))?;
    let server_id = sys.server_info().server_id;
    let meta = cluster::wait_for_meta_leader(sys, &server_id).await;
    let routed = cluster::server_document(sys, &server_id, "ROUTEZ")
        .await
        .map(|routez| cluster::routed_servers(&routez).len())
        .unwrap_or(0);
    let answered = node.introduce(routed).await;
    tracing::info!(node = %prepared.node_name, leader = %meta.leader, cluster_size = meta.cluster_size, routed, answered, "cluster: joined");
    // The meta group may not count every routed node yet (they elected a leader among two):
    // a bucket made now must not have fewer copies than the nodes already routed.
    Ok((
        task,
        cluster::replicas_for(meta.cluster_size.max(routed + 1)),
        node,
    ))
}

/// Step 4, the callout: several connections in its queue group (nats-server handles the
/// answers arriving on one connection one after another, so under a reconnect storm a single
/// connection's answers queue up past the server's auth timeout), the first announcing its
/// presence so that zester's other connections reconnect only after it.
async fn start_callout(
    home: &Home,
    endpoint: &Endpoint,
    state: &Arc<CalloutState>,
) -> Result<(Vec<async_nats::Client>, Vec<tokio::task::JoinHandle<()>>), UpError> {
    let creds = home.service_creds("callout");
    let mut callout = Vec::with_capacity(CALLOUT_CONNECTIONS);
    let mut tasks = Vec::new();
    for n in 0..CALLOUT_CONNECTIONS {
        let client = connect_own(
            endpoint,
            &creds,
            &format!("zester-callout-{n}"),
            ADMIN_INBOX_PREFIX,
            "callout connection",
            ConnectionOrder {
                announce: (n == 0).then(|| state.connection.clone()),
                after: None,
            },
        )
        .await?;
        tasks.push(
            service::serve(client.clone(), state.clone())
                .await
                .map_err(nats_error("subscribing to $SYS.REQ.USER.AUTH"))?,
        );
        callout.push(client);
    }
    Ok((callout, tasks))
}

/// Step 5, the system connection (kicks, claim updates) and the server events it watches.
async fn start_system(
    home: &Home,
    endpoint: &Endpoint,
    state: &Arc<CalloutState>,
    audit: &AuditSink,
    prepared: &Prepared,
) -> Result<(async_nats::Client, tokio::task::JoinHandle<()>), UpError> {
    let sys = connect_own(
        endpoint,
        &home.service_creds("sys"),
        "zester-sys",
        "_INBOX._sys",
        "system connection",
        ConnectionOrder::default(),
    )
    .await?;
    let account = prepared.authority.zester.public_key();
    let events = watch_server_events(sys.clone(), state.clone(), audit.clone(), account).await?;
    Ok((sys, events))
}

/// What the services are built from.
struct ServiceContext<'a> {
    home: &'a Home,
    prepared: &'a Prepared,
    state: &'a Arc<CalloutState>,
    keys: &'a Arc<KeyStore>,
    admins: &'a Arc<crate::appliance::admins::AdminBucket>,
    store: &'a async_nats::Client,
    sys: &'a async_nats::Client,
    audit: &'a AuditSink,
    /// Copies of each bucket made now (`min(3, nodes)` in a cluster).
    replicas: usize,
    /// The port nats-server listens on for clients (after a port 0 was picked).
    client_port: u16,
    /// On a clustered node: what [`pinning::follow`] renders again and reloads.
    follow: Option<Follow>,
    /// Where this node's nats-server listens.
    endpoint: &'a Endpoint,
}

/// What [`pinning::follow`] is given: the rendering, the addresses, the reload, what runs,
/// and when it may begin: once the appliance is ready, since a reload re-authorises every
/// client through the callout, and zester's own connections are still being made before.
struct Follow {
    rendering: pinning::Rendering,
    addresses: (String, String),
    reload: crate::appliance::broker::supervisor::ReloadHandle,
    rendered: Option<pinning::Rendered>,
    ready: tokio::sync::watch::Receiver<bool>,
}

/// On a node of a cluster: the node records (this node's own refreshed while it runs) and the
/// service that answers joining nodes.
async fn start_nodes(
    prepared: &Prepared,
    (store, endpoint): (&async_nats::Client, &Endpoint),
    replicas: usize,
    client_port: u16,
    follow: Option<Follow>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<Arc<crate::appliance::nodes::NodeService>, UpError> {
    use crate::appliance::nodes::{NodeService, NodeStore, Revoker};
    let config = &prepared.config;
    let home = &prepared.home;
    let nodes = Arc::new(
        opened("zester-nodes", prepared.clustered(), || {
            NodeStore::open(store.clone(), replicas)
        })
        .await
        .map_err(|e| UpError::Nodes(Box::new(e)))?
        .with_revoker(Revoker {
            authority: prepared.authority.clone(),
            home: home.clone(),
            endpoint: endpoint.clone(),
        }),
    );
    let now = now_unix();
    let cluster_port = HostPort::parse("cluster.listen", &config.cluster.listen)?.port();
    let me = crate::wire::node::NodeRecord {
        name: prepared.node_name.clone(),
        nkey: String::new(),
        xkey: String::new(),
        state: crate::wire::node::NodeState::Accepted,
        client_url: format!(
            "tls://{}",
            advertised(&config.server.listen, client_port, &prepared.hostname)
        ),
        cluster_url: advertised(&config.cluster.listen, cluster_port, &prepared.hostname),
        tls_key: String::new(),
        tls_names: Vec::new(),
        hostname: prepared.hostname.clone(),
        since: now,
        changed_at: now,
        changed_by: "node".into(),
        seen_at: now,
        route_pin: std::fs::read_to_string(home.server_cert())
            .ok()
            .and_then(|pem| crate::pki::route_pin_from_cert_pem(&pem).ok())
            .unwrap_or_default(),
        sys_user: home::read_creds(&home.service_creds("sys"))
            .map(|creds| creds.key().public_key())
            .unwrap_or_default(),
        revoked: None,
    };
    // Right after a bucket is made (or a leader elected) reads can fail for a moment ("no
    // responders"): this node's record is worth a few tries before the periodic refresh.
    let mut registered = nodes.register_self(&me, now).await;
    for _ in 0..20 {
        if registered.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        registered = nodes.register_self(&me, now_unix()).await;
    }
    match registered {
        Ok(record) if record.state == crate::wire::node::NodeState::Removed => tracing::warn!(
            node = %me.name,
            "this node was removed from the cluster (`zester node remove`); it runs, but the others ignore what it announces"
        ),
        Ok(record) => {
            tracing::info!(node = %record.name, client_url = %record.client_url, cluster_url = %record.cluster_url, "cluster: this node's record")
        }
        Err(e) => tracing::warn!(node = %me.name, "cluster: could not record this node: {e}"),
    }
    tasks.push(tokio::spawn(crate::appliance::nodes::keep_seen(
        nodes.clone(),
        me,
        prepared.home.clone(),
    )));
    if let Some(mut follow) = follow {
        let nodes = nodes.clone();
        tasks.push(tokio::spawn(async move {
            if follow.ready.wait_for(|ready| *ready).await.is_err() {
                return;
            }
            pinning::follow(
                nodes,
                follow.rendering,
                follow.addresses,
                follow.reload,
                follow.rendered,
            )
            .await
        }));
    }
    Ok(Arc::new(NodeService {
        store: nodes,
        home: prepared.home.clone(),
        authority: prepared.authority.clone(),
        cluster_name: config.cluster.name.clone(),
        cert_lifetime: prepared.home.cert_lifetime(config)?,
    }))
}

/// `HOST:PORT` as other machines reach `listen` (whose port may have been 0, so `port` is the
/// real one): an unspecified host (`0.0.0.0`, `::`) becomes this machine's host name.
fn advertised(listen: &str, port: u16, hostname: &str) -> String {
    let host = HostPort::parse("server.listen", listen)
        .map(|at| at.host().to_string())
        .unwrap_or_default();
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => hostname.to_string(),
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ if host.is_empty() => hostname.to_string(),
        _ => host,
    };
    format!("{host}:{port}")
}

/// Step 7, the services on zester's service connection: status, enrolment, peels' settings,
/// the admin API, rotation; and the periodic journal import.
async fn serve_services(
    context: ServiceContext<'_>,
    service: &async_nats::Client,
    status: StatusSource,
) -> Result<Vec<tokio::task::JoinHandle<()>>, UpError> {
    let ServiceContext {
        home,
        prepared,
        state,
        keys,
        admins,
        store,
        sys,
        audit,
        replicas,
        client_port,
        follow,
        endpoint,
    } = context;
    let config = &prepared.config;
    let config_error = prepared.config_error();
    let authority = &prepared.authority;
    let peel_expiry = config.peel_expiry().map_err(&config_error)?;
    let mut tasks = vec![serve_status(service.clone(), status, audit.clone()).await?];
    state.set_enrol_rate(config.keys.enrol_rate);
    let tokens = Arc::new(
        opened("zester-tokens", prepared.clustered(), || {
            crate::appliance::tokens::TokenStore::open(store.clone(), replicas)
        })
        .await
        .map_err(|e| UpError::Tokens(Box::new(e)))?,
    );
    let nodes = match config.clustered() {
        // A node with `[cluster] listen` answers joins, clustered or still the only one.
        true => Some(
            start_nodes(
                prepared,
                (store, endpoint),
                replicas,
                client_port,
                follow,
                &mut tasks,
            )
            .await?,
        ),
        false => None,
    };
    let enrol = Arc::new(EnrolService {
        authority: authority.clone(),
        keys: keys.clone(),
        policy: config.accept_policy().map_err(&config_error)?,
        trusted: config.keys.trusted.clone(),
        max_pending: config.keys.max_pending as usize,
        peel_expiry,
        audit: audit.clone(),
        limits: crate::appliance::enrol::EnrolLimits::new(Some(state.clone())),
        creating: tokio::sync::Mutex::new(()),
        tokens: Some(tokens.clone()),
        hook: match config.accept_policy().map_err(&config_error)? {
            crate::home::config::AcceptPolicy::Hook => Some(crate::appliance::hook::Hook {
                path: config.keys.hook.clone().into(),
                timeout: Duration::from_secs(
                    config.hook_timeout().map_err(&config_error)?.max(1) as u64
                ),
            }),
            _ => None,
        },
        nodes: nodes.clone(),
    });
    tasks.push(
        enrol
            .serve(service.clone())
            .await
            .map_err(nats_error("subscribing to the enrolment subjects"))?,
    );
    let settings = Arc::new(
        opened("zester-settings", prepared.clustered(), || {
            crate::appliance::settings::SettingsStore::open(store.clone(), replicas)
        })
        .await?,
    );
    tasks.push(
        crate::appliance::settings::serve_peels(settings.clone(), service.clone(), audit.clone())
            .await
            .map_err(nats_error("subscribing to the settings requests"))?,
    );
    let admin = Arc::new(AdminService {
        home: home.clone(),
        authority: authority.clone(),
        keys: keys.clone(),
        callout: state.clone(),
        sys: sys.clone(),
        account_lock: tokio::sync::Mutex::new(()),
        settings,
        tokens,
        admins: admins.clone(),
        nodes: nodes.as_ref().map(|n| n.store.clone()),
        audit: audit.clone(),
        seen: Default::default(),
    });
    tasks.push(
        admin
            .clone()
            .serve(service.clone())
            .await
            .map_err(nats_error("subscribing to the admin subjects"))?,
    );
    // The cluster's account JWT: taken once now (a node that was down), then followed.
    tasks.push(
        crate::appliance::account::follow(admin.clone())
            .await
            .map_err(nats_error("subscribing to the account JWT updates"))?,
    );
    let rotate = Arc::new(RotateService {
        authority: authority.clone(),
        keys: keys.clone(),
        admin,
        peel_expiry,
        audit: audit.clone(),
    });
    tasks.push(
        rotate
            .serve(service.clone())
            .await
            .map_err(nats_error("subscribing to the rotation subjects"))?,
    );
    let renew = Arc::new(crate::appliance::renew::RenewService {
        authority: authority.clone(),
        keys: keys.clone(),
        peel_expiry,
        audit: audit.clone(),
    });
    tasks.push(
        renew
            .serve(service.clone())
            .await
            .map_err(nats_error("subscribing to the renewal subjects"))?,
    );
    tasks.push(tokio::spawn(import_journal_periodically(
        home.clone(),
        keys.clone(),
    )));
    Ok(tasks)
}

/// Step 8, ready: the journal imported once more (a `creds issue` that found no running
/// appliance while this one started has journalled its key, and must be admitted when it is
/// up), then `runtime.json` for the CLI.
async fn announce_ready(
    home: &Home,
    keys: &KeyStore,
    runtime: &RuntimeInfo,
    ready_after: Duration,
) -> Result<(), UpError> {
    import_journal(home, keys).await;
    let text = serde_json::to_vec_pretty(runtime).unwrap_or_default();
    home::write_atomic(&home.runtime_file(), &text, home::SECRET_MODE)?;
    tracing::info!(ready_ms = ready_after.as_millis() as u64, url = %runtime.url, "zester is ready");
    // A `Type=notify` unit (config/systemd/zester.service) starts what depends on zester now.
    crate::net::notify::tell(&format!(
        "READY=1\nMAINPID={}\nSTATUS=ready at {}",
        std::process::id(),
        runtime.url
    ));
    Ok(())
}

/// How many monitor ports [`start_broker`] picks before giving up.
const PICK_PORT_ATTEMPTS: u32 = 3;

/// `at` itself, or for port 0 `at`'s host with a port free a moment ago.
fn pick_port(at: &HostPort) -> Result<HostPort, UpError> {
    if at.port() != 0 {
        return Ok(at.clone());
    }
    let key = "server.monitor";
    let resolve = |source| BrokerError::Resolve {
        key,
        value: at.to_string(),
        source,
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(at.host(), 0))
        .map_err(resolve)?
        .next()
        .ok_or_else(|| resolve(std::io::Error::from(std::io::ErrorKind::AddrNotAvailable)))?;
    let cannot_listen = |source| BrokerError::CannotListen {
        key,
        flag: "--monitor",
        addr,
        source,
    };
    let port = std::net::TcpListener::bind(addr)
        .and_then(|listener| listener.local_addr())
        .map_err(cannot_listen)?
        .port();
    Ok(HostPort::parse(key, &join_host_port(at.host(), port))?)
}

/// The URL this node's own clients (services, store, the CLI through `runtime.json`) reach its
/// nats-server at: the listen address, or loopback where it listens on every address. Always
/// 127.0.0.1 before, which a node listening on one address of its own (`10.0.0.5:4222`, the
/// address it gives the others of a cluster) refuses: `zester up` failed to start there.
fn local_client_url(listen: &HostPort, port: u16) -> String {
    let host = match listen.host().parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) if ip.is_unspecified() => "127.0.0.1",
        Ok(std::net::IpAddr::V6(ip)) if ip.is_unspecified() => "::1",
        _ => listen.host(),
    };
    format!("tls://{}", join_host_port(host, port))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A damaged home does not brick the appliance: an account JWT whose revocations name `*` or
/// a key of zester's own users (master, admin, the callout) would refuse zester's own
/// connections. Those entries are taken out, the account JWT is signed again (newer, so the
/// resolver takes it over the damaged one) and kept in the home, with a warning naming them.
/// Peels' revocations stay: the key store's truth is that those keys are revoked.
fn repair_revocations(
    home: &Home,
    mut authority: crate::authority::Authority,
    own_users: &std::collections::HashMap<UserKey, Role>,
    now: i64,
) -> Result<crate::authority::Authority, UpError> {
    let claims = authority.zester_jwt.claims();
    let damaged = crate::appliance::account::harmful_revocations(&claims.nats, |key| {
        own_users.contains_key(key)
    });
    if damaged.is_empty() {
        return Ok(authority);
    }
    let mut claims = claims.clone();
    for key in &damaged {
        claims.nats.revocations.remove(key);
    }
    claims.iat = now.max(claims.iat + 1);
    let account = authority.sign_account(claims)?;
    home::write_atomic(
        &home.zester_jwt_file(),
        format!("{}\n", account.token()).as_bytes(),
        home::PUBLIC_MODE,
    )?;
    tracing::warn!(
        removed = ?damaged,
        "the ZESTER account JWT revoked zester's own users (or everyone, \"*\"): those revocations were removed and the account JWT re-signed in auth/zester.jwt"
    );
    authority.zester_jwt = account;
    Ok(authority)
}

/// Master and admins are recognised by their keys in the home, never by what they claim: the
/// home's admin creds, and the named admins of `auth/admins.json` (`zester admin add`; once the
/// store connection is up, `appliance::admins` replaces them with the cluster's list).
fn service_roles(home: &Home) -> Result<std::collections::HashMap<UserKey, Role>, UpError> {
    let mut services = std::collections::HashMap::new();
    for (name, role) in [("master", Role::Master), ("admin", Role::Admin(None))] {
        let creds = home::read_creds(&home.service_creds(name))?;
        services.insert(UserKey::parse(&creds.key().public_key())?, role);
    }
    for admin in home::admins::AdminList::read(home)?.admins {
        let key = UserKey::parse(&admin.nkey)?;
        // A named admin never takes the place of the master's or the home admin's key.
        services.entry(key).or_insert(Role::Admin(Some(admin.name)));
    }
    Ok(services)
}

async fn connect_own(
    endpoint: &Endpoint,
    creds: &std::path::Path,
    name: &str,
    inbox_prefix: &str,
    what: &'static str,
    order: ConnectionOrder,
) -> Result<async_nats::Client, UpError> {
    let client = connect::connect_ordered(
        endpoint,
        &ClientSpec {
            creds,
            name,
            inbox_prefix,
            long_lived: true,
        },
        order,
    )
    .await
    .map_err(|source| UpError::Connect { what, source })?;
    Ok(client)
}

/// How often the session table is checked against the server's own list of connections.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
/// How soon after a restart of the child it is checked (the system connection is back).
const RECONCILE_AFTER_RESTART: Duration = Duration::from_secs(1);

/// How many checks in a row another server may leave unanswered before its sessions are
/// forgotten (it died without a shutdown event; a route down for one check is not enough).
const UNANSWERED_CHECKS: u32 = 2;

/// Forgets the sessions the servers no longer list (their disconnect events were missed):
/// those on `own` server, and in a cluster those on every other server the table holds
/// sessions of (the other nodes' admissions are filed here too). Sessions admitted within the
/// server's auth timeout are kept: under load the server may not list yet a connection whose
/// answer it is still processing. Another server that leaves [`UNANSWERED_CHECKS`] checks in a
/// row unanswered (`unanswered` counts them) is gone, and so are its sessions.
async fn reconcile_sessions(
    sys: async_nats::Client,
    state: Arc<CalloutState>,
    account: String,
    own: String,
    unanswered: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
) {
    let mut servers = state.sessions.servers();
    if !servers.contains(&own) {
        servers.push(own.clone());
    }
    for server in servers {
        let listed_at = now_unix() - i64::from(crate::wire::AUTH_TIMEOUT_SECS);
        let listed = crate::appliance::connz::list_on(&sys, &server, &account, None).await;
        let mut misses = unanswered.lock().unwrap_or_else(|p| p.into_inner());
        let Some(connections) = listed else {
            if server == own {
                continue;
            }
            let missed = misses.entry(server.clone()).or_default();
            *missed += 1;
            if *missed >= UNANSWERED_CHECKS {
                misses.remove(&server);
                let dropped = state.sessions.forget_server(&server);
                tracing::info!(
                    dropped,
                    server = %server,
                    "forgot the sessions of a server that no longer answers"
                );
            }
            continue;
        };
        misses.remove(&server);
        drop(misses);
        let live: std::collections::HashSet<u64> = connections.iter().map(|c| c.cid).collect();
        let dropped = state.sessions.reconcile(&server, &live, listed_at);
        if dropped > 0 {
            tracing::info!(
                dropped,
                server = %server,
                "forgot sessions the server no longer has (missed disconnect events)"
            );
        }
    }
}

/// How often the system connection's server id is compared with the last one seen.
const SERVER_CHECK: Duration = Duration::from_millis(250);

/// One of zester's own per-run connections (`(name, inbox prefix)`), signing in through the
/// callout with creds held in memory, reconnecting only once the callout is back.
async fn connect_own_in_memory(
    endpoint: &Endpoint,
    creds: Arc<Creds>,
    (name, inbox_prefix): (&str, &str),
    what: &'static str,
    callout: &connect::Presence,
) -> Result<async_nats::Client, UpError> {
    let order = ConnectionOrder {
        announce: None,
        after: Some(callout.clone()),
    };
    connect::connect_in_memory(endpoint, creds, name, inbox_prefix, order)
        .await
        .map_err(|source| UpError::Connect { what, source })
}

/// Audits refusals the server makes before the callout sees the client, forgets sessions
/// that closed (every server's disconnect events reach every node), and those of a server
/// that is gone: this node's previous one after a restart of the child, one that announced
/// its shutdown, one that stopped answering ([`reconcile_sessions`]).
async fn watch_server_events(
    sys: async_nats::Client,
    state: Arc<CalloutState>,
    audit: AuditSink,
    account: String,
) -> Result<tokio::task::JoinHandle<()>, UpError> {
    let mut auth_errors = sys
        .subscribe("$SYS.SERVER.*.CLIENT.AUTH.ERR")
        .await
        .map_err(|e| nats_error("subscribing to auth-error events")(e.into()))?;
    let mut disconnects = sys
        .subscribe(format!("$SYS.ACCOUNT.{account}.DISCONNECT"))
        .await
        .map_err(|e| nats_error("subscribing to disconnect events")(e.into()))?;
    let mut shutdowns = sys
        .subscribe("$SYS.SERVER.*.SHUTDOWN")
        .await
        .map_err(|e| nats_error("subscribing to shutdown events")(e.into()))?;
    let unanswered = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    sys.flush()
        .await
        .map_err(|e| nats_error("subscribing to server events")(e.into()))?;
    let mut server_check = tokio::time::interval(SERVER_CHECK);
    let mut live_server = sys.server_info().server_id;
    let mut next_reconcile = std::time::Instant::now() + RECONCILE_EVERY;
    let mut follow_up: Option<std::time::Instant> = None;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = server_check.tick() => {
                    // A restarted child is a new server: the old one's sessions are gone with
                    // it and will never be reported closed.
                    let now_on = sys.server_info().server_id;
                    if now_on != live_server && !now_on.is_empty() {
                        // Only the old server's: in a cluster the table also holds the
                        // sessions on the other nodes' servers, which are still there.
                        let dropped = state.sessions.forget_server(&live_server);
                        tracing::info!(dropped, "nats-server restarted: forgot the old server's sessions");
                        live_server = now_on;
                        // Disconnects of the new server while this connection was still away
                        // were never heard: check the table against the server soon, and once
                        // more when those sessions are past the grace of the check.
                        next_reconcile = std::time::Instant::now() + RECONCILE_AFTER_RESTART;
                        follow_up = Some(
                            std::time::Instant::now()
                                + RECONCILE_AFTER_RESTART
                                + Duration::from_secs(u64::from(crate::wire::AUTH_TIMEOUT_SECS) + 1),
                        );
                    }
                    if follow_up.is_some_and(|at| std::time::Instant::now() >= at) {
                        follow_up = None;
                        next_reconcile = std::time::Instant::now();
                    }
                    if std::time::Instant::now() >= next_reconcile {
                        next_reconcile = std::time::Instant::now() + RECONCILE_EVERY;
                        tokio::spawn(reconcile_sessions(
                            sys.clone(),
                            state.clone(),
                            account.clone(),
                            live_server.clone(),
                            unanswered.clone(),
                        ));
                    }
                }
                Some(message) = auth_errors.next() => {
                    // In a cluster every node hears every server's events: each audits only
                    // its own server's, so a refusal is one record, not one per node.
                    let from = message.subject.as_str().split('.').nth(2).unwrap_or_default();
                    let own = sys.server_info().server_id;
                    if from != own && !own.is_empty() {
                        continue;
                    }
                    if let Some(record) = server_refusal(&state, &message.payload, now_unix()) {
                        audit.record(record);
                    }
                }
                Some(message) = disconnects.next() => {
                    if let Ok(event) = serde_json::from_slice::<Value>(&message.payload) {
                        let server = event["server"]["id"].as_str().unwrap_or_default();
                        let client = event["client"]["id"].as_u64().unwrap_or_default();
                        state.sessions.remove(server, client);
                    }
                }
                Some(message) = shutdowns.next() => {
                    // A server of the cluster (or this node's own) shutting down: its
                    // connections are gone with it, and their disconnects are not reported.
                    let server = message.subject.as_str().split('.').nth(2).unwrap_or_default();
                    if !server.is_empty() {
                        let dropped = state.sessions.forget_server(server);
                        tracing::info!(dropped, server, "a server shut down: forgot its sessions");
                    }
                }
                else => break,
            }
        }
    }))
}

/// An audit record for a refusal nats-server made itself (`None` for connections our callout
/// decided on, which are audited already). The server only says "Authentication Failure", so
/// the reason is diagnosed from the JWT the client presented.
pub fn server_refusal(state: &CalloutState, payload: &[u8], now: i64) -> Option<AuditRecord> {
    let event: Value = serde_json::from_slice(payload).ok()?;
    let client = &event["client"];
    let server_id = event["server"]["id"].as_str().unwrap_or_default();
    let client_id = client["id"].as_u64().unwrap_or_default();
    if state.recent.contains(server_id, client_id) {
        return None;
    }
    let presented = client["jwt"].as_str().unwrap_or_default();
    // A refusal after the server's auth timeout, at a time the callout may have missed
    // requests, is a missing answer; otherwise the server refused the client itself.
    let held = held_for(client["start"].as_str(), client["stop"].as_str());
    let unanswered = held.is_some_and(|held| held >= decide::NO_ANSWER_AFTER)
        && state.may_have_missed_requests();
    let refusal = decide::diagnose(presented, &state.trust(), now, unanswered);
    let mut record = AuditRecord::at(now, Source::Server, Verdict::Refuse);
    record.code = refusal.code().to_string();
    record.reason = format!(
        "{refusal} (refused by nats-server: {})",
        event["reason"].as_str().unwrap_or("no reason given")
    );
    record.client_ip = client["host"].as_str().unwrap_or_default().to_string();
    record.client_id = client_id;
    record.connection_name = client["name"].as_str().unwrap_or_default().to_string();
    record.nkey = crate::identity::jwt::unverified_subject(presented)
        .unwrap_or_else(|| client["user"].as_str().unwrap_or_default().to_string());
    record.peel_id = state.peel_of(&record.nkey).unwrap_or_default();
    record.server_id = server_id.to_string();
    Some(record)
}

/// How long the server held a client: from the `start` to the `stop` of its auth-error event
/// (RFC 3339 with fractions, UTC). Only the time of day is compared, across midnight too.
fn held_for(start: Option<&str>, stop: Option<&str>) -> Option<Duration> {
    fn seconds_of_day(stamp: &str) -> Option<f64> {
        let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
        let mut parts = time.splitn(3, ':');
        let hours: f64 = parts.next()?.parse().ok()?;
        let minutes: f64 = parts.next()?.parse().ok()?;
        // Seconds with an optional fraction; an offset other than Z is not expected here.
        let seconds: f64 = parts.next()?.parse().ok()?;
        Some(hours * 3600.0 + minutes * 60.0 + seconds)
    }
    let held = seconds_of_day(stop?)? - seconds_of_day(start?)?;
    let held = if held < 0.0 { held + 86_400.0 } else { held };
    Duration::try_from_secs_f64(held).ok()
}

async fn import_journal(home: &Home, keys: &KeyStore) {
    match journal::import(home, keys).await {
        Ok(report) if !report.imported.is_empty() || !report.rejected.is_empty() => {
            tracing::info!(
                imported = report.imported.len(),
                rejected = report.rejected.len(),
                "key journal imported"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("key journal import: {e}"),
    }
}

async fn import_journal_periodically(home: Home, keys: Arc<KeyStore>) {
    let mut tick = tokio::time::interval(JOURNAL_INTERVAL);
    loop {
        tick.tick().await;
        import_journal(&home, &keys).await;
    }
}

/// What the status endpoint reports from.
struct StatusSource {
    home: Home,
    /// `peels.expiry`, seconds: how long a peel's JWT is issued for.
    peel_expiry: i64,
    state: Arc<CalloutState>,
    keys: KeyCache,
    sys: async_nats::Client,
    runtime: RuntimeInfo,
    ready_after: Duration,
    supervisor: crate::appliance::broker::supervisor::InfoHandle,
    nats_version: String,
    /// This node's name (`server_name`).
    node: String,
    /// The cluster's name, `None` on a single node.
    cluster: Option<String>,
    /// The store connection (the replicas of zester's buckets).
    store: async_nats::Client,
}

impl StatusSource {
    async fn report(&self) -> Value {
        let child = self.supervisor.info();
        let connections = self.connections().await;
        let counts = self.keys.counts();
        let cluster = match &self.cluster {
            Some(name) => self.cluster_status(name).await,
            None => Value::Null,
        };
        json!({
            "node": self.node,
            "cluster": cluster,
            "zester": {
                "pid": self.runtime.pid,
                "version": env!("CARGO_PKG_VERSION"),
                "started_at": self.runtime.started_at,
                "uptime_secs": now_unix() - self.runtime.started_at,
                "ready_ms": self.ready_after.as_millis() as u64,
                "url": self.runtime.url,
                "monitor_url": self.runtime.monitor_url,
                "metrics_url": self.runtime.metrics_url,
            },
            "nats_server": {
                "pid": child.pid,
                "version": self.nats_version,
                "uptime_secs": child
                    .started_at
                    .elapsed()
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                "started_at": child
                    .started_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                "restarts": child.restarts,
            },
            "connections": connections,
            "decisions": self.state.stats.snapshot(),
            "sessions": self.state.sessions.len(),
            "keys": {
                "pending": counts.pending,
                "accepted": counts.accepted,
                "rejected": counts.rejected,
                "revoked": counts.revoked,
            },
            "expiring": self.expiring(now_unix()),
            "audit": self.state.audit().health(),
        })
    }

    /// Credentials that expire soon ([`crate::wire::expiry`]): peels that stopped renewing,
    /// zester's own creds, the server certificate, and a year ahead the CA.
    fn expiring(&self, now: i64) -> Vec<crate::wire::expiry::Expiring> {
        crate::wire::expiry::expiring(credentials(&self.home, &self.keys, self.peel_expiry), now)
    }

    /// Nodes, routes, the meta leader and the buckets' replicas, as this node sees them.
    async fn cluster_status(&self, name: &str) -> Value {
        let server = self.sys.server_info().server_id;
        let jsz = cluster::server_document(&self.sys, &server, "JSZ").await;
        let routez = cluster::server_document(&self.sys, &server, "ROUTEZ").await;
        let leader_jsz = cluster::leader_document(&self.sys, "JSZ").await;
        let js = async_nats::jetstream::new(self.store.clone());
        let mut streams = Vec::new();
        for bucket in crate::wire::subjects::BUCKETS {
            let name = format!("KV_{bucket}");
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(2), js.get_stream(&name)).await
            else {
                continue;
            };
            let info = stream.cached_info();
            let (leader, peers) = match &info.cluster {
                Some(c) => (
                    c.leader.clone(),
                    c.replicas
                        .iter()
                        .map(|p| cluster::Peer {
                            name: p.name.clone(),
                            current: p.current,
                            offline: p.offline,
                            lag: p.lag,
                        })
                        .collect(),
                ),
                None => (None, Vec::new()),
            };
            streams.push(cluster::StreamReplicas {
                stream: name,
                replicas: info.config.num_replicas,
                leader,
                peers,
            });
        }
        cluster::cluster_status(
            &self.node,
            name,
            jsz.as_ref(),
            leader_jsz.as_ref(),
            routez.as_ref(),
            &streams,
        )
    }

    async fn connections(&self) -> Option<u64> {
        let server = self.sys.server_info().server_id;
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            self.sys
                .request(format!("$SYS.REQ.SERVER.{server}.VARZ"), "".into()),
        )
        .await
        .ok()?
        .ok()?;
        let varz: Value = serde_json::from_slice(&reply.payload).ok()?;
        varz["data"]["connections"].as_u64()
    }
}

/// What the metrics read at each scrape ([`metrics::Live`]), from where each number lives.
struct MetricsSource {
    home: Home,
    /// `peels.expiry`, seconds.
    peel_expiry: i64,
    state: Arc<CalloutState>,
    keys: KeyCache,
    supervisor: crate::appliance::broker::supervisor::InfoHandle,
    audit: AuditSink,
    /// On a node of a cluster: the meta group's nodes, refreshed by `cluster::watch_nodes`.
    cluster_nodes: Option<Arc<cluster::NodeCount>>,
}

impl metrics::Live for MetricsSource {
    fn read(&self) -> metrics::Readings {
        let counts = self.keys.counts();
        metrics::Readings {
            sessions: self.state.sessions.len() as u64,
            keys: vec![
                (KeyState::Pending, counts.pending as u64),
                (KeyState::Accepted, counts.accepted as u64),
                (KeyState::Rejected, counts.rejected as u64),
                (KeyState::Revoked, counts.revoked as u64),
            ],
            nats_server_restarts: u64::from(self.supervisor.info().restarts),
            shed_requests: self.state.stats.shed(),
            audit_records_dropped: self.audit.dropped(),
            expires_in: crate::wire::expiry::soonest_by_kind(
                credentials(&self.home, &self.keys, self.peel_expiry),
                now_unix(),
            ),
            cluster_nodes: self.cluster_nodes.as_ref().map(|count| count.get()),
        }
    }
}

/// Every credential whose expiry is watched (`zester status`, the metrics): the identity JWTs
/// of accepted peels, zester's own creds, the server certificate and the CA, each with its
/// expiry and lifetime ([`crate::wire::expiry::Credential`]).
fn credentials(
    home: &Home,
    keys: &KeyCache,
    peel_lifetime: i64,
) -> Vec<crate::wire::expiry::Credential> {
    use crate::wire::expiry::CredentialKind;
    let peels = keys.all().into_iter().filter_map(move |record| {
        let exp = record
            .jwt_expires_at
            .filter(|_| record.state == KeyState::Accepted)?;
        Some((
            CredentialKind::Peel,
            record.id.to_string(),
            exp,
            peel_lifetime,
        ))
    });
    let own = home
        .own_creds_expiry()
        .into_iter()
        .map(|(name, iat, exp)| (CredentialKind::Service, name.to_string(), exp, exp - iat));
    let certificates = [
        (CredentialKind::ServerCert, home.server_cert()),
        (CredentialKind::Ca, home.ca_cert()),
    ]
    .into_iter()
    .filter_map(|(kind, path)| {
        let pem = std::fs::read_to_string(&path).ok()?;
        let summary = crate::pki::inspect_cert_pem(&pem).ok()?;
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .ok()
        };
        let (from, exp) = (unix(summary.not_before)?, unix(summary.not_after)?);
        let name = path.file_name()?.to_string_lossy().into_owned();
        Some((kind, name, exp, exp - from))
    });
    peels.chain(own).chain(certificates).collect()
}

async fn serve_status(
    service: async_nats::Client,
    source: StatusSource,
    audit: AuditSink,
) -> Result<tokio::task::JoinHandle<()>, UpError> {
    let any_node = service
        .queue_subscribe(STATUS_SUBJECT, SERVICE_QUEUE.into())
        .await
        .map_err(|e| nats_error("subscribing to the status subject")(e.into()))?;
    let this_node = service
        .subscribe(crate::wire::admin::node_status_subject(&source.node))
        .await
        .map_err(|e| nats_error("subscribing to the status subject")(e.into()))?;
    let mut requests = futures_util::stream::select(any_node, this_node);
    service
        .flush()
        .await
        .map_err(|e| nats_error("subscribing to the status subject")(e.into()))?;
    Ok(tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let Some(reply) = crate::appliance::respond::checked_reply(
                &request,
                Asker::Admin,
                Source::Status,
                &audit,
            ) else {
                continue;
            };
            crate::appliance::respond::publish(
                &service,
                reply,
                &source.report().await,
                "a status request",
            )
            .await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_url_is_the_listen_address_or_loopback() {
        let url = |listen: &str| local_client_url(&HostPort::parse("k", listen).unwrap(), 4222);
        assert_eq!(url("0.0.0.0:0"), "tls://127.0.0.1:4222");
        assert_eq!(url("[::]:0"), "tls://[::1]:4222");
        assert_eq!(url("127.0.0.1:0"), "tls://127.0.0.1:4222");
        assert_eq!(url("10.0.0.5:4222"), "tls://10.0.0.5:4222");
        assert_eq!(url("[fd00::5]:4222"), "tls://[fd00::5]:4222");
        assert_eq!(url("node-a.example:4222"), "tls://node-a.example:4222");
    }

    #[test]
    fn how_long_the_server_held_a_client() {
        let held = |a, b| held_for(Some(a), Some(b)).map(|d| d.as_millis());
        assert_eq!(
            held("2026-11-23T19:40:01.25Z", "2026-11-23T19:40:04.25Z"),
            Some(3000)
        );
        assert_eq!(
            held("2026-11-23T23:59:59.5Z", "2026-11-24T00:00:00.5Z"),
            Some(1000)
        );
        assert_eq!(held("garbage", "2026-11-24T00:00:00Z"), None);
        assert_eq!(held_for(None, Some("2026-11-24T00:00:00Z")), None);
    }

    /// A bucket whose cluster is not ready fails transiently three times, then opens; `tries`
    /// counts how often it was asked.
    async fn open_on_the_fourth(tries: &std::cell::Cell<u32>) -> Result<&'static str, String> {
        tries.set(tries.get() + 1);
        match tries.get() {
            1..=3 => Err("no suitable peers for placement, peer offline (code 400)".into()),
            _ => Ok("opened"),
        }
    }

    #[tokio::test]
    async fn a_settling_cluster_is_waited_for_and_a_single_node_gives_up_in_time() {
        // Without a limit (a node of a cluster): asked until it opens.
        let tries = std::cell::Cell::new(0);
        let opened = asked_until_settled("b", None, || open_on_the_fourth(&tries)).await;
        assert_eq!((opened, tries.get()), (Ok("opened"), 4));
        // With one (a single node): the transient error it still had at the limit is returned.
        let tries = std::cell::Cell::new(0);
        let limit = Some(Duration::from_millis(1500));
        let opened = asked_until_settled("b", limit, || open_on_the_fourth(&tries)).await;
        assert!(tries.get() < 4, "asked {} times", tries.get());
        assert!(opened.is_err_and(|e| e.contains("no suitable peers")));
        // Any other error at once.
        let tries = std::cell::Cell::new(0);
        let opened = asked_until_settled("b", None, || async {
            tries.set(tries.get() + 1);
            Err::<(), _>("permissions violation".to_string())
        })
        .await;
        assert_eq!(
            (opened, tries.get()),
            (Err("permissions violation".into()), 1)
        );
    }
}
