//! The first hour (issue 14): what a new user types, as processes, with no sleeps between the
//! commands — `creds issue` then connecting at once, a peel that boots before its master,
//! secrets opened with no `--from`, `peel run --dir`, `zester cmd` over a glob with a peel
//! down, and session counts after nats-server was killed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::up::Up;
use serde_json::Value;

fn zester_bin() -> &'static str {
    env!("CARGO_BIN_EXE_zester")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A background `zester peel run` with `args`; killed on drop.
struct Agent(Child);

impl Agent {
    fn start(args: &[&str], log: &Path) -> Agent {
        let log = std::fs::File::create(log).unwrap();
        Agent(
            Command::new(zester_bin())
                .args(["peel", "run"])
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn peel run"),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `zester up` on `home`, listening on `listen` (a port fixed before it starts), in the
/// background; the caller kills it.
fn spawn_up(home: &Path, listen: &str) -> Child {
    Command::new(zester_bin())
        .arg("--home")
        .arg(home)
        .args(["up", "--listen", listen, "--monitor", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn zester up")
}

fn creds_of(up: &Up, id: &str) -> PathBuf {
    up.home().join(format!("peels/{id}.creds"))
}

async fn connect_once(up: &Up, creds: &Path, id: &str) -> Result<(), String> {
    let client = async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .map_err(|e| e.to_string())?
        .add_root_certificates(up.home().join("pki/ca.pem"))
        .require_tls(true)
        .custom_inbox_prefix(format!("_INBOX.{id}"))
        .max_reconnects(Some(0))
        .connect(up.runtime()["url"].as_str().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    // A round trip: async-nats calls a connection up before the callout has decided.
    common::peel_admitted(&client, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_issued_while_up_runs_are_admitted_when_the_command_returns() {
    let up = Up::start();
    for n in 0..20 {
        let id = format!("race-{n}");
        let out = ok(
            &up.zester(&["creds", "issue", &id, "--json"]),
            "creds issue",
        );
        let issued: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(issued["registered"], "appliance", "{issued}");
        connect_once(&up, &creds_of(&up, &id), &id)
            .await
            .unwrap_or_else(|e| panic!("{id} refused right after creds issue: {e}"));
    }
    let refused: Vec<Value> = std::fs::read_to_string(up.home().join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["decision"] != "allow")
        .collect();
    assert!(refused.is_empty(), "refusals: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peel_that_boots_before_its_master_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let run = |args: &[&str]| common::zester(&home, args);
    ok(&run(&["init"]), "init");
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    ok(&run(&["creds", "issue", "early"]), "creds issue");
    let creds = home.join("peels/early.creds");
    let server = format!("tls://{listen}");
    let ca = home.join("pki/ca.pem");
    let _agent = Agent::start(
        &[
            "--server",
            &server,
            "--creds",
            creds.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
        &dir.path().join("agent.log"),
    );
    // The peel's machine booted first: its master comes up 3 s later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut up = spawn_up(&home, &listen);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !home.join("nats/runtime.json").exists() {
        assert!(Instant::now() < deadline, "zester up did not get ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run(&["cmd", "early", "test.ping", "--timeout", "40s", "--json"]);
    let _ = up.kill();
    let _ = up.wait();
    let rows: Value = serde_json::from_str(&ok(&out, "zester cmd")).unwrap();
    assert_eq!(rows[0]["answer"], true, "{rows}");
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(
        log.contains("not connected yet"),
        "the agent said why it waits: {log}"
    );
}

#[test]
fn a_peel_run_that_cannot_connect_gives_up_only_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let run = |args: &[&str]| common::zester(&home, args);
    ok(&run(&["init"]), "init");
    ok(&run(&["creds", "issue", "lonely"]), "creds issue");
    let started = Instant::now();
    let out = Command::new(zester_bin())
        .args(["peel", "run", "--server", "tls://127.0.0.1:1", "--creds"])
        .arg(home.join("peels/lonely.creds"))
        .args(["--connect-timeout", "3s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gave up after 3s"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_open_without_from_and_peel_run_dir_needs_nothing_else() {
    let up = Up::start();
    let url = up.runtime()["url"].as_str().unwrap().to_string();
    let ca = up.home().join("pki/ca.pem");

    // A peel made by `creds issue`: its profile and curve key are beside its creds.
    ok(&up.zester(&["creds", "issue", "made"]), "creds issue");
    // A peel that enrolled itself.
    let peel_dir = tempfile::tempdir().unwrap();
    let mut enrol = Command::new(zester_bin())
        .args([
            "peel",
            "enrol",
            "--server",
            &url,
            "--id",
            "self-made",
            "--wait",
        ])
        .arg("--ca")
        .arg(&ca)
        .arg("--dir")
        .arg(peel_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    up.wait_for(Duration::from_secs(20), "the enrolment is pending", || {
        String::from_utf8_lossy(&up.zester(&["key", "list", "--state", "pending"]).stdout)
            .contains("self-made")
    });
    ok(&up.zester(&["key", "accept", "self-made"]), "key accept");
    let enrolled = enrol.wait().unwrap();
    assert!(enrolled.success());

    for (id, creds) in [
        ("made", creds_of(&up, "made")),
        ("self-made", peel_dir.path().join("self-made.creds")),
    ] {
        let sealed = ok(
            &up.zester(&["secret", "encrypt", "--peel", id, "--value", "s3cret"]),
            "secret encrypt",
        );
        let mut decrypt = Command::new(zester_bin())
            .args(["secret", "decrypt", "--creds"])
            .arg(&creds)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        decrypt
            .stdin
            .take()
            .unwrap()
            .write_all(sealed.as_bytes())
            .unwrap();
        let out = decrypt.wait_with_output().unwrap();
        assert_eq!(ok(&out, "secret decrypt"), "s3cret", "{id}");
    }

    // `peel run --dir` with nothing else: creds, curve seed, pin and server from the dir.
    let _agent = Agent::start(
        &["--dir", peel_dir.path().to_str().unwrap()],
        &peel_dir.path().join("agent.log"),
    );
    let out = up.zester(&["cmd", "self-made", "test.ping", "--timeout", "20s"]);
    assert!(ok(&out, "zester cmd").contains("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmd_over_a_glob_reports_every_peel_and_fails_when_one_is_down() {
    let up = Up::start();
    for id in ["web-01", "web-02", "db-01"] {
        ok(&up.zester(&["creds", "issue", id]), "creds issue");
    }
    let dir = tempfile::tempdir().unwrap();
    let creds = creds_of(&up, "web-01");
    let _agent = Agent::start(
        &["--creds", creds.to_str().unwrap()],
        &dir.path().join("agent.log"),
    );
    let out = up.zester(&["cmd", "web-*", "test.ping", "--timeout", "10s", "--json"]);
    assert_eq!(out.status.code(), Some(1), "web-02 is down: {out:?}");
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    assert_eq!(rows[0]["id"], "web-01");
    assert_eq!(rows[0]["answer"], true);
    assert_eq!(rows[1]["id"], "web-02");
    assert_eq!(rows[1]["answered"], false);
    let text = up.zester(&["cmd", "web-*", "test.ping", "--timeout", "1s"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("web-02  no answer"), "{text}");
    let none = up.zester(&["cmd", "mail-*", "test.ping"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no accepted peel matches"));
}

fn sessions(up: &Up) -> u64 {
    let out = up.zester(&["status", "--json"]);
    let status: Value = serde_json::from_str(&ok(&out, "status")).unwrap();
    status["sessions"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_child_leaves_no_ghost_sessions() {
    let up = Up::start();
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for n in 0..3 {
        let id = format!("ghost-{n}");
        ok(&up.zester(&["creds", "issue", &id]), "creds issue");
        let creds = creds_of(&up, &id);
        agents.push(Agent::start(
            &["--creds", creds.to_str().unwrap()],
            &dir.path().join(format!("{id}.log")),
        ));
        ok(
            &up.zester(&["cmd", &id, "test.ping", "--timeout", "20s"]),
            "ping",
        );
    }
    let before = sessions(&up);
    let child = up.nats_pid();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child, libc::SIGKILL) };
    up.wait_for(Duration::from_secs(30), "a new child", || {
        up.nats_pid() != child && up.nats_pid() != 0
    });
    // As a user would: `zester status` until the appliance answers again.
    up.wait_for(Duration::from_secs(30), "status answers again", || {
        up.zester(&["status"]).status.success()
    });
    for n in 0..3 {
        ok(
            &up.zester(&[
                "cmd",
                &format!("ghost-{n}"),
                "test.ping",
                "--timeout",
                "30s",
            ]),
            "ping after the restart",
        );
    }
    for n in 0..3 {
        let shown = up.zester(&["key", "show", &format!("ghost-{n}"), "--json"]);
        let shown: Value = serde_json::from_str(&ok(&shown, "key show")).unwrap();
        assert_eq!(
            shown["sessions"].as_array().map(Vec::len),
            Some(1),
            "ghost-{n}: the dead server's session is still listed: {shown}"
        );
    }
    // Admin connections that came and went while the system connection was still away are
    // forgotten by the check against the server's own list (within the auth timeout + 2 s).
    up.wait_for(
        Duration::from_secs(30),
        "the session count as before",
        || sessions(&up) == before,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_wait_waits_for_a_master_that_is_not_up_yet() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    ok(&common::zester(&home, &["init"]), "init");
    let config = std::fs::read_to_string(home.join("zester.toml")).unwrap();
    std::fs::write(
        home.join("zester.toml"),
        config.replace("accept = \"manual\"", "accept = \"auto-all\""),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let peel_dir = dir.path().join("peel");
    let enrol = Command::new(zester_bin())
        .args([
            "peel",
            "enrol",
            "--server",
            &format!("tls://{listen}"),
            "--id",
            "early-bird",
        ])
        .arg("--ca")
        .arg(home.join("pki/ca.pem"))
        .arg("--dir")
        .arg(&peel_dir)
        .arg("--wait")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The master comes up 3 s after the peel started enrolling.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut up = spawn_up(&home, &listen);
    let out = tokio::task::spawn_blocking(move || enrol.wait_with_output().unwrap())
        .await
        .unwrap();
    let _ = up.kill();
    let _ = up.wait();
    let stdout = ok(&out, "peel enrol --wait");
    assert!(stdout.contains("enrolled as early-bird"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("yet"),
        "it said it was waiting: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(peel_dir.join("early-bird.creds").exists());
    assert!(peel_dir.join("early-bird.json").exists());
}
