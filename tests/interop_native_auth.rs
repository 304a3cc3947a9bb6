//! Interop with a real nats-server 2.15 in operator mode, native JWT auth (the ZESTER account
//! without its callout section): creds from `zester creds issue` connect over TLS 1.3 with
//! async-nats and with nats.py, peels keep to their own subjects, and forged creds are refused.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{ConnectErrorKind, ConnectOptions, Event};
use common::NatsServer;
use futures_util::StreamExt;
use nkeys::KeyPair;
use zester::authority::Authority;
use zester::home::{self, now_unix, Home};
use zester::identity::claims::Claims;
use zester::identity::creds::format_creds;
use zester::identity::jwt;
use zester::identity::peel_id::PeelId;

/// A home with two peels, and a server that trusts it.
struct Setup {
    _dir: tempfile::TempDir,
    home: Home,
    authority: Authority,
    server: NatsServer,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("home"));
    let now = now_unix();
    home.init(false, "localhost", now).unwrap();
    let authority = home.load_authority().unwrap();
    for id in ["peel-a", "peel-b"] {
        let creds = authority
            .issue_peel(&PeelId::parse(id).unwrap(), now, 3600)
            .unwrap();
        home::write_creds(&home.peel_creds(id), &creds).unwrap();
    }
    let zester = authority.zester_account(false, now).unwrap();
    let config = format!(
        r#"
operator: {operator}
system_account: {sys}
resolver: MEMORY
resolver_preload: {{
  {sys}: {sys_jwt}
  {zester}: {zester_jwt}
}}
tls {{
  cert_file: {cert}
  key_file: {key}
  min_version: "1.3"
}}
"#,
        operator = common::quote(&home.operator_jwt()),
        sys = authority.sys.public_key(),
        sys_jwt = authority.sys_jwt.token(),
        zester = authority.zester.public_key(),
        zester_jwt = zester.token(),
        cert = common::quote(&home.server_cert()),
        key = common::quote(&home.server_key()),
    );
    let server = NatsServer::start(&config);
    Setup {
        _dir: dir,
        home,
        authority,
        server,
    }
}

/// Connects with `creds` over TLS, collecting the server's async errors.
async fn connect(
    setup: &Setup,
    creds: &Path,
    inbox: &str,
) -> Result<(async_nats::Client, Arc<Mutex<Vec<String>>>), async_nats::ConnectError> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let client = ConnectOptions::with_credentials_file(creds)
        .await
        .unwrap()
        .add_root_certificates(setup.home.ca_cert())
        .require_tls(true)
        .custom_inbox_prefix(inbox)
        .max_reconnects(0)
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let Event::ServerError(e) = event {
                    sink.lock().unwrap().push(e.to_string().to_lowercase());
                }
            }
        })
        .connect(setup.server.url())
        .await?;
    Ok((client, errors))
}

async fn wait_for(errors: &Arc<Mutex<Vec<String>>>, needle: &str) -> bool {
    for _ in 0..40 {
        if errors.lock().unwrap().iter().any(|e| e.contains(needle)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn peel_creds_work_with_async_nats_and_stay_in_their_lane() {
    let setup = setup();
    let master_creds = setup.home.service_creds("master");
    let (master, _) = connect(&setup, &master_creds, "_INBOX._master")
        .await
        .expect("master connects");
    let mut events = master.subscribe("zester.event.>").await.unwrap();
    master.flush().await.unwrap();
    common::sync(&master, "_INBOX._master.sync").await;

    let (peel, errors) = connect(&setup, &setup.home.peel_creds("peel-a"), "_INBOX.peel-a")
        .await
        .expect("peel-a connects over TLS with its creds");

    // Its own subject reaches the master.
    peel.publish("zester.event.peel-a.hello", "mine".into())
        .await
        .unwrap();
    // Another peel's subject is refused by the server, and never delivered.
    peel.publish("zester.event.peel-b.hello", "forged".into())
        .await
        .unwrap();
    peel.flush().await.unwrap();
    assert!(
        wait_for(
            &errors,
            "permissions violation for publish to \"zester.event.peel-b.hello\""
        )
        .await,
        "no publish violation seen: {:?}",
        errors.lock().unwrap()
    );
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the master hears the peel")
        .unwrap();
    assert_eq!(first.subject.as_str(), "zester.event.peel-a.hello");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err(),
        "the forged event was delivered"
    );

    // Reading another peel's commands or every inbox is refused too.
    let _cmd = peel.subscribe("zester.cmd.peel-b").await.unwrap();
    let _inboxes = peel.subscribe("_INBOX.>").await.unwrap();
    peel.flush().await.unwrap();
    assert!(
        wait_for(
            &errors,
            "permissions violation for subscription to \"zester.cmd.peel-b\""
        )
        .await
    );
    assert!(
        wait_for(
            &errors,
            "permissions violation for subscription to \"_inbox.>\""
        )
        .await
    );

    // Its own commands arrive.
    let mut commands = peel.subscribe("zester.cmd.peel-a").await.unwrap();
    peel.flush().await.unwrap();
    let cmd =
        common::publish_until_received(&master, "zester.cmd.peel-a", b"test.ping", &mut commands)
            .await;
    assert_eq!(&cmd.payload[..], b"test.ping");
}

#[tokio::test]
async fn forged_creds_are_refused() {
    let setup = setup();
    let dir = tempfile::tempdir().unwrap();
    let real = home::read_creds(&setup.home.peel_creds("peel-a")).unwrap();
    let seed = real.key().seed().unwrap();

    // The same claims re-signed by a foreign account's key, still claiming ZESTER.
    let foreign = KeyPair::new_account();
    let forged: Claims<_> = real.jwt().claims().clone();
    let forged = jwt::encode(forged, &foreign).unwrap();
    let foreign_path = write(&dir, "foreign.creds", &format_creds(forged.token(), &seed));

    // The right JWT with the seed of another key (the nonce signature will not match).
    let other_seed = KeyPair::new_user().seed().unwrap();
    let wrong_seed_path = write(
        &dir,
        "wrong-seed.creds",
        &format_creds(real.jwt().token(), &other_seed),
    );

    // A JWT signed by the account identity key, which the strict operator forbids.
    let mut claims = real.jwt().claims().clone();
    claims.nats.issuer_account.clear();
    let identity_signed = jwt::encode(claims, &setup.authority.zester).unwrap();
    let identity_path = write(
        &dir,
        "identity.creds",
        &format_creds(identity_signed.token(), &seed),
    );

    for (what, path) in [
        ("foreign account", &foreign_path),
        ("wrong seed", &wrong_seed_path),
        ("account identity key", &identity_path),
    ] {
        let result = connect(&setup, path, "_INBOX.peel-a").await;
        match result {
            Ok(_) => panic!("{what}: creds were accepted"),
            Err(e) => assert_eq!(
                e.kind(),
                ConnectErrorKind::AuthorizationViolation,
                "{what}: refused for the wrong reason: {e}"
            ),
        }
    }
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The real foreign client: nats.py with the same creds and CA.
#[test]
fn peel_creds_work_with_nats_py() {
    let setup = setup();
    let run =
        |creds: &Path| common::nats_py_peel_a(&setup.server.url(), creds, &setup.home.ca_cert());
    let report = run(&setup.home.peel_creds("peel-a"));
    assert_eq!(report["connected"], true, "{report}");
    assert_eq!(report["own_publish_ok"], true, "{report}");
    assert_eq!(report["foreign_publish_violation"], true, "{report}");
    assert_eq!(report["foreign_subscribe_violation"], true, "{report}");

    // nats.py is refused with creds that do not belong together.
    let dir = tempfile::tempdir().unwrap();
    let real = home::read_creds(&setup.home.peel_creds("peel-a")).unwrap();
    let other_seed = KeyPair::new_user().seed().unwrap();
    let bad = write(
        &dir,
        "bad.creds",
        &format_creds(real.jwt().token(), &other_seed),
    );
    let report = run(&bad);
    assert_eq!(report["connected"], false, "{report}");
    assert!(
        report["error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("authorization"),
        "{report}"
    );
}
