//! Peel key rotation without downtime: a running `zester peel run` keeps answering across
//! `zester peel rotate` on its creds file, and the old key is refused afterwards.

mod common;

use std::process::Command;
use std::time::Duration;

use common::appliance;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_peel_keeps_serving_through_its_rotation() {
    let t = appliance::start("").await;
    let creds = t.peel("web-01").await;
    let old_copy = creds.with_file_name("old.creds");
    std::fs::copy(&creds, &old_copy).unwrap();
    let old_key = zester::home::read_creds(&creds).unwrap().key().public_key();

    let mut agent = t.peel_run(&creds);
    let master = t.master().await;
    assert!(
        appliance::ping(&master.nats, "web-01", Duration::from_secs(15)).await,
        "agent never answered"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_zester"))
        .args(["peel", "rotate", "--server", &t.url(), "--creds"])
        .arg(&creds)
        .arg("--ca")
        .arg(t.home.ca_cert())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let new_key = zester::home::read_creds(&creds).unwrap().key().public_key();
    assert_ne!(new_key, old_key);

    // The agent was kicked off the old key and came back with the new creds by itself.
    assert!(
        appliance::ping(&master.nats, "web-01", Duration::from_secs(20)).await,
        "the agent stopped serving after the rotation"
    );
    let admitted_new = t
        .wait_audit("new key admitted", |r| {
            r["decision"] == "allow" && r["nkey"] == new_key
        })
        .await;
    assert_eq!(admitted_new["peel_id"], "web-01");
    // Both steps are audited (and so counted in zester_rotations_total).
    for code in ["rotated", "rotation_finished"] {
        t.wait_audit(code, |r| {
            r["source"] == "rotate" && r["code"] == code && r["peel_id"] == "web-01"
        })
        .await;
    }

    // The old key is out for good.
    let options = async_nats::ConnectOptions::with_credentials_file(&old_copy)
        .await
        .unwrap();
    t.assert_refused(options, "the rotated-out key").await;
    let shown: Value = serde_json::from_slice(
        &Command::new(env!("CARGO_BIN_EXE_zester"))
            .arg("--home")
            .arg(t.home.root())
            .args(["key", "show", "web-01", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(shown["record"]["nkey"], new_key);
    let last = shown["record"]["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        last["reason"].as_str().unwrap().contains("rotated"),
        "{last}"
    );

    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    t.stop().await;
}
