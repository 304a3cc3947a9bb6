//! A peel's public profile, `<dir>/<id>.json` beside its creds: who it is and how to reach and
//! trust its master — the id, the server URLs, the pin of the master's CA and the master's
//! curve public key (which proves who sealed a secret). Nothing in it is secret.
//!
//! `zester creds issue` writes it beside the creds it makes, `zester peel enrol` into its
//! `--dir` from what the master answered; the peel reads it (`peel::profile`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeelProfile {
    /// The peel id.
    pub id: String,
    /// The master's client URLs (`tls://host:port`).
    pub servers: Vec<String>,
    /// SPKI pin of the master's CA (`sha256:<hex>`).
    pub ca_pin: String,
    /// The master's curve public key (`X…`), the sender of every secret for this peel.
    pub master_xkey: String,
}

impl PeelProfile {
    /// Where the profile of peel `id` lives in `dir`.
    pub fn path_in(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("{id}.json"))
    }

    /// The profile beside a creds file of peel `id`.
    pub fn beside(creds: &Path, id: &str) -> PathBuf {
        PeelProfile::path_in(creds.parent().unwrap_or(Path::new(".")), id)
    }

    /// The file's contents: pretty JSON and a newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        text
    }
}
