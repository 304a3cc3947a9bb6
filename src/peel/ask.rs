//! A peel's request to the appliance on a subject only it may publish (rotation, renewal,
//! settings), and the one shape of every answer: `{"ok": …}` or `{"error": "…"}`.

use std::time::Duration;

use serde_json::Value;

/// Why a request to the appliance got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The request could not be sent or no one answers the subject.
    #[error("request on {subject}: {source}")]
    Request {
        /// The subject.
        subject: String,
        /// The client's error.
        source: async_nats::RequestError,
    },
    /// No answer in time.
    #[error("the master did not answer on {subject} within {} s", timeout.as_secs())]
    Timeout {
        /// The subject.
        subject: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The answer is not JSON.
    #[error("the master's answer on {subject} is not JSON: {source}")]
    Unreadable {
        /// The subject.
        subject: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The appliance answered with a refusal; its reason as it gave it.
    #[error("{0}")]
    Refused(String),
}

impl AskError {
    /// The appliance's reason, when it refused (rather than being unreachable or slow).
    pub fn refusal(&self) -> Option<&str> {
        match self {
            AskError::Refused(reason) => Some(reason),
            _ => None,
        }
    }
}

/// Sends `body` on `subject` and returns the answer's `ok` value (`Null` when absent).
pub async fn ask(
    client: &async_nats::Client,
    subject: String,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Value, AskError> {
    let reply = tokio::time::timeout(timeout, client.request(subject.clone(), body.into()))
        .await
        .map_err(|_| AskError::Timeout {
            subject: subject.clone(),
            timeout,
        })?
        .map_err(|source| AskError::Request {
            subject: subject.clone(),
            source,
        })?;
    let mut answer: Value =
        serde_json::from_slice(&reply.payload).map_err(|source| AskError::Unreadable {
            subject: subject.clone(),
            source,
        })?;
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Err(AskError::Refused(error.to_string()));
    }
    Ok(answer.get_mut("ok").map(Value::take).unwrap_or(Value::Null))
}
