//! `zester key …` against a running appliance: list, show, guarded and glob state changes,
//! delete, and revocation that cuts a live peel off at once and keeps it out.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::appliance;
use serde_json::Value;

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_cuts_the_live_peel_off_and_keeps_it_out() {
    let t = appliance::start("").await;
    let creds = t.peel("web-01").await;
    t.peel("web-02").await;

    let list = json(&t.zester(&["key", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let shown = json(&t.zester(&["key", "show", "web-01", "--json"]));
    assert_eq!(shown["record"]["state"], "accepted");
    let fingerprint = shown["fingerprint"].as_str().unwrap().to_string();

    let peel = t
        .connect(&creds, "_INBOX.web-01")
        .await
        .expect("peel connects");
    common::sync_peel(&peel.nats, "web-01").await;
    let shown = json(&t.zester(&["key", "show", "web-01", "--json"]));
    assert_eq!(shown["sessions"].as_array().unwrap().len(), 1, "{shown}");

    let started = Instant::now();
    let out = t.zester(&[
        "key",
        "revoke",
        "web-01",
        "--reason",
        "laptop stolen",
        "--fingerprint",
        &fingerprint,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = json(&out);
    assert_eq!(result[0]["ok"]["kicked"], 1, "{result}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !peel.events().iter().any(|e| e == "disconnected") {
        assert!(
            Instant::now() < deadline,
            "the peel was not disconnected: {:?}",
            peel.events()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "revoke → disconnect: {:?} (inside zester: {} ms)",
        started.elapsed(),
        result[0]["ok"]["cut_off_ms"]
    );

    // It stays out: its reconnects and a fresh connection are refused, with the reason audited.
    let options = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .unwrap();
    t.assert_refused(options, "the revoked peel").await;
    t.wait_audit("revoked peel refused", |r| r["code"] == "revoked")
        .await;
    let history = json(&t.zester(&["key", "show", "web-01", "--json"]));
    let last = history["record"]["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["state"], "revoked");
    assert_eq!(last["reason"], "laptop stolen");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_globs_and_delete() {
    let t = appliance::start("").await;
    for id in ["db-01", "db-02", "web-01"] {
        t.peel(id).await;
    }
    // A stale fingerprint changes nothing.
    let out = t.zester(&["key", "revoke", "web-01", "--fingerprint", "SHA256:0000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("re-created"),
        "{out:?}"
    );
    // A glob over several keys is not acted on without confirmation (no terminal here).
    let out = t.zester(&["key", "revoke", "db-*"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{out:?}"
    );
    let list = json(&t.zester(&["key", "list", "--state", "accepted", "--json"]));
    assert_eq!(
        list.as_array().unwrap().len(),
        3,
        "nothing may have changed: {list}"
    );
    // With --yes it is.
    let out = t.zester(&["key", "revoke", "db-*", "--yes", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let revoked = json(&t.zester(&["key", "list", "--state", "revoked", "--json"]));
    assert_eq!(revoked.as_array().unwrap().len(), 2, "{revoked}");
    // Accepted keys are not deleted; revoked ones are, and the id is free again.
    let out = t.zester(&["key", "delete", "web-01"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoke it first"),
        "{out:?}"
    );
    assert!(t.zester(&["key", "delete", "db-01"]).status.success());
    let all = json(&t.zester(&["key", "list", "--json"]));
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["db-02", "web-01"]);
    // A revoked key cannot be accepted again.
    let out = t.zester(&["key", "accept", "db-02"]);
    assert_eq!(out.status.code(), Some(1));
    t.stop().await;
}

#[test]
fn key_commands_say_when_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zester"))
        .arg("--home")
        .arg(dir.path())
        .args(["key", "list"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accept_and_reject_exactly_one_wins() {
    let t = appliance::start("").await;
    for round in 0..3 {
        let id = format!("race-{round}");
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_zester"))
            .args(["peel", "enrol", "--server", &t.url(), "--id", &id, "--ca"])
            .arg(t.home.ca_cert())
            .arg("--dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let spawn = |verb: &str| {
            Command::new(env!("CARGO_BIN_EXE_zester"))
                .arg("--home")
                .arg(t.home.root())
                .args(["key", verb, &id])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (accept, reject) = (spawn("accept"), spawn("reject"));
        let accepted = accept.wait_with_output().unwrap().status.success();
        let rejected = reject.wait_with_output().unwrap().status.success();
        assert!(
            accepted != rejected,
            "round {round}: accepted {accepted}, rejected {rejected}"
        );
        let shown = json(&t.zester(&["key", "show", &id, "--json"]));
        let expected = if accepted { "accepted" } else { "rejected" };
        assert_eq!(shown["record"]["state"], expected);
        // Asked again, the winner's verb says the key is there already (no one changed it
        // "meanwhile"), and changes nothing.
        let again = t.zester(&["key", if accepted { "accept" } else { "reject" }, &id]);
        assert!(!again.status.success());
        let said = String::from_utf8_lossy(&again.stdout);
        assert!(said.contains(&format!("{expected} already")), "{said}");
        let after = json(&t.zester(&["key", "show", &id, "--json"]));
        assert_eq!(after["record"]["history"], shown["record"]["history"]);
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_creds_rotate_while_running() {
    let t = appliance::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let old_admin = dir.path().join("old-admin.creds");
    let old_master = dir.path().join("old-master.creds");
    std::fs::copy(t.home.service_creds("admin"), &old_admin).unwrap();
    std::fs::copy(t.home.service_creds("master"), &old_master).unwrap();

    let out = t.zester(&["creds", "rotate", "admin", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.zester(&["status"]).status.success(),
        "the new admin creds work"
    );
    let options = async_nats::ConnectOptions::with_credentials_file(&old_admin)
        .await
        .unwrap();
    t.assert_refused(options, "the old admin key").await;

    // Rotating the master's creds cuts off a master connected with the old key; the new
    // creds get in as the master, and zester's own services (which never use the master's
    // creds) keep answering.
    let old_session = t.master().await;
    common::sync(&old_session.nats, "_INBOX._master.sync").await;
    let out = t.zester(&["creds", "rotate", "master"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait_until(
        "the old master session is cut",
        Duration::from_secs(10),
        || old_session.events().iter().any(|e| e == "disconnected"),
    )
    .await;
    assert!(t.zester(&["key", "list"]).status.success());
    let new_session = t.master().await;
    let old_key = zester::home::read_creds(&old_master)
        .unwrap()
        .key()
        .public_key();
    t.wait_audit("new master key", |r| {
        r["role"] == "master" && r["decision"] == "allow" && r["nkey"] != old_key.as_str()
    })
    .await;
    drop(new_session);
    let options = async_nats::ConnectOptions::with_credentials_file(&old_master)
        .await
        .unwrap();
    t.assert_refused(options, "the old master key").await;
    t.stop().await;
}
