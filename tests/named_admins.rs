//! Named admins against a real `zester up` process: `admin add` makes per-person creds, the
//! admin acts from another machine (another home, another HOME, `$USER` lying) with
//! `--creds --server --ca` or a nats context and is recorded under its own name; `admin remove`
//! cuts it off at once; requests whose signature is not an admin's are refused and audited.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::up::Up;
use serde_json::{json, Value};
use zester::cli::client::admin_connect;
use zester::home::Home;
use zester::wire::admin::{KEY_CHANGE, KEY_LIST};
use zester::wire::admin_auth;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}

fn audit(up: &Up) -> Vec<Value> {
    std::fs::read_to_string(up.home().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_audit(up: &Up, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        if let Some(found) = audit(up).into_iter().find(|r| predicate(r)) {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no audit record for {what}:\n{:#?}", audit(up));
}

/// Another machine: its own (empty) zester home, its own HOME, `$USER` = root, and copies of
/// the admin's creds and the appliance's CA.
struct Laptop {
    dir: tempfile::TempDir,
}

impl Laptop {
    fn new(up: &Up, creds: &Path) -> Laptop {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(creds, dir.path().join("me.creds")).unwrap();
        std::fs::copy(up.home().join("pki/ca.pem"), dir.path().join("ca.pem")).unwrap();
        Laptop { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `zester ARGS…` as this machine runs it, with no connection flags added.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_zester"))
            .arg("--home")
            .arg(self.path("zester-home"))
            .args(args)
            .env_remove("ZESTER_HOME")
            .env_remove("ZESTER_ADMIN_CREDS")
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", self.dir.path())
            .env("USER", "root")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `zester ARGS… --creds me.creds --server URL --ca ca.pem`.
    fn admin(&self, up: &Up, args: &[&str]) -> Output {
        let url = up.runtime()["url"].as_str().unwrap().to_string();
        let (creds, ca) = (self.path("me.creds"), self.path("ca.pem"));
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--creds",
            creds.to_str().unwrap(),
            "--server",
            &url,
            "--ca",
            ca.to_str().unwrap(),
        ]);
        self.run(&all)
    }
}

fn enrol_pending(up: &Up, id: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zester"))
        .args([
            "peel",
            "enrol",
            "--server",
            up.runtime()["url"].as_str().unwrap(),
        ])
        .args(["--id", id, "--ca"])
        .arg(up.home().join("pki/ca.pem"))
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    dir
}

fn add_admin(up: &Up, name: &str) -> (PathBuf, Value) {
    let added = json_of(&up.zester(&["admin", "add", name, "--json"]));
    assert_eq!(added["registered"], "appliance", "{added}");
    assert_eq!(
        added["added_by"], "admin",
        "the home's own admin added it: {added}"
    );
    let file = PathBuf::from(added["file"].as_str().unwrap());
    assert_eq!(file, up.home().join(format!("admins/{name}.creds")));
    assert_eq!(common::mode(&file) & 0o777, 0o600);
    assert_eq!(common::mode(&up.home().join("admins")) & 0o777, 0o700);
    (file, added)
}

#[test]
fn a_named_admin_acts_from_another_machine_and_is_recorded_by_its_name() {
    let up = Up::start();
    let (creds, added) = add_admin(&up, "alice");
    let _peel = enrol_pending(&up, "web-01");
    let laptop = Laptop::new(&up, &creds);

    let accepted = json_of(&laptop.admin(
        &up,
        &[
            "key",
            "accept",
            "web-01",
            "--reason",
            "checked by phone",
            "--json",
        ],
    ));
    assert_eq!(
        accepted[0]["ok"]["record"]["state"], "accepted",
        "{accepted}"
    );
    let shown = json_of(&laptop.admin(&up, &["key", "show", "web-01", "--json"]));
    let last = shown["record"]["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["by"], "admin:alice", "never $USER (root): {shown}");
    assert_eq!(last["reason"], "checked by phone");

    let record = wait_audit(&up, "alice's accept", |r| {
        r["source"] == "admin" && r["code"] == "key_accepted" && r["peel_id"] == "web-01"
    });
    assert_eq!(record["admin"], "admin:alice", "{record}");
    assert_eq!(record["decision"], "allow");
    assert!(!record.to_string().contains("root"), "{record}");
    let admitted = wait_audit(&up, "alice's connection", |r| {
        r["source"] == "callout" && r["nkey"] == added["user_key"]
    });
    assert_eq!(admitted["admin"], "admin:alice", "{admitted}");
    assert_eq!(admitted["role"], "admin");

    // `admin list` shows her, with who added her.
    let list = json_of(&up.zester(&["admin", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["fingerprint"], added["fingerprint"]);
    assert_eq!(list[0]["added_by"], "admin");
    assert!(list[0]["added_at"].as_i64().unwrap() > 0);

    // A nats CLI context on the laptop does the same (url, creds, ca fields).
    let contexts = laptop.path(".config/nats/context");
    std::fs::create_dir_all(&contexts).unwrap();
    let context = json!({
        "url": up.runtime()["url"],
        "creds": laptop.path("me.creds"),
        "ca": laptop.path("ca.pem"),
        "inbox_prefix": "_INBOX._admin",
    });
    std::fs::write(contexts.join("prod.json"), context.to_string()).unwrap();
    let _peel2 = enrol_pending(&up, "web-02");
    let rejected = json_of(&laptop.run(&[
        "key",
        "reject",
        "web-02",
        "--context",
        "prod",
        "--reason",
        "unknown host",
        "--json",
    ]));
    assert_eq!(
        rejected[0]["ok"]["record"]["state"], "rejected",
        "{rejected}"
    );
    let record = wait_audit(&up, "alice's reject", |r| {
        r["code"] == "key_rejected" && r["peel_id"] == "web-02"
    });
    assert_eq!(record["admin"], "admin:alice", "{record}");

    // The home's own admin is recorded as `admin`, whatever $USER says.
    let out = Command::new(env!("CARGO_BIN_EXE_zester"))
        .arg("--home")
        .arg(up.home())
        .args(["settings", "set", "web-01", "-"])
        .env("USER", "root")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"{\"role\":\"web\"}")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let record = wait_audit(&up, "settings write", |r| r["code"] == "settings_replaced");
    assert_eq!(record["admin"], "admin", "{record}");
}

#[test]
fn removing_a_named_admin_cuts_it_off_at_once() {
    let up = Up::start();
    let (creds, added) = add_admin(&up, "bob");
    let laptop = Laptop::new(&up, &creds);
    assert!(laptop
        .admin(&up, &["key", "list", "--json"])
        .status
        .success());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = up.runtime()["url"].as_str().unwrap().to_string();
    let live = rt.block_on(async {
        async_nats::ConnectOptions::with_credentials_file(laptop.path("me.creds"))
            .await
            .unwrap()
            .add_root_certificates(laptop.path("ca.pem"))
            .require_tls(true)
            .custom_inbox_prefix("_INBOX._admin")
            .connect(&url)
            .await
            .expect("bob connects")
    });
    // Admitted: a round trip only an admitted connection gets (the status request is answered
    // by the service; no signature is needed to read it).
    let probe = rt.block_on(live.request(zester::wire::admin::STATUS_SUBJECT, "{}".into()));
    assert!(probe.is_ok(), "bob admitted: {probe:?}");

    let removed = json_of(&up.zester(&["admin", "remove", "bob", "--json"]));
    assert!(removed["kicked"].as_u64().unwrap() >= 1, "{removed}");
    assert_eq!(removed["revoked"], added["user_key"]);
    let record = wait_audit(&up, "bob removed", |r| r["code"] == "admin_removed");
    assert_eq!(record["admin"], "admin", "{record}");
    let reason = record["reason"].as_str().unwrap();
    assert!(reason.contains("admin bob removed by admin"), "{reason}");
    assert!(reason.contains("revoked"), "{reason}");

    up.wait_for(Duration::from_secs(5), "bob's live connection cut", || {
        live.connection_state() != async_nats::connection::State::Connected
    });

    // His next command is refused, and the audit log says why.
    let out = laptop.admin(&up, &["key", "list", "--json"]);
    assert!(!out.status.success(), "bob still gets in: {}", text(&out));
    let refused = wait_audit(&up, "bob refused", |r| {
        r["decision"] == "refuse" && r["nkey"] == added["user_key"]
    });
    assert_eq!(refused["code"], "revoked", "{refused}");
    let list = json_of(&up.zester(&["admin", "list", "--json"]));
    assert_eq!(list, json!([]), "{list}");
    drop(live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_missing_admin_identities_are_refused_and_audited() {
    let up = Up::start();
    let _peel = enrol_pending(&up, "web-09");
    let admin = admin_connect(&Home::at(up.home()))
        .await
        .expect("admin connects");
    let body = serde_json::to_vec(&json!({
        "id": "web-09", "to": "accepted", "by": "admin:alice", "reason": "forged"
    }))
    .unwrap();
    let send = |headers: async_nats::HeaderMap, body: Vec<u8>| {
        let admin = &admin;
        async move {
            let reply = admin
                .request_with_headers(KEY_CHANGE, headers, body.into())
                .await
                .expect("an answer");
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };
    let signed = |key: &nkeys::KeyPair, body: &[u8]| {
        let nonce: [u8; 16] = rand::random();
        let proof =
            admin_auth::sign(key, KEY_CHANGE, zester::home::now_unix(), &nonce, body).unwrap();
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in proof.headers() {
            headers.insert(name, value.as_str());
        }
        headers
    };

    // Signed by a key that is no admin's (a "by" naming alice changes nothing).
    let mallory = nkeys::KeyPair::new_user();
    let answer = send(signed(&mallory, &body), body.clone()).await;
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not an admin this appliance trusts"),
        "{answer}"
    );
    let record = wait_audit(&up, "mallory", |r| r["code"] == "admin_not_trusted");
    assert_eq!(record["nkey"], mallory.public_key());
    assert_eq!(record["decision"], "refuse");

    // Unsigned: a change is refused; a read is answered.
    let answer = send(async_nats::HeaderMap::new(), body.clone()).await;
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("must be signed"),
        "{answer}"
    );
    wait_audit(&up, "unsigned", |r| r["code"] == "admin_unsigned");
    let reply = admin.request(KEY_LIST, "{}".into()).await.unwrap();
    let listed: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(listed["ok"].is_array(), "{listed}");

    // The home admin's signature over another body does not cover this one.
    let home_key = zester::home::read_creds(&up.home().join("auth/admin.creds")).unwrap();
    let home_key = nkeys::KeyPair::from_seed(&home_key.key().seed().unwrap()).unwrap();
    let answer = send(signed(&home_key, b"{}"), body.clone()).await;
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("does not verify"),
        "{answer}"
    );
    wait_audit(&up, "tampered", |r| r["code"] == "admin_signature_invalid");

    // A valid request replayed word for word is refused the second time.
    let headers = signed(&home_key, &body);
    let first = send(headers.clone(), body.clone()).await;
    assert_eq!(first["ok"]["record"]["state"], "accepted", "{first}");
    let again = send(headers, body.clone()).await;
    assert!(
        again["error"]
            .as_str()
            .unwrap_or_default()
            .contains("already used"),
        "{again}"
    );
    wait_audit(&up, "replay", |r| r["code"] == "admin_replayed");

    // Nothing forged reached the record: one change, by the home's admin.
    let record = wait_audit(&up, "the accept", |r| r["code"] == "key_accepted");
    assert_eq!(record["admin"], "admin");
    let shown = zester::cli::client::key_show(&admin, "web-09")
        .await
        .unwrap();
    let history = shown["record"]["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["by"], "admin", "{shown}");
    assert_eq!(
        history.iter().filter(|c| c["state"] == "accepted").count(),
        1
    );
}

#[test]
fn admin_names_are_checked_and_offline_adds_wait_for_the_next_up() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let out = common::zester(&home, &["init"]);
    assert!(out.status.success(), "{}", text(&out));
    for bad in ["master", "sys", "../x", "a.b", ""] {
        let out = common::zester(&home, &["admin", "add", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
        assert!(text(&out).contains("admin name"), "{bad:?}: {}", text(&out));
    }
    let added = json_of(&common::zester(&home, &["admin", "add", "carol", "--json"]));
    assert_eq!(added["registered"], "home");
    assert_eq!(added["added_by"], "home");
    let again = common::zester(&home, &["admin", "add", "carol"]);
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    let list = json_of(&common::zester(&home, &["admin", "list", "--json"]));
    assert_eq!(list[0]["name"], "carol");
    assert_eq!(common::mode(&home.join("auth/admins.json")) & 0o777, 0o600);

    // The next `zester up` trusts her from the start, under her name.
    let mut up = Up { child: None, dir };
    up.launch();
    let laptop = Laptop::new(&up, &home.join("admins/carol.creds"));
    let _peel = enrol_pending(&up, "db-01");
    let accepted = json_of(&laptop.admin(&up, &["key", "accept", "db-01", "--json"]));
    assert_eq!(
        accepted[0]["ok"]["record"]["history"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["by"],
        "admin:carol",
        "{accepted}"
    );
}

#[test]
fn offline_changes_between_runs_reach_the_list_the_appliance_keeps() {
    // dave is added through the running appliance: into its bucket and its home.
    let mut up = Up::start();
    let (dave_creds, _) = add_admin(&up, "dave");
    up.stop();

    // With nothing running, erin is added and dave removed, in the home only.
    let added = json_of(&up.zester(&["admin", "add", "erin", "--json"]));
    assert_eq!(added["registered"], "home", "{added}");
    let removed = up.zester(&["admin", "remove", "dave", "--json"]);
    assert!(removed.status.success(), "{}", text(&removed));

    // The next `zester up` carries both changes into its list, instead of taking the home's
    // file for one that is merely behind.
    let up = Up::restart(up);
    let list = json_of(&up.zester(&["admin", "list", "--json"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["erin"], "{list}");
    let erin = Laptop::new(&up, &up.home().join("admins/erin.creds"));
    let out = erin.admin(&up, &["key", "list", "--json"]);
    assert!(out.status.success(), "erin is refused: {}", text(&out));
    let dave = Laptop::new(&up, &dave_creds);
    let out = dave.admin(&up, &["key", "list", "--json"]);
    assert!(!out.status.success(), "dave still gets in: {}", text(&out));
}
