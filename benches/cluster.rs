//! Cluster benchmark (issue 18): connect rate and callout decision latency of a three-node
//! cluster against a single node, on this machine, in one run.
//!
//! A plain bench binary left out of a plain `cargo bench` (`bench = false`): run it with
//! `cargo bench --bench cluster`. It starts real `zester up` processes (the binary cargo built
//! beside it, so an optimised one) the way `tests/common/nodes.rs` grows them: a single node,
//! and three nodes `a`, `b`, `c` grown with `zester node join`. Peels connect to one node
//! only (`single`, and `a` of the cluster) while the callouts of all three nodes answer in
//! their queue group, so about two in three of the cluster's decisions cross a route each way
//! (DESIGN §9). No timing asserts: the numbers are for people.
//!
//! Rounds alternate the two targets, as `benches/connect.rs` does, so that a neighbour's load
//! hits both alike: N sequential connects, then `concurrency` clients each making a share of
//! 2N. A connect is TLS 1.3 + CONNECT + flush (the auth round trip is complete) + close. The
//! decision latency is each node's own window (`zester status --json`: p50/p99 over every
//! decision it made in the run, warm-up included), with how many decisions each node made.
//!
//! Environment: `ZESTER_BENCH_N` (sequential connects per target and round, default 300),
//! `ZESTER_BENCH_CONCURRENCY` (default 32), `ZESTER_BENCH_ROUNDS` (default 3). Every process
//! is stopped at the end (the harness kills and reaps its nodes on drop).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::nodes::{self, Node};
use serde_json::{json, Value};
use zester::appliance::keys::KeyRecord;
use zester::home::{now_unix, Home};
use zester::identity::peel_id::PeelId;

const DEFAULT_N: usize = 300;
const DEFAULT_CONCURRENCY: usize = 32;
const DEFAULT_ROUNDS: usize = 3;
const WARMUP: usize = 20;
const MIN_PER_TASK: usize = 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// Where clients connect, and the creds they use (one per concurrent client).
struct Target {
    label: &'static str,
    url: String,
    ca: PathBuf,
    peels: Vec<(String, String)>,
}

/// What a phase saw, summed over rounds.
#[derive(Default)]
struct Phase {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    wall: Duration,
    latencies: Vec<u64>,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.wall.as_secs_f64().max(f64::EPSILON)
    }

    fn ms(&self, q: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return 0.0;
        }
        sorted[((sorted.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0
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
}

/// Creds for `count` peels signed with `node`'s authority, registered through its admin API.
async fn issue(node: &Node, count: usize) -> Vec<(String, String)> {
    let home = Home::at(node.home());
    let authority = home.load_authority().unwrap();
    let admin = zester::cli::client::admin_connect(&home).await.unwrap();
    let now = now_unix();
    let mut peels = Vec::new();
    for n in 0..count {
        let id = PeelId::parse(&format!("bench-{n:03}")).unwrap();
        let creds = authority.issue_peel(&id, now, 3600).unwrap();
        let record = KeyRecord::new_accepted(
            id.clone(),
            &creds.key().public_key(),
            "bench cluster",
            "creds signed for the benchmark",
            now,
        )
        .unwrap();
        zester::cli::client::admin_request(&admin, zester::wire::admin::KEY_REGISTER, &record)
            .await
            .unwrap_or_else(|e| panic!("register {id}: {e}"));
        peels.push((format!("_INBOX.{id}"), creds.to_text()));
    }
    peels
}

async fn connect_once(
    target: &Target,
    (inbox, creds): &(String, String),
) -> Result<Duration, String> {
    let started = Instant::now();
    let client = async_nats::ConnectOptions::with_credentials(creds)
        .map_err(|e| format!("creds: {e}"))?
        .add_root_certificates(target.ca.clone())
        .require_tls(true)
        .custom_inbox_prefix(inbox)
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(target.url.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tokio::time::timeout(CONNECT_TIMEOUT, client.flush())
        .await
        .map_err(|_| "flush timed out".to_string())?
        .map_err(|e| format!("flush: {e}"))?;
    Ok(started.elapsed())
}

async fn sequential(target: &Target, count: usize, phase: &mut Phase) {
    let started = Instant::now();
    for n in 0..count {
        phase.record(connect_once(target, &target.peels[n % target.peels.len()]).await);
    }
    phase.wall += started.elapsed();
}

async fn concurrent(target: &Target, per_task: usize, phase: &mut Phase) {
    let started = Instant::now();
    let tasks = target.peels.iter().map(|peel| async move {
        let mut results = Vec::with_capacity(per_task);
        for _ in 0..per_task {
            results.push(connect_once(target, peel).await);
        }
        results
    });
    for results in futures_util::future::join_all(tasks).await {
        for result in results {
            phase.record(result);
        }
    }
    phase.wall += started.elapsed();
}

/// The node's own decision counters and latency window, from `zester status --json`.
fn decisions(node: &Node) -> Value {
    node.json(&["status"])["decisions"].clone()
}

fn main() {
    let n = env_count("ZESTER_BENCH_N", DEFAULT_N);
    let concurrency = env_count("ZESTER_BENCH_CONCURRENCY", DEFAULT_CONCURRENCY);
    let rounds = env_count("ZESTER_BENCH_ROUNDS", DEFAULT_ROUNDS);
    let per_task = (2 * n).div_ceil(concurrency).max(MIN_PER_TASK);
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    println!(
        "zester cluster benchmark: {cores} cores, {rounds} rounds of {n} sequential and \
         {concurrency} concurrent x {per_task}, peels on one node, warm-up {WARMUP}"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    eprintln!("starting a single node");
    let mut single = Node::first("single");
    single.spawn();
    single.wait_ready(Duration::from_secs(30));
    eprintln!("growing three nodes");
    let cluster = nodes::three();
    let targets = runtime.block_on(async {
        [
            Target {
                label: "single",
                url: single.url(),
                ca: single.ca(),
                peels: issue(&single, concurrency).await,
            },
            Target {
                label: "cluster",
                url: cluster[0].url(),
                ca: cluster[0].ca(),
                peels: issue(&cluster[0], concurrency).await,
            },
        ]
    });
    // The keys registered on a reach the callouts of b and c through the bucket's watch.
    std::thread::sleep(Duration::from_secs(2));

    let mut phases: [[Phase; 2]; 2] = Default::default();
    let mut ratios: [Vec<f64>; 2] = Default::default();
    runtime.block_on(async {
        for target in &targets {
            let mut warm = Phase::default();
            sequential(target, WARMUP, &mut warm).await;
            if let Some(e) = warm.first_error {
                panic!("warm-up of {}: {e}", target.label);
            }
        }
        for round in 0..rounds {
            for mode in 0..2 {
                let mut rates = [0.0; 2];
                // Alternate which target goes first.
                let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
                for t in order {
                    let mut phase = Phase::default();
                    if mode == 0 {
                        sequential(&targets[t], n, &mut phase).await;
                    } else {
                        concurrent(&targets[t], per_task, &mut phase).await;
                    }
                    rates[t] = phase.per_sec();
                    let sum = &mut phases[t][mode];
                    sum.ok += phase.ok;
                    sum.errors += phase.errors;
                    sum.wall += phase.wall;
                    sum.latencies.extend(phase.latencies);
                    if sum.first_error.is_none() {
                        sum.first_error = phase.first_error;
                    }
                }
                ratios[mode].push(rates[1] / rates[0]);
                eprintln!(
                    "round {} {}: single {:.0}/s, cluster {:.0}/s",
                    round + 1,
                    ["sequential", "concurrent"][mode],
                    rates[0],
                    rates[1]
                );
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));

    let modes = ["sequential", &format!("concurrent ({concurrency} clients)")];
    println!(
        "\n{:<26} {:>10} {:>10} {:>7}  {:>16} {:>16}  rounds",
        "connects", "single/s", "cluster/s", "ratio", "single p50/p99", "cluster p50/p99"
    );
    let mut result = json!({"cores": cores, "n": n, "concurrency": concurrency, "rounds": rounds});
    for (mode, label) in modes.iter().enumerate() {
        let (s, c) = (&phases[0][mode], &phases[1][mode]);
        let ratio = c.per_sec() / s.per_sec();
        println!(
            "{:<26} {:>10.0} {:>10.0} {:>7.2}  {:>7.1}/{:<5.1} ms {:>7.1}/{:<5.1} ms  {}",
            label,
            s.per_sec(),
            c.per_sec(),
            ratio,
            s.ms(0.5),
            s.ms(0.99),
            c.ms(0.5),
            c.ms(0.99),
            ratios[mode]
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for (t, phase) in [s, c].iter().enumerate() {
            if phase.errors > 0 {
                println!(
                    "  {} errors on {}: first {:?}",
                    phase.errors, targets[t].label, phase.first_error
                );
            }
        }
        result[["sequential", "concurrent"][mode]] = json!({
            "single_per_sec": (s.per_sec() * 10.0).round() / 10.0,
            "cluster_per_sec": (c.per_sec() * 10.0).round() / 10.0,
            "ratio": (ratio * 100.0).round() / 100.0,
            "errors": s.errors + c.errors,
        });
    }
    println!("\ncallout decisions (each node's window over the whole run)");
    let mut nodes_json = Vec::new();
    for node in std::iter::once(&single).chain(cluster.iter()) {
        let d = decisions(node);
        println!(
            "  {:<7} {:>6} decisions, p50 {:>5} µs, p99 {:>6} µs",
            node.name, d["allowed"], d["p50_micros"], d["p99_micros"]
        );
        nodes_json.push(json!({"node": node.name, "decisions": d}));
    }
    result["decisions"] = Value::Array(nodes_json);
    println!("RESULT {result}");
    drop(cluster);
    drop(single);
}
