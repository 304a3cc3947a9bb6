//! Per-peel settings (Salt's pillar), the appliance's half: one JSON document per peel in the
//! JetStream KV bucket `zester-settings`, written only through the admin API, and the service
//! that answers a peel's request for its own document.
//!
//! Only zester's store connection touches the bucket. A peel holds no `$JS.`/`$KV.` grant (a
//! JetStream answer goes wherever the requester says, sent from inside the account): it asks on
//! `zester.event.<id>.settings`, a subject only it may publish on, and [`serve_peels`] answers
//! with that peel's document, only to that peel's inbox. So a peel can neither read another
//! peel's document nor write its own. Secret values (`ENC[…]`) stay sealed here; the peel
//! opens them (`peel::settings`).

use crate::wire::subjects::SERVICE_QUEUE;
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde_json::Value;

use crate::appliance::callout::audit::AuditSink;
use crate::appliance::callout::audit::Source;
use crate::appliance::respond;
use crate::identity::peel_id::PeelId;
use crate::wire::subjects;

/// The bucket.
pub const BUCKET: &str = crate::wire::subjects::SETTINGS_BUCKET;
/// Largest settings document.
const MAX_DOCUMENT: i32 = 256 * 1024;

/// Why settings could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The bucket could not be opened or created.
    #[error("settings bucket {BUCKET}: {0}")]
    Bucket(#[from] async_nats::jetstream::context::CreateKeyValueError),
    /// A write failed.
    #[error("settings of peel {id}: {source}")]
    Put {
        /// The peel.
        id: String,
        /// The bucket's error.
        source: async_nats::jetstream::kv::PutError,
    },
    /// A read failed.
    #[error("settings of peel {id}: {source}")]
    Get {
        /// The peel.
        id: String,
        /// The bucket's error.
        source: async_nats::jetstream::kv::EntryError,
    },
    /// The stored document is not JSON.
    #[error("settings of peel {id}: the stored document is not JSON: {source}")]
    Stored {
        /// The peel.
        id: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// Not a JSON object.
    #[error("settings of peel {id} must be a JSON object: {reason}")]
    NotAnObject {
        /// The peel.
        id: String,
        /// Why.
        reason: String,
    },
}

/// The master's side of the bucket.
pub struct SettingsStore {
    kv: kv::Store,
}

impl SettingsStore {
    /// Opens (or creates, with `replicas` copies) the bucket on zester's store connection.
    pub async fn open(
        client: async_nats::Client,
        replicas: usize,
    ) -> Result<SettingsStore, SettingsError> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => {
                js.create_key_value(kv::Config {
                    bucket: BUCKET.to_string(),
                    description:
                        "zester: per-peel settings; the master writes, each peel reads its own"
                            .into(),
                    history: 5,
                    max_value_size: MAX_DOCUMENT,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await?
            }
        };
        Ok(SettingsStore { kv })
    }

    /// Replaces the settings of `id` with `document` (a JSON object); returns the revision.
    pub async fn set(&self, id: &PeelId, document: &Value) -> Result<u64, SettingsError> {
        if !document.is_object() {
            return Err(SettingsError::NotAnObject {
                id: id.to_string(),
                reason: "got another JSON value".into(),
            });
        }
        let bytes = serde_json::to_vec(document).unwrap_or_default();
        self.kv
            .put(id.as_str(), bytes.into())
            .await
            .map_err(|source| SettingsError::Put {
                id: id.to_string(),
                source,
            })
    }

    /// The settings of `id`, if any.
    pub async fn get(&self, id: &PeelId) -> Result<Option<Value>, SettingsError> {
        match self.kv.get(id.as_str()).await {
            Ok(Some(bytes)) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| SettingsError::Stored {
                        id: id.to_string(),
                        source,
                    })
            }
            Ok(None) => Ok(None),
            Err(source) => Err(SettingsError::Get {
                id: id.to_string(),
                source,
            }),
        }
    }
}

/// Answers peels' requests for their settings (`zester.event.<id>.settings`, on zester's
/// service connection) with that peel's document or `null`, only to that peel's inbox.
pub async fn serve_peels(
    store: Arc<SettingsStore>,
    client: async_nats::Client,
    audit: AuditSink,
) -> Result<tokio::task::JoinHandle<()>, async_nats::Error> {
    let mut requests = client
        .queue_subscribe(subjects::SETTINGS_REQUESTS, SERVICE_QUEUE.into())
        .await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let Some((id, reply)) = respond::peel_request(&message, Source::Settings, &audit)
            else {
                continue;
            };
            let Ok(id) = PeelId::parse(&id) else { continue };
            let (store, client) = (store.clone(), client.clone());
            tokio::spawn(async move {
                let outcome = store.get(&id).await.map(|doc| doc.unwrap_or(Value::Null));
                respond::answer(&client, reply, outcome, "a settings request").await;
            });
        }
    }))
}
