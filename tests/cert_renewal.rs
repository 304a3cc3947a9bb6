//! Issue 16, zester's own credentials renew themselves: a real `zester up` (the binary) on a
//! home whose `[server] cert_lifetime` is seconds, with 50 peels connected over TLS, re-issues
//! the certificate with the same CA and names once a third of its life is left, and
//! nats-server serves the new one after a reload that drops none of the peels; a home whose
//! certificate has expired gets a new one when `up` starts; with `[service] expiry` of seconds
//! the master, admin, callout and sys creds are re-issued again and again (same keys) while
//! 50 peels stay connected and new clients keep getting in.
//!
//! Nothing here is timed: deadlines only bound the waiting, and every check that races a
//! renewal (there is one every two thirds of a lifetime) looks again until the certificate on
//! disk and the one served agree.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::{ConnectOptions, Event};
use common::up::Up;
use futures_util::StreamExt;
use serde_json::Value;
use zester::home::Home;
use zester::identity::time::rfc3339;
use zester::pki::{self, CertSummary};

/// Peels connected while the certificate renews.
const PEELS: usize = 50;
/// The longest anything waited for here may take (a bound on waiting, never a measurement).
const DEADLINE: Duration = Duration::from_secs(90);

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An [`Up`] on a home made by `zester init` with `zester_toml` already in place, not started.
fn home_with(zester_toml: &str) -> Up {
    let up = Up {
        child: None,
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::create_dir_all(up.home()).unwrap();
    std::fs::write(up.home().join("zester.toml"), zester_toml).unwrap();
    ok(&common::zester(&up.home(), &["init"]), "zester init");
    up
}

/// The certificate in `<home>/pki/server.pem`.
fn installed(home: &Home) -> CertSummary {
    pki::inspect_cert_pem(&std::fs::read_to_string(home.server_cert()).unwrap()).unwrap()
}

fn audit(home: &Home) -> Vec<Value> {
    std::fs::read_to_string(home.audit_log())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `cert_renewed` audit record of the certificate with `serial`, once there is one.
fn renewal_record(home: &Home, serial: &str) -> Option<Value> {
    audit(home).into_iter().find(|r| {
        r["code"] == "cert_renewed" && r["reason"].as_str().unwrap_or("").contains(serial)
    })
}

fn client_addr(up: &Up) -> SocketAddr {
    let url = up.runtime()["url"].as_str().unwrap().to_string();
    url.trim_start_matches("tls://").parse().unwrap()
}

/// The certificate nats-server presents to a new TLS connection, read from a rustls handshake
/// that verifies it against the home's CA.
async fn served(up: &Up) -> CertSummary {
    let addr = client_addr(up);
    let ca = std::fs::read_to_string(up.home().join("pki/ca.pem")).unwrap();
    let der = tokio::task::spawn_blocking(move || {
        zester::net::tls::served_certificate(addr, &ca, Duration::from_secs(5))
    })
    .await
    .unwrap()
    .expect("a TLS handshake verified with the home's CA");
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        data_encoding::BASE64.encode(&der)
    );
    pki::inspect_cert_pem(&pem).unwrap()
}

/// What nats-server's monitoring `/varz` says its certificate's notAfter is.
async fn varz_not_after(up: &Up) -> String {
    let monitor = up.runtime()["monitor_url"].as_str().unwrap().to_string();
    let varz = tokio::task::spawn_blocking(move || common::http_get_json(&monitor, "/varz"))
        .await
        .unwrap();
    varz["tls_cert_not_after"]
        .as_str()
        .unwrap_or_else(|| panic!("no tls_cert_not_after in varz: {varz}"))
        .to_string()
}

fn rfc3339_of(t: SystemTime) -> String {
    rfc3339(t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64)
}

/// Waits until the installed certificate's renewal is complete (audited) and nats-server
/// serves it to a new connection and reports it in `/varz`; returns it. A renewal that lands
/// between the reads makes it look again.
async fn settled(up: &Up, home: &Home) -> CertSummary {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "the installed certificate was never served; zester log:\n{}",
            up.log()
        );
        let cert = installed(home);
        if renewal_record(home, &cert.serial).is_some() {
            let served = served(up).await;
            let varz = varz_not_after(up).await;
            if installed(home).serial == cert.serial {
                assert_eq!(
                    served.serial, cert.serial,
                    "a new connection gets the new certificate"
                );
                assert_eq!(served.spki_pin, cert.spki_pin);
                assert_eq!(
                    varz,
                    rfc3339_of(cert.not_after),
                    "varz shows the new notAfter"
                );
                return cert;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TLS client of the appliance (the home's CA, creds, a name and inbox prefix) counting its
/// disconnects.
async fn connect(
    up: &Up,
    creds: &Path,
    name: &str,
    inbox: &str,
) -> (async_nats::Client, Arc<AtomicUsize>) {
    let disconnects = Arc::new(AtomicUsize::new(0));
    let counter = disconnects.clone();
    let client = ConnectOptions::with_credentials_file(creds)
        .await
        .expect("creds readable")
        .add_root_certificates(up.home().join("pki/ca.pem"))
        .require_tls(true)
        .name(name)
        .custom_inbox_prefix(inbox)
        .connection_timeout(Duration::from_secs(10))
        .event_callback(move |event| {
            let counter = counter.clone();
            async move {
                if matches!(event, Event::Disconnected) {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .connect(up.runtime()["url"].as_str().unwrap())
        .await
        .unwrap_or_else(|e| panic!("{name} connects: {e}"));
    (client, disconnects)
}

/// A connected peel answering `zester.cmd.<id>` with its id.
struct Peel {
    id: String,
    client: async_nats::Client,
    disconnects: Arc<AtomicUsize>,
    responder: tokio::task::JoinHandle<()>,
}

async fn peel(up: &Up, id: String, creds: PathBuf) -> Peel {
    let (client, disconnects) = connect(
        up,
        &creds,
        &format!("renewal-{id}"),
        &format!("_INBOX.{id}"),
    )
    .await;
    let mut commands = client.subscribe(format!("zester.cmd.{id}")).await.unwrap();
    common::sync_peel(&client, &id).await;
    let answering = client.clone();
    let answer = id.clone();
    let responder = tokio::spawn(async move {
        while let Some(message) = commands.next().await {
            if let Some(reply) = message.reply {
                let _ = answering.publish(reply, answer.clone().into()).await;
            }
        }
    });
    Peel {
        id,
        client,
        disconnects,
        responder,
    }
}

/// The master asks every peel and each answers with its id.
async fn every_peel_answers(master: &async_nats::Client, peels: &[Peel]) {
    for peel in peels {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            master.request(format!("zester.cmd.{}", peel.id), "ping".into()),
        )
        .await
        .unwrap_or_else(|_| panic!("{} did not answer in time", peel.id))
        .unwrap_or_else(|e| panic!("{} did not answer: {e}", peel.id));
        assert_eq!(&reply.payload[..], peel.id.as_bytes());
    }
}

/// Closes the peels' connections, then stops `zester up` ([`stop`]).
fn stop_all(peels: Vec<Peel>, up: Up) {
    for peel in peels {
        peel.responder.abort();
        drop(peel.client);
    }
    stop(up);
}

/// SIGTERM, then waits (bounded) for `zester up` to exit; the drop of `up` kills what is left.
fn stop(mut up: Up) {
    up.signal(libc::SIGTERM);
    if let Some(mut child) = up.child.take() {
        let deadline = Instant::now() + DEADLINE;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_peels_keep_working_while_the_certificate_renews_itself() {
    let mut up = home_with("[server]\ncert_lifetime = \"20s\"\n");
    let home = Home::at(up.home());
    let ids: Vec<String> = (0..PEELS).map(|n| format!("renew-{n:02}")).collect();
    for id in &ids {
        ok(
            &common::zester(&up.home(), &["creds", "issue", id]),
            "creds issue",
        );
    }
    let ca_before = std::fs::read(home.ca_cert()).unwrap();
    up.launch();

    let peels = futures_util::future::join_all(
        ids.iter()
            .map(|id| peel(&up, id.clone(), home.peel_creds(id))),
    )
    .await;
    let (master, master_disconnects) = connect(
        &up,
        &home.service_creds("master"),
        "renewal-master",
        "_INBOX._master",
    )
    .await;
    every_peel_answers(&master, &peels).await;

    // Every peel is connected and answering: from here on, wait for a renewal.
    let before = installed(&home);
    let deadline = Instant::now() + DEADLINE;
    while installed(&home).serial == before.serial {
        assert!(
            Instant::now() < deadline,
            "the certificate was not renewed; zester log:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = settled(&up, &home).await;

    assert_ne!(after.serial, before.serial);
    assert!(after.not_after > before.not_after, "a later notAfter");
    assert_eq!(after.names, before.names, "the same names");
    assert_ne!(after.spki_pin, before.spki_pin, "a new key");
    assert_eq!(
        std::fs::read(home.ca_cert()).unwrap(),
        ca_before,
        "the same CA"
    );
    assert_eq!(common::mode(&home.server_key()), 0o600);
    let record = renewal_record(&home, &after.serial).unwrap();
    assert_eq!(record["source"], "renew");
    assert_eq!(record["decision"], "allow");

    for peel in &peels {
        assert_eq!(
            peel.disconnects.load(Ordering::SeqCst),
            0,
            "{} was disconnected",
            peel.id
        );
        assert_eq!(
            peel.client.connection_state(),
            async_nats::connection::State::Connected
        );
    }
    assert_eq!(
        master_disconnects.load(Ordering::SeqCst),
        0,
        "the master was disconnected"
    );
    every_peel_answers(&master, &peels).await;
    let ours: Vec<Value> = audit(&home)
        .into_iter()
        .filter(|r| {
            r["decision"] == "refuse"
                && r["connection_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("renewal-"))
        })
        .collect();
    assert!(ours.is_empty(), "refusals of the test's clients: {ours:#?}");

    drop(master);
    stop_all(peels, up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_renewed_when_up_starts() {
    let mut up = home_with("");
    let home = Home::at(up.home());
    let names = installed(&home).names;
    // What a home left alone for longer than its certificate's life looks like.
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    home.reissue_server_cert(&names, Duration::from_secs(60), an_hour_ago)
        .unwrap();
    let expired = installed(&home);
    assert!(expired.not_after < SystemTime::now());

    up.launch();
    let renewed = installed(&home);
    assert_ne!(renewed.serial, expired.serial);
    assert!(renewed.not_after > SystemTime::now() + Duration::from_secs(800 * 86_400));
    assert_eq!(renewed.names, names);
    let record = renewal_record(&home, &renewed.serial).expect("the renewal is audited");
    assert!(
        record["reason"].as_str().unwrap().contains("expired"),
        "{record}"
    );
    assert_eq!(served(&up).await.serial, renewed.serial);

    // A client that verifies the server (async-nats refuses an expired certificate) gets in.
    let (master, disconnects) = connect(
        &up,
        &home.service_creds("master"),
        "renewal-master",
        "_INBOX._master",
    )
    .await;
    common::sync(&master, "zester.cmd.nobody").await;
    master.flush().await.expect("a round trip over TLS");
    assert_eq!(disconnects.load(Ordering::SeqCst), 0);
    drop(master);
    stop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_peels_keep_working_while_zesters_own_creds_renew() {
    const LIFETIME: i64 = 6;
    let mut up = home_with("[service]\nexpiry = \"6s\"\n");
    let home = Home::at(up.home());
    let ids: Vec<String> = (0..PEELS).map(|n| format!("own-{n:02}")).collect();
    for id in &ids {
        ok(
            &common::zester(&up.home(), &["creds", "issue", id]),
            "creds issue",
        );
    }
    let own = ["master", "admin", "callout", "sys"];
    let key_of = |name: &str| {
        zester::home::read_creds(&home.service_creds(name))
            .unwrap()
            .key()
            .public_key()
    };
    let keys_before: Vec<String> = own.iter().map(|n| key_of(n)).collect();
    up.launch();
    // `up` gave them a lifetime before anything connected.
    for name in own {
        let exp = zester::home::read_creds(&home.service_creds(name))
            .unwrap()
            .jwt()
            .claims()
            .exp;
        assert!(exp > 0, "{name} creds got a lifetime");
    }
    let peels = futures_util::future::join_all(
        ids.iter()
            .map(|id| peel(&up, id.clone(), home.peel_creds(id))),
    )
    .await;

    // Three lifetimes: each of the four is re-issued at least three times, and the callout
    // and system connections reconnect with the new files each time.
    let renewed = |name: &str| {
        audit(&home)
            .iter()
            .filter(|r| r["code"] == "service_renewed" && r["role"] == name)
            .count()
    };
    let deadline = Instant::now() + DEADLINE;
    while own.iter().any(|n| renewed(n) < 4) {
        assert!(
            Instant::now() < deadline,
            "own creds were not renewed; zester log:\n{}",
            up.log()
        );
        // Meanwhile new clients keep getting in through the callout, and the admin API (the
        // service connection) and status (the system connection) keep answering.
        let (master, _) = connect(
            &up,
            &home.service_creds("master"),
            "renewal-master",
            "_INBOX._master",
        )
        .await;
        every_peel_answers(&master, &peels[..5]).await;
        drop(master);
        let status = common::zester(&up.home(), &["status", "--json"]);
        ok(&status, "zester status");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for (name, key) in own.iter().zip(&keys_before) {
        assert_eq!(&key_of(name), key, "{name} keeps its key");
        assert_eq!(common::mode(&home.service_creds(name)), 0o600);
        let exp = zester::home::read_creds(&home.service_creds(name))
            .unwrap()
            .jwt()
            .claims()
            .exp;
        assert!(
            exp > now && exp <= now + LIFETIME,
            "{name} valid for at most one lifetime"
        );
    }
    for peel in &peels {
        assert_eq!(
            peel.disconnects.load(Ordering::SeqCst),
            0,
            "{} was disconnected",
            peel.id
        );
    }
    let (master, _) = connect(
        &up,
        &home.service_creds("master"),
        "renewal-master",
        "_INBOX._master",
    )
    .await;
    every_peel_answers(&master, &peels).await;
    let refused: Vec<Value> = audit(&home)
        .into_iter()
        .filter(|r| r["decision"] == "refuse")
        .collect();
    assert!(refused.is_empty(), "refusals: {refused:#?}");
    drop(master);
    stop_all(peels, up);
}
