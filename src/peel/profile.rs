//! A peel's public profile, `<dir>/<id>.json` beside its creds: who it is and how to reach and
//! trust its master — the id, the server URLs, the pin of the master's CA and the master's
//! curve public key (which proves who sealed a secret). Nothing in it is secret.
//!
//! `zester peel enrol` writes it into its `--dir` from what the master answered, `zester creds
//! issue` beside the creds it writes; `zester peel run --dir`, `secret decrypt` and the
//! agent's settings fetch read it, so a peel never needs the master's key typed in.

use std::path::{Path, PathBuf};

use crate::home::{self, HomeError};

pub use crate::wire::profile::PeelProfile;

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not there or unreadable.
    #[error("cannot read the peel profile {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a profile.
    #[error("{} is not a peel profile: {source}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] HomeError),
}

/// Reads a profile.
pub fn read(path: &Path) -> Result<PeelProfile, ProfileError> {
    let text = std::fs::read(path).map_err(|source| ProfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| ProfileError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes it atomically (0644: public).
pub fn write(profile: &PeelProfile, path: &Path) -> Result<(), ProfileError> {
    home::write_atomic(path, &profile.to_json(), home::PUBLIC_MODE)?;
    Ok(())
}

/// Where and as whom the agent connects.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The server, `tls://host:port` (TLS is required whatever the scheme says).
    pub server: String,
    /// The peel's `.creds` file; read again on every reconnect.
    pub creds: PathBuf,
    /// The CA certificate (PEM) the server's certificate must chain to; `None` trusts the
    /// system's roots (or the pinned CA).
    pub ca: Option<PathBuf>,
    /// Without `ca`: trust only a CA with this SPKI pin (`sha256:…`) in the server's chain, as
    /// `zester peel enrol --pin` does.
    pub pin: Option<String>,
}

/// What `zester peel run` was given; everything is optional, the rest comes from the profile.
#[derive(Debug, Clone, Default)]
pub struct RunInputs {
    /// `--server URL`.
    pub server: Option<String>,
    /// `--creds FILE`.
    pub creds: Option<PathBuf>,
    /// `--ca FILE`.
    pub ca: Option<PathBuf>,
    /// `--pin sha256:…`.
    pub pin: Option<String>,
    /// `--xkey FILE` (the peel's curve seed).
    pub xkey: Option<PathBuf>,
    /// `--from X…` (the master's curve key).
    pub from: Option<String>,
    /// `--dir DIR` (where `peel enrol` put everything).
    pub dir: Option<PathBuf>,
    /// `--id ID` (which peel of DIR).
    pub id: Option<String>,
}

/// Why `zester peel run` cannot tell what to run.
#[derive(Debug, thiserror::Error)]
pub enum RunSetupError {
    /// Nothing names the creds.
    #[error("give --creds FILE or --dir DIR (where `zester peel enrol` wrote the peel's files)")]
    NoCreds,
    /// No creds in the directory, or several.
    #[error("{}: {found} creds files ({names}): name the peel with --id", dir.display())]
    WhichCreds {
        /// The directory.
        dir: PathBuf,
        /// How many were found.
        found: usize,
        /// Their ids.
        names: String,
    },
    /// No server given and no profile to read it from.
    #[error("no --server, and {reason}: give --server tls://HOST:PORT")]
    NoServer {
        /// Why the profile did not say.
        reason: String,
    },
    /// Settings asked for, but the master's key is unknown.
    #[error("the curve seed {} is given but the master's curve key is not known ({reason}): give --from X… (the master xkey `zester init` printed)", xkey.display())]
    NoMasterKey {
        /// The seed file.
        xkey: PathBuf,
        /// Why the profile did not say.
        reason: String,
    },
    /// The creds cannot be read.
    #[error(transparent)]
    Creds(#[from] HomeError),
    /// The creds are not a peel's.
    #[error("{path}: {reason}")]
    NotAPeel {
        /// The creds file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The peel id a creds file is for (its JWT's name).
pub fn creds_id(creds: &Path) -> Result<String, HomeError> {
    Ok(home::read_creds(creds)?.jwt().claims().name.clone())
}

/// The master's curve key for the peel whose profile is at `profile`: `from` when given,
/// else the profile's, with a reason when neither says.
pub fn master_xkey(from: Option<String>, profile: &Path) -> Result<String, String> {
    if let Some(from) = from {
        return Ok(from);
    }
    read(profile)
        .map(|p| p.master_xkey)
        .map_err(|e| e.to_string())
}

/// Resolves what `zester peel run` runs: the creds (`--creds`, or the one in `--dir`), the
/// server, CA or pin, and with a curve seed (`--xkey`, or `<dir>/<id>.xk`) the master's key,
/// each from the command line first and from the profile beside the creds otherwise.
pub fn resolve_run(
    inputs: RunInputs,
) -> Result<
    (
        crate::peel::AgentOptions,
        Option<crate::peel::agent::SettingsKey>,
    ),
    RunSetupError,
> {
    let creds = match (&inputs.creds, &inputs.dir) {
        (Some(creds), _) => creds.clone(),
        (None, Some(dir)) => match &inputs.id {
            Some(id) => dir.join(format!("{id}.creds")),
            None => only_creds_in(dir)?,
        },
        (None, None) => return Err(RunSetupError::NoCreds),
    };
    let id = creds_id(&creds)?;
    let profile_path = PeelProfile::beside(&creds, &id);
    let profile = read(&profile_path);
    let server = match (inputs.server, &profile) {
        (Some(server), _) => server,
        // Every server it lists (the nodes of a cluster): the agent fails over among them.
        (None, Ok(profile)) if !profile.servers.is_empty() => profile.servers.join(","),
        (None, Ok(_)) => {
            return Err(RunSetupError::NoServer {
                reason: format!("{} lists no server", profile_path.display()),
            })
        }
        (None, Err(e)) => {
            return Err(RunSetupError::NoServer {
                reason: e.to_string(),
            })
        }
    };
    let pin = match (&inputs.ca, inputs.pin, &profile) {
        (Some(_), pin, _) => pin,
        (None, Some(pin), _) => Some(pin),
        (None, None, Ok(profile)) => Some(profile.ca_pin.clone()),
        (None, None, Err(_)) => None,
    };
    let xkey = inputs.xkey.or_else(|| {
        let beside = creds.with_file_name(format!("{id}.xk"));
        (inputs.dir.is_some() && beside.exists()).then_some(beside)
    });
    let settings = match xkey {
        Some(xkey_seed) => {
            let master_xkey = master_xkey(inputs.from, &profile_path).map_err(|reason| {
                RunSetupError::NoMasterKey {
                    xkey: xkey_seed.clone(),
                    reason,
                }
            })?;
            Some(crate::peel::agent::SettingsKey {
                xkey_seed,
                master_xkey,
            })
        }
        None => None,
    };
    let options = crate::peel::AgentOptions {
        server,
        creds,
        ca: inputs.ca,
        pin,
    };
    Ok((options, settings))
}

fn only_creds_in(dir: &Path) -> Result<PathBuf, RunSetupError> {
    let entries = std::fs::read_dir(dir).map_err(|source| HomeError::Io {
        action: "read",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "creds"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(RunSetupError::WhichCreds {
            dir: dir.to_path_buf(),
            found: n,
            names: found
                .iter()
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_round_trips_and_lives_beside_the_creds() {
        let dir = tempfile::tempdir().unwrap();
        let profile = PeelProfile {
            id: "web-01".into(),
            servers: vec!["tls://127.0.0.1:4222".into()],
            ca_pin: "sha256:00".into(),
            master_xkey: "XABC".into(),
        };
        let path = PeelProfile::beside(&dir.path().join("web-01.creds"), "web-01");
        assert_eq!(path, dir.path().join("web-01.json"));
        write(&profile, &path).unwrap();
        assert_eq!(read(&path).unwrap(), profile);
        std::fs::write(&path, "{").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("not a peel profile"), "{err}");
        let err = read(&dir.path().join("x.json")).unwrap_err().to_string();
        assert!(err.contains("x.json"), "{err}");
    }
}
