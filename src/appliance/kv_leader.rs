//! Reads of a bucket key that the stream's leader answers. A bucket's own `entry` is a direct
//! get when the stream allows it (zester's buckets do), and on a cluster any replica answers
//! that: a follower that has not applied the latest write yet (one just added when a bucket's
//! copies were raised, say) gives an older record. A read whose revision a compare-and-set
//! then expects, or whose fields a change is built from, must be the latest: these are.

use async_nats::jetstream::{kv, stream::LastRawMessageErrorKind};

/// The latest record of `key` in bucket `kv`, as its stream's leader has it: its value, its
/// revision and what it was (a put, a delete or a purge); `None` when the key has none.
pub async fn entry(kv: &kv::Store, key: &str) -> Result<Option<kv::Entry>, kv::EntryError> {
    let subject = format!("{}{}", kv.prefix, key);
    let message = match kv.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => message,
        Err(e) => {
            return match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => Ok(None),
                LastRawMessageErrorKind::InvalidSubject => {
                    Err(kv::EntryError::new(kv::EntryErrorKind::InvalidKey))
                }
                _ => Err(kv::EntryError::with_source(kv::EntryErrorKind::Other, e)),
            }
        }
    };
    let operation = match message
        .headers
        .get("KV-Operation")
        .map(|value| value.as_str())
    {
        Some("DEL") => kv::Operation::Delete,
        Some("PURGE") => kv::Operation::Purge,
        _ => kv::Operation::Put,
    };
    Ok(Some(kv::Entry {
        bucket: kv.name.clone(),
        key: key.to_string(),
        value: message.payload,
        revision: message.sequence,
        delta: 0,
        created: message.time,
        operation,
        seen_current: false,
    }))
}
