//! Several `zester up` nodes on 127.0.0.1 forming one cluster, for tests of issue 18: route
//! ports chosen at run time, each node's `[cluster] routes` listing every node, all nodes
//! started together (a node is ready only once JetStream elected a meta leader, which takes
//! more than half of them), and each stopped by its [`Up`] when the test ends or fails.
//!
//! A new node gets its home with `zester node join` ([`join_homes`]).

use std::time::Duration;

use serde_json::Value;

use super::up::Up;

/// How long a node of a cluster may take to be ready (meta election, a grow's copy).
pub const NODE_READY: Duration = Duration::from_secs(90);

/// The route ports of `n` nodes, free a moment ago.
pub fn route_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| super::free_port()).collect()
}

/// Lists every node's route address in `home`'s `zester.toml` (`[cluster] routes`).
pub fn set_routes(up: &Up, ports: &[u16]) {
    let file = up.home().join("zester.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let routes: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    assert!(
        text.contains("\nroutes = []"),
        "zester.toml has an empty [cluster] routes to fill in"
    );
    let text = text.replace(
        "\nroutes = []",
        &format!("\nroutes = [{}]", routes.join(", ")),
    );
    std::fs::write(&file, text).unwrap();
}

/// Grows the cluster of `first` (a stopped node) as a user does: starts it with its route port
/// (`ports[0]`) and name (`names[0]`), where it runs alone and answers joins; makes each other
/// node's home with `zester node join --wait` through it, accepted with `zester node accept`;
/// then stops it. Returns the new nodes, not started (their homes route to the nodes before
/// them; `first` knows them all from its node records).
pub fn join_homes(first: &mut Up, ports: &[u16], names: &[&str]) -> Vec<Up> {
    let listen = format!("127.0.0.1:{}", ports[0]);
    first.spawn_with(&["--cluster-listen", &listen, "--node-name", names[0]]);
    first.wait_ready(NODE_READY);
    let url = first.runtime()["url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut joined = Vec::new();
    for (port, name) in ports.iter().zip(names).skip(1) {
        let up = Up {
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        super::nodes::join_at(
            &up.home(),
            name,
            (super::free_port(), *port),
            &first.home(),
            &url,
        );
        joined.push(up);
    }
    first.stop();
    joined
}

/// Starts every node with its route port and name (`nodes[i]` on `ports[i]`, named
/// `names[i]`), all at once, and waits until each is ready.
pub fn start_all(nodes: &mut [Up], ports: &[u16], names: &[&str]) {
    for (i, node) in nodes.iter_mut().enumerate() {
        let listen = format!("127.0.0.1:{}", ports[i]);
        node.spawn_with(&["--cluster-listen", &listen, "--node-name", names[i]]);
    }
    let deadline = std::time::Instant::now() + NODE_READY;
    while !nodes.iter().all(Up::is_ready) {
        if std::time::Instant::now() >= deadline {
            let report = super::nodes_report(
                nodes
                    .iter()
                    .zip(names)
                    .map(|(node, name)| (*name, node.is_ready(), node.log())),
            );
            panic!("not every node was ready within {NODE_READY:?}:\n{report}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `zester status --json` of `up` (the node it is connected to answers).
pub fn status(up: &Up) -> Option<Value> {
    let out = up.zester(&["status", "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Connects to `up` as peel `id` with `creds`, admitted: proven by a round trip
/// ([`super::peel_admitted`]; async-nats calls a connection up before the callout has decided).
pub async fn peel_connects(up: &Up, creds: &std::path::Path, id: &str) -> Result<(), String> {
    let client = async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .map_err(|e| e.to_string())?
        .add_root_certificates(up.home().join("pki/ca.pem"))
        .require_tls(true)
        .custom_inbox_prefix(format!("_INBOX.{id}"))
        .max_reconnects(Some(0))
        .connect(up.runtime()["url"].as_str().unwrap_or_default())
        .await
        .map_err(|e| e.to_string())?;
    super::peel_admitted(&client, id).await
}
