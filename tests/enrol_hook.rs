//! The enrolment policy hook (`keys.accept = "hook"`, issue 17): a real executable decides each
//! new enrolment from the request on its stdin — exit 0 accepts, 1 rejects, a crash or a hang
//! past `keys.hook_timeout` leaves the key pending — its first line is the reason, and inputs
//! and outcome are audited.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::appliance::{self, TestAppliance};
use serde_json::Value;

const HOOK: &str = r#"#!/bin/sh
input=$(cat)
printf '%s\n' "$input" >> "$(dirname "$0")/inputs.jsonl"
case "$input" in
  *'"id":"acc-'*) echo "known host, accepted"; exit 0 ;;
  *'"id":"rej-'*) echo "not in the inventory"; exit 1 ;;
  *'"id":"slow-'*) exec sleep 30 ;;
  *'"id":"crash-'*) kill -SEGV $$ ;;
esac
exit 7
"#;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn enrol(t: &TestAppliance, id: &str, dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zester"))
        .args(["peel", "enrol", "--server", &t.url(), "--id", id, "--ca"])
        .arg(t.home.ca_cert())
        .arg("--dir")
        .arg(dir)
        .env_remove("ZESTER_JOIN_TOKEN")
        .output()
        .unwrap()
}

fn record(t: &TestAppliance, id: &str) -> Value {
    let out = t.zester(&["key", "show", id, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["record"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_accepts_rejects_and_leaves_undecided_keys_pending() {
    let hooks = tempfile::tempdir().unwrap();
    let hook = hooks.path().join("decide.sh");
    std::fs::write(&hook, HOOK).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = appliance::start(&format!(
        "[keys]\naccept = \"hook\"\nhook = {:?}\nhook_timeout = \"2s\"\n",
        hook.display().to_string()
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();

    // Accepted: the peel gets its creds in the same enrolment.
    let out = enrol(&t, "acc-01", dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("enrolled"), "{}", text(&out));
    let accepted = record(&t, "acc-01");
    assert_eq!(accepted["state"], "accepted");
    let change = accepted["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(change["by"], "policy hook");
    assert_eq!(change["reason"], "known host, accepted");
    let audited = t
        .wait_audit("the hook's acceptance", |r| {
            r["code"] == "hook_accepted" && r["peel_id"] == "acc-01"
        })
        .await;
    assert!(
        audited["reason"]
            .as_str()
            .unwrap()
            .contains("\"fingerprint\""),
        "{audited}"
    );

    // What the hook was given.
    let inputs = std::fs::read_to_string(hooks.path().join("inputs.jsonl")).unwrap();
    let first: Value = serde_json::from_str(inputs.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], "acc-01");
    assert_eq!(first["address"], "127.0.0.1");
    assert_eq!(first["fingerprint"], accepted_fingerprint(&accepted));
    assert!(first["xkey"].as_str().unwrap().starts_with('X'));
    for field in ["nkey", "hostname", "facts", "token_tags"] {
        assert!(first.get(field).is_some(), "no {field} in {first}");
    }

    // Rejected.
    let out = enrol(&t, "rej-01", dir.path());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rejected"), "{}", text(&out));
    let rejected = record(&t, "rej-01");
    assert_eq!(rejected["state"], "rejected");
    assert_eq!(
        rejected["history"].as_array().unwrap().last().unwrap()["reason"],
        "not in the inventory"
    );
    t.wait_audit("the hook's rejection", |r| {
        r["code"] == "hook_rejected" && r["peel_id"] == "rej-01"
    })
    .await;

    // A hook that hangs is cut off at the timeout; one that crashes or says nothing decides
    // nothing: the key waits for an admin.
    for (id, says) in [
        ("slow-01", "did not decide within 2 s"),
        ("crash-01", "killed by a signal"),
        ("other-01", "exited with 7"),
    ] {
        let out = enrol(&t, id, dir.path());
        assert!(out.status.success(), "{id}: {}", text(&out));
        assert!(text(&out).contains("pending"), "{id}: {}", text(&out));
        assert_eq!(record(&t, id)["state"], "pending");
        let audited = t
            .wait_audit(id, |r| r["code"] == "hook_undecided" && r["peel_id"] == id)
            .await;
        assert!(
            audited["reason"].as_str().unwrap().contains(says),
            "{audited}"
        );
    }
    t.stop().await;
}

fn accepted_fingerprint(record: &Value) -> String {
    zester::wire::record::fingerprint(record["nkey"].as_str().unwrap())
}

#[test]
fn a_hook_policy_without_a_hook_is_refused_with_what_to_do() {
    let err = zester::home::config::Config::parse("[keys]\naccept = \"hook\"\n").unwrap_err();
    assert!(err.to_string().contains("keys.hook"), "{err}");
}
