//! No confused deputy (issue 13): nothing a peel or an unapproved key may publish can steer
//! what zester's own connections do. Each case is tried as an attacker would, with nothing but
//! one accepted peel's creds or an nkey nobody approved, and each checks that nothing happened
//! elsewhere: no message on another peel's subjects, the key store and the settings read back
//! whole, and an audit line says what was refused.

mod common;

use std::time::Duration;

use async_nats::ConnectOptions;
use common::appliance::{self, TestAppliance};
use futures_util::StreamExt;
use nkeys::KeyPair;
use serde_json::{json, Value};
use zester::appliance::admin::{KEY_CHANGE, KEY_LIST, SETTINGS_GET, SETTINGS_SET};
use zester::appliance::keys::{KeyRecord, KeyState};
use zester::cli::client::{admin_connect, admin_request};
use zester::home::now_unix;
use zester::identity::peel_id::PeelId;
use zester::wire::admin::STATUS_SUBJECT;
use zester::wire::enrol::{sign_request, EnrolRequest, Op};
use zester::wire::rotate::{sign_rotation, Rotation};

/// Where a hostile request asks zester to send its answer.
const HOSTILE_REPLIES: [&str; 8] = [
    "zester.cmd.web-02",
    "$KV.zester-keys.web-02",
    "$JS.API.STREAM.DELETE.KV_zester-keys",
    "$JS.API.STREAM.PURGE.KV_zester-settings",
    "$SYS.REQ.SERVER.PING",
    "_INBOX.web-02.stolen",
    "_INBOX._admin.stolen",
    "_INBOX._store.stolen",
];

/// The key records and settings documents as they are now (to compare after the attack).
async fn snapshot(t: &TestAppliance, admin: &async_nats::Client) -> Vec<(String, Value)> {
    let mut state = Vec::new();
    for id in ["web-01", "web-02"] {
        let (record, revision) = t
            .appliance
            .keys()
            .get(&PeelId::parse(id).unwrap())
            .await
            .expect("the key store reads")
            .expect("the record is there");
        state.push((
            format!("key {id}"),
            json!({ "record": record, "revision": revision }),
        ));
        let settings = admin_request(admin, SETTINGS_GET, &json!({ "id": id }))
            .await
            .expect("settings read");
        state.push((format!("settings {id}"), settings));
    }
    let keys = admin_request(admin, KEY_LIST, &json!({}))
        .await
        .expect("key list");
    state.push(("key list".into(), keys));
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reply_subjects_get_no_answer_and_change_nothing() {
    let t = appliance::start("").await;
    let attacker_creds = t.peel("web-01").await;
    let victim_creds = t.peel("web-02").await;
    let admin = admin_connect(&t.home).await.expect("admin connects");
    for id in ["web-01", "web-02"] {
        admin_request(
            &admin,
            SETTINGS_SET,
            &json!({ "id": id, "document": { "owner": id } }),
        )
        .await
        .expect("settings set");
    }
    let before = snapshot(&t, &admin).await;

    // The victim listens where a reflected answer would land.
    let victim = t
        .connect(&victim_creds, "_INBOX.web-02")
        .await
        .expect("victim connects");
    // Admitted (a round trip only an admitted client gets), before it listens on its inbox,
    // where the probe's own answer would land.
    common::sync_peel(&victim.nats, "web-02").await;
    let mut victim_cmd = victim.nats.subscribe("zester.cmd.web-02").await.unwrap();
    let mut victim_inbox = victim.nats.subscribe("_INBOX.web-02.>").await.unwrap();
    victim.nats.flush().await.unwrap();

    let attacker = t
        .connect(&attacker_creds, "_INBOX.web-01")
        .await
        .expect("attacker peel connects");
    let unknown = KeyPair::new_user();
    let enrolling = t
        .connect_with(
            ConnectOptions::with_nkey(unknown.seed().unwrap()),
            &format!("_INBOX.{}", unknown.public_key()),
        )
        .await
        .expect("an unknown key is admitted to enrol");

    // Every service a peel, an enrolling key or an admin may ask, each with garbage (whose
    // error answer once overwrote a key record) and with every hostile reply subject.
    let services: Vec<(&str, &async_nats::Client, String)> = vec![
        (
            "enrol",
            &enrolling.nats,
            format!("zester.enrol.{}", unknown.public_key()),
        ),
        (
            "rotate",
            &attacker.nats,
            "zester.event.web-01.rotate".into(),
        ),
        (
            "rotate",
            &attacker.nats,
            "zester.event.web-01.rotated".into(),
        ),
        (
            "settings",
            &attacker.nats,
            "zester.event.web-01.settings".into(),
        ),
        ("admin", &admin, KEY_LIST.into()),
        ("status", &admin, STATUS_SUBJECT.into()),
    ];
    for (service, client, subject) in &services {
        // The admin's own inbox is where admin answers belong.
        let hostile: Vec<&str> = HOSTILE_REPLIES
            .into_iter()
            .filter(|r| !(subject.starts_with("zester.admin.") && r.starts_with("_INBOX._admin.")))
            .collect();
        for reply in &hostile {
            client
                .publish_with_reply(subject.clone(), reply.to_string(), "{}".into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        for reply in &hostile {
            t.wait_audit(&format!("{service} refusing reply {reply}"), |r| {
                r["code"] == "reply_refused"
                    && r["source"] == *service
                    && r["reason"].as_str().is_some_and(|why| {
                        why.contains(&format!("{reply:?}")) && why.contains(subject.as_str())
                    })
            })
            .await;
        }
    }

    // Nothing reached the victim, and the store reads back whole.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (what, subscription) in [("cmd", &mut victim_cmd), ("inbox", &mut victim_inbox)] {
        let got = tokio::time::timeout(Duration::from_millis(200), subscription.next()).await;
        assert!(
            got.is_err(),
            "a reflected answer reached web-02's {what}: {got:?}"
        );
    }
    assert_eq!(snapshot(&t, &admin).await, before);

    // The same services still answer their askers.
    let answer = attacker
        .nats
        .request("zester.event.web-01.settings", "".into())
        .await
        .expect("a peel reads its settings");
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["ok"], json!({ "owner": "web-01" }));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peel_holds_no_jetstream_grant() {
    let t = appliance::start("").await;
    let creds = t.peel("web-01").await;
    let peel = t
        .connect(&creds, "_INBOX.web-01")
        .await
        .expect("peel connects");
    for subject in [
        "$JS.API.DIRECT.GET.KV_zester-settings.$KV.zester-settings.web-01",
        "$JS.API.STREAM.DELETE.KV_zester-keys",
        "$KV.zester-keys.web-01",
        "$JS.API.INFO",
    ] {
        peel.nats
            .publish_with_reply(subject, "_INBOX.web-01.x", "".into())
            .await
            .unwrap();
        peel.nats.flush().await.unwrap();
        assert!(
            peel.wait_error("permissions violation").await,
            "publishing on {subject} was not refused: {:?}",
            peel.errors.lock().unwrap()
        );
        peel.errors.lock().unwrap().clear();
    }
    assert!(t
        .appliance
        .keys()
        .get(&PeelId::parse("web-01").unwrap())
        .await
        .unwrap()
        .is_some());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_reads_zesters_buckets_but_cannot_write_delete_or_republish_into_them() {
    let t = appliance::start("").await;
    let _ = t.peel("web-01").await;
    let master = t.master().await;
    let id = PeelId::parse("web-01").unwrap();
    let before = t
        .appliance
        .keys()
        .get(&id)
        .await
        .unwrap()
        .expect("the record");
    // A forged record: web-01 accepted under the master's own key.
    let mut forged = before.0.clone();
    forged.nkey = KeyPair::new_user().public_key();
    let forged = serde_json::to_vec(&forged).unwrap();
    let js = async_nats::jetstream::new(master.nats.clone());
    // Reading is allowed.
    let keys = js
        .get_key_value("zester-keys")
        .await
        .expect("the master reads the bucket");
    assert!(keys.entry("web-01").await.unwrap().is_some());
    for subject in [
        "$KV.zester-keys.web-01",
        "$KV.zester-settings.web-01",
        "$KV.zester-tokens.forged",
        "$KV.zester-nodes.forged",
        "$JS.API.STREAM.DELETE.KV_zester-keys",
        "$JS.API.STREAM.PURGE.KV_zester-keys",
        "$JS.API.STREAM.UPDATE.KV_zester-settings",
        "$JS.API.STREAM.MSG.DELETE.KV_zester-keys",
    ] {
        master
            .nats
            .publish(subject, forged.clone().into())
            .await
            .unwrap();
        master.nats.flush().await.unwrap();
        assert!(
            master.wait_error("permissions violation").await,
            "the master's publish on {subject} was not refused: {:?}",
            master.errors.lock().unwrap()
        );
        master.errors.lock().unwrap().clear();
    }
    // Through the KV API too: no ack, no purge, no delete.
    assert!(keys.put("web-01", forged.clone().into()).await.is_err());
    assert!(keys.purge("web-01").await.is_err());
    assert!(js.delete_stream("KV_zester-keys").await.is_err());
    // No stream of its own whose republish (sent by the server, past every permission) would
    // write into the bucket.
    let republishing = async_nats::jetstream::stream::Config {
        name: "MASTER_EVIL".to_string(),
        subjects: vec!["evil.*".to_string()],
        republish: Some(async_nats::jetstream::stream::Republish {
            source: "evil.*".to_string(),
            destination: "$KV.zester-keys.{{wildcard(1)}}".to_string(),
            headers_only: false,
        }),
        ..Default::default()
    };
    assert!(js.create_stream(republishing).await.is_err());
    let _ = master
        .nats
        .publish("evil.web-01", forged.clone().into())
        .await;
    master.nats.flush().await.unwrap();
    // Nothing changed: the record is the one zester wrote, at the same revision.
    let after = t
        .appliance
        .keys()
        .get(&id)
        .await
        .unwrap()
        .expect("the record");
    assert_eq!(after.1, before.1, "the record was rewritten");
    assert_eq!(after.0.nkey, before.0.nkey);
    t.stop().await;
}

/// Asks on `subject` and returns the `{"ok"|"error"}` answer.
async fn ask(client: &async_nats::Client, subject: String, body: Vec<u8>) -> Value {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject, body.into()),
    )
    .await
    .expect("answered in time")
    .expect("answered");
    serde_json::from_slice(&reply.payload).expect("JSON answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_rotation_notices_revoke_nothing() {
    let t = appliance::start("").await;
    let attacker_creds = t.peel("web-01").await;
    let victim_creds = t.peel("web-02").await;
    let attacker_key = zester::home::read_creds(&attacker_creds).unwrap();
    let victim_key = zester::home::read_creds(&victim_creds)
        .unwrap()
        .key()
        .public_key();
    let master_key = zester::home::read_creds(&t.home.service_creds("master"))
        .unwrap()
        .key()
        .public_key();
    let attacker = t
        .connect(&attacker_creds, "_INBOX.web-01")
        .await
        .expect("attacker connects");
    // The notice is signed by the attacker's own (current) key, as a real one would be.
    for (what, old_nkey) in [
        ("another peel's key", victim_key.clone()),
        ("everyone", "*".to_string()),
        ("the master's key", master_key.clone()),
    ] {
        let notice = Rotation {
            id: "web-01".into(),
            old_nkey: old_nkey.clone(),
            new_nkey: attacker_key.key().public_key(),
            at: now_unix(),
        };
        let signed = sign_rotation(&notice, None, attacker_key.key()).unwrap();
        let answer = ask(
            &attacker.nats,
            "zester.event.web-01.rotated".into(),
            serde_json::to_vec(&signed).unwrap(),
        )
        .await;
        assert!(answer["error"].is_string(), "{what}: {answer}");
        t.wait_audit(&format!("the notice naming {what} refused"), |r| {
            r["code"] == "rotated_refused" && r["peel_id"] == "web-01"
        })
        .await;
    }
    let account = std::fs::read_to_string(t.home.auth_dir().join("zester.jwt")).unwrap();
    let claims: Value = serde_json::from_slice(
        &data_encoding::BASE64URL_NOPAD
            .decode(account.trim().split('.').nth(1).unwrap().as_bytes())
            .unwrap(),
    )
    .unwrap();
    assert!(
        claims["nats"]["revocations"].is_null()
            || claims["nats"]["revocations"]
                .as_object()
                .is_some_and(|r| r.is_empty()),
        "revocations were added: {}",
        claims["nats"]["revocations"]
    );
    // The victim and the master still get in: admitted, proven by a round trip.
    let victim = t
        .connect(&victim_creds, "_INBOX.web-02")
        .await
        .expect("the victim still connects");
    common::sync_peel(&victim.nats, "web-02").await;
    t.master().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_revoke_cuts_every_session_even_those_the_table_lost() {
    let t = appliance::start("").await;
    let creds = t.peel("web-03").await;
    let mut clients = Vec::new();
    for _ in 0..70 {
        clients.push(
            t.connect(&creds, "_INBOX.web-03")
                .await
                .expect("session connects"),
        );
    }
    let sessions = t.appliance.callout().sessions.of("web-03");
    assert_eq!(sessions.len(), 70, "every session is remembered");
    // Sessions the table never saw (another node's, or a decision racing the revoke): the
    // revoke must find them through the server.
    for session in &sessions[..5] {
        t.appliance
            .callout()
            .sessions
            .remove(session.server_id.as_str(), session.client_id);
    }
    let admin = admin_connect(&t.home).await.expect("admin connects");
    let reply = admin_request(
        &admin,
        KEY_CHANGE,
        &json!({ "id": "web-03", "to": "revoked", "by": "test", "reason": "deputy test" }),
    )
    .await
    .expect("revoke");
    assert_eq!(reply["kicked"], 70, "{reply}");
    common::wait_until("all 70 sessions cut", Duration::from_secs(10), || {
        clients
            .iter()
            .all(|c| c.nats.connection_state() != async_nats::connection::State::Connected)
    })
    .await;
    // They stay out.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let back = clients
        .iter()
        .filter(|c| c.nats.connection_state() == async_nats::connection::State::Connected)
        .count();
    assert_eq!(back, 0, "sessions came back after the revoke");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_enrolling_many_ids_gets_at_most_one_pending_record() {
    let t = appliance::start("").await;
    let key = KeyPair::new_user();
    let nkey = key.public_key();
    let client = t
        .connect_with(
            ConnectOptions::with_nkey(key.seed().unwrap()),
            &format!("_INBOX.{nkey}"),
        )
        .await
        .expect("enrolling key connects");
    let asks = (0..20).map(|n| {
        let request = EnrolRequest {
            op: Op::Enrol,
            id: format!("squat-{n}"),
            nkey: nkey.clone(),
            xkey: None,
            hostname: "attacker\u{1b}[2J\nINFO forged".into(),
            at: now_unix(),
            token: None,
        };
        let body = serde_json::to_vec(&sign_request(&key, &request).unwrap()).unwrap();
        ask(&client.nats, format!("zester.enrol.{nkey}"), body)
    });
    let answers = futures_util::future::join_all(asks).await;
    let recorded = answers.iter().filter(|a| a["ok"].is_object()).count();
    assert_eq!(recorded, 1, "{answers:?}");
    let refused = answers
        .iter()
        .filter(|a| {
            a["error"]
                .as_str()
                .is_some_and(|e| e.contains("already enrolled as peel"))
        })
        .count();
    assert_eq!(refused, 19, "{answers:?}");
    let records: Vec<_> = t
        .appliance
        .keys()
        .cache()
        .all()
        .into_iter()
        .filter(|r| r.nkey == nkey)
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].state, KeyState::Pending);
    // The hostname the client chose reaches the admin's terminal (`key show`) escaped.
    let reason = &records[0].history[0].reason;
    assert!(!reason.chars().any(char::is_control), "{reason:?}");
    assert!(
        reason.contains("attacker\\u{1b}[2J\\nINFO forged"),
        "{reason:?}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_names_are_not_peel_ids() {
    let t = appliance::start("").await;
    for name in ["master", "admin", "callout", "sys", "service", "store"] {
        let out = t.zester(&["creds", "issue", name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "creds issue {name} succeeded");
        assert!(stderr.contains("zester's own users"), "{name}: {stderr}");
    }
    // zester's own sessions are untouched, and its store still works.
    let master = t.master().await;
    assert!(master.nats.connection_state() == async_nats::connection::State::Connected);
    let record = KeyRecord::new_accepted(
        PeelId::parse("web-04").unwrap(),
        &KeyPair::new_user().public_key(),
        "test",
        "after the refusals",
        now_unix(),
    )
    .unwrap();
    t.appliance
        .keys()
        .create(&record)
        .await
        .expect("store writes");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_whose_account_revokes_zester_itself_is_repaired_at_start() {
    let t = appliance::start("").await;
    let creds = t.peel("web-01").await;
    let (home, dir) = t.stop_keeping_home().await;

    // What a forged notice once did: `*`, the master's and the callout's keys revoked, pushed
    // to the resolver and kept in the home.
    let authority = home.load_authority().unwrap();
    let master_key = zester::home::read_creds(&home.service_creds("master"))
        .unwrap()
        .key()
        .public_key();
    let mut claims = authority.zester_jwt.claims().clone();
    let callout_key = claims.nats.authorization.auth_users[0].clone();
    let peel_key = KeyPair::new_user().public_key();
    for key in [
        "*",
        master_key.as_str(),
        callout_key.as_str(),
        peel_key.as_str(),
    ] {
        claims.nats.revocations.insert(key.to_string(), now_unix());
    }
    claims.iat = now_unix();
    let poisoned = authority.sign_account(claims).unwrap();
    let token = format!("{}\n", poisoned.token());
    std::fs::write(home.auth_dir().join("zester.jwt"), &token).unwrap();
    std::fs::write(
        home.resolver_dir()
            .join(format!("{}.jwt", poisoned.subject())),
        poisoned.token(),
    )
    .unwrap();

    let t = appliance::start_on(home, dir).await;
    let repaired = t.home.load_authority().unwrap();
    let revocations = &repaired.zester_jwt.claims().nats.revocations;
    assert!(
        revocations.contains_key(&peel_key),
        "a peel's revocation stays: {revocations:?}"
    );
    for key in ["*", master_key.as_str(), callout_key.as_str()] {
        assert!(!revocations.contains_key(key), "{key} is still revoked");
    }
    t.master().await;
    let peel = t
        .connect(&creds, "_INBOX.web-01")
        .await
        .expect("peels get in again");
    common::sync_peel(&peel.nats, "web-01").await;
    t.stop().await;
}
