//! A single node grows into a cluster of three without loss (issue 18 parts 4 and 6): a node
//! with 100 accepted keys, a peel's settings and a join token restarts as the first node of a
//! three-node cluster on 127.0.0.1 (route ports chosen at run time); past the window in which
//! nats-server deletes a standalone node's streams as orphans, every node holds all of it,
//! the peels still connect to every node, and `zester status` against each node names the
//! same meta leader, three nodes and R3 buckets.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::cluster::{self, join_homes, peel_connects, route_ports, start_all};
use common::up::Up;
use serde_json::Value;

const KEYS: usize = 100;
/// nats-server deletes a standalone node's streams 30 s after it starts clustered; the test
/// checks the data once the child has been up well past that.
const ORPHAN_WINDOW_SECS: u64 = 40;

fn ok(output: &std::process::Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn creds_of(first: &Up, n: usize) -> (String, PathBuf) {
    let id = format!("peel-{n}");
    let creds = first.home().join(format!("peels/{id}.creds"));
    (id, creds)
}

/// The ids of accepted keys `zester key list --json` reports through `up`.
fn accepted_ids(up: &Up) -> Vec<String> {
    let list: Value =
        serde_json::from_str(&ok(&up.zester(&["key", "list", "--json"]), "key list")).unwrap();
    let rows = list
        .as_array()
        .or_else(|| list["keys"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut ids: Vec<String> = rows
        .iter()
        .filter(|r| r["state"] == "accepted")
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

fn settings_of(up: &Up, id: &str) -> Value {
    let shown: Value =
        serde_json::from_str(&ok(&up.zester(&["settings", "show", id]), "settings show")).unwrap();
    shown["document"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_with_100_keys_grows_into_three_without_loss() {
    // A single node, its keys issued while it is down (journalled, imported at start).
    let mut first = Up {
        child: None,
        dir: tempfile::tempdir().unwrap(),
    };
    ok(&common::zester(&first.home(), &["init"]), "init");
    for n in 1..=KEYS {
        ok(
            &first.zester(&["creds", "issue", &format!("peel-{n}")]),
            "creds issue",
        );
    }
    first.launch();
    let single = cluster::status(&first).expect("status of the single node");
    assert_eq!(single["cluster"], Value::Null, "{single}");
    assert_eq!(single["keys"]["accepted"], KEYS, "{single}");
    let text = ok(&first.zester(&["status"]), "status");
    assert!(text.contains("cluster     single node\n"), "{text}");
    assert!(!text.contains("meta leader"), "{text}");
    let settings = serde_json::json!({"role": "web", "port": 8080});
    let settings_file = first.dir.path().join("settings.json");
    std::fs::write(&settings_file, settings.to_string()).unwrap();
    ok(
        &first.zester(&["settings", "set", "peel-1", settings_file.to_str().unwrap()]),
        "settings set",
    );
    let token = ok(
        &first.zester(&["token", "create", "--ids", "later-*"]),
        "token create",
    );
    let token_id = token
        .split_whitespace()
        .skip_while(|w| *w != "token")
        .nth(1)
        .expect("the token's id")
        .to_string();
    let added = ok(
        &first.zester(&["admin", "add", "carol", "--json"]),
        "admin add",
    );
    assert!(added.contains("\"appliance\""), "{added}");
    first.stop();
    assert_eq!(
        std::fs::read_to_string(first.home().join("nats/jetstream.mode"))
            .unwrap()
            .trim(),
        "standalone"
    );

    // It becomes the first node of three.
    let ports = route_ports(3);
    let mut joined = join_homes(&mut first, &ports, &["a", "b", "c"]);
    let third = joined.pop().unwrap();
    let second = joined.pop().unwrap();
    let mut nodes = [first, second, third];
    start_all(&mut nodes, &ports, &["a", "b", "c"]);
    let log = nodes[0].log();
    for line in log.lines().filter(|l| l.contains("grow:")) {
        eprintln!("{line}");
    }
    assert!(
        log.contains("grow: every standalone bucket is in the cluster, verified"),
        "{log}"
    );
    assert!(!nodes[0].home().join("nats/jetstream.standalone").exists());
    assert_eq!(
        std::fs::read_to_string(nodes[0].home().join("nats/jetstream.mode"))
            .unwrap()
            .trim(),
        "clustered"
    );

    // Past the orphan window (nats-server's own clock of the first node's child).
    nodes[0].wait_for(
        Duration::from_secs(ORPHAN_WINDOW_SECS + 60),
        "the first node's nats-server up past the orphan window",
        || {
            cluster::status(&nodes[0]).is_some_and(|s| {
                s["nats_server"]["uptime_secs"].as_u64().unwrap_or(0) >= ORPHAN_WINDOW_SECS
            })
        },
    );
    assert!(
        !nodes[0].log().contains("orphaned stream"),
        "nats-server found orphans:\n{}",
        nodes[0].log()
    );
    // The named admin it had is the cluster's: in every node's admins.json.
    for node in &nodes {
        node.wait_for(Duration::from_secs(10), "carol in admins.json", || {
            std::fs::read_to_string(node.home().join("auth/admins.json"))
                .is_ok_and(|text| text.contains("\"carol\""))
        });
    }

    let expected: Vec<String> = {
        let mut ids: Vec<String> = (1..=KEYS).map(|n| format!("peel-{n}")).collect();
        ids.sort();
        ids
    };
    let mut leaders = Vec::new();
    for (node, name) in nodes.iter().zip(["a", "b", "c"]) {
        // Every node's own key cache (its status counts it) and what the API reads through it.
        node.wait_for(
            Duration::from_secs(60),
            "every node in the cluster, every bucket R3 with three current copies",
            || {
                cluster::status(node).is_some_and(|s| {
                    let buckets = s["cluster"]["buckets"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    s["keys"]["accepted"] == KEYS
                        && s["cluster"]["nodes"].as_array().map(Vec::len) == Some(3)
                        && s["cluster"]["leader"].is_string()
                        && buckets.len() == zester::wire::subjects::BUCKETS.len()
                        && buckets.iter().all(|b| {
                            b["replicas"] == 3 && b["current"].as_array().map(Vec::len) == Some(3)
                        })
                })
            },
        );
        let status = cluster::status(node).unwrap();
        assert_eq!(status["node"], name, "the node asked answers: {status}");
        assert_eq!(status["cluster"]["node"], name);
        assert_eq!(status["cluster"]["name"], "zester");
        let names: Vec<&str> = status["cluster"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["name"].as_str())
            .collect();
        assert_eq!(names[0], name, "this node comes first: {status}");
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["a", "b", "c"]);
        assert_eq!(status["cluster"]["routes"].as_array().unwrap().len(), 2);
        leaders.push(status["cluster"]["leader"].as_str().unwrap().to_string());
        let text = ok(&node.zester(&["status"]), "status");
        assert!(
            text.contains(&format!("node        {name}, of cluster zester")),
            "{text}"
        );
        assert!(text.contains("bucket      zester-keys R3"), "{text}");

        assert_eq!(accepted_ids(node), expected, "keys through node {name}");
        assert_eq!(
            settings_of(node, "peel-1"),
            settings,
            "settings through {name}"
        );
        let tokens = ok(&node.zester(&["token", "list"]), "token list");
        assert!(tokens.contains(&token_id), "token through {name}: {tokens}");
    }
    assert!(
        leaders.windows(2).all(|w| w[0] == w[1]),
        "every node names the same meta leader: {leaders:?}"
    );

    // Peels whose keys were accepted on the single node connect to every node.
    for (i, node) in nodes.iter().enumerate() {
        for n in [1 + i, 50 + i, KEYS - i] {
            let (id, creds) = creds_of(&nodes[0], n);
            peel_connects(node, &creds, &id)
                .await
                .unwrap_or_else(|e| panic!("{id} refused by node {i}: {e}\n{}", node.log()));
        }
    }
    for node in nodes.iter_mut() {
        node.stop();
    }
}

/// A grow killed after the store was set aside: a standalone start is refused (the records
/// would be missing), and the next clustered start resumes the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_grow_refuses_a_standalone_start_and_resumes_clustered() {
    let mut first = Up {
        child: None,
        dir: tempfile::tempdir().unwrap(),
    };
    ok(&common::zester(&first.home(), &["init"]), "init");
    for n in 1..=5 {
        ok(
            &first.zester(&["creds", "issue", &format!("peel-{n}")]),
            "creds issue",
        );
    }
    first.launch();
    first.stop();
    // The other two join while it is still the only node (and runs JetStream on its own).
    let ports = route_ports(3);
    let mut joined = join_homes(&mut first, &ports, &["a", "b", "c"]);
    let third = joined.pop().unwrap();
    let second = joined.pop().unwrap();
    // Where a crash right after the rename leaves the home.
    let store = first.home().join("nats/jetstream");
    let set_aside = first.home().join("nats/jetstream.standalone");
    std::fs::rename(&store, &set_aside).unwrap();

    let refused = first.zester(&["up", "--listen", "127.0.0.1:0", "--monitor", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("not yet copied into the cluster"),
        "the refusal says why: {stderr}"
    );
    assert!(set_aside.exists(), "the set-aside store is untouched");

    let mut nodes = [first, second, third];
    start_all(&mut nodes, &ports, &["a", "b", "c"]);
    let log = nodes[0].log();
    assert!(
        log.contains("grow: an earlier start did not finish"),
        "{log}"
    );
    assert!(
        log.contains("grow: every standalone bucket is in the cluster, verified"),
        "{log}"
    );
    assert!(!set_aside.exists());
    let expected: Vec<String> = (1..=5).map(|n| format!("peel-{n}")).collect();
    for node in &nodes {
        node.wait_for(
            Duration::from_secs(60),
            "the node's cache holds the keys",
            || cluster::status(node).is_some_and(|s| s["keys"]["accepted"] == 5),
        );
        assert_eq!(accepted_ids(node), expected);
    }
    for node in nodes.iter_mut() {
        node.stop();
    }
}
