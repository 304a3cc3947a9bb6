//! Hostile clients, table-driven (issue 7): every row is a distinct bad input against a running
//! appliance, must be refused, and must leave an audit line with its reason code.

mod common;

use std::time::Duration;

use async_nats::ConnectOptions;
use common::appliance::{self, TestAppliance};
use data_encoding::BASE64URL_NOPAD;
use nkeys::{KeyPair, XKey};
use serde_json::{json, Value};
use zester::authority::Authority;
use zester::home::now_unix;
use zester::identity::claims::{Claims, UserNats};
use zester::identity::jwt;
use zester::identity::peel_id::PeelId;

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

fn b64(bytes: &[u8]) -> String {
    BASE64URL_NOPAD.encode(bytes)
}

/// Signs arbitrary header and claims JSON with `key` (for forgeries the codec refuses to make).
fn forge(header: &str, claims: &Value, key: &KeyPair) -> String {
    let signed = format!(
        "{}.{}",
        b64(header.as_bytes()),
        b64(&serde_json::to_vec(claims).unwrap())
    );
    let sig = key.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&sig))
}

/// Refused, and a new audit line with `code` appears for this attempt.
async fn refused_with(t: &TestAppliance, what: &str, options: ConnectOptions, code: &str) {
    let count = || {
        t.audit()
            .iter()
            .filter(|r| r["code"] == code && r["decision"] == "refuse")
            .count()
    };
    let before = count();
    t.assert_refused(options, what).await;
    for _ in 0..200 {
        if count() > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{what}: no new audit line with code {code}: {:#?}",
        t.audit().last()
    );
}

/// Presents `jwt` exactly as given (client libraries refuse to send some of these forgeries
/// from a creds file) and signs the nonce with `seed`.
fn creds_options(jwt: &str, seed: &str) -> ConnectOptions {
    let (jwt, key) = (jwt.to_string(), KeyPair::from_seed(seed).unwrap());
    let key = std::sync::Arc::new(key);
    ConnectOptions::with_auth_callback(move |nonce: Vec<u8>| {
        let (jwt, key) = (jwt.clone(), key.clone());
        async move {
            let mut auth = async_nats::Auth::new();
            auth.jwt = Some(jwt);
            auth.signature = Some(key.sign(&nonce).unwrap());
            Ok(auth)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_refused_with_their_reasons() {
    let t = appliance::start("").await;
    let now = now_unix();
    let authority = t.home.load_authority().unwrap();
    let good_path = t.peel("web-01").await;
    let good = zester::home::read_creds(&good_path).unwrap();
    let seed = good.key().seed().unwrap();
    let token = good.jwt().token().to_string();
    let parts: Vec<&str> = token.split('.').collect();
    let claims: Value =
        serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
    let signer = &authority.zester_signer;
    let mut rows = 0;

    // JWTs broken in their shape or header: nats-server cannot decode them and hands the client
    // the sentinel; the callout sees a signature without a JWT of its own.
    let mut shape_cases: Vec<(&str, String)> = vec![
        (
            "typ not JWT",
            forge(r#"{"typ":"XYZ","alg":"ed25519-nkey"}"#, &claims, signer),
        ),
        (
            "alg none",
            forge(r#"{"typ":"JWT","alg":"none"}"#, &claims, signer),
        ),
        (
            "alg HS256",
            forge(r#"{"typ":"JWT","alg":"HS256"}"#, &claims, signer),
        ),
        (
            "alg v1 ed25519",
            forge(r#"{"typ":"JWT","alg":"ed25519"}"#, &claims, signer),
        ),
        (
            "header not base64",
            format!("!!!.{}.{}", parts[1], parts[2]),
        ),
        (
            "claims not base64",
            format!("{}.!!!.{}", parts[0], parts[2]),
        ),
        (
            "claims not JSON",
            format!("{}.{}.{}", parts[0], b64(b"not json"), parts[2]),
        ),
        (
            "signature not base64",
            format!("{}.{}.!!!", parts[0], parts[1]),
        ),
        (
            "signature too short",
            format!("{}.{}.{}", parts[0], parts[1], b64(&[1u8; 10])),
        ),
        ("two parts", format!("{}.{}", parts[0], parts[1])),
        ("signature flipped", {
            let mut sig = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
            sig[5] ^= 1;
            format!("{}.{}.{}", parts[0], parts[1], b64(&sig))
        }),
    ];
    for (what, field, value) in [
        ("claims widened to pub >", "/nats/pub/allow", json!([">"])),
        ("claims renamed", "/name", json!("web-99")),
        ("claims expiry extended", "/exp", json!(now + 999_999)),
        (
            "claims subject swapped",
            "/sub",
            json!(KeyPair::new_user().public_key()),
        ),
    ] {
        let mut altered = claims.clone();
        *altered.pointer_mut(field).unwrap() = value;
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_vec(&altered).unwrap()),
            parts[2]
        );
        shape_cases.push((what, forged));
    }
    for role_key in [
        KeyPair::new_operator(),
        KeyPair::new_user(),
        KeyPair::new_server(),
    ] {
        let mut c = claims.clone();
        c["iss"] = json!(role_key.public_key());
        shape_cases.push(("issuer of the wrong key role", forge(HEADER, &c, &role_key)));
    }
    for (what, forged) in &shape_cases {
        refused_with(&t, what, creds_options(forged, &seed), "jwt_invalid").await;
        rows += 1;
    }

    // Well-formed JWTs nats-server refuses itself; the audit diagnoses them from the JWT.
    let user_claims = |f: &dyn Fn(&mut Claims<UserNats>)| {
        let mut c = good.jwt().claims().clone();
        f(&mut c);
        c
    };
    let foreign = Authority::generate(now).unwrap().0;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "signed by the account identity key",
            jwt::encode(
                user_claims(&|c| c.nats.issuer_account.clear()),
                &authority.zester,
            )
            .unwrap()
            .token()
            .to_string(),
            "issuer_not_signing_key",
        ),
        (
            "signed by a signing key the account does not list",
            jwt::encode(user_claims(&|_| {}), &KeyPair::new_account())
                .unwrap()
                .token()
                .to_string(),
            "foreign_issuer",
        ),
        (
            "signed by another operator's account",
            jwt::encode(
                user_claims(&|c| c.nats.issuer_account = foreign.zester.public_key()),
                &foreign.zester_signer,
            )
            .unwrap()
            .token()
            .to_string(),
            "foreign_issuer",
        ),
        (
            "signing key without issuer_account",
            jwt::encode(user_claims(&|c| c.nats.issuer_account.clear()), signer)
                .unwrap()
                .token()
                .to_string(),
            "foreign_issuer",
        ),
        (
            "expired",
            jwt::encode(user_claims(&|c| c.exp = now - 10), signer)
                .unwrap()
                .token()
                .to_string(),
            "jwt_expired",
        ),
        (
            "not yet valid",
            jwt::encode(user_claims(&|c| c.nbf = now + 3600), signer)
                .unwrap()
                .token()
                .to_string(),
            "jwt_not_yet_valid",
        ),
    ];
    for (what, forged, code) in &cases {
        refused_with(&t, what, creds_options(forged, &seed), code).await;
        rows += 1;
    }
    let other_seed = KeyPair::new_user().seed().unwrap();
    refused_with(
        &t,
        "nonce signed by another key",
        creds_options(&token, &other_seed),
        "nonce_signature_mismatch",
    )
    .await;
    rows += 1;

    // Well-formed and chained, but not admitted by our records.
    let bearer_key = KeyPair::new_user();
    let mut bearer = UserNats::with_permissions(Default::default());
    bearer.bearer_token = true;
    bearer.issuer_account = authority.zester.public_key();
    let bearer_jwt = jwt::encode(
        Claims {
            sub: bearer_key.public_key(),
            iat: now,
            nats: bearer,
            ..Claims::default()
        },
        signer,
    )
    .unwrap();
    refused_with(
        &t,
        "bearer JWT",
        creds_options(bearer_jwt.token(), &bearer_key.seed().unwrap()),
        "bearer_not_accepted",
    )
    .await;
    rows += 1;
    let stranger = authority
        .issue_peel(&PeelId::parse("web-07").unwrap(), now, 3600)
        .unwrap();
    refused_with(
        &t,
        "creds we signed for a key we never registered",
        ConnectOptions::with_credentials(&stranger.to_text()).unwrap(),
        "key_unknown",
    )
    .await;
    rows += 1;
    refused_with(
        &t,
        "no credentials",
        ConnectOptions::new(),
        "no_credentials",
    )
    .await;
    refused_with(
        &t,
        "user and password",
        ConnectOptions::with_user_and_password("root".into(), "toor".into()),
        "password_not_accepted",
    )
    .await;
    refused_with(
        &t,
        "token",
        ConnectOptions::with_token("letmein".into()),
        "token_not_accepted",
    )
    .await;
    rows += 3;

    // A revoked peel, and a revoked key trying to enrol again with its nkey.
    let victim = t.peel("web-02").await;
    let out = t.zester(&["key", "revoke", "web-02", "--reason", "test"]);
    assert!(out.status.success());
    refused_with(
        &t,
        "revoked peel",
        ConnectOptions::with_credentials_file(&victim)
            .await
            .unwrap(),
        "revoked",
    )
    .await;
    let victim_seed = zester::home::read_creds(&victim)
        .unwrap()
        .key()
        .seed()
        .unwrap();
    refused_with(
        &t,
        "revoked key enrolling",
        ConnectOptions::with_nkey(victim_seed),
        "key_not_accepted",
    )
    .await;
    rows += 2;

    // Enrolment requests: bad ids (wildcards, dots, reserved, look-alikes, too long), a request
    // signed by another key, and a replayed (stale) request.
    let enrolling = KeyPair::new_user();
    let client = t
        .connect_with(
            ConnectOptions::with_nkey(enrolling.seed().unwrap()),
            &format!("_INBOX.{}", enrolling.public_key()),
        )
        .await
        .expect("an enrolling session");
    let subject = format!("zester.enrol.{}", enrolling.public_key());
    let request = |id: &str, at: i64, key: &KeyPair| {
        let r = zester::wire::enrol::EnrolRequest {
            op: zester::wire::enrol::Op::Enrol,
            id: id.to_string(),
            nkey: enrolling.public_key(),
            xkey: Some(XKey::new().public_key()),
            hostname: "evil".into(),
            at,
            token: None,
        };
        serde_json::to_vec(&zester::wire::enrol::sign_request(key, &r).unwrap()).unwrap()
    };
    let long = "x".repeat(200);
    let enrol_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "id with a dot",
            request("a.b", now, &enrolling),
            "enrol_bad_id",
        ),
        ("id *", request("*", now, &enrolling), "enrol_bad_id"),
        ("id >", request(">", now, &enrolling), "enrol_bad_id"),
        (
            "reserved id",
            request("_master", now, &enrolling),
            "enrol_bad_id",
        ),
        (
            "look-alike id",
            request("w\u{0435}b-01", now, &enrolling),
            "enrol_bad_id",
        ),
        (
            "id too long",
            request(&long, now, &enrolling),
            "enrol_bad_id",
        ),
        (
            "signed by another key",
            request("web-05", now, &KeyPair::new_user()),
            "enrol_bad_signature",
        ),
        (
            "replayed old request",
            request("web-05", now - 3600, &enrolling),
            "enrol_stale",
        ),
        ("not a request", b"{}".to_vec(), "enrol_malformed"),
        (
            "squatting web-01",
            request("web-01", now, &enrolling),
            "enrol_id_taken",
        ),
    ];
    for (what, payload, code) in enrol_cases {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.nats.request(subject.clone(), payload.into()),
        )
        .await
        .expect("an answer")
        .expect("a reply");
        let answer: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert!(answer.get("error").is_some(), "{what}: accepted: {answer}");
        t.wait_audit(what, |r| r["code"] == code).await;
        rows += 1;
    }

    // A peel reaching for system and JetStream subjects.
    let peel = t.connect(&good_path, "_INBOX.web-01").await.unwrap();
    for subject in [
        "$SYS.REQ.SERVER.PING",
        "$JS.API.STREAM.LIST",
        "$KV.zester-keys.web-01",
        "zester.admin.key.list",
    ] {
        peel.nats.publish(subject, "x".into()).await.unwrap();
        peel.nats.flush().await.unwrap();
        assert!(
            peel.wait_error(&format!(
                "permissions violation for publish to \"{}\"",
                subject.to_lowercase()
            ))
            .await,
            "{subject}: no violation: {:?}",
            peel.errors.lock().unwrap()
        );
        rows += 1;
    }

    // A slow-loris client holding an auth slot: the server drops it, others get in meanwhile.
    let port: u16 = t.url().rsplit(':').next().unwrap().parse().unwrap();
    let mut loris = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let good = t
        .connect(&good_path, "_INBOX.web-01")
        .await
        .expect("a good peel still gets in");
    common::sync_peel(&good.nats, "web-01").await;
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        loop {
            match loris.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a silent connection open");
    rows += 1;

    assert!(rows >= 40, "only {rows} hostile inputs");
    println!("{rows} hostile inputs refused");
    t.stop().await;
}
