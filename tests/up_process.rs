//! `zester up` as a process: session expiry and re-authentication, a nats-server crash and
//! restart, SIGTERM (exit 0, nothing left, port free) and SIGKILL (no orphan).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::appliance;
use common::up::Up;
use futures_util::StreamExt;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_reconnects_through_the_callout_keeping_its_subscription() {
    let t = appliance::start("[peels]\nsession_ttl = \"3s\"\n").await;
    let creds = t.peel("peel-a").await;
    let peel = t
        .connect(&creds, "_INBOX.peel-a")
        .await
        .expect("peel connects");
    let mut commands = peel.nats.subscribe("zester.cmd.peel-a").await.unwrap();
    peel.nats.flush().await.unwrap();

    // The session JWT runs out after ~3 s: the server disconnects, the client reconnects.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = peel.events();
        let reconnected = events.iter().filter(|e| *e == "connected").count() >= 2;
        if reconnected && events.iter().any(|e| e == "disconnected") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no expiry and reconnect: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        peel.errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("expired")),
        "expected 'User Authentication Expired', got {:?}",
        peel.errors.lock().unwrap()
    );

    // The subscription survived: a command from the master still arrives.
    let master = t.master().await;
    let message = common::publish_until_received(
        &master.nats,
        "zester.cmd.peel-a",
        b"after-expiry",
        &mut commands,
    )
    .await;
    assert_eq!(&message.payload[..], b"after-expiry");
    let admissions = t
        .audit()
        .iter()
        .filter(|r| r["decision"] == "allow" && r["peel_id"] == "peel-a")
        .count();
    assert!(
        admissions >= 2,
        "the reconnect did not go through the callout"
    );
    t.stop().await;
}

/// True when `pid` is gone (or a zombie waiting to be reaped by init).
fn gone(pid: i32) -> bool {
    !common::process_alive(u32::try_from(pid).unwrap_or(0))
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

async fn connect(up: &Up, creds: &Path, inbox: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .unwrap()
        .add_root_certificates(up.home().join("pki/ca.pem"))
        .require_tls(true)
        .custom_inbox_prefix(inbox)
        .connect(up.runtime()["url"].as_str().unwrap())
        .await
        .expect("connect to zester up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_child_is_restarted_and_sigterm_stops_everything() {
    let mut up = Up::start();
    let issue = up.zester(&["creds", "issue", "web-01"]);
    assert!(
        issue.status.success(),
        "{}",
        String::from_utf8_lossy(&issue.stderr)
    );
    let creds = up.home().join("peels/web-01.creds");
    // The running appliance imports the key within its journal interval.
    let status = || up.zester(&["status", "--json"]);
    up.wait_for(Duration::from_secs(10), "key import", || {
        let out = status();
        serde_json::from_slice::<Value>(&out.stdout)
            .map(|s| s["keys"]["accepted"] == 1)
            .unwrap_or(false)
    });
    let peel = connect(&up, &creds, "_INBOX.web-01").await;
    let master = connect(&up, &up.home().join("auth/master.creds"), "_INBOX._master").await;
    let mut commands = peel.subscribe("zester.cmd.web-01").await.unwrap();
    peel.flush().await.unwrap();

    let first = up.nats_pid();
    assert!(first > 0);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(first, libc::SIGKILL) };
    up.wait_for(Duration::from_secs(20), "nats-server restart", || {
        let pid = up.nats_pid();
        pid > 0 && pid != first
    });
    // Both clients come back through the callout and traffic flows again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        let _ = master.publish("zester.cmd.web-01", "back".into()).await;
        let _ = master.flush().await;
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(500), commands.next()).await
        {
            break message;
        }
        assert!(
            Instant::now() < deadline,
            "clients did not come back:\n{}",
            up.log()
        );
    };
    assert_eq!(&message.payload[..], b"back");
    // The status endpoint answers again too (its clients reconnect on their own schedule).
    let mut last = None;
    up.wait_for(Duration::from_secs(10), "status after restart", || {
        let out = status();
        let parsed = serde_json::from_slice::<Value>(&out.stdout).ok();
        let done = parsed.is_some();
        last = parsed.or(last.take());
        done
    });
    let status = last.unwrap();
    assert_eq!(status["nats_server"]["restarts"], 1, "{status}");

    let second = up.nats_pid();
    let port = port_of(up.runtime()["url"].as_str().unwrap());
    drop(peel);
    drop(master);
    up.signal(libc::SIGTERM);
    let mut child = up.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "zester did not stop on SIGTERM:\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "zester exited with {exit}:\n{}", up.log());
    assert!(gone(second), "nats-server survived zester's SIGTERM");
    assert!(port_free(port), "port {port} still taken after stop");
    assert!(!up.home().join("nats/runtime.json").exists());
    let out = up.zester(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "status after stop should say not running"
    );
}

#[test]
fn key_records_survive_sigkill_of_zester() {
    let mut up = Up::start();
    let issue = up.zester(&["creds", "issue", "web-01"]);
    assert!(issue.status.success());
    let accepted = |up: &Up| {
        let out = up.zester(&["key", "list", "--state", "accepted", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .map(|list| list.as_array().map_or(0, Vec::len))
            .unwrap_or(0)
    };
    up.wait_for(Duration::from_secs(10), "key import", || accepted(&up) == 1);
    up.signal(libc::SIGKILL);
    let _ = up.child.take().unwrap().wait();
    let nats = up.nats_pid();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(nats) {
        assert!(Instant::now() < deadline, "the child outlived zester");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Start again on the same home: the record is still there, in JetStream.
    let again = Up::restart(up);
    again.wait_for(Duration::from_secs(10), "records after restart", || {
        accepted(&again) == 1
    });
}

#[test]
fn sigkill_of_zester_leaves_no_orphan() {
    let mut up = Up::start();
    let nats = up.nats_pid();
    assert!(nats > 0 && !gone(nats));
    up.signal(libc::SIGKILL);
    let _ = up.child.take().unwrap().wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(nats) {
        assert!(
            Instant::now() < deadline,
            "nats-server {nats} outlived its SIGKILLed parent"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client-chosen string with a newline (a connection name) must not forge a line of the text
/// log: zester's audit lines and nats-server's forwarded ones show it escaped, on one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_a_connection_name_stays_on_one_log_line() {
    let up = Up::start();
    let forged = "2026-12-01T00:00:00.000000Z  INFO audit: allowed peel=web-99 role=admin";
    let name = format!("evil\n{forged}\r\n{forged}");
    let url = up.runtime()["url"].as_str().unwrap().to_string();
    let key = nkeys::KeyPair::new_user();
    // An nkey nobody approved (admitted to enrol, audited) and creds of no key (refused).
    let enrolling = async_nats::ConnectOptions::with_nkey(key.seed().unwrap())
        .name(&name)
        .add_root_certificates(up.home().join("pki/ca.pem"))
        .require_tls(true)
        .custom_inbox_prefix(format!("_INBOX.{}", key.public_key()))
        .connect(&url)
        .await
        .expect("an unknown key may enrol");
    enrolling.flush().await.unwrap();
    let _ = async_nats::ConnectOptions::new()
        .name(&name)
        .add_root_certificates(up.home().join("pki/ca.pem"))
        .require_tls(true)
        .max_reconnects(Some(0))
        .connection_timeout(Duration::from_secs(3))
        .connect(&url)
        .await;
    up.wait_for(Duration::from_secs(10), "the audit lines", || {
        up.log().matches("evil").count() >= 2
    });
    drop(enrolling);
    up.signal(libc::SIGTERM);
    up.wait_for(Duration::from_secs(10), "zester stops", || {
        up.log().contains("zester stopped")
    });
    let log = up.log();
    for line in log.lines() {
        assert!(
            !line.trim_start().starts_with("2026-12-01T00:00:00.000000Z"),
            "a forged line: {line:?}\nlog:\n{log}"
        );
        if line.contains("peel=web-99") {
            assert!(line.contains("evil\\n"), "{line:?}");
        }
    }
}

#[test]
fn the_audit_log_is_rotated_by_size_under_zester_up() {
    // 1 KiB files, 2 kept: a burst of refused connections rotates it, and it stays bounded.
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("zester.toml"),
        "[audit]\nmax_file_bytes = 1024\nkeep = 2\n",
    )
    .unwrap();
    let mut up = common::up::Up { child: None, dir };
    assert!(common::zester(&up.home(), &["init"]).status.success());
    up.launch();
    let url = up.runtime()["url"].as_str().unwrap().to_string();
    let ca = up.home().join("pki/ca.pem");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for _ in 0..20 {
            // No credentials at all: refused and audited.
            let _ = async_nats::ConnectOptions::new()
                .add_root_certificates(ca.clone())
                .require_tls(true)
                .max_reconnects(Some(1))
                .connection_timeout(std::time::Duration::from_secs(2))
                .connect(url.as_str())
                .await;
        }
    });
    let home = up.home();
    up.wait_for(std::time::Duration::from_secs(20), "two rotations", || {
        home.join("audit.log.2").exists()
    });
    assert!(
        !home.join("audit.log.3").exists(),
        "only 2 rotated files are kept"
    );
    for name in ["audit.log", "audit.log.1", "audit.log.2"] {
        let path = home.join(name);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(len <= 1024, "{name} is {len} bytes");
        assert_eq!(common::mode(&path) & 0o077, 0, "{name} stays private");
    }
}
