//! Issue 19, part 3: the audit trail is never silently lost. Against a real `zester up` and
//! nats-server: the hash chain of a real log verifies across rotations and a restart and
//! breaks where a byte is flipped, a line deleted or two lines swapped; the `zester-audit`
//! stream holds every record of 1,000 decisions byte for byte; no peel or master can put a
//! record into it; every admin action is audited with the verified admin and its address;
//! `on_overflow = "refuse"` refuses (and says why) with a failing disk and with a full queue;
//! `zester audit tail` filters and follows across a rotation.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::ConnectOptions;
use common::appliance::{self, TestAppliance};
use common::up::Up;
use serde_json::Value;
use zester::home::{now_unix, Home};
use zester::identity::peel_id::PeelId;

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn zester(home: &Path, args: &[&str]) -> std::process::Output {
    common::zester(home, args)
}

/// Creds for `id` that no key record knows (refused `key_unknown`).
fn stranger(t: &TestAppliance, id: &str) -> PathBuf {
    let authority = t.home.load_authority().unwrap();
    let creds = authority
        .issue_peel(&PeelId::parse(id).unwrap(), now_unix(), 3600)
        .unwrap();
    let path = t.home.root().join(format!("{id}.stranger.creds"));
    zester::home::write_creds(&path, &creds).unwrap();
    path
}

/// `n` connections with `creds` (admitted or refused, each one decision), one after another.
async fn decisions(t: &TestAppliance, creds: &Path, n: usize) {
    for _ in 0..n {
        if let Ok(client) = t.connect(creds, "_INBOX.web-01").await {
            client.nats.flush().await.unwrap();
        }
    }
}

fn lines_of(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_of_a_real_log_holds_across_rotation_and_restart_and_breaks_where_tampered() {
    let t = appliance::start("[audit]\nmax_file_bytes = \"2KiB\"\nkeep = 100\n").await;
    let creds = t.peel("web-01").await;
    let unknown = stranger(&t, "web-02");
    decisions(&t, &creds, 6).await;
    decisions(&t, &unknown, 4).await;
    let (home, dir) = t.stop_keeping_home().await;
    let t = appliance::start_on(home, dir).await;
    decisions(&t, &creds, 6).await;
    let root = t.home.root().to_path_buf();
    let (_home, _dir) = t.stop_keeping_home().await;

    let files = Home::at(root.clone()).audit_files();
    assert!(files.len() >= 4, "rotated several times: {files:?}");
    let lines = lines_of(&files);
    let verified = zester(&root, &["audit", "verify", "--json"]);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let report = json(&verified);
    assert_eq!(report["intact"], true);
    let chain = &report["nodes"]["zester"];
    assert_eq!(
        chain["records"],
        lines.len() as u64,
        "every line is in the chain"
    );
    assert_eq!(chain["first_seq"], 1);
    assert_eq!(chain["from_genesis"], true);
    // The restart went on with the chain: one genesis only.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(zester::wire::audit::GENESIS))
            .count(),
        1
    );
    let text = zester(&root, &["audit", "verify"]);
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("audit chain intact"));

    // Tampered copies: the break is named with its file and line.
    let copy = tempfile::tempdir().unwrap();
    let copies: Vec<PathBuf> = files
        .iter()
        .map(|f| {
            let to = copy.path().join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            to
        })
        .collect();
    let victim = &copies[1];
    let original = std::fs::read_to_string(victim).unwrap();
    let name = victim.display().to_string();
    let tampered = |text: String| -> Value {
        std::fs::write(victim, text).unwrap();
        let args: Vec<&str> = ["audit", "verify", "--json"]
            .into_iter()
            .chain(copies.iter().map(|c| c.to_str().unwrap()))
            .collect();
        let out = zester(&root, &args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        json(&out)["break"].clone()
    };
    let victim_lines: Vec<&str> = original.lines().collect();
    assert!(victim_lines.len() >= 3);
    // A flipped byte inside the second line's time: that line no longer hashes to what the
    // third says.
    let mut flipped = original.clone().into_bytes();
    let at = original.find('\n').unwrap() + 1 + victim_lines[1].find("\"time\":\"").unwrap() + 9;
    flipped[at] ^= 0x01;
    let found = tampered(String::from_utf8(flipped).unwrap());
    assert_eq!(found["file"], name.as_str());
    assert_eq!(found["line"], 3);
    assert_eq!(found["problem"]["kind"], "prev");
    // A deleted line.
    let mut deleted = victim_lines.clone();
    deleted.remove(1);
    let found = tampered(deleted.join("\n") + "\n");
    assert_eq!(
        (found["file"].as_str(), found["line"].as_u64()),
        (Some(name.as_str()), Some(2))
    );
    assert_eq!(found["problem"]["kind"], "seq");
    // A reordered pair.
    let mut swapped = victim_lines.clone();
    swapped.swap(0, 1);
    let found = tampered(swapped.join("\n") + "\n");
    assert_eq!(
        (found["file"].as_str(), found["line"].as_u64()),
        (Some(name.as_str()), Some(1))
    );
    let human = {
        std::fs::write(victim, swapped.join("\n") + "\n").unwrap();
        let mut args = vec!["audit", "verify"];
        args.extend(copies.iter().map(|c| c.to_str().unwrap()));
        zester(&root, &args)
    };
    assert!(
        String::from_utf8_lossy(&human.stdout).contains(&format!("BROKEN at {name}:1")),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );
}

/// The stream's messages, in order (read with the master's creds, which may use JetStream).
async fn stream_messages(t: &TestAppliance) -> Vec<(String, String)> {
    let master = t.master().await;
    let js = async_nats::jetstream::new(master.nats.clone());
    let mut stream = js.get_stream("zester-audit").await.unwrap();
    let count = stream.info().await.unwrap().state.messages;
    let mut messages = Vec::new();
    for seq in 1..=count {
        let message = stream.get_raw_message(seq).await.unwrap();
        messages.push((
            message.subject.to_string(),
            String::from_utf8(message.payload.to_vec()).unwrap(),
        ));
    }
    messages
}

async fn stream_count(master: &async_nats::Client) -> u64 {
    let js = async_nats::jetstream::new(master.clone());
    match js.get_stream("zester-audit").await {
        Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_holds_every_record_of_1000_decisions() {
    let t = appliance::start("").await;
    let creds = t.peel("web-01").await;
    let unknown = stranger(&t, "web-02");
    let t = std::sync::Arc::new(t);
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (t, creds) = (
            t.clone(),
            if worker % 2 == 0 {
                creds.clone()
            } else {
                unknown.clone()
            },
        );
        workers.push(tokio::spawn(
            async move { decisions(&t, &creds, 250).await },
        ));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let decided = |t: &TestAppliance| {
        t.audit()
            .iter()
            .filter(|r| {
                r["source"] == "callout" && (r["peel_id"] == "web-01" || r["code"] == "key_unknown")
            })
            .count()
    };
    let master = t.master().await;
    // Wait (bounded) until the file has the 1,000 decisions and the stream every line of it.
    for _ in 0..600 {
        let lines = std::fs::read_to_string(t.home.audit_log())
            .unwrap()
            .lines()
            .count() as u64;
        if decided(&t) >= 1000 && stream_count(&master.nats).await >= lines {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(decided(&t) >= 1000, "{} decisions audited", decided(&t));
    let lines: Vec<String> = std::fs::read_to_string(t.home.audit_log())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let messages = stream_messages(&t).await;
    // The stream may already hold the master's own admission written after the file was read.
    assert!(
        messages.len() >= lines.len(),
        "{} in the stream, {} in the file",
        messages.len(),
        lines.len()
    );
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(messages[n].0, "zester.audit.zester");
        assert_eq!(
            &messages[n].1,
            line,
            "stream message {} is line {}",
            n + 1,
            n + 1
        );
    }
    let status = json(&t.zester(&["status", "--json"]));
    let audit = &status["audit"];
    assert_eq!(audit["stream"]["state"], "ok", "{audit}");
    assert_eq!(audit["dropped"], 0);
    assert_eq!(audit["stream"]["dropped"], 0);
    assert_eq!(audit["failing"], false);
    assert_eq!(audit["on_overflow"], "drop");
    let text = String::from_utf8_lossy(&t.zester(&["status"]).stdout).into_owned();
    assert!(text.contains("audit       audit.log ok"), "{text}");
    assert!(
        text.contains("stream zester-audit (zester.audit.zester) ok"),
        "{text}"
    );
    match std::sync::Arc::try_unwrap(t) {
        Ok(t) => t.stop().await,
        Err(_) => panic!("workers hold the appliance"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_peel_or_master_can_put_a_record_into_the_audit_stream() {
    let t = appliance::start("").await;
    let creds = t.peel("web-01").await;
    let peel = t.connect(&creds, "_INBOX.web-01").await.unwrap();
    let master = t.master().await;
    let forged = r#"{"node":"zester","seq":999999,"code":"forged","prev":"00"}"#;
    for (who, client) in [("peel", &peel), ("master", &master)] {
        client
            .nats
            .publish("zester.audit.zester", forged.into())
            .await
            .unwrap();
        client.nats.flush().await.unwrap();
        assert!(
            client.wait_error("permissions violation").await,
            "{who}: no permissions violation: {:?}",
            client.events()
        );
        // A JetStream publish (with an ack) is refused the same way: no ack ever comes.
        let js = async_nats::jetstream::new(client.nats.clone());
        let acked = match js.publish("zester.audit.zester", forged.into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(!acked, "{who}: the stream acknowledged a forged record");
    }
    // The master may not take the stream's guards off or delete it either.
    let js = async_nats::jetstream::new(master.nats.clone());
    assert!(js.delete_stream("zester-audit").await.is_err());
    // Something zester itself writes after the attempts, so the stream is caught up to it.
    let later = stranger(&t, "web-03");
    decisions(&t, &later, 1).await;
    t.wait_audit("the later refusal", |r| r["code"] == "key_unknown")
        .await;
    let lines = std::fs::read_to_string(t.home.audit_log())
        .unwrap()
        .lines()
        .count();
    for _ in 0..200 {
        if stream_count(&master.nats).await as usize >= lines {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let messages = stream_messages(&t).await;
    assert!(messages.len() >= lines);
    assert!(
        messages.iter().all(|(_, body)| !body.contains("forged")),
        "a forged record landed in the stream"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_action_is_audited_with_the_admin_and_its_address() {
    let t = appliance::start("").await;
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    // Pending keys to accept and reject, made as enrolment makes them.
    for id in ["pend-a", "pend-b"] {
        let key = nkeys::KeyPair::new_user();
        let record = zester::appliance::keys::KeyRecord::new_pending(
            PeelId::parse(id).unwrap(),
            &key.public_key(),
            None,
            "enrol",
            "test",
            now_unix(),
        )
        .unwrap();
        let revision = t.appliance.keys().create(&record).await.unwrap();
        t.appliance
            .keys()
            .wait_for_revision(revision, Duration::from_secs(5))
            .await
            .unwrap();
    }
    ok(t.zester(&["key", "accept", "pend-a"]));
    ok(t.zester(&["key", "reject", "pend-b"]));
    ok(t.zester(&["key", "delete", "pend-b"]));
    ok(t.zester(&["key", "revoke", "pend-a"]));
    ok(t.zester(&["creds", "issue", "web-01"]));
    let doc = t.home.root().join("settings.json");
    std::fs::write(&doc, r#"{"role":"web"}"#).unwrap();
    ok(t.zester(&["settings", "set", "web-01", doc.to_str().unwrap()]));
    let token = json(&ok(t.zester(&["token", "create", "--json"])));
    ok(t.zester(&["token", "revoke", token["id"].as_str().unwrap()]));
    ok(t.zester(&["admin", "add", "alice"]));
    ok(t.zester(&["admin", "remove", "alice"]));
    ok(t.zester(&["creds", "rotate", "master"]));
    ok(t.zester(&["creds", "rotate", "admin"]));
    for code in [
        "key_accepted",
        "key_rejected",
        "key_deleted",
        "key_revoked",
        "key_registered",
        "settings_replaced",
        "token_created",
        "token_revoked",
        "admin_added",
        "admin_removed",
        "service_creds_rotated",
    ] {
        let record = t
            .wait_audit(code, |r| r["source"] == "admin" && r["code"] == code)
            .await;
        assert_eq!(record["admin"], "admin", "{code}: {record}");
        assert_eq!(record["client_ip"], "127.0.0.1", "{code}: {record}");
        assert!(
            !record
                .to_string()
                .contains(token["token"].as_str().unwrap()),
            "{code}: a token secret in the audit log"
        );
    }
    // A named admin's action names that admin.
    let bob = t.home.root().join("bob.creds");
    ok(t.zester(&["admin", "add", "bob", "--out", bob.to_str().unwrap()]));
    ok(t.zester(&["token", "create", "--creds", bob.to_str().unwrap()]));
    t.wait_audit("bob's token", |r| {
        r["code"] == "token_created" && r["admin"] == "admin:bob"
    })
    .await;
    t.stop().await;
}

/// A home with `toml`, not yet started (`Up::launch` starts it).
fn prepared(toml: &str, creds_for: &str) -> Up {
    let up = Up {
        child: None,
        dir: tempfile::tempdir().unwrap(),
    };
    let init = zester(&up.home(), &["init"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    std::fs::write(up.home().join("zester.toml"), toml).unwrap();
    // No appliance yet: the key goes into the journal and `up` imports it.
    let issued = zester(&up.home(), &["creds", "issue", creds_for]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    up
}

async fn peel_connects(up: &Up, id: &str) -> bool {
    let home = up.home();
    let options = ConnectOptions::with_credentials_file(home.join(format!("peels/{id}.creds")))
        .await
        .unwrap()
        .add_root_certificates(home.join("pki/ca.pem"))
        .require_tls(true)
        .custom_inbox_prefix(format!("_INBOX.{id}"))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(1);
    let url = up.runtime()["url"].as_str().unwrap().to_string();
    match options.connect(url).await {
        Ok(client) => common::peel_admitted(&client, id).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_with_a_failing_disk_refuses_says_why_and_recovers() {
    let mut up = prepared("[audit]\non_overflow = \"refuse\"\n", "web-01");
    let log = up.home().join("audit.log");
    std::os::unix::fs::symlink("/dev/full", &log).unwrap();
    up.launch();
    // zester's own connections were let in (their records failed); a peel is not.
    let mut refused = false;
    for _ in 0..20 {
        if !peel_connects(&up, "web-01").await {
            refused = true;
            break;
        }
    }
    assert!(refused, "a peel was let in unaudited:\n{}", up.log());
    up.wait_for(Duration::from_secs(10), "the refusal in the log", || {
        up.log().contains("audit_unavailable")
    });
    let said = up.log();
    assert!(said.contains("audit.log cannot be written"), "{said}");
    assert!(said.contains("No space left on device"), "{said}");
    // The disk is back: a record is written again and the peel is let in.
    std::fs::remove_file(&log).unwrap();
    let mut admitted = false;
    for _ in 0..20 {
        if peel_connects(&up, "web-01").await {
            admitted = true;
            break;
        }
    }
    assert!(
        admitted,
        "still refused once audit.log can be written:\n{}",
        up.log()
    );
    assert!(up.log().contains("the audit log can be written again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_with_a_tiny_queue_refuses_and_says_why() {
    let mut up = prepared("[audit]\non_overflow = \"refuse\"\nqueue = 1\n", "web-01");
    let log = up.home().join("audit.log");
    // A pipe nobody reads: the writer waits on it, and the queue of one fills.
    let made = Command::new("mkfifo").arg(&log).status().unwrap();
    assert!(made.success());
    up.launch();
    let mut refused = false;
    for _ in 0..20 {
        if !peel_connects(&up, "web-01").await {
            refused = true;
            break;
        }
    }
    assert!(refused, "a peel was let in unaudited:\n{}", up.log());
    up.wait_for(Duration::from_secs(10), "the refusal in the log", || {
        up.log().contains("audit_unavailable")
    });
    assert!(up.log().contains("the audit queue is full"), "{}", up.log());
    // Someone reads the pipe: the writer drains the queue and the peel is let in.
    let reader = std::thread::spawn({
        let log = log.clone();
        move || {
            let mut all = String::new();
            use std::io::Read;
            if let Ok(mut pipe) = std::fs::File::open(&log) {
                let _ = pipe.read_to_string(&mut all);
            }
            all
        }
    });
    let mut admitted = false;
    for _ in 0..20 {
        if peel_connects(&up, "web-01").await {
            admitted = true;
            break;
        }
    }
    assert!(
        admitted,
        "still refused once the queue drains:\n{}",
        up.log()
    );
    drop(up);
    let read = reader.join().unwrap();
    assert!(read.lines().any(|l| l.contains("\"seq\":1,")), "{read}");
}

#[test]
fn tail_filters_and_follows_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let record = |seq: u64, peel: &str, code: &str, time: &str| {
        serde_json::json!({
            "node": "zester", "seq": seq, "time": time, "source": "callout",
            "decision": if code.is_empty() { "allow" } else { "refuse" },
            "code": code, "peel_id": peel, "client_ip": "10.0.0.1", "prev": "x",
        })
        .to_string()
            + "\n"
    };
    let recent = zester::identity::time::rfc3339(now_unix());
    std::fs::write(
        home.join("audit.log.1"),
        record(1, "web-01", "", "2020-01-01T00:00:00Z")
            + &record(2, "web-02", "key_unknown", "2020-01-01T00:00:01Z"),
    )
    .unwrap();
    std::fs::write(
        home.join("audit.log"),
        record(3, "web-01", "key_revoked", &recent),
    )
    .unwrap();
    let tail = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["audit", "tail", "--json"];
        all.extend(args);
        let out = zester(home, &all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(tail(&[]).len(), 3);
    assert_eq!(tail(&["--peel", "web-01"]).len(), 2);
    assert_eq!(tail(&["--code", "key_unknown"])[0]["peel_id"], "web-02");
    let since = tail(&["--since", "10m"]);
    assert_eq!(since.len(), 1);
    assert_eq!(since[0]["seq"], 3);
    assert_eq!(tail(&["-n", "1"])[0]["seq"], 3);
    let text = zester(home, &["audit", "tail", "--peel", "web-02"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with("2020-01-01T00:00:01Z callout  refuse key_unknown peel=\"web-02\""),
        "{text}"
    );

    // --follow: what is appended, then what comes after a rotation.
    let mut child = Command::new(env!("CARGO_BIN_EXE_zester"))
        .arg("--home")
        .arg(home)
        .args(["audit", "tail", "--follow", "--json", "--peel", "web-09"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let append = |path: &Path, text: String| {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    };
    let next = || -> Value {
        let line = received
            .recv_timeout(Duration::from_secs(20))
            .expect("tail --follow printed the record");
        serde_json::from_str(&line).unwrap()
    };
    append(&home.join("audit.log"), record(4, "web-09", "", &recent));
    assert_eq!(next()["seq"], 4);
    // The writer rotates: the file it wrote becomes audit.log.1, after one more line.
    append(&home.join("audit.log"), record(5, "web-09", "", &recent));
    std::fs::rename(home.join("audit.log.1"), home.join("audit.log.2")).unwrap();
    std::fs::rename(home.join("audit.log"), home.join("audit.log.1")).unwrap();
    append(&home.join("audit.log"), record(6, "web-09", "", &recent));
    assert_eq!(next()["seq"], 5);
    assert_eq!(next()["seq"], 6);
    let _ = child.kill();
    let _ = child.wait();
}
