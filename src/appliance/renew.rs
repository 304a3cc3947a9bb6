//! Identity-JWT renewal, the appliance's half (DESIGN §11): serves `zester.event.<id>.renew`
//! (only peel `<id>` may publish there; answers go only to its inbox). A request signed by the
//! record's current key, accepted, gets a fresh JWT for that same key; the record keeps when
//! it expires and when it was renewed. Every renewal and every refusal is audited.

use crate::wire::subjects::SERVICE_QUEUE;
use std::sync::Arc;

use futures_util::StreamExt;

use crate::appliance::callout::audit::{AuditRecord, AuditSink, Source, Verdict};
use crate::appliance::keys::KeyStore;
use crate::appliance::respond;
use crate::authority::Authority;
use crate::home::now_unix;
use crate::identity::peel_id::PeelId;
use crate::permissions::Role;
use crate::wire::renew::{
    check_renewable, verify_renewal, InvalidRenewal, RenewAnswer, RenewRefusal,
};
use crate::wire::subjects;

/// Why a renewal was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// Not the wire form, or a signature that does not verify.
    #[error(transparent)]
    Invalid(#[from] InvalidRenewal),
    /// The key may not renew.
    #[error(transparent)]
    Refused(#[from] RenewRefusal),
    /// The subject names no valid peel.
    #[error(transparent)]
    PeelId(#[from] crate::identity::peel_id::PeelIdError),
    /// The key store.
    #[error(transparent)]
    Store(#[from] crate::appliance::keys::KeyStoreError),
    /// Signing.
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
}

impl RenewError {
    /// The audit code's reason detail.
    fn detail(&self) -> &'static str {
        match self {
            RenewError::Invalid(_) | RenewError::PeelId(_) => "invalid",
            RenewError::Refused(refusal) => refusal.reason_code(),
            RenewError::Store(_) | RenewError::Authority(_) => "internal",
        }
    }
}

/// How often a renewal retries its compare-and-set when the record changed under it.
const STORE_ATTEMPTS: usize = 3;

/// The appliance's side of renewal.
pub struct RenewService {
    /// Signs the fresh JWT.
    pub authority: Arc<Authority>,
    /// The key store: the authority on who may renew.
    pub keys: Arc<KeyStore>,
    /// Lifetime of the fresh JWT, seconds (0 = never).
    pub peel_expiry: i64,
    /// Where renewals and refusals are audited.
    pub audit: AuditSink,
}

impl RenewService {
    /// Serves renewal requests on `client` (zester's service connection).
    pub async fn serve(
        self: Arc<Self>,
        client: async_nats::Client,
    ) -> Result<tokio::task::JoinHandle<()>, async_nats::Error> {
        let mut requests = client
            .queue_subscribe(subjects::RENEW_REQUESTS, SERVICE_QUEUE.into())
            .await?;
        client.flush().await?;
        Ok(tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let Some((id, reply)) = respond::peel_request(&message, Source::Renew, &self.audit)
                else {
                    continue;
                };
                let service = self.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let now = now_unix();
                    let outcome = service.renew(&message.payload, &id, now).await;
                    service.audit.record(renew_audit(&outcome, &id, now));
                    respond::answer(
                        &client,
                        reply,
                        outcome.map(|(answer, _)| answer),
                        "a renewal request",
                    )
                    .await;
                });
            }
        }))
    }

    /// Handles one request of peel `id` at `now`; returns the answer and the renewed key.
    pub async fn renew(
        &self,
        payload: &[u8],
        id: &str,
        now: i64,
    ) -> Result<(RenewAnswer, String), RenewError> {
        let renewal = verify_renewal(payload, id, now)?;
        let peel = PeelId::parse(id)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let found = self.keys.get(&peel).await?;
            check_renewable(found.as_ref().map(|(r, _)| r), id, &renewal.nkey)?;
            let Some((record, revision)) = found else {
                // check_renewable refuses a missing record.
                return Err(RenewRefusal::Unknown { id: id.to_string() }.into());
            };
            let jwt = self.authority.issue_user(
                &record.nkey,
                id,
                &Role::Peel(peel.clone()),
                now,
                self.peel_expiry,
            )?;
            let expires_at = jwt.claims().exp;
            match self
                .keys
                .update(&peel, revision, &record.jwt_issued(expires_at, true, now))
                .await
            {
                Ok(_) => {}
                // Changed under us (an admin's decision, say): decide again on what it is now.
                Err(_) if attempt < STORE_ATTEMPTS => continue,
                Err(e) => tracing::warn!(
                    peel = id,
                    "renewed, but the key record could not say so: {e}"
                ),
            }
            return Ok((
                RenewAnswer {
                    jwt: jwt.token().to_string(),
                    expires_at,
                },
                record.nkey,
            ));
        }
    }
}

/// The audit record of one renewal or refusal.
fn renew_audit(
    outcome: &Result<(RenewAnswer, String), RenewError>,
    id: &str,
    now: i64,
) -> AuditRecord {
    let mut record = match outcome {
        Ok((answer, nkey)) => {
            let mut record = AuditRecord::at(now, Source::Renew, Verdict::Allow);
            record.code = "renewed".into();
            record.reason = match answer.expires_at {
                0 => "identity JWT renewed (never expires)".into(),
                at => format!(
                    "identity JWT renewed until {}",
                    crate::identity::time::rfc3339(at)
                ),
            };
            record.nkey = nkey.clone();
            record
        }
        Err(e) => {
            let mut record = AuditRecord::at(now, Source::Renew, Verdict::Refuse);
            record.code = "renew_refused".into();
            record.reason = format!("{} ({e})", e.detail());
            record
        }
    };
    record.peel_id = id.to_string();
    record.role = "peel".into();
    record
}
