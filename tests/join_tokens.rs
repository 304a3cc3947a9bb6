//! Enrolment without a person (issue 17): join tokens accept a key at once within their limits
//! (a 1-use token raced by two enrolments has exactly one winner; expired, revoked, used-up
//! and wrong-glob tokens are refused, and a proof seen on one enrolment does not enrol another
//! key), token tags land in the record as trusted tags, and a rebuilt peel's claim on its id is
//! kept as a denied entry that `key accept --replace` re-binds the id to while the old key is
//! kicked. Every refusal is checked by its audited reason.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::appliance::{self, TestAppliance};
use nkeys::KeyPair;
use serde_json::Value;
use zester::home::now_unix;
use zester::wire::enrol::{sign_request, EnrolRequest, Op};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn enrol(t: &TestAppliance, id: &str, dir: &Path, token: Option<&str>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zester"));
    command
        .args(["peel", "enrol", "--server", &t.url(), "--id", id, "--ca"])
        .arg(t.home.ca_cert())
        .arg("--dir")
        .arg(dir)
        .env_remove("ZESTER_JOIN_TOKEN");
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(out)))
}

fn token(t: &TestAppliance, args: &[&str]) -> Value {
    let mut all = vec!["token", "create", "--json"];
    all.extend_from_slice(args);
    let out = t.zester(&all);
    assert!(out.status.success(), "{}", text(&out));
    json(&out)
}

/// The audited refusals of enrolments as `id`.
fn refusal_codes(t: &TestAppliance, id: &str) -> Vec<String> {
    t.audit()
        .into_iter()
        .filter(|r| r["source"] == "enrol" && r["decision"] == "refuse" && r["peel_id"] == id)
        .map(|r| r["code"].as_str().unwrap_or("").to_string())
        .collect()
}

fn record(t: &TestAppliance, id: &str) -> Value {
    let out = t.zester(&["key", "show", id, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    json(&out)["record"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_use_token_raced_by_two_enrolments_has_exactly_one_winner() {
    // 20 enrolment connections from one address: more than the default 10 a minute.
    let t = appliance::start("[keys]\nenrol_rate = 100\n").await;
    for round in 0..10 {
        let created = token(&t, &["--ids", "race-*", "--tag", "role=web"]);
        assert_eq!(created["uses"], 1);
        let secret = created["token"].as_str().unwrap().to_string();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let ids = [format!("race-{round}-a"), format!("race-{round}-b")];
        let racers: Vec<_> = ids
            .iter()
            .zip(&dirs)
            .map(|(id, dir)| {
                enrol(&t, id, dir.path(), Some(&secret))
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn peel enrol")
            })
            .collect();
        let outcomes: Vec<Output> = racers
            .into_iter()
            .map(|r| r.wait_with_output().unwrap())
            .collect();
        let winners: Vec<usize> = (0..2)
            .filter(|&i| dirs[i].path().join(format!("{}.creds", ids[i])).exists())
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} / {}",
            text(&outcomes[0]),
            text(&outcomes[1])
        );
        let (winner, loser) = (winners[0], 1 - winners[0]);
        assert!(
            text(&outcomes[winner]).contains("enrolled"),
            "{}",
            text(&outcomes[winner])
        );
        assert!(
            !outcomes[loser].status.success(),
            "{}",
            text(&outcomes[loser])
        );
        assert!(
            text(&outcomes[loser]).contains("no uses left"),
            "{}",
            text(&outcomes[loser])
        );
        t.wait_audit("the loser's refusal", |r| {
            r["peel_id"] == ids[loser].as_str() && r["code"] == "token_exhausted"
        })
        .await;
        assert_eq!(refusal_codes(&t, &ids[loser]), ["token_exhausted"]);
        let won = record(&t, &ids[winner]);
        assert_eq!(won["state"], "accepted");
        assert_eq!(won["tags"]["role"], "web");
        assert!(
            won["history"][1]["by"]
                .as_str()
                .unwrap()
                .starts_with("token "),
            "{won}"
        );
    }
    // The secret is shown once: never in the list, never in the bucket's records.
    let out = t.zester(&["token", "list", "--json"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!listed.contains("zjt1."), "{listed}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_outside_their_limits_are_refused_with_their_reason() {
    let t = appliance::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, String, &str, &str)> = {
        let expired = token(&t, &["--ttl", "1s"]);
        let revoked = token(&t, &[]);
        let out = t.zester(&["token", "revoke", revoked["id"].as_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let glob = token(&t, &["--ids", "db-*"]);
        common::wait_until("the short token expires", Duration::from_secs(5), || {
            now_unix() >= expired["expires"].as_i64().unwrap()
        })
        .await;
        vec![
            (
                "late-01",
                expired["token"].as_str().unwrap().into(),
                "token_expired",
                "expired",
            ),
            (
                "gone-01",
                revoked["token"].as_str().unwrap().into(),
                "token_revoked",
                "revoked",
            ),
            (
                "web-01",
                glob["token"].as_str().unwrap().into(),
                "token_wrong_id",
                "may enrol ids",
            ),
            (
                "fake-01",
                format!(
                    "zjt1.0000000000000000.{}",
                    KeyPair::new_user().seed().unwrap()
                ),
                "token_unknown",
                "unknown",
            ),
        ]
    };
    for (id, secret, code, says) in cases {
        let out = enrol(&t, id, dir.path(), Some(&secret)).output().unwrap();
        assert!(!out.status.success(), "{id}: {}", text(&out));
        assert!(text(&out).contains(says), "{id}: {}", text(&out));
        t.wait_audit(code, |r| r["peel_id"] == id && r["code"] == code)
            .await;
        assert!(!dir.path().join(format!("{id}.creds")).exists());
    }
    assert!(
        zester::wire::token::prove("not a token", "U").is_err(),
        "a malformed token is refused before anything is sent"
    );
    let out = enrol(&t, "typo-01", dir.path(), Some("zjt1.nope"))
        .output()
        .unwrap();
    assert!(text(&out).contains("--token"), "{}", text(&out));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_seen_on_one_enrolment_does_not_enrol_another_key() {
    let t = appliance::start("").await;
    let created = token(&t, &["--uses", "5"]);
    let secret = created["token"].as_str().unwrap();
    // What an eavesdropper of alice's enrolment sees: her token proof.
    let alice = KeyPair::new_user();
    let seen = zester::wire::token::prove(secret, &alice.public_key()).unwrap();
    let mallory = KeyPair::new_user();
    let nkey = mallory.public_key();
    let client = t
        .connect_with(
            async_nats::ConnectOptions::with_nkey(mallory.seed().unwrap()),
            &format!("_INBOX.{nkey}"),
        )
        .await
        .expect("an enrolling session");
    let request = EnrolRequest {
        op: Op::Enrol,
        id: "mallory-01".into(),
        nkey: nkey.clone(),
        xkey: None,
        hostname: "m".into(),
        at: now_unix(),
        token: Some(seen),
    };
    let body = serde_json::to_vec(&sign_request(&mallory, &request).unwrap()).unwrap();
    let answer = client
        .nats
        .request(format!("zester.enrol.{nkey}"), body.into())
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not for this key"),
        "{answer}"
    );
    t.wait_audit("the refusal", |r| {
        r["peel_id"] == "mallory-01" && r["code"] == "token_bad_proof"
    })
    .await;
    assert_eq!(refusal_codes(&t, "mallory-01"), ["token_bad_proof"]);
    let out = t.zester(&["key", "show", "mallory-01"]);
    assert!(!out.status.success(), "no record was made");
    // The token is untouched by the attempt.
    let out = t.zester(&["token", "list", "--json"]);
    assert_eq!(json(&out)[0]["uses_left"], 5);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_peel_is_denied_then_replaced_while_the_old_key_is_kicked() {
    let t = appliance::start("").await;
    let created = token(&t, &["--ids", "web-01"]);
    let old_dir = tempfile::tempdir().unwrap();
    let out = enrol(&t, "web-01", old_dir.path(), created["token"].as_str())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let old_creds = old_dir.path().join("web-01.creds");
    let old = t
        .connect(&old_creds, "_INBOX.web-01")
        .await
        .expect("old key in");
    common::sync_peel(&old.nats, "web-01").await;

    // The machine is rebuilt: a new key claims the same id. Refused, and kept as denied.
    let new_dir = tempfile::tempdir().unwrap();
    let out = enrol(&t, "web-01", new_dir.path(), None).output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("already bound to another key"),
        "{}",
        text(&out)
    );
    t.wait_audit("the refusal", |r| {
        r["peel_id"] == "web-01" && r["code"] == "enrol_id_taken"
    })
    .await;
    assert_eq!(refusal_codes(&t, "web-01"), ["enrol_id_taken"]);
    let out = t.zester(&["key", "list", "--state", "denied", "--json"]);
    let denied = json(&out);
    assert_eq!(denied.as_array().unwrap().len(), 1, "{denied}");
    let claim = denied[0]["denied"][0].clone();
    let new_fingerprint = claim["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(claim["address"], "127.0.0.1");
    let out = t.zester(&["key", "list", "--state", "denied"]);
    assert!(text(&out).contains(&new_fingerprint), "{}", text(&out));
    let out = t.zester(&["key", "show", "web-01"]);
    assert!(text(&out).contains("denied claim"), "{}", text(&out));

    // A wrong fingerprint changes nothing.
    let out = t.zester(&[
        "key",
        "accept",
        "web-01",
        "--replace",
        "--fingerprint",
        "SHA256:0000",
        "--yes",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no denied claim"), "{}", text(&out));

    let out = t.zester(&[
        "key",
        "accept",
        "web-01",
        "--replace",
        "--fingerprint",
        &new_fingerprint,
        "--yes",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let rebound = record(&t, "web-01");
    assert_eq!(rebound["state"], "accepted");
    assert_eq!(
        zester::wire::record::fingerprint(rebound["nkey"].as_str().unwrap()),
        new_fingerprint
    );
    assert!(rebound["denied"].is_null(), "{rebound}");
    // The old key's live session (admitted: proven above) is cut and it cannot come back.
    common::wait_until("the old session is gone", Duration::from_secs(10), || {
        old.events().iter().any(|e| e == "disconnected")
    })
    .await;
    t.assert_refused(
        async_nats::ConnectOptions::with_credentials_file(&old_creds)
            .await
            .unwrap(),
        "the replaced key",
    )
    .await;
    // The rebuilt machine fetches its creds with the key it enrolled.
    let out = enrol(&t, "web-01", new_dir.path(), None).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(new_dir.path().join("web-01.creds").exists());

    // `key delete` on an accepted key forgets its denied claims and keeps the key.
    let third = tempfile::tempdir().unwrap();
    let _ = enrol(&t, "web-01", third.path(), None).output().unwrap();
    assert_eq!(
        record(&t, "web-01")["denied"].as_array().map(Vec::len),
        Some(1)
    );
    let out = t.zester(&["key", "delete", "web-01", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let kept = record(&t, "web-01");
    assert_eq!(kept["state"], "accepted");
    assert!(kept["denied"].is_null());
    t.stop().await;
}
