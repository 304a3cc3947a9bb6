//! The `zester` binary as users and scripts run it: init, creds issue, creds inspect, their
//! `--json` output, exit codes, file modes, and clear errors for bad input.

mod common;

use std::fs;
use std::process::{Command, Output};

use common::{mode, zester};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

/// No seed (S + role letter + 56 base32 characters) may ever be printed.
fn assert_no_seed(text: &str) {
    let bytes = text.as_bytes();
    for (i, w) in bytes.windows(2).enumerate() {
        if w[0] == b'S' && b"UAOXN".contains(&w[1]) {
            let rest = &bytes[i + 2..];
            let run = rest
                .iter()
                .take_while(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(b))
                .count();
            assert!(run < 56, "a seed was printed: {text}");
        }
    }
}

#[test]
fn init_issue_inspect_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");

    let out = zester(&home, &["init", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_seed(&stdout(&out));
    let init = json(&out);
    assert!(init["operator"].as_str().unwrap().starts_with('O'));
    assert!(init["ca_pin"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("auth/operator.nk")), 0o600);

    let again = zester(&home, &["init"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));

    let out = zester(
        &home,
        &["creds", "issue", "web-01", "--expiry", "30d", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_seed(&stdout(&out));
    let issued = json(&out);
    let file = home.join("peels/web-01.creds");
    assert_eq!(issued["file"], file.to_str().unwrap());
    assert_eq!(mode(&file), 0o600);

    let out = zester(
        &home,
        &["creds", "inspect", file.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_seed(&stdout(&out));
    let inspected = json(&out);
    assert_eq!(inspected["name"], "web-01");
    assert_eq!(inspected["user_key"], issued["user_key"]);
    assert_eq!(inspected["chain"]["verified"], true);
    assert_eq!(inspected["chain"]["account"], init["zester_account"]);
    assert_eq!(inspected["expired"], false);
    let expires = inspected["expires_at"].as_i64().unwrap();
    let issued_at = inspected["issued_at"].as_i64().unwrap();
    assert_eq!(expires - issued_at, 30 * 86_400);
    assert_eq!(
        inspected["permissions"]["pub"]["allow"][0],
        "zester.event.web-01.>"
    );

    let human = zester(&home, &["creds", "inspect", file.to_str().unwrap()]);
    assert!(
        stdout(&human).contains("chain       valid"),
        "{}",
        stdout(&human)
    );
    assert_no_seed(&stdout(&human));
}

#[test]
fn creds_from_another_home_do_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    for home in [&ours, &theirs] {
        assert!(zester(home, &["init"]).status.success());
    }
    assert!(zester(&theirs, &["creds", "issue", "spy"]).status.success());
    let spy = theirs.join("peels/spy.creds");
    let out = zester(
        &ours,
        &["creds", "inspect", spy.to_str().unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    assert_eq!(report["chain"]["verified"], false);
    assert!(
        report["chain"]["reason"]
            .as_str()
            .unwrap()
            .contains("is checked against account"),
        "{report}"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");

    let out = zester(&home, &["creds", "issue", "web-01"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("zester init"), "{}", stderr(&out));

    assert!(zester(&home, &["init"]).status.success());
    for (id, expected) in [
        ("a.b", "'.'"),
        ("_master", "reserved"),
        ("*", "'*'"),
        ("", "empty"),
    ] {
        let out = zester(&home, &["creds", "issue", id]);
        assert_eq!(out.status.code(), Some(2), "{id:?} was accepted");
        assert!(stderr(&out).contains(expected), "{id:?}: {}", stderr(&out));
    }
    let out = zester(&home, &["creds", "issue", "web-01", "--expiry", "soon"]);
    assert!(stderr(&out).contains("--expiry"), "{}", stderr(&out));
    assert_eq!(fs::read_dir(home.join("peels")).unwrap().count(), 0);

    assert!(zester(&home, &["creds", "issue", "web-01"])
        .status
        .success());
    let file = home.join("peels/web-01.creds");
    let before = fs::read(&file).unwrap();
    let out = zester(&home, &["creds", "issue", "web-01"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--force"));
    assert_eq!(
        fs::read(&file).unwrap(),
        before,
        "existing creds were overwritten"
    );

    let text = String::from_utf8(before).unwrap();
    let broken = dir.path().join("broken.creds");
    fs::write(
        &broken,
        text.replace("-----BEGIN USER NKEY SEED-----", "")
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let out = zester(&home, &["creds", "inspect", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(broken.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("no nkey seed"), "{}", stderr(&out));
    assert_no_seed(&stderr(&out));

    let missing = zester(&home, &["creds", "inspect", "/nonexistent/x.creds"]);
    assert!(stderr(&missing).contains("/nonexistent/x.creds"));
}

#[test]
fn help_teaches() {
    let out = Command::new(env!("CARGO_BIN_EXE_zester"))
        .args(["creds", "issue", "--help"])
        .output()
        .unwrap();
    let text = stdout(&out);
    for needle in ["--expiry", "--out", "30d", "peel id"] {
        assert!(text.contains(needle), "help lacks {needle}: {text}");
    }
}
