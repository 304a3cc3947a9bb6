//! zester from the rest of the NATS ecosystem: a real nats.js client (@nats-io/transport-node)
//! through the callout, as a peel and as the master talking to a `zester peel run` agent (the
//! latter with nats.py too), and `zester context export` writing a context the nats CLI can
//! load.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::appliance;
use serde_json::Value;

/// Runs `tests/interop/nats_js_peel.mjs` with `args` and returns its JSON report.
fn nats_js(url: &str, creds: &Path, ca: &Path, args: &[&str]) -> Value {
    common::node_compat_dir(); // panics with the setup hint when node_modules is missing
    let out = Command::new("node")
        .arg(common::repo_root().join("tests/interop/nats_js_peel.mjs"))
        .args(["--url", url])
        .arg("--creds")
        .arg(creds)
        .arg("--ca")
        .arg(ca)
        .args(args)
        .output()
        .expect("run node tests/interop/nats_js_peel.mjs");
    assert!(
        out.status.success(),
        "nats_js_peel.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "nats_js_peel.mjs printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_js_peel_keeps_to_its_lane() {
    let t = appliance::start("").await;
    let peel_a = t.peel("peel-a").await;
    t.peel("peel-b").await;
    let (url, ca) = (t.url(), t.home.ca_cert());
    let report = tokio::task::spawn_blocking(move || {
        nats_js(
            &url,
            &peel_a,
            &ca,
            &[
                "--id",
                "peel-a",
                "--own",
                "zester.event.peel-a.js",
                "--foreign",
                "zester.event.peel-b.js",
                "--foreign-sub",
                "zester.cmd.peel-b",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(report["connected"], true, "{report}");
    assert_eq!(report["own_publish_ok"], true, "{report}");
    assert_eq!(report["foreign_publish_violation"], true, "{report}");
    assert_eq!(report["foreign_subscribe_violation"], true, "{report}");
    assert_eq!(report["error"], Value::Null, "{report}");
    t.wait_audit("nats.js peel-a admitted", |r| {
        r["decision"] == "allow" && r["peel_id"] == "peel-a"
    })
    .await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_js_master_commands_a_peel_agent() {
    let t = appliance::start("").await;
    let peel_b = t.peel("peel-b").await;
    let mut agent = t.peel_run(&peel_b);
    let (url, ca, master) = (t.url(), t.home.ca_cert(), t.home.service_creds("master"));
    let report = tokio::task::spawn_blocking(move || {
        // No responders until the agent has subscribed: ask again until it answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let report = nats_js(
                &url,
                &master,
                &ca,
                &[
                    "--id",
                    "master",
                    "--inbox-prefix",
                    "_INBOX._master",
                    "--request",
                    "zester.cmd.peel-b",
                ],
            );
            if report["request_reply"] != Value::Null || Instant::now() > deadline {
                return report;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    })
    .await
    .unwrap();

    // The same request from nats.py with the master creds (the agent is up by now). The
    // master may publish anywhere, so the script's own/foreign publishes are just traffic.
    let (url, ca, master) = (t.url(), t.home.ca_cert(), t.home.service_creds("master"));
    let py = tokio::task::spawn_blocking(move || {
        Command::new(common::python())
            .arg(common::repo_root().join("tests/interop/nats_py_peel.py"))
            .args(["--url", &url])
            .arg("--creds")
            .arg(&master)
            .arg("--ca")
            .arg(&ca)
            .args(["--own", "zester.event.master.py"])
            .args(["--foreign", "zester.event.master.py2"])
            .args(["--inbox-prefix", "_INBOX._master"])
            .args(["--name", "zester-master-py"])
            .args(["--request", "zester.cmd.peel-b"])
            .output()
            .expect("run nats_py_peel.py")
    })
    .await
    .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(report["connected"], true, "{report}");
    assert_eq!(report["request_reply"], "true", "{report}");
    assert_eq!(report["error"], Value::Null, "{report}");
    let py: Value = serde_json::from_slice(&py.stdout).unwrap_or_else(|e| {
        panic!(
            "nats_py_peel.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&py.stderr)
        )
    });
    assert_eq!(py["connected"], true, "{py}");
    assert_eq!(py["request_reply"], "true", "{py}");
    assert_eq!(py["error"], Value::Null, "{py}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_export_names_the_running_appliance() {
    let t = appliance::start("").await;
    let config = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zester"))
        .arg("--home")
        .arg(t.home.root())
        .args(["context", "export", "--name", "t1", "--json"])
        .env("XDG_CONFIG_HOME", config.path())
        .output()
        .expect("run zester context export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("--json output");
    let path = config.path().join("nats/context/t1.json");
    assert_eq!(printed["path"], path.display().to_string());
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc["url"], t.url(), "{doc}");
    let absolute = |p: &Path| std::path::absolute(p).unwrap().display().to_string();
    assert_eq!(doc["creds"], absolute(&t.home.service_creds("admin")));
    assert_eq!(doc["ca"], absolute(&t.home.ca_cert()));
    assert_eq!(doc["inbox_prefix"], "_INBOX._admin");

    // The context's settings work for nats.js (admin creds, CA, inbox prefix): the status
    // request is answered; on the client's default inbox the admin may not hear the reply.
    let (url, creds, ca) = (
        doc["url"].as_str().unwrap().to_string(),
        doc["creds"].as_str().unwrap().to_string(),
        doc["ca"].as_str().unwrap().to_string(),
    );
    let inbox = doc["inbox_prefix"].as_str().unwrap().to_string();
    let (right, wrong) = tokio::task::spawn_blocking(move || {
        let run = |extra: &[&str]| {
            let mut args = vec!["--id", "admin", "--request", "zester.admin.status"];
            args.extend_from_slice(extra);
            nats_js(&url, Path::new(&creds), Path::new(&ca), &args)
        };
        (run(&["--inbox-prefix", &inbox]), run(&[]))
    })
    .await
    .unwrap();
    assert_eq!(right["error"], Value::Null, "{right}");
    let status: Value = serde_json::from_str(right["request_reply"].as_str().unwrap()).unwrap();
    assert!(status.is_object(), "{status}");
    assert_eq!(wrong["request_reply"], Value::Null, "{wrong}");
    assert!(
        wrong["error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("permission")),
        "{wrong}"
    );

    let nats_cli = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats"))
            .find(|p| p.is_file())
    });
    match nats_cli {
        Some(nats) => {
            let (nats, xdg) = (nats, config.path().to_path_buf());
            let ping = tokio::task::spawn_blocking(move || {
                Command::new(nats)
                    .args(["--context", "t1", "rtt"])
                    .env("XDG_CONFIG_HOME", xdg)
                    .output()
                    .expect("run nats")
            })
            .await
            .unwrap();
            assert!(
                ping.status.success(),
                "nats --context t1 rtt: {}{}",
                String::from_utf8_lossy(&ping.stdout),
                String::from_utf8_lossy(&ping.stderr)
            );
        }
        None => eprintln!("note: no `nats` CLI on PATH; skipped `nats --context t1 rtt`"),
    }
    t.stop().await;
}
