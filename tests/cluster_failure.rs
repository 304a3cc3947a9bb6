//! A node of three lost (issue 18 part 5): `kill -9` of one `zester up` (its nats-server child
//! dies with it) while 300 peels are connected across the three. Every peel that was on the
//! dead node is back on a live one (the time it took is measured and printed, not asserted:
//! it depends on the machine), enrolment, accept and revoke keep working on the two others
//! with no key record lost, and the dead node, started again, holds at once what changed while
//! it was down (a key accepted meanwhile is admitted there, one revoked meanwhile refused).
//!
//! The peels are async-nats clients with the peel agent's own connect options
//! ([`zester::peel::agent::peel_options`]: its reconnect pacing of 2 s plus jitter, its auth
//! callback), given all three URLs, so the figure is what a fleet of real peels sees. Their
//! creds are issued in this process with the first node's authority and registered through one
//! admin connection (what `zester creds issue` does, without 300 processes).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{ConnectErrorKind, ServerAddr};
use common::nodes::{self, Node};
use zester::appliance::keys::KeyRecord;
use zester::home::{self, now_unix, Home};
use zester::identity::peel_id::PeelId;
use zester::peel::agent::{peel_options, AgentOptions, ReconnectPacing};

/// Peels connected when the node dies.
const PEELS: usize = 300;
/// Peels connecting at once while the fleet comes up (a debug build on two cores).
const CONNECT_BATCH: usize = 25;
/// How long the fleet is up before the kill: longer than the 30 s after which a peel's
/// connection counts as stable (`STABLE_AFTER` in the agent).
const STABLE: Duration = Duration::from_secs(31);
/// How long the test waits for the fleet to come back before it gives up: a liveness guard,
/// far above the bound the issue targets (15 s), not a measurement.
const GIVE_UP: Duration = Duration::from_secs(120);

/// One peel of the fleet: its id, creds file and connected client.
struct Peel {
    id: String,
    creds: PathBuf,
    client: async_nats::Client,
}

/// Blocking work (a `zester` command, the node harness) inside the async test.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The records `zester key list --json` shows through `node`: id → state.
fn key_states(node: &Node) -> std::collections::BTreeMap<String, String> {
    let list = blocking(|| node.json(&["key", "list"]));
    let rows = list
        .as_array()
        .or_else(|| list["keys"].as_array())
        .cloned()
        .unwrap_or_default();
    rows.iter()
        .filter_map(|r| {
            Some((
                r["id"].as_str()?.to_string(),
                r["state"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Creds for `PEELS` peels signed with `a`'s authority, each registered as accepted through
/// one admin connection to the running cluster.
async fn issue_fleet(a: &Node, dir: &Path) -> Vec<(String, PathBuf)> {
    let home = Home::at(a.home());
    let authority = home.load_authority().unwrap();
    let admin = zester::cli::client::admin_connect(&home).await.unwrap();
    let now = now_unix();
    let mut fleet = Vec::new();
    for n in 0..PEELS {
        let id = PeelId::parse(&format!("fleet-{n:03}")).unwrap();
        let creds = authority.issue_peel(&id, now, 3600).unwrap();
        let path = dir.join(format!("{id}.creds"));
        home::write_creds(&path, &creds).unwrap();
        let record = KeyRecord::new_accepted(
            id.clone(),
            &creds.key().public_key(),
            "cluster_failure",
            "the test's fleet",
            now,
        )
        .unwrap();
        zester::cli::client::admin_request(&admin, zester::wire::admin::KEY_REGISTER, &record)
            .await
            .unwrap_or_else(|e| panic!("register {id}: {e}"));
        fleet.push((id.to_string(), path));
    }
    fleet
}

/// A peel client as the agent makes it, given every URL of `servers` (reconnecting forever).
async fn connect_peel(
    id: &str,
    creds: &Path,
    ca: &Path,
    servers: &[String],
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let peel = PeelId::parse(id).unwrap();
    let options = AgentOptions {
        server: servers[0].clone(),
        creds: creds.to_path_buf(),
        ca: Some(ca.to_path_buf()),
        pin: None,
    };
    let pacing = Arc::new(ReconnectPacing::default());
    let feed = pacing.clone();
    let addrs: Vec<ServerAddr> = servers.iter().map(|s| s.parse().unwrap()).collect();
    peel_options(&options, &peel, pacing)
        .event_callback(move |event| {
            feed.on_event(&event);
            async {}
        })
        .connect(addrs)
        .await
}

/// Whether `client` is connected to a server other than `dead` and a round trip through it
/// completes (the callout has admitted it: async-nats calls a connection up before that).
async fn back_elsewhere(client: &async_nats::Client, dead: &str) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
        && client.server_info().server_name != dead
        && tokio::time::timeout(Duration::from_secs(1), client.flush())
            .await
            .is_ok_and(|r| r.is_ok())
}

/// Connects as `id` to `node` alone, once: the connect's outcome and one round trip.
async fn connect_only_to(
    node: &Node,
    id: &str,
    creds: &Path,
) -> Result<(), async_nats::ConnectError> {
    let client = async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .unwrap()
        .add_root_certificates(node.ca())
        .require_tls(true)
        .custom_inbox_prefix(format!("_INBOX.{id}"))
        .max_reconnects(Some(0))
        .connect(node.url())
        .await?;
    client
        .flush()
        .await
        .map_err(|e| async_nats::ConnectError::with_source(ConnectErrorKind::Io, e))?;
    assert_eq!(client.server_info().server_name, node.name);
    Ok(())
}

/// `zester peel enrol` of `id` through `via` into `dir`.
fn peel_enrol(via: &Node, id: &str, dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_zester"))
        .args(["peel", "enrol", "--server", &via.url(), "--id", id])
        .arg("--ca")
        .arg(via.ca())
        .arg("--dir")
        .arg(dir)
        .env_remove("ZESTER_HOME")
        .output()
        .unwrap()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_node_of_three_loses_no_peel_and_no_key() {
    let mut nodes = blocking(nodes::three);
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let ca = nodes[0].ca();
    let creds_dir = tempfile::tempdir().unwrap();

    // The fleet: 300 peels, each given the three URLs; async-nats picks one at random.
    let started = Instant::now();
    let fleet = issue_fleet(&nodes[0], creds_dir.path()).await;
    eprintln!("{PEELS} keys registered in {:?}", started.elapsed());
    let started = Instant::now();
    let mut peels = Vec::new();
    for batch in fleet.chunks(CONNECT_BATCH) {
        let connects = batch.iter().map(|(id, creds)| {
            let (ca, urls) = (ca.clone(), urls.clone());
            async move {
                let client = connect_peel(id, creds, &ca, &urls)
                    .await
                    .unwrap_or_else(|e| panic!("{id} connects: {e}"));
                client.flush().await.unwrap();
                Peel {
                    id: id.clone(),
                    creds: creds.clone(),
                    client,
                }
            }
        });
        peels.extend(futures_util::future::join_all(connects).await);
    }
    let on = |name: &str, peels: &[Peel]| {
        peels
            .iter()
            .filter(|p| p.client.server_info().server_name == name)
            .count()
    };
    eprintln!(
        "{PEELS} peels connected in {:?}: a {}, b {}, c {}",
        started.elapsed(),
        on("a", &peels),
        on("b", &peels),
        on("c", &peels)
    );
    let on_c: Vec<usize> = (0..peels.len())
        .filter(|&i| peels[i].client.server_info().server_name == "c")
        .collect();
    assert!(!on_c.is_empty(), "no peel on c");
    assert_eq!(on("a", &peels) + on("b", &peels) + on_c.len(), PEELS);

    // A fleet that has been up a while: a peel counts a connection that lasted less than 30 s
    // as one more failure in a row, which would lengthen its first pause (4 s instead of 2 s).
    tokio::time::sleep(STABLE).await;

    // kill -9 of c (its nats-server dies with it) and the time until every peel of c is back.
    let killed = Instant::now();
    blocking(|| nodes[2].kill());
    let back = on_c.iter().map(|&i| {
        let client = peels[i].client.clone();
        async move {
            let deadline = killed + GIVE_UP;
            while Instant::now() < deadline {
                if back_elsewhere(&client, "c").await {
                    return Some(killed.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        }
    });
    let back = futures_util::future::join_all(back).await;
    let lost = back.iter().filter(|t| t.is_none()).count();
    assert_eq!(
        lost,
        0,
        "{lost} of the {} peels of c did not come back",
        on_c.len()
    );
    let mut times: Vec<Duration> = back.into_iter().flatten().collect();
    times.sort();
    eprintln!(
        "FAILOVER {} peels of c back on a or b: p50 {:?}, p99 {:?}, all {:?} after kill -9",
        times.len(),
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        times.last().unwrap()
    );
    // Every peel of the fleet is connected to a live node, each with a round trip.
    for peel in &peels {
        assert!(
            back_elsewhere(&peel.client, "c").await,
            "{} is not connected to a live node",
            peel.id
        );
    }

    // Enrolment, accept and revoke on the two others.
    let (a, b) = (&nodes[0], &nodes[1]);
    let late_dir = tempfile::tempdir().unwrap();
    let enrolled = blocking(|| peel_enrol(a, "late-01", late_dir.path()));
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    blocking(|| b.ok(&["key", "accept", "late-01"]));
    let fetched = blocking(|| peel_enrol(b, "late-01", late_dir.path()));
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let late_creds = late_dir.path().join("late-01.creds");
    assert!(late_creds.exists());
    let revoked_peel = &peels[on_c[0]];
    let revoked = blocking(|| a.json(&["key", "revoke", &revoked_peel.id]));
    assert!(revoked.to_string().contains("\"kicked\":1"), "{revoked}");

    // No key record lost: a and b each list every one, in the state it has now.
    for node in [a, b] {
        let states = key_states(node);
        for peel in &peels {
            let want = if peel.id == revoked_peel.id {
                "revoked"
            } else {
                "accepted"
            };
            assert_eq!(
                states.get(&peel.id).map(String::as_str),
                Some(want),
                "{} on {}",
                peel.id,
                node.name
            );
        }
        assert_eq!(
            states.get("late-01").map(String::as_str),
            Some("accepted"),
            "late-01 on {}",
            node.name
        );
    }

    // c again: ready, it holds at once what changed while it was down.
    let c = &mut nodes[2];
    blocking(|| {
        c.spawn();
        c.wait_ready(Duration::from_secs(60));
    });
    let c = &nodes[2];
    connect_only_to(c, "late-01", &late_creds)
        .await
        .unwrap_or_else(|e| panic!("late-01, accepted while c was down, refused on c: {e}"));
    let refused = connect_only_to(c, &revoked_peel.id, &revoked_peel.creds).await;
    assert!(
        matches!(
            refused.as_ref().map_err(|e| e.kind()),
            Err(ConnectErrorKind::AuthorizationViolation)
        ),
        "{} revoked while c was down: {refused:?}",
        revoked_peel.id
    );
    let states = key_states(c);
    assert_eq!(states.len(), PEELS + 1, "records on c");
    assert_eq!(states[&revoked_peel.id], "revoked");

    // Clients first, then the nodes (dropped at the end, each killed and reaped).
    drop(peels);
}
