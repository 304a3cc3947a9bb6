//! Finding the nats-server binary that zester supervises, and checking its version.
//!
//! zester is built and tested against one pinned nats-server release ([`EXPECTED_VERSION`]),
//! installed into `nats/bin/nats-server` by `scripts/install-nats-server`. [`locate`] looks for
//! it in a fixed order, most explicit first, so that a user's choice always wins over a guess:
//!
//! 1. the `--nats-server PATH` flag ([`FoundBy::Flag`]);
//! 2. the `ZESTER_NATS_SERVER` environment variable ([`FoundBy::Env`]);
//! 3. `nats/bin/nats-server` in the source tree this crate was compiled from
//!    ([`FoundBy::BesideRepo`]; covers `cargo run` and `cargo test`);
//! 4. `nats/bin/nats-server` beside the running executable or up to four directories above it
//!    ([`FoundBy::BesideExecutable`]; covers `target/release/zester` copied with its tree);
//! 5. `nats-server` on `PATH` ([`FoundBy::Path`]).
//!
//! A flag or variable that names a missing file is an error rather than a reason to keep
//! looking: silently running some other nats-server than the one asked for would be worse.
//! [`locate`] only finds the file; [`check_version`] runs it, so callers decide when to pay for
//! starting a process.
//!
//! The search itself is a private function over a plain `Search` value, so tests exercise every
//! step without touching the process environment (which all tests in a process share).

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The nats-server version zester is built and tested against (see `nats/nats-server.version`).
pub const EXPECTED_VERSION: &str = "2.15.1";

/// Environment variable naming the nats-server binary to use (second in the search order).
pub const ENV_VAR: &str = "ZESTER_NATS_SERVER";

/// How long `nats-server --version` may take before it is considered hung.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// How many directories above the executable's own are searched for `nats/bin/nats-server`
/// (`target/debug/deps/<test>` needs three to reach the repository root).
const EXE_ANCESTOR_LEVELS: usize = 4;

/// Where the binary was found, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsServerBinary {
    /// Path of the binary, absolute unless it came from a relative `PATH` entry.
    pub path: PathBuf,
    /// Which step of the search found it.
    pub found_by: FoundBy,
}

/// Which step of the search in [`locate`] found the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    /// The `--nats-server PATH` flag.
    Flag,
    /// The `ZESTER_NATS_SERVER` environment variable.
    Env,
    /// `nats/bin/nats-server` in the source tree zester was compiled from.
    BesideRepo,
    /// `nats/bin/nats-server` beside the running executable or a directory above it.
    BesideExecutable,
    /// `nats-server` on `PATH`.
    Path,
}

impl fmt::Display for FoundBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FoundBy::Flag => "the --nats-server flag",
            FoundBy::Env => "the ZESTER_NATS_SERVER environment variable",
            FoundBy::BesideRepo => "nats/bin in the source tree",
            FoundBy::BesideExecutable => "nats/bin beside the zester executable",
            FoundBy::Path => "PATH",
        })
    }
}

/// Everything that can go wrong finding or checking the nats-server binary.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// No step of the search found a binary.
    #[error(
        "nats-server not found; looked in:\n{}\nIn a zester source tree, install the pinned version \
         ({EXPECTED_VERSION}) with `scripts/install-nats-server`; otherwise point zester at a \
         nats-server {EXPECTED_VERSION} binary with `--nats-server PATH` or `{ENV_VAR}=PATH`",
        list_paths(.searched)
    )]
    NotFound {
        /// Every candidate path that was checked, in search order.
        searched: Vec<PathBuf>,
    },

    /// The `--nats-server` flag names a file that does not exist.
    #[error("--nats-server {}: no such file", .path.display())]
    ExplicitMissing {
        /// The path given with the flag.
        path: PathBuf,
    },

    /// `ZESTER_NATS_SERVER` names a file that does not exist.
    #[error("{ENV_VAR}={}: no such file (unset it to search the usual places)", .path.display())]
    EnvMissing {
        /// The path the variable holds.
        path: PathBuf,
    },

    /// The file exists but is not an executable regular file.
    #[error(
        "{} (found via {found_by}) is not an executable file; `chmod +x` it or reinstall with \
         `scripts/install-nats-server`",
        .path.display()
    )]
    NotExecutable {
        /// The offending file.
        path: PathBuf,
        /// Which step of the search found it.
        found_by: FoundBy,
    },

    /// Running `<path> --version` failed to start at all.
    #[error("could not run `{} --version`: {source}", .path.display())]
    CannotRun {
        /// The binary that was run.
        path: PathBuf,
        /// Why the process could not be started or read.
        #[source]
        source: std::io::Error,
    },

    /// `<path> --version` ran but exited unsuccessfully.
    #[error("`{} --version` failed ({status}): {output}", .path.display())]
    VersionCommandFailed {
        /// The binary that was run.
        path: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// What it printed (stdout and stderr).
        output: String,
    },

    /// `<path> --version` did not finish in time.
    #[error("`{} --version` did not finish within {timeout:?}; is it really nats-server?", .path.display())]
    VersionCommandTimedOut {
        /// The binary that was run.
        path: PathBuf,
        /// How long it was given.
        timeout: Duration,
    },

    /// `<path> --version` printed something that is not a nats-server version line.
    #[error(
        "`{} --version` printed {output:?}, not `nats-server: v<version>`; is it really nats-server?",
        .path.display()
    )]
    UnrecognisedVersion {
        /// The binary that was run.
        path: PathBuf,
        /// What it printed.
        output: String,
    },

    /// The binary is nats-server, but not the version zester is built for.
    #[error(
        "{} is nats-server {found}, but zester needs {expected}; install it with \
         `scripts/install-nats-server` or point `--nats-server`/`{ENV_VAR}` at a {expected} binary",
        .path.display()
    )]
    WrongVersion {
        /// The binary that was run.
        path: PathBuf,
        /// The version it reported.
        found: String,
        /// The version zester needs ([`EXPECTED_VERSION`]).
        expected: String,
    },
}

fn list_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "  (nowhere: no candidate locations)".to_owned();
    }
    paths
        .iter()
        .map(|p| format!("  {}", p.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The inputs of the search, gathered from the process by [`locate`] or built by hand in tests.
#[derive(Debug, Clone, Default)]
struct Search<'a> {
    /// The `--nats-server` flag, if given.
    explicit: Option<&'a Path>,
    /// The value of `ZESTER_NATS_SERVER`, if set (an empty value counts as unset).
    env: Option<&'a OsStr>,
    /// The source tree to look in for `nats/bin/nats-server`, if any.
    repo_dir: Option<&'a Path>,
    /// The running executable, whose directory and ancestors are searched.
    current_exe: Option<&'a Path>,
    /// The value of `PATH`.
    path_var: Option<&'a OsStr>,
}

/// Finds the nats-server binary in the order described in the module documentation.
///
/// `explicit` is the `--nats-server PATH` flag. The result is not run; call [`check_version`]
/// to make sure it is the version zester expects.
pub fn locate(explicit: Option<&Path>) -> Result<NatsServerBinary, BinaryError> {
    let env = std::env::var_os(ENV_VAR);
    let exe = std::env::current_exe().ok();
    let path_var = std::env::var_os("PATH");
    locate_in(&Search {
        explicit,
        env: env.as_deref(),
        repo_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR"))),
        current_exe: exe.as_deref(),
        path_var: path_var.as_deref(),
    })
}

/// The search behind [`locate`], over explicitly given inputs instead of the process's own.
fn locate_in(search: &Search<'_>) -> Result<NatsServerBinary, BinaryError> {
    if let Some(path) = search.explicit {
        let path = absolute(path);
        if !path.exists() {
            return Err(BinaryError::ExplicitMissing { path });
        }
        return accept(path, FoundBy::Flag);
    }

    if let Some(value) = search.env.filter(|v| !v.is_empty()) {
        let path = absolute(Path::new(value));
        if !path.exists() {
            return Err(BinaryError::EnvMissing { path });
        }
        return accept(path, FoundBy::Env);
    }

    let name = binary_name();
    let mut searched = Vec::new();

    if let Some(repo) = search.repo_dir {
        let candidate = repo.join("nats").join("bin").join(&name);
        if candidate.exists() {
            return accept(candidate, FoundBy::BesideRepo);
        }
        searched.push(candidate);
    }

    if let Some(exe_dir) = search.current_exe.and_then(Path::parent) {
        for dir in exe_dir.ancestors().take(EXE_ANCESTOR_LEVELS) {
            let candidate = dir.join("nats").join("bin").join(&name);
            if candidate.exists() {
                return accept(candidate, FoundBy::BesideExecutable);
            }
            searched.push(candidate);
        }
    }

    if let Some(path_var) = search.path_var {
        for dir in std::env::split_paths(path_var) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            let candidate = dir.join(&name);
            // Like a shell, skip non-executable entries on PATH rather than failing on them.
            if is_executable_file(&candidate) {
                return Ok(NatsServerBinary {
                    path: candidate,
                    found_by: FoundBy::Path,
                });
            }
            searched.push(candidate);
        }
    }

    Err(BinaryError::NotFound { searched })
}

/// Runs `<path> --version` and returns the version it reports (like `"2.15.1"`), failing with
/// [`BinaryError::WrongVersion`] unless it is [`EXPECTED_VERSION`].
pub fn check_version(path: &Path) -> Result<String, BinaryError> {
    check_version_within(path, VERSION_TIMEOUT)
}

fn check_version_within(path: &Path, timeout: Duration) -> Result<String, BinaryError> {
    let cannot_run = |source| BinaryError::CannotRun {
        path: path.to_path_buf(),
        source,
    };
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot_run)?;

    // The output is one short line, far below a pipe's buffer, so waiting before reading
    // cannot deadlock.
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                // Best effort: the process may exit on its own between the check and the kill.
                let _ = child.kill();
                let _ = child.wait();
                return Err(BinaryError::VersionCommandTimedOut {
                    path: path.to_path_buf(),
                    timeout,
                });
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(cannot_run(e));
            }
        }
    };

    let mut output = String::new();
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut bytes = Vec::new();
        pipe.take(64 * 1024)
            .read_to_end(&mut bytes)
            .map_err(cannot_run)?;
        output.push_str(&String::from_utf8_lossy(&bytes));
    }
    let output = output.trim().to_owned();

    if !status.success() {
        return Err(BinaryError::VersionCommandFailed {
            path: path.to_path_buf(),
            status,
            output,
        });
    }
    let Some(found) = parse_version(&output) else {
        return Err(BinaryError::UnrecognisedVersion {
            path: path.to_path_buf(),
            output,
        });
    };
    if found != EXPECTED_VERSION {
        return Err(BinaryError::WrongVersion {
            path: path.to_path_buf(),
            found: found.to_owned(),
            expected: EXPECTED_VERSION.to_owned(),
        });
    }
    Ok(found.to_owned())
}

/// Extracts `2.15.1` from `nats-server: v2.15.1`, the only line `nats-server --version` prints.
fn parse_version(output: &str) -> Option<&str> {
    let version = output.trim().strip_prefix("nats-server: v")?;
    let looks_like_version = !version.is_empty()
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '+');
    looks_like_version.then_some(version)
}

fn binary_name() -> String {
    format!("nats-server{}", std::env::consts::EXE_SUFFIX)
}

/// Makes a user-given path absolute so it still names the same file after a `chdir` or when
/// handed to a child process with another working directory.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn accept(path: PathBuf, found_by: FoundBy) -> Result<NatsServerBinary, BinaryError> {
    if is_executable_file(&path) {
        Ok(NatsServerBinary { path, found_by })
    } else {
        Err(BinaryError::NotExecutable { path, found_by })
    }
}

fn is_executable_file(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Writes an executable file at `dir/rel` (creating parents) and returns its path.
    fn write_exe(dir: &Path, rel: &str, body: &str) -> PathBuf {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().expect("test path has a parent")).expect("mkdir");
        fs::write(&path, body).expect("write test executable");
        set_mode(&path, 0o755);
        path
    }

    fn set_mode(path: &Path, mode: u32) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        #[cfg(not(unix))]
        let _ = (path, mode);
    }

    /// Runs `check_version_within`, retrying while the script is "text file busy": another
    /// test thread may fork while our freshly written script's fd is still open in the child.
    fn check_script(path: &Path, timeout: Duration) -> Result<String, BinaryError> {
        for _ in 0..50 {
            match check_version_within(path, timeout) {
                Err(BinaryError::CannotRun { source, .. }) if source.raw_os_error() == Some(26) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
        check_version_within(path, timeout)
    }

    fn nats_bin(root: &Path) -> PathBuf {
        root.join("nats").join("bin").join(binary_name())
    }

    #[test]
    fn explicit_missing_path_is_an_error_not_a_fallback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env_bin = write_exe(dir.path(), "env/nats-server", "");
        let missing = dir.path().join("nope/nats-server");
        let err = locate_in(&Search {
            explicit: Some(&missing),
            env: Some(env_bin.as_os_str()),
            ..Search::default()
        })
        .expect_err("missing explicit path must fail");
        match err {
            BinaryError::ExplicitMissing { path } => assert_eq!(path, missing),
            other => panic!("expected ExplicitMissing, got {other:?}"),
        }
    }

    #[test]
    fn explicit_path_wins_over_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag_bin = write_exe(dir.path(), "flag/nats-server", "");
        let env_bin = write_exe(dir.path(), "env/nats-server", "");
        let found = locate_in(&Search {
            explicit: Some(&flag_bin),
            env: Some(env_bin.as_os_str()),
            ..Search::default()
        })
        .expect("explicit path exists");
        assert_eq!(found.path, flag_bin);
        assert_eq!(found.found_by, FoundBy::Flag);
    }

    #[cfg(unix)]
    #[test]
    fn explicit_non_executable_file_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_exe(dir.path(), "nats-server", "");
        set_mode(&path, 0o644);
        let err = locate_in(&Search {
            explicit: Some(&path),
            ..Search::default()
        })
        .expect_err("non-executable must fail");
        assert!(
            matches!(
                err,
                BinaryError::NotExecutable {
                    found_by: FoundBy::Flag,
                    ..
                }
            ),
            "got {err:?}"
        );
    }

    #[test]
    fn env_var_pointing_to_a_real_file_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env_bin = write_exe(dir.path(), "env/nats-server", "");
        let repo = dir.path().join("repo");
        write_exe(&repo, "nats/bin/nats-server", "");
        let found = locate_in(&Search {
            env: Some(env_bin.as_os_str()),
            repo_dir: Some(&repo),
            ..Search::default()
        })
        .expect("env path exists");
        assert_eq!(found.path, env_bin);
        assert_eq!(found.found_by, FoundBy::Env);
    }

    #[test]
    fn env_var_pointing_nowhere_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let err = locate_in(&Search {
            env: Some(missing.as_os_str()),
            ..Search::default()
        })
        .expect_err("missing env path must fail");
        assert!(
            matches!(err, BinaryError::EnvMissing { ref path } if *path == missing),
            "got {err:?}"
        );
        assert!(err.to_string().contains(ENV_VAR));
    }

    #[test]
    fn empty_env_var_counts_as_unset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = write_exe(dir.path(), "nats/bin/nats-server", "");
        let found = locate_in(&Search {
            env: Some(OsStr::new("")),
            repo_dir: Some(dir.path()),
            ..Search::default()
        })
        .expect("repo binary exists");
        assert_eq!(found.path, bin);
        assert_eq!(found.found_by, FoundBy::BesideRepo);
    }

    #[test]
    fn repo_binary_wins_over_executable_and_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let repo_bin = write_exe(&repo, "nats/bin/nats-server", "");
        let tree = dir.path().join("tree");
        write_exe(&tree, "nats/bin/nats-server", "");
        let exe = write_exe(&tree, "target/release/zester", "");
        let path_dir = dir.path().join("pathdir");
        write_exe(&path_dir, "nats-server", "");
        let found = locate_in(&Search {
            repo_dir: Some(&repo),
            current_exe: Some(&exe),
            path_var: Some(path_dir.as_os_str()),
            ..Search::default()
        })
        .expect("found");
        assert_eq!(found.path, repo_bin);
        assert_eq!(found.found_by, FoundBy::BesideRepo);
    }

    #[test]
    fn binary_beside_release_and_test_executables_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = write_exe(dir.path(), "nats/bin/nats-server", "");
        for exe in ["target/release/zester", "target/debug/deps/smoke-0123abcd"] {
            let exe = dir.path().join(exe);
            let found = locate_in(&Search {
                repo_dir: Some(&dir.path().join("elsewhere")),
                current_exe: Some(&exe),
                ..Search::default()
            })
            .expect("found beside executable");
            assert_eq!(found.path, bin);
            assert_eq!(found.found_by, FoundBy::BesideExecutable);
        }
    }

    #[test]
    fn executable_search_stops_after_four_levels() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_exe(dir.path(), "nats/bin/nats-server", "");
        let exe = dir.path().join("a/b/c/d/e/zester");
        let err = locate_in(&Search {
            current_exe: Some(&exe),
            ..Search::default()
        })
        .expect_err("too deep to be found");
        match err {
            BinaryError::NotFound { searched } => {
                assert_eq!(searched.len(), EXE_ANCESTOR_LEVELS);
                assert_eq!(
                    searched[0],
                    dir.path().join("a/b/c/d/e/nats/bin").join(binary_name())
                );
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    #[test]
    fn path_skips_non_executable_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = dir.path().join("first");
        let not_exe = write_exe(&first, "nats-server", "");
        set_mode(&not_exe, 0o644);
        let second = dir.path().join("second");
        let bin = write_exe(&second, "nats-server", "");
        let path_var = std::env::join_paths([&first, &second]).expect("join PATH");
        let found = locate_in(&Search {
            path_var: Some(&path_var),
            ..Search::default()
        })
        .expect("found on PATH");
        #[cfg(unix)]
        assert_eq!(found.path, bin);
        #[cfg(not(unix))]
        let _ = bin;
        assert_eq!(found.found_by, FoundBy::Path);
    }

    #[test]
    fn not_found_lists_every_place_and_how_to_install() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let exe = dir.path().join("target/release/zester");
        let path_dir = dir.path().join("bin");
        let err = locate_in(&Search {
            repo_dir: Some(&repo),
            current_exe: Some(&exe),
            path_var: Some(path_dir.as_os_str()),
            ..Search::default()
        })
        .expect_err("nothing there");
        let BinaryError::NotFound { ref searched } = err else {
            panic!("expected NotFound, got {err:?}");
        };
        assert_eq!(searched.first(), Some(&nats_bin(&repo)));
        assert_eq!(searched.last(), Some(&path_dir.join(binary_name())));
        assert_eq!(searched.len(), 1 + EXE_ANCESTOR_LEVELS + 1);
        let message = err.to_string();
        for p in searched {
            assert!(message.contains(&p.display().to_string()), "{message}");
        }
        assert!(message.contains("scripts/install-nats-server"), "{message}");
        assert!(message.contains("--nats-server PATH"), "{message}");
        assert!(message.contains(ENV_VAR), "{message}");
    }

    #[test]
    fn parses_only_nats_server_version_lines() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some("2.15.1"));
        assert_eq!(
            parse_version("nats-server: v2.12.0-RC.1"),
            Some("2.12.0-RC.1")
        );
        assert_eq!(parse_version("nats-server: v"), None);
        assert_eq!(parse_version("nats-server: vx.y"), None);
        assert_eq!(parse_version("true (GNU coreutils) 9.1"), None);
        assert_eq!(parse_version("nats-server: v2.15.1 extra words"), None);
    }

    #[cfg(unix)]
    #[test]
    fn check_version_accepts_expected_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Duration::from_secs(10);

        let good = write_exe(
            dir.path(),
            "good",
            &format!("#!/bin/sh\necho 'nats-server: v{EXPECTED_VERSION}'\n"),
        );
        assert_eq!(
            check_script(&good, t).expect("expected version"),
            EXPECTED_VERSION
        );

        let old = write_exe(
            dir.path(),
            "old",
            "#!/bin/sh\necho 'nats-server: v2.10.0'\n",
        );
        match check_script(&old, t) {
            Err(BinaryError::WrongVersion {
                found, expected, ..
            }) => {
                assert_eq!(found, "2.10.0");
                assert_eq!(expected, EXPECTED_VERSION);
            }
            other => panic!("expected WrongVersion, got {other:?}"),
        }

        let failing = write_exe(dir.path(), "failing", "#!/bin/sh\necho boom >&2\nexit 3\n");
        match check_script(&failing, t) {
            Err(BinaryError::VersionCommandFailed { status, output, .. }) => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(output, "boom");
            }
            other => panic!("expected VersionCommandFailed, got {other:?}"),
        }

        let other = write_exe(
            dir.path(),
            "other",
            "#!/bin/sh\necho 'something else 1.0'\n",
        );
        assert!(matches!(
            check_script(&other, t),
            Err(BinaryError::UnrecognisedVersion { .. })
        ));

        let hung = write_exe(dir.path(), "hung", "#!/bin/sh\nexec sleep 30\n");
        let started = Instant::now();
        assert!(matches!(
            check_script(&hung, Duration::from_millis(200)),
            Err(BinaryError::VersionCommandTimedOut { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(10));

        assert!(matches!(
            check_version(&dir.path().join("absent")),
            Err(BinaryError::CannotRun { .. })
        ));
    }

    /// The real pinned binary, when `scripts/install-nats-server` has put it in this tree.
    #[test]
    fn installed_binary_in_this_tree_has_the_expected_version() {
        let bin = nats_bin(Path::new(env!("CARGO_MANIFEST_DIR")));
        if !bin.exists() {
            eprintln!(
                "skipped: {} missing (run scripts/install-nats-server)",
                bin.display()
            );
            return;
        }
        assert_eq!(
            check_version(&bin).expect("pinned binary"),
            EXPECTED_VERSION
        );
    }
}
