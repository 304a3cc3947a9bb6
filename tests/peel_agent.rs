//! The peel agent against a real `zester up`: it announces itself (facts, start event), answers
//! the master's commands, re-reads rotated creds when it reconnects, stops cleanly, and refuses
//! to start with unusable creds, saying why.

mod common;

use std::time::{Duration, Instant};

use async_nats::{Message, RequestErrorKind, Subscriber};
use common::appliance;
use futures_util::StreamExt;
use nkeys::KeyPair;
use serde_json::{json, Value};
use zester::home::{self, now_unix};
use zester::identity::peel_id::PeelId;
use zester::identity::time::rfc3339;
use zester::peel::{self, Agent, AgentError, AgentOptions};
use zester::permissions::Role;

/// The next message on `subject` (others are skipped), within `within`.
async fn next_on(messages: &mut Subscriber, subject: &str, within: Duration) -> Message {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, messages.next()).await {
            Ok(Some(message)) if message.subject.as_str() == subject => return message,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the subscription ended while waiting for {subject}"),
            Err(_) => panic!("nothing on {subject} within {within:?}"),
        }
    }
}

fn json_of(message: &Message) -> Value {
    serde_json::from_slice(&message.payload).unwrap_or_else(|e| {
        panic!(
            "{} is not JSON ({e}): {:?}",
            message.subject, message.payload
        )
    })
}

/// A request to the peel; "no responders" is retried until its subscription is registered.
async fn command(master: &async_nats::Client, id: &str, payload: &'static str) -> Value {
    let subject = format!("zester.cmd.{id}");
    for _ in 0..40 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            master.request(subject.clone(), payload.into()),
        )
        .await
        .expect("an answer in time")
        {
            Ok(reply) => return json_of(&reply),
            Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("request {payload} failed: {e}"),
        }
    }
    panic!("peel {id} never answered {payload}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_announces_itself_answers_commands_and_stops() {
    let t = appliance::start("").await;
    let creds = t.peel("web-01").await;
    let master = t.master().await;
    let mut everything = master.nats.subscribe("zester.>").await.unwrap();
    master.nats.flush().await.unwrap();
    common::sync(&master.nats, "_INBOX._master.sync").await;

    let agent = Agent::start(AgentOptions {
        server: t.url(),
        creds,
        ca: Some(t.home.ca_cert()),
        pin: None,
    })
    .await
    .expect("the agent starts");
    assert_eq!(agent.peel_id().as_str(), "web-01");

    let start = json_of(
        &next_on(
            &mut everything,
            "zester.event.web-01.start",
            Duration::from_secs(5),
        )
        .await,
    );
    assert_eq!(start["id"], "web-01");
    assert_eq!(start["zester_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        start["at"].as_str().is_some_and(|at| at.ends_with('Z')),
        "{start}"
    );
    let facts = json_of(
        &next_on(
            &mut everything,
            "zester.fact.web-01",
            Duration::from_secs(5),
        )
        .await,
    );
    assert_eq!(facts["id"], "web-01");
    assert_eq!(facts["os"], std::env::consts::OS);
    assert_eq!(facts["arch"], std::env::consts::ARCH);
    assert_eq!(facts["zester_version"], env!("CARGO_PKG_VERSION"));
    assert!(facts["cpus"].as_u64().is_some_and(|n| n > 0), "{facts}");
    if cfg!(target_os = "linux") {
        assert!(
            facts["memory_bytes"].as_u64().is_some_and(|n| n > 0),
            "{facts}"
        );
        assert!(facts["hostname"].is_string(), "{facts}");
    }
    assert!(facts["connected_at"].is_string(), "{facts}");

    assert_eq!(
        command(&master.nats, "web-01", "test.ping").await,
        json!(true)
    );
    assert_eq!(
        command(&master.nats, "web-01", r#"{"fun":"test.ping"}"#).await,
        json!(true)
    );
    assert_eq!(
        command(&master.nats, "web-01", "no.such").await,
        json!({"error": "unknown command no.such"})
    );
    // A command nobody can answer is ignored, and the agent keeps serving.
    master
        .nats
        .publish("zester.cmd.web-01", "test.ping".into())
        .await
        .unwrap();
    assert_eq!(
        command(&master.nats, "web-01", "test.ping").await,
        json!(true)
    );

    let admitted = t
        .wait_audit("web-01 admitted", |r| {
            r["decision"] == "allow" && r["peel_id"] == "web-01"
        })
        .await;
    assert_eq!(admitted["connection_name"], "zester-peel-web-01");

    agent.stop().await.expect("the agent stops cleanly");
    // Drained and closed: nobody serves the peel's commands any more (the master's own
    // `zester.>` subscription would count as a responder, so it goes first).
    everything.unsubscribe().await.unwrap();
    common::sync(&master.nats, "_INBOX._master.sync").await;
    let after = master
        .nats
        .request("zester.cmd.web-01", "test.ping".into())
        .await
        .expect_err("nobody answers after stop");
    assert_eq!(after.kind(), RequestErrorKind::NoResponders);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_creds_are_read_again_when_the_agent_reconnects() {
    let t = appliance::start("").await;
    // The first creds run out in a few seconds: the server then drops the connection, and the
    // agent can only get back in with the renewed creds written to the same file meanwhile.
    // (6 s: the agent's own renewal would come at 4 s, after this test has replaced the file,
    // so it sees fresh creds and leaves them alone.)
    let path = t.peel_with_ttl("web-01", 6).await;
    let master = t.master().await;
    let mut facts = master.nats.subscribe("zester.fact.web-01").await.unwrap();
    master.nats.flush().await.unwrap();
    common::sync(&master.nats, "_INBOX._master.sync").await;

    let agent = Agent::start(AgentOptions {
        server: t.url(),
        creds: path.clone(),
        ca: Some(t.home.ca_cert()),
        pin: None,
    })
    .await
    .expect("the agent starts");
    next_on(&mut facts, "zester.fact.web-01", Duration::from_secs(5)).await;

    let old = home::read_creds(&path).unwrap();
    let key = KeyPair::from_seed(&old.key().seed().unwrap()).unwrap();
    let id = PeelId::parse("web-01").unwrap();
    let renewed = t
        .home
        .load_authority()
        .unwrap()
        .issue_creds(key, "web-01", &Role::Peel(id), now_unix(), 3600)
        .unwrap();
    assert_ne!(renewed.jwt().token(), old.jwt().token());
    home::write_creds(&path, &renewed).unwrap();

    // Expiry (≤ 6 s) + reconnect delay (2–3 s): facts again from the new session.
    let again = json_of(&next_on(&mut facts, "zester.fact.web-01", Duration::from_secs(20)).await);
    // The server dropped the session at the old JWT's expiry; the agent waited at least 2 s
    // before reconnecting (RFC 3339 UTC strings of one width compare like the times).
    let earliest = rfc3339(old.jwt().claims().exp + 2);
    let connected_at = again["connected_at"].as_str().unwrap_or_default();
    assert!(
        connected_at >= earliest.as_str(),
        "reconnected at {connected_at}, before {earliest}"
    );
    // The audit writer appends a moment after the decision: wait for the second admission.
    let admissions = || {
        t.audit()
            .iter()
            .filter(|r| r["decision"] == "allow" && r["peel_id"] == "web-01")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while admissions() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        admissions() >= 2,
        "the reconnect did not go through the callout"
    );
    assert_eq!(
        command(&master.nats, "web-01", "test.ping").await,
        json!(true)
    );
    agent.stop().await.expect("the agent stops cleanly");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_cleanly_on_sigterm() {
    let t = appliance::start("").await;
    let creds = t.peel("web-02").await;
    let master = t.master().await;
    let mut events = master
        .nats
        .subscribe("zester.event.web-02.>")
        .await
        .unwrap();
    master.nats.flush().await.unwrap();
    common::sync(&master.nats, "_INBOX._master.sync").await;

    let running = tokio::spawn(peel::run(AgentOptions {
        server: t.url(),
        creds,
        ca: Some(t.home.ca_cert()),
        pin: None,
    }));
    // `run` installs its handlers before connecting, so once the peel has started a SIGTERM to
    // this test process reaches it rather than killing the process.
    next_on(
        &mut events,
        "zester.event.web-02.start",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        command(&master.nats, "web-02", "test.ping").await,
        json!(true)
    );
    // SAFETY: kill(2) on our own pid with a signal whose handler is installed.
    let sent = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    assert_eq!(sent, 0, "kill failed");
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("run returns after SIGTERM")
        .expect("the run task does not panic")
        .expect("run returns Ok");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_creds_fail_the_start_with_the_reason() {
    let t = appliance::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let options = |creds: std::path::PathBuf| AgentOptions {
        server: t.url(),
        creds,
        ca: Some(t.home.ca_cert()),
        pin: None,
    };
    let start = |options: AgentOptions| async move {
        tokio::time::timeout(Duration::from_secs(10), Agent::start(options))
            .await
            .expect("start gives up in time")
            .expect_err("the start fails")
    };

    let missing = dir.path().join("missing.creds");
    let error = start(options(missing)).await;
    assert!(matches!(error, AgentError::Creds { .. }), "{error}");
    assert!(error.to_string().contains("missing.creds"), "{error}");

    let garbage = dir.path().join("garbage.creds");
    std::fs::write(&garbage, "not creds").unwrap();
    let error = start(options(garbage)).await;
    assert!(matches!(error, AgentError::Creds { .. }), "{error}");
    assert!(error.to_string().contains("garbage.creds"), "{error}");

    // Signed by us, but the key is not accepted: the callout refuses it.
    let authority = t.home.load_authority().unwrap();
    let unknown = authority
        .issue_peel(&PeelId::parse("web-09").unwrap(), now_unix(), 3600)
        .unwrap();
    let unknown_key = unknown.key().public_key();
    let unknown_path = dir.path().join("web-09.creds");
    home::write_creds(&unknown_path, &unknown).unwrap();
    let error = start(options(unknown_path.clone())).await;
    assert!(matches!(error, AgentError::Refused { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&t.url()) && message.contains("web-09"),
        "{message}"
    );
    assert!(message.contains("authorization violation"), "{message}");
    t.wait_audit("unknown key", |r| {
        r["code"] == "key_unknown" && r["nkey"] == unknown_key
    })
    .await;

    // Expired creds are refused before connecting.
    let expired = authority
        .issue_creds(
            KeyPair::new_user(),
            "web-01",
            &Role::Peel(PeelId::parse("web-01").unwrap()),
            now_unix() - 100,
            10,
        )
        .unwrap();
    let expired_path = dir.path().join("expired.creds");
    home::write_creds(&expired_path, &expired).unwrap();
    let error = start(options(expired_path)).await;
    assert!(matches!(error, AgentError::Expired { .. }), "{error}");

    // A missing CA file and an unreachable server are named.
    let error = start(AgentOptions {
        ca: Some(dir.path().join("no-ca.pem")),
        pin: None,
        ..options(unknown_path.clone())
    })
    .await;
    assert!(matches!(error, AgentError::Ca { .. }), "{error}");
    assert!(error.to_string().contains("no-ca.pem"), "{error}");
    let error = start(AgentOptions {
        server: "nats://127.0.0.1:1".into(),
        ..options(unknown_path)
    })
    .await;
    assert!(matches!(error, AgentError::Connect { .. }), "{error}");
    assert!(error.to_string().contains("nats://127.0.0.1:1"), "{error}");
    t.stop().await;
}
