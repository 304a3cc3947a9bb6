//! Running nats-server as a supervised child: start, ready check, restart, stop.
//!
//! A [`Supervisor`] owns one nats-server process at a time. [`Supervisor::start`] checks that
//! the configured ports are free, spawns the child and returns once it is ready: its ports file
//! (`<ports_file_dir>/<executable>_<pid>.ports`) has appeared and a TCP connect to the client
//! port succeeds. A background task then waits for the child: an exit nobody asked for is
//! followed by a restart with exponential [`Backoff`], until too many exits in a short window
//! make it give up with [`BrokerError::CrashLoop`]. [`Supervisor::shutdown`] (or dropping the
//! supervisor) stops the child with SIGTERM, then SIGKILL after `stop_timeout`, and nothing is
//! restarted after that. [`Supervisor::reload`] sends the running child SIGHUP, on which
//! nats-server reads its configuration and the files it names (the TLS certificate) again
//! without dropping connections, and waits for the child's log line saying it has done so (or
//! why not). The signal is sent by the task that waits for the child, so it can never reach a
//! process that has already been reaped (and whose pid may be reused).
//!
//! If the *first* child exits before it is ready, [`Supervisor::start`] fails at once with
//! [`BrokerError::StartFailed`] and its last output, without retrying: the config was just
//! rendered, so such an exit (a bad option, a certificate, a port) would only repeat.
//!
//! The child's stdout and stderr are read line by line; nats-server's level tag (`[INF]`,
//! `[WRN]`, `[ERR]`, `[FTL]`, `[DBG]`, `[TRC]`) picks the `tracing` level the line is re-emitted
//! at (target `nats-server`), and the last [`LOG_TAIL_LINES`] lines are kept for error messages.
//!
//! No orphans. The child runs in its own process group, so a Ctrl-C in a terminal (SIGINT to
//! the whole foreground group) reaches zester only and zester decides the stop order. That
//! makes the kernel's parent-death signal essential: before `exec` the child sets
//! `PR_SET_PDEATHSIG = SIGKILL` and then checks that its parent is still the zester process
//! that forked it (if zester died in between, it exits). So when zester is SIGKILLed, the
//! kernel kills nats-server too. The parent-death signal fires when the *thread* that forked
//! the child ends, not the process, and tokio's blocking-pool threads end when idle; so every
//! child is forked by one dedicated `zester-spawner` thread that lives as long as the process
//! (it waits on a channel whose sender is a static, which is never dropped).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc as mpsc_async, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::HostPort;

/// How many of the child's last output lines are kept for error messages.
pub const LOG_TAIL_LINES: usize = 50;

/// The `tracing` target nats-server's own output is re-emitted under.
pub const LOG_TARGET: &str = "nats-server";

/// How often the ready check looks for the ports file and tries to connect.
const READY_POLL: Duration = Duration::from_millis(25);
/// How long one ready-check connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// How long to wait for the output pipes to reach end-of-file after the child exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Ports files older than the spawn by more than this are stale (coarse file-system clocks).
const PORTS_FILE_CLOCK_SLACK: Duration = Duration::from_secs(2);

/// When and how often an unexpectedly exited child is restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// The delay doubles after each restart up to this.
    pub max: Duration,
    /// A child that stayed up this long resets the delay to `initial`.
    pub reset_after: Duration,
    /// Give up after this many unexpected exits within `crash_window`.
    pub crash_limit: u32,
    /// The window `crash_limit` counts exits in.
    pub crash_window: Duration,
}

impl Default for Backoff {
    /// 250 ms doubling to 10 s, reset after 30 s up; give up after 5 exits within 60 s.
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(30),
            crash_limit: 5,
            crash_window: Duration::from_secs(60),
        }
    }
}

/// What the supervisor runs and how patiently.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// The nats-server binary (see [`super::binary::locate`]).
    pub binary: PathBuf,
    /// The rendered config file; every restart uses the same file.
    pub config_file: PathBuf,
    /// The config's `ports_file_dir`, where the child's real ports are learnt; also the
    /// child's working directory. Created (0700) if missing.
    pub ports_file_dir: PathBuf,
    /// The client address the config asks for (checked to be free first unless port 0).
    pub listen: HostPort,
    /// The monitoring address the config asks for, if any (checked like `listen`).
    pub monitor: Option<HostPort>,
    /// How long a child may take to exit after SIGTERM before it gets SIGKILL.
    pub stop_timeout: Duration,
    /// How long a child may take to write its ports file and accept a TCP connection.
    pub ready_timeout: Duration,
    /// Restart policy.
    pub backoff: Backoff,
}

impl SupervisorSettings {
    /// Settings with the default timeouts (10 s stop, 10 s ready) and [`Backoff::default`].
    ///
    /// `monitor` is a [`HostPort`] or `None` (a config without monitoring).
    pub fn new(
        binary: impl Into<PathBuf>,
        config_file: impl Into<PathBuf>,
        ports_file_dir: impl Into<PathBuf>,
        listen: HostPort,
        monitor: impl Into<Option<HostPort>>,
    ) -> SupervisorSettings {
        SupervisorSettings {
            binary: binary.into(),
            config_file: config_file.into(),
            ports_file_dir: ports_file_dir.into(),
            listen,
            monitor: monitor.into(),
            stop_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
        }
    }
}

/// The addresses a running child really listens on (from its ports file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Client port; a loopback address when the server listens on all interfaces.
    pub client: SocketAddr,
    /// Monitoring port, if the config has one.
    pub monitor: Option<SocketAddr>,
}

/// The current child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// Process id.
    pub pid: u32,
    /// When it was spawned.
    pub started_at: SystemTime,
    /// How many replacement children have come up since the first one (0 for the first).
    pub restarts: u32,
    /// Where it listens.
    pub ports: Ports,
}

/// What happened to the child most recently (see [`Supervisor::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildEvent {
    /// A child is up and ready.
    Started {
        /// Its process id.
        pid: u32,
        /// Where it listens (a random port may differ from the previous child's).
        ports: Ports,
        /// Its [`ChildInfo::restarts`].
        restarts: u32,
    },
    /// A child exited without being asked to.
    Exited {
        /// Its process id.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// A restart is due after `delay`.
    Restarting {
        /// Restarts since the last child that stayed up long enough to reset the backoff.
        attempt: u32,
        /// How long the supervisor waits first.
        delay: Duration,
    },
    /// Too many exits: no more restarts (the fields of [`BrokerError::CrashLoop`]).
    GaveUp {
        /// Unexpected exits counted in the window.
        exits: u32,
        /// The window.
        window: Duration,
        /// The child's last output lines.
        last_log_lines: Vec<String>,
    },
    /// The child was stopped on request; supervision is over.
    Stopped,
}

/// Everything that can go wrong running nats-server.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A configured port is taken by another process; nothing was spawned.
    #[error("{addr} is already in use by another process: {hint}")]
    PortInUse {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// What to do about it.
        hint: String,
    },
    /// A configured address cannot be listened on for another reason.
    #[error(
        "cannot listen on {addr} ({key}): {source}; change {key} in zester.toml or pass {flag}"
    )]
    CannotListen {
        /// The setting (`server.listen`, `server.monitor`).
        key: &'static str,
        /// The command-line flag overriding it.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A configured host name does not resolve.
    #[error("{key} = {value}: cannot resolve the host name: {source}")]
    Resolve {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The ports file directory cannot be created.
    #[error("cannot create the nats-server ports directory {}: {source}", path.display())]
    PortsDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The binary could not be started at all.
    #[error("could not run {}: {source}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The first child did not become ready.
    #[error("nats-server did not start: {reason}{}", show_tail(log_tail))]
    StartFailed {
        /// What happened.
        reason: String,
        /// Its last output lines.
        log_tail: Vec<String>,
    },
    /// The child kept exiting; the supervisor stopped restarting it.
    #[error(
        "nats-server exited unexpectedly {exits} times within {window:?}, so zester stopped \
         restarting it; fix the cause its output shows and start zester again{}",
        show_tail(last_log_lines)
    )]
    CrashLoop {
        /// Unexpected exits counted in the window.
        exits: u32,
        /// The window.
        window: Duration,
        /// Its last output lines (over all attempts).
        last_log_lines: Vec<String>,
    },
    /// Waiting for the child failed (it may still run: check `pid`).
    #[error("could not wait for nats-server (pid {pid}) to exit: {source}")]
    Wait {
        /// The child.
        pid: u32,
        /// The OS error.
        source: io::Error,
    },
    /// The child could not be sent SIGHUP.
    #[error("could not tell nats-server (pid {pid}) to reload its configuration: {source}")]
    Reload {
        /// The child.
        pid: u32,
        /// The OS error.
        source: io::Error,
    },
    /// nats-server refused to reload its configuration.
    #[error("nats-server (pid {pid}) did not reload its configuration: {reason}")]
    ReloadFailed {
        /// The child.
        pid: u32,
        /// What nats-server said.
        reason: String,
    },
    /// nats-server did not say within the time that it had reloaded.
    #[error("nats-server (pid {pid}) did not report a finished reload within {after:?}")]
    ReloadTimedOut {
        /// The child.
        pid: u32,
        /// How long was waited.
        after: Duration,
    },
    /// Supervision has ended (stopped, or given up after a crash loop): there is no child.
    #[error("nats-server is not running under supervision any more")]
    NotSupervised,
    /// The supervising task panicked or was cancelled (a bug; the child was killed with it).
    #[error("the nats-server supervisor task ended abnormally: {reason}")]
    TaskFailed {
        /// The join error.
        reason: String,
    },
}

fn show_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return "\n(nats-server printed nothing)".to_string();
    }
    let mut out = String::from("\nlast lines nats-server printed:");
    for line in lines {
        out.push_str("\n  ");
        out.push_str(line);
    }
    out
}

/// A running, supervised nats-server; see the module documentation.
///
/// Dropping it without [`Supervisor::shutdown`] still stops the child (in the background, on
/// the runtime that started it), and the child is killed if that runtime shuts down first.
#[derive(Debug)]
pub struct Supervisor {
    info: InfoHandle,
    events: watch::Receiver<ChildEvent>,
    stop: watch::Sender<bool>,
    reload: ReloadHandle,
    task: JoinHandle<Result<(), BrokerError>>,
}

/// A reload request: answered with the pid signalled.
type ReloadRequest = oneshot::Sender<Result<u32, BrokerError>>;

/// How long a reload may take before [`ReloadHandle::reload`] gives up waiting: nats-server
/// re-authorises every client on a reload, one after another, each through the callout.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks the supervised child to reload from elsewhere (see [`Supervisor::reload_handle`]).
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    requests: mpsc_async::Sender<ReloadRequest>,
    seen: watch::Receiver<ReloadSeen>,
}

impl ReloadHandle {
    /// Sends the current child SIGHUP and waits until it says it has reloaded (its log line
    /// "Reloaded server configuration"); returns its pid. A child that is being restarted is
    /// signalled once it is ready (it has read the files anew anyway). Fails with
    /// [`BrokerError::ReloadFailed`] and nats-server's reason if it refused the new
    /// configuration, [`BrokerError::ReloadTimedOut`] after [`RELOAD_TIMEOUT`], and
    /// [`BrokerError::NotSupervised`] once supervision has ended.
    pub async fn reload(&self) -> Result<u32, BrokerError> {
        let mut seen = self.seen.clone();
        seen.borrow_and_update();
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(reply)
            .await
            .map_err(|_| BrokerError::NotSupervised)?;
        let pid = answer.await.map_err(|_| BrokerError::NotSupervised)??;
        match tokio::time::timeout(RELOAD_TIMEOUT, seen.changed()).await {
            Err(_) => Err(BrokerError::ReloadTimedOut {
                pid,
                after: RELOAD_TIMEOUT,
            }),
            Ok(Err(_)) => Err(BrokerError::NotSupervised),
            Ok(Ok(())) => match seen.borrow().failure.clone() {
                None => Ok(pid),
                Some(reason) => Err(BrokerError::ReloadFailed { pid, reason }),
            },
        }
    }
}

impl Supervisor {
    /// Checks the ports are free, spawns nats-server and returns once it is ready.
    ///
    /// Must be called inside a tokio runtime with I/O and time enabled; the supervising task
    /// runs on it.
    pub async fn start(settings: SupervisorSettings) -> Result<Supervisor, BrokerError> {
        check_free("server.listen", "--listen", &settings.listen).await?;
        if let Some(monitor) = &settings.monitor {
            check_free("server.monitor", "--monitor", monitor).await?;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&settings.ports_file_dir)
            .map_err(|source| BrokerError::PortsDir {
                path: settings.ports_file_dir.clone(),
                source,
            })?;

        let tail = LogTail::default();
        let mut child = spawn_child(&settings, &tail).await?;
        let ports = match wait_ready(&mut child, &settings).await {
            Ok(ports) => ports,
            Err(not_ready) => {
                let reason = not_ready.to_string();
                // The child is already gone or is stopped here; its output is what matters.
                let _ = terminate(child, settings.stop_timeout, &settings.ports_file_dir).await;
                return Err(BrokerError::StartFailed {
                    reason,
                    log_tail: tail.lines(),
                });
            }
        };
        tracing::info!(
            pid = child.pid,
            client = %ports.client,
            monitor = ?ports.monitor,
            "nats-server is ready"
        );
        let info = ChildInfo {
            pid: child.pid,
            started_at: child.started_at,
            restarts: 0,
            ports,
        };
        let (events_tx, events) = watch::channel(ChildEvent::Started {
            pid: child.pid,
            ports,
            restarts: 0,
        });
        let (stop, stop_rx) = watch::channel(false);
        let (reload, reloads) = mpsc_async::channel(4);
        let reload = ReloadHandle {
            requests: reload,
            seen: tail.reloads.subscribe(),
        };
        let info = InfoHandle(Arc::new(Mutex::new(info)));
        let runner = Runner {
            policy: RestartPolicy::new(settings.backoff.clone()),
            settings,
            tail,
            info: info.clone(),
            events: events_tx,
            stop: stop_rx,
            reloads,
        };
        let task = tokio::spawn(runner.run(child));
        Ok(Supervisor {
            info,
            events,
            stop,
            reload,
            task,
        })
    }

    /// The current child (the most recent one that became ready).
    pub fn info(&self) -> ChildInfo {
        self.info.info()
    }

    /// A cheap handle that reads [`Supervisor::info`] from elsewhere (a status endpoint).
    pub fn info_handle(&self) -> InfoHandle {
        self.info.clone()
    }

    /// Tells the running child to reload its configuration (SIGHUP); see [`ReloadHandle::reload`].
    pub async fn reload(&self) -> Result<u32, BrokerError> {
        self.reload.reload().await
    }

    /// A handle that asks for [`Supervisor::reload`] from elsewhere (certificate renewal).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Resolves with [`BrokerError::CrashLoop`] if and when the supervisor gives up; never
    /// resolves otherwise (also not after a shutdown). Owns what it needs, so it can sit in a
    /// `select!` beside a signal handler while the supervisor is used elsewhere.
    pub fn gave_up(&self) -> impl std::future::Future<Output = BrokerError> + Send + 'static {
        let mut events = self.events.clone();
        async move {
            loop {
                if let ChildEvent::GaveUp {
                    exits,
                    window,
                    last_log_lines,
                } = &*events.borrow_and_update()
                {
                    return BrokerError::CrashLoop {
                        exits: *exits,
                        window: *window,
                        last_log_lines: last_log_lines.clone(),
                    };
                }
                if events.changed().await.is_err() {
                    // Supervision ended without giving up.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// A receiver of the latest [`ChildEvent`]. A watch channel keeps only the newest value,
    /// so a slow reader may miss intermediate events; [`Supervisor::info`] is always current.
    pub fn subscribe(&self) -> watch::Receiver<ChildEvent> {
        self.events.clone()
    }

    /// Stops the child (SIGTERM, then SIGKILL after `stop_timeout`), reaps it, and ends
    /// supervision; nothing is restarted afterwards.
    ///
    /// Fine to call when the child is already gone. Returns the error that ended supervision
    /// early if there was one ([`BrokerError::CrashLoop`]).
    pub async fn shutdown(self) -> Result<(), BrokerError> {
        self.stop.send_replace(true);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(BrokerError::TaskFailed {
                reason: e.to_string(),
            }),
        }
    }
}

/// Reads the current [`ChildInfo`] of a [`Supervisor`] (see [`Supervisor::info_handle`]).
#[derive(Debug, Clone)]
pub struct InfoHandle(Arc<Mutex<ChildInfo>>);

impl InfoHandle {
    /// The current child (the most recent one that became ready).
    pub fn info(&self) -> ChildInfo {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The background task's state.
struct Runner {
    settings: SupervisorSettings,
    policy: RestartPolicy,
    tail: LogTail,
    info: InfoHandle,
    events: watch::Sender<ChildEvent>,
    stop: watch::Receiver<bool>,
    reloads: mpsc_async::Receiver<ReloadRequest>,
}

/// How one restart attempt went.
enum Attempt {
    Ready(Box<RunningChild>, Ports),
    Failed(String),
    Stopped,
}

impl Runner {
    async fn run(mut self, mut child: RunningChild) -> Result<(), BrokerError> {
        let mut ready_at = Instant::now();
        loop {
            let exited = tokio::select! {
                status = child.process.wait() => Some(status),
                () = stop_requested(&mut self.stop) => None,
                Some(reply) = self.reloads.recv() => {
                    // The child is not reaped before `wait` returns, so its pid is still its own.
                    let _ = reply.send(signal_reload(&child));
                    continue;
                }
            };
            let status = match exited {
                None => return self.stop_child(child).await,
                Some(Ok(status)) => status,
                Some(Err(source)) => {
                    // Cannot tell whether it still runs: kill it rather than leave it.
                    let pid = child.pid;
                    let _ = child.process.start_kill();
                    let _ = finish(child, &self.settings.ports_file_dir).await;
                    return Err(BrokerError::Wait { pid, source });
                }
            };
            let uptime = ready_at.elapsed();
            let pid = child.pid;
            let _ = finish(child, &self.settings.ports_file_dir).await;
            tracing::warn!(pid, %status, ?uptime, "nats-server exited unexpectedly");
            self.events.send_replace(ChildEvent::Exited { pid, status });
            let mut decision = self.policy.on_exit(Instant::now(), uptime);

            // Restart until a child is ready, a stop is requested, or it is a crash loop.
            child = loop {
                let (attempt, delay) = match decision {
                    Decision::GiveUp { exits } => return Err(self.give_up(exits)),
                    Decision::Restart { attempt, delay } => (attempt, delay),
                };
                tracing::info!(attempt, ?delay, "restarting nats-server");
                self.events
                    .send_replace(ChildEvent::Restarting { attempt, delay });
                let stopped = tokio::select! {
                    () = tokio::time::sleep(delay) => false,
                    () = stop_requested(&mut self.stop) => true,
                };
                if stopped {
                    self.events.send_replace(ChildEvent::Stopped);
                    return Ok(());
                }
                match self.attempt().await {
                    Attempt::Ready(child, ports) => {
                        self.started(&child, ports);
                        break *child;
                    }
                    Attempt::Stopped => {
                        self.events.send_replace(ChildEvent::Stopped);
                        return Ok(());
                    }
                    Attempt::Failed(reason) => {
                        tracing::warn!(attempt, "nats-server restart failed: {reason}");
                        decision = self.policy.on_exit(Instant::now(), Duration::ZERO);
                    }
                }
            };
            ready_at = Instant::now();
        }
    }

    /// Spawns a replacement child and waits until it is ready, or a stop is requested.
    async fn attempt(&mut self) -> Attempt {
        let mut child = match spawn_child(&self.settings, &self.tail).await {
            Ok(child) => child,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let outcome = tokio::select! {
            ready = wait_ready(&mut child, &self.settings) => Some(ready),
            () = stop_requested(&mut self.stop) => None,
        };
        let dir = &self.settings.ports_file_dir;
        match outcome {
            Some(Ok(ports)) => Attempt::Ready(Box::new(child), ports),
            None => {
                let _ = terminate(child, self.settings.stop_timeout, dir).await;
                Attempt::Stopped
            }
            Some(Err(not_ready)) => {
                let pid = child.pid;
                if let Ok(status) = terminate(child, self.settings.stop_timeout, dir).await {
                    self.events.send_replace(ChildEvent::Exited { pid, status });
                }
                Attempt::Failed(not_ready.to_string())
            }
        }
    }

    /// Records a replacement child that became ready.
    fn started(&mut self, child: &RunningChild, ports: Ports) {
        let restarts = {
            let mut info = self.info.0.lock().unwrap_or_else(PoisonError::into_inner);
            if info.ports.client != ports.client {
                tracing::warn!(
                    pid = child.pid,
                    old = %info.ports.client,
                    new = %ports.client,
                    "the restarted nats-server listens on a new client port"
                );
            }
            *info = ChildInfo {
                pid: child.pid,
                started_at: child.started_at,
                restarts: info.restarts.saturating_add(1),
                ports,
            };
            info.restarts
        };
        tracing::info!(pid = child.pid, client = %ports.client, restarts, "nats-server is ready again");
        self.events.send_replace(ChildEvent::Started {
            pid: child.pid,
            ports,
            restarts,
        });
    }

    fn give_up(&self, exits: u32) -> BrokerError {
        let window = self.settings.backoff.crash_window;
        let last_log_lines = self.tail.lines();
        self.events.send_replace(ChildEvent::GaveUp {
            exits,
            window,
            last_log_lines: last_log_lines.clone(),
        });
        let error = BrokerError::CrashLoop {
            exits,
            window,
            last_log_lines,
        };
        tracing::error!("{error}");
        error
    }

    async fn stop_child(&self, child: RunningChild) -> Result<(), BrokerError> {
        let pid = child.pid;
        let status = terminate(
            child,
            self.settings.stop_timeout,
            &self.settings.ports_file_dir,
        )
        .await?;
        tracing::info!(pid, %status, "nats-server stopped");
        self.events.send_replace(ChildEvent::Stopped);
        Ok(())
    }
}

/// Sends SIGHUP to `child`, which has not been reaped yet.
fn signal_reload(child: &RunningChild) -> Result<u32, BrokerError> {
    let pid = child.pid;
    let not_running = || BrokerError::Reload {
        pid,
        source: io::Error::from(io::ErrorKind::NotFound),
    };
    let target = child
        .process
        .id()
        .and_then(|id| libc::pid_t::try_from(id).ok())
        .ok_or_else(not_running)?;
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child's.
    if unsafe { libc::kill(target, libc::SIGHUP) } != 0 {
        return Err(BrokerError::Reload {
            pid,
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!(
        pid,
        "asked nats-server to reload its configuration (SIGHUP)"
    );
    Ok(pid)
}

/// Resolves when a stop is requested or the [`Supervisor`] is dropped.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The restart decisions, kept apart from processes and clocks so they can be unit-tested.
#[derive(Debug)]
struct RestartPolicy {
    backoff: Backoff,
    next_delay: Duration,
    attempt: u32,
    exits: VecDeque<Instant>,
}

/// What to do after an unexpected exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Restart after `delay`.
    Restart { attempt: u32, delay: Duration },
    /// Too many exits within the window.
    GiveUp { exits: u32 },
}

impl RestartPolicy {
    fn new(backoff: Backoff) -> RestartPolicy {
        RestartPolicy {
            next_delay: backoff.initial,
            attempt: 0,
            exits: VecDeque::new(),
            backoff,
        }
    }

    /// Records an exit at `now` of a child that had been ready for `uptime`.
    fn on_exit(&mut self, now: Instant, uptime: Duration) -> Decision {
        if uptime >= self.backoff.reset_after {
            self.next_delay = self.backoff.initial;
            self.attempt = 0;
        }
        self.exits.push_back(now);
        while let Some(&first) = self.exits.front() {
            if now.saturating_duration_since(first) > self.backoff.crash_window {
                self.exits.pop_front();
            } else {
                break;
            }
        }
        let exits = u32::try_from(self.exits.len()).unwrap_or(u32::MAX);
        if exits >= self.backoff.crash_limit.max(1) {
            return Decision::GiveUp { exits };
        }
        self.attempt = self.attempt.saturating_add(1);
        let delay = self.next_delay;
        self.next_delay = delay.saturating_mul(2).min(self.backoff.max);
        Decision::Restart {
            attempt: self.attempt,
            delay,
        }
    }
}

/// Binds `addr` briefly to learn whether it is free (port 0 always is).
async fn check_free(
    key: &'static str,
    flag: &'static str,
    addr: &HostPort,
) -> Result<(), BrokerError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let candidates: Vec<SocketAddr> = match addr.socket_addr() {
        Some(socket) => vec![socket],
        None => tokio::net::lookup_host((addr.host(), addr.port()))
            .await
            .map_err(|source| BrokerError::Resolve {
                key,
                value: addr.to_string(),
                source,
            })?
            .collect(),
    };
    // A name may resolve to an address family this host lacks (::1 without IPv6): only an
    // address in use, or no usable address at all, is an error.
    let mut last_error = None;
    let mut usable = false;
    for socket in candidates {
        match std::net::TcpListener::bind(socket) {
            Ok(listener) => {
                drop(listener);
                usable = true;
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let port = socket.port();
                return Err(BrokerError::PortInUse {
                    addr: socket,
                    hint: format!(
                        "change {key} in zester.toml or pass {flag} HOST:PORT, or stop the \
                         other process (`ss -ltnp 'sport = :{port}'` shows which one)"
                    ),
                });
            }
            Err(e) => last_error = Some((socket, e)),
        }
    }
    match last_error {
        Some((socket, source)) if !usable => Err(BrokerError::CannotListen {
            key,
            flag,
            addr: socket,
            source,
        }),
        _ => Ok(()),
    }
}

/// A spawned child with its output readers.
struct RunningChild {
    process: tokio::process::Child,
    pid: u32,
    started_at: SystemTime,
    readers: Vec<JoinHandle<()>>,
}

async fn spawn_child(
    settings: &SupervisorSettings,
    tail: &LogTail,
) -> Result<RunningChild, BrokerError> {
    let spawn_error = |source| BrokerError::Spawn {
        binary: settings.binary.clone(),
        source,
    };
    let mut command = std::process::Command::new(&settings.binary);
    command
        .arg("-c")
        .arg(&settings.config_file)
        .current_dir(&settings.ports_file_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    die_with_parent(&mut command);
    let started_at = SystemTime::now();
    let mut process = spawn_on_spawner_thread(command)
        .await
        .map_err(spawn_error)?;
    let Some(pid) = process.id() else {
        return Err(spawn_error(io::Error::other(
            "the process exited and was reaped before its pid was read",
        )));
    };
    let mut readers = Vec::with_capacity(2);
    if let Some(stdout) = process.stdout.take() {
        readers.push(read_output(stdout, pid, tail.clone()));
    }
    if let Some(stderr) = process.stderr.take() {
        readers.push(read_output(stderr, pid, tail.clone()));
    }
    tracing::debug!(pid, binary = %settings.binary.display(), config = %settings.config_file.display(), "spawned nats-server");
    Ok(RunningChild {
        process,
        pid,
        started_at,
        readers,
    })
}

/// Makes the kernel SIGKILL the child when the thread that forked it (the spawner) ends.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut std::process::Command) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let hook = move || {
        // SAFETY: runs in the forked child before exec; prctl, getppid and _exit are
        // async-signal-safe and nothing here allocates or takes a lock.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // zester died between fork and prctl: the signal will never come, so go now.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe calls (see above).
    unsafe {
        command.pre_exec(hook);
    }
}

/// Other Unixes have no parent-death signal; the child is still stopped on shutdown and drop.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut std::process::Command) {}

/// A request to the spawner thread.
struct SpawnRequest {
    command: std::process::Command,
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<io::Result<tokio::process::Child>>,
}

/// Forks `command` on the long-lived spawner thread (see the module documentation) and
/// registers it with the caller's runtime.
async fn spawn_on_spawner_thread(
    command: std::process::Command,
) -> io::Result<tokio::process::Child> {
    let (reply, answer) = oneshot::channel();
    let request = SpawnRequest {
        command,
        runtime: tokio::runtime::Handle::current(),
        reply,
    };
    spawner()?
        .send(request)
        .map_err(|_| io::Error::other("the zester-spawner thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the zester-spawner thread dropped the request"))?
}

/// The spawner thread's inbox, starting the thread on first use. The sender lives in a
/// static and is never dropped, so the thread never ends.
fn spawner() -> io::Result<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);
    let mut slot = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(sender) = slot.as_ref() {
        return Ok(sender.clone());
    }
    let (sender, inbox) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("zester-spawner".to_string())
        .spawn(move || {
            for request in inbox {
                let _runtime = request.runtime.enter();
                let mut command = tokio::process::Command::from(request.command);
                // Safety net: a child whose runtime goes away is killed rather than left.
                command.kill_on_drop(true);
                // The requester may have given up waiting; then the child is dropped (killed).
                let _ = request.reply.send(command.spawn());
            }
        })?;
    *slot = Some(sender.clone());
    Ok(sender)
}

/// Why a child did not become ready.
#[derive(Debug)]
enum NotReady {
    Exited(ExitStatus),
    TimedOut { after: Duration, detail: String },
    Poll(io::Error),
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::Exited(status) => write!(f, "it exited ({status}) before it was ready"),
            NotReady::TimedOut { after, detail } => {
                write!(f, "it was not ready within {after:?}: {detail}")
            }
            NotReady::Poll(e) => write!(f, "could not check on the process: {e}"),
        }
    }
}

/// Waits for the ports file and a successful TCP connect (monitor port if any, else client).
async fn wait_ready(
    child: &mut RunningChild,
    settings: &SupervisorSettings,
) -> Result<Ports, NotReady> {
    let deadline = Instant::now() + settings.ready_timeout;
    let not_before = child
        .started_at
        .checked_sub(PORTS_FILE_CLOCK_SLACK)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut detail = format!(
        "no ports file for pid {} appeared in {}",
        child.pid,
        settings.ports_file_dir.display()
    );
    loop {
        match child.process.try_wait() {
            Ok(Some(status)) => return Err(NotReady::Exited(status)),
            Ok(None) => {}
            Err(e) => return Err(NotReady::Poll(e)),
        }
        // Read again on every poll: a file caught half-written parses next time.
        if let Some(ports) = read_ports_file(&settings.ports_file_dir, child.pid, not_before) {
            // Probe the monitor port when there is one: a bare TCP probe of the TLS client port
            // makes nats-server log a "TLS handshake error" at every start.
            let probe = ports.monitor.unwrap_or(ports.client);
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(probe)).await
            {
                Ok(Ok(_)) => return Ok(ports),
                Ok(Err(e)) => detail = format!("connecting to {probe} failed: {e}"),
                Err(_) => detail = format!("connecting to {probe} timed out"),
            }
        }
        if Instant::now() >= deadline {
            return Err(NotReady::TimedOut {
                after: settings.ready_timeout,
                detail,
            });
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// SIGTERM, wait up to `timeout`, SIGKILL; then reap, drain output and remove the ports file.
async fn terminate(
    mut child: RunningChild,
    timeout: Duration,
    ports_file_dir: &Path,
) -> Result<ExitStatus, BrokerError> {
    let pid = child.pid;
    // `id()` is None once the child has been reaped, so its pid cannot have been reused.
    if let Some(raw) = child
        .process
        .id()
        .and_then(|p| libc::pid_t::try_from(p).ok())
    {
        // SAFETY: kill has no memory-safety preconditions. An error means it already exited.
        unsafe {
            libc::kill(raw, libc::SIGTERM);
        }
    }
    let status = match tokio::time::timeout(timeout, child.process.wait()).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                pid,
                ?timeout,
                "nats-server ignored SIGTERM; sending SIGKILL"
            );
            // Fails only if it exited meanwhile, which wait() below reports.
            let _ = child.process.start_kill();
            child.process.wait().await
        }
    };
    let status = status.map_err(|source| BrokerError::Wait { pid, source });
    finish(child, ports_file_dir).await;
    status
}

/// After the child exited: let the readers catch its last lines, and remove its ports file
/// (nats-server leaves it behind when killed; a later child with the same pid must not read it).
async fn finish(child: RunningChild, ports_file_dir: &Path) {
    for reader in child.readers {
        let abort = reader.abort_handle();
        if tokio::time::timeout(DRAIN_TIMEOUT, reader).await.is_err() {
            abort.abort();
        }
    }
    if let Some(path) = find_ports_file(ports_file_dir, child.pid) {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::debug!(path = %path.display(), "could not remove a stale ports file: {e}");
        }
    }
}

/// `<dir>/<anything>_<pid>.ports` (nats-server names it after its executable).
fn find_ports_file(dir: &Path, pid: u32) -> Option<PathBuf> {
    let suffix = format!("_{pid}.ports");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().ends_with(&suffix))
        .map(|entry| entry.path())
}

fn read_ports_file(dir: &Path, pid: u32, not_before: SystemTime) -> Option<Ports> {
    let path = find_ports_file(dir, pid)?;
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < not_before {
        return None;
    }
    parse_ports(&std::fs::read(&path).ok()?)
}

/// Parses a ports file: `{"nats":["tls://127.0.0.1:4222"],"monitoring":["http://…"],…}`.
///
/// A server on all interfaces lists one URL per interface address; a loopback one is
/// preferred, since the supervisor connects from the same host.
fn parse_ports(json: &[u8]) -> Option<Ports> {
    #[derive(serde::Deserialize)]
    struct PortsFile {
        #[serde(default)]
        nats: Vec<String>,
        #[serde(default)]
        monitoring: Vec<String>,
    }
    let file: PortsFile = serde_json::from_slice(json).ok()?;
    let pick = |urls: &[String]| -> Option<SocketAddr> {
        let addrs: Vec<SocketAddr> = urls
            .iter()
            .filter_map(|url| {
                url.split_once("://")
                    .map_or(url.as_str(), |(_, rest)| rest)
                    .parse()
                    .ok()
            })
            .collect();
        addrs
            .iter()
            .find(|a| a.ip().is_loopback())
            .or_else(|| addrs.first())
            .copied()
    };
    Some(Ports {
        client: pick(&file.nats)?,
        monitor: pick(&file.monitoring),
    })
}

/// The last lines of the child's output, shared by its readers and the error paths, and what
/// the child said about its last configuration reload.
#[derive(Debug, Clone)]
struct LogTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    reloads: Arc<watch::Sender<ReloadSeen>>,
}

impl Default for LogTail {
    fn default() -> LogTail {
        LogTail {
            lines: Arc::default(),
            reloads: Arc::new(watch::channel(ReloadSeen::default()).0),
        }
    }
}

/// The child's last word on a reload: how many it reported, and why the last failed, if it did.
#[derive(Debug, Clone, Default)]
struct ReloadSeen {
    count: u64,
    failure: Option<String>,
}

/// What a log message says about a reload: done, or failed with nats-server's reason.
fn reload_result(message: &str) -> Option<Result<(), &str>> {
    if let Some(reason) = message.strip_prefix("Failed to reload server configuration: ") {
        return Some(Err(reason));
    }
    message
        .starts_with("Reloaded server configuration")
        .then_some(Ok(()))
}

impl LogTail {
    fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == LOG_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn lines(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().cloned().collect()
    }

    fn reloaded(&self, result: Result<(), &str>) {
        self.reloads.send_modify(|seen| {
            seen.count = seen.count.wrapping_add(1);
            seen.failure = result.err().map(str::to_string);
        });
    }
}

/// A level tag nats-server puts in its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NatsLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

const LEVEL_TAGS: [(&str, NatsLevel); 6] = [
    ("[TRC]", NatsLevel::Trace),
    ("[DBG]", NatsLevel::Debug),
    ("[INF]", NatsLevel::Info),
    ("[WRN]", NatsLevel::Warn),
    ("[ERR]", NatsLevel::Error),
    ("[FTL]", NatsLevel::Fatal),
];

/// Splits `[pid] date time [LVL] message` into the level and the message. Lines without a tag
/// (config errors printed before logging starts, Go panics) give `None` and the whole line.
fn parse_log_line(line: &str) -> (Option<NatsLevel>, &str) {
    // The earliest tag is nats-server's own; a later one is part of the message.
    let found = LEVEL_TAGS
        .iter()
        .filter_map(|(tag, level)| line.find(tag).map(|at| (at, tag.len(), *level)))
        .min_by_key(|(at, _, _)| *at);
    match found {
        Some((at, len, level)) => {
            // One space separates tag and message; more is the message's own indentation.
            let rest = &line[at + len..];
            (Some(level), rest.strip_prefix(' ').unwrap_or(rest))
        }
        None => (None, line),
    }
}

fn read_output<R>(pipe: R, pid: u32, tail: LogTail) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        let mut limiter = LogLimiter::new(std::time::Instant::now());
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(pid, "stopped reading nats-server output: {e}");
                    return;
                }
            }
            let text = String::from_utf8_lossy(&buf);
            let line = text.trim_end();
            if line.is_empty() {
                continue;
            }
            let (level, message) = parse_log_line(line);
            match limiter.admit(std::time::Instant::now()) {
                Admit::Show => emit(level, pid, message),
                Admit::ShowAfterSuppressed(count) => {
                    tracing::warn!(target: LOG_TARGET, pid, suppressed = count, "{count} nats-server log lines were not shown (more than {LOG_LINES_PER_SEC} a second, e.g. a client flooding it with permission violations)");
                    emit(level, pid, message);
                }
                Admit::Hide => {}
            }
            if let Some(result) = reload_result(message) {
                tail.reloaded(result);
            }
            tail.push(match level {
                Some(level) => format!("{} {message}", tag_of(level)),
                None => line.to_string(),
            });
        }
    })
}

/// Child log lines shown per second at most (a burst of [`LOG_BURST`] first). nats-server logs
/// every permission violation at error level, so one misbehaving client could otherwise flood
/// zester's log and take the CPU the callout needs.
const LOG_LINES_PER_SEC: f64 = 100.0;
/// Lines that may be shown at once before the rate applies.
const LOG_BURST: f64 = 500.0;

/// What to do with one log line.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Show,
    /// Show it, after saying how many lines were hidden since the last one shown.
    ShowAfterSuppressed(u64),
    Hide,
}

/// A token bucket over log lines.
#[derive(Debug)]
struct LogLimiter {
    tokens: f64,
    last: std::time::Instant,
    suppressed: u64,
    /// When hidden lines were last reported (at most once a second).
    reported: std::time::Instant,
}

impl LogLimiter {
    fn new(now: std::time::Instant) -> LogLimiter {
        LogLimiter {
            tokens: LOG_BURST,
            last: now,
            suppressed: 0,
            reported: now,
        }
    }

    fn admit(&mut self, now: std::time::Instant) -> Admit {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * LOG_LINES_PER_SEC;
        self.tokens = (self.tokens + refill).min(LOG_BURST);
        self.last = now;
        if self.tokens < 1.0 {
            self.suppressed += 1;
            return Admit::Hide;
        }
        self.tokens -= 1.0;
        if self.suppressed == 0
            || now.saturating_duration_since(self.reported) < Duration::from_secs(1)
        {
            return Admit::Show;
        }
        self.reported = now;
        Admit::ShowAfterSuppressed(std::mem::take(&mut self.suppressed))
    }
}

fn tag_of(level: NatsLevel) -> &'static str {
    LEVEL_TAGS
        .iter()
        .find(|(_, l)| *l == level)
        .map_or("", |(tag, _)| tag)
}

fn emit(level: Option<NatsLevel>, pid: u32, message: &str) {
    // Lines quote what clients chose (connection names): control characters are shown
    // escaped, so no client can forge the look of another log line.
    let escaped;
    let message = if message.chars().any(char::is_control) {
        escaped = crate::appliance::callout::audit::escape_control(message);
        escaped.as_str()
    } else {
        message
    };
    match level {
        Some(NatsLevel::Trace) => tracing::trace!(target: LOG_TARGET, pid, "{message}"),
        Some(NatsLevel::Debug) => tracing::debug!(target: LOG_TARGET, pid, "{message}"),
        Some(NatsLevel::Info) => tracing::info!(target: LOG_TARGET, pid, "{message}"),
        Some(NatsLevel::Warn) => tracing::warn!(target: LOG_TARGET, pid, "{message}"),
        Some(NatsLevel::Error) => tracing::error!(target: LOG_TARGET, pid, "{message}"),
        Some(NatsLevel::Fatal) => {
            tracing::error!(target: LOG_TARGET, pid, fatal = true, "{message}")
        }
        // Untagged output comes from a process in trouble (usage errors, panics).
        None => tracing::warn!(target: LOG_TARGET, pid, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_flood_is_cut_down_and_counted() {
        let start = std::time::Instant::now();
        let mut limiter = LogLimiter::new(start);
        let shown = (0..2_000)
            .filter(|_| limiter.admit(start) != Admit::Hide)
            .count();
        assert_eq!(shown, LOG_BURST as usize);
        // A second later there is room for about a second's worth, and the first line shown
        // reports what was hidden.
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.admit(later), Admit::ShowAfterSuppressed(1_500));
        assert_eq!(limiter.admit(later), Admit::Show);
        // Hidden lines are reported at most once a second, however the flood goes on.
        let mut notes = 0;
        for ms in 0..3_000u64 {
            let at = later + Duration::from_millis(ms);
            for _ in 0..5 {
                if let Admit::ShowAfterSuppressed(_) = limiter.admit(at) {
                    notes += 1;
                }
            }
        }
        assert!(notes <= 3, "{notes} notes in 3 s");
    }

    #[test]
    fn log_lines_are_split_by_their_level_tag() {
        assert_eq!(
            parse_log_line("[123] 2026/11/23 17:01:10.746216 [INF] Starting nats-server"),
            (Some(NatsLevel::Info), "Starting nats-server")
        );
        assert_eq!(
            parse_log_line(
                "[7] [FTL] Error listening on port: 127.0.0.1:4222, \"address already in use\""
            ),
            (
                Some(NatsLevel::Fatal),
                "Error listening on port: 127.0.0.1:4222, \"address already in use\""
            )
        );
        assert_eq!(
            parse_log_line("[1] x [WRN] client said [ERR] oops"),
            (Some(NatsLevel::Warn), "client said [ERR] oops")
        );
        for (tag, level) in LEVEL_TAGS {
            assert_eq!(parse_log_line(&format!("[1] {tag} m")), (Some(level), "m"));
            assert_eq!(tag_of(level), tag);
        }
        assert_eq!(parse_log_line("[1] [INF]"), (Some(NatsLevel::Info), ""));
        assert_eq!(
            parse_log_line("[1] 2026/11/23 17:01:10.746337 [INF]   Version:  2.15.1"),
            (Some(NatsLevel::Info), "  Version:  2.15.1")
        );
        assert_eq!(
            parse_log_line("nats-server: a.conf:2:1: unknown field \"x\""),
            (None, "nats-server: a.conf:2:1: unknown field \"x\"")
        );
    }

    #[test]
    fn ports_files_are_parsed_preferring_loopback() {
        let ports = parse_ports(
            br#"{"nats":["tls://127.0.0.1:4222"],"monitoring":["http://127.0.0.1:8222"]}"#,
        )
        .unwrap();
        assert_eq!(ports.client, "127.0.0.1:4222".parse().unwrap());
        assert_eq!(ports.monitor, Some("127.0.0.1:8222".parse().unwrap()));

        let ports = parse_ports(
            br#"{"nats":["nats://10.1.2.3:4222","nats://127.0.0.1:4222","nats://[::1]:4222"]}"#,
        )
        .unwrap();
        assert_eq!(ports.client, "127.0.0.1:4222".parse().unwrap());
        assert_eq!(ports.monitor, None);

        let ports = parse_ports(br#"{"nats":["nats://[::1]:5000"]}"#).unwrap();
        assert_eq!(ports.client, "[::1]:5000".parse().unwrap());
        let ports = parse_ports(br#"{"nats":["nats://10.1.2.3:4222"]}"#).unwrap();
        assert_eq!(ports.client, "10.1.2.3:4222".parse().unwrap());

        assert_eq!(parse_ports(br#"{"nats":["tls://127.0.0.1:42"#), None);
        assert_eq!(
            parse_ports(br#"{"monitoring":["http://127.0.0.1:8222"]}"#),
            None
        );
        assert_eq!(parse_ports(b""), None);
    }

    fn fast() -> Backoff {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(30),
            crash_limit: 5,
            crash_window: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_gives_up_after_the_crash_limit() {
        let mut policy = RestartPolicy::new(fast());
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut delays = Vec::new();
        for i in 0..4 {
            match policy.on_exit(t0 + ms(i * 100), Duration::ZERO) {
                Decision::Restart { attempt, delay } => {
                    assert_eq!(attempt as u64, i + 1);
                    delays.push(delay);
                }
                other => panic!("exit {i}: {other:?}"),
            }
        }
        assert_eq!(delays, [ms(250), ms(500), ms(1000), ms(1000)]);
        assert_eq!(
            policy.on_exit(t0 + ms(500), Duration::ZERO),
            Decision::GiveUp { exits: 5 }
        );
    }

    #[test]
    fn exits_outside_the_window_do_not_count_and_a_long_run_resets_the_delay() {
        let mut policy = RestartPolicy::new(fast());
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // One exit every 20 s: never more than 4 within 60 s.
        for i in 0..10 {
            let decision = policy.on_exit(t0 + s(i * 20), Duration::ZERO);
            assert!(
                matches!(decision, Decision::Restart { .. }),
                "{i}: {decision:?}"
            );
        }
        // A child that stayed up 30 s starts the backoff again.
        assert_eq!(
            policy.on_exit(t0 + s(400), s(30)),
            Decision::Restart {
                attempt: 1,
                delay: Duration::from_millis(250)
            }
        );
    }

    #[test]
    fn reload_reports_are_read_from_the_log() {
        assert_eq!(
            reload_result("Reloaded server configuration (sha256:ab12)"),
            Some(Ok(()))
        );
        assert_eq!(
            reload_result(
                "Failed to reload server configuration: config reload not supported for HTTPPort: old=-1, new=8222"
            ),
            Some(Err(
                "config reload not supported for HTTPPort: old=-1, new=8222"
            ))
        );
        assert_eq!(reload_result("Reloaded: tls = enabled"), None);
        let tail = LogTail::default();
        let mut seen = tail.reloads.subscribe();
        tail.reloaded(Err("no"));
        assert!(seen.has_changed().unwrap());
        assert_eq!(seen.borrow_and_update().failure.as_deref(), Some("no"));
        tail.reloaded(Ok(()));
        assert_eq!(seen.borrow_and_update().failure, None);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let tail = LogTail::default();
        for i in 0..(LOG_TAIL_LINES + 10) {
            tail.push(format!("line {i}"));
        }
        let lines = tail.lines();
        assert_eq!(lines.len(), LOG_TAIL_LINES);
        assert_eq!(lines[0], "line 10");
        assert_eq!(
            lines[LOG_TAIL_LINES - 1],
            format!("line {}", LOG_TAIL_LINES + 9)
        );
    }

    #[test]
    fn errors_say_what_to_do() {
        let err = BrokerError::CrashLoop {
            exits: 5,
            window: Duration::from_secs(60),
            last_log_lines: vec!["[FTL] boom".into()],
        };
        let text = err.to_string();
        assert!(
            text.contains("5 times") && text.contains("[FTL] boom"),
            "{text}"
        );
        let err = BrokerError::StartFailed {
            reason: "it exited (exit status: 1) before it was ready".into(),
            log_tail: vec![],
        };
        assert!(err.to_string().contains("printed nothing"), "{err}");
    }

    #[tokio::test]
    async fn a_busy_port_is_reported_with_what_to_do() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = busy.local_addr().unwrap();
        let err = check_free("server.listen", "--listen", &HostPort::from(addr))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, BrokerError::PortInUse { addr: a, .. } if a == addr));
        for needle in [
            addr.to_string().as_str(),
            "server.listen",
            "--listen",
            "zester.toml",
        ] {
            assert!(text.contains(needle), "{needle} missing: {text}");
        }
        drop(busy);
        check_free("server.listen", "--listen", &HostPort::from(addr))
            .await
            .unwrap();
        let random = HostPort::parse("k", "127.0.0.1:0").unwrap();
        check_free("server.listen", "--listen", &random)
            .await
            .unwrap();
    }
}
