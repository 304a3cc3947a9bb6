//! The Prometheus endpoint of a real `zester up` process: known traffic (peels let in, clients
//! refused for known reasons) is driven through it, then `/metrics` is scraped over HTTP and
//! parsed with the Prometheus project's own Python parsers (`prometheus_client`, in `.venv`),
//! and the counts must be exact. Also: no listener unless asked for, `--metrics` wins over
//! `[metrics] listen`, and other paths and methods are refused.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::ConnectOptions;
use common::up::Up;
use serde_json::Value;
use zester::home::{self, now_unix, Home};
use zester::identity::peel_id::PeelId;

/// One HTTP exchange: the status line, the headers (lower-case names) and the body.
struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` to `addr` (HOST:PORT) with `accept`, reads the whole answer.
fn http(addr: &str, method: &str, path: &str, accept: Option<&str>) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The samples of `text` as `prometheus_client` parses it (`format`: `text` or `openmetrics`).
fn parse(text: &str, format: &str) -> Vec<Value> {
    let mut child = Command::new(common::python())
        .arg(common::repo_root().join("tests/interop/parse_metrics.py"))
        .arg(format)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run parse_metrics.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse the {format} scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(Value::Array(samples)) => samples,
        other => panic!("parse_metrics.py printed {other:?}"),
    }
}

/// The value of the one sample named `name` whose labels include `labels` (0 if none).
fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Value> = samples
        .iter()
        .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches several samples: {matching:?}"
    );
    matching
        .first()
        .map_or(0.0, |s| s["value"].as_f64().unwrap())
}

/// The sum of every sample named `name` whose labels include `labels`.
fn sum(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
        .sum()
}

/// `HOST:PORT` of the metrics endpoint, from `runtime.json`.
fn metrics_addr(up: &Up) -> String {
    let url = up.runtime()["metrics_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no metrics_url in runtime.json: {}", up.runtime()))
        .to_string();
    url.trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string()
}

fn scrape(up: &Up) -> Vec<Value> {
    let answer = http(&metrics_addr(up), "GET", "/metrics", None);
    assert!(
        answer.status.starts_with("HTTP/1.1 200"),
        "{}",
        answer.status
    );
    parse(&answer.body, "text")
}

fn audit(home: &Path) -> Vec<Value> {
    std::fs::read_to_string(home.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn ok(out: std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// TLS to the appliance with the home's CA; no reconnecting, so one attempt is one decision.
fn options(options: ConnectOptions, ca: &Path) -> ConnectOptions {
    options
        .add_root_certificates(ca.to_path_buf())
        .require_tls(true)
        .max_reconnects(Some(0))
        .connection_timeout(Duration::from_secs(15))
}

/// Connects and makes one round trip, or says why it could not.
async fn attempt(url: &str, opts: ConnectOptions) -> Result<async_nats::Client, String> {
    let client = opts.connect(url).await.map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_gives_exact_counts_in_both_text_formats() {
    let mut up = Up::configured("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    up.launch();
    let home_dir = up.home();
    let ca = home_dir.join("pki/ca.pem");
    let url = up.runtime()["url"].as_str().unwrap().to_string();

    // n = 3 peels with accepted keys (`creds issue` journals them; the appliance imports).
    let peels = ["web-01", "web-02", "web-03"];
    for id in peels {
        ok(up.zester(&["creds", "issue", id]), "creds issue");
    }
    up.wait_for(
        Duration::from_secs(20),
        "3 accepted keys in zester_keys",
        || value(&scrape(&up), "zester_keys", &[("state", "accepted")]) == 3.0,
    );
    let mut clients = Vec::new();
    for id in peels {
        let creds = home_dir.join(format!("peels/{id}.creds"));
        let opts = ConnectOptions::with_credentials_file(&creds).await.unwrap();
        let opts = options(opts, &ca).custom_inbox_prefix(format!("_INBOX.{id}"));
        clients.push(
            attempt(&url, opts)
                .await
                .expect("an accepted peel connects"),
        );
    }
    // web-03 leaves, then its key is revoked: its next attempt is refused by nats-server
    // itself (the key is in the account's revocations), after its auth timeout.
    drop(clients.pop());
    ok(
        up.zester(&["key", "revoke", "web-03", "--reason", "metrics test"]),
        "key revoke",
    );

    // m = 5 refused, by known codes: 2 unknown keys (creds we signed, not in the key store),
    // 1 without credentials, 1 user/password, 1 revoked key.
    let authority = Home::at(&home_dir).load_authority().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for id in ["ghost-1", "ghost-2"] {
        let creds = authority
            .issue_peel(&PeelId::parse(id).unwrap(), now_unix(), 3600)
            .unwrap();
        let path = dir.path().join(format!("{id}.creds"));
        home::write_creds(&path, &creds).unwrap();
        let opts = ConnectOptions::with_credentials_file(&path).await.unwrap();
        attempt(&url, options(opts, &ca))
            .await
            .expect_err("an unknown key is refused");
    }
    attempt(&url, options(ConnectOptions::new(), &ca))
        .await
        .expect_err("no credentials are refused");
    let password = ConnectOptions::with_user_and_password("bob".into(), "secret".into());
    attempt(&url, options(password, &ca))
        .await
        .expect_err("user/password is refused");
    let revoked = ConnectOptions::with_credentials_file(&home_dir.join("peels/web-03.creds"))
        .await
        .unwrap();
    // Refused by the server after its auth timeout: async-nats may see the connection up
    // first and the violation after, so either outcome is a refusal as long as no session
    // follows (counted below).
    let _ = attempt(
        &url,
        options(revoked, &ca).custom_inbox_prefix("_INBOX.web-03"),
    )
    .await;

    // Every decision is counted before it is queued for the audit log, so once the log holds
    // them all the counters do too.
    let peel_lines = |a: &[Value]| {
        a.iter()
            .filter(|r| {
                (r["source"] == "callout" || r["source"] == "server")
                    && (r["role"] == "peel" || r["decision"] == "refuse")
            })
            .count()
    };
    up.wait_for(Duration::from_secs(30), "8 decisions in audit.log", || {
        peel_lines(&audit(&home_dir)) >= 8
    });
    let records = audit(&home_dir);
    assert_eq!(peel_lines(&records), 8, "{records:#?}");
    let web03 = home::read_creds(&home_dir.join("peels/web-03.creds"))
        .unwrap()
        .key()
        .public_key();
    let revoked_code = records
        .iter()
        .find(|r| r["decision"] == "refuse" && r["nkey"] == web03.as_str())
        .map(|r| (r["source"].clone(), r["code"].clone()));
    assert_eq!(
        revoked_code,
        Some(("server".into(), "revoked".into())),
        "{records:#?}"
    );

    let text = http(&metrics_addr(&up), "GET", "/metrics", None);
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let open = http(
        &metrics_addr(&up),
        "GET",
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    for (samples, format) in [
        (parse(&text.body, "text"), "text"),
        (parse(&open.body, "openmetrics"), "openmetrics"),
    ] {
        let decisions = "zester_auth_decisions_total";
        let decided = |labels: &[(&str, &str)]| sum(&samples, decisions, labels);
        assert_eq!(
            decided(&[("decision", "allow"), ("role", "peel")]),
            3.0,
            "{format}: n allowed peels"
        );
        for (source, code, count) in [
            ("callout", "key_unknown", 2.0),
            ("callout", "no_credentials", 1.0),
            ("callout", "password_not_accepted", 1.0),
            ("server", "revoked", 1.0),
        ] {
            assert_eq!(
                value(
                    &samples,
                    decisions,
                    &[("source", source), ("decision", "refuse"), ("code", code)]
                ),
                count,
                "{format}: {code}"
            );
        }
        assert_eq!(
            decided(&[("decision", "refuse")]),
            5.0,
            "{format}: m refused, nothing else"
        );
        // Every callout decision has its latency observed, and no other.
        assert_eq!(
            value(&samples, "zester_auth_decision_duration_seconds_count", &[]),
            decided(&[("source", "callout")]),
            "{format}"
        );
        assert_eq!(
            value(
                &samples,
                "zester_auth_decision_duration_seconds_bucket",
                &[("le", "+Inf")]
            ),
            decided(&[("source", "callout")]),
            "{format}"
        );
        assert_eq!(
            value(&samples, "zester_keys", &[("state", "accepted")]),
            2.0
        );
        assert_eq!(value(&samples, "zester_keys", &[("state", "revoked")]), 1.0);
        assert_eq!(value(&samples, "zester_keys", &[("state", "pending")]), 0.0);
        assert_eq!(
            value(&samples, "zester_nats_server_restarts_total", &[]),
            0.0
        );
        assert_eq!(
            value(&samples, "zester_callout_shed_requests_total", &[]),
            0.0
        );
        assert_eq!(
            value(&samples, "zester_audit_records_dropped_total", &[]),
            0.0
        );
        // Two peels still connected, besides zester's own store and service connections.
        assert!(value(&samples, "zester_sessions", &[]) >= 2.0, "{format}");
        let expires_in = "zester_credential_expires_in_seconds";
        for kind in ["peel", "service", "server_cert", "ca"] {
            assert!(
                value(&samples, expires_in, &[("kind", kind)]) > 0.0,
                "{format}: {kind} expiry"
            );
        }
        // The CA outlives the server certificate it signs.
        assert!(
            value(&samples, expires_in, &[("kind", "ca")])
                > value(&samples, expires_in, &[("kind", "server_cert")])
        );
        let types: Vec<(&str, &str)> = samples
            .iter()
            .map(|s| (s["name"].as_str().unwrap(), s["type"].as_str().unwrap()))
            .collect();
        for (name, kind) in [
            ("zester_auth_decisions_total", "counter"),
            ("zester_auth_decision_duration_seconds_count", "histogram"),
            ("zester_sessions", "gauge"),
            ("zester_nats_server_restarts_total", "counter"),
        ] {
            assert!(types.contains(&(name, kind)), "{format}: {name} {types:?}");
        }
        if format == "openmetrics" {
            let unit = samples
                .iter()
                .find(|s| s["name"] == expires_in)
                .map(|s| s["unit"].clone());
            assert_eq!(unit, Some("seconds".into()));
        }
    }
    drop(clients);
}

/// The TCP ports process `pid` listens on (from `/proc`: its socket inodes in LISTEN state).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().into_owned();
                    Some(
                        target
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode.
            if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                if let Some(port) = fields[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.push(port);
                }
            }
        }
    }
    ports
}

#[test]
fn off_by_default() {
    let mut up = Up::configured("");
    up.launch();
    assert!(
        up.runtime().get("metrics_url").is_none(),
        "{}",
        up.runtime()
    );
    let pid = up.child.as_ref().unwrap().id();
    // zester itself listens on nothing (the client and monitor ports are nats-server's).
    assert_eq!(listening_ports(pid), Vec::<u16>::new(), "{}", up.log());
}

#[test]
fn the_flag_wins_over_the_config_and_only_get_metrics_is_served() {
    let configured = common::free_port();
    let flagged = common::free_port();
    let mut up = Up::configured(&format!("[metrics]\nlisten = \"{configured}\"\n"));
    let flag = format!("127.0.0.1:{flagged}");
    up.launch_with(&["--metrics", &flag]);
    assert_eq!(metrics_addr(&up), flag);
    let pid = up.child.as_ref().unwrap().id();
    assert_eq!(listening_ports(pid), vec![flagged], "{}", up.log());
    assert!(
        TcpStream::connect(("127.0.0.1", configured)).is_err(),
        "the configured port {configured} listens although --metrics names another"
    );

    let got = http(&flag, "GET", "/metrics", None);
    assert!(got.status.starts_with("HTTP/1.1 200"), "{}", got.status);
    parse(&got.body, "text");
    let head = http(&flag, "HEAD", "/metrics", None);
    assert!(head.status.starts_with("HTTP/1.1 200"), "{}", head.status);
    assert!(head.body.is_empty());
    for (method, path, status) in [
        ("GET", "/", "404"),
        ("GET", "/metricsx", "404"),
        ("GET", "/status", "404"),
        ("POST", "/metrics", "405"),
        ("PUT", "/metrics", "405"),
    ] {
        let answer = http(&flag, method, path, None);
        assert!(
            answer.status.starts_with(&format!("HTTP/1.1 {status}")),
            "{method} {path}: {}",
            answer.status
        );
    }
    assert_eq!(
        http(&flag, "POST", "/metrics", None).header("allow"),
        Some("GET, HEAD")
    );
}

#[test]
fn a_bare_port_in_the_config_listens_on_loopback() {
    let port = common::free_port();
    let mut up = Up::configured(&format!("[metrics]\nlisten = \"{port}\"\n"));
    up.launch();
    assert_eq!(metrics_addr(&up), format!("127.0.0.1:{port}"));
    let got = http(&metrics_addr(&up), "GET", "/metrics", None);
    assert!(got.status.starts_with("HTTP/1.1 200"), "{}", got.status);
}
