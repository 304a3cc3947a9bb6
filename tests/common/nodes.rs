//! Several real `zester up` nodes on 127.0.0.1, each on its own home and its own ports chosen
//! at run time, grown the way a user grows a cluster: the first node is made by `zester init`
//! and started with `--cluster-listen`; every other one runs `zester node join --wait` on a
//! fresh home while the test, as the admin, runs `zester node accept` on the first; then every
//! node is (re)started with `zester up`. Each process is killed (and reaped) on drop.
//!
//! A node listens on 127.0.0.1 unless made with another address ([`Node::on`]), and may run in
//! a network namespace ([`Node::in_netns`]): its `zester up` and every `zester` command run
//! for it go through `ip netns exec`, so a test can cut it off from the others.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, zester};

/// One node: its home, its ports, and its `zester up` process while it runs.
pub struct Node {
    /// The node's name.
    pub name: String,
    dir: tempfile::TempDir,
    /// The client port.
    pub client_port: u16,
    /// The route port.
    pub cluster_port: u16,
    child: Option<Child>,
    runs: u32,
    /// The address it listens on (clients and routes).
    pub host: String,
    /// The network namespace its processes run in, if any.
    pub netns: Option<String>,
}

impl Node {
    /// A node with an empty home (to join), and ports of its own.
    pub fn fresh(name: &str) -> Node {
        Node {
            name: name.to_string(),
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            cluster_port: free_port(),
            child: None,
            runs: 0,
            host: "127.0.0.1".to_string(),
            netns: None,
        }
    }

    /// The node listening on `host` instead of 127.0.0.1.
    pub fn on(mut self, host: &str) -> Node {
        self.host = host.to_string();
        if self.home().join("zester.toml").exists() {
            // A home made by `zester init`: its certificate must name the address too, so it
            // is made again with the address in `tls_names` (nothing has used it yet).
            let config = self.home().join("zester.toml");
            let text = std::fs::read_to_string(&config).unwrap();
            let text = text.replacen("tls_names = []", &format!("tls_names = [\"{host}\"]"), 1);
            std::fs::write(&config, text).unwrap();
            self.ok(&["init", "--force"]);
        }
        self
    }

    /// The node's processes running in network namespace `netns`.
    pub fn in_netns(mut self, netns: &str) -> Node {
        self.netns = Some(netns.to_string());
        self
    }

    /// A command running `program` here: in the node's namespace if it has one.
    fn command(&self, program: &std::path::Path) -> Command {
        match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// The first node of a cluster: a home made by `zester init`, not started yet.
    pub fn first(name: &str) -> Node {
        let node = Node::fresh(name);
        std::fs::create_dir_all(node.home()).unwrap();
        let init = node.zester(&["init"]);
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        node
    }

    /// The home.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `tls://<host>:<client port>`.
    pub fn url(&self) -> String {
        format!("tls://{}:{}", self.host, self.client_port)
    }

    /// The cluster CA (the same file on every node).
    pub fn ca(&self) -> PathBuf {
        self.home().join("pki/ca.pem")
    }

    /// Runs `zester --home <this home> ARGS…` (in the node's namespace if it has one).
    pub fn zester(&self, args: &[&str]) -> std::process::Output {
        if self.netns.is_none() {
            return zester(&self.home(), args);
        }
        self.command(std::path::Path::new(env!("CARGO_BIN_EXE_zester")))
            .arg("--home")
            .arg(self.home())
            .args(args)
            .env_remove("ZESTER_HOME")
            .stdin(Stdio::null())
            .output()
            .expect("run zester")
    }

    /// [`Node::zester`], asserting success; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.zester(args);
        assert!(
            out.status.success(),
            "zester {args:?} on {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`Node::ok`] with `--json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// The log of the current (or last) run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file(self.runs)).unwrap_or_default()
    }

    fn log_file(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("up-{run}.log"))
    }

    /// Starts `zester up` (the node's own ports and name on the command line for the first node;
    /// the others have them in the zester.toml `node join` wrote) without waiting.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.name);
        self.runs += 1;
        let log = std::fs::File::create(self.log_file(self.runs)).unwrap();
        let listen = format!("{}:{}", self.host, self.client_port);
        let cluster = format!("{}:{}", self.host, self.cluster_port);
        let child = self
            .command(std::path::Path::new(env!("CARGO_BIN_EXE_zester")))
            .arg("--home")
            .arg(self.home())
            .args(["up", "--listen", &listen, "--monitor", "127.0.0.1:0"])
            .args(["--metrics", &format!("{}:0", self.host)])
            .args(["--cluster-listen", &cluster, "--node-name", &self.name])
            .env_remove("ZESTER_HOME")
            .env_remove("ZESTER_METRICS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn zester up");
        self.child = Some(child);
    }

    /// Waits until this run wrote `runtime.json` (it is ready).
    pub fn wait_ready(&self, limit: Duration) {
        wait(
            limit,
            &format!("{} ready", self.name),
            || self.log().contains("zester is ready"),
            || {
                let log = self.log();
                format!(
                    "{log}\n--- its last lines of zester's own and nats-server's warnings:\n{}",
                    super::log_tail(&log)
                )
            },
        );
    }

    /// The monitoring URL of the running node.
    pub fn monitor(&self) -> String {
        let runtime: Value = serde_json::from_str(
            &std::fs::read_to_string(self.home().join("nats/runtime.json")).unwrap(),
        )
        .unwrap();
        runtime["monitor_url"].as_str().unwrap().to_string()
    }

    /// How many key records in `state` this node's own key cache holds (its `zester_keys`
    /// gauge): what its callout decides from, whichever node answers admin requests. `None`
    /// while its metrics cannot be read (not started, or cut off).
    pub fn cached_keys(&self, state: &str) -> Option<u64> {
        let runtime: Value = serde_json::from_str(
            &std::fs::read_to_string(self.home().join("nats/runtime.json")).unwrap(),
        )
        .unwrap();
        let url = runtime["metrics_url"].as_str().expect("metrics are on");
        let base = url.trim_end_matches("/metrics");
        let wanted = format!("zester_keys{{state=\"{state}\"}} ");
        let metrics = super::try_http_get_text(base, "/metrics").ok()?;
        Some(
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(&wanted)?.trim().parse::<f64>().ok())
                .map_or(0, |count| count as u64),
        )
    }

    /// SIGTERM, and waits for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// SIGKILL of zester (its nats-server child dies with it: PR_SET_PDEATHSIG).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `done` every 100 ms for at most `limit`; fails with `what` and `context()`.
pub fn wait(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `zester node join --wait` of `joining` through `via`, accepted there by the admin (with the
/// fingerprint the join printed); returns the join's JSON output.
pub fn join(joining: &Node, via: &Node) -> Value {
    join_on(
        &joining.home(),
        &joining.name,
        (&joining.host, joining.client_port, joining.cluster_port),
        &via.home(),
        &via.url(),
    )
}

/// [`join`] for any home: the new node `name` on `home` (client and route ports `ports`)
/// joins through the running node on `via_home`, reachable at `via_url`.
pub fn join_at(
    home: &std::path::Path,
    name: &str,
    ports: (u16, u16),
    via_home: &std::path::Path,
    via_url: &str,
) -> Value {
    join_on(
        home,
        name,
        ("127.0.0.1", ports.0, ports.1),
        via_home,
        via_url,
    )
}

/// [`join_at`] for a node listening on `host` (its client and route ports after it).
pub fn join_on(
    home: &std::path::Path,
    name: &str,
    (host, client_port, cluster_port): (&str, u16, u16),
    via_home: &std::path::Path,
    via_url: &str,
) -> Value {
    let listen = format!("{host}:{client_port}");
    let cluster = format!("{host}:{cluster_port}");
    let child = super::Reaped::new(
        Command::new(env!("CARGO_BIN_EXE_zester"))
            .arg("--home")
            .arg(home)
            .args(["node", "join", "--server", via_url])
            .arg("--ca")
            .arg(via_home.join("pki/ca.pem"))
            .args(["--name", name, "--listen", &listen])
            .args([
                "--cluster-listen",
                &cluster,
                "--monitor",
                "127.0.0.1:0",
                "--wait",
                "--json",
            ])
            .env_remove("ZESTER_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn zester node join"),
    );
    let admin = |args: &[&str]| zester(via_home, args);
    let mut fingerprint = String::new();
    wait(
        Duration::from_secs(20),
        &format!("{name} pending"),
        || {
            let out = admin(&["node", "list", "--json"]);
            let nodes: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            nodes.as_array().into_iter().flatten().any(|n| {
                let pending = n["name"] == name && n["state"] == "pending";
                if pending {
                    fingerprint = fingerprint_of(n);
                }
                pending
            })
        },
        String::new,
    );
    let accepted = admin(&["node", "accept", name, "--fingerprint", &fingerprint]);
    assert!(
        accepted.status.success(),
        "node accept {name}: {}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let out = child.output();
    assert!(
        out.status.success(),
        "node join {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `zester peel enrol` of `id` through `via` into `dir` (with `via`'s CA), to completion.
pub fn peel_enrol(via: &Node, id: &str, dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zester"))
        .args(["peel", "enrol", "--server", &via.url(), "--id", id])
        .arg("--ca")
        .arg(via.ca())
        .arg("--dir")
        .arg(dir)
        .env_remove("ZESTER_HOME")
        .output()
        .unwrap()
}

/// The fingerprint of a node record as `node list --json` gives it.
pub fn fingerprint_of(record: &Value) -> String {
    let nkey = record["nkey"].as_str().unwrap_or_default();
    zester::wire::record::fingerprint(nkey)
}

/// Three nodes `a`, `b`, `c` grown from `a` as a user does, all running and ready.
pub fn three() -> Vec<Node> {
    three_from(Node::first("a"), Node::fresh("b"), Node::fresh("c"))
}

/// [`three`] from nodes made by the caller (addresses, namespaces): `a` a first node, `b` and
/// `c` fresh ones.
pub fn three_from(mut a: Node, b: Node, c: Node) -> Vec<Node> {
    a.spawn();
    a.wait_ready(Duration::from_secs(30));
    join(&b, &a);
    join(&c, &a);
    // `a` started alone (nats-server's clustered JetStream needs a route); now it knows the
    // others' routes, and starts clustered with them.
    a.stop();
    let mut nodes = vec![a, b, c];
    for node in &mut nodes {
        node.spawn();
    }
    // Together, and when one is not ready, every node's end of the log says why.
    wait(
        Duration::from_secs(60),
        "every node ready",
        || nodes.iter().all(|n| n.log().contains("zester is ready")),
        || {
            super::nodes_report(nodes.iter().map(|n| {
                let log = n.log();
                (n.name.as_str(), log.contains("zester is ready"), log)
            }))
        },
    );
    // A node may die in the test: not before every copy is there (buckets made while the
    // meta group counted two nodes are raised within seconds).
    wait(
        Duration::from_secs(60),
        "every bucket and the audit stream at R3",
        || replicated(&nodes[0]),
        || format!("{:?}", stream_replicas(&nodes[0])),
    );
    nodes
}

/// Every zester stream `node`'s server reports, with its replicas, by name.
pub fn stream_replicas(node: &Node) -> Vec<(String, u64)> {
    let jsz = super::http_get_json(
        &node.monitor(),
        "/jsz?accounts=true&streams=true&config=true",
    );
    let mut found: Vec<(String, u64)> = Vec::new();
    for account in jsz["account_details"].as_array().into_iter().flatten() {
        for stream in account["stream_detail"].as_array().into_iter().flatten() {
            found.push((
                stream["name"].as_str().unwrap_or_default().to_string(),
                stream["config"]["num_replicas"].as_u64().unwrap_or(0),
            ));
        }
    }
    found.sort();
    found
}

/// Whether every bucket zester keeps and the audit stream exist with three copies.
pub fn replicated(node: &Node) -> bool {
    let found = stream_replicas(node);
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    zester::wire::subjects::BUCKETS
        .iter()
        .all(|b| names.contains(&format!("KV_{b}").as_str()))
        && names.contains(&"zester-audit")
        && found.iter().all(|(_, r)| *r == 3)
}
