//! Runs a real `zester up` appliance in-process for integration tests, and the client-side
//! helpers those tests share: peel creds registered in its key store, TLS connections that
//! collect the server's async errors, and waiting for audit lines.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use serde_json::Value;
use zester::appliance::keys::KeyRecord;
use zester::appliance::up::{Appliance, UpOptions};
use zester::home::{self, now_unix, Home};
use zester::identity::peel_id::PeelId;

/// An appliance on a fresh home in a temp dir; call [`TestAppliance::stop`] at the end (drop
/// also stops the child, but without waiting for the audit log).
pub struct TestAppliance {
    pub home: Home,
    pub appliance: Appliance,
    _dir: tempfile::TempDir,
}

/// Starts an appliance with `zester_toml` as its configuration (empty = defaults) on
/// 127.0.0.1 with ports chosen at run time.
pub async fn start(zester_toml: &str) -> TestAppliance {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = Home::at(dir.path().join("home"));
    home.init(false, "localhost", now_unix()).expect("init");
    std::fs::write(home.config_file(), zester_toml).expect("write zester.toml");
    start_on(home, dir).await
}

/// Starts an appliance again on a home a stopped one left (see [`TestAppliance::stop_keeping_home`]).
pub async fn start_on(home: Home, dir: tempfile::TempDir) -> TestAppliance {
    let appliance = Appliance::start(
        home.clone(),
        UpOptions {
            listen: Some("127.0.0.1:0".into()),
            monitor: Some("127.0.0.1:0".into()),
            nats_server: None,
            metrics: None,
            hostname: "localhost".into(),
            ..UpOptions::default()
        },
    )
    .await
    .expect("zester up starts");
    TestAppliance {
        home,
        appliance,
        _dir: dir,
    }
}

impl TestAppliance {
    /// Issues creds for peel `id` (accepted in the key store) and returns their path.
    pub async fn peel(&self, id: &str) -> PathBuf {
        self.peel_with_ttl(id, 3600).await
    }

    /// [`peel`] with a JWT lifetime.
    pub async fn peel_with_ttl(&self, id: &str, ttl: i64) -> PathBuf {
        let authority = self.home.load_authority().expect("authority");
        let id = PeelId::parse(id).expect("peel id");
        let creds = authority.issue_peel(&id, now_unix(), ttl).expect("issue");
        let path = self.home.peel_creds(id.as_str());
        home::write_creds(&path, &creds).expect("write creds");
        let record = KeyRecord::new_accepted(
            id,
            &creds.key().public_key(),
            "test",
            "issued by the test",
            now_unix(),
        )
        .expect("record");
        let revision = self
            .appliance
            .keys()
            .create(&record)
            .await
            .expect("register");
        self.appliance
            .keys()
            .wait_for_revision(revision, Duration::from_secs(5))
            .await
            .expect("cache catches up");
        path
    }

    /// The client URL.
    pub fn url(&self) -> String {
        self.appliance.url().to_string()
    }

    /// Connects with `creds` over TLS with the given inbox prefix.
    pub async fn connect(
        &self,
        creds: &Path,
        inbox: &str,
    ) -> Result<Client, async_nats::ConnectError> {
        let options = ConnectOptions::with_credentials_file(creds)
            .await
            .expect("creds readable");
        self.connect_with(options, inbox).await
    }

    /// Connects with arbitrary options (TLS and the error collector are added).
    pub async fn connect_with(
        &self,
        options: ConnectOptions,
        inbox: &str,
    ) -> Result<Client, async_nats::ConnectError> {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (e, v) = (errors.clone(), events.clone());
        let nats = options
            .add_root_certificates(self.home.ca_cert())
            .require_tls(true)
            .custom_inbox_prefix(inbox)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let (e, v) = (e.clone(), v.clone());
                async move {
                    if let Event::ServerError(err) = &event {
                        e.lock().unwrap().push(err.to_string().to_lowercase());
                    }
                    v.lock().unwrap().push(event.to_string());
                }
            })
            .connect(self.url())
            .await?;
        Ok(Client {
            nats,
            errors,
            events,
        })
    }

    /// The audit log's records so far.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.home.audit_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (up to 10 s) for an audit record matching `predicate`.
    pub async fn wait_audit(&self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some(found) = self.audit().into_iter().find(|r| predicate(r)) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no audit record for {what}; audit log:\n{:#?}",
            self.audit()
        );
    }

    /// Asserts a client with `options` is refused. Where nats-server refuses by itself after
    /// its auth timeout, async-nats first reports the connection as up, then the authorization
    /// violation: the client must see that violation and never get a round trip through.
    pub async fn assert_refused(&self, options: ConnectOptions, what: &str) {
        match self.connect_with(options, "_INBOX.x").await {
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::AuthorizationViolation
                ),
                "{what}: unexpected failure {e}"
            ),
            Ok(client) => {
                let round_trip = tokio::time::timeout(
                    Duration::from_secs(6),
                    client.nats.request("zester.cmd.nobody", "".into()),
                )
                .await;
                assert!(
                    !matches!(round_trip, Ok(Ok(_))),
                    "{what}: the client got a reply through"
                );
                // A key revoked in the account JWT is refused only when the server's auth
                // timeout (10 s) runs out.
                assert!(
                    client
                        .wait_error_for("authorization violation", Duration::from_secs(12))
                        .await,
                    "{what}: the client was let in: {:?}",
                    client.events()
                );
            }
        }
    }

    /// Connects as the master (through the callout, with the master's inbox prefix).
    /// Admitted, proven by a round trip (a request nothing serves, answered "no responders"):
    /// async-nats calls a connection up before the callout has decided.
    pub async fn master(&self) -> Client {
        let master = self
            .connect(&self.home.service_creds("master"), "_INBOX._master")
            .await
            .expect("the master connects through the callout");
        super::sync(&master.nats, "_INBOX._master.admission-probe").await;
        master
    }

    /// Runs the `zester` binary on this appliance's home.
    pub fn zester(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_zester"))
            .arg("--home")
            .arg(self.home.root())
            .args(args)
            .output()
            .expect("run zester")
    }

    /// Starts `zester peel run` with `creds` against this appliance, killed when dropped (also
    /// when the test fails before it stops the agent).
    pub fn peel_run(&self, creds: &Path) -> super::Reaped {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_zester"))
            .args(["peel", "run", "--server", &self.url(), "--creds"])
            .arg(creds)
            .arg("--ca")
            .arg(self.home.ca_cert())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn zester peel run");
        super::Reaped::new(child)
    }

    /// Stops the appliance (child first, callout last).
    pub async fn stop(self) {
        self.appliance.stop().await;
    }

    /// Stops the appliance but keeps its home, to start again with [`start_on`].
    pub async fn stop_keeping_home(self) -> (Home, tempfile::TempDir) {
        self.appliance.stop().await;
        (self.home, self._dir)
    }
}

/// A client with the server's async errors and connection events collected.
pub struct Client {
    pub nats: async_nats::Client,
    pub errors: Arc<Mutex<Vec<String>>>,
    pub events: Arc<Mutex<Vec<String>>>,
}

impl Client {
    /// Waits (up to 3 s) for a server error containing `needle` (lower case).
    pub async fn wait_error(&self, needle: &str) -> bool {
        self.wait_error_for(needle, Duration::from_secs(3)).await
    }

    /// [`Self::wait_error`] for up to `within`.
    pub async fn wait_error_for(&self, needle: &str, within: Duration) -> bool {
        for _ in 0..within.as_millis().div_ceil(50) {
            if self
                .errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains(needle))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Events seen so far ("connected", "disconnected", …).
    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

/// Sends `test.ping` to peel `id` until an answer comes (or `within` passes); true when the
/// answer is `true`. Requests fail with "no responders" until the agent has subscribed.
pub async fn ping(master: &async_nats::Client, id: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Ok(reply)) = tokio::time::timeout(
            Duration::from_secs(2),
            master.request(format!("zester.cmd.{id}"), "test.ping".into()),
        )
        .await
        {
            return &reply.payload[..] == b"true";
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
