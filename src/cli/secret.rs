//! The file and network half of `zester secret …`: reading a peel's curve seed, finding it
//! beside the creds, and asking the running appliance for a peel's curve key. The envelope
//! itself (seal, open, rewrap) is the pure `secrets` module.

use std::path::{Path, PathBuf};

use nkeys::XKey;

use crate::cli::client::StatusError;

/// Why the seed, the creds or the peel's curve key could not be had. Errors name the file,
/// never its content.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// "curve seed" or "creds".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The seed file holds no curve seed.
    #[error("{} does not hold a curve seed (SX…; the peel's <id>.xk)", path.display())]
    NotASeed {
        /// The file.
        path: PathBuf,
    },
    /// The creds do not parse.
    #[error("{}: {source}", path.display())]
    Creds {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::identity::creds::CredsError,
    },
    /// The JWT's name is not a peel id.
    #[error("{}: the JWT's name is not a peel id: {source}", path.display())]
    NotAPeel {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::identity::peel_id::PeelIdError,
    },
    /// No running appliance to ask.
    #[error("{source}; without a running appliance give the peel's curve key with --xkey")]
    NoAppliance {
        /// Why.
        source: StatusError,
    },
    /// The appliance refused or failed.
    #[error(transparent)]
    Appliance(#[from] StatusError),
    /// The record has no curve key.
    #[error(
        "peel {id} has no curve key in its record (enrolled without one?); give it with --xkey"
    )]
    NoCurveKey {
        /// The peel.
        id: String,
    },
}

/// Reads a curve seed file (`<dir>/<id>.xk` written by `zester peel enrol`).
pub fn read_seed_file(path: &Path) -> Result<XKey, SecretFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretFileError::Read {
        what: "curve seed",
        path: path.to_path_buf(),
        source,
    })?;
    XKey::from_seed(text.trim()).map_err(|_| SecretFileError::NotASeed {
        path: path.to_path_buf(),
    })
}

/// The curve seed beside a peel's creds: `<same dir>/<id>.xk`, the id being the JWT's name.
pub fn seed_path_for_creds(creds: &Path) -> Result<PathBuf, SecretFileError> {
    let text = std::fs::read_to_string(creds).map_err(|source| SecretFileError::Read {
        what: "creds",
        path: creds.to_path_buf(),
        source,
    })?;
    let parsed =
        crate::identity::creds::Creds::parse(&text).map_err(|source| SecretFileError::Creds {
            path: creds.to_path_buf(),
            source,
        })?;
    let id =
        crate::identity::peel_id::PeelId::parse(&parsed.jwt().claims().name).map_err(|source| {
            SecretFileError::NotAPeel {
                path: creds.to_path_buf(),
                source,
            }
        })?;
    let dir = creds.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!("{id}.xk")))
}

/// The curve key of peel `id` from its key record, asked of the running appliance
/// (`zester.admin.key.show`).
pub async fn peel_xkey(home: &crate::home::Home, id: &str) -> Result<String, SecretFileError> {
    let client = crate::cli::client::admin_connect(home)
        .await
        .map_err(|source| SecretFileError::NoAppliance { source })?;
    let shown = crate::cli::client::key_show(&client, id).await?;
    match shown["record"]["xkey"].as_str() {
        Some(xkey) if !xkey.is_empty() => Ok(xkey.to_string()),
        _ => Err(SecretFileError::NoCurveKey { id: id.to_string() }),
    }
}
