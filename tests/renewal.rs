//! Credentials that never lapse, against a real `zester up` with lifetimes of seconds: a peel
//! agent renews its identity JWT by itself for several lifetimes without being dropped, comes
//! back after a kill -9 of the child with the renewed creds, a revoked key's renewal is refused
//! and audited (and its creds stay as they were), a peel whose creds expired while it was off
//! comes back by itself, and `zester peel renew` does it once either way.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::appliance::{self, TestAppliance};
use serde_json::Value;
use zester::home::{self, now_unix};
use zester::identity::peel_id::PeelId;
use zester::peel::{Agent, AgentOptions};
use zester::wire::record::KeyState;

/// The `exp` of the JWT in a creds file.
fn exp_of(path: &Path) -> i64 {
    home::read_creds(path).unwrap().jwt().claims().exp
}

/// Renewals of peel `id` audited so far.
fn renewals(t: &TestAppliance, id: &str) -> usize {
    t.audit()
        .iter()
        .filter(|r| r["code"] == "renewed" && r["peel_id"] == id)
        .count()
}

/// Waits until peel `id` has had as many sessions as renewals plus `unplanned`.
async fn sessions_follow_renewals(t: &TestAppliance, id: &str, unplanned: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (sessions, renewed) = (admissions(t, id), renewals(t, id));
        if sessions == renewed + unplanned {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sessions} sessions for {renewed} renewals (+{unplanned}): {:#?}",
            t.audit()
                .into_iter()
                .filter(|r| r["peel_id"] == id)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Callout admissions of peel `id` so far.
fn admissions(t: &TestAppliance, id: &str) -> usize {
    t.audit()
        .iter()
        .filter(|r| r["source"] == "callout" && r["decision"] == "allow" && r["peel_id"] == id)
        .count()
}

fn options(t: &TestAppliance, creds: &Path) -> AgentOptions {
    AgentOptions {
        server: t.url(),
        creds: creds.to_path_buf(),
        ca: Some(t.home.ca_cert()),
        pin: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_for_four_lifetimes_without_being_dropped_and_survives_a_child_kill() {
    const LIFETIME: i64 = 9;
    let t = appliance::start("[peels]\nexpiry = \"9s\"\n").await;
    let creds = t.peel_with_ttl("web-01", LIFETIME).await;
    let first_exp = exp_of(&creds);
    let agent = Agent::start(options(&t, &creds))
        .await
        .expect("agent starts");
    let master = t.master().await;
    assert!(appliance::ping(&master.nats, "web-01", Duration::from_secs(10)).await);

    let started = Instant::now();
    let mut renewals_seen = 0;
    let mut last_exp = first_exp;
    let mut killed = false;
    let mut failed_pings = Vec::new();
    while started.elapsed() < Duration::from_secs(4 * LIFETIME as u64) {
        let exp = exp_of(&creds);
        if exp != last_exp {
            assert!(exp > last_exp, "a renewal moves expiry forward");
            renewals_seen += 1;
            last_exp = exp;
        }
        // In the third lifetime: kill -9 the child; the agent must come back with the creds it
        // renewed (the ones it started with expired long ago).
        if !killed && started.elapsed() >= Duration::from_secs(2 * LIFETIME as u64 + 2) {
            assert!(now_unix() > first_exp, "the first creds have expired");
            // Every session but the first follows a renewal (the agent reconnects with the
            // fresh JWT at once): none was cut by an expiry.
            sessions_follow_renewals(&t, "web-01", 1).await;
            let before = t.appliance.supervisor().info();
            common::sigkill(before.pid);
            killed = true;
            common::wait_until("the child restarts", Duration::from_secs(30), || {
                t.appliance.supervisor().info().pid != before.pid
            })
            .await;
        }
        let answered = appliance::ping(&master.nats, "web-01", Duration::from_secs(15)).await;
        if !answered {
            failed_pings.push(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        failed_pings.is_empty(),
        "pings unanswered at {failed_pings:?}"
    );
    assert!(
        renewals_seen >= 4,
        "{renewals_seen} renewals in 4 lifetimes"
    );
    assert!(killed);
    // One more session: the reconnect after the kill, with the renewed creds.
    sessions_follow_renewals(&t, "web-01", 2).await;
    let refused: Vec<Value> = t
        .audit()
        .into_iter()
        .filter(|r| r["decision"] == "refuse" && r["peel_id"] == "web-01")
        .collect();
    assert!(refused.is_empty(), "web-01 was refused: {refused:#?}");
    assert!(renewals(&t, "web-01") >= 4);
    let (record, _) = t
        .appliance
        .keys()
        .get(&PeelId::parse("web-01").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.jwt_expires_at, Some(exp_of(&creds)));
    assert!(record.renewed_at.is_some());
    agent.stop().await.ok();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_lost_its_standing_is_refused_renewal_and_keeps_its_creds() {
    let t = appliance::start("").await;
    let creds = t.peel("web-02").await;
    let id = PeelId::parse("web-02").unwrap();
    let peel = t.connect(&creds, "_INBOX.web-02").await.expect("connects");
    let renewed = zester::peel::renew::renew(&peel.nats, &creds)
        .await
        .expect("an accepted key renews");
    assert_eq!(renewed.via, "renew");

    // The record says revoked, the session is still there (as between a decision and its
    // kick): the renewal service asks the record, not the session.
    let (record, revision) = t.appliance.keys().get(&id).await.unwrap().unwrap();
    let revoked = record
        .transition(KeyState::Revoked, "test", "lost its standing", now_unix())
        .unwrap();
    let rev = t
        .appliance
        .keys()
        .update(&id, revision, &revoked)
        .await
        .unwrap();
    t.appliance
        .keys()
        .wait_for_revision(rev, Duration::from_secs(5))
        .await
        .unwrap();
    let before = std::fs::read(&creds).unwrap();
    let refused = zester::peel::renew::renew(&peel.nats, &creds)
        .await
        .expect_err("a revoked key may not renew");
    assert!(refused.is_refusal(), "{refused}");
    assert!(refused.to_string().contains("revoked"), "{refused}");
    assert_eq!(std::fs::read(&creds).unwrap(), before, "the creds are kept");
    let audited = t
        .wait_audit("the refusal", |r| {
            r["code"] == "renew_refused" && r["peel_id"] == "web-02"
        })
        .await;
    assert_eq!(audited["decision"], "refuse");
    assert!(
        audited["reason"].as_str().unwrap().starts_with("revoked"),
        "{audited}"
    );

    // Another peel cannot renew web-02 (its subject is not theirs to publish on).
    let other_creds = t.peel("web-03").await;
    let other = t.connect(&other_creds, "_INBOX.web-03").await.unwrap();
    let forged = tokio::time::timeout(
        Duration::from_secs(3),
        other
            .nats
            .request(zester::wire::subjects::renew("web-02"), "{}".into()),
    )
    .await;
    assert!(
        !matches!(forged, Ok(Ok(_))),
        "web-03 got an answer on web-02's renewal subject"
    );
    assert!(other.wait_error("permissions violation").await);

    // Revoked the way an admin does it: cut off, and `zester peel renew` says so and exits 1.
    let out = t.zester(&["key", "revoke", "web-03", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zester"))
        .args(["peel", "renew", "--server", &t.url(), "--creds"])
        .arg(&other_creds)
        .arg("--ca")
        .arg(t.home.ca_cert())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stderr}\n{:#?}",
        t.audit()
            .into_iter()
            .filter(|r| r["peel_id"] == "web-03")
            .collect::<Vec<_>>()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused this key"), "{stderr}");
    assert!(stderr.contains("unchanged"), "{stderr}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peel_whose_creds_expired_while_it_was_off_comes_back_by_itself() {
    let t = appliance::start("[peels]\nexpiry = \"1h\"\n").await;
    let creds = t.peel_with_ttl("web-04", 2).await;
    let old_exp = exp_of(&creds);
    common::wait_until("the creds expire", Duration::from_secs(10), || {
        now_unix() > old_exp
    })
    .await;
    let mut agent = t.peel_run(&creds);
    let master = t.master().await;
    let answered = appliance::ping(&master.nats, "web-04", Duration::from_secs(30)).await;
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(answered, "the agent came back with fresh creds");
    assert!(exp_of(&creds) > now_unix() + 3000, "fresh creds of an hour");
    assert!(common::mode(&creds) & 0o077 == 0, "creds stay private");

    // `zester peel renew` does the same once, both ways.
    let expired = t.peel_with_ttl("web-05", 2).await;
    let expired_at = exp_of(&expired);
    common::wait_until("the creds expire", Duration::from_secs(10), || {
        now_unix() > expired_at
    })
    .await;
    let renew = |path: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zester"))
            .args(["peel", "renew", "--json", "--server", &t.url(), "--creds"])
            .arg(path)
            .arg("--ca")
            .arg(t.home.ca_cert())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let by_key = renew(&expired);
    assert_eq!(by_key["via"], "enrol");
    assert_eq!(by_key["id"], "web-05");
    assert_eq!(by_key["expires_at"].as_i64(), Some(exp_of(&expired)));
    let by_creds = renew(&expired);
    assert_eq!(by_creds["via"], "renew");
    assert!(by_creds["expires_at"].as_i64().unwrap() >= by_key["expires_at"].as_i64().unwrap());
    t.stop().await;
}

#[test]
fn status_lists_a_peel_that_stopped_renewing_and_key_list_shows_expiry() {
    let up = common::up::Up::start();
    let out = up.zester(&["creds", "issue", "web-09", "--expiry", "1h", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expires_at = issued["expires_at"].as_i64().unwrap();

    // key list and key show say when its JWT expires (and that it never renewed).
    let out = up.zester(&["key", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let web09 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "web-09")
        .expect("listed");
    assert_eq!(web09["jwt_expires_at"].as_i64(), Some(expires_at));
    assert!(web09.get("renewed_at").is_none());
    let text = String::from_utf8_lossy(&up.zester(&["key", "list"]).stdout).into_owned();
    assert!(
        text.contains("EXPIRES") && text.contains("RENEWED"),
        "{text}"
    );
    let shown = String::from_utf8_lossy(&up.zester(&["key", "show", "web-09"]).stdout).into_owned();
    assert!(
        shown.contains(&zester::identity::time::rfc3339(expires_at)),
        "{shown}"
    );

    // An hour left of a 30-day lifetime: it stopped renewing, and status says so.
    let out = up.zester(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let expiring = status["expiring"].as_array().expect("an expiring list");
    assert_eq!(expiring.len(), 1, "{expiring:#?}");
    assert_eq!(expiring[0]["kind"], "peel");
    assert_eq!(expiring[0]["name"], "web-09");
    assert_eq!(expiring[0]["expires_at"].as_i64(), Some(expires_at));
    let text = String::from_utf8_lossy(&up.zester(&["status"]).stdout).into_owned();
    assert!(text.contains("peel web-09 expires"), "{text}");
    assert!(text.contains("stopped renewing"), "{text}");
}
