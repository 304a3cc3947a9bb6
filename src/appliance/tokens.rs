//! Join tokens, the appliance's side: the KV bucket `zester-tokens` on zester's store
//! connection (records without secrets, [`crate::wire::token::TokenRecord`]), and taking one
//! use of a token by compare-and-set, so that of two enrolments racing for the last use exactly
//! one wins. The admin API creates, lists and revokes; enrolment takes uses.

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;

use crate::wire::subjects::TOKENS_BUCKET;
use crate::wire::token::{check_use, used, TokenError, TokenProof, TokenRecord};

/// How often a use is retried when another enrolment took one meanwhile.
const CAS_ATTEMPTS: usize = 16;

/// Why the token bucket failed or a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    /// The token may not be used (its reason).
    #[error(transparent)]
    Refused(#[from] TokenError),
    /// The bucket could not be opened or created.
    #[error("token bucket {TOKENS_BUCKET}: {0}")]
    Bucket(#[from] jetstream::context::CreateKeyValueError),
    /// A read failed.
    #[error("token bucket {TOKENS_BUCKET}: {0}")]
    Get(#[from] kv::EntryError),
    /// A write failed.
    #[error("token bucket {TOKENS_BUCKET}: {0}")]
    Put(#[from] kv::CreateError),
    /// An update failed.
    #[error("token bucket {TOKENS_BUCKET}: {0}")]
    Update(#[from] kv::UpdateError),
    /// Listing failed.
    #[error("token bucket {TOKENS_BUCKET}: {0}")]
    Keys(#[from] kv::WatchError),
    /// A stored record is not one.
    #[error("token bucket {TOKENS_BUCKET}: record {key:?} is damaged: {source}")]
    Corrupt {
        /// Its key.
        key: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// Too many enrolments raced for the same token.
    #[error("join token {id}: too many enrolments at once, try again")]
    Contended {
        /// The token.
        id: String,
    },
}

impl TokenStoreError {
    /// The audit code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenStoreError::Refused(e) => e.code(),
            TokenStoreError::Contended { .. } => "token_contended",
            _ => "internal",
        }
    }
}

/// The token bucket.
pub struct TokenStore {
    kv: kv::Store,
}

impl TokenStore {
    /// Opens (or creates, with `replicas` copies) the bucket on zester's store connection.
    pub async fn open(
        client: async_nats::Client,
        replicas: usize,
    ) -> Result<TokenStore, TokenStoreError> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(TOKENS_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => {
                js.create_key_value(kv::Config {
                    bucket: TOKENS_BUCKET.to_string(),
                    description: "zester: join tokens (public keys and limits, never secrets)"
                        .into(),
                    history: 1,
                    max_value_size: 64 * 1024,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await?
            }
        };
        Ok(TokenStore { kv })
    }

    /// Stores a new token's record.
    pub async fn create(&self, record: &TokenRecord) -> Result<(), TokenStoreError> {
        let body = serde_json::to_vec(record).unwrap_or_default();
        self.kv.create(&record.id, body.into()).await?;
        Ok(())
    }

    /// The record of token `id` and its revision.
    pub async fn get(&self, id: &str) -> Result<Option<(TokenRecord, u64)>, TokenStoreError> {
        let Some(entry) = crate::appliance::kv_leader::latest(&self.kv, id).await? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record =
            serde_json::from_slice(&entry.value).map_err(|source| TokenStoreError::Corrupt {
                key: id.to_string(),
                source,
            })?;
        Ok(Some((record, entry.revision)))
    }

    /// Every token's record.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, TokenStoreError> {
        let mut keys = match self.kv.keys().await {
            Ok(keys) => keys,
            Err(e) => return Err(TokenStoreError::Keys(e)),
        };
        let mut records = Vec::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Some((record, _)) = self.get(&key).await? {
                records.push(record);
            }
        }
        records.sort_by_key(|r| r.created_at);
        Ok(records)
    }

    /// Marks token `id` revoked; `None` when there is no such token.
    pub async fn revoke(&self, id: &str) -> Result<Option<TokenRecord>, TokenStoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((record, revision)) = self.get(id).await? else {
                return Ok(None);
            };
            let revoked = TokenRecord {
                revoked: true,
                ..record
            };
            let body = serde_json::to_vec(&revoked).unwrap_or_default();
            match self.kv.update(id, body.into(), revision).await {
                Ok(_) => return Ok(Some(revoked)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(TokenStoreError::Contended { id: id.to_string() })
    }

    /// Takes one use of the token `proof` names for `nkey` enrolling as `peel`: checked, then
    /// written back with one use less only if nobody wrote it meanwhile (else checked again).
    /// Returns the record as it was before the use (its tags).
    pub async fn take(
        &self,
        proof: &TokenProof,
        nkey: &str,
        peel: &str,
        now: i64,
    ) -> Result<TokenRecord, TokenStoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((record, revision)) = self.get(&proof.id).await? else {
                return Err(TokenError::Unknown {
                    id: proof.id.clone(),
                }
                .into());
            };
            check_use(&record, proof, nkey, peel, now)?;
            let body = serde_json::to_vec(&used(&record, peel)).unwrap_or_default();
            match self.kv.update(&record.id, body.into(), revision).await {
                Ok(_) => return Ok(record),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(TokenStoreError::Contended {
            id: proof.id.clone(),
        })
    }
}

/// What `zester token create` asks.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct CreateRequest {
    /// Peel id glob the token may enrol.
    pub ids: String,
    /// Uses.
    pub uses: u32,
    /// Lifetime, seconds.
    pub ttl: i64,
    /// Trusted tags.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// Why an admin's token request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenAdminError {
    /// The request is not one.
    #[error("bad token request: {0}")]
    BadRequest(String),
    /// The bucket.
    #[error(transparent)]
    Store(#[from] TokenStoreError),
}

/// Serves `zester.admin.token.create|list|revoke` (the admin service routes them here).
pub async fn handle_admin(
    store: &TokenStore,
    subject: &str,
    payload: &[u8],
    by: &str,
) -> Result<serde_json::Value, TokenAdminError> {
    use crate::wire::admin::{TOKEN_CREATE, TOKEN_LIST, TOKEN_REVOKE};
    use serde_json::json;
    let bad = |why: String| TokenAdminError::BadRequest(why);
    let now = crate::home::now_unix();
    match subject {
        TOKEN_CREATE => {
            let request: CreateRequest =
                serde_json::from_slice(payload).map_err(|e| bad(e.to_string()))?;
            if request.uses == 0 {
                return Err(bad("--uses must be at least 1".into()));
            }
            if request.ttl <= 0 {
                return Err(bad("--ttl must be more than 0".into()));
            }
            if request.tags.len() > crate::wire::token::MAX_TAGS {
                return Err(bad(format!(
                    "at most {} tags",
                    crate::wire::token::MAX_TAGS
                )));
            }
            // A glob is a peel id with `*` and `?` in it.
            let sample = request.ids.replace(['*', '?'], "x");
            crate::identity::peel_id::PeelId::parse(&sample)
                .map_err(|e| bad(format!("--ids {:?}: {e}", request.ids)))?;
            let token = crate::wire::token::new_token(
                rand::random(),
                &request.ids,
                request.uses,
                request.ttl,
                request.tags,
                by,
                now,
            )?;
            store.create(&token.record).await?;
            tracing::info!(target: "audit", token = %token.record.id, ids = %token.record.ids, uses = token.record.uses, by = %token.record.created_by, "join token created");
            Ok(json!({
                "id": token.record.id,
                "token": token.text,
                "ids": token.record.ids,
                "uses": token.record.uses,
                "expires": token.record.expires_at,
                "tags": token.record.tags,
            }))
        }
        TOKEN_LIST => Ok(json!(store.list().await?)),
        TOKEN_REVOKE => {
            let request: serde_json::Value =
                serde_json::from_slice(payload).map_err(|e| bad(e.to_string()))?;
            let id = request["id"].as_str().unwrap_or_default();
            match store.revoke(id).await? {
                Some(record) => {
                    tracing::info!(target: "audit", token = %record.id, by = %by, "join token revoked");
                    Ok(json!({ "revoked": record.id }))
                }
                None => Err(bad(format!(
                    "no join token {id:?} (see `zester token list`)"
                ))),
            }
        }
        other => Err(bad(format!("unknown token subject {other}"))),
    }
}

impl From<TokenError> for TokenAdminError {
    fn from(e: TokenError) -> Self {
        TokenAdminError::Store(TokenStoreError::Refused(e))
    }
}
