//! The nats-server supervisor against real processes: a config rendered from a real home runs
//! under the real binary, a killed child is restarted, a reload is reported by the child (and a
//! refused one with nats-server's reason), shutdown leaves nothing behind, a busy
//! port is refused before anything is spawned, a crash loop is given up on with the child's
//! output, and a SIGKILLed parent takes nats-server with it (no orphans).
//!
//! Every server listens on 127.0.0.1 with ports the OS picks. Tests that need a child that
//! misbehaves use a small shell script in place of nats-server.

mod common;
use common::wait_until;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;
use zester::appliance::broker::config::{self, HostPort};
use zester::appliance::broker::supervisor::{
    Backoff, BrokerError, ChildEvent, Supervisor, SupervisorSettings,
};
use zester::home::{now_unix, Home};

/// Set (to a config file) only in the helper process of `no_orphan_when_the_parent_is_killed`.
const ORPHAN_ENV: &str = "ZESTER_TEST_ORPHAN_PARENT";
/// The line the helper prints to report the nats-server pid.
const CHILD_PID_PREFIX: &str = "ORPHAN-TEST-CHILD-PID=";

/// A real home with a rendered config in `<home>/nats/nats-server.conf`.
struct Setup {
    _dir: tempfile::TempDir,
    home: Home,
    config: PathBuf,
}

impl Setup {
    fn new(listen: &str, monitor: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        let now = now_unix();
        home.init(false, "localhost", now).unwrap();
        let config = render_config(&home, listen, monitor, now);
        Setup {
            _dir: dir,
            home,
            config,
        }
    }

    fn ports_dir(&self) -> PathBuf {
        self.home.nats_dir()
    }

    fn settings(&self, binary: &Path, listen: &str, monitor: &str) -> SupervisorSettings {
        settings_for(binary, &self.config, listen, monitor)
    }
}

fn settings_for(binary: &Path, config: &Path, listen: &str, monitor: &str) -> SupervisorSettings {
    let ports_dir = config.parent().unwrap();
    SupervisorSettings::new(
        binary,
        config,
        ports_dir,
        HostPort::parse("server.listen", listen).unwrap(),
        Some(HostPort::parse("server.monitor", monitor).unwrap()),
    )
}

fn render_config(home: &Home, listen: &str, monitor: &str, now: i64) -> PathBuf {
    let authority = home.load_authority().unwrap();
    let sentinel = authority.issue_sentinel(now).unwrap();
    let text = config::render_for_home(
        home,
        &authority,
        sentinel.token(),
        listen,
        monitor,
        zester::home::config::JetStreamLimits::default(),
        config::Placement::SINGLE,
    )
    .unwrap();
    let nats = home.nats_dir();
    let path = nats.join("nats-server.conf");
    std::fs::write(&path, text).unwrap();
    path
}

/// True once `pid` no longer runs: no such process, or a zombie nobody has reaped yet.
fn gone(pid: u32) -> bool {
    !common::process_alive(pid)
}

/// The first line a NATS server sends.
async fn info_line(addr: SocketAddr) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::BufReader::new(stream).read_line(&mut line),
    )
    .await
    .expect("INFO within 5 s")
    .unwrap();
    line
}

/// Writes an executable shell script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_tls_and_the_system_account_and_shuts_down_cleanly() {
    let setup = Setup::new("127.0.0.1:0", "127.0.0.1:0");
    let binary = common::nats_server_path();
    let supervisor = Supervisor::start(setup.settings(&binary, "127.0.0.1:0", "127.0.0.1:0"))
        .await
        .expect("nats-server starts");
    let info = supervisor.info();
    assert_eq!(info.restarts, 0);
    assert!(info.ports.client.ip().is_loopback());
    let monitor = info.ports.monitor.expect("a monitoring port");
    assert!(matches!(
        *supervisor.subscribe().borrow(),
        ChildEvent::Started { pid, .. } if pid == info.pid
    ));

    let line = info_line(info.ports.client).await;
    assert!(line.starts_with("INFO {"), "{line}");
    assert!(line.contains("\"tls_required\":true"), "{line}");
    assert!(line.contains("\"server_name\":\"zester\""), "{line}");

    // The system user is not subject to the callout: it connects and the server answers.
    let client = async_nats::ConnectOptions::with_credentials_file(setup.home.service_creds("sys"))
        .await
        .unwrap()
        .add_root_certificates(setup.home.ca_cert())
        .require_tls(true)
        .max_reconnects(0)
        .connect(format!("nats://{}", info.ports.client))
        .await
        .expect("sys user connects over TLS");
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request("$SYS.REQ.SERVER.PING", "".into()),
    )
    .await
    .expect("PING answered within 5 s")
    .unwrap();
    let pong: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(pong["server"]["name"], "zester", "{pong}");
    drop(client);

    supervisor.shutdown().await.expect("clean shutdown");
    assert!(gone(info.pid), "nats-server {} still runs", info.pid);
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(libc::pid_t::try_from(info.pid).unwrap(), 0) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ESRCH),
        "the child was reaped"
    );
    for addr in [info.ports.client, monitor] {
        std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr} not free: {e}"));
    }
    let leftovers: Vec<_> = std::fs::read_dir(setup.ports_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ports"))
        .collect();
    assert!(leftovers.is_empty(), "ports files left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_child_is_restarted_with_the_same_config() {
    let setup = Setup::new("127.0.0.1:0", "127.0.0.1:0");
    let binary = common::nats_server_path();
    let supervisor = Supervisor::start(setup.settings(&binary, "127.0.0.1:0", "127.0.0.1:0"))
        .await
        .expect("nats-server starts");
    let first = supervisor.info();

    common::sigkill(first.pid);
    wait_until("a new child is up", Duration::from_secs(20), || {
        supervisor.info().pid != first.pid
    })
    .await;
    let second = supervisor.info();
    assert_eq!(second.restarts, 1);
    assert!(gone(first.pid));
    assert!(matches!(
        *supervisor.subscribe().borrow(),
        ChildEvent::Started { pid, restarts: 1, .. } if pid == second.pid
    ));
    // Port 0 was asked for, so the port may have changed; either way it answers.
    let line = info_line(second.ports.client).await;
    assert!(line.contains("\"tls_required\":true"), "{line}");

    supervisor.shutdown().await.expect("clean shutdown");
    assert!(gone(second.pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_is_reported_by_the_child_which_keeps_running() {
    let setup = Setup::new("127.0.0.1:0", "127.0.0.1:0");
    let binary = common::nats_server_path();
    let supervisor = Supervisor::start(setup.settings(&binary, "127.0.0.1:0", "127.0.0.1:0"))
        .await
        .expect("nats-server starts");
    let info = supervisor.info();
    let handle = supervisor.reload_handle();
    assert_eq!(
        supervisor.reload().await.expect("nats-server reloads"),
        info.pid
    );
    assert_eq!(supervisor.info(), info, "the same child, not a restart");

    // A setting nats-server cannot change while running: it says so, and keeps running.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, format!("{text}\nserver_name: renamed\n")).unwrap();
    match handle.reload().await {
        Err(BrokerError::ReloadFailed { pid, reason }) => {
            assert_eq!(pid, info.pid);
            assert!(reason.contains("ServerName"), "{reason}");
        }
        other => panic!("expected ReloadFailed, got {other:?}"),
    }
    assert!(!gone(info.pid));
    assert!(matches!(
        *supervisor.subscribe().borrow(),
        ChildEvent::Started { pid, restarts: 0, .. } if pid == info.pid
    ));

    supervisor.shutdown().await.expect("clean shutdown");
    assert!(matches!(
        handle.reload().await,
        Err(BrokerError::NotSupervised)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_port_stays_the_same_after_a_restart() {
    // A port that was free a moment ago; another process taking it in between would fail
    // the start with PortInUse, not pass wrongly.
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let setup = Setup::new(&listen, "127.0.0.1:0");
    let binary = common::nats_server_path();
    let supervisor = Supervisor::start(setup.settings(&binary, &listen, "127.0.0.1:0"))
        .await
        .expect("nats-server starts on the fixed port");
    let first = supervisor.info();
    assert_eq!(first.ports.client.to_string(), listen);

    common::sigkill(first.pid);
    wait_until("a new child is up", Duration::from_secs(20), || {
        supervisor.info().pid != first.pid
    })
    .await;
    let second = supervisor.info();
    assert_eq!(second.ports.client, first.ports.client);
    let line = info_line(second.ports.client).await;
    assert!(line.starts_with("INFO {"), "{line}");

    supervisor.shutdown().await.expect("clean shutdown");
    assert!(gone(second.pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_port_is_refused_before_anything_is_spawned() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("spawned");
    let fake = script(
        dir.path(),
        "nats-server",
        &format!("touch '{}'\nexec sleep 30\n", marker.display()),
    );
    let config = dir.path().join("nats-server.conf");
    std::fs::write(&config, "").unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();

    for (listen, monitor, key, flag) in [
        (
            busy_addr.as_str(),
            "127.0.0.1:0",
            "server.listen",
            "--listen",
        ),
        (
            "127.0.0.1:0",
            busy_addr.as_str(),
            "server.monitor",
            "--monitor",
        ),
    ] {
        let err = Supervisor::start(settings_for(&fake, &config, listen, monitor))
            .await
            .expect_err("the port is taken");
        let message = err.to_string();
        match err {
            BrokerError::PortInUse { addr, .. } => assert_eq!(addr.to_string(), busy_addr),
            other => panic!("expected PortInUse, got {other:?}"),
        }
        let port = busy.local_addr().unwrap().port().to_string();
        for needle in [
            port.as_str(),
            key,
            flag,
            "zester.toml",
            "stop the other process",
        ] {
            assert!(
                message.contains(needle),
                "{needle:?} missing from: {message}"
            );
        }
    }
    assert!(!marker.exists(), "something was spawned");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loop_is_given_up_with_the_output() {
    let setup = Setup::new("127.0.0.1:0", "127.0.0.1:0");
    let real = common::nats_server_path();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started-once");
    // The first run is the real server; every later run fails at once, like a server whose
    // config broke after it started.
    let fake = script(
        dir.path(),
        "nats-server",
        &format!(
            "if [ ! -e '{marker}' ]; then\n  : > '{marker}'\n  exec '{real}' \"$@\"\nfi\n\
             echo \"fake nats-server: failing on purpose; args: $*\" >&2\nexit 1\n",
            marker = marker.display(),
            real = real.display(),
        ),
    );
    let mut settings = setup.settings(&fake, "127.0.0.1:0", "127.0.0.1:0");
    settings.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        reset_after: Duration::from_secs(30),
        crash_limit: 5,
        crash_window: Duration::from_secs(60),
    };
    let supervisor = Supervisor::start(settings)
        .await
        .expect("the first run is the real server");
    let first = supervisor.info();
    let gave_up = supervisor.gave_up();

    common::sigkill(first.pid);
    let error = tokio::time::timeout(Duration::from_secs(20), gave_up)
        .await
        .expect("the supervisor gives up within 20 s");
    assert!(matches!(
        *supervisor.subscribe().borrow(),
        ChildEvent::GaveUp { exits: 5, .. }
    ));
    assert_eq!(supervisor.info().pid, first.pid, "no restart came up");
    check_crash_loop(error, &setup.config);
    match supervisor.shutdown().await {
        Err(error) => check_crash_loop(error, &setup.config),
        Ok(()) => panic!("shutdown hid the crash loop"),
    }
}

fn check_crash_loop(error: BrokerError, config: &Path) {
    let message = error.to_string();
    let BrokerError::CrashLoop {
        exits,
        window,
        last_log_lines,
    } = error
    else {
        panic!("expected CrashLoop, got {error:?}");
    };
    assert_eq!(exits, 5);
    assert_eq!(window, Duration::from_secs(60));
    let failures: Vec<_> = last_log_lines
        .iter()
        .filter(|l| l.contains("fake nats-server: failing on purpose"))
        .collect();
    assert_eq!(failures.len(), 4, "{last_log_lines:#?}");
    // Every restart was given the same config file.
    let config = config.display().to_string();
    assert!(
        failures
            .iter()
            .all(|l| l.ends_with(&format!("-c {config}"))),
        "{failures:#?}"
    );
    // The real server's own lines come first, re-tagged.
    assert!(
        last_log_lines.iter().any(|l| l.starts_with("[INF] ")),
        "{last_log_lines:#?}"
    );
    assert!(
        message.contains("5 times") && message.contains("failing on purpose"),
        "{message}"
    );
}

/// Kills a process when dropped, so a failing test leaves nothing running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn no_orphan_when_the_parent_is_killed() {
    let setup = Setup::new("127.0.0.1:0", "127.0.0.1:0");
    let mut helper = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "orphan_parent_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ORPHAN_ENV, &setup.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = helper.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest may have written "test orphan_parent_helper ... " on the same line.
            if let Some((_, pid)) = line.split_once(CHILD_PID_PREFIX) {
                let _ = tx.send(pid.trim().parse::<u32>());
            }
        }
    });
    let pid = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the helper reports its nats-server pid")
        .unwrap();
    assert!(!gone(pid), "nats-server {pid} is not running");

    // SIGKILL: the helper gets no chance to stop its child itself.
    helper.0.kill().unwrap();
    helper.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let orphaned = !gone(pid);
    if orphaned {
        common::sigkill(pid);
    }
    assert!(!orphaned, "nats-server {pid} outlived its SIGKILLed parent");
}

/// Not a test of its own: the parent process for `no_orphan_when_the_parent_is_killed`, which
/// runs this test binary again with `ZESTER_TEST_ORPHAN_PARENT` set. Returns at once otherwise.
#[test]
fn orphan_parent_helper() {
    let Some(config) = std::env::var_os(ORPHAN_ENV) else {
        return;
    };
    let config = PathBuf::from(config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let binary = common::nats_server_path();
        let settings = settings_for(&binary, &config, "127.0.0.1:0", "127.0.0.1:0");
        let supervisor = Supervisor::start(settings).await.expect("helper starts");
        println!("{CHILD_PID_PREFIX}{}", supervisor.info().pid);
        std::io::stdout().flush().unwrap();
        // The outer test SIGKILLs this process long before this ends.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _ = supervisor.shutdown().await;
    });
}
