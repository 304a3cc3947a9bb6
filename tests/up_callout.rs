//! `zester up` end to end: a real nats-server child, the in-process auth callout, real clients
//! (async-nats and nats.py) over TLS. Peels keep to their own subjects, the master reaches
//! everything, and every kind of bad client is refused with an audit line saying why.

mod common;

use std::path::Path;
use std::time::Duration;

use async_nats::ConnectOptions;
use common::appliance;
use futures_util::StreamExt;
use nkeys::KeyPair;
use zester::authority::Authority;
use zester::home::{self, now_unix};
use zester::identity::creds::format_creds;
use zester::identity::jwt;
use zester::identity::peel_id::PeelId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peels_keep_to_their_lane_and_the_master_reaches_everything() {
    let t = appliance::start("").await;
    let peel_a = t.peel("peel-a").await;
    t.peel("peel-b").await;
    let master = t.master().await;
    let everything = master.nats.subscribe("zester.>").await.unwrap();
    master.nats.flush().await.unwrap();
    common::sync(&master.nats, "_INBOX._master.sync").await;

    let peel = t
        .connect(&peel_a, "_INBOX.peel-a")
        .await
        .expect("peel-a connects over TLS");
    peel.nats
        .publish("zester.event.peel-a.x", "mine".into())
        .await
        .unwrap();
    peel.nats
        .publish("zester.event.peel-b.x", "forged".into())
        .await
        .unwrap();
    let _other_cmd = peel.nats.subscribe("zester.cmd.peel-b").await.unwrap();
    let _all_inboxes = peel.nats.subscribe("_INBOX.>").await.unwrap();
    peel.nats.flush().await.unwrap();
    for needle in [
        "permissions violation for publish to \"zester.event.peel-b.x\"",
        "permissions violation for subscription to \"zester.cmd.peel-b\"",
        "permissions violation for subscription to \"_inbox.>\"",
    ] {
        assert!(
            peel.wait_error(needle).await,
            "{needle} not seen: {:?}",
            peel.errors.lock().unwrap()
        );
    }
    // The audit records of these connections (`zester.audit.<node>`, what the audit stream
    // keeps) reach the master too; what matters here is the peels' events.
    let mut events =
        everything.filter(|m| std::future::ready(!m.subject.as_str().starts_with("zester.audit.")));
    let got = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the master hears the peel")
        .unwrap();
    assert_eq!(got.subject.as_str(), "zester.event.peel-a.x");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err(),
        "a forged event was delivered"
    );

    // The master commands the peel, and the peel answers the request.
    let mut commands = peel.nats.subscribe("zester.cmd.peel-a").await.unwrap();
    peel.nats.flush().await.unwrap();
    let responder = tokio::spawn({
        let nats = peel.nats.clone();
        async move {
            let request = commands.next().await.unwrap();
            nats.publish(request.reply.unwrap(), "true".into())
                .await
                .unwrap();
            nats.flush().await.unwrap();
        }
    });
    // Until the peel's subscription is registered the server answers "no responders".
    let mut answer = None;
    for _ in 0..40 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            master.nats.request("zester.cmd.peel-a", "test.ping".into()),
        )
        .await
        .expect("answer in time")
        {
            Ok(reply) => {
                answer = Some(reply);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let answer = answer.expect("the peel answers the master");
    assert_eq!(&answer.payload[..], b"true");
    responder.await.unwrap();

    let allowed = t
        .wait_audit("peel-a admitted", |r| {
            r["decision"] == "allow" && r["peel_id"] == "peel-a"
        })
        .await;
    assert_eq!(allowed["role"], "peel");
    assert_eq!(allowed["client_ip"], "127.0.0.1");
    t.stop().await;
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_client_is_refused_with_an_audited_reason() {
    let t = appliance::start("").await;
    let good = t.peel("web-01").await;
    let real = home::read_creds(&good).unwrap();
    let seed = real.key().seed().unwrap();
    let key = real.key().public_key();
    let dir = tempfile::tempdir().unwrap();
    let authority = t.home.load_authority().unwrap();
    let now = now_unix();

    // No credentials at all.
    t.assert_refused(ConnectOptions::new(), "no creds").await;
    t.wait_audit("no creds", |r| r["code"] == "no_credentials")
        .await;

    // user/password.
    t.assert_refused(
        ConnectOptions::with_user_and_password("bob".into(), "secret".into()),
        "user/password",
    )
    .await;
    let record = t
        .wait_audit("user/password", |r| r["code"] == "password_not_accepted")
        .await;
    assert!(
        !record.to_string().contains("secret"),
        "the password reached the audit log"
    );

    // A tampered JWT (payload changed, signature kept).
    let token = real.jwt().token();
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value = serde_json::from_slice(
        &data_encoding::BASE64URL_NOPAD
            .decode(parts[1].as_bytes())
            .unwrap(),
    )
    .unwrap();
    claims["nats"]["pub"]["allow"] = serde_json::json!([">"]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        data_encoding::BASE64URL_NOPAD.encode(&serde_json::to_vec(&claims).unwrap()),
        parts[2]
    );
    let path = write(dir.path(), "tampered.creds", &format_creds(&forged, &seed));
    t.assert_refused(
        ConnectOptions::with_credentials_file(&path).await.unwrap(),
        "tampered JWT",
    )
    .await;
    t.wait_audit("tampered JWT", |r| r["code"] == "jwt_invalid")
        .await;

    // A JWT from a foreign operator (same peel id, another hierarchy).
    let (foreign, _) = Authority::generate(now).unwrap();
    let stranger = foreign
        .issue_peel(&PeelId::parse("web-01").unwrap(), now, 3600)
        .unwrap();
    let stranger_key = stranger.key().public_key();
    let path = write(dir.path(), "foreign.creds", &stranger.to_text());
    t.assert_refused(
        ConnectOptions::with_credentials_file(&path).await.unwrap(),
        "foreign operator",
    )
    .await;
    t.wait_audit("foreign operator", |r| {
        r["nkey"] == stranger_key && r["code"] == "foreign_issuer"
    })
    .await;

    // Signed by the ZESTER identity key where the signing key is required.
    let mut claims = real.jwt().claims().clone();
    claims.nats.issuer_account.clear();
    let identity_signed = jwt::encode(claims, &authority.zester).unwrap();
    let path = write(
        dir.path(),
        "identity.creds",
        &format_creds(identity_signed.token(), &seed),
    );
    t.assert_refused(
        ConnectOptions::with_credentials_file(&path).await.unwrap(),
        "identity key",
    )
    .await;

    // Expired.
    let mut claims = real.jwt().claims().clone();
    claims.iat = now - 100;
    claims.exp = now - 10;
    let expired = jwt::encode(claims, &authority.zester_signer).unwrap();
    let path = write(
        dir.path(),
        "expired.creds",
        &format_creds(expired.token(), &seed),
    );
    t.assert_refused(
        ConnectOptions::with_credentials_file(&path).await.unwrap(),
        "expired",
    )
    .await;

    // The right JWT with the wrong seed.
    let other_seed = KeyPair::new_user().seed().unwrap();
    let path = write(
        dir.path(),
        "wrong-seed.creds",
        &format_creds(token, &other_seed),
    );
    t.assert_refused(
        ConnectOptions::with_credentials_file(&path).await.unwrap(),
        "wrong seed",
    )
    .await;

    // Creds we signed, but for a key the store does not hold as accepted.
    let unknown = authority
        .issue_peel(&PeelId::parse("web-09").unwrap(), now, 3600)
        .unwrap();
    let unknown_key = unknown.key().public_key();
    let path = write(dir.path(), "unknown.creds", &unknown.to_text());
    t.assert_refused(
        ConnectOptions::with_credentials_file(&path).await.unwrap(),
        "unknown key",
    )
    .await;
    t.wait_audit("unknown key", |r| {
        r["code"] == "key_unknown" && r["nkey"] == unknown_key
    })
    .await;

    for (what, code) in [
        ("identity key", "issuer_not_signing_key"),
        ("expired", "jwt_expired"),
        ("wrong seed", "nonce_signature_mismatch"),
    ] {
        t.wait_audit(what, |r| r["nkey"] == key && r["code"] == code)
            .await;
    }
    // One line per connection: the server's own event is not audited a second time for
    // connections the callout decided on.
    let audit = t.audit();
    let mut ids: Vec<u64> = audit
        .iter()
        .filter(|r| r["source"] == "callout" || r["source"] == "server")
        .map(|r| r["client_id"].as_u64().unwrap())
        .collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all, "a connection was audited twice: {audit:#?}");
    // The good creds still work after all that.
    let real = t
        .connect(&good, "_INBOX.web-01")
        .await
        .expect("the real peel still connects");
    common::sync_peel(&real.nats, "web-01").await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_connects_through_the_callout() {
    let t = appliance::start("").await;
    let creds = t.peel("peel-a").await;
    t.peel("peel-b").await;
    let report = common::nats_py_peel_a(&t.url(), &creds, &t.home.ca_cert());
    assert_eq!(report["connected"], true, "{report}");
    assert_eq!(report["own_publish_ok"], true, "{report}");
    assert_eq!(report["foreign_publish_violation"], true, "{report}");
    assert_eq!(report["foreign_subscribe_violation"], true, "{report}");
    let record = t
        .wait_audit("nats.py admitted", |r| {
            r["decision"] == "allow" && r["peel_id"] == "peel-a"
        })
        .await;
    assert_eq!(record["connection_name"], "zester-peel-peel-a");
    t.stop().await;
}
