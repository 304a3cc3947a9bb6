//! Connection-rate benchmark: native JWT auth against zester's auth callout, with real TLS 1.3
//! and real peel creds, plus the callout's own decision latency, where its time goes, and
//! `zester up` time-to-ready.
//!
//! A plain bench binary (`harness = false`, no timing asserts: the numbers are for people and
//! for `scripts/bench-connect`). Run with `cargo bench --bench connect` (release profile; the
//! debug build of ed25519 is many times slower and would measure the compiler, not zester).
//!
//! What one run does, all on 127.0.0.1 with ports the OS picks, inside one temp directory:
//!
//! 1. Initialises a home and issues one peel's creds per concurrent client (default 32),
//!    registering each key in the offline journal the way `zester creds issue` does.
//! 2. Starts two targets side by side. **Native baseline**: the same nats-server binary in
//!    operator mode with a MEMORY resolver preloading SYS and the ZESTER account *without* its
//!    callout section, and TLS 1.3 with the home's server certificate; the server checks the
//!    creds itself. **Callout**: [`Appliance::start`] on the same home (the journal is imported
//!    at start), so every peel connect is decided by the in-process callout.
//! 3. Warms both up, then runs rounds of N sequential connects and rounds of the concurrent
//!    phase, each round against both targets in alternating order. Each connect is TLS +
//!    CONNECT + `flush()` (the auth round trip is complete) + close. The callout's decision
//!    latency window is reset before the sequential and before the concurrent rounds, and the
//!    CPU time of nats-server, of zester and of the clients is read around every phase.
//! 4. Replays one captured authorization request through the callout's steps one by one,
//!    single-threaded, to show where a decision's time goes.
//! 5. `zester up` time-to-ready: once restarting the home used above, on freshly initialised
//!    homes (median of several), and once on an empty home (init included).
//!
//! The appliance (and the supervisor of the native server) runs on its own tokio runtime and
//! the clients on another, so the clients' TLS handshakes do not queue behind the callout's
//! work on the same worker threads: in production they are different processes too. Both
//! still share this machine's cores with nats-server, as they would on a small node. Running
//! both targets at once and alternating them makes a neighbour's load (a build, another test)
//! hit both alike instead of skewing the ratio; an idle server costs next to nothing.
//!
//! Every child process is stopped at the end, also when something fails: supervisors stop
//! their child on drop, the runtimes kill what is left when they are dropped, and the kernel's
//! parent-death signal (set by the supervisor) covers a crash. The temp directory is declared
//! first so that it is removed last, after every process using it is gone.
//!
//! Environment: `ZESTER_BENCH_N` (sequential connects per target and round, default 300),
//! `ZESTER_BENCH_CONCURRENCY` (concurrent clients, default 32; each makes
//! `max(20, ceil(2N / concurrency))` connects per round, 640 in all with the defaults) and
//! `ZESTER_BENCH_ROUNDS` (default 3).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use zester::appliance::broker::binary;
use zester::appliance::broker::config::{quote, quote_path, HostPort};
use zester::appliance::broker::supervisor::{Supervisor, SupervisorSettings};
use zester::appliance::callout::decide::{self, Decision};
use zester::appliance::callout::protocol::{self, XKEY_HEADER};
use zester::appliance::callout::sessions::{CalloutStats, StatsSnapshot};
use zester::appliance::keys::{journal, KeyRecord};
use zester::appliance::up::{Appliance, UpOptions};
use zester::home::{self, now_unix, Home};
use zester::identity::chain;
use zester::identity::claims::UserNats;
use zester::identity::jwt;
use zester::identity::peel_id::PeelId;
use zester::net::connect::{self, ClientSpec, Endpoint};
use zester::permissions::{ADMIN_INBOX_PREFIX, AUTH_CALLOUT_SUBJECT};

#[path = "common/proc_stat.rs"]
mod proc_stat;
use proc_stat::cpu_seconds;

/// Sequential connects per target and round unless `ZESTER_BENCH_N` says otherwise.
const DEFAULT_N: usize = 300;
/// Concurrent clients unless `ZESTER_BENCH_CONCURRENCY` says otherwise.
const DEFAULT_CONCURRENCY: usize = 32;
/// Rounds per mode unless `ZESTER_BENCH_ROUNDS` says otherwise.
const DEFAULT_ROUNDS: usize = 3;
/// Connects before measuring: TLS session setup, the server's account lookups and the first
/// callout requests all have one-off costs that would otherwise land in the first samples.
const WARMUP: usize = 20;
/// Fewest connects per concurrent client, so that the phase lasts long enough to measure.
const MIN_PER_TASK: usize = 20;
/// `zester up` starts on freshly initialised homes; the median is reported.
const READY_RUNS: usize = 5;
/// Timed replays of each callout step; the median is reported.
const STEP_SAMPLES: usize = 200;
/// Creds lifetime; far longer than a run.
const CREDS_TTL: i64 = 3600;
/// One connect may take this long before it counts as an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the key store may take to show the imported peel keys.
const KEYS_TIMEOUT: Duration = Duration::from_secs(15);
/// The callout records a decision just after publishing its answer, so the client may finish
/// a moment before the last decision is counted: wait this long before reading the stats.
const STATS_SETTLE: Duration = Duration::from_millis(100);
/// Name of the appliance runtime's threads, by which zester's CPU time is told apart.
const ZESTER_THREADS: &str = "zester-side";

/// Targets from the issue, printed beside the results.
const TARGET_RATIO: f64 = 0.7;
const TARGET_P99_MICROS: u32 = 2_000;
const TARGET_READY: Duration = Duration::from_millis(1_500);

/// Target names, indexing [`Comparison::phases`].
const TARGETS: [&str; 2] = ["native", "callout"];

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; this binary takes no arguments of its own.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench connect: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run sizes, from the environment.
#[derive(Debug, Clone, Copy)]
struct Settings {
    sequential: usize,
    concurrency: usize,
    per_task: usize,
    rounds: usize,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let sequential = env_count("ZESTER_BENCH_N", DEFAULT_N)?;
        let concurrency = env_count("ZESTER_BENCH_CONCURRENCY", DEFAULT_CONCURRENCY)?;
        let per_task = (2 * sequential).div_ceil(concurrency).max(MIN_PER_TASK);
        let rounds = env_count("ZESTER_BENCH_ROUNDS", DEFAULT_ROUNDS)?;
        Ok(Settings {
            sequential,
            concurrency,
            per_task,
            rounds,
        })
    }
}

fn env_count(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{name}={text:?} is not a positive whole number"),
        },
    }
}

/// The two ways connections are made.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// One connect after another.
    Sequential,
    /// `concurrency` clients connecting in parallel.
    Concurrent,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Sequential, Mode::Concurrent];

    fn index(self) -> usize {
        self as usize
    }

    fn label(self, settings: Settings) -> String {
        match self {
            Mode::Sequential => "sequential".to_string(),
            Mode::Concurrent => format!("concurrent ({} clients)", settings.concurrency),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Concurrent => "concurrent",
        }
    }
}

/// One peel's creds, as a client would hold them.
struct Peel {
    id: String,
    nkey: String,
    creds: String,
    inbox: String,
}

/// Where clients connect, and the nats-server process behind it (for its CPU time).
#[derive(Clone)]
struct Target {
    url: String,
    ca: PathBuf,
    server_pid: u32,
}

/// CPU seconds used so far (or within a phase) by nats-server, by zester (this process's
/// appliance threads) and by this whole process. Read from `/proc` (10 ms ticks, so only
/// sums over hundreds of connects mean anything); zero where there is no `/proc`.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    server: f64,
    zester: f64,
    process: f64,
}

impl Cpu {
    fn read(server_pid: u32) -> Cpu {
        let zester = std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|name| name.trim() == ZESTER_THREADS)
            })
            .map(|task| cpu_seconds(&task.path().join("stat")))
            .sum();
        Cpu {
            server: cpu_seconds(Path::new(&format!("/proc/{server_pid}/stat"))),
            zester,
            process: cpu_seconds(Path::new("/proc/self/stat")),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            server: self.server - before.server,
            zester: self.zester - before.zester,
            process: self.process - before.process,
        }
    }

    fn add(&mut self, other: Cpu) {
        self.server += other.server;
        self.zester += other.zester;
        self.process += other.process;
    }

    /// This process minus zester's threads: the benchmark's clients.
    fn clients(&self) -> f64 {
        (self.process - self.zester).max(0.0)
    }
}

/// What one measured phase (or the sum of several) saw.
#[derive(Default)]
struct Phase {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    wall: Duration,
    /// Client-observed time of each successful connect (TLS + auth + flush), µs.
    latencies: Vec<u64>,
    cpu: Cpu,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(f64::EPSILON)
    }

    /// Adds `other` to this sum (a client task's phase has no wall time or CPU of its own;
    /// the phase it belongs to sets those for all its tasks).
    fn merge(&mut self, other: Phase) {
        self.wall += other.wall;
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
        self.cpu.add(other.cpu);
    }

    fn record(&mut self, result: Result<Duration, String>) {
        match result {
            Ok(took) => {
                self.ok += 1;
                self.latencies.push(took.as_micros() as u64);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Client-observed latency at quantile `q`, in ms.
    fn client_ms(&self, q: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return 0.0;
        }
        let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[index] as f64 / 1000.0
    }

    /// CPU ms per successful connect: (nats-server, zester, clients).
    fn cpu_per_connect(&self) -> (f64, f64, f64) {
        let per = |seconds: f64| seconds * 1000.0 / self.ok.max(1) as f64;
        (
            per(self.cpu.server),
            per(self.cpu.zester),
            per(self.cpu.clients()),
        )
    }

    fn to_json(&self) -> Value {
        let (server, zester, clients) = self.cpu_per_connect();
        json!({
            "connects": self.ok,
            "errors": self.errors,
            "wall_ms": round(self.wall.as_secs_f64() * 1000.0, 1),
            "per_sec": round(self.per_sec(), 1),
            "client_p50_ms": round(self.client_ms(0.50), 2),
            "client_p99_ms": round(self.client_ms(0.99), 2),
            "cpu_ms_per_connect": {
                "nats_server": round(server, 3),
                "zester": round(zester, 3),
                "clients": round(clients, 3),
            },
        })
    }
}

/// The comparison, summed over the rounds.
struct Comparison {
    /// `[target][mode]`, targets as in [`TARGETS`], modes as in [`Mode::ALL`].
    phases: [[Phase; 2]; 2],
    /// Callout/native rate of each round, per mode.
    ratios: [Vec<f64>; 2],
    /// The callout's decisions during each mode's rounds.
    decisions: [StatsSnapshot; 2],
}

impl Comparison {
    fn ratio(&self, mode: Mode) -> f64 {
        let m = mode.index();
        self.phases[1][m].per_sec() / self.phases[0][m].per_sec()
    }
}

/// One callout step timed on a replayed request: label, indent level, median µs.
type Step = (&'static str, usize, f64);

fn run() -> Result<()> {
    let settings = Settings::from_env()?;
    // Declared before the runtimes and the servers: locals drop in reverse order, so the
    // directory outlives every process that uses it, also when `?` returns early.
    let scratch = tempfile::Builder::new()
        .prefix("zester-bench-connect-")
        .tempdir()
        .context("creating the benchmark's temp directory")?;
    let server_rt = runtime(ZESTER_THREADS)?;
    let client_rt = runtime("bench-client")?;

    let binary =
        binary::locate(None).context("finding nats-server (run scripts/install-nats-server)")?;
    let version = binary::check_version(&binary.path)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "zester connect benchmark: nats-server {version} ({}), TLS 1.3, {cores} cores, \
         {} rounds of {} sequential and {} concurrent x {}, warm-up {WARMUP}",
        binary.path.display(),
        settings.rounds,
        settings.sequential,
        settings.concurrency,
        settings.per_task,
    );

    let home = Home::at(scratch.path().join("home"));
    home.init(false, "localhost", now_unix())
        .context("initialising the benchmark home")?;
    let peels = issue_peels(&home, settings.concurrency)?;

    eprintln!("starting the native nats-server and the appliance");
    let native_dir = scratch.path().join("native");
    let supervisor = server_rt.block_on(start_native(&home, &binary.path, &native_dir))?;
    let appliance = match server_rt.block_on(Appliance::start(home.clone(), up_options())) {
        Ok(appliance) => appliance,
        Err(e) => {
            let _ = server_rt.block_on(supervisor.shutdown());
            return Err(e).context("starting the appliance");
        }
    };
    let native = Target {
        url: format!("nats://127.0.0.1:{}", supervisor.info().ports.client.port()),
        ca: home.ca_cert(),
        server_pid: supervisor.info().pid,
    };
    let callout = Target {
        url: appliance.url().to_string(),
        ca: home.ca_cert(),
        server_pid: appliance.supervisor().info().pid,
    };
    let measured = server_rt
        .block_on(wait_for_keys(&appliance, &peels))
        .and_then(|()| {
            let comparison = compare(
                &client_rt,
                [&native, &callout],
                &peels,
                settings,
                &appliance.callout().stats,
            )?;
            eprintln!("callout: replaying a captured request step by step");
            let captured = client_rt.block_on(capture_request(&home, &callout, &peels[0]))?;
            let steps = callout_steps(&home, &appliance, &captured)?;
            Ok((comparison, steps))
        });
    server_rt.block_on(appliance.stop());
    let stopped = server_rt.block_on(supervisor.shutdown());
    let (comparison, steps) = measured?;
    stopped.context("stopping the native nats-server")?;

    // Time-to-ready. The restart reuses the home above: resolver, JetStream and key bucket
    // already exist, as on every start after the first.
    eprintln!("ready: restarting the appliance on the used home");
    let restart = time_to_ready(&server_rt, home.clone())?;
    let mut initialised = Vec::with_capacity(READY_RUNS);
    for run in 0..READY_RUNS {
        eprintln!(
            "ready: start {} of {READY_RUNS} on a freshly initialised home",
            run + 1
        );
        let fresh = Home::at(scratch.path().join(format!("ready-{run}")));
        fresh.init(false, "localhost", now_unix())?;
        initialised.push(time_to_ready(&server_rt, fresh.clone())?);
        remove_home(&fresh);
    }
    eprintln!("ready: start on an empty home (init included)");
    let empty_home = Home::at(scratch.path().join("ready-empty"));
    let empty = time_to_ready(&server_rt, empty_home.clone())?;
    remove_home(&empty_home);
    let ready = Ready {
        initialised,
        empty,
        restart,
    };

    report(settings, &version, cores, &comparison, &steps, &ready);

    // Children are gone (each stop waited for its child); now the runtimes, then the files.
    drop(client_rt);
    drop(server_rt);
    scratch
        .close()
        .context("removing the benchmark's temp directory")?;
    Ok(())
}

/// A runtime like `zester up`'s: multi-threaded, one worker per core.
fn runtime(name: &str) -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .build()
        .with_context(|| format!("building the {name} runtime"))
}

fn up_options() -> UpOptions {
    UpOptions {
        listen: Some("127.0.0.1:0".into()),
        monitor: Some("127.0.0.1:0".into()),
        nats_server: None,
        metrics: None,
        hostname: "localhost".into(),
        ..UpOptions::default()
    }
}

/// Issues `count` peels from `home` and registers their keys in its journal, exactly as
/// `zester creds issue` does, so the appliance imports them at start.
fn issue_peels(home: &Home, count: usize) -> Result<Vec<Peel>> {
    let authority = home.load_authority()?;
    let now = now_unix();
    (0..count)
        .map(|i| {
            let id = PeelId::parse(&format!("bench-{i:03}"))?;
            let creds = authority.issue_peel(&id, now, CREDS_TTL)?;
            home::write_creds(&home.peel_creds(id.as_str()), &creds)?;
            let nkey = creds.key().public_key();
            let record = KeyRecord::new_accepted(
                id.clone(),
                &nkey,
                "bench connect",
                "creds signed by this node for the benchmark",
                now,
            )?;
            journal::record(home, &record)?;
            Ok(Peel {
                inbox: format!("_INBOX.{id}"),
                id: id.to_string(),
                nkey,
                creds: creds.to_text(),
            })
        })
        .collect()
}

/// Starts the native-auth nats-server under a [`Supervisor`] with a config written by hand:
/// what `tests/interop_native_auth.rs` runs, plus the TLS and size settings `zester up` uses,
/// so that the only difference to the appliance's server is who authenticates.
async fn start_native(home: &Home, binary: &Path, dir: &Path) -> Result<Supervisor> {
    home::create_private_dir(dir)?;
    let authority = home.load_authority()?;
    let zester = authority.zester_account(false, now_unix())?;
    let config = format!(
        r#"# Benchmark baseline: the ZESTER account without its callout section (native JWT auth).
server_name: "native"
listen: "127.0.0.1:-1"
http: "127.0.0.1:-1"
max_control_line: 32768
ports_file_dir: {dir}
operator: {operator}
system_account: {sys}
resolver: MEMORY
resolver_preload {{
  {sys}: {sys_jwt}
  {zester_key}: {zester_jwt}
}}
tls {{
  cert_file: {cert}
  key_file: {key}
  ca_file: {ca}
  min_version: "1.3"
  timeout: 2
}}
"#,
        dir = quote_path(dir),
        operator = quote_path(&home.operator_jwt()),
        sys = quote(&authority.sys.public_key()),
        sys_jwt = quote(authority.sys_jwt.token()),
        zester_key = quote(&authority.zester.public_key()),
        zester_jwt = quote(zester.token()),
        cert = quote_path(&home.server_cert()),
        key = quote_path(&home.server_key()),
        ca = quote_path(&home.ca_cert()),
    );
    let config_file = dir.join("nats-server.conf");
    home::write_atomic(&config_file, config.as_bytes(), home::SECRET_MODE)?;
    let settings = SupervisorSettings::new(
        binary,
        config_file,
        dir,
        HostPort::default(),
        HostPort::default(),
    );
    Ok(Supervisor::start(settings).await?)
}

/// Waits until the key store's cache holds every peel: the journal import at start writes the
/// records, and the cache follows the bucket's watch a moment later.
async fn wait_for_keys(appliance: &Appliance, peels: &[Peel]) -> Result<()> {
    let deadline = Instant::now() + KEYS_TIMEOUT;
    loop {
        let cache = appliance.keys().cache();
        let missing: Vec<&str> = peels
            .iter()
            .filter(|p| cache.lookup_nkey(&p.nkey).is_none())
            .map(|p| p.id.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the key store still lacks {} of {} peel keys after {KEYS_TIMEOUT:?} (first: {})",
                missing.len(),
                peels.len(),
                missing[0]
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Warms both targets up, then runs the sequential rounds and the concurrent rounds, each
/// round against both targets, the order alternating from round to round.
///
/// The callout's latency window only ever holds callout decisions (native connects make
/// none), so one reset before each mode's rounds gives that mode's decisions alone.
fn compare(
    client_rt: &Runtime,
    targets: [&Target; 2],
    peels: &[Peel],
    settings: Settings,
    stats: &CalloutStats,
) -> Result<Comparison> {
    for (target, name) in targets.iter().zip(TARGETS) {
        eprintln!("{name}: warm-up ({WARMUP} connects)");
        let warm = client_rt.block_on(sequential(target, peels, WARMUP));
        if warm.ok == 0 {
            bail!(
                "{name}: no warm-up connect to {} succeeded: {}",
                target.url,
                warm.first_error.unwrap_or_default()
            );
        }
    }
    let mut comparison = Comparison {
        phases: Default::default(),
        ratios: Default::default(),
        decisions: Default::default(),
    };
    for mode in Mode::ALL {
        let m = mode.index();
        stats.reset_latencies();
        let before = stats.snapshot();
        for round in 0..settings.rounds {
            let mut rates = [0.0; 2];
            // Native first in even rounds, callout first in odd ones, so that a drift in the
            // machine's load does not always favour the same target.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for t in order {
                eprintln!(
                    "{}: round {} of {}, {}",
                    TARGETS[t],
                    round + 1,
                    settings.rounds,
                    mode.label(settings)
                );
                let phase = run_phase(client_rt, targets[t], peels, settings, mode);
                rates[t] = phase.per_sec();
                comparison.phases[t][m].merge(phase);
            }
            comparison.ratios[m].push(rates[1] / rates[0]);
        }
        std::thread::sleep(STATS_SETTLE);
        let mut decisions = stats.snapshot();
        decisions.allowed -= before.allowed;
        decisions.refused -= before.refused;
        comparison.decisions[m] = decisions;
    }
    Ok(comparison)
}

/// One phase against `target`, with the CPU time everyone spent on it.
fn run_phase(
    client_rt: &Runtime,
    target: &Target,
    peels: &[Peel],
    settings: Settings,
    mode: Mode,
) -> Phase {
    let before = Cpu::read(target.server_pid);
    let mut phase = match mode {
        Mode::Sequential => client_rt.block_on(sequential(target, peels, settings.sequential)),
        Mode::Concurrent => client_rt.block_on(concurrent(target, peels, settings)),
    };
    phase.cpu = Cpu::read(target.server_pid).since(before);
    phase
}

/// `count` connects one after another, cycling through the peels.
async fn sequential(target: &Target, peels: &[Peel], count: usize) -> Phase {
    let mut phase = Phase::default();
    let started = Instant::now();
    for i in 0..count {
        let peel = &peels[i % peels.len()];
        phase.record(connect_once(target, &peel.creds, &peel.inbox).await);
    }
    phase.wall = started.elapsed();
    phase
}

/// `settings.concurrency` clients, each with its own peel, connecting `per_task` times in a
/// row; the rate is over the wall time of the whole phase.
async fn concurrent(target: &Target, peels: &[Peel], settings: Settings) -> Phase {
    let started = Instant::now();
    let tasks: Vec<_> = (0..settings.concurrency)
        .map(|task| {
            let target = target.clone();
            let peel = &peels[task % peels.len()];
            let (creds, inbox) = (peel.creds.clone(), peel.inbox.clone());
            tokio::spawn(async move {
                let mut phase = Phase::default();
                for _ in 0..settings.per_task {
                    phase.record(connect_once(&target, &creds, &inbox).await);
                }
                phase
            })
        })
        .collect();
    let mut total = Phase::default();
    for task in tasks {
        match task.await {
            Ok(phase) => total.merge(phase),
            Err(e) => total.record(Err(format!("client task failed: {e}"))),
        }
    }
    total.wall = started.elapsed();
    total
}

/// One authenticated connection: TCP, TLS 1.3, CONNECT with the creds' JWT and nonce
/// signature, then a flush (PING/PONG) so the server has finished authenticating, then close.
async fn connect_once(target: &Target, creds: &str, inbox: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let options = async_nats::ConnectOptions::with_credentials(creds)
        .map_err(|e| format!("creds: {e}"))?
        .add_root_certificates(target.ca.clone())
        .require_tls(true)
        .custom_inbox_prefix(inbox)
        .connection_timeout(CONNECT_TIMEOUT);
    let client = options
        .connect(target.url.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tokio::time::timeout(CONNECT_TIMEOUT, client.flush())
        .await
        .map_err(|_| "flush timed out".to_string())?
        .map_err(|e| format!("flush: {e}"))?;
    let took = started.elapsed();
    // Dropping the last handle ends the connection task, which closes the socket.
    drop(client);
    Ok(took)
}

/// A real authorization request as nats-server sent it, kept for replay.
struct Captured {
    payload: Vec<u8>,
    server_xkey: Option<String>,
    /// When it arrived (unix seconds): replays use this as "now", so the request's short
    /// `exp` still holds.
    at: i64,
}

/// Listens on the callout subject beside the real callout (a plain subscription gets a copy
/// of each request; the callout's queue group still answers) while `peel` connects once.
async fn capture_request(home: &Home, target: &Target, peel: &Peel) -> Result<Captured> {
    let creds = home.service_creds("callout");
    let listener = connect::connect(
        &Endpoint {
            url: target.url.clone(),
            ca: target.ca.clone(),
        },
        &ClientSpec {
            creds: &creds,
            name: "bench-capture",
            inbox_prefix: ADMIN_INBOX_PREFIX,
            long_lived: false,
        },
    )
    .await?;
    let mut requests = listener.subscribe(AUTH_CALLOUT_SUBJECT).await?;
    listener.flush().await?;
    connect_once(target, &peel.creds, &peel.inbox)
        .await
        .map_err(|e| anyhow!("connecting while capturing a request: {e}"))?;
    let message = tokio::time::timeout(CONNECT_TIMEOUT, requests.next())
        .await
        .context("no authorization request seen while capturing")?
        .context("the capture subscription ended")?;
    Ok(Captured {
        server_xkey: message
            .headers
            .as_ref()
            .and_then(|h| h.get(XKEY_HEADER))
            .map(|v| v.as_str().to_string()),
        payload: message.payload.to_vec(),
        at: now_unix(),
    })
}

/// Times each step of the callout's decision on `captured`, single-threaded, with the same
/// keys, trust and key cache the running callout uses. Steps nest: an indented step is part
/// of the one above it.
fn callout_steps(home: &Home, appliance: &Appliance, captured: &Captured) -> Result<Vec<Step>> {
    let authority = home.load_authority()?;
    let state = appliance.callout();
    let trust = state.trust();
    let keys = appliance.keys().cache();
    let account = trust.account.subject().to_string();
    let (payload, xkey, now) = (
        &captured.payload[..],
        captured.server_xkey.as_deref(),
        captured.at,
    );
    let channel = xkey
        .map(|k| protocol::Channel::new(&authority.callout_xkey, k))
        .transpose()?;
    let opened = || protocol::open_request(payload, channel.as_ref(), &account, now);
    let request = opened()?;
    let nats = &request.claims().nats;
    let Decision::Allow(admission) = decide::decide(nats, &trust, &keys, now) else {
        bail!("the captured request was refused on replay");
    };
    let user = jwt::decode::<UserNats>(&nats.connect_opts.jwt, now)?;
    let session = || {
        authority.issue_session(
            &nats.user_nkey,
            "bench",
            &admission.role,
            now,
            admission.expires,
        )
    };
    let token = session()?.token().to_string();
    let answer = |seal_to: Option<&protocol::Channel>| {
        protocol::answer(
            nats,
            Ok(&token),
            &authority.zester_signer,
            &account,
            seal_to,
            now,
        )
    };
    if state.process(payload, xkey, now).reply.is_none() {
        bail!("the callout could not answer the captured request on replay");
    }

    let mut steps: Vec<Step> = vec![(
        "whole decision (CalloutState::process)",
        0,
        median_micros(|| state.process(payload, xkey, now)),
    )];
    steps.push(("open request", 1, median_micros(opened)));
    if let (Some(sender), Some(channel)) = (xkey, channel.as_ref()) {
        steps.push((
            "derive the shared key (X25519, once per server)",
            2,
            median_micros(|| protocol::Channel::new(&authority.callout_xkey, sender)),
        ));
        steps.push((
            "unseal (XSalsa20-Poly1305, shared key cached)",
            2,
            median_micros(|| channel.open(payload)),
        ));
    }
    steps.push((
        "decide",
        1,
        median_micros(|| decide::decide(nats, &trust, &keys, now)),
    ));
    steps.push((
        "decode + verify user JWT",
        2,
        median_micros(|| jwt::decode::<UserNats>(&nats.connect_opts.jwt, now)),
    ));
    steps.push((
        "chain to account and operator",
        2,
        median_micros(|| chain::verify_user(&trust.operator, &trust.account, &user, now)),
    ));
    steps.push((
        "nonce signature",
        2,
        median_micros(|| {
            decide::verify_nonce(
                &nats.client_info.nonce,
                &nats.connect_opts.signed_nonce,
                user.subject(),
            )
        }),
    ));
    steps.push(("issue session JWT", 1, median_micros(session)));
    steps.push((
        "answer (sign + seal)",
        1,
        median_micros(|| answer(channel.as_ref())),
    ));
    steps.push(("sign only", 2, median_micros(|| answer(None))));
    Ok(steps)
}

/// Median wall time of `op` in µs over [`STEP_SAMPLES`] calls, after a short warm-up.
fn median_micros<T>(mut op: impl FnMut() -> T) -> f64 {
    for _ in 0..10 {
        black_box(op());
    }
    let mut samples: Vec<f64> = (0..STEP_SAMPLES)
        .map(|_| {
            let started = Instant::now();
            black_box(op());
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Starts the appliance on `home`, stops it, and returns its own measure of time-to-ready.
fn time_to_ready(server_rt: &Runtime, home: Home) -> Result<Duration> {
    let root = home.root().display().to_string();
    let appliance = server_rt
        .block_on(Appliance::start(home, up_options()))
        .with_context(|| format!("starting the appliance on {root}"))?;
    let ready = appliance.ready_after();
    server_rt.block_on(appliance.stop());
    Ok(ready)
}

/// Frees a finished home's JetStream store early; the temp directory removes anything left.
fn remove_home(home: &Home) {
    if let Err(e) = std::fs::remove_dir_all(home.root()) {
        eprintln!("note: could not remove {}: {e}", home.root().display());
    }
}

/// Time-to-ready figures.
struct Ready {
    initialised: Vec<Duration>,
    empty: Duration,
    restart: Duration,
}

impl Ready {
    fn median(&self) -> Duration {
        let mut sorted = self.initialised.clone();
        sorted.sort_unstable();
        sorted[sorted.len() / 2]
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 1)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn list(values: &[f64], digits: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.digits$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn report(
    settings: Settings,
    version: &str,
    cores: usize,
    c: &Comparison,
    steps: &[Step],
    ready: &Ready,
) {
    let ready_median = ready.median();
    let ratio_ok = Mode::ALL.iter().all(|m| c.ratio(*m) >= TARGET_RATIO);
    let p99_ok = c.decisions.iter().all(|d| d.p99_micros < TARGET_P99_MICROS);
    let ready_ok = ready_median < TARGET_READY;

    println!();
    println!(
        "{:<32} {:>9} {:>9} {:>6}   {:<16} target",
        "new connections/s", "native", "callout", "ratio", "ratio per round"
    );
    for mode in Mode::ALL {
        let m = mode.index();
        println!(
            "{:<32} {:>9.1} {:>9.1} {:>6.2}   {:<16} >= {TARGET_RATIO} {}",
            mode.label(settings),
            c.phases[0][m].per_sec(),
            c.phases[1][m].per_sec(),
            c.ratio(mode),
            list(&c.ratios[m], 2),
            verdict(c.ratio(mode) >= TARGET_RATIO)
        );
    }

    println!();
    println!(
        "{:<32} {:>11} {:>11}",
        "client connect p50/p99 (ms)", "native", "callout"
    );
    for mode in Mode::ALL {
        let cell = |p: &Phase| format!("{:.1}/{:.1}", p.client_ms(0.5), p.client_ms(0.99));
        let m = mode.index();
        println!(
            "{:<32} {:>11} {:>11}",
            mode.label(settings),
            cell(&c.phases[0][m]),
            cell(&c.phases[1][m])
        );
    }
    for (t, name) in TARGETS.iter().enumerate() {
        for phase in &c.phases[t] {
            if let Some(e) = &phase.first_error {
                println!("{name}: {} failed connects, the first: {e}", phase.errors);
            }
        }
    }

    println!();
    println!(
        "{:<32} {:>11} {:>7} {:>8} {:>7}",
        "CPU per connect (ms)", "nats-server", "zester", "clients", "total"
    );
    for mode in Mode::ALL {
        for (t, name) in TARGETS.iter().enumerate() {
            let (server, zester, clients) = c.phases[t][mode.index()].cpu_per_connect();
            println!(
                "{:<32} {server:>11.2} {zester:>7.2} {clients:>8.2} {:>7.2}",
                format!("{name}, {}", mode.label(settings)),
                server + zester + clients
            );
        }
    }

    println!();
    println!(
        "{:<32} {:>6} {:>6} {:>6} {:>8} {:>8}   target",
        "callout decision (µs, in zester)", "p50", "p99", "max", "samples", "allowed"
    );
    for mode in Mode::ALL {
        let d = &c.decisions[mode.index()];
        println!(
            "{:<32} {:>6} {:>6} {:>6} {:>8} {:>8}   p99 < {TARGET_P99_MICROS} {}",
            mode.label(settings),
            d.p50_micros,
            d.p99_micros,
            d.max_micros,
            d.samples,
            d.allowed,
            verdict(d.p99_micros < TARGET_P99_MICROS)
        );
    }

    println!();
    println!(
        "{:<44} {:>8}",
        "callout steps, one request replayed", "µs (p50)"
    );
    for (label, depth, micros) in steps {
        println!(
            "{:<44} {micros:>8.1}",
            format!("{}{label}", "  ".repeat(*depth))
        );
    }

    println!();
    println!("{:<32} {:>9}   target", "zester up time-to-ready", "ms");
    println!(
        "{:<32} {:>9.1}   < {} ms {}",
        format!("median, {} initialised homes", ready.initialised.len()),
        ms(ready_median),
        TARGET_READY.as_millis(),
        verdict(ready_ok)
    );
    let each: Vec<f64> = ready.initialised.iter().map(|d| ms(*d)).collect();
    println!("{:<32} {:>9}", "  each run", list(&each, 0));
    println!(
        "{:<32} {:>9.1}",
        "empty home (init included)",
        ms(ready.empty)
    );
    println!(
        "{:<32} {:>9.1}",
        "restart of a used home",
        ms(ready.restart)
    );

    let decision_json = |d: &StatsSnapshot| {
        json!({
            "p50_us": d.p50_micros,
            "p99_us": d.p99_micros,
            "max_us": d.max_micros,
            "samples": d.samples,
            "allowed": d.allowed,
            "refused": d.refused,
        })
    };
    let mut targets = serde_json::Map::new();
    for (t, name) in TARGETS.iter().enumerate() {
        let mut phases = serde_json::Map::new();
        for mode in Mode::ALL {
            phases.insert(mode.key().into(), c.phases[t][mode.index()].to_json());
        }
        targets.insert((*name).into(), phases.into());
    }
    let mut ratio = serde_json::Map::new();
    let mut decisions = serde_json::Map::new();
    for mode in Mode::ALL {
        let m = mode.index();
        ratio.insert(mode.key().into(), round(c.ratio(mode), 3).into());
        let rounds: Vec<f64> = c.ratios[m].iter().map(|r| round(*r, 3)).collect();
        ratio.insert(format!("{}_rounds", mode.key()), rounds.into());
        decisions.insert(mode.key().into(), decision_json(&c.decisions[m]));
    }
    let step_json: Vec<Value> = steps
        .iter()
        .map(|(label, depth, micros)| json!({"step": label, "depth": depth, "us": round(*micros, 1)}))
        .collect();
    let result = json!({
        "bench": "connect",
        "nats_server": version,
        "cores": cores,
        "sequential_n": settings.sequential,
        "concurrency": settings.concurrency,
        "per_task": settings.per_task,
        "rounds": settings.rounds,
        "warmup": WARMUP,
        "targets": targets,
        "ratio": ratio,
        "decision": decisions,
        "callout_steps": step_json,
        "ready_ms": {
            "initialised_median": ms(ready_median),
            "initialised": each,
            "empty_home": ms(ready.empty),
            "restart": ms(ready.restart),
        },
        "goals": {
            "ratio_min": TARGET_RATIO,
            "decision_p99_max_us": TARGET_P99_MICROS,
            "ready_max_ms": TARGET_READY.as_millis() as u64,
        },
        "meets": {
            "ratio": ratio_ok,
            "decision_p99": p99_ok,
            "ready": ready_ok,
        },
    });
    println!();
    println!("RESULT {result}");
}
