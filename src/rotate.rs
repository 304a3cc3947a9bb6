//! Peel key rotation without downtime (DESIGN §6, issue 5).
//!
//! The peel makes a new nkey and, still connected with its old creds, asks on
//! `zester.event.<id>.rotate` (a subject only that peel may publish on) with a request signed by
//! BOTH keys: the old one proves it is the peel, the new one proves the peel holds it. The
//! master swaps the key in the record (compare-and-set) and answers with a user JWT for the new
//! key; the peel writes its new creds atomically and connects with them. Only then, on
//! `zester.event.<id>.rotated` signed by the new key, does the master cut the old key off: its
//! sessions are kicked and it joins the account's revocations. A running `zester peel run`
//! re-reads the creds file at every reconnect, so it keeps serving across the switch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use data_encoding::BASE64URL_NOPAD;
use futures_util::StreamExt;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::appliance::admin::AdminService;
use crate::appliance::callout::audit::{AuditRecord, AuditSink};
use crate::appliance::keys::{KeyState, KeyStore};
use crate::appliance::respond;
use crate::authority::Authority;
use crate::home::{self, now_unix};
use crate::identity::creds::Creds;
use crate::identity::keys::{self, KeyRole};
use crate::identity::peel_id::PeelId;
use crate::permissions::Role;
use crate::wire::reply::Asker;
use crate::wire::subjects;

/// Subjects the master hears rotation requests on.
pub const ROTATE_SUBJECTS: &str = subjects::ROTATE_REQUESTS;
/// Subjects the master hears "new key connected" notices on.
pub const ROTATED_SUBJECTS: &str = subjects::ROTATED_NOTICES;
/// How far a request's time may be from the master's clock.
const MAX_SKEW_SECS: i64 = 300;

/// The signed body of a rotation request or notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The peel.
    pub id: String,
    /// The key being replaced.
    pub old_nkey: String,
    /// The new key.
    pub new_nkey: String,
    /// Unix seconds when made.
    pub at: i64,
}

/// The wire form: the body and its signatures (base64url).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedRotation {
    /// base64url(JSON of [`Rotation`]).
    pub request: String,
    /// Signature by the old key (requests only).
    #[serde(default)]
    pub old_sig: String,
    /// Signature by the new key.
    pub new_sig: String,
}

/// Why a rotation failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// Not the wire form, or signatures that do not verify.
    #[error("rotation request refused: {0}")]
    Invalid(String),
    /// The record does not hold the old key any more (or is not accepted).
    #[error("peel {id} does not hold that key as accepted any more: {reason}")]
    NotCurrent {
        /// The id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The key store.
    #[error(transparent)]
    Store(#[from] crate::appliance::keys::KeyStoreError),
    /// The record.
    #[error(transparent)]
    Record(#[from] crate::appliance::keys::KeyError),
    /// Signing.
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
    /// The account update.
    #[error(transparent)]
    Admin(#[from] crate::appliance::admin::AdminError),
    /// Files on the peel.
    #[error(transparent)]
    Home(#[from] home::HomeError),
    /// Talking to the master.
    #[error("{0}")]
    Master(String),
}

fn sign(key: &KeyPair, body: &[u8]) -> Result<String, RotateError> {
    key.sign(body)
        .map(|sig| BASE64URL_NOPAD.encode(&sig))
        .map_err(|_| RotateError::Invalid("cannot sign".into()))
}

/// Signs `rotation` with the old key (when given) and the new key.
pub fn sign_rotation(
    rotation: &Rotation,
    old: Option<&KeyPair>,
    new: &KeyPair,
) -> Result<SignedRotation, RotateError> {
    let body = serde_json::to_vec(rotation).map_err(|e| RotateError::Invalid(e.to_string()))?;
    Ok(SignedRotation {
        request: BASE64URL_NOPAD.encode(&body),
        old_sig: old.map(|k| sign(k, &body)).transpose()?.unwrap_or_default(),
        new_sig: sign(new, &body)?,
    })
}

/// Verifies a rotation for peel `id` at `now`; `need_old` for requests (both signatures).
pub fn verify_rotation(
    payload: &[u8],
    id: &str,
    need_old: bool,
    now: i64,
) -> Result<Rotation, RotateError> {
    let invalid = |why: &str| RotateError::Invalid(why.to_string());
    let signed: SignedRotation =
        serde_json::from_slice(payload).map_err(|e| RotateError::Invalid(e.to_string()))?;
    let body = BASE64URL_NOPAD
        .decode(signed.request.as_bytes())
        .map_err(|_| invalid("not base64url"))?;
    let rotation: Rotation =
        serde_json::from_slice(&body).map_err(|e| RotateError::Invalid(e.to_string()))?;
    if rotation.id != id {
        return Err(invalid("the request names another peel than its subject"));
    }
    if (now - rotation.at).abs() > MAX_SKEW_SECS {
        return Err(invalid("the request is too old or from the future"));
    }
    let check = |nkey: &str, sig: &str| -> Result<(), RotateError> {
        keys::expect_role(nkey, &[KeyRole::User]).map_err(|_| invalid("not a user key"))?;
        let sig = BASE64URL_NOPAD
            .decode(sig.as_bytes())
            .map_err(|_| invalid("signature is not base64url"))?;
        keys::verify(nkey, &body, &sig).map_err(|_| invalid("a signature does not verify"))
    };
    if rotation.old_nkey == rotation.new_nkey {
        return Err(invalid("the new key is the old key"));
    }
    // A notice carries no signature of the old key, but its old key is what gets revoked:
    // it must be one user key (never `*`, an account or a wildcard).
    keys::expect_role(&rotation.old_nkey, &[KeyRole::User])
        .map_err(|_| invalid("the old key is not a user key"))?;
    check(&rotation.new_nkey, &signed.new_sig)?;
    if need_old {
        check(&rotation.old_nkey, &signed.old_sig)?;
    }
    Ok(rotation)
}

/// The master's side of rotation.
pub struct RotateService {
    /// Signs the new JWT.
    pub authority: Arc<Authority>,
    /// The key store.
    pub keys: Arc<KeyStore>,
    /// Cuts the old key off once the new one connected.
    pub admin: Arc<AdminService>,
    /// Lifetime of the new JWT, seconds (0 = never).
    pub peel_expiry: i64,
    /// Where refusals are audited.
    pub audit: AuditSink,
}

impl RotateService {
    /// Serves rotation requests and notices on `client` (zester's service connection).
    pub async fn serve(
        self: Arc<Self>,
        client: async_nats::Client,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::Error> {
        let mut requests = client.subscribe(ROTATE_SUBJECTS).await?;
        let mut notices = client.subscribe(ROTATED_SUBJECTS).await?;
        client.flush().await?;
        Ok(tokio::spawn(async move {
            loop {
                let (message, notice) = tokio::select! {
                    Some(m) = requests.next() => (m, false),
                    Some(m) = notices.next() => (m, true),
                    else => break,
                };
                // zester.event.<id>.rotate(d): the server let only peel <id> publish here.
                let Some(id) = subjects::event_peel(message.subject.as_str()) else {
                    continue;
                };
                let id = id.to_string();
                let Some(reply) =
                    respond::checked_reply(&message, Asker::Peel(&id), "rotate", &self.audit)
                else {
                    continue;
                };
                let service = self.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let now = now_unix();
                    let outcome = if notice {
                        service.finish(&message.payload, &id, now).await
                    } else {
                        service.rotate(&message.payload, &id, now).await
                    };
                    if let Err(e) = &outcome {
                        let mut record = AuditRecord::at(now, "rotate", "refuse");
                        record.code = if notice {
                            "rotated_refused"
                        } else {
                            "rotate_refused"
                        }
                        .into();
                        record.reason = e.to_string();
                        record.peel_id = id.clone();
                        record.role = "peel".into();
                        service.audit.record(record);
                    }
                    respond::answer(&client, reply, outcome, "a rotation request").await;
                });
            }
        }))
    }

    async fn rotate(&self, payload: &[u8], id: &str, now: i64) -> Result<Value, RotateError> {
        let rotation = verify_rotation(payload, id, true, now)?;
        let peel = PeelId::parse(id).map_err(|e| RotateError::Invalid(e.to_string()))?;
        let (record, revision) =
            self.keys
                .get(&peel)
                .await?
                .ok_or_else(|| RotateError::NotCurrent {
                    id: id.to_string(),
                    reason: "no record".into(),
                })?;
        if record.nkey != rotation.old_nkey || record.state != KeyState::Accepted {
            return Err(RotateError::NotCurrent {
                id: id.to_string(),
                reason: format!(
                    "the record holds {} ({})",
                    record.fingerprint(),
                    record.state
                ),
            });
        }
        if self.keys.cache().lookup_nkey(&rotation.new_nkey).is_some() {
            return Err(RotateError::Invalid("the new key is already in use".into()));
        }
        let rotated = record.rotate(&rotation.new_nkey, "peel rotation", now)?;
        let new_revision = self.keys.update(&peel, revision, &rotated).await?;
        let _ = self
            .keys
            .wait_for_revision(new_revision, Duration::from_secs(2))
            .await;
        // An earlier rotation whose notice never came: the key it replaced is cut off now,
        // since this record will remember only the key replaced last.
        if let Some(previous) = &record.replaced_nkey {
            let kicked = self.admin.kick(id, Some(previous)).await;
            if let Err(e) = self.admin.revoke_in_account(previous, now).await {
                tracing::warn!(peel = id, "revoking the key of an unfinished rotation: {e}");
            }
            tracing::info!(target: "audit", peel = id, kicked, "key of an unfinished earlier rotation revoked");
        }
        let jwt = self.authority.issue_user(
            &rotation.new_nkey,
            id,
            &Role::Peel(peel.clone()),
            now,
            self.peel_expiry,
        )?;
        tracing::info!(target: "audit", peel = id, from = %record.fingerprint(), to = %rotated.fingerprint(), "key rotated");
        Ok(json!({ "jwt": jwt.token(), "fingerprint": rotated.fingerprint() }))
    }

    /// Cuts off the key a rotation replaced, once the new key has connected: only the key
    /// this record's last rotation replaced, named exactly.
    async fn finish(&self, payload: &[u8], id: &str, now: i64) -> Result<Value, RotateError> {
        let rotation = verify_rotation(payload, id, false, now)?;
        let peel = PeelId::parse(id).map_err(|e| RotateError::Invalid(e.to_string()))?;
        let not_current = |reason: &str| RotateError::NotCurrent {
            id: id.to_string(),
            reason: reason.to_string(),
        };
        let (record, revision) = self
            .keys
            .get(&peel)
            .await?
            .ok_or_else(|| not_current("no record"))?;
        if record.nkey != rotation.new_nkey {
            return Err(not_current("the new key is not the record's key"));
        }
        if record.replaced_nkey.as_deref() != Some(rotation.old_nkey.as_str()) {
            return Err(not_current(
                "the notice names a key that this peel's last rotation did not replace",
            ));
        }
        let kicked = self.admin.kick(id, Some(&rotation.old_nkey)).await;
        self.admin
            .revoke_in_account(&rotation.old_nkey, now)
            .await?;
        // A replayed notice finds nothing left to finish.
        if let Err(e) = self
            .keys
            .update(&peel, revision, &record.rotation_finished())
            .await
        {
            tracing::warn!(peel = id, "could not mark the rotation finished: {e}");
        }
        tracing::info!(target: "audit", peel = id, kicked, "old key revoked after rotation");
        Ok(json!({ "old_key_revoked": rotation.old_nkey, "kicked": kicked }))
    }
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

async fn connect(
    options: &RotateOptions,
    creds: &Creds,
    id: &str,
) -> Result<async_nats::Client, RotateError> {
    async_nats::ConnectOptions::with_credentials(&creds.to_text())
        .map_err(|e| RotateError::Master(e.to_string()))?
        .add_root_certificates(options.ca.clone())
        .require_tls(true)
        .name(format!("zester-peel-{id}"))
        .custom_inbox_prefix(format!("_INBOX.{id}"))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(3))
        .connect(options.server.as_str())
        .await
        .map_err(|e| RotateError::Master(format!("cannot connect to {}: {e}", options.server)))
}

async fn ask(
    client: &async_nats::Client,
    subject: String,
    body: &SignedRotation,
) -> Result<Value, RotateError> {
    let body = serde_json::to_vec(body).map_err(|e| RotateError::Invalid(e.to_string()))?;
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject, body.into()),
    )
    .await
    .map_err(|_| RotateError::Master("the master did not answer within 10 s".into()))?
    .map_err(|e| RotateError::Master(e.to_string()))?;
    let answer: Value =
        serde_json::from_slice(&reply.payload).map_err(|e| RotateError::Master(e.to_string()))?;
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Err(RotateError::Master(error.to_string()));
    }
    Ok(answer["ok"].clone())
}

/// The peel side: rotate the key of the creds in `options.creds`; returns the new fingerprint.
pub async fn rotate(options: &RotateOptions) -> Result<String, RotateError> {
    let old = home::read_creds(&options.creds)?;
    let id = old.jwt().claims().name.clone();
    PeelId::parse(&id).map_err(|e| RotateError::Invalid(format!("the creds name no peel: {e}")))?;
    let new_key = KeyPair::new_user();
    let rotation = Rotation {
        id: id.clone(),
        old_nkey: old.key().public_key(),
        new_nkey: new_key.public_key(),
        at: now_unix(),
    };
    let client = connect(options, &old, &id).await?;
    let signed = sign_rotation(&rotation, Some(old.key()), &new_key)?;
    let answer = ask(&client, subjects::rotate(&id), &signed).await?;
    let jwt =
        crate::identity::jwt::decode_ignoring_time(answer["jwt"].as_str().unwrap_or_default())
            .map_err(|e| RotateError::Master(format!("the master's JWT is invalid: {e}")))?;
    let new_seed = new_key.seed().unwrap_or_default();
    let creds = Creds::new(jwt, new_key).map_err(|e| RotateError::Master(e.to_string()))?;
    home::write_creds(&options.creds, &creds)?;
    replace_seed_file(&options.creds, &id, &new_seed)?;
    drop(client);

    // Connected with the new key: now the old one may be cut off.
    let client = connect(options, &creds, &id).await?;
    let notice = Rotation {
        at: now_unix(),
        ..rotation
    };
    ask(
        &client,
        subjects::rotated(&id),
        &sign_rotation(&notice, None, creds.key())?,
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn both_keys_must_sign() {
        let old = KeyPair::new_user();
        let new = KeyPair::new_user();
        let rotation = Rotation {
            id: "web-01".into(),
            old_nkey: old.public_key(),
            new_nkey: new.public_key(),
            at: NOW,
        };
        let good =
            serde_json::to_vec(&sign_rotation(&rotation, Some(&old), &new).unwrap()).unwrap();
        assert!(verify_rotation(&good, "web-01", true, NOW).is_ok());
        assert!(
            verify_rotation(&good, "web-02", true, NOW).is_err(),
            "another peel's subject"
        );
        assert!(
            verify_rotation(&good, "web-01", true, NOW + 400).is_err(),
            "stale"
        );
        let thief = KeyPair::new_user();
        let forged =
            serde_json::to_vec(&sign_rotation(&rotation, Some(&thief), &new).unwrap()).unwrap();
        assert!(
            verify_rotation(&forged, "web-01", true, NOW).is_err(),
            "old key not proven"
        );
        let no_old = serde_json::to_vec(&sign_rotation(&rotation, None, &new).unwrap()).unwrap();
        assert!(verify_rotation(&no_old, "web-01", true, NOW).is_err());
        assert!(
            verify_rotation(&no_old, "web-01", false, NOW).is_ok(),
            "a notice needs the new key only"
        );
        for old_nkey in ["*".to_string(), KeyPair::new_account().public_key()] {
            let notice = Rotation {
                old_nkey,
                ..rotation.clone()
            };
            let signed = serde_json::to_vec(&sign_rotation(&notice, None, &new).unwrap()).unwrap();
            assert!(
                verify_rotation(&signed, "web-01", false, NOW).is_err(),
                "a notice naming {} as the old key",
                notice.old_nkey
            );
        }
    }
}
