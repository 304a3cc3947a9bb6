//! Enrolment end to end against a running appliance: enrol → pending → accept → the peel
//! writes its own creds and connects; `--wait`; the reject path; squatting, malformed ids, a
//! pending flood and an enrolment connection flood are refused with their reasons.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::appliance::{self, TestAppliance};
use serde_json::Value;

fn enrol_command(t: &TestAppliance, id: &str, dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zester"));
    command
        .args(["peel", "enrol", "--server", &t.url(), "--id", id, "--ca"])
        .arg(t.home.ca_cert())
        .arg("--dir")
        .arg(dir)
        .args(extra);
    command
}

fn enrol(t: &TestAppliance, id: &str, dir: &Path) -> Output {
    enrol_command(t, id, dir, &[])
        .output()
        .expect("run zester peel enrol")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn keys(t: &TestAppliance, state: &str) -> Vec<Value> {
    let out = t.zester(&["key", "list", "--state", state, "--json"]);
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", text(&out)))
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_accept_and_connect_with_creds_the_peel_wrote_itself() {
    let t = appliance::start("").await;
    let peel_dir = tempfile::tempdir().unwrap();

    let out = enrol(&t, "web-01", peel_dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pending"), "{}", text(&out));
    let pending = keys(&t, "pending");
    assert_eq!(pending.len(), 1, "{pending:?}");
    let fingerprint = pending[0]["fingerprint"].as_str().unwrap().to_string();
    assert!(!peel_dir.path().join("web-01.creds").exists());

    let out = t.zester(&["key", "accept", "web-01", "--fingerprint", &fingerprint]);
    assert!(out.status.success(), "{}", text(&out));
    let out = enrol(&t, "web-01", peel_dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let creds = peel_dir.path().join("web-01.creds");
    assert!(creds.exists(), "{}", text(&out));

    // The creds hold the peel's own key: the same seed it made, which never left its directory.
    let parsed = zester::home::read_creds(&creds).unwrap();
    let seed = std::fs::read_to_string(peel_dir.path().join("web-01.nk")).unwrap();
    assert_eq!(parsed.key().seed().unwrap(), seed.trim());
    let home_files = walk(t.home.root());
    assert!(
        !home_files.iter().any(|text| text.contains(seed.trim())),
        "the peel's seed reached the master's home"
    );
    let peel = t
        .connect(&creds, "_INBOX.web-01")
        .await
        .expect("the enrolled peel connects");
    common::sync_peel(&peel.nats, "web-01").await;
    t.wait_audit("enrolled peel admitted", |r| {
        r["peel_id"] == "web-01" && r["role"] == "peel"
    })
    .await;

    // `zester peel run` with those creds answers the master's test.ping, and stops on SIGTERM.
    let mut agent = t.peel_run(&creds);
    let master = t.master().await;
    assert!(
        appliance::ping(&master.nats, "web-01", Duration::from_secs(15)).await,
        "the enrolled peel's agent answers test.ping"
    );
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "peel run did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "peel run exited with {status}");

    // Squatting: another key asking for the same id is refused.
    let thief_dir = tempfile::tempdir().unwrap();
    let out = enrol(&t, "web-01", thief_dir.path());
    assert!(!out.status.success());
    assert!(text(&out).contains("already bound"), "{}", text(&out));
    t.wait_audit("squatting", |r| {
        r["code"] == "enrol_id_taken" && r["peel_id"] == "web-01"
    })
    .await;
    // Malformed and reserved ids are refused before anything is sent.
    for bad in ["a.b", "_master", "*"] {
        let out = enrol(&t, bad, thief_dir.path());
        assert!(!out.status.success(), "{bad} accepted");
    }
    t.stop().await;
}

/// Every file under `dir`, as text.
fn walk(dir: &Path) -> Vec<String> {
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            texts.extend(walk(&path));
        } else if let Ok(text) = std::fs::read(&path) {
            texts.push(String::from_utf8_lossy(&text).into_owned());
        }
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_then_accept_and_the_reject_path() {
    let t = appliance::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let mut waiting = enrol_command(&t, "db-01", dir.path(), &["--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while keys(&t, "pending").is_empty() {
        assert!(Instant::now() < deadline, "no pending key appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(t
        .zester(&["key", "accept", "--all-pending"])
        .status
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = waiting.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "enrol --wait did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success());
    assert!(dir.path().join("db-01.creds").exists());

    let other = tempfile::tempdir().unwrap();
    assert!(enrol(&t, "db-02", other.path()).status.success());
    assert!(t.zester(&["key", "reject", "db-02"]).status.success());
    // A rejected key stays out: it cannot even open an enrolling session again.
    let out = enrol(&t, "db-02", other.path());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rejected or revoked"), "{}", text(&out));
    t.wait_audit("rejected key refused", |r| r["code"] == "key_not_accepted")
        .await;
    assert!(!other.path().join("db-02.creds").exists());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_refused() {
    let t = appliance::start("[keys]\nmax_pending = 2\nenrol_rate = 4\n").await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for (i, dir) in dirs.iter().enumerate().take(2) {
        let out = enrol(&t, &format!("flood-{i}"), dir.path());
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = enrol(&t, "flood-2", dirs[2].path());
    assert!(!out.status.success());
    assert!(
        text(&out).contains("too many keys are waiting"),
        "{}",
        text(&out)
    );
    // Three enrolment connections so far from 127.0.0.1; the fourth is allowed, the fifth not.
    let _ = enrol(&t, "flood-3", dirs[2].path());
    let out = enrol(&t, "flood-4", dirs[2].path());
    assert!(!out.status.success(), "{}", text(&out));
    t.wait_audit("rate limit", |r| r["code"] == "enrol_rate_limited")
        .await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_trusted_accepts_matching_ids_only() {
    let t = appliance::start("[keys]\naccept = \"auto-trusted\"\ntrusted = [\"lab-*\"]\n").await;
    let dir = tempfile::tempdir().unwrap();
    let out = enrol(&t, "lab-01", dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("lab-01.creds").exists(), "{}", text(&out));
    let out = enrol(&t, "prod-01", dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dir.path().join("prod-01.creds").exists());
    assert_eq!(keys(&t, "pending").len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_alone_is_enough_and_a_wrong_pin_is_refused() {
    let t = appliance::start("[keys]\naccept = \"auto-all\"\n").await;
    let pem = std::fs::read_to_string(t.home.ca_cert()).unwrap();
    let pin = zester::pki::spki_pin_from_cert_pem(&pem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |pin: &str, ca: Option<&Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zester"));
        command
            .args([
                "peel",
                "enrol",
                "--server",
                &t.url(),
                "--id",
                "pinned",
                "--pin",
                pin,
            ])
            .arg("--dir")
            .arg(dir.path());
        if let Some(ca) = ca {
            command.arg("--ca").arg(ca);
        }
        command.output().unwrap()
    };
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = run(&wrong, None);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not the master you pinned"),
        "{}",
        text(&out)
    );
    let out = run(&wrong, Some(&t.home.ca_cert()));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("do not trust this CA file"),
        "{}",
        text(&out)
    );
    let out = run(&pin, None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("pinned.creds").exists());
    t.stop().await;
}
