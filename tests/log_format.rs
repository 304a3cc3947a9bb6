//! Structured logs (issue 19, part 2): with `--log-format json` (before or after the
//! subcommand, or `ZESTER_LOG_FORMAT=json`), every line `zester up` writes is one JSON object,
//! nats-server's forwarded lines included with their level and pid; an error is one too.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `zester up` with `args`/`env` on a fresh home until it is ready, stops it, and returns
/// the lines it wrote to stderr.
fn up_log(before: &[&str], after: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let log = dir.path().join("up.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zester"))
        .arg("--home")
        .arg(&home)
        .args(before)
        .args(["up", "--listen", "127.0.0.1:0", "--monitor", "127.0.0.1:0"])
        .args(after)
        .envs(env.iter().copied())
        .env_remove("ZESTER_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !home.join("nats/runtime.json").exists() {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn all_json(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn every_line_is_one_json_object_with_json_logs() {
    for (before, after, env) in [
        (&["--log-format", "json"][..], &[][..], &[][..]),
        (&[][..], &["--log-format", "json"][..], &[][..]),
        (&[][..], &[][..], &[("ZESTER_LOG_FORMAT", "json")][..]),
    ] {
        let lines = up_log(before, after, env);
        let objects = all_json(&lines);
        assert!(
            objects
                .iter()
                .any(|o| o["message"] == "zester is ready" && o["level"] == "INFO"),
            "{lines:#?}"
        );
        let forwarded = objects
            .iter()
            .find(|o| o["target"] == "nats-server")
            .unwrap_or_else(|| panic!("no forwarded nats-server line: {lines:#?}"));
        assert!(forwarded["pid"].as_u64().is_some(), "{forwarded}");
        assert!(forwarded["level"].is_string(), "{forwarded}");
    }
    // Text stays text.
    let text = up_log(&[], &[], &[]);
    assert!(text.iter().any(|l| l.contains("zester is ready")));
    assert!(serde_json::from_str::<Value>(&text[0]).is_err());
}

#[test]
fn an_error_is_a_json_object_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zester"))
        .arg("--home")
        .arg(dir.path().join("nothing-here"))
        .args([
            "--log-format",
            "json",
            "creds",
            "inspect",
            "/nonexistent.creds",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let objects = all_json(&stderr.lines().map(str::to_string).collect::<Vec<_>>());
    assert!(objects.iter().any(|o| o["level"] == "ERROR"), "{stderr}");
}
