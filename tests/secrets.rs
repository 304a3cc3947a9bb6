//! Secrets (DESIGN §7) across implementations and through the CLI: payloads zester seals open
//! with the official @nats-io/nkeys curve keys (`scripts/compat/xkeys.mjs`) and theirs open
//! here; `zester secret encrypt|decrypt|rewrap` round trips, refuses the wrong peel and
//! tampered envelopes without printing plaintext, and finds the peel's key through the
//! running appliance.
//!
//! PyPI nkeys (0.2.1, the pinned version) has no curve keys (no xkey prefix, no seal/open), so
//! there is no Python leg; nkeys in Go is covered through the Rust nkeys crate, whose xkeys
//! module ports it (checked in the unit tests of `zester::secrets`).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use data_encoding::BASE64;
use nkeys::XKey;
use zester::home::{now_unix, Home};
use zester::secrets::{self, Envelope};

/// Runs `node xkeys.mjs ARGS` with `stdin`; returns (success, stdout trimmed).
fn node_xkeys(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("node")
        .arg("xkeys.mjs")
        .args(args)
        .current_dir(common::node_compat_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node xkeys.mjs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

fn seed(key: &XKey) -> String {
    key.seed().unwrap()
}

#[test]
fn nkeys_js_opens_what_zester_seals() {
    let master = XKey::new();
    let peel = XKey::new();
    for plaintext in [&b""[..], b"db password", &[0xA5; 4096][..]] {
        let envelope = secrets::seal(plaintext, &master, &peel.public_key()).unwrap();
        let payload = secrets::parse(&envelope).unwrap().payload;
        let (ok, opened) = node_xkeys(
            &["open", &seed(&peel), &master.public_key()],
            &BASE64.encode(&payload),
        );
        assert!(ok, "nkeys.js did not open zester's payload");
        assert_eq!(BASE64.decode(opened.as_bytes()).unwrap(), plaintext);
    }
    // nkeys.js refuses it with another recipient seed, as we do.
    let envelope = secrets::seal(b"x", &master, &peel.public_key()).unwrap();
    let payload = secrets::parse(&envelope).unwrap().payload;
    let (ok, _) = node_xkeys(
        &["open", &seed(&XKey::new()), &master.public_key()],
        &BASE64.encode(&payload),
    );
    assert!(!ok);
}

#[test]
fn zester_opens_what_nkeys_js_seals() {
    let master = XKey::new();
    let peel = XKey::new();
    let plaintext = b"sealed by nkeys.js";
    let (ok, payload) = node_xkeys(
        &["seal", &seed(&master), &peel.public_key()],
        &BASE64.encode(plaintext),
    );
    assert!(ok, "nkeys.js seal failed");
    let payload = BASE64.decode(payload.as_bytes()).unwrap();
    assert_eq!(&payload[..4], b"xkv1");
    assert_eq!(
        secrets::open_payload(&payload, &peel, &master.public_key()).unwrap(),
        plaintext
    );
    // Wrapped in an envelope, it opens through the full path.
    let envelope = Envelope {
        recipient: peel.public_key(),
        payload,
    }
    .to_text();
    assert_eq!(
        secrets::open(&envelope, &peel, &master.public_key()).unwrap(),
        plaintext
    );
}

#[test]
fn keys_made_by_nkeys_js_work_here() {
    let (ok, made) = node_xkeys(&["new"], "");
    assert!(ok);
    let made: serde_json::Value = serde_json::from_str(&made).unwrap();
    let theirs = XKey::from_seed(made["seed"].as_str().unwrap()).unwrap();
    assert_eq!(theirs.public_key(), made["public"].as_str().unwrap());
    let master = XKey::new();
    let envelope = secrets::seal(b"ok", &master, &theirs.public_key()).unwrap();
    assert_eq!(
        secrets::open(&envelope, &theirs, &master.public_key()).unwrap(),
        b"ok"
    );
}

/// Runs `zester --home HOME ARGS` with `stdin`.
/// Runs zester with `stdin` fed to it.
fn zester(home: &Path, args: &[&str], stdin: &[u8]) -> Output {
    common::zester_with(home, args, &[], Some(stdin))
}

fn write_seed(path: &Path, key: &XKey) {
    std::fs::write(path, format!("{}\n", seed(key))).unwrap();
}

#[test]
fn cli_encrypt_decrypt_wrong_peel_tampered_rewrap() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("home"));
    home.init(false, "localhost", now_unix()).unwrap();
    let master = home.load_authority().unwrap().master_xkey.public_key();
    let (a, b) = (XKey::new(), XKey::new());
    let (a_seed, b_seed) = (dir.path().join("a.xk"), dir.path().join("b.xk"));
    write_seed(&a_seed, &a);
    write_seed(&b_seed, &b);
    let secret = "hunter2-Ünïcode";

    // From stdin, byte for byte.
    let out = zester(
        home.root(),
        &["secret", "encrypt", "--xkey", &a.public_key()],
        secret.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envelope = String::from_utf8(out.stdout).unwrap();
    assert!(envelope.starts_with(&format!("ENC[{},", a.public_key())));
    assert!(!envelope.contains(secret));

    let decrypt = |seed: &Path, input: &[u8]| {
        zester(
            home.root(),
            &[
                "secret",
                "decrypt",
                "--seed",
                seed.to_str().unwrap(),
                "--from",
                &master,
            ],
            input,
        )
    };
    let out = decrypt(&a_seed, envelope.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, secret.as_bytes());

    // --value gives the same result.
    let out = zester(
        home.root(),
        &[
            "secret",
            "encrypt",
            "--xkey",
            &a.public_key(),
            "--value",
            secret,
        ],
        b"",
    );
    assert!(out.status.success());
    assert_eq!(decrypt(&a_seed, &out.stdout).stdout, secret.as_bytes());

    // Another peel's seed: the wrong-peel error, no plaintext anywhere.
    let out = decrypt(&b_seed, envelope.as_bytes());
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong peel"), "{stderr}");
    assert!(stderr.contains(&a.public_key()), "{stderr}");
    assert!(!stderr.contains(secret));

    // A changed byte in the ciphertext: refused as tampered.
    let mut parsed = secrets::parse(&envelope).unwrap();
    let last = parsed.payload.len() - 1;
    parsed.payload[last] ^= 0x40;
    let out = decrypt(&a_seed, parsed.to_text().as_bytes());
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tampered"), "{stderr}");

    // Truncated: refused before any decryption.
    let out = decrypt(&a_seed, &envelope.as_bytes()[..envelope.len() / 2]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a secret envelope"));

    // Rewrap on the master: the rotated key opens it, the old one no longer.
    let out = zester(
        home.root(),
        &["secret", "rewrap", "--xkey", &b.public_key()],
        envelope.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(decrypt(&b_seed, &out.stdout).stdout, secret.as_bytes());
    assert!(!decrypt(&a_seed, &out.stdout).status.success());

    // Without a running appliance, --peel says to use --xkey.
    let out = zester(
        home.root(),
        &["secret", "encrypt", "--peel", "web-01", "--value", "x"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--xkey"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_encrypt_for_a_peel_id_through_the_appliance_and_decrypt_with_its_creds() {
    let test = common::appliance::start("").await;
    let creds = test.peel("web-01").await;
    let peel = XKey::new();
    // The curve seed beside the creds, as `zester peel enrol` leaves it.
    write_seed(&creds.with_file_name("web-01.xk"), &peel);
    let id = zester::identity::peel_id::PeelId::parse("web-01").unwrap();
    let keys = test.appliance.keys();
    let (mut record, revision) = keys.get(&id).await.unwrap().expect("record");
    record.xkey = Some(peel.public_key());
    let revision = keys.update(&id, revision, &record).await.expect("set xkey");
    keys.wait_for_revision(revision, std::time::Duration::from_secs(5))
        .await
        .expect("cache caught up");
    let master = test.home.load_authority().unwrap().master_xkey.public_key();

    let home = test.home.root().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        zester(
            &home,
            &["secret", "encrypt", "--peel", "web-01", "--value", "s3cret"],
            b"",
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let envelope = String::from_utf8(out.stdout).unwrap();
    assert!(envelope.starts_with(&format!("ENC[{},", peel.public_key())));

    let home = test.home.root().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        zester(
            &home,
            &[
                "secret",
                "decrypt",
                "--creds",
                creds.to_str().unwrap(),
                "--from",
                &master,
            ],
            envelope.as_bytes(),
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"s3cret");
    test.stop().await;
}
