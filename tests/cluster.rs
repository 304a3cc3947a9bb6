//! Three real `zester up` nodes grown with `zester node join` (issue 18): the secrets that
//! travel and those that do not, one fleet on any node (enrol on one, accept on another,
//! connect to a third, revoke anywhere cuts the session where it is), the buckets replicated
//! to three, a joining key that is not accepted gets nothing, and a configuration reload on one
//! node cuts no connection anywhere.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::nodes::{self, peel_enrol, wait, Node};

#[test]
fn three_nodes_grown_by_join_are_one_fleet() {
    let mut nodes = nodes::three();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // What travelled and what did not: the identity keys stayed on `a`.
    for node in [b, c] {
        for kept in ["operator.nk", "sys.nk", "zester.nk"] {
            assert!(
                !node.home().join("auth").join(kept).exists(),
                "{kept} travelled to {}",
                node.name
            );
        }
        for given in [
            "zester-signing.nk",
            "callout.xk",
            "callout.creds",
            "sys.creds",
        ] {
            let path = node.home().join("auth").join(given);
            assert_eq!(common::mode(&path), 0o600, "{}", path.display());
        }
        // Its TLS key is its own: not a's, and the one it made before it asked.
        let key = std::fs::read(node.home().join("pki/server.key")).unwrap();
        assert_ne!(key, std::fs::read(a.home().join("pki/server.key")).unwrap());
        assert_eq!(
            key,
            std::fs::read(node.home().join("node/server.key")).unwrap()
        );
    }

    // Every node sees the same three nodes, all accepted and seen.
    for node in &nodes {
        let names = || {
            let list = node.json(&["node", "list"]);
            let mut names: Vec<String> = list
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["state"] == "accepted" && n["seen_at"].as_i64() > Some(0))
                .map(|n| n["name"].as_str().unwrap().to_string())
                .collect();
            names.sort();
            names
        };
        wait(
            Duration::from_secs(5),
            &format!("three nodes listed on {}", node.name),
            || names() == ["a", "b", "c"],
            || {
                let logs: Vec<String> = nodes
                    .iter()
                    .map(|n| format!("--- {}\n{}", n.name, n.log()))
                    .collect();
                format!("{:?}\n{}", names(), logs.join("\n"))
            },
        );
        wait(
            Duration::from_secs(10),
            &format!("a meta group of three seen from {}", node.name),
            || {
                let jsz = common::http_get_json(&node.monitor(), "/jsz");
                jsz["meta_cluster"]["cluster_size"] == 3
                    && jsz["meta_cluster"]["leader"].is_string()
            },
            String::new,
        );
    }

    // The cluster's signing key is not rotated on one node alone (the others would go on
    // signing with the old one): refused, saying why, and nothing changed.
    let account_before = std::fs::read(b.home().join("auth/zester.jwt")).unwrap();
    let refused = b.zester(&["creds", "rotate", "signing-key"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is a node of cluster"), "{stderr}");
    assert_eq!(
        std::fs::read(b.home().join("auth/zester.jwt")).unwrap(),
        account_before
    );

    // Nor the master's or admin's creds (every node trusts their key): refused on the first
    // node too (its zester.toml has no [cluster]: its node records say it), files unchanged.
    for role in ["master", "admin"] {
        let creds = a.home().join(format!("auth/{role}.creds"));
        let before = std::fs::read(&creds).unwrap();
        let refused = a.zester(&["creds", "rotate", role]);
        assert!(!refused.status.success(), "creds rotate {role}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("is a node of cluster") && stderr.contains(role),
            "{stderr}"
        );
        assert_eq!(std::fs::read(&creds).unwrap(), before, "{role}.creds");
    }

    // The buckets are replicated to all three nodes (before any node dies).
    assert!(nodes::replicated(a), "{:?}", nodes::stream_replicas(a));

    // The nats CLI context lists every node.
    let config = tempfile::tempdir().unwrap();
    let exported = Command::new(env!("CARGO_BIN_EXE_zester"))
        .arg("--home")
        .arg(a.home())
        .args([
            "context", "export", "--name", "fleet", "--role", "admin", "--json",
        ])
        .env("XDG_CONFIG_HOME", config.path())
        .env_remove("ZESTER_HOME")
        .output()
        .unwrap();
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let context: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(config.path().join("nats/context/fleet.json")).unwrap(),
    )
    .unwrap();
    let urls = context["url"].as_str().unwrap();
    assert_eq!(urls.split(',').count(), 3, "{context}");
    for node in &nodes {
        assert!(urls.contains(&node.url()), "{urls}");
    }

    // One fleet: enrol through c, accept on a, fetch through b, run on b, command from a.
    let peel_dir = tempfile::tempdir().unwrap();
    let first = peel_enrol(c, "web-01", peel_dir.path());
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    a.ok(&["key", "accept", "web-01"]);
    // Held on every node: each node's own key cache (its metrics), which its callout decides
    // from, whichever node answered the accept.
    let accepted = std::time::Instant::now();
    for node in &nodes {
        wait(
            Duration::from_secs(5),
            &format!("the accept on a held in {}'s key cache", node.name),
            || node.cached_keys("accepted") == Some(1),
            || node.log(),
        );
    }
    println!(
        "the accept on a held in every node's key cache {:?} after it was made",
        accepted.elapsed()
    );
    let fetched = peel_enrol(b, "web-01", peel_dir.path());
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert!(peel_dir.path().join("web-01.creds").exists());
    // The profile lists every node, the one it enrolled through first.
    let profile: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(peel_dir.path().join("web-01.json")).unwrap(),
    )
    .unwrap();
    let servers: Vec<&str> = profile["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(servers.len(), 3, "{profile}");
    assert_eq!(servers[0], b.url());
    for node in [a, c] {
        assert!(servers.contains(&node.url().as_str()), "{profile}");
    }

    // So does the profile `creds issue` writes on any node, that node first.
    let issued = c.json(&["creds", "issue", "web-09"]);
    let listed: Vec<&str> = issued["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{issued}");
    assert_eq!(listed[0], c.url());
    let profile: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(issued["profile"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(profile["servers"], issued["servers"], "{profile}");
    for node in [a, b] {
        assert!(listed.contains(&node.url().as_str()), "{issued}");
    }

    // `peel run --dir` with nothing else: the profile's servers, b first.
    let peel_log = peel_dir.path().join("peel.log");
    let peel = common::Reaped::new(
        Command::new(env!("CARGO_BIN_EXE_zester"))
            .args(["peel", "run", "--id", "web-01"])
            .arg("--dir")
            .arg(peel_dir.path())
            .env_remove("ZESTER_HOME")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&peel_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let read_peel_log = || std::fs::read_to_string(&peel_log).unwrap_or_default();
    let connects = || read_peel_log().matches("connected peel=web-01").count();
    wait(
        Duration::from_secs(20),
        "the peel connected",
        || connects() >= 1,
        read_peel_log,
    );
    let ping = a.zester(&["cmd", "web-01", "test.ping", "--json"]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // The node the peel is on dies (zester and its child, kill -9): the peel fails over to a
    // live node, and is answered there.
    let on = nodes
        .iter()
        .position(|node| {
            let connz = common::http_get_json(&node.monitor(), "/connz?auth=true");
            connz["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["authorized_user"] == "web-01")
        })
        .expect("the peel is on one of the nodes");
    nodes[on].kill();
    let (a, b, c) = (&nodes[(on + 1) % 3], &nodes[on], &nodes[(on + 2) % 3]);
    let killed = std::time::Instant::now();
    wait(
        Duration::from_secs(30),
        "the peel back on a live node",
        || {
            a.zester(&["cmd", "web-01", "test.ping", "--timeout", "1s"])
                .status
                .success()
        },
        read_peel_log,
    );
    println!(
        "peel answered again {:?} after {} was killed",
        killed.elapsed(),
        b.name
    );
    for line in read_peel_log().lines().filter(|l| !l.contains("facts")) {
        println!("peel: {line}");
    }

    // A revoke on c cuts the session the peel holds wherever it is now.
    let revoked = c.json(&["key", "revoke", "web-01"]);
    assert!(revoked.to_string().contains("\"kicked\":1"), "{revoked}");
    let revoked_at = std::time::Instant::now();
    for node in [a, c] {
        wait(
            Duration::from_secs(5),
            &format!("the revoke on c held in {}'s key cache", node.name),
            || node.cached_keys("revoked") == Some(1),
            || node.log(),
        );
    }
    println!(
        "the revoke on c held in both live nodes' key caches {:?} after it was made (one node dead)",
        revoked_at.elapsed()
    );
    wait(
        Duration::from_secs(5),
        "the peel cut off",
        || read_peel_log().matches("disconnected").count() >= 2,
        read_peel_log,
    );
    drop(peel);

    // With b dead, removing c too would leave a alone of the three the meta group counts: the
    // cluster would stop taking key changes. Refused, saying why; c stays a node.
    let counts_dead = |node: &Node| {
        let status = node.json(&["status"]);
        status["cluster"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["name"] == b.name.as_str() && n["current"] != true)
    };
    wait(
        Duration::from_secs(30),
        &format!(
            "{} counted not current by {} and {}",
            b.name, a.name, c.name
        ),
        || counts_dead(a) && counts_dead(c),
        String::new,
    );
    let refused = a.zester(&["node", "remove", &c.name]);
    assert!(
        !refused.status.success(),
        "node remove {} with {} dead",
        c.name,
        b.name
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("would leave") && said.contains("--force"),
        "{said}"
    );
    let listed = a.json(&["node", "list"]);
    let state = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == c.name.as_str())
        .map(|n| n["state"].clone());
    assert_eq!(state, Some(serde_json::json!("accepted")), "{listed}");
}

/// The walkthrough's order on one machine, typed without a pause: `zester up &` on the first
/// node, then `node join --wait` at once. The join runs before the node listens, and waits for
/// it instead of failing ("connection refused").
#[test]
fn a_join_with_wait_waits_for_a_node_that_is_not_up_yet() {
    let mut a = Node::first("a");
    let b = Node::fresh("b");
    let (home, url, a_home) = (b.home(), a.url(), a.home());
    let ports = (b.client_port, b.cluster_port);
    let joining = std::thread::spawn(move || nodes::join_at(&home, "b", ports, &a_home, &url));
    // The join has made its keys (it connects right after): only now does a start.
    wait(
        Duration::from_secs(10),
        "b's node keys",
        || b.home().join("node").is_dir(),
        String::new,
    );
    a.spawn();
    let joined = joining.join().expect("the join completes once a is up");
    assert_eq!(joined["state"], "accepted", "{joined}");
    assert!(b.home().join("zester.toml").exists());
}

#[test]
fn a_join_that_is_not_accepted_gets_nothing_and_a_taken_name_is_refused() {
    let mut a = Node::first("a");
    a.spawn();
    a.wait_ready(Duration::from_secs(30));
    let b = Node::fresh("b");
    // `node join` as node "b" through a, without --wait.
    let ca = a.ca();
    let ask_to_join = |node: &Node| {
        node.zester(&[
            "node",
            "join",
            "--server",
            &a.url(),
            "--ca",
            ca.to_str().unwrap(),
            "--name",
            "b",
            "--listen",
            "127.0.0.1:1",
            "--cluster-listen",
            "127.0.0.1:2",
        ])
    };
    // `node join` without --wait: pending, exit 2, no home written.
    let out = ask_to_join(&b);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("zester node accept b"));
    assert!(!b.home().join("auth").exists());
    // Another key asking for the same name is refused, with the reason.
    let other = Node::fresh("other");
    let out = ask_to_join(&other);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("taken by another node"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong fingerprint is refused and leaves it pending.
    let refused = a.zester(&["node", "accept", "b", "--fingerprint", "SHA256:0000"]);
    assert!(!refused.status.success());
    assert!(a
        .json(&["node", "list"])
        .to_string()
        .contains("\"pending\""));
    // A removed node may not fetch: its next join says so.
    a.ok(&["node", "remove", "b"]);
    let out = ask_to_join(&b);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was removed from the cluster"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!b.home().join("auth").exists());
    // The audit log names the join and the refusal.
    let audit = std::fs::read_to_string(a.home().join("audit.log")).unwrap();
    assert!(audit.contains("\"code\":\"node_pending\""), "{audit}");
    assert!(audit.contains("\"code\":\"node_name_taken\""), "{audit}");
    assert!(audit.contains("\"code\":\"node_removed\""), "{audit}");
}

/// The ZESTER account JWT of `node`: its own copy (`auth/zester.jwt`), or its server's resolver
/// file, decoded (signature checked).
fn account_of(file: &std::path::Path) -> Option<zester::identity::jwt::AccountJwt> {
    let text = std::fs::read_to_string(file).ok()?;
    zester::identity::jwt::decode_ignoring_time(text.trim()).ok()
}

fn revokes_all(file: &std::path::Path, keys: &[&str]) -> bool {
    account_of(file).is_some_and(|jwt| {
        keys.iter()
            .all(|k| jwt.claims().nats.revocations.contains_key(*k))
    })
}

/// Which node's admin service answered the revocation of `id` (its log says so).
fn answered_by<'a>(nodes: &'a [Node], id: &str) -> Option<&'a Node> {
    nodes.iter().find(|node| {
        node.log()
            .lines()
            .any(|line| line.contains("key revoked") && line.contains(id))
    })
}

#[test]
fn a_revocation_made_on_one_node_is_in_every_nodes_account_jwt_and_the_next_keeps_it() {
    let mut nodes = nodes::three();
    let peel_dir = tempfile::tempdir().unwrap();
    let mut nkeys = Vec::new();
    for id in ["acct-01", "acct-02"] {
        let enrolled = peel_enrol(&nodes[0], id, peel_dir.path());
        assert!(
            enrolled.status.success(),
            "{}",
            String::from_utf8_lossy(&enrolled.stderr)
        );
        nodes[0].ok(&["key", "accept", id]);
        let shown = nodes[0].json(&["key", "show", id]);
        nkeys.push(shown["record"]["nkey"].as_str().unwrap().to_string());
    }
    let account = account_of(&nodes[0].home().join("auth/zester.jwt"))
        .unwrap()
        .subject()
        .to_string();
    let resolver_file = |node: &Node| node.home().join(format!("nats/jwt/{account}.jwt"));
    let own_file = |node: &Node| node.home().join("auth/zester.jwt");

    // The first revocation, through a: whichever node's service answers, every node's copy and
    // every server's resolver hold it.
    nodes[0].ok(&["key", "revoke", "acct-01"]);
    let first = std::time::Instant::now();
    for node in &nodes {
        wait(
            Duration::from_secs(10),
            &format!(
                "the first revocation in {}'s auth/zester.jwt and resolver",
                node.name
            ),
            || {
                revokes_all(&own_file(node), &[&nkeys[0]])
                    && revokes_all(&resolver_file(node), &[&nkeys[0]])
            },
            || node.log(),
        );
    }
    println!(
        "the first revocation was in every node's auth/zester.jwt and resolver {:?} after it was made",
        first.elapsed()
    );
    let by = answered_by(&nodes, "acct-01").expect("a node logged the revocation");
    let by_name = by.name.clone();
    println!("the first revocation was answered by {by_name}");

    // The node that answered stops: the second revocation is signed by another node, from
    // its own copy, which must not drop the first.
    let stopped = nodes.iter().position(|n| n.name == by_name).unwrap();
    nodes[stopped].stop();
    let via = (stopped + 1) % 3;
    let second = std::time::Instant::now();
    wait(
        Duration::from_secs(30),
        "the second revocation made with one node down",
        || {
            nodes[via]
                .zester(&["key", "revoke", "acct-02"])
                .status
                .success()
        },
        || nodes[via].log(),
    );
    let live: Vec<&Node> = nodes.iter().filter(|n| n.name != by_name).collect();
    for node in &live {
        wait(
            Duration::from_secs(10),
            &format!(
                "both revocations in {}'s auth/zester.jwt and resolver",
                node.name
            ),
            || {
                revokes_all(&own_file(node), &[&nkeys[0], &nkeys[1]])
                    && revokes_all(&resolver_file(node), &[&nkeys[0], &nkeys[1]])
            },
            || node.log(),
        );
    }
    println!(
        "the second revocation (through {}) was in both live nodes' copies, with the first, {:?} after it was asked for",
        nodes[via].name,
        second.elapsed()
    );
    let second_by = answered_by(&nodes, "acct-02").expect("a node logged the revocation");
    assert_ne!(second_by.name, by_name);
    println!("the second revocation was answered by {}", second_by.name);

    // The stopped node comes back: it takes the cluster's copy at start, and its server has
    // it too.
    let restarted = std::time::Instant::now();
    nodes[stopped].spawn();
    nodes[stopped].wait_ready(Duration::from_secs(60));
    let node = &nodes[stopped];
    wait(
        Duration::from_secs(10),
        &format!(
            "both revocations in {}'s copy and resolver after its restart",
            node.name
        ),
        || {
            revokes_all(&own_file(node), &[&nkeys[0], &nkeys[1]])
                && revokes_all(&resolver_file(node), &[&nkeys[0], &nkeys[1]])
        },
        || node.log(),
    );
    println!(
        "{} held both revocations {:?} after it was started again",
        node.name,
        restarted.elapsed()
    );
    // One account JWT everywhere in the end: the same iat on every node, in every resolver.
    let iats: Vec<i64> = nodes
        .iter()
        .flat_map(|n| [own_file(n), resolver_file(n)])
        .map(|f| account_of(&f).unwrap().claims().iat)
        .collect();
    println!("account JWT iat on every node (own copy, resolver): {iats:?}");
    // The monitor's view of the account agrees.
    for node in &nodes {
        let accountz = common::http_get_json(&node.monitor(), &format!("/accountz?acc={account}"));
        let revoked = accountz["account_detail"]["decoded_jwt"]["nats"]["revocations"].clone();
        for key in &nkeys {
            assert!(revoked.get(key).is_some(), "{}: {accountz}", node.name);
        }
    }
}

/// Peels connected through the reload.
const RELOAD_PEELS: usize = 30;

/// The `zester_sessions` gauge of `node` (its session table), `None` while unreadable.
fn sessions_on(node: &Node) -> Option<u64> {
    let runtime: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node.home().join("nats/runtime.json")).ok()?)
            .ok()?;
    let url = runtime["metrics_url"].as_str()?;
    let metrics = common::try_http_get_text(url.trim_end_matches("/metrics"), "/metrics").ok()?;
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("zester_sessions ")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|count| count as u64)
}

/// The client ids of zester's own store and service connections on `node`'s server.
fn own_connections(node: &Node) -> Vec<(String, u64)> {
    let connz = common::http_get_json(&node.monitor(), "/connz?auth=true&limit=1024");
    let mut own: Vec<(String, u64)> = connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let name = c["name"].as_str()?;
            matches!(name, "zester-store" | "zester-service")
                .then(|| (name.to_string(), c["cid"].as_u64().unwrap_or(0)))
        })
        .collect();
    own.sort();
    own
}

/// A configuration reload on one node (SIGHUP to its nats-server, as a certificate renewal or
/// a route change sends) re-authorises every connection on that server, and the callout that
/// answers is any node's: no connection is cut, the peels' wherever they were admitted, nor
/// the node's own store and service connections (key changes through it work at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_on_one_node_cuts_no_connection_anywhere() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use zester::appliance::keys::KeyRecord;
    use zester::home::{self, now_unix, Home};
    use zester::identity::peel_id::PeelId;

    let nodes = tokio::task::block_in_place(nodes::three);
    let reloaded = &nodes[1];

    // The fleet: creds issued with a's authority, registered as accepted, each peel given one
    // node's URL (ten per node), counting its disconnects.
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(nodes[0].home());
    let authority = home.load_authority().unwrap();
    let admin = zester::cli::client::admin_connect(&home).await.unwrap();
    let disconnects = Arc::new(AtomicUsize::new(0));
    let mut peels = Vec::new();
    for n in 0..RELOAD_PEELS {
        let id = PeelId::parse(&format!("reload-{n:02}")).unwrap();
        let creds = authority.issue_peel(&id, now_unix(), 3600).unwrap();
        let path = dir.path().join(format!("{id}.creds"));
        home::write_creds(&path, &creds).unwrap();
        let record = KeyRecord::new_accepted(
            id.clone(),
            &creds.key().public_key(),
            "cluster",
            "the reload test's fleet",
            now_unix(),
        )
        .unwrap();
        zester::cli::client::admin_request(&admin, zester::wire::admin::KEY_REGISTER, &record)
            .await
            .unwrap_or_else(|e| panic!("register {id}: {e}"));
        let node = &nodes[n % nodes.len()];
        let counted = disconnects.clone();
        let client = async_nats::ConnectOptions::with_credentials_file(&path)
            .await
            .unwrap()
            .add_root_certificates(node.ca())
            .require_tls(true)
            .custom_inbox_prefix(format!("_INBOX.{id}"))
            .event_callback(move |event| {
                if let async_nats::Event::Disconnected = event {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                async {}
            })
            .connect(node.url())
            .await
            .unwrap_or_else(|e| panic!("{id} connects to {}: {e}", node.name));
        client.flush().await.unwrap();
        peels.push(client);
    }
    // Admissions are announced fire-and-forget: a moment for them to arrive everywhere.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: Vec<Option<u64>> = nodes.iter().map(sessions_on).collect();
    eprintln!("session tables before the reload (a, b, c): {before:?}");
    let own_before = own_connections(reloaded);
    assert_eq!(own_before.len(), 2, "{own_before:?}");

    // SIGHUP to b's nats-server, as zester's own reload does.
    let pid: i32 = std::fs::read_to_string(reloaded.home().join("nats/nats-server.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let reloads = || {
        reloaded
            .log()
            .matches("Reloaded server configuration")
            .count()
    };
    let reloads_before = reloads();
    let sent = std::time::Instant::now();
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    tokio::task::block_in_place(|| {
        wait(
            Duration::from_secs(20),
            "b's nats-server reloaded",
            || reloads() > reloads_before,
            || reloaded.log(),
        )
    });
    eprintln!("b reloaded {:?} after SIGHUP", sent.elapsed());
    // Re-authorisation runs after the reload: a few seconds for any disconnect to show.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let cut = disconnects.load(Ordering::SeqCst);
    let own_after = own_connections(reloaded);
    eprintln!(
        "after the reload: {cut} of {RELOAD_PEELS} peels disconnected; b's own connections {own_before:?} -> {own_after:?}"
    );
    let refusals = || {
        nodes
            .iter()
            .flat_map(|n| {
                n.log()
                    .lines()
                    .filter(|l| {
                        [
                            "again",
                            "refused",
                            "forgot",
                            "ignored",
                            "shut down",
                            "DEBUG",
                        ]
                        .iter()
                        .any(|w| l.contains(w))
                    })
                    .map(|l| format!("{}: {l}", n.name))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(cut, 0, "peels were cut by a reload on b:\n{}", refusals());
    assert_eq!(
        own_after, own_before,
        "b's store and service connections were cut (new client ids)"
    );
    for peel in &peels {
        tokio::time::timeout(Duration::from_secs(5), peel.flush())
            .await
            .expect("a round trip within 5 s")
            .expect("a round trip");
    }

    // A key change through b works at once and holds in every node's cache.
    let started = std::time::Instant::now();
    let revoked = tokio::task::block_in_place(|| reloaded.json(&["key", "revoke", "reload-01"]));
    eprintln!("key revoke through b: {:?}: {revoked}", started.elapsed());
    assert!(revoked.to_string().contains("\"kicked\":1"), "{revoked}");
    for node in &nodes {
        tokio::task::block_in_place(|| {
            wait(
                Duration::from_secs(10),
                &format!("the revoke through b held in {}'s key cache", node.name),
                || node.cached_keys("revoked") == Some(1),
                || node.log(),
            )
        });
    }
    eprintln!(
        "the revoke through b held in every node's cache {:?} after it was made",
        started.elapsed()
    );

    // Every node's table forgets a closed connection, whichever node let it in.
    let during = disconnects.load(Ordering::SeqCst);
    drop(peels);
    tokio::task::block_in_place(|| {
        for node in &nodes {
            wait(
                Duration::from_secs(10),
                &format!("{}'s table back to zester's own sessions", node.name),
                || sessions_on(node).is_some_and(|n| n < RELOAD_PEELS as u64),
                || format!("{:?}", sessions_on(node)),
            );
        }
    });
    let after: Vec<Option<u64>> = nodes.iter().map(sessions_on).collect();
    eprintln!("session tables with the fleet gone (a, b, c): {after:?} ({during} disconnects counted, the revoked peel's kick included)");
    for (node, (before, after)) in nodes.iter().zip(before.iter().zip(&after)) {
        assert!(
            before.unwrap_or(0) >= RELOAD_PEELS as u64,
            "{}'s table held {before:?} sessions with {RELOAD_PEELS} peels connected",
            node.name
        );
        assert!(
            after.unwrap_or(u64::MAX) <= before.unwrap_or(0) - RELOAD_PEELS as u64,
            "{}: {after:?}",
            node.name
        );
    }
}
