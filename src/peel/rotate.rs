//! Peel key rotation, the peel's half (`zester peel rotate`): make a new key, ask with both
//! keys, write the new creds atomically over the old file (a running agent picks them up at its
//! next reconnect), connect with them and tell the appliance the old key may go.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::home::{self, now_unix};
use crate::identity::creds::{Creds, CredsError};
use crate::identity::jwt::JwtError;
use crate::identity::peel_id::PeelId;
use crate::net::connect::ConnectError;
use crate::peel::ask::{ask, AskError};
use crate::wire::rotate::{sign_rotation, InvalidRotation, Rotation, SignedRotation};
use crate::wire::subjects;
use nkeys::KeyPair;

/// Why `zester peel rotate` failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The request could not be made.
    #[error(transparent)]
    Invalid(#[from] InvalidRotation),
    /// Files on the peel.
    #[error(transparent)]
    Home(#[from] home::HomeError),
    /// The appliance could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The appliance did not answer or refused.
    #[error(transparent)]
    Ask(#[from] AskError),
    /// The JWT the appliance handed out is not a user JWT.
    #[error("the master's JWT is invalid: {0}")]
    BadJwt(#[from] JwtError),
    /// The JWT the appliance handed out is not for the new key.
    #[error("the master's JWT does not fit the new key: {0}")]
    BadCreds(#[from] CredsError),
}

/// What `zester peel rotate` needs.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// The master's URL.
    pub server: String,
    /// The peel's creds file (replaced atomically).
    pub creds: PathBuf,
    /// The master's CA certificate.
    pub ca: PathBuf,
}

/// How long the appliance has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(
    options: &RotateOptions,
    creds: &Creds,
    id: &str,
) -> Result<async_nats::Client, ConnectError> {
    let url = options.server.as_str();
    async_nats::ConnectOptions::with_credentials(&creds.to_text())
        .map_err(|source| ConnectError::Creds {
            path: options.creds.clone(),
            source,
        })?
        .add_root_certificates(options.ca.clone())
        .require_tls(true)
        .name(format!("zester-peel-{id}"))
        .custom_inbox_prefix(format!("_INBOX.{id}"))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(3))
        .connect(url)
        .await
        .map_err(|source| ConnectError::Connect {
            url: url.to_string(),
            source,
        })
}

fn body(signed: &SignedRotation) -> Result<Vec<u8>, RotateError> {
    serde_json::to_vec(signed).map_err(|e| RotateError::Invalid(InvalidRotation(e.to_string())))
}

/// The peel side: rotate the key of the creds in `options.creds`; returns the new fingerprint.
pub async fn rotate(options: &RotateOptions) -> Result<String, RotateError> {
    let old = home::read_creds(&options.creds)?;
    let id = old.jwt().claims().name.clone();
    PeelId::parse(&id).map_err(|e| {
        RotateError::Invalid(InvalidRotation(format!("the creds name no peel: {e}")))
    })?;
    let new_key = KeyPair::new_user();
    let rotation = Rotation {
        id: id.clone(),
        old_nkey: old.key().public_key(),
        new_nkey: new_key.public_key(),
        at: now_unix(),
    };
    let client = connect(options, &old, &id).await?;
    let signed = sign_rotation(&rotation, Some(old.key()), &new_key)?;
    let answer = ask(
        &client,
        subjects::rotate(&id),
        body(&signed)?,
        ANSWER_TIMEOUT,
    )
    .await?;
    let jwt =
        crate::identity::jwt::decode_ignoring_time(answer["jwt"].as_str().unwrap_or_default())?;
    let new_seed = new_key.seed().unwrap_or_default();
    let creds = Creds::new(jwt, new_key)?;
    home::write_creds(&options.creds, &creds)?;
    replace_seed_file(&options.creds, &id, &new_seed)?;
    drop(client);

    // Connected with the new key: now the old one may be cut off.
    let client = connect(options, &creds, &id).await?;
    let notice = Rotation {
        at: now_unix(),
        ..rotation
    };
    let signed = sign_rotation(&notice, None, creds.key())?;
    ask(
        &client,
        subjects::rotated(&id),
        body(&signed)?,
        ANSWER_TIMEOUT,
    )
    .await?;
    Ok(answer["fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// `zester peel enrol` keeps `<id>.nk` beside the creds: keep it in step with the new key.
fn replace_seed_file(creds: &Path, id: &str, seed: &str) -> Result<(), RotateError> {
    let Some(dir) = creds.parent() else {
        return Ok(());
    };
    let seed_file = dir.join(format!("{id}.nk"));
    if seed_file.exists() {
        home::write_atomic(
            &seed_file,
            format!("{seed}\n").as_bytes(),
            home::SECRET_MODE,
        )?;
    }
    Ok(())
}
