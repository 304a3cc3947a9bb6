//! `zester up` as a real process on its own fresh home, for tests that drive it as a user does:
//! spawned with the built binary, ready once `runtime.json` appears, its log kept in a file,
//! killed (and reaped) when the test ends or fails.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `zester up` child process on its own home; killed if the test fails.
pub struct Up {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Up {
    pub fn start() -> Up {
        let mut up = Up {
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        up.launch();
        up
    }

    /// Starts `zester up` again on the home of a stopped (or killed) one.
    pub fn restart(mut old: Up) -> Up {
        if let Some(mut child) = old.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(old.home().join("nats/runtime.json"));
        old.launch();
        old
    }

    /// An [`Up`] on a home made by `zester init` with `zester_toml` already in place, not
    /// started ([`Up::launch`], [`Up::launch_with`]).
    pub fn configured(zester_toml: &str) -> Up {
        let up = Up {
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(up.home()).unwrap();
        std::fs::write(up.home().join("zester.toml"), zester_toml).unwrap();
        let init = super::zester(&up.home(), &["init"]);
        assert!(
            init.status.success(),
            "zester init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        up
    }

    /// Spawns `zester up` on this home and waits until it is ready.
    pub fn launch(&mut self) {
        self.launch_with(&[]);
    }

    /// [`Up::launch`] with `args` after `zester up`'s own test arguments.
    pub fn launch_with(&mut self, args: &[&str]) {
        self.spawn_with(args);
        self.wait_ready(Duration::from_secs(60));
    }

    /// Waits (at most `limit`) until the spawned `zester up` says it is ready.
    pub fn wait_ready(&self, limit: Duration) {
        self.wait_for(limit, "runtime.json", || self.is_ready());
    }

    /// Whether the spawned `zester up` said it is ready (wrote `runtime.json`).
    pub fn is_ready(&self) -> bool {
        self.home().join("nats/runtime.json").exists()
    }

    /// Stops `zester up` as a service manager does (SIGTERM) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Spawns `zester up` (its log starts afresh) without waiting for it to be ready: nodes
    /// of a cluster become ready only together.
    pub fn spawn_with(&mut self, args: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join("zester.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_zester"))
            .arg("--home")
            .arg(self.home())
            .args(["up", "--listen", "127.0.0.1:0", "--monitor", "127.0.0.1:0"])
            .args(args)
            .env_remove("ZESTER_METRICS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn zester up");
        self.child = Some(child);
    }

    pub fn home(&self) -> std::path::PathBuf {
        self.dir.path().join("home")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zester.log")).unwrap_or_default()
    }

    /// The end of the log that says why ([`super::log_tail`]).
    pub fn log_tail(&self) -> String {
        super::log_tail(&self.log())
    }

    pub fn runtime(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.home().join("nats/runtime.json")).unwrap(),
        )
        .unwrap()
    }

    pub fn nats_pid(&self) -> i32 {
        std::fs::read_to_string(self.home().join("nats/nats-server.pid"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    }

    pub fn zester(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_zester"))
            .arg("--home")
            .arg(self.home())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn wait_for(&self, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen; zester log:\n{}\n\
                 --- its last lines of zester's own and nats-server's warnings:\n{}",
                self.log(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, signal) };
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
