//! Per-peel settings (Salt's pillar): one JSON document per peel in the JetStream KV bucket
//! `zester-settings`, written only by the master, readable only by that peel.
//!
//! Only zester's store connection touches the bucket. A peel holds no `$JS.`/`$KV.` grant (a
//! JetStream answer goes wherever the requester says, sent from inside the account): it asks on
//! `zester.event.<id>.settings`, a subject only it may publish on, and zester's settings service
//! answers with that peel's document, only to that peel's inbox ([`serve_peels`]). So a peel
//! can neither read another peel's document nor write its own. Values that are secret
//! envelopes (`ENC[…]`, see `secrets`) travel sealed and are opened only on the peel, in memory
//! ([`open_secrets`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use async_nats::jetstream::{self, kv};
use nkeys::XKey;
use serde_json::Value;

use crate::appliance::callout::audit::AuditSink;
use crate::appliance::respond;
use crate::identity::peel_id::PeelId;
use crate::secrets;
use crate::wire::reply::Asker;
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
    Bucket(String),
    /// A read or write failed.
    #[error("settings of peel {id}: {reason}")]
    Kv {
        /// The peel.
        id: String,
        /// Why.
        reason: String,
    },
    /// Not a JSON object.
    #[error("settings of peel {id} must be a JSON object: {reason}")]
    NotAnObject {
        /// The peel.
        id: String,
        /// Why.
        reason: String,
    },
    /// A secret in the document does not open on this peel.
    #[error("settings value {path}: {source}")]
    Secret {
        /// Where in the document (JSON pointer).
        path: String,
        /// Why.
        source: secrets::SecretError,
    },
}

/// The master's side of the bucket.
pub struct SettingsStore {
    kv: kv::Store,
}

impl SettingsStore {
    /// Opens (or creates) the bucket on zester's store connection.
    pub async fn open(client: async_nats::Client) -> Result<SettingsStore, SettingsError> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.to_string(),
                    description:
                        "zester: per-peel settings; the master writes, each peel reads its own"
                            .into(),
                    history: 5,
                    max_value_size: MAX_DOCUMENT,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| SettingsError::Bucket(e.to_string()))?,
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
            .map_err(|e| SettingsError::Kv {
                id: id.to_string(),
                reason: e.to_string(),
            })
    }

    /// The settings of `id`, if any.
    pub async fn get(&self, id: &PeelId) -> Result<Option<Value>, SettingsError> {
        let kv_error = |reason: String| SettingsError::Kv {
            id: id.to_string(),
            reason,
        };
        match self.kv.get(id.as_str()).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| kv_error(format!("stored document is not JSON: {e}"))),
            Ok(None) => Ok(None),
            Err(e) => Err(kv_error(e.to_string())),
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
    let mut requests = client.subscribe(subjects::SETTINGS_REQUESTS).await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            // The server let only peel <id> publish on zester.event.<id>.settings.
            let Some(id) = subjects::event_peel(message.subject.as_str()) else {
                continue;
            };
            let Some(reply) = respond::checked_reply(&message, Asker::Peel(id), "settings", &audit)
            else {
                continue;
            };
            let Ok(id) = PeelId::parse(id) else { continue };
            let (store, client) = (store.clone(), client.clone());
            tokio::spawn(async move {
                let outcome = store.get(&id).await.map(|doc| doc.unwrap_or(Value::Null));
                respond::answer(&client, reply, outcome, "a settings request").await;
            });
        }
    }))
}

/// The peel's side: asks for its own settings document (`None` when it has none).
pub async fn fetch(
    client: &async_nats::Client,
    id: &PeelId,
) -> Result<Option<Value>, SettingsError> {
    let kv_error = |reason: String| SettingsError::Kv {
        id: id.to_string(),
        reason,
    };
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subjects::settings(id), "".into()),
    )
    .await
    .map_err(|_| kv_error("no answer within 5 s".into()))?
    .map_err(|e| kv_error(e.to_string()))?;
    let mut answer: Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| kv_error(format!("the answer is not JSON: {e}")))?;
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Err(kv_error(error.to_string()));
    }
    match answer.get_mut("ok").map(Value::take) {
        Some(Value::Null) | None => Ok(None),
        Some(document) => Ok(Some(document)),
    }
}

/// Opens, in memory, every string in `document` that is a secret envelope for `peel` (sealed by
/// the master's curve key `master_xkey`); other values are kept as they are.
pub fn open_secrets(
    document: &Value,
    peel: &XKey,
    master_xkey: &str,
) -> Result<Value, SettingsError> {
    fn walk(value: &Value, path: &str, peel: &XKey, master: &str) -> Result<Value, SettingsError> {
        Ok(match value {
            Value::String(text) if text.starts_with("ENC[") => {
                let plain =
                    secrets::open(text, peel, master).map_err(|source| SettingsError::Secret {
                        path: path.to_string(),
                        source,
                    })?;
                Value::String(String::from_utf8_lossy(&plain).into_owned())
            }
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), walk(v, &format!("{path}/{k}"), peel, master)?)))
                    .collect::<Result<_, SettingsError>>()?,
            ),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| walk(v, &format!("{path}/{i}"), peel, master))
                    .collect::<Result<_, SettingsError>>()?,
            ),
            other => other.clone(),
        })
    }
    walk(document, "", peel, master_xkey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_open_in_place_and_only_for_their_peel() {
        let master = XKey::new();
        let peel = XKey::new();
        let sealed = secrets::seal(b"hunter2", &master, &peel.public_key()).unwrap();
        let doc = serde_json::json!({"region": "eu", "db": {"password": sealed, "ports": [1, 2]}});
        let opened = open_secrets(&doc, &peel, &master.public_key()).unwrap();
        assert_eq!(opened["db"]["password"], "hunter2");
        assert_eq!(opened["region"], "eu");
        assert_eq!(opened["db"]["ports"], serde_json::json!([1, 2]));
        let other = XKey::new();
        let err = open_secrets(&doc, &other, &master.public_key()).unwrap_err();
        assert!(err.to_string().contains("/db/password"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
    }
}
