//! Rotating the ZESTER account signing key: peels keep working through the rotation, new
//! creds come from the new key, and once the rotation is finished the old key's JWTs are out.

mod common;

use std::process::Output;

use common::appliance;
use zester::home::Home;

fn zester(home: &Home, args: &[&str]) -> Output {
    common::zester(home.root(), args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peels_survive_a_signing_key_rotation_until_it_is_finished() {
    let t = appliance::start("").await;
    let old_peel = t.peel("web-01").await;
    let old_signer = t.home.load_authority().unwrap().zester_signer.public_key();

    // Not while the appliance runs: it signs with the key it loaded.
    let out = zester(&t.home, &["creds", "rotate", "signing-key"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));

    let (home, dir) = t.stop_keeping_home().await;
    let out = zester(&home, &["creds", "rotate", "signing-key", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_signer = home.load_authority().unwrap().zester_signer.public_key();
    assert_ne!(new_signer, old_signer);

    let t = appliance::start_on(home, dir).await;
    let peel = t
        .connect(&old_peel, "_INBOX.web-01")
        .await
        .expect("a peel with creds from the old key still connects");
    common::sync_peel(&peel.nats, "web-01").await;
    let new_peel = t.peel("web-02").await;
    let issued = zester::home::read_creds(&new_peel).unwrap();
    assert_eq!(issued.jwt().issuer(), new_signer);
    t.connect(&new_peel, "_INBOX.web-02")
        .await
        .expect("new creds connect");
    drop(peel);

    let (home, dir) = t.stop_keeping_home().await;
    let out = zester(&home, &["creds", "rotate", "signing-key", "--finish"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = appliance::start_on(home, dir).await;
    let options = async_nats::ConnectOptions::with_credentials_file(&old_peel)
        .await
        .unwrap();
    t.assert_refused(options, "creds signed by the retired key")
        .await;
    t.connect(&new_peel, "_INBOX.web-02")
        .await
        .expect("creds from the new key still connect");
    t.stop().await;
}
