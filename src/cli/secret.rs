//! The file and network half of `zester secret …`: reading a peel's curve seed, finding it
//! beside the creds, and asking the running appliance for a peel's curve key. The envelope
//! itself (seal, open, rewrap) is the pure `secrets` module.

use std::path::{Path, PathBuf};

use nkeys::XKey;

/// Reads a curve seed file (`<dir>/<id>.xk` written by `zester peel enrol`). The error names
/// the file, never its content.
pub fn read_seed_file(path: &Path) -> anyhow::Result<XKey> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read curve seed {}: {e}", path.display()))?;
    XKey::from_seed(text.trim()).map_err(|_| {
        anyhow::anyhow!(
            "{} does not hold a curve seed (SX…; the peel's <id>.xk)",
            path.display()
        )
    })
}

/// The curve seed beside a peel's creds: `<same dir>/<id>.xk`, the id being the JWT's name.
pub fn seed_path_for_creds(creds: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(creds)
        .map_err(|e| anyhow::anyhow!("cannot read creds {}: {e}", creds.display()))?;
    let parsed = crate::identity::creds::Creds::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", creds.display()))?;
    let id = crate::identity::peel_id::PeelId::parse(&parsed.jwt().claims().name).map_err(|e| {
        anyhow::anyhow!("{}: the JWT's name is not a peel id: {e}", creds.display())
    })?;
    let dir = creds.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!("{id}.xk")))
}

/// The curve key of peel `id` from its key record, asked of the running appliance
/// (`zester.admin.key.show`).
pub async fn peel_xkey(home: &crate::home::Home, id: &str) -> anyhow::Result<String> {
    let client = crate::cli::client::admin_connect(home).await.map_err(|e| {
        anyhow::anyhow!("{e}; without a running appliance give the peel's curve key with --xkey")
    })?;
    let shown = crate::cli::client::admin_request(
        &client,
        crate::wire::admin::KEY_SHOW,
        &crate::wire::admin::KeyRequest {
            id: id.to_string(),
            fingerprint: None,
        },
    )
    .await?;
    match shown["record"]["xkey"].as_str() {
        Some(xkey) if !xkey.is_empty() => Ok(xkey.to_string()),
        _ => anyhow::bail!(
            "peel {id} has no curve key in its record (enrolled without one?); give it with --xkey"
        ),
    }
}
