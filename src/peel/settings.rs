//! Per-peel settings, the peel's half: ask for its own document (`zester.event.<id>.settings`,
//! answered only to this peel's inbox) and open the secret envelopes in it, in memory only.

use std::time::Duration;

use nkeys::XKey;
use serde_json::Value;

use crate::identity::peel_id::PeelId;
use crate::peel::ask::{ask, AskError};
use crate::secrets;
use crate::wire::subjects;

/// Why the settings could not be fetched or opened.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The request failed or the appliance refused it.
    #[error("settings of peel {id}: {source}")]
    Fetch {
        /// The peel.
        id: String,
        /// Why.
        source: AskError,
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

/// The peel's side: asks for its own settings document (`None` when it has none).
pub async fn fetch(
    client: &async_nats::Client,
    id: &PeelId,
) -> Result<Option<Value>, SettingsError> {
    match ask(
        client,
        subjects::settings(id),
        Vec::new(),
        Duration::from_secs(5),
    )
    .await
    {
        Ok(Value::Null) => Ok(None),
        Ok(document) => Ok(Some(document)),
        Err(source) => Err(SettingsError::Fetch {
            id: id.to_string(),
            source,
        }),
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
