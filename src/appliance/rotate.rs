//! Peel key rotation, the appliance's half (DESIGN §6): serves `zester.event.<id>.rotate`
//! (swap the key in the record, answer with a JWT for the new key) and `.rotated` (cut off
//! exactly the key this record's last rotation replaced: kick its sessions, revoke it in the
//! account). Only that peel may publish on its subjects; answers go only to its inbox.

use crate::wire::subjects::SERVICE_QUEUE;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::appliance::admin::AdminService;
use crate::appliance::callout::audit::{AuditRecord, AuditSink, Source, Verdict};
use crate::appliance::keys::{KeyState, KeyStore};
use crate::appliance::respond;
use crate::authority::Authority;
use crate::home::now_unix;
use crate::identity::peel_id::PeelId;
use crate::permissions::Role;
use crate::wire::rotate::verify_rotation;
pub use crate::wire::rotate::InvalidRotation;
use crate::wire::subjects;

/// Subjects the appliance hears rotation requests on.
pub const ROTATE_SUBJECTS: &str = subjects::ROTATE_REQUESTS;
/// Subjects the appliance hears "new key connected" notices on.
pub const ROTATED_SUBJECTS: &str = subjects::ROTATED_NOTICES;

/// Why a rotation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// Not the wire form, or signatures that do not verify.
    #[error(transparent)]
    Invalid(#[from] InvalidRotation),
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
    /// Where rotations and refusals are audited.
    pub audit: AuditSink,
}

impl RotateService {
    /// Serves rotation requests and notices on `client` (zester's service connection).
    pub async fn serve(
        self: Arc<Self>,
        client: async_nats::Client,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::Error> {
        let mut requests = client
            .queue_subscribe(ROTATE_SUBJECTS, SERVICE_QUEUE.into())
            .await?;
        let mut notices = client
            .queue_subscribe(ROTATED_SUBJECTS, SERVICE_QUEUE.into())
            .await?;
        client.flush().await?;
        Ok(tokio::spawn(async move {
            loop {
                let (message, notice) = tokio::select! {
                    Some(m) = requests.next() => (m, false),
                    Some(m) = notices.next() => (m, true),
                    else => break,
                };
                let Some((id, reply)) =
                    respond::peel_request(&message, Source::Rotate, &self.audit)
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
                    // Audited either way (and so counted in the metrics): which step, and for
                    // a refusal why.
                    let mut record = match &outcome {
                        Ok(_) => {
                            let mut record = AuditRecord::at(now, Source::Rotate, Verdict::Allow);
                            (record.code, record.reason) = if notice {
                                (
                                    "rotation_finished".into(),
                                    "old key revoked after rotation".into(),
                                )
                            } else {
                                (
                                    "rotated".into(),
                                    "key rotated: new identity JWT issued".into(),
                                )
                            };
                            record
                        }
                        Err(e) => {
                            let mut record = AuditRecord::at(now, Source::Rotate, Verdict::Refuse);
                            record.code = if notice {
                                "rotated_refused"
                            } else {
                                "rotate_refused"
                            }
                            .into();
                            record.reason = e.to_string();
                            record
                        }
                    };
                    record.peel_id = id.clone();
                    record.role = "peel".into();
                    service.audit.record(record);
                    respond::answer(&client, reply, outcome, "a rotation request").await;
                });
            }
        }))
    }

    async fn rotate(&self, payload: &[u8], id: &str, now: i64) -> Result<Value, RotateError> {
        let rotation = verify_rotation(payload, id, true, now)?;
        let peel =
            PeelId::parse(id).map_err(|e| RotateError::Invalid(InvalidRotation(e.to_string())))?;
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
            return Err(RotateError::Invalid(InvalidRotation(
                "the new key is already in use".into(),
            )));
        }
        let jwt = self.authority.issue_user(
            &rotation.new_nkey,
            id,
            &Role::Peel(peel.clone()),
            now,
            self.peel_expiry,
        )?;
        let rotated = record
            .rotate(&rotation.new_nkey, "peel rotation", now)?
            .jwt_issued(jwt.claims().exp, false, now);
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
        tracing::info!(target: "audit", peel = id, from = %record.fingerprint(), to = %rotated.fingerprint(), "key rotated");
        Ok(json!({ "jwt": jwt.token(), "fingerprint": rotated.fingerprint() }))
    }

    /// Cuts off the key a rotation replaced, once the new key has connected: only the key
    /// this record's last rotation replaced, named exactly.
    async fn finish(&self, payload: &[u8], id: &str, now: i64) -> Result<Value, RotateError> {
        let rotation = verify_rotation(payload, id, false, now)?;
        let peel =
            PeelId::parse(id).map_err(|e| RotateError::Invalid(InvalidRotation(e.to_string())))?;
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
