//! Faults a user can run into: `zester up` with a missing or wrong nats-server, a port already
//! taken, a damaged config or account JWT — each a clear error naming the fix — and `kill -9`
//! at random moments of `init` and `creds issue`, after which every file is whole.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};

fn zester(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zester"));
    command.arg("--home").arg(home).args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    // `up` must not run forever when a test expects it to fail: it is killed after 20 s.
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn up(home: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["up", "--listen", "127.0.0.1:0", "--monitor", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    zester(home, &args, env)
}

#[test]
fn up_explains_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    assert!(zester(&home, &["init"], &[]).status.success());

    let out = up(&home, &["--nats-server", "/nonexistent/nats-server"], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/nats-server"),
        "{}",
        stderr(&out)
    );

    let fake = dir.path().join("old-nats-server");
    std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.0'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = up(&home, &["--nats-server", fake.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("2.15.1"), "{}", stderr(&out));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let out = zester(
        &home,
        &["up", "--listen", &listen, "--monitor", "127.0.0.1:0"],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&port.to_string()), "{}", stderr(&out));
    assert!(stderr(&out).contains("--listen"), "{}", stderr(&out));
    drop(taken);

    std::fs::write(home.join("zester.toml"), "[server\nlisten = ").unwrap();
    let out = up(&home, &[], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("zester.toml"), "{}", stderr(&out));
    std::fs::write(home.join("zester.toml"), "").unwrap();

    let account = home.join("auth/zester.jwt");
    let text = std::fs::read_to_string(&account).unwrap();
    std::fs::write(&account, &text[..text.len() / 2]).unwrap();
    let out = up(&home, &[], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ZESTER account JWT"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

fn kill_after(mut command: Command, micros: u64) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_micros(micros));
    let _ = child.kill();
    let _ = child.wait();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn kill_9_at_random_moments_leaves_whole_files() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let dir = tempfile::tempdir().unwrap();
    for round in 0..12 {
        let home = dir.path().join(format!("home-{round}"));
        let mut init = Command::new(env!("CARGO_BIN_EXE_zester"));
        init.arg("--home").arg(&home).arg("init");
        kill_after(init, rng.gen_range(0..40_000));
        // Whatever moment it died at, init runs (again) or the home is whole.
        let again = zester(&home, &["init"], &[]);
        let text = stderr(&again);
        assert!(
            again.status.success() || text.contains("already holds a zester home"),
            "round {round}: {text}"
        );
        let creds = home.join("auth/admin.creds");
        let inspect = zester(&home, &["creds", "inspect", creds.to_str().unwrap()], &[]);
        assert!(
            inspect.status.success(),
            "round {round}: {}",
            stderr(&inspect)
        );
        assert_eq!(mode(&home.join("auth/operator.nk")), 0o600);

        // creds issue, killed: the file is absent or complete (and 0600), never partial.
        let mut issue = Command::new(env!("CARGO_BIN_EXE_zester"));
        issue
            .arg("--home")
            .arg(&home)
            .args(["creds", "issue", "web-01"]);
        kill_after(issue, rng.gen_range(0..20_000));
        let peel = home.join("peels/web-01.creds");
        if peel.exists() {
            assert_eq!(mode(&peel), 0o600);
            let inspect = zester(&home, &["creds", "inspect", peel.to_str().unwrap()], &[]);
            assert!(
                inspect.status.success(),
                "round {round}: {}",
                stderr(&inspect)
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(home.join("peels"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        for name in leftovers {
            let name = name.to_string_lossy().into_owned();
            assert!(
                name == "web-01.creds" || name.ends_with(".tmp"),
                "unexpected file {name}"
            );
        }
    }
}
