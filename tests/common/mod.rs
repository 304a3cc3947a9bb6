//! The one helper integration tests use to run a real nats-server and to find the interop
//! tools (Python venv, Node package).
//!
//! Each `tests/*.rs` file is its own crate and does `mod common;`, using only part of this, so
//! unused items are allowed. A [`NatsServer`] owns its process and a temp directory holding the
//! config, the log and the ports file; dropping it kills and reaps the process, so no test can
//! leak a server even when it panics. Servers listen on 127.0.0.1 with a port the OS picks, so
//! tests run in parallel without coordinating ports.
#![allow(dead_code)]

pub mod appliance;
pub mod cluster;
pub mod nodes;
pub mod up;

use std::collections::HashMap;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use zester::appliance::broker::binary;

/// How long a server may take to accept TCP connections before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// File names inside a server's temp directory.
const CONFIG_FILE: &str = "nats-server.conf";
const LOG_FILE: &str = "nats-server.log";
const STDERR_FILE: &str = "nats-server.stderr";

/// A running nats-server child; killed and reaped on drop.
pub struct NatsServer {
    child: Child,
    // Declared after `child` and only removed after `Drop::drop` has reaped the process, so the
    // server never runs without its files.
    dir: tempfile::TempDir,
    port: u16,
}

impl NatsServer {
    /// Starts nats-server with `config` (nats-server config text WITHOUT listen/port/http keys);
    /// the helper adds `listen: 127.0.0.1:-1` (random port) itself, writes the config to a temp
    /// dir, learns the actual port from the server's ports file, and waits until a TCP connect to
    /// the port succeeds (timeout 10 s, panics with the server log on failure).
    ///
    /// The server runs with the temp dir as its working directory, so relative paths in
    /// `config` (a JetStream `store_dir`, say) stay inside it.
    pub fn start(config: &str) -> NatsServer {
        let binary = nats_server_path();
        let dir = tempfile::Builder::new()
            .prefix("zester-nats-")
            .tempdir()
            .expect("create temp dir for nats-server");
        let config_path = dir.path().join(CONFIG_FILE);
        fs::write(&config_path, render_config(config, dir.path()))
            .expect("write nats-server config");
        let stderr = File::create(dir.path().join(STDERR_FILE)).expect("create stderr file");
        let stdout = stderr.try_clone().expect("clone stderr file");

        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", binary.display()));

        // Built before waiting so that a panic below still kills the process on unwind.
        let mut server = NatsServer {
            child,
            dir,
            port: 0,
        };
        server.port = server.wait_until_ready();
        server
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's temp dir (config, log, ports file). Tests that need files of their own
    /// should use a separate tempdir rather than writing here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file the server was started with (the caller's text plus the helper's keys).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join(CONFIG_FILE)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server has logged so far: its log file, then anything it wrote to
    /// stdout/stderr (config errors are printed there before logging starts).
    pub fn log(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let mut log = read(LOG_FILE);
        let stderr = read(STDERR_FILE);
        if !stderr.trim().is_empty() {
            log.push_str("--- stdout/stderr ---\n");
            log.push_str(&stderr);
        }
        log
    }

    /// Polls for the ports file and then for a successful TCP connect; panics with the log if
    /// the server exits or the deadline passes.
    fn wait_until_ready(&mut self) -> u16 {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut port = None;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => panic!(
                    "nats-server exited during startup ({status}); config:\n{}\nlog:\n{}",
                    self.config_text(),
                    self.log()
                ),
                Ok(None) => {}
                Err(e) => panic!("could not poll nats-server: {e}"),
            }
            if port.is_none() {
                port = self.port_from_ports_file();
            }
            if let Some(p) = port {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return p;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "nats-server did not accept connections within {START_TIMEOUT:?} \
                     (port {port:?}); config:\n{}\nlog:\n{}",
                    self.config_text(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reads `<name>_<pid>.ports`, which nats-server writes once its listeners are up:
    /// `{"nats": ["nats://127.0.0.1:PORT"], ...}`.
    fn port_from_ports_file(&self) -> Option<u16> {
        let suffix = format!("_{}.ports", self.child.id());
        let entry = fs::read_dir(self.dir.path())
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
        // The file may be caught half-written; an unparsable read just means "not yet".
        let ports: serde_json::Value =
            serde_json::from_slice(&fs::read(entry.path()).ok()?).ok()?;
        let url = ports.get("nats")?.as_array()?.first()?.as_str()?;
        url.rsplit(':').next()?.parse().ok()
    }

    fn config_text(&self) -> String {
        fs::read_to_string(self.config_path()).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Either may fail only if the process is already gone, which is what we want anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last 40 lines of a `zester up` log that are zester's own (but for the "allowed" audit
/// lines) or nats-server's warnings and errors: a failure message ends with them, since CI
/// shows a long log cut in the middle. A line repeated but for its numbers (nats-server's
/// "Error trying to connect to route (attempt 57)" every second) is kept once, at its last
/// place, with how often it came.
pub fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("INFO audit: allowed"))
        .filter(|l| {
            !l.contains(" nats-server: ")
                || l.contains(" WARN ")
                || l.contains(" ERROR ")
                || l.contains("[WRN]")
                || l.contains("[ERR]")
        })
        .collect();
    // A line's shape: without its timestamp (the first word) and its digits. Each shape is
    // kept at its last place, with how often it came.
    let shape = |line: &str| -> String {
        let text = line.split_once(' ').map_or(line, |(_, rest)| rest);
        text.chars().filter(|c| !c.is_ascii_digit()).collect()
    };
    let mut last: HashMap<String, (usize, usize)> = HashMap::new();
    for (at, line) in lines.iter().enumerate() {
        let (place, count) = last.entry(shape(line)).or_default();
        (*place, *count) = (at, *count + 1);
    }
    let kept: Vec<String> = lines
        .iter()
        .enumerate()
        .filter_map(|(at, line)| match last[&shape(line)] {
            (place, _) if place != at => None,
            (_, 1) => Some(line.to_string()),
            (_, count) => Some(format!("{line}  [{count} lines like this one]")),
        })
        .collect();
    kept[kept.len().saturating_sub(40)..].join("\n")
}

/// Every node's end of the log for a failure message, the nodes that are not ready last (CI
/// keeps a long message's end): `(name, ready, log)` of each.
pub fn nodes_report<'a>(nodes: impl IntoIterator<Item = (&'a str, bool, String)>) -> String {
    let mut nodes: Vec<_> = nodes.into_iter().collect();
    nodes.sort_by_key(|(_, ready, _)| !*ready);
    nodes
        .iter()
        .map(|(name, ready, log)| {
            format!(
                "--- node {name}, ready: {ready}; its last lines:\n{}",
                log_tail(log)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A child process a test started, killed and reaped when dropped: also when the test
/// panics before it would have stopped it.
pub struct Reaped(Option<std::process::Child>);

impl Reaped {
    /// Takes charge of `child`.
    pub fn new(child: std::process::Child) -> Reaped {
        Reaped(Some(child))
    }

    /// Waits for it to end by itself and returns its output.
    pub fn output(mut self) -> std::process::Output {
        let child = self.0.take().expect("not reaped yet");
        child.wait_with_output().expect("wait for the child")
    }
}

/// The child itself, for a test that signals or waits for it before the drop.
impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("not reaped yet")
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("not reaped yet")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The caller's config followed by the keys the helper owns. nats-server lets a later key
/// override an earlier one, so these win even if the caller set them by mistake.
fn render_config(config: &str, dir: &Path) -> String {
    format!(
        "{config}\n\n# Added by tests/common: random port on loopback, files in the temp dir.\n\
         listen: \"127.0.0.1:-1\"\n\
         ports_file_dir: {}\n\
         log_file: {}\n",
        quote(dir),
        quote(&dir.join(LOG_FILE)),
    )
}

/// A double-quoted nats-server config string (JSON escaping is a subset it accepts).
pub fn quote(path: &Path) -> String {
    let text = path
        .to_str()
        .unwrap_or_else(|| panic!("temp path is not UTF-8: {}", path.display()));
    serde_json::to_string(text).expect("a string always serialises")
}

/// The repository root (this crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The nats-server binary zester would use, checked to be the expected version; panics with
/// the locator's message (which says how to install it) otherwise.
pub fn nats_server_path() -> PathBuf {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PATH.get_or_init(|| {
        let found = binary::locate(None).map_err(|e| e.to_string())?;
        binary::check_version(&found.path).map_err(|e| e.to_string())?;
        Ok(found.path)
    });
    match found {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// `<repo>/.venv/bin/python`, with nats-py and nkeys installed; panics if missing.
pub fn python() -> PathBuf {
    let python = repo_root().join(".venv").join("bin").join("python");
    if !python.exists() {
        panic!(
            "{} is missing: run scripts/setup-interop (creates .venv with nats-py and nkeys)",
            python.display()
        );
    }
    python
}

/// `<repo>/scripts/compat`, the Node interop package; panics if its node_modules is missing.
pub fn node_compat_dir() -> PathBuf {
    let dir = repo_root().join("scripts").join("compat");
    if !dir.join("node_modules").is_dir() {
        panic!(
            "{} is missing: run scripts/setup-interop (runs npm ci in scripts/compat)",
            dir.join("node_modules").display()
        );
    }
    dir
}

/// Runs the real nats.py client (`tests/interop/nats_py_peel.py`) as peel-a against `url`
/// with `creds` and the CA `ca`: it publishes on its own subject and on peel-b's, and
/// subscribes to peel-b's commands. Returns its JSON report (see the script's doc).
pub fn nats_py_peel_a(url: &str, creds: &Path, ca: &Path) -> serde_json::Value {
    let out = Command::new(python())
        .arg(repo_root().join("tests/interop/nats_py_peel.py"))
        .args(["--url", url])
        .arg("--creds")
        .arg(creds)
        .arg("--ca")
        .arg(ca)
        .args(["--own", "zester.event.peel-a.py"])
        .args(["--foreign", "zester.event.peel-b.py"])
        .args(["--foreign-sub", "zester.cmd.peel-b"])
        .args([
            "--inbox-prefix",
            "_INBOX.peel-a",
            "--name",
            "zester-peel-peel-a",
        ])
        .output()
        .expect("run nats_py_peel.py");
    assert!(
        out.status.success(),
        "nats_py_peel.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "nats_py_peel.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Publishes `payload` on `subject` every 200 ms until `subscriber` receives it (up to 10 s).
/// async-nats' `flush` only empties the client's buffer, so a subscription made on another
/// connection is not known to be registered on the server until a message gets through.
pub async fn publish_until_received(
    publisher: &async_nats::Client,
    subject: &str,
    payload: &'static [u8],
    subscriber: &mut async_nats::Subscriber,
) -> async_nats::Message {
    use futures_util::StreamExt;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        publisher
            .publish(subject.to_string(), payload.into())
            .await
            .expect("publish");
        publisher.flush().await.expect("flush");
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), subscriber.next()).await
        {
            return message;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing published on {subject} reached the subscriber"
        );
    }
}

/// Makes sure the server has processed everything `client` sent so far (its subscriptions
/// included) by a request round trip on `subject`, a subject the client may publish to and
/// nobody serves: the server answers "no responders" only after the preceding operations,
/// and only to an admitted connection, so this also proves the client was let in (async-nats's
/// `connect` returns at any first server op, possibly while the callout still decides, and
/// `flush` only writes). Fails the test otherwise.
pub async fn sync(client: &async_nats::Client, subject: &str) {
    let answer = tokio::time::timeout(
        Duration::from_secs(15),
        client.request(subject.to_string(), "".into()),
    )
    .await;
    assert!(
        matches!(&answer, Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "no round trip on {subject} (not admitted, or the subject is served or not allowed): {answer:?}"
    );
}

/// Whether peel `id`'s `client` was admitted: a request on one of its own event subjects,
/// which nothing serves, answered "no responders" (the server answers only an admitted
/// connection; `connect` and `flush` succeeding prove nothing). The error says what came.
pub async fn peel_admitted(client: &async_nats::Client, id: &str) -> Result<(), String> {
    peel_admitted_within(client, id, Duration::from_secs(15)).await
}

/// [`peel_admitted`], waiting at most `within` for the round trip.
pub async fn peel_admitted_within(
    client: &async_nats::Client,
    id: &str,
    within: Duration,
) -> Result<(), String> {
    let answer = tokio::time::timeout(
        within,
        client.request(format!("zester.event.{id}.probe"), "".into()),
    )
    .await;
    match answer {
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        other => Err(format!("no round trip as {id}: {other:?}")),
    }
}

/// Makes sure the server has processed a peel's connection and subscriptions, and admitted it:
/// a request on one of its own event subjects (which it may publish to) comes back as "no
/// responders".
pub async fn sync_peel(client: &async_nats::Client, id: &str) {
    sync(client, &format!("zester.event.{id}.sync-probe")).await;
}

/// Polls `done` every 20 ms until it holds; fails the test after `timeout`, naming `what`.
pub async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True while process `pid` runs (a zombie or a dead process does not), from `/proc`.
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after) = stat.rsplit_once(')')?;
            after
                .split_whitespace()
                .next()
                .map(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// A port on 127.0.0.1 that was free a moment ago (for a server that must be told its port
/// before it starts; another process taking it in between fails that start, never passes it).
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range, where no outgoing connection takes a port: a node
    // that restarts on its port must find it still free, not taken meanwhile by some other
    // test's client (seen in CI: "127.0.0.1:36777 is already in use").
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 12_000 {
        use rand::Rng;
        static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..200 {
            let port = rand::thread_rng().gen_range(10_000..low);
            if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Runs `zester --home HOME ARGS…` (the binary cargo built for the tests) to completion, with
/// `ZESTER_HOME` unset so that only `--home` counts.
pub fn zester(home: &Path, args: &[&str]) -> std::process::Output {
    zester_with(home, args, &[], None)
}

/// [`zester`] with extra environment variables and, when given, `stdin` fed to it.
pub fn zester_with(
    home: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    use std::io::Write;
    let mut command = Command::new(env!("CARGO_BIN_EXE_zester"));
    command
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("ZESTER_HOME")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("run zester");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input)
            .expect("feed zester's stdin");
    }
    child.wait_with_output().expect("zester ran")
}

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .expect("the file exists")
        .permissions()
        .mode()
        & 0o777
}

/// Sends SIGKILL to `pid` (an error only means it is already gone).
pub fn sigkill(pid: u32) {
    // SAFETY: a plain syscall; it touches no memory of ours.
    unsafe {
        libc::kill(libc::pid_t::try_from(pid).unwrap_or(0), libc::SIGKILL);
    }
}

/// GET `path` from `base` (`http://HOST:PORT`) over plain HTTP/1.0 and parse the JSON body.
pub fn http_get_json(base: &str, path: &str) -> serde_json::Value {
    let body = http_get_text(base, path);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}

/// GET `path` from `base` (`http://HOST:PORT`) over plain HTTP/1.0: the body of a 200 answer.
pub fn http_get_text(base: &str, path: &str) -> String {
    try_http_get_text(base, path).unwrap_or_else(|e| panic!("GET {base}{path}: {e}"))
}

/// [`http_get_text`], with what went wrong instead of a panic (a port not reachable yet).
pub fn try_http_get_text(base: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").ok_or("not an http:// URL")?;
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("an HTTP response without a body")?;
    if !(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200")) {
        return Err(head.to_string());
    }
    Ok(body.to_string())
}
