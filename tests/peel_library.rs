//! The peel side as a library (`zester::peel::Peel`): an application that runs as a peel finds
//! everything from its creds and profile, connects with the peel's rights, answers a command,
//! and opens its settings and secrets — as `examples/peel.rs` does.

mod common;

use std::time::Duration;

use common::up::Up;
use futures_util::StreamExt;

/// Answers `true` to every command on the peel's subject (only into the inboxes a peel may
/// answer), as `examples/peel.rs` does.
async fn answer_pings(
    client: &async_nats::Client,
    peel: &zester::peel::Peel,
) -> tokio::task::JoinHandle<()> {
    let mut commands = client.subscribe(peel.command_subject()).await.unwrap();
    client.flush().await.unwrap();
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(command) = commands.next().await {
            if let Some(reply) = command.reply.filter(|r| zester::peel::Peel::may_answer(r)) {
                let _ = client.publish(reply, "true".into()).await;
                let _ = client.flush().await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_runs_as_a_peel_with_its_creds_alone() {
    let up = Up::start();
    let out = up.zester(&["creds", "issue", "app-01"]);
    assert!(out.status.success(), "{out:?}");
    let creds = up.home().join("peels/app-01.creds");
    let peel = zester::peel::Peel::from_creds(&creds).expect("the profile is beside the creds");
    assert_eq!(peel.id().as_str(), "app-01");
    assert_eq!(peel.server(), up.runtime()["url"].as_str().unwrap());

    let client = peel.connect().await.expect("connects as the peel");
    let answering = answer_pings(&client, &peel).await;
    let out = up.zester(&["cmd", "app-01", "test.ping", "--timeout", "10s"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("app-01  true"),
        "{out:?}"
    );
    assert!(!zester::peel::Peel::may_answer("$KV.zester-keys.app-01"));

    // Its settings, with a secret sealed to it, opened in memory.
    let sealed = up.zester(&["secret", "encrypt", "--peel", "app-01", "--value", "s3cret"]);
    let sealed = String::from_utf8_lossy(&sealed.stdout).trim().to_string();
    assert_eq!(peel.open_secret(&sealed).unwrap(), b"s3cret");
    let document = up.home().join("doc.json");
    std::fs::write(
        &document,
        format!(r#"{{"db": {{"password": "{sealed}"}}}}"#),
    )
    .unwrap();
    let set = up.zester(&["settings", "set", "app-01", document.to_str().unwrap()]);
    assert!(set.status.success(), "{set:?}");
    let settings = tokio::time::timeout(Duration::from_secs(10), peel.settings(&client))
        .await
        .unwrap()
        .unwrap()
        .expect("app-01 has settings");
    assert_eq!(settings["db"]["password"], "s3cret");
    answering.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_peel_keeps_its_identity_renewed() {
    let up = Up::start();
    let out = up.zester(&["creds", "issue", "app-02", "--expiry", "6s"]);
    assert!(out.status.success(), "{out:?}");
    let creds = up.home().join("peels/app-02.creds");
    let exp_of = || zester::home::read_creds(&creds).unwrap().jwt().claims().exp;
    let first = exp_of();
    let peel = zester::peel::Peel::from_creds(&creds).unwrap();
    let client = peel.connect().await.expect("connects as the peel");
    let renewal = peel.keep_renewed(&client);
    let answering = answer_pings(&client, &peel).await;
    // Renewed at 2/3 of its 6 s, for the appliance's `peels.expiry` (30 d); once the first JWT
    // has expired, the peel still answers (it reconnected with the renewed one).
    common::wait_until("a renewal", Duration::from_secs(30), || exp_of() > first).await;
    common::wait_until("the first JWT expires", Duration::from_secs(30), || {
        zester::home::now_unix() > first
    })
    .await;
    let out = up.zester(&["cmd", "app-02", "test.ping", "--timeout", "10s"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("app-02  true"),
        "{out:?}"
    );
    renewal.abort();
    answering.abort();
}
