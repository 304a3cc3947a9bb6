//! Issue 7: `kill -9` of the nats-server child while 200 peels are connected and publishing —
//! all back within a bound, no key record lost, no unauthorised delivery.
//!
//! Everything is real: the appliance (`zester up` in-process with its supervised nats-server,
//! TLS and the callout), 200 peel agents (`load-000` … `load-199`), each publishing on its own
//! event subject every [`PUBLISH_EVERY`] through the agent's own connection, and a master
//! counting what arrives. Each peel also keeps trying what it must not do: publishing as its
//! neighbour, and listening on its neighbour's command subject, where the master keeps sending.
//! Either getting through is an unauthorised delivery.
//!
//! The child is SIGKILLed mid-stream. The supervisor must start a new one; every peel must be
//! heard from again through it within [`BACK_WITHIN`] and answer a command; the key records
//! must be exactly as before (read from the bucket, the cache and `zester key list`); nothing
//! unauthorised may have been delivered and the audit log may hold no refusal — except of
//! zester's own service and store connections, which race the callout connection back to the new child
//! and are sometimes refused once (see [`refusals`]); the master that watches the test
//! reconnects on the agents' schedule so that it does not. Timing is only bounded loosely (CI
//! machines are noisy); the observed recovery times are printed (`cargo nextest run
//! --no-capture` shows them).

mod common;
use common::{process_alive as alive, wait_until};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use common::appliance::{self, TestAppliance};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use zester::appliance::broker::supervisor::ChildEvent;
use zester::appliance::keys::KeyRecord;
use zester::identity::peel_id::PeelId;
use zester::peel::{Agent, AgentOptions};
use zester::permissions::Role;

/// How many peels run.
const PEELS: usize = 200;
/// How often each peel publishes on its own subject.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// Every this many ticks a peel also tries to publish as its neighbour.
const FOREIGN_EVERY: u64 = 10;
/// How often the master sends to every peel's command subject.
const COMMAND_EVERY: Duration = Duration::from_secs(1);
/// How long, from the kill, all peels may take to be heard from again (they wait 2–3 s before
/// reconnecting, then all come through the callout at once).
const BACK_WITHIN: Duration = Duration::from_secs(60);
/// How many peels are started or set up at the same time.
const PARALLEL: usize = 20;

fn peel_id(n: usize) -> String {
    format!("load-{n:03}")
}

/// What reached the master and what should never have reached anyone.
#[derive(Default)]
struct Seen {
    /// Deliveries on `zester.event.<id>.load`, by peel.
    per_peel: HashMap<String, u64>,
    /// When the first message a peel published after the kill reached the master.
    back_at: HashMap<String, Instant>,
    /// When each agent's connection was first seen up again after the kill.
    reconnected_at: HashMap<String, Instant>,
    /// Every delivery that should have been impossible, described.
    unauthorised: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

/// The master's reader: counts each peel's load messages, and anything whose payload names
/// another peel than its subject as unauthorised; notes when each peel's first message
/// published after the kill (`generation` 1) arrives.
async fn count_deliveries(mut messages: async_nats::Subscriber, seen: Shared) {
    while let Some(message) = messages.next().await {
        let subject_peel = message
            .subject
            .split('.')
            .nth(2)
            .unwrap_or_default()
            .to_string();
        let payload: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
        let mut seen = seen.lock().unwrap();
        if payload["peel"].as_str() != Some(subject_peel.as_str()) {
            seen.unauthorised.push(format!(
                "the master received {payload} on {}",
                message.subject
            ));
            continue;
        }
        *seen.per_peel.entry(subject_peel.clone()).or_default() += 1;
        if payload["generation"].as_u64() == Some(1) {
            seen.back_at
                .entry(subject_peel)
                .or_insert_with(Instant::now);
        }
    }
}

/// One peel's load through its agent's connection: its own subject every tick, its
/// neighbour's subject every [`FOREIGN_EVERY`] ticks (the server must drop it), and a
/// subscription to its neighbour's commands (the server must refuse it) whose every delivery
/// is recorded as unauthorised.
async fn run_load(
    client: async_nats::Client,
    id: String,
    neighbour: String,
    generation: Arc<AtomicU64>,
    seen: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let mut foreign = client
        .subscribe(format!("zester.cmd.{neighbour}"))
        .await
        .expect("the client queues the subscription");
    let mut foreign_open = true;
    let own = format!("zester.event.{id}.load");
    let theirs = format!("zester.event.{neighbour}.load");
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let (mut seen_down, mut reconnected) = (false, false);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            message = foreign.next(), if foreign_open => match message {
                Some(message) => seen.lock().unwrap().unauthorised.push(format!(
                    "{id} received {:?} on its neighbour's {}",
                    message.payload, message.subject
                )),
                None => foreign_open = false,
            },
            _ = tick.tick() => {
                let generation = generation.load(Ordering::SeqCst);
                if generation == 1 && !reconnected {
                    // Only a connection seen down since the kill counts as back when up.
                    if client.connection_state() != State::Connected {
                        seen_down = true;
                    } else if seen_down {
                        reconnected = true;
                        let now = Instant::now();
                        seen.lock().unwrap().reconnected_at.insert(id.clone(), now);
                    }
                }
                seq += 1;
                let payload = json!({
                    "peel": id,
                    "generation": generation,
                    "seq": seq,
                })
                .to_string();
                // While the server is down these wait in the client's buffer; errors (a full
                // buffer) only cost messages, which the test does not count on.
                let _ = client.publish(own.clone(), payload.clone().into()).await;
                if seq % FOREIGN_EVERY == 0 {
                    let _ = client.publish(theirs.clone(), payload.into()).await;
                }
            }
        }
    }
}

/// The master sends to every peel's command subject once per [`COMMAND_EVERY`] (no reply
/// subject: the agents ignore it) and counts the rounds.
async fn send_commands(
    master: async_nats::Client,
    ids: Vec<String>,
    rounds: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(COMMAND_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {
                for id in &ids {
                    let payload = json!({"fun": "load.noop", "for": id}).to_string();
                    let _ = master.publish(format!("zester.cmd.{id}"), payload.into()).await;
                }
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// The master that watches the test, connected through the callout like
/// [`TestAppliance::master`] but reconnecting on the agents' schedule (2 s plus up to 1 s).
/// async-nats' own schedule retries at once, and a client that reaches the new child before
/// zester's callout connection is back is held until nats-server's auth timeout and refused:
/// that would be a refusal of the observer, not of a peel.
async fn observer(t: &TestAppliance) -> appliance::Client {
    let options = async_nats::ConnectOptions::with_credentials_file(t.home.service_creds("master"))
        .await
        .expect("master creds readable")
        .name("fault-test-master")
        .reconnect_delay_callback(|attempt| {
            if attempt <= 1 {
                Duration::ZERO
            } else {
                Duration::from_millis(2000 + rand::random::<u64>() % 1000)
            }
        });
    t.connect_with(options, "_INBOX._master")
        .await
        .expect("the master connects through the callout")
}

fn sigkill(pid: u32) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: a plain syscall on a pid we own (the supervisor has not reaped it yet).
    let sent = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(
        sent,
        0,
        "kill -9 {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// `zester key list --json`, run as the CLI would.
fn key_list(t: &TestAppliance) -> Value {
    let out = tokio::task::block_in_place(|| t.zester(&["key", "list", "--json"]));
    assert!(
        out.status.success(),
        "zester key list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("key list prints JSON")
}

/// Every load peel's record with its revision, read from the bucket (not the cache); retried
/// for a while since JetStream may still be recovering after a restart.
async fn bucket_records(t: &TestAppliance, ids: &[String]) -> BTreeMap<String, (KeyRecord, u64)> {
    let mut records = BTreeMap::new();
    for id in ids {
        let peel = PeelId::parse(id).expect("peel id");
        let deadline = Instant::now() + Duration::from_secs(15);
        let record = loop {
            match t.appliance.keys().get(&peel).await {
                Ok(record) => break record,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("reading {id} from the bucket: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("reading {id} from the bucket: {e}"),
            }
        };
        let record = record.unwrap_or_else(|| panic!("no record for {id} in the bucket"));
        records.insert(id.clone(), record);
    }
    records
}

/// The cache's records of the load peels.
fn cached_records(t: &TestAppliance) -> BTreeMap<String, KeyRecord> {
    t.appliance
        .keys()
        .cache()
        .all()
        .into_iter()
        .filter(|r| r.id.as_str().starts_with("load-"))
        .map(|r| (r.id.to_string(), KeyRecord::clone(&r)))
        .collect()
}

/// The audit log's refusals, split into those of zester's own service and store connections
/// that reached the new child before zester's callout connection was back, and all others.
/// They wait for the callout connection before they reconnect, which leaves only a window of a
/// few tens of milliseconds; if it is hit, nats-server holds them for its auth timeout and
/// refuses them, and the audit log must say so (`callout_no_answer`), not blame their keys.
fn refusals<'a>(t: &TestAppliance, audit: &'a [Value]) -> (Vec<&'a Value>, Vec<&'a Value>) {
    let trust = t.appliance.callout().trust();
    let own_key = |r: &Value| {
        r["nkey"]
            .as_str()
            .and_then(|k| trust.services.get(k))
            .is_some_and(|role| matches!(role, Role::Service | Role::Store))
    };
    audit
        .iter()
        .filter(|r| r["decision"] != "allow")
        .partition(|r| {
            r["source"] == "server"
                && r["code"] == "callout_no_answer"
                && (r["connection_name"] == "zester-service"
                    || r["connection_name"] == "zester-store")
                && own_key(r)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_child_under_200_publishing_peels() {
    let test_started = Instant::now();
    let t = appliance::start("").await;
    let ids: Vec<String> = (0..PEELS).map(peel_id).collect();

    let creds: Vec<_> = futures_util::stream::iter(ids.iter().map(|id| t.peel(id)))
        .buffered(PARALLEL)
        .collect()
        .await;

    let master = observer(&t).await;
    let seen: Shared = Arc::default();
    let deliveries = master
        .nats
        .subscribe("zester.event.*.load")
        .await
        .expect("master subscribes");
    common::sync(&master.nats, "_INBOX._master.sync").await;
    let counter = tokio::spawn(count_deliveries(deliveries, seen.clone()));

    let agents: Vec<Agent> = futures_util::stream::iter(creds.into_iter().map(|creds| {
        Agent::start(AgentOptions {
            server: t.url(),
            creds,
            ca: Some(t.home.ca_cert()),
            pin: None,
        })
    }))
    .buffered(PARALLEL)
    .map(|agent| agent.expect("the agent starts"))
    .collect()
    .await;
    for (agent, id) in agents.iter().zip(&ids) {
        assert_eq!(agent.peel_id().as_str(), id);
    }

    let generation = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut load: Vec<JoinHandle<()>> = agents
        .iter()
        .enumerate()
        .map(|(n, agent)| {
            tokio::spawn(run_load(
                agent.client().clone(),
                ids[n].clone(),
                peel_id((n + 1) % PEELS),
                generation.clone(),
                seen.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let rounds = Arc::new(AtomicU64::new(0));
    load.push(tokio::spawn(send_commands(
        master.nats.clone(),
        ids.clone(),
        rounds.clone(),
        stop_rx.clone(),
    )));

    wait_until(
        "every peel is heard from before the kill",
        Duration::from_secs(30),
        || seen.lock().unwrap().per_peel.len() == PEELS,
    )
    .await;
    let all_publishing = test_started.elapsed();

    let list_before = key_list(&t);
    assert_eq!(
        list_before
            .as_array()
            .map(|keys| keys.iter().filter(|k| k["state"] == "accepted").count()),
        Some(PEELS),
        "{list_before}"
    );
    let bucket_before = bucket_records(&t, &ids).await;
    let cache_before = cached_records(&t);
    assert_eq!(cache_before.len(), PEELS);

    // Let the load and the master's commands run a little with everyone connected.
    let rounds_at = rounds.load(Ordering::SeqCst);
    wait_until("two command rounds", Duration::from_secs(10), || {
        rounds.load(Ordering::SeqCst) >= rounds_at + 2
    })
    .await;

    let supervisor = t.appliance.supervisor();
    let before = supervisor.info();
    let mut events = supervisor.subscribe();
    sigkill(before.pid);
    let killed_at = Instant::now();
    // Any event past the old child's `Started` means it was reaped: nothing published from now
    // on can have gone through it.
    tokio::time::timeout(
        Duration::from_secs(10),
        events.wait_for(
            |event| !matches!(event, ChildEvent::Started { pid, .. } if *pid == before.pid),
        ),
    )
    .await
    .expect("the supervisor sees the child die")
    .expect("the supervisor runs");
    generation.store(1, Ordering::SeqCst);
    assert!(
        !alive(before.pid),
        "the killed child {} still runs",
        before.pid
    );

    wait_until(
        "the supervisor restarts the child",
        Duration::from_secs(30),
        || {
            let now = supervisor.info();
            now.pid != before.pid && now.restarts == before.restarts + 1
        },
    )
    .await;
    let restarted_after = killed_at.elapsed();
    let after = supervisor.info();
    assert!(
        alive(after.pid),
        "the new child {} is not running",
        after.pid
    );
    assert_eq!(after.ports.client, before.ports.client, "same client port");

    let remaining = BACK_WITHIN.saturating_sub(killed_at.elapsed());
    let waited = tokio::time::timeout(remaining, async {
        loop {
            if seen.lock().unwrap().back_at.len() == PEELS {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if waited.is_err() {
        let seen = seen.lock().unwrap();
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| !seen.back_at.contains_key(*id))
            .collect();
        panic!(
            "{} of {PEELS} peels not heard from within {BACK_WITHIN:?} of the kill: {missing:?}",
            missing.len()
        );
    }
    let mut back: Vec<Duration> = seen
        .lock()
        .unwrap()
        .back_at
        .values()
        .map(|at| at.duration_since(killed_at))
        .collect();
    back.sort();
    let mut reconnected: Vec<Duration> = seen
        .lock()
        .unwrap()
        .reconnected_at
        .values()
        .map(|at| at.duration_since(killed_at))
        .collect();
    reconnected.sort();

    // Every agent's own command subscription is back: each answers a ping.
    let pings: Vec<(String, bool)> = futures_util::stream::iter(ids.iter().map(|id| {
        let master = master.nats.clone();
        async move {
            let ok = appliance::ping(&master, id, Duration::from_secs(15)).await;
            (id.clone(), ok)
        }
    }))
    .buffer_unordered(50)
    .collect()
    .await;
    let silent: Vec<&String> = pings
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(id, _)| id)
        .collect();
    assert!(
        silent.is_empty(),
        "peels not answering after the restart: {silent:?}"
    );

    // The neighbour subscriptions were sent again on reconnect: give the master's commands a
    // couple of rounds through the new child before looking.
    let rounds_at = rounds.load(Ordering::SeqCst);
    wait_until(
        "two command rounds after the restart",
        Duration::from_secs(10),
        || rounds.load(Ordering::SeqCst) >= rounds_at + 2,
    )
    .await;

    // The server refuses the neighbour's subjects for the reason we expect, not by accident.
    let probe = t
        .connect(&t.home.peel_creds("load-000"), "_INBOX.load-000")
        .await
        .expect("load-000 connects again");
    probe
        .nats
        .subscribe("zester.cmd.load-001")
        .await
        .expect("the client queues the subscription");
    probe
        .nats
        .publish(
            "zester.event.load-001.load",
            "{\"peel\":\"load-000\"}".into(),
        )
        .await
        .expect("publish");
    common::sync_peel(&probe.nats, "load-000").await;
    for error in [
        "permissions violation for subscription to \"zester.cmd.load-001\"",
        "permissions violation for publish to \"zester.event.load-001.load\"",
    ] {
        assert!(
            probe.wait_error(error).await,
            "no {error:?}: {:?}",
            probe.errors
        );
    }
    drop(probe);

    stop_tx.send_replace(true);
    for task in load {
        task.await.expect("load task");
    }
    let stopped: Vec<_> = futures_util::stream::iter(agents.into_iter().map(Agent::stop))
        .buffer_unordered(PEELS)
        .collect()
        .await;
    for result in stopped {
        result.expect("the agent stops cleanly");
    }

    assert_eq!(key_list(&t), list_before, "zester key list changed");
    assert_eq!(
        bucket_records(&t, &ids).await,
        bucket_before,
        "the bucket changed"
    );
    assert_eq!(cached_records(&t), cache_before, "the cache changed");

    // Every peel was let in twice by the callout (before and after the kill) and nobody was
    // refused. Audit lines are written in the background: wait for the allows first.
    let allowed = |audit: &[Value]| -> HashMap<String, usize> {
        let mut allowed = HashMap::new();
        for record in audit.iter().filter(|r| r["decision"] == "allow") {
            if let Some(id) = record["peel_id"].as_str() {
                *allowed.entry(id.to_string()).or_default() += 1;
            }
        }
        allowed
    };
    wait_until(
        "two allows per peel in the audit log",
        Duration::from_secs(10),
        || {
            let allowed = allowed(&t.audit());
            ids.iter()
                .all(|id| allowed.get(id).is_some_and(|n| *n >= 2))
        },
    )
    .await;
    let audit = t.audit();
    let (own_master_refused, refusals) = refusals(&t, &audit);
    assert!(
        refusals.is_empty(),
        "refusals in the audit log: {refusals:#?}"
    );
    if !own_master_refused.is_empty() {
        eprintln!(
            "fault_child_kill: zester's own master connection was refused {} time(s) after \
             the restart (it reached the new child just before the callout connection \
             did): {own_master_refused:?}",
            own_master_refused.len()
        );
    }

    let (unauthorised, delivered) = {
        let seen = seen.lock().unwrap();
        (
            seen.unauthorised.clone(),
            seen.per_peel.values().sum::<u64>(),
        )
    };
    assert!(
        unauthorised.is_empty(),
        "{} unauthorised deliveries, first: {:#?}",
        unauthorised.len(),
        &unauthorised[..unauthorised.len().min(10)]
    );
    let spread = |times: &[Duration]| match times {
        [] => "none seen".to_string(),
        _ => format!(
            "first {:.2}s, median {:.2}s, last {:.2}s",
            times[0].as_secs_f64(),
            times[times.len() / 2].as_secs_f64(),
            times[times.len() - 1].as_secs_f64()
        ),
    };
    eprintln!(
        "fault_child_kill: {PEELS} peels publishing {:.1}s after start; child {} -> {} ready \
         {:.2}s after kill -9; agents reconnected ({} seen): {}; heard by the master: {}; \
         {delivered} load messages delivered; {} audit lines; test took {:.1}s",
        all_publishing.as_secs_f64(),
        before.pid,
        after.pid,
        restarted_after.as_secs_f64(),
        reconnected.len(),
        spread(&reconnected),
        spread(&back),
        audit.len(),
        test_started.elapsed().as_secs_f64(),
    );

    counter.abort();
    drop(master);
    t.stop().await;
}
