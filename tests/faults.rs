//! Faults a user can run into: `zester up` with a missing or wrong nats-server, a port already
//! taken, a damaged config or account JWT — each a clear error naming the fix; `kill -9` at
//! random moments of `init`, `creds issue`, `creds rotate` and `key accept` (of the CLI and of
//! the running `zester up`), after which every file is its old or its new version and every key
//! record is whole; and a disk that fills up under `creds issue`. One known bug is pinned by
//! an ignored test (`--finish` after an interrupted signing-key rotation).
//!
//! Everything runs as real processes: the `zester` binary and the nats-server it supervises.
//! Random moments come from seeded RNGs, so a failing round can be replayed.

mod common;

use common::mode;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
        std::thread::sleep(Duration::from_millis(5));
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
            let path = home.join("peels").join(&name);
            match name.as_str() {
                "web-01.creds" => {}
                // The curve seed beside the creds: a secret, whole.
                "web-01.xk" => {
                    assert_eq!(mode(&path), 0o600, "round {round}");
                    let seed = std::fs::read_to_string(&path).unwrap();
                    assert!(nkeys::XKey::from_seed(seed.trim()).is_ok(), "round {round}");
                }
                // The public profile: whole JSON.
                "web-01.json" => {
                    zester::peel::profile::read(&path)
                        .unwrap_or_else(|e| panic!("round {round}: {e}"));
                }
                other => assert!(other.ends_with(".tmp"), "unexpected file {other}"),
            }
        }
    }
}

/// Runs a short `zester` command (no appliance start) to completion.
fn run(home: &Path, args: &[&str]) -> Output {
    common::zester(home, args)
}

fn spawn_quiet(home: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zester"))
        .arg("--home")
        .arg(home)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The regular files of `dir` by name.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Asserts `auth/` is whole after a kill: no file of `before` is gone, each file is byte for
/// byte its old version or a complete new one (seeds, JWTs and creds parse, the hierarchy
/// assembles, every creds chains to the home), modes are 0600 for secrets and 0644 for JWTs,
/// and the only other names are temp files of an interrupted write (never read by zester).
/// Returns how many files were replaced.
fn assert_auth_whole(home: &Path, before: &BTreeMap<String, Vec<u8>>, what: &str) -> usize {
    let auth = home.join("auth");
    let after = snapshot(&auth);
    for name in before.keys() {
        assert!(after.contains_key(name), "{what}: auth/{name} is gone");
    }
    zester::home::Home::at(home)
        .load_authority()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut changed = 0;
    for (name, bytes) in &after {
        let path = auth.join(name);
        if name.starts_with('.') && name.ends_with(".tmp") {
            continue;
        }
        let expected = match name.rsplit_once('.').map(|(_, ext)| ext) {
            Some("nk" | "xk" | "creds") => 0o600,
            Some("jwt") => 0o644,
            _ => panic!("{what}: unexpected file auth/{name}"),
        };
        assert_eq!(mode(&path), expected, "{what}: mode of auth/{name}");
        if before.get(name) != Some(bytes) {
            changed += 1;
        }
        if name.ends_with(".creds") {
            let inspect = run(home, &["creds", "inspect", path.to_str().unwrap()]);
            assert!(
                inspect.status.success(),
                "{what}: auth/{name}: {}{}",
                String::from_utf8_lossy(&inspect.stdout),
                stderr(&inspect)
            );
        }
    }
    changed
}

/// True while a nats-server with this pid runs (a zombie waiting for its reaper does not run;
/// a pid taken over by another program is not ours).
fn nats_server_runs(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    stat.contains("(nats-server)") && !state.starts_with('Z') && !state.starts_with('X')
}

fn wait_nats_server_gone(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while nats_server_runs(pid) {
        assert!(
            Instant::now() < deadline,
            "{what}: nats-server {pid} outlived its zester"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `zester up` process; SIGKILLed on drop (its nats-server dies with it by its parent-death
/// signal), so a failing test leaves nothing running.
struct UpProcess {
    child: Option<Child>,
    home: PathBuf,
    log: PathBuf,
    nats_pid: u32,
}

impl UpProcess {
    /// Spawns `zester up` on `home` and waits until it is ready: `runtime.json` names this
    /// process (a SIGKILLed one leaves a stale file behind) and `zester status` answers.
    fn start(home: &Path, log: &Path) -> UpProcess {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_zester"))
            .arg("--home")
            .arg(home)
            .args(["up", "--listen", "127.0.0.1:0", "--monitor", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut up = UpProcess {
            child: Some(child),
            home: home.to_path_buf(),
            log: log.to_path_buf(),
            nats_pid: 0,
        };
        let pid = up.child.as_ref().unwrap().id();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = up.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("zester up exited ({status}) before ready:\n{}", up.log());
            }
            let runtime = zester::home::runtime::RuntimeInfo::read(&zester::home::Home::at(home));
            if runtime.is_ok_and(|r| r.pid == pid) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "zester up not ready in 30 s:\n{}",
                up.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = run(home, &["status", "--json"]);
        assert!(status.status.success(), "{}\n{}", stderr(&status), up.log());
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        up.nats_pid = status["nats_server"]["pid"].as_u64().unwrap() as u32;
        assert!(nats_server_runs(up.nats_pid));
        up
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs zester; its nats-server must follow.
    fn kill_9(&mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        wait_nats_server_gone(self.nats_pid, "after kill -9 of zester up");
    }

    /// SIGTERM: zester stops its nats-server, removes `runtime.json` and exits 0.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("zester up ignored SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "zester up: {status}\n{}", self.log());
        wait_nats_server_gone(self.nats_pid, "after SIGTERM to zester up");
        assert!(!self.home.join("nats/runtime.json").exists());
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn kill_9_during_rotation_leaves_old_or_new_files_and_up_starts() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let log = dir.path().join("up.log");
    assert!(run(&home, &["init"]).status.success());
    // Without a running appliance each of these writes the home itself (`signing-key` even
    // refuses to run beside one). `--finish` comes after a rotation that completed: see
    // `finish_after_an_interrupted_signing_key_rotation_keeps_up_working`.
    let steps: [&[&str]; 4] = [
        &["creds", "rotate", "master"],
        &["creds", "rotate", "admin"],
        &["creds", "rotate", "signing-key"],
        &["creds", "rotate", "signing-key", "--finish"],
    ];
    // Kills land anywhere in a whole run, measured here first (a slow CI machine only
    // stretches the window).
    let took: Vec<u64> = steps
        .iter()
        .map(|args| {
            let started = Instant::now();
            let out = run(&home, args);
            assert!(out.status.success(), "{}", stderr(&out));
            started.elapsed().as_micros() as u64
        })
        .collect();
    // Per command, how many files each killed run had replaced: shows the kills land before,
    // between and after the writes.
    let mut replaced: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for round in 0..16 {
        let step = round % steps.len();
        let args = steps[step];
        if args.contains(&"--finish") {
            let rotate = run(&home, &["creds", "rotate", "signing-key"]);
            assert!(rotate.status.success(), "{}", stderr(&rotate));
        }
        let before = snapshot(&home.join("auth"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_zester"));
        command.arg("--home").arg(&home).args(args);
        kill_after(command, rng.gen_range(0..took[step] * 11 / 10));
        let what = format!("round {round}, killed `zester {}`", args.join(" "));
        let changed = assert_auth_whole(&home, &before, &what);
        replaced.entry(args.join(" ")).or_default().push(changed);
        UpProcess::start(&home, &log).stop();
    }
    println!("files replaced by killed rotations: {replaced:?}");
}

/// Pending key records, as enrolment would leave them, put in the offline journal that
/// `zester up` imports at start.
fn journal_pending(home: &Path, ids: &[String]) {
    let home = zester::home::Home::at(home);
    for id in ids {
        let record = zester::appliance::keys::KeyRecord::new_pending(
            zester::identity::peel_id::PeelId::parse(id).unwrap(),
            &nkeys::KeyPair::new_user().public_key(),
            Some(&nkeys::XKey::new().public_key()),
            "test",
            "enrolment request",
            zester::home::now_unix(),
        )
        .unwrap();
        zester::appliance::keys::journal::record(&home, &record).unwrap();
    }
}

/// `zester key list --json` as id → state, each record's state agreeing with its last history
/// entry. Retried for a few seconds: right after an online rotation of the master creds the
/// appliance's own master connection is kicked and comes back with its new key, and an admin
/// request in that moment finds no responder.
fn key_states(home: &Path, what: &str) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = run(home, &["key", "list", "--json"]);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(out.status.success(), "{what}: key list: {}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|key| {
            let state = key["state"].as_str().unwrap().to_string();
            assert_eq!(
                key["last_change"]["state"].as_str(),
                Some(state.as_str()),
                "{what}: half-written record {key}"
            );
            (key["id"].as_str().unwrap().to_string(), state)
        })
        .collect()
}

#[test]
fn kill_9_during_key_accept_and_online_rotation_loses_no_key() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let log = dir.path().join("up.log");
    assert!(run(&home, &["init"]).status.success());
    let ids: Vec<String> = (0..8).map(|i| format!("peel-{i:02}")).collect();
    journal_pending(&home, &ids);
    let mut up = UpProcess::start(&home, &log);
    // A `key accept` is a connection and a request like `key list`: kills land within about
    // the time one takes here.
    let started = Instant::now();
    let states = key_states(&home, "start");
    let window = started.elapsed().as_micros() as u64 * 3 / 2;
    assert_eq!(states.len(), ids.len(), "{states:?}");
    assert!(states.values().all(|s| s == "pending"), "{states:?}");

    let mut accepted = BTreeSet::new();
    let mut up_kills = 0;
    let mut outcomes = Vec::new();
    for (round, id) in ids.iter().enumerate() {
        let before = snapshot(&home.join("auth"));
        let mut clients = vec![spawn_quiet(&home, &["key", "accept", id])];
        // Every other round the appliance also rewrites a service creds file meanwhile.
        let role = ["master", "admin"][round / 2 % 2];
        if round % 2 == 1 {
            clients.push(spawn_quiet(&home, &["creds", "rotate", role]));
        }
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..window)));
        // The CLIs always go: with their appliance gone they would wait out their timeouts.
        let kill_up = rng.gen_bool(0.6);
        if kill_up {
            up.kill_9();
            up_kills += 1;
        }
        for mut client in clients {
            let _ = client.kill();
            let _ = client.wait();
        }
        let what = format!("round {round} ({id}, zester up killed: {kill_up})");
        if kill_up {
            assert_auth_whole(&home, &before, &what);
            up = UpProcess::start(&home, &log);
        }
        let states = key_states(&home, &what);
        assert_eq!(
            states.keys().collect::<Vec<_>>(),
            ids.iter().collect::<Vec<_>>(),
            "{what}: keys lost or added"
        );
        for (key, state) in &states {
            if accepted.contains(key) {
                assert_eq!(state, "accepted", "{what}: {key}");
            } else if key != id {
                assert_eq!(state, "pending", "{what}: {key}");
            } else {
                assert!(state == "pending" || state == "accepted", "{what}: {state}");
            }
        }
        outcomes.push(format!(
            "{}{}",
            &states[id][..1],
            if kill_up { "+up" } else { "" }
        ));
        // Whatever happened, the appliance can still finish the job. (An accept the killed CLI
        // had sent may land just after the list above: then this one finds it accepted.)
        if states[id] == "pending" {
            let out = run(&home, &["key", "accept", id]);
            assert!(
                out.status.success() || key_states(&home, &what)[id] == "accepted",
                "{what}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                stderr(&out)
            );
        }
        accepted.insert(id.clone());
        assert_eq!(key_states(&home, &what)[id], "accepted", "{what}");
    }
    assert!(up_kills > 0);
    up.stop();
    // p/a: the key was still pending / already accepted after the kill; +up: zester up was
    // killed too.
    println!("key accept kills (window {window} µs): {outcomes:?}");
}

/// Runs `zester` with its file size limit at `limit` bytes and SIGXFSZ ignored, so a write past
/// the limit fails with EFBIG the way a full disk fails with ENOSPC (instead of killing it).
fn run_with_file_size_limit(home: &Path, args: &[&str], limit: u64) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zester"));
    command.arg("--home").arg(home).args(args);
    let hook = move || {
        let rlimit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: runs in the forked child before exec; setrlimit and signal are
        // async-signal-safe, and an ignored signal stays ignored across exec.
        unsafe {
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe calls (see above).
    unsafe { command.pre_exec(hook) };
    command.output().unwrap()
}

/// A tmpfs mounted over a directory, unmounted on drop (lazily, so a failing test cannot leave
/// it busy).
struct Tmpfs {
    target: std::ffi::CString,
}

impl Tmpfs {
    /// Mounts a `size` tmpfs (mode 0700) over `dir`; Err when this process may not mount.
    fn mount(dir: &Path, size: &str) -> std::io::Result<Tmpfs> {
        use std::os::unix::ffi::OsStrExt;
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let options = std::ffi::CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Tmpfs { target })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // SAFETY: the target is a NUL-terminated string.
        unsafe { libc::umount2(self.target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Fills the file system holding `dir` with one file; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = [0u8; 4096];
    while file.write(&chunk).is_ok_and(|n| n > 0) {}
    path
}

/// A `creds issue` that could not write `creds`: exit 2 with an error naming the file and
/// `reason` (no panic), `creds` as it was (`old`, or absent), no temp file beside it, and no
/// key registered in the journal for a file that was never written.
fn assert_failed_cleanly(
    out: &Output,
    home: &Path,
    creds: &Path,
    old: Option<&[u8]>,
    reason: &str,
) {
    let text = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        text.contains(&creds.display().to_string()) && text.contains(reason),
        "the error names neither {} nor {reason:?}: {text}",
        creds.display()
    );
    assert_eq!(std::fs::read(creds).ok().as_deref(), old, "{text}");
    let dir = creds.parent().unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "temp file left: {name}");
    }
    let id = creds.file_stem().unwrap().to_string_lossy().into_owned();
    if old.is_none() {
        let journal = std::fs::read_dir(home.join("keys/journal"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default();
        assert!(
            !journal
                .iter()
                .any(|n| n.to_string_lossy().ends_with(&format!("-{id}.json"))),
            "{id} was registered without creds: {journal:?}"
        );
    }
}

#[test]
fn a_full_disk_under_creds_issue_fails_cleanly_and_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    assert!(run(&home, &["init"]).status.success());
    let peels = home.join("peels");
    assert!(run(&home, &["creds", "issue", "web-01"]).status.success());
    let old = std::fs::read(peels.join("web-01.creds")).unwrap();

    // Everywhere: a file size limit below a creds file's size (EFBIG, "File too large").
    let out = run_with_file_size_limit(&home, &["creds", "issue", "web-02"], 256);
    assert_failed_cleanly(&out, &home, &peels.join("web-02.creds"), None, "too large");
    let out = run_with_file_size_limit(&home, &["creds", "issue", "web-01", "--force"], 256);
    assert_failed_cleanly(
        &out,
        &home,
        &peels.join("web-01.creds"),
        Some(&old),
        "too large",
    );

    // Where this process may mount (root, as here): a real full file system (ENOSPC) over
    // peels/. Elsewhere (unprivileged CI) only the file size limit above runs.
    let tmpfs = match Tmpfs::mount(&peels, "64k") {
        Ok(tmpfs) => tmpfs,
        Err(e) => {
            println!("no tmpfs ({e}): the disk-full case ran with RLIMIT_FSIZE only");
            return;
        }
    };
    println!("the disk-full case ran with RLIMIT_FSIZE and a full tmpfs");
    assert!(run(&home, &["creds", "issue", "web-03"]).status.success());
    let old = std::fs::read(peels.join("web-03.creds")).unwrap();
    let filler = fill(&peels);
    let out = run(&home, &["creds", "issue", "web-04"]);
    assert_failed_cleanly(&out, &home, &peels.join("web-04.creds"), None, "No space");
    let out = run(&home, &["creds", "issue", "web-03", "--force"]);
    assert_failed_cleanly(
        &out,
        &home,
        &peels.join("web-03.creds"),
        Some(&old),
        "No space",
    );
    // With room again, the same command works.
    std::fs::remove_file(filler).unwrap();
    let out = run(&home, &["creds", "issue", "web-04"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&peels.join("web-04.creds")), 0o600);
    drop(tmpfs);
    assert!(peels.join("web-01.creds").exists(), "tmpfs unmounted");
}

/// `creds rotate signing-key` writes the account JWT, then the new seed, then the service creds.
/// Killed before the creds (simulated here by putting the old ones back), the home still
/// works, since the old signing key stays listed. `--finish` must then re-sign the service
/// creds with the current key before it retires the old one, or `zester up` could no longer
/// connect its callout.
#[test]
fn finish_after_an_interrupted_signing_key_rotation_keeps_up_working() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let log = dir.path().join("up.log");
    assert!(run(&home, &["init"]).status.success());
    let service = ["callout", "master", "admin"];
    let old: Vec<_> = service
        .iter()
        .map(|n| std::fs::read(home.join(format!("auth/{n}.creds"))).unwrap())
        .collect();
    assert!(run(&home, &["creds", "rotate", "signing-key"])
        .status
        .success());
    for (name, bytes) in service.iter().zip(&old) {
        zester::home::write_atomic(&home.join(format!("auth/{name}.creds")), bytes, 0o600).unwrap();
    }
    UpProcess::start(&home, &log).stop();
    let finish = run(&home, &["creds", "rotate", "signing-key", "--finish"]);
    assert!(finish.status.success(), "{}", stderr(&finish));
    UpProcess::start(&home, &log).stop();
}
