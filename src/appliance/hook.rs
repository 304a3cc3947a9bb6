//! The enrolment policy hook (`keys.accept = "hook"`): an executable an operator writes
//! (Puppet's policy-based autosign) that decides a new enrolment from the request. zester runs
//! it with the request as one JSON object on stdin; exit 0 accepts, exit 1 rejects, anything
//! else (another code, a signal, a crash) or running past `keys.hook_timeout` leaves the key
//! pending for an admin. The first line of its stdout is kept as the reason (cut and escaped:
//! it reaches the key's history and terminals). It runs from the enrolment service, after the
//! pending record exists, never on the callout's connection path; a hook that hangs is killed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest reason kept from the hook's output.
const MAX_REASON: usize = 200;

/// The hook and its time limit.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The executable.
    pub path: PathBuf,
    /// How long it may run.
    pub timeout: Duration,
}

/// What the hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Exit 0.
    Accept(String),
    /// Exit 1.
    Reject(String),
    /// Anything else: the key stays pending (why).
    Pending(String),
}

impl HookOutcome {
    /// The audit code.
    pub fn code(&self) -> &'static str {
        match self {
            HookOutcome::Accept(_) => "hook_accepted",
            HookOutcome::Reject(_) => "hook_rejected",
            HookOutcome::Pending(_) => "hook_undecided",
        }
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        match self {
            HookOutcome::Accept(r) | HookOutcome::Reject(r) | HookOutcome::Pending(r) => r,
        }
    }
}

impl Hook {
    /// Runs the hook with `input` on stdin and decides from its exit.
    pub async fn decide(&self, input: &serde_json::Value) -> HookOutcome {
        let mut child = match tokio::process::Command::new(&self.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                return HookOutcome::Pending(format!(
                    "the hook {} could not be started: {e}",
                    self.path.display()
                ))
            }
        };
        let body = serde_json::to_vec(input).unwrap_or_default();
        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        let run = async {
            if let Some(stdin) = stdin.as_mut() {
                // A hook that does not read its input is its own business.
                let _ = stdin.write_all(&body).await;
                let _ = stdin.shutdown().await;
            }
            drop(stdin.take());
            let mut output = Vec::new();
            if let Some(stdout) = stdout.as_mut() {
                let _ = stdout.take(64 * 1024).read_to_end(&mut output).await;
            }
            (child.wait().await, output)
        };
        let (status, output) = match tokio::time::timeout(self.timeout, run).await {
            Ok(done) => done,
            Err(_) => {
                // `child` is dropped with the future: kill_on_drop ends it.
                return HookOutcome::Pending(format!(
                    "the hook did not decide within {} s",
                    self.timeout.as_secs()
                ));
            }
        };
        let first_line = String::from_utf8_lossy(&output)
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(MAX_REASON)
            .collect::<String>();
        let said = crate::appliance::callout::audit::escape_control(first_line.trim());
        match status.map(|s| s.code()) {
            Ok(Some(0)) => HookOutcome::Accept(said),
            Ok(Some(1)) => HookOutcome::Reject(said),
            Ok(Some(code)) => HookOutcome::Pending(format!("the hook exited with {code}: {said}")),
            Ok(None) => HookOutcome::Pending(format!("the hook was killed by a signal: {said}")),
            Err(e) => HookOutcome::Pending(format!("waiting for the hook: {e}")),
        }
    }
}
