//! The README's walkthrough is a test: the lines between its `walkthrough` markers run as a
//! user types them, in a fresh `$HOME`, one after the other with nothing in between — except
//! that after `zester up &` the test waits for the appliance to say it is ready, as the README
//! tells the user to. `target/release/zester` stands for the binary cargo built for this test.
//! When the README changes, this test runs the new lines.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The commands of the walkthrough: (line without its comment, runs in the background).
fn walkthrough() -> Vec<(String, bool)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let block = readme
        .split("<!-- walkthrough:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- walkthrough:end -->").next())
        .expect("the README has a walkthrough between its markers");
    block
        .lines()
        .filter(|l| !l.starts_with("```"))
        .map(|l| l.split(" # ").next().unwrap_or_default().trim().to_string())
        .filter(|l| !l.is_empty())
        .map(|l| match l.strip_suffix('&') {
            Some(command) => (command.trim().to_string(), true),
            None => (l, false),
        })
        .collect()
}

/// A background process of the walkthrough; killed on drop if still running.
struct Background {
    line: String,
    child: Child,
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shell(line: &str, home: &Path, log: Option<&Path>) -> Command {
    let binary = env!("CARGO_BIN_EXE_zester");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "exec {}",
            line.replace("target/release/zester", binary)
        ))
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("ZESTER_HOME")
        .env("ZESTER_LISTEN", "127.0.0.1:0")
        .env("ZESTER_MONITOR", "127.0.0.1:0")
        .stdin(Stdio::null());
    if let Some(log) = log {
        let file = std::fs::File::create(log).unwrap();
        command.stdout(file.try_clone().unwrap()).stderr(file);
    }
    command
}

#[test]
fn the_readme_walkthrough_works_as_typed() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let runtime = home.join(".local/share/zester/nats/runtime.json");
    let lines = walkthrough();
    assert!(
        lines.iter().any(|(l, _)| l.contains("zester up")),
        "{lines:?}"
    );
    let mut background = Vec::new();
    let mut outputs = Vec::new();
    for (n, (line, in_background)) in lines.iter().enumerate() {
        if *in_background {
            let log = home.join(format!("background-{n}.log"));
            let child = shell(line, home, Some(&log)).spawn().unwrap();
            background.push((
                Background {
                    line: line.clone(),
                    child,
                },
                log,
            ));
            if line.contains("zester up") {
                // The README: "wait for `zester is ready`".
                let deadline = Instant::now() + Duration::from_secs(30);
                while !runtime.exists() {
                    assert!(Instant::now() < deadline, "zester up did not get ready");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            continue;
        }
        let out = shell(line, home, None).output().unwrap();
        let logs: String = background
            .iter()
            .map(|(b, log)| {
                format!(
                    "--- {}:\n{}\n",
                    b.line,
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect();
        assert!(
            out.status.success(),
            "`{line}` failed ({}):\n{}{}\n{logs}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push((
            line.clone(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
    }
    let said = |needle: &str| outputs.iter().find(|(l, _)| l.contains(needle));
    if let Some((_, out)) = said("cmd web-01 test.ping") {
        assert!(out.contains("web-01  true"), "{out}");
    }
    if let Some((_, out)) = said("key list") {
        assert!(out.contains("web-01") && out.contains("accepted"), "{out}");
    }
    // Ctrl-C / SIGTERM: every background process exits 0, the agent first.
    for (mut process, log) in background.into_iter().rev() {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(process.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = process.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "`{}` did not stop on SIGTERM",
                process.line
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "`{}` exited with {status}:\n{}",
            process.line,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}
