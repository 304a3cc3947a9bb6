//! The CLI's client of a running appliance: connect with the admin creds, send one admin
//! request and unwrap its `{"ok": …}` / `{"error": …}` answer, and say clearly why there is no
//! answer (not running, restarting, nothing serving).

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::home::runtime::RuntimeInfo;
use crate::home::Home;
use crate::net::connect::{self, ClientSpec, Endpoint};
use crate::wire::admin::STATUS_SUBJECT;
use crate::wire::subjects::ADMIN_INBOX_PREFIX;

/// Connects to the running appliance with the admin creds (for `zester status`, `zester key`).
pub async fn admin_connect(home: &Home) -> Result<async_nats::Client, StatusError> {
    let runtime = RuntimeInfo::read(home).map_err(|reason| StatusError::NotRunning { reason })?;
    let endpoint = Endpoint {
        url: runtime.url.clone(),
        ca: home.ca_cert(),
    };
    let admin_creds = home.service_creds("admin");
    connect::connect(
        &endpoint,
        &ClientSpec {
            creds: &admin_creds,
            name: "zester-admin-cli",
            inbox_prefix: ADMIN_INBOX_PREFIX,
            long_lived: false,
        },
    )
    .await
    .map_err(|e| {
        if runtime.is_alive() {
            StatusError::Unreachable {
                pid: runtime.pid,
                reason: e.to_string(),
            }
        } else {
            StatusError::NotRunning {
                reason: format!(
                    "{e}; pid {} from {} is gone",
                    runtime.pid,
                    home.runtime_file().display()
                ),
            }
        }
    })
}

/// Sends one admin request and unwraps its `{"ok": …}` / `{"error": …}` answer.
pub async fn admin_request(
    client: &async_nats::Client,
    subject: &str,
    body: &impl Serialize,
) -> Result<Value, StatusError> {
    let body = serde_json::to_vec(body).map_err(StatusError::Malformed)?;
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject.to_string(), body.into()),
    )
    .await
    .map_err(|_| StatusError::NoAnswer)?
    .map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => StatusError::NotServing {
            subject: subject.to_string(),
        },
        async_nats::RequestErrorKind::TimedOut => StatusError::NoAnswer,
        _ => StatusError::NotRunning {
            reason: e.to_string(),
        },
    })?;
    let mut answer: Value =
        serde_json::from_slice(&reply.payload).map_err(StatusError::Malformed)?;
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Err(StatusError::Refused(error.to_string()));
    }
    match answer.get_mut("ok") {
        Some(ok) => Ok(ok.take()),
        None => Ok(answer),
    }
}

/// Asks a running appliance for its status (`zester status`), with the admin creds.
pub async fn query_status(home: &Home) -> Result<Value, StatusError> {
    let client = admin_connect(home).await?;
    admin_request(&client, STATUS_SUBJECT, &json!({})).await
}

/// Why `zester status` has no status to show.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing is running.
    #[error("zester is not running: {reason}")]
    NotRunning {
        /// Why we think so.
        reason: String,
    },
    /// zester runs, but its nats-server does not answer (e.g. while it is being restarted).
    #[error("zester (pid {pid}) is running, but its nats-server does not answer: {reason} (restarting? try again in a moment)")]
    Unreachable {
        /// zester's pid.
        pid: u32,
        /// The connection error.
        reason: String,
    },
    /// Connected, but no answer.
    #[error("zester is running but did not answer within 10 s (restarting nats-server? try again in a moment)")]
    NoAnswer,
    /// Connected, but nothing listens on the subject: zester's service connection, which serves
    /// the admin API, is reconnecting (after a restart of nats-server).
    #[error("zester is running but nothing serves {subject} right now (its service connection is reconnecting, e.g. after a restart of nats-server): try again in a moment")]
    NotServing {
        /// The request subject.
        subject: String,
    },
    /// The appliance answered with an error.
    #[error("{0}")]
    Refused(String),
    /// An answer that is not JSON.
    #[error("zester answered with an unreadable status: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// The admin API's `key show` for peel `id`: its record, fingerprint, revision and sessions.
pub async fn key_show(client: &async_nats::Client, id: &str) -> Result<Value, StatusError> {
    admin_request(
        client,
        crate::wire::admin::KEY_SHOW,
        &crate::wire::admin::KeyRequest {
            id: id.to_string(),
            fingerprint: None,
        },
    )
    .await
}
