//! Reads of a bucket key that the stream's leader answers. A bucket's own `entry` is a direct
//! get when the stream allows it (zester's buckets do), and on a cluster any replica answers
//! that: a follower that has not applied the latest write yet (one just added when a bucket's
//! copies were raised, say) gives an older record. A read whose revision a compare-and-set
//! then expects, or whose fields a change is built from, must be the latest: [`entry`] always
//! is (the grow's copy uses it); [`latest`] is unless the stream has no leader for a moment,
//! when it gives the nearest copy's record rather than wait (the node and token records).

use std::time::Duration;

use async_nats::jetstream::{kv, stream::LastRawMessageErrorKind};

/// How long [`latest`] waits for the stream's leader before it asks the nearest copy.
const LEADER_WAIT: Duration = Duration::from_secs(1);

/// [`entry`] if the stream's leader answers within 1 s (`LEADER_WAIT`), else the nearest copy's
/// record (the bucket's own direct get, which any copy answers).
///
/// While a cluster elects a new leader for the stream (its node just died) no leader answers
/// for seconds, and each leader read would wait out the JetStream API's 5 s timeout and fail
/// (`node list` right after the records' leader was killed). A copy that lags can only make a
/// compare-and-set that follows fail as a conflict, never lose a write. Where a stale record
/// would do harm by itself (the grow's copy), [`entry`] is used.
pub async fn latest(kv: &kv::Store, key: &str) -> Result<Option<kv::Entry>, kv::EntryError> {
    match tokio::time::timeout(LEADER_WAIT, entry(kv, key)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) if !crate::appliance::keys::store::is_transient(&e.to_string()) => Err(e),
        // No leader yet ("no responders" at once, or no answer in time).
        _ => kv.entry(key).await,
    }
}

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
