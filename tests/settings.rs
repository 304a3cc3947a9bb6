//! Per-peel settings: the master writes a document (with a sealed secret) through the admin
//! API; the peel reads its own with a request on `zester.event.<id>.settings` (answered to its
//! inbox only) and opens the secret in memory; another peel cannot read it, and no peel can
//! write settings.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::appliance;
use nkeys::XKey;
use zester::identity::peel_id::PeelId;
use zester::peel::settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_peel_reads_its_settings_and_opens_its_secrets() {
    let t = appliance::start("").await;
    let a_creds = t.peel("peel-a").await;
    let b_creds = t.peel("peel-b").await;
    let authority = t.home.load_authority().unwrap();
    let master_xkey = authority.master_xkey.public_key();
    let peel_a_x = XKey::new();
    let sealed =
        zester::secrets::seal(b"s3cret", &authority.master_xkey, &peel_a_x.public_key()).unwrap();
    let document = serde_json::json!({ "region": "eu", "db": { "password": sealed } });

    let mut set = std::process::Command::new(env!("CARGO_BIN_EXE_zester"))
        .arg("--home")
        .arg(t.home.root())
        .args(["settings", "set", "peel-a", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    set.stdin
        .take()
        .unwrap()
        .write_all(document.to_string().as_bytes())
        .unwrap();
    let out = set.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = t.zester(&["settings", "show", "peel-a"]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("ENC["),
        "stored sealed"
    );
    assert!(!String::from_utf8_lossy(&shown.stdout).contains("s3cret"));

    let a = t.connect(&a_creds, "_INBOX.peel-a").await.unwrap();
    let id_a = PeelId::parse("peel-a").unwrap();
    let fetched = settings::fetch(&a.nats, &id_a)
        .await
        .unwrap()
        .expect("peel-a has settings");
    assert_eq!(fetched, document);
    let opened = settings::open_secrets(&fetched, &peel_a_x, &master_xkey).unwrap();
    assert_eq!(opened["db"]["password"], "s3cret");
    let id_b = PeelId::parse("peel-b").unwrap();
    assert_eq!(
        settings::fetch(&a.nats, &id_a).await.unwrap(),
        Some(document.clone())
    );

    // peel-b may not read peel-a's document, and has none of its own.
    let b = t.connect(&b_creds, "_INBOX.peel-b").await.unwrap();
    let stolen = settings::fetch(&b.nats, &id_a).await;
    assert!(
        !matches!(stolen, Ok(Some(_))),
        "peel-b read peel-a's settings"
    );
    assert!(
        b.wait_error("permissions violation for publish to \"zester.event.peel-a.settings\"")
            .await,
        "{:?}",
        b.errors.lock().unwrap()
    );
    assert_eq!(settings::fetch(&b.nats, &id_b).await.unwrap(), None);

    // No peel writes settings.
    b.nats
        .publish("$KV.zester-settings.peel-b", "{}".into())
        .await
        .unwrap();
    b.nats.flush().await.unwrap();
    assert!(
        b.wait_error("permissions violation for publish to \"$kv.zester-settings.peel-b\"")
            .await
    );
    // `zester peel run` with its curve seed loads and opens its settings by itself; the master
    // sees the names, never the values.
    let seed_file = a_creds.with_file_name("peel-a.xk");
    std::fs::write(&seed_file, peel_a_x.seed().unwrap()).unwrap();
    let agent = common::Reaped::new(
        std::process::Command::new(env!("CARGO_BIN_EXE_zester"))
            .args(["peel", "run", "--server", &t.url(), "--creds"])
            .arg(&a_creds)
            .arg("--ca")
            .arg(t.home.ca_cert())
            .arg("--xkey")
            .arg(&seed_file)
            .args(["--from", &master_xkey])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let master = t.master().await;
    let mut keys = serde_json::Value::Null;
    for _ in 0..60 {
        if let Ok(Ok(reply)) = tokio::time::timeout(
            Duration::from_secs(2),
            master
                .nats
                .request("zester.cmd.peel-a", "settings.keys".into()),
        )
        .await
        {
            keys = serde_json::from_slice(&reply.payload).unwrap();
            if keys["keys"].as_array().is_some_and(|k| !k.is_empty()) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(keys["keys"], serde_json::json!(["db", "region"]), "{keys}");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let out = agent.output();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("settings loaded"), "{log}");
    assert!(!log.contains("s3cret"), "a secret reached the log");
    t.stop().await;
}
