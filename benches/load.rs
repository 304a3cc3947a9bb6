//! Load runner (not a test, and not part of `cargo bench`): a fleet of real peel agents in one
//! process against a real `zester up`, then a `kill -9` of its nats-server child and the storm
//! of reconnects that follows. Run it with `scripts/load` (which passes its flags on).
//!
//! One run, all on 127.0.0.1 with ports the OS picks, inside one temp directory:
//!
//! 1. **Fleet.** Initialises a home, issues `--peels` peel creds (1,000 by default) and
//!    registers their keys in the journal the way `zester creds issue` does.
//! 2. **Appliance.** Spawns the release `zester` binary as `zester up`: its RSS is the one the
//!    report gives, apart from this process and from nats-server.
//! 3. **Connect.** Starts one [`Agent`] per peel (the real peel agent: TLS, creds read at every
//!    connect, facts, command subscription, reconnects after 2 s plus jitter), a few at a time.
//! 4. **Steady.** For `--duration` seconds every peel publishes `--rate` msg/s on
//!    `zester.event.<id>.load`, each payload naming its sender. The master listens on
//!    `zester.event.*.load`. Hostile traffic rides along: once a second every peel tries to
//!    publish as its neighbour, and every peel holds subscriptions to its neighbour's commands
//!    and to all events, while the master commands every peel now and then. The server must
//!    deny all of it: a message the master gets whose payload names another peel than its
//!    subject, or any message on a peel's hostile subscriptions, is an **unauthorised
//!    delivery** and must stay at 0.
//! 5. **Restart.** `kill -9` of the nats-server child. zester's supervisor restarts it and the
//!    agents reconnect on their own; the runner reports when every peel has re-authenticated
//!    (its client counted a new connect, which async-nats does only after the server's PONG, so
//!    after the callout let it in) and when the master has received a message from every peel
//!    sent over its new connection (its facts, published at every connect, or a load message:
//!    end to end through the new server). With `--rate 0` only the facts count, and a peel that
//!    is back before the master has subscribed again is never heard: "not reached" then says
//!    nothing about the peels.
//!
//! Auth failures are the agents that could not start plus every refusal in zester's audit log;
//! callout latencies come from the audit log's per-decision `micros`, per phase.
//!
//! The report is a table on stdout (and JSON with `--json FILE`). There are no pass/fail
//! thresholds in here: the targets of issue 7 are printed beside the figures.
//!
//! Every process it starts, it stops: zester gets SIGTERM (and stops its child) at the end or
//! when the runner fails, SIGKILL if it does not exit in time; the kernel's parent-death signal
//! covers a crash of zester itself.

use std::collections::HashMap;
use std::io::{BufRead, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};

use zester::appliance::keys::{journal, KeyRecord};
use zester::cli::client::admin_request;
use zester::home::runtime::RuntimeInfo;
use zester::home::{self, now_unix, Home};
use zester::identity::peel_id::PeelId;
use zester::net::connect::{self, ClientSpec, Endpoint};
use zester::peel::agent::{Agent, AgentOptions};
use zester::permissions::{ADMIN_INBOX_PREFIX, MASTER_INBOX_PREFIX};
use zester::wire::admin::STATUS_SUBJECT;

#[path = "common/proc_stat.rs"]
mod proc_stat;
use proc_stat::cpu_seconds;

/// Creds lifetime: longer than any run.
const CREDS_TTL: i64 = 24 * 3600;
/// Agents starting at once in the connect phase.
const DEFAULT_CONNECT_CONCURRENCY: usize = 64;
/// How long `zester up` may take to be ready with every key imported.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the fleet may take to come back after the restart before the runner gives up.
const RESTART_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the restart phase looks at the clients.
const RESTART_POLL: Duration = Duration::from_millis(20);
/// Progress lines in the steady phase.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How often the master commands every peel (on `zester.cmd.<id>`), so that the neighbours'
/// hostile subscriptions have something they could wrongly receive.
const COMMAND_EVERY: Duration = Duration::from_secs(5);
/// Lets messages in flight arrive before counting.
const SETTLE: Duration = Duration::from_secs(2);
/// How long the admin API may stay unreachable after the fleet is back.
const STATUS_AFTER_RESTART_TIMEOUT: Duration = Duration::from_secs(30);
/// How long zester may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Targets from issue 7, printed beside the results.
const TARGET_STORM: Duration = Duration::from_secs(15);
const TARGET_RSS_MB: f64 = 40.0;

const USAGE: &str = "\
zester load runner: real peel agents against a real `zester up`, then a nats-server restart.

usage: scripts/load [--peels N] [--rate MSG_PER_SEC] [--duration SECS] [--no-restart]
                    [--no-hostile] [--connect-concurrency N] [--json FILE]
       scripts/load --storm      (10,000 peels, 1 msg/s each, 20 s steady, then the restart)

  --peels N                peels (agents) in the fleet              [default 1000]
  --rate M                 messages per second per peel, 0 for none [default 50]
  --duration SECS          length of the steady phase               [default 60]
  --no-restart             skip the kill -9 of nats-server at the end
  --no-hostile             no forged publishes or hostile subscriptions
  --connect-concurrency N  agents starting at once                  [default 64]
  --json FILE              also write the results as JSON to FILE
  --native                 baseline: the same fleet size, TLS and reconnect pacing, but every
                           client signs in with the system account's creds, which nats-server
                           checks itself (no callout); no traffic; then the restart

Issue 7's figures: `--peels 1000 --rate 50 --duration 600` and `--storm`.";

#[derive(Debug, Clone)]
struct Args {
    peels: usize,
    rate: u32,
    duration: Duration,
    restart: bool,
    connect_concurrency: usize,
    hostile: bool,
    native: bool,
    json: Option<PathBuf>,
}

impl Args {
    fn parse(mut raw: impl Iterator<Item = String>) -> Result<Args> {
        let mut args = Args {
            peels: 1000,
            rate: 50,
            duration: Duration::from_secs(60),
            restart: true,
            connect_concurrency: DEFAULT_CONNECT_CONCURRENCY,
            hostile: true,
            native: false,
            json: None,
        };
        while let Some(flag) = raw.next() {
            let mut value = |name: &str| {
                raw.next()
                    .ok_or_else(|| anyhow!("{name} needs a value\n\n{USAGE}"))
            };
            match flag.as_str() {
                // `cargo bench` adds this one.
                "--bench" => {}
                "--peels" => args.peels = positive(&flag, &value(&flag)?)?,
                "--rate" => {
                    let text = value(&flag)?;
                    args.rate = text
                        .parse()
                        .map_err(|_| anyhow!("--rate {text:?}: not a whole number"))?;
                }
                "--duration" => {
                    args.duration = Duration::from_secs(positive(&flag, &value(&flag)?)? as u64)
                }
                "--no-restart" => args.restart = false,
                "--no-hostile" => args.hostile = false,
                "--native" => args.native = true,
                "--connect-concurrency" => {
                    args.connect_concurrency = positive(&flag, &value(&flag)?)?
                }
                "--json" => args.json = Some(PathBuf::from(value(&flag)?)),
                "--storm" => {
                    args.peels = 10_000;
                    args.rate = 1;
                    args.duration = Duration::from_secs(20);
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n\n{USAGE}"),
            }
        }
        Ok(args)
    }
}

fn positive(flag: &str, text: &str) -> Result<usize> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{flag} {text:?}: not a positive whole number"),
    }
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("load: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = std::env::var_os("ZESTER_LOAD_TRACE") {
        if let Ok(file) = std::fs::File::create(path) {
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            print_report(&args, &report);
            if let Some(path) = &args.json {
                if let Err(e) = std::fs::write(path, report.to_string()) {
                    eprintln!("load: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `zester up` as a child process; stopped (SIGTERM, then SIGKILL) when dropped.
struct ZesterUp {
    child: Child,
}

impl ZesterUp {
    fn spawn(home: &Home, log: &Path) -> Result<ZesterUp> {
        let log_file = std::fs::File::create(log).context("creating the zester log")?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_zester"));
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM zester when
        // this process dies (also by a signal), so a killed run leaves nothing behind.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .arg("--home")
            .arg(home.root())
            .args(["up", "--listen", "127.0.0.1:0", "--monitor", "127.0.0.1:0"])
            .env(
                "ZESTER_LOG",
                std::env::var("ZESTER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("spawning zester up")?;
        Ok(ZesterUp { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ZesterUp {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signals our own child, which has not been reaped (try_wait saw it run).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("load: zester did not stop within {STOP_TIMEOUT:?}: killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One peel of the fleet, before it runs.
struct PeelSpec {
    id: PeelId,
    creds: PathBuf,
}

/// What the runner counts while the fleet runs; indexed by peel number.
struct Counters {
    started: Instant,
    sent: AtomicU64,
    received: AtomicU64,
    /// Per peel: when (ms since `started`) the master last heard from it.
    last_heard_ms: Vec<AtomicU64>,
    unauthorised: AtomicU64,
    /// The first few unauthorised deliveries, for the report.
    unauthorised_examples: std::sync::Mutex<Vec<String>>,
    publish_errors: AtomicU64,
    /// Publishers skip their ticks while set.
    paused: AtomicBool,
    stop: AtomicBool,
}

impl Counters {
    fn new(peels: usize) -> Counters {
        Counters {
            started: Instant::now(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_heard_ms: (0..peels).map(|_| AtomicU64::new(0)).collect(),
            unauthorised: AtomicU64::new(0),
            unauthorised_examples: std::sync::Mutex::new(Vec::new()),
            publish_errors: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn unauthorised(&self, what: String) {
        self.unauthorised.fetch_add(1, Ordering::Relaxed);
        let mut examples = self
            .unauthorised_examples
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if examples.len() < 5 {
            examples.push(what);
        }
    }
}

/// The peel ids of a fleet of `count`.
fn peel_id(index: usize) -> String {
    format!("load-{index:05}")
}

/// The peel whose subjects peel `index` tries to use.
fn neighbour(index: usize, count: usize) -> usize {
    (index + 1) % count
}

async fn run(args: &Args) -> Result<Value> {
    let scratch = tempfile::tempdir().context("creating a temp dir")?;
    let home = Home::at(scratch.path().join("home"));
    home.init(false, "localhost", now_unix())
        .context("initialising the home")?;
    let issue_started = Instant::now();
    let peels = tokio::task::block_in_place(|| issue_peels(&home, args.peels))?;
    eprintln!(
        "issued {} peel creds in {:.1} s",
        peels.len(),
        issue_started.elapsed().as_secs_f64()
    );

    // Outside the temp dir, so that it outlives a failed run.
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/load-zester.log");
    eprintln!("zester's log: {}", log.display());
    let mut zester = ZesterUp::spawn(&home, &log)?;
    let ready_started = Instant::now();
    let runtime = wait_for_runtime(&home, &mut zester).await?;
    let endpoint = Endpoint {
        url: runtime.url.clone(),
        ca: home.ca_cert(),
    };
    let admin = connect::connect(
        &endpoint,
        &ClientSpec {
            creds: &home.service_creds("admin"),
            name: "zester-load-admin",
            inbox_prefix: ADMIN_INBOX_PREFIX,
            long_lived: true,
        },
    )
    .await
    .context("connecting the admin client")?;
    if let Err(e) = wait_for_keys(&admin, args.peels, &mut zester).await {
        return Err(e.context(format!("zester's log ends with:\n{}", log_tail(&log))));
    }
    let ready_secs = ready_started.elapsed().as_secs_f64();
    eprintln!(
        "zester up (pid {}) ready with {} keys after {ready_secs:.1} s; RSS {:.1} MB",
        zester.pid(),
        args.peels,
        rss_mb(zester.pid()).0
    );

    if args.native {
        return native_baseline(args, &home, &endpoint, &admin, &mut zester).await;
    }
    let audit = home.audit_log();
    let counters = Arc::new(Counters::new(peels.len()));
    let index_of: Arc<HashMap<String, usize>> = Arc::new(
        peels
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.to_string(), i))
            .collect(),
    );
    let master = connect::connect(
        &endpoint,
        &ClientSpec {
            creds: &home.service_creds("master"),
            name: "zester-load-master",
            inbox_prefix: MASTER_INBOX_PREFIX,
            long_lived: true,
        },
    )
    .await
    .context("connecting the master")?;
    let listener = master
        .subscribe("zester.event.*.load")
        .await
        .context("master: subscribing to the load subjects")?;
    let facts = master
        .subscribe("zester.fact.*")
        .await
        .context("master: subscribing to the facts")?;
    let listen_task = tokio::spawn(listen(
        futures_util::stream::select(listener, facts),
        counters.clone(),
        index_of.clone(),
    ));
    sync_round_trip(&master).await?;

    // Connect phase.
    let audit_mark = audit_len(&audit);
    let connect_started = Instant::now();
    let options = |peel: &PeelSpec| AgentOptions {
        server: endpoint.url.clone(),
        creds: peel.creds.clone(),
        ca: Some(home.ca_cert()),
        pin: None,
    };
    let mut starts = futures_util::stream::iter(peels.iter().enumerate().map(|(i, peel)| {
        let options = options(peel);
        async move {
            let began = Instant::now();
            (i, Agent::start(options).await, began.elapsed())
        }
    }))
    .buffer_unordered(args.connect_concurrency);
    let mut agents: Vec<Option<Agent>> = (0..peels.len()).map(|_| None).collect();
    let mut start_failures = Vec::new();
    let mut connect_micros = Vec::with_capacity(peels.len());
    let mut started = 0usize;
    while let Some((i, result, took)) = starts.next().await {
        match result {
            Ok(agent) => {
                agents[i] = Some(agent);
                connect_micros.push(took.as_micros() as u64);
                started += 1;
                if started % 1000 == 0 {
                    eprintln!(
                        "  {started} agents connected ({:.1} s)",
                        connect_started.elapsed().as_secs_f64()
                    );
                }
            }
            Err(e) => start_failures.push(format!("{}: {e}", peels[i].id)),
        }
    }
    drop(starts);
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let connect_audit = read_audit(&audit, audit_mark)?;
    eprintln!(
        "{started} of {} agents connected in {connect_secs:.1} s ({} failed)",
        peels.len(),
        start_failures.len()
    );
    let agents: Arc<Vec<Option<Agent>>> = Arc::new(agents);

    // Hostile subscriptions and the traffic tasks.
    let mut tasks = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let Some(agent) = agent else { continue };
        let client = agent.client().clone();
        let neighbour_id = peel_id(neighbour(i, peels.len()));
        if args.hostile {
            tasks.push(tokio::spawn(watch_hostile(
                client.clone(),
                peels[i].id.to_string(),
                neighbour_id.clone(),
                counters.clone(),
            )));
        }
        if args.rate > 0 {
            tasks.push(tokio::spawn(publish_load(
                client,
                peels[i].id.to_string(),
                args.hostile.then_some(neighbour_id),
                args.rate,
                counters.clone(),
            )));
        }
    }
    tasks.push(tokio::spawn(command_fleet(
        master.clone(),
        peels.iter().map(|p| p.id.to_string()).collect(),
        counters.clone(),
    )));

    // Steady phase.
    let audit_mark = audit_len(&audit);
    let steady_started = Instant::now();
    let (sent_before, received_before) = (
        counters.sent.load(Ordering::Relaxed),
        counters.received.load(Ordering::Relaxed),
    );
    let mut peak_rss = rss_mb(zester.pid());
    let mut next_progress = PROGRESS_EVERY;
    while steady_started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(status) = zester.exited() {
            bail!("zester up exited during the steady phase ({status}); see its log");
        }
        let rss = rss_mb(zester.pid());
        peak_rss.0 = peak_rss.0.max(rss.0);
        peak_rss.1 = peak_rss.1.max(rss.1);
        if steady_started.elapsed() >= next_progress {
            next_progress += PROGRESS_EVERY;
            eprintln!(
                "  {:>4} s  sent {:>10}  received {:>10}  unauthorised {}  connected {}/{}  zester RSS {:.1} MB",
                steady_started.elapsed().as_secs(),
                counters.sent.load(Ordering::Relaxed),
                counters.received.load(Ordering::Relaxed),
                counters.unauthorised.load(Ordering::Relaxed),
                connected_count(&agents),
                peels.len(),
                rss.0
            );
        }
    }
    // Pause the publishers so that what was sent has time to arrive before it is counted.
    counters.paused.store(true, Ordering::Relaxed);
    let steady_secs = steady_started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let sent_steady = counters.sent.load(Ordering::Relaxed) - sent_before;
    let received_steady = counters.received.load(Ordering::Relaxed) - received_before;
    counters.paused.store(false, Ordering::Relaxed);
    let steady_audit = read_audit(&audit, audit_mark)?;
    let reconnects_steady = total_connects(&agents).saturating_sub(started as u64);

    // Restart phase.
    let restart = if args.restart {
        Some(restart_child(&admin, &agents, &counters, &audit, &mut zester).await?)
    } else {
        None
    };
    let rss_after = rss_mb(zester.pid());
    peak_rss.0 = peak_rss.0.max(rss_after.0);
    peak_rss.1 = peak_rss.1.max(rss_after.1);
    let status = admin_request(&admin, STATUS_SUBJECT, &json!({}))
        .await
        .map_err(|e| anyhow!("status: {e}"))?;

    counters.stop.store(true, Ordering::Relaxed);
    for task in &tasks {
        task.abort();
    }
    listen_task.abort();
    let whole_audit = read_audit(&audit, 0)?;
    let stopping = Instant::now();
    drop(agents);
    drop(zester);
    eprintln!(
        "stopped zester in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );

    let total_refusals = whole_audit.refused;
    let auth_failures = start_failures.len() as u64 + total_refusals;
    Ok(json!({
        "peels": peels.len(),
        "rate_per_peel": args.rate,
        "ready_secs": ready_secs,
        "connect": {
            "agents_started": started,
            "start_failures": start_failures.len(),
            "first_failures": start_failures.iter().take(5).collect::<Vec<_>>(),
            "secs": connect_secs,
            "per_sec": started as f64 / connect_secs.max(f64::EPSILON),
            "client_p50_ms": quantile(&connect_micros, 0.5) as f64 / 1000.0,
            "client_p99_ms": quantile(&connect_micros, 0.99) as f64 / 1000.0,
            "callout": connect_audit.to_json(),
        },
        "steady": {
            "secs": steady_secs,
            "sent": sent_steady,
            "received": received_steady,
            "msgs_per_sec": received_steady as f64 / steady_secs.max(f64::EPSILON),
            "delivered_ratio": received_steady as f64 / (sent_steady.max(1)) as f64,
            "reconnects": reconnects_steady,
            "callout": steady_audit.to_json(),
        },
        "restart": restart,
        "auth_failures": auth_failures,
        "refusal_codes": whole_audit.codes,
        "unauthorised_deliveries": counters.unauthorised.load(Ordering::Relaxed),
        "unauthorised_examples": counters
            .unauthorised_examples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        "publish_errors": counters.publish_errors.load(Ordering::Relaxed),
        "zester_rss_mb": {"now": rss_after.0, "peak": peak_rss.1.max(peak_rss.0)},
        "status": status,
    }))
}

/// Issues the fleet's creds (files in `<home>/peels/`) and journals their keys as accepted, on
/// a few threads (each file is synced to disk, which is what takes the time).
fn issue_peels(home: &Home, count: usize) -> Result<Vec<PeelSpec>> {
    const THREADS: usize = 8;
    let authority = home.load_authority()?;
    let now = now_unix();
    let issue = |i: usize| -> Result<PeelSpec> {
        let id = PeelId::parse(&peel_id(i))?;
        let creds = authority.issue_peel(&id, now, CREDS_TTL)?;
        let path = home.peel_creds(id.as_str());
        home::write_creds(&path, &creds)?;
        let record = KeyRecord::new_accepted(
            id.clone(),
            &creds.key().public_key(),
            "load runner",
            "creds signed by this node for the load run",
            now,
        )?;
        journal::record(home, &record)?;
        Ok(PeelSpec { id, creds: path })
    };
    let done = AtomicU64::new(0);
    let chunks: Vec<Vec<usize>> = (0..THREADS)
        .map(|t| (t..count).step_by(THREADS).collect())
        .collect();
    let mut issued: Vec<(usize, PeelSpec)> = std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let (issue, done) = (&issue, &done);
                scope.spawn(move || -> Result<Vec<(usize, PeelSpec)>> {
                    let mut out = Vec::with_capacity(chunk.len());
                    for &i in chunk {
                        out.push((i, issue(i)?));
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n % 2000 == 0 {
                            eprintln!("  issued {n} creds");
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for worker in workers {
            let part = worker
                .join()
                .map_err(|_| anyhow!("an issuing thread panicked"))??;
            all.extend(part);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    issued.sort_by_key(|(i, _)| *i);
    Ok(issued.into_iter().map(|(_, spec)| spec).collect())
}

/// The last lines of zester's log, for errors.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits for `zester up` to write its runtime file.
async fn wait_for_runtime(home: &Home, zester: &mut ZesterUp) -> Result<RuntimeInfo> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = zester.exited() {
            bail!("zester up exited ({status}) before it was ready; see its log");
        }
        if let Ok(info) = RuntimeInfo::read(home) {
            if info.pid == zester.pid() {
                return Ok(info);
            }
        }
        if Instant::now() > deadline {
            bail!("zester up was not ready within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the status shows every peel's key accepted (the journal import at start).
async fn wait_for_keys(
    admin: &async_nats::Client,
    count: usize,
    zester: &mut ZesterUp,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = zester.exited() {
            bail!("zester up exited ({status}) while importing keys; see its log");
        }
        if let Ok(status) = admin_request(admin, STATUS_SUBJECT, &json!({})).await {
            if status["keys"]["accepted"].as_u64() >= Some(count as u64) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the {count} keys were not imported within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A request the server must answer once everything before it on `client` is processed.
async fn sync_round_trip(client: &async_nats::Client) -> Result<()> {
    let inbox = client.new_inbox();
    let mut subscriber = client.subscribe(inbox.clone()).await?;
    client.publish(inbox, "sync".into()).await?;
    tokio::time::timeout(Duration::from_secs(10), subscriber.next())
        .await
        .context("no round trip within 10 s")?;
    Ok(())
}

/// The master's side: counts load messages and hears the facts every peel publishes after each
/// connect, and checks that the sender named in the payload (first word of a load message, `id`
/// of the facts) is the peel the subject belongs to.
async fn listen(
    mut messages: impl futures_util::Stream<Item = async_nats::Message> + Unpin,
    counters: Arc<Counters>,
    index_of: Arc<HashMap<String, usize>>,
) {
    while let Some(message) = messages.next().await {
        let fact = message.subject.starts_with("zester.fact.");
        let subject_peel = message
            .subject
            .split('.')
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let payload = String::from_utf8_lossy(&message.payload);
        let sender = if fact {
            serde_json::from_slice::<Value>(&message.payload)
                .ok()
                .and_then(|facts| facts["id"].as_str().map(str::to_string))
                .unwrap_or_default()
        } else {
            payload.split(' ').next().unwrap_or_default().to_string()
        };
        if sender != subject_peel {
            counters.unauthorised(format!(
                "master got {:?} on {}",
                payload,
                message.subject.as_str()
            ));
            continue;
        }
        if !fact {
            counters.received.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(&i) = index_of.get(subject_peel.as_str()) {
            counters.last_heard_ms[i].store(counters.now_ms(), Ordering::Relaxed);
        }
    }
}

/// Publishes `rate` msg/s as peel `id`, and (given a neighbour) once a second one as its
/// neighbour, which the server must deny.
async fn publish_load(
    client: async_nats::Client,
    id: String,
    neighbour_id: Option<String>,
    rate: u32,
    counters: Arc<Counters>,
) {
    let period = Duration::from_secs(1) / rate;
    // Spread the peels over the period so the fleet does not publish in lockstep.
    let offset = period.mul_f64(rand::random::<f64>());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let own = format!("zester.event.{id}.load");
    let forged = neighbour_id.map(|n| format!("zester.event.{n}.load"));
    let mut seq = 0u64;
    while !counters.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if counters.paused.load(Ordering::Relaxed) {
            continue;
        }
        seq += 1;
        let payload = format!("{id} {seq}");
        match client.publish(own.clone(), payload.clone().into()).await {
            Ok(()) => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                counters.publish_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(forged) = forged.as_ref().filter(|_| seq % u64::from(rate) == 0) {
            let _ = client.publish(forged.clone(), payload.into()).await;
        }
    }
}

/// Subscribes as peel `id` to what it must not read; anything that arrives is unauthorised.
async fn watch_hostile(
    client: async_nats::Client,
    id: String,
    neighbour_id: String,
    counters: Arc<Counters>,
) {
    let neighbour_commands = client.subscribe(format!("zester.cmd.{neighbour_id}")).await;
    let all_events = client.subscribe("zester.event.>").await;
    let (Ok(neighbour_commands), Ok(all_events)) = (neighbour_commands, all_events) else {
        return;
    };
    let mut both = futures_util::stream::select(neighbour_commands, all_events);
    while let Some(message) = both.next().await {
        counters.unauthorised(format!(
            "peel {id} received a message on {}",
            message.subject.as_str()
        ));
    }
}

/// The master sends every peel a command now and then (not a request: the agent ignores it).
async fn command_fleet(master: async_nats::Client, ids: Vec<String>, counters: Arc<Counters>) {
    let mut tick = tokio::time::interval(COMMAND_EVERY);
    while !counters.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for id in &ids {
            let _ = master
                .publish(format!("zester.cmd.{id}"), "load: hello".into())
                .await;
        }
    }
}

fn connected_count(agents: &[Option<Agent>]) -> usize {
    agents
        .iter()
        .flatten()
        .filter(|a| a.client().connection_state() == async_nats::connection::State::Connected)
        .count()
}

fn total_connects(agents: &[Option<Agent>]) -> u64 {
    agents
        .iter()
        .flatten()
        .map(|a| a.client().statistics().connects.load(Ordering::Relaxed))
        .sum()
}

/// The baseline for the storm: `--peels` plain async-nats clients with the same TLS and the
/// peel agent's reconnect pacing, signing in with the system account's service creds. That
/// account has no callout, so nats-server checks the JWT chain and the nonce itself: what is
/// left is the cost of the callout. No traffic; the restart is timed the same way.
async fn native_baseline(
    args: &Args,
    home: &Home,
    endpoint: &Endpoint,
    admin: &async_nats::Client,
    zester: &mut ZesterUp,
) -> Result<Value> {
    let creds = home.service_creds("sys");
    let started = Instant::now();
    let mut connecting = futures_util::stream::iter((0..args.peels).map(|i| {
        let (creds, ca, url) = (creds.clone(), home.ca_cert(), endpoint.url.clone());
        async move {
            let options = async_nats::ConnectOptions::with_credentials_file(&creds)
                .await
                .with_context(|| format!("reading {}", creds.display()))?;
            let pacing = Arc::new(zester::peel::agent::ReconnectPacing::default());
            zester::peel::agent::with_fleet_reconnects(options, pacing.clone())
                .event_callback(move |event| {
                    pacing.on_event(&event);
                    async {}
                })
                .require_tls(true)
                .add_root_certificates(ca)
                .name(format!("zester-load-native-{i}"))
                .connect(url.as_str())
                .await
                .with_context(|| format!("native client {i}"))
        }
    }))
    .buffer_unordered(args.connect_concurrency);
    let mut clients = Vec::with_capacity(args.peels);
    while let Some(client) = connecting.next().await {
        clients.push(client?);
        if clients.len() % 1000 == 0 {
            eprintln!(
                "  {} native clients connected ({:.1} s)",
                clients.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(connecting);
    let connect_secs = started.elapsed().as_secs_f64();

    let (_, child_pid) = child_before_restart(admin).await?;
    let connects_before: Vec<u64> = clients.iter().map(connects).collect();
    let probes: Vec<String> = (0..clients.len())
        .map(|i| format!("zester.load.native.{i}.probe"))
        .collect();
    let cpu_before = (cpu_secs(zester.pid()), cpu_secs(std::process::id()));
    eprintln!(
        "kill -9 nats-server (pid {child_pid}) with {} native clients connected",
        clients.len()
    );
    let killed = Instant::now();
    kill_child(child_pid)?;
    let (back, all_back) = wait_for_reauth(&clients, &probes, &connects_before, killed, || {
        zester.exited()
    })
    .await?;
    let (_, cpu) = child_after_restart(admin, zester, cpu_before, killed).await?;
    let report = json!({
        "mode": "native",
        "peels": clients.len(),
        "connect_secs": connect_secs,
        "reauthenticated": back,
        "all_reauthenticated_secs": all_back.map(|d| d.as_secs_f64()),
        "cpu_secs": cpu,
    });
    drop(clients);
    Ok(report)
}

/// zester's status after the restart, and the CPU seconds since the kill at `killed`: the new
/// nats-server's whole life, zester's and this process's (the clients' TLS handshakes and
/// sign-ins) since `cpu_before` (zester's, this process's), over the wall time since the kill.
async fn child_after_restart(
    admin: &async_nats::Client,
    zester: &ZesterUp,
    cpu_before: (f64, f64),
    killed: Instant,
) -> Result<(Value, Value)> {
    let wall = killed.elapsed().as_secs_f64();
    // zester's master connection, which serves the admin API, signs in through the callout
    // after the callout is back, so it may still be on its way when the clients are.
    let asked = Instant::now();
    let status = loop {
        match admin_request(admin, STATUS_SUBJECT, &json!({})).await {
            Ok(status) => break status,
            Err(e) if asked.elapsed() > STATUS_AFTER_RESTART_TIMEOUT => {
                bail!("status after the restart: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let new_child = status["nats_server"]["pid"].as_u64().unwrap_or(0) as u32;
    let cpu = json!({
        "nats_server": cpu_secs(new_child),
        "zester": cpu_secs(zester.pid()) - cpu_before.0,
        "runner": cpu_secs(std::process::id()) - cpu_before.1,
        "wall": wall,
    });
    Ok((status, cpu))
}

/// zester's status before the restart and the pid of its nats-server child.
async fn child_before_restart(admin: &async_nats::Client) -> Result<(Value, libc::pid_t)> {
    let status = admin_request(admin, STATUS_SUBJECT, &json!({}))
        .await
        .map_err(|e| anyhow!("status before the restart: {e}"))?;
    let child_pid = status["nats_server"]["pid"]
        .as_u64()
        .and_then(|p| libc::pid_t::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("the status names no nats-server pid: {status}"))?;
    Ok((status, child_pid))
}

/// `kill -9` of the nats-server child.
fn kill_child(child_pid: libc::pid_t) -> Result<()> {
    // SAFETY: signals the nats-server child zester supervises (its pid from zester's status).
    if unsafe { libc::kill(child_pid, libc::SIGKILL) } != 0 {
        bail!("kill -9 {child_pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn connects(client: &async_nats::Client) -> u64 {
    client.statistics().connects.load(Ordering::Relaxed)
}

/// Waits until every client has been let in again since `killed`: it made a new connection and
/// a request over it came back (from nats-server itself: "no responders" on a subject the client
/// may publish to but nobody serves). The round trip matters: async-nats calls a connection up
/// as soon as the server sends anything after CONNECT, nats-server sends its first PING 2 s
/// after CONNECT even while the callout is still deciding, and `flush` only empties the client's
/// own write buffer. Returns how many came back and, if all
/// did within [`RESTART_TIMEOUT`], when.
async fn wait_for_reauth(
    clients: &[async_nats::Client],
    probe_subjects: &[String],
    connects_before: &[u64],
    killed: Instant,
    mut zester_exited: impl FnMut() -> Option<std::process::ExitStatus>,
) -> Result<(usize, Option<Duration>)> {
    // Per client: not seen up yet, a probe request is out, or back.
    const WAITING: u8 = 0;
    const PROBING: u8 = 1;
    const BACK: u8 = 2;
    let state: Arc<Vec<std::sync::atomic::AtomicU8>> =
        Arc::new((0..clients.len()).map(|_| Default::default()).collect());
    let mut next_progress = Duration::from_secs(1);
    while killed.elapsed() < RESTART_TIMEOUT {
        if let Some(status) = zester_exited() {
            bail!("zester up exited during the restart ({status}); see its log");
        }
        let mut back = 0usize;
        let mut up = 0usize;
        for (i, client) in clients.iter().enumerate() {
            let says_connected =
                client.connection_state() == async_nats::connection::State::Connected;
            up += usize::from(says_connected);
            match state[i].load(Ordering::Relaxed) {
                BACK => back += 1,
                PROBING => {}
                _ => {
                    if says_connected && connects(client) > connects_before[i] {
                        state[i].store(PROBING, Ordering::Relaxed);
                        let (client, state) = (client.clone(), state.clone());
                        let subject = probe_subjects[i].clone();
                        tokio::spawn(async move {
                            let answered = tokio::time::timeout(
                                Duration::from_secs(30),
                                client.request(subject, Default::default()),
                            )
                            .await;
                            let through = match answered {
                                Ok(Ok(_)) => true,
                                Ok(Err(e)) => {
                                    e.kind() == async_nats::client::RequestErrorKind::NoResponders
                                }
                                Err(_) => false,
                            };
                            state[i].store(if through { BACK } else { WAITING }, Ordering::Relaxed);
                        });
                    }
                }
            }
        }
        if back == clients.len() {
            return Ok((back, Some(killed.elapsed())));
        }
        if killed.elapsed() >= next_progress {
            next_progress += Duration::from_secs(1);
            eprintln!(
                "  {:>3} s  {back}/{} re-authenticated ({up} say they are connected)",
                killed.elapsed().as_secs(),
                clients.len(),
            );
        }
        tokio::time::sleep(RESTART_POLL).await;
    }
    let back = state
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) == BACK)
        .count();
    Ok((back, None))
}

/// Kills nats-server with SIGKILL and measures how long the fleet takes to come back.
async fn restart_child(
    admin: &async_nats::Client,
    agents: &Arc<Vec<Option<Agent>>>,
    counters: &Arc<Counters>,
    audit: &Path,
    zester: &mut ZesterUp,
) -> Result<Value> {
    let (status, child_pid) = child_before_restart(admin).await?;
    let live: Vec<&Agent> = agents.iter().flatten().collect();
    let connects_before: Vec<u64> = live.iter().map(|a| connects(a.client())).collect();
    let audit_mark = audit_len(audit);
    let cpu_before = (cpu_secs(zester.pid()), cpu_secs(std::process::id()));
    let shed_before = status["decisions"]["shed"].as_u64().unwrap_or(0);
    eprintln!(
        "kill -9 nats-server (pid {child_pid}) with {} peels connected",
        live.len()
    );
    let killed_ms = counters.now_ms();
    let killed = Instant::now();
    kill_child(child_pid)?;

    let clients: Vec<async_nats::Client> = live.iter().map(|a| a.client().clone()).collect();
    // Peels may publish on their own event subjects; nobody serves this one.
    let probes: Vec<String> = agents
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is_some())
        .map(|(i, _)| format!("zester.event.{}.probe", peel_id(i)))
        .collect();
    let (back_count, all_back) =
        wait_for_reauth(&clients, &probes, &connects_before, killed, || {
            zester.exited()
        })
        .await?;
    let reauth_secs = all_back.map(|d| d.as_secs_f64());
    eprintln!(
        "all {} peels re-authenticated: {}",
        live.len(),
        reauth_secs.map_or("no (timed out)".to_string(), |s| format!(
            "{s:.2} s after the kill"
        ))
    );

    // End to end: a message from every peel over its new connection reached the master.
    let mut heard_all = None;
    let mut next_progress = killed.elapsed().max(Duration::from_secs(1));
    while killed.elapsed() < RESTART_TIMEOUT {
        let heard = agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.is_some())
            .filter(|(i, _)| counters.last_heard_ms[*i].load(Ordering::Relaxed) > killed_ms)
            .count();
        if heard == live.len() {
            heard_all = Some(killed.elapsed());
            break;
        }
        if killed.elapsed() >= next_progress {
            next_progress += Duration::from_secs(1);
            eprintln!(
                "  {:>3} s  {heard}/{} peels heard by the master, {} connected now",
                killed.elapsed().as_secs(),
                live.len(),
                connected_count(agents)
            );
        }
        tokio::time::sleep(RESTART_POLL).await;
    }
    let (status, cpu) = child_after_restart(admin, zester, cpu_before, killed).await?;
    tokio::time::sleep(SETTLE).await;
    let storm_audit = read_audit(audit, audit_mark)?;
    Ok(json!({
        "peels": live.len(),
        "reauthenticated": back_count,
        "all_reauthenticated_secs": reauth_secs,
        "all_heard_secs": heard_all.map(|d| d.as_secs_f64()),
        "nats_server_restarts": status["nats_server"]["restarts"],
        "shed": status["decisions"]["shed"].as_u64().unwrap_or(0) - shed_before,
        "cpu_secs": cpu,
        "new_nats_server_pid": status["nats_server"]["pid"],
        "callout": storm_audit.to_json(),
    }))
}

/// Decisions in a slice of the audit log.
#[derive(Debug, Default)]
struct AuditSummary {
    allowed: u64,
    refused: u64,
    codes: HashMap<String, u64>,
    micros: Vec<u64>,
}

impl AuditSummary {
    fn to_json(&self) -> Value {
        json!({
            "allowed": self.allowed,
            "refused": self.refused,
            "p50_us": quantile(&self.micros, 0.5),
            "p99_us": quantile(&self.micros, 0.99),
            "max_us": self.micros.iter().max().copied().unwrap_or(0),
        })
    }
}

fn audit_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The callout's decisions recorded in `path` from byte `from` on.
fn read_audit(path: &Path, from: u64) -> Result<AuditSummary> {
    let mut summary = AuditSummary::default();
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(summary);
    };
    file.seek(std::io::SeekFrom::Start(from))?;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let Ok(record) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if record["decision"] == "allow" {
            summary.allowed += 1;
            if record["source"] == "callout" {
                summary.micros.push(record["micros"].as_u64().unwrap_or(0));
            }
        } else {
            summary.refused += 1;
            let code = record["code"].as_str().unwrap_or("?").to_string();
            *summary.codes.entry(code).or_default() += 1;
        }
    }
    Ok(summary)
}

fn quantile(values: &[u64], q: f64) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// utime + stime of `pid` in seconds (0 when unreadable).
fn cpu_secs(pid: u32) -> f64 {
    cpu_seconds(Path::new(&format!("/proc/{pid}/stat")))
}

/// (VmRSS, VmHWM) of `pid` in MB; zeros where there is no `/proc`.
fn rss_mb(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn print_report(args: &Args, r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    if r["mode"] == "native" {
        let cpu = &r["cpu_secs"];
        println!();
        println!(
            "## native-auth baseline: {} clients (system account creds, no callout)",
            r["peels"]
        );
        println!();
        println!("| figure | value |");
        println!("|---|---|");
        println!(
            "| clients connected | {} in {:.1} s |",
            r["peels"],
            f(&r["connect_secs"])
        );
        match r["all_reauthenticated_secs"].as_f64() {
            Some(s) => {
                println!("| restart: all clients re-authenticated | {s:.2} s after kill -9 |")
            }
            None => println!(
                "| restart: all clients re-authenticated | not reached ({} of {}) |",
                r["reauthenticated"], r["peels"]
            ),
        }
        println!(
            "| restart CPU seconds | nats-server {:.1}, zester {:.1}, clients {:.1} over {:.1} s |",
            f(&cpu["nats_server"]),
            f(&cpu["zester"]),
            f(&cpu["runner"]),
            f(&cpu["wall"])
        );
        return;
    }
    println!();
    println!(
        "## zester load: {} peels × {} msg/s, {:.0} s steady",
        r["peels"],
        args.rate,
        f(&r["steady"]["secs"])
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| agents connected | {} of {} in {:.1} s ({:.0}/s; client p50 {:.1} ms, p99 {:.1} ms) |",
        r["connect"]["agents_started"],
        r["peels"],
        f(&r["connect"]["secs"]),
        f(&r["connect"]["per_sec"]),
        f(&r["connect"]["client_p50_ms"]),
        f(&r["connect"]["client_p99_ms"])
    );
    println!(
        "| callout decision, connect phase | p50 {} µs, p99 {} µs, max {} µs |",
        r["connect"]["callout"]["p50_us"],
        r["connect"]["callout"]["p99_us"],
        r["connect"]["callout"]["max_us"]
    );
    println!(
        "| steady traffic | {} sent, {} received ({:.0} msg/s, {:.4} delivered), {} reconnects |",
        r["steady"]["sent"],
        r["steady"]["received"],
        f(&r["steady"]["msgs_per_sec"]),
        f(&r["steady"]["delivered_ratio"]),
        r["steady"]["reconnects"]
    );
    if !r["restart"].is_null() {
        let rs = &r["restart"];
        let secs = |v: &Value| {
            v.as_f64()
                .map_or("not reached".to_string(), |s| format!("{s:.2} s"))
        };
        println!(
            "| restart: all {} peels re-authenticated | {} after kill -9 (target < {} s) |",
            rs["peels"],
            secs(&rs["all_reauthenticated_secs"]),
            TARGET_STORM.as_secs()
        );
        println!(
            "| restart: a message from every peel received | {} after kill -9 |",
            secs(&rs["all_heard_secs"])
        );
        println!(
            "| callout decision, restart storm | p50 {} µs, p99 {} µs, max {} µs ({} allowed, {} shed) |",
            rs["callout"]["p50_us"],
            rs["callout"]["p99_us"],
            rs["callout"]["max_us"],
            rs["callout"]["allowed"],
            rs["shed"]
        );
        let cpu = &rs["cpu_secs"];
        println!(
            "| restart CPU seconds | nats-server {:.1}, zester {:.1}, agents {:.1} over {:.1} s |",
            f(&cpu["nats_server"]),
            f(&cpu["zester"]),
            f(&cpu["runner"]),
            f(&cpu["wall"])
        );
    }
    println!(
        "| auth failures | {} (agent start failures {}, refusals {}) |",
        r["auth_failures"], r["connect"]["start_failures"], r["refusal_codes"]
    );
    println!(
        "| unauthorised deliveries | {} (must be 0) |",
        r["unauthorised_deliveries"]
    );
    println!(
        "| zester RSS | {:.1} MB at the end, peak {:.1} MB (target < {TARGET_RSS_MB} MB) |",
        f(&r["zester_rss_mb"]["now"]),
        f(&r["zester_rss_mb"]["peak"])
    );
    println!(
        "| zester ready with all keys | {:.1} s |",
        f(&r["ready_secs"])
    );
}
