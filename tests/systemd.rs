//! Running under systemd (issue 19, part 4): `zester up` and `zester peel run` speak the
//! `sd_notify` protocol of `Type=notify` units — `READY=1` (with `MAINPID`) once ready, and
//! `STOPPING=1` on SIGTERM — to the socket in `$NOTIFY_SOCKET`, path or abstract; a Unix
//! datagram socket made by the test stands in for systemd's. The unit files are checked for
//! the lines that make that work.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The next notification on `socket`, within 30 s.
fn next(socket: &UnixDatagram) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn spawn(home: &std::path::Path, notify: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zester"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn up_and_the_peel_agent_tell_systemd_when_they_are_ready() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let up = spawn(
        &home,
        socket_path.to_str().unwrap(),
        &["up", "--listen", "127.0.0.1:0", "--monitor", "127.0.0.1:0"],
    );
    let ready = next(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", up.id())), "{ready}");
    // Ready means ready: the CLI finds it at once.
    assert!(home.join("nats/runtime.json").exists());
    let out = common::zester(&home, &["creds", "issue", "sd-01"]);
    assert!(out.status.success(), "{out:?}");

    // The peel agent, on an abstract socket this time.
    let name = format!("zester-test-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt;
    let abstract_socket = UnixDatagram::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
    )
    .unwrap();
    let creds = home.join("peels/sd-01.creds");
    let peel = spawn(
        &home,
        &format!("@{name}"),
        &["peel", "run", "--creds", creds.to_str().unwrap()],
    );
    let ready = next(&abstract_socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("connected as peel sd-01"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", peel.id())), "{ready}");
    stop(peel);
    assert!(next(&abstract_socket).contains("STOPPING=1"));

    stop(up);
    assert!(next(&socket).contains("STOPPING=1"));
}

#[test]
fn the_unit_files_are_notify_units_that_run_zester() {
    let root = common::repo_root();
    let up = std::fs::read_to_string(root.join("config/systemd/zester.service")).unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/zester up",
        "Restart=on-failure",
    ] {
        assert!(up.lines().any(|l| l == line), "zester.service lacks {line}");
    }
    let peel = std::fs::read_to_string(root.join("config/systemd/zester-peel@.service")).unwrap();
    assert!(peel.lines().any(|l| l == "Type=notify"));
    assert!(peel.contains("zester peel run --dir /var/lib/zester-peel --id %i"));
}
