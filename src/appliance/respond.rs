//! The one way zester's services answer a request (DESIGN §4, "no confused deputy").
//!
//! A service's answer is published with the rights of zester's service connection, to the
//! reply subject the asker chose. [`checked_reply`] runs first, before the service acts on the
//! request: a request whose reply subject is not the asker's own inbox is not acted on and not
//! answered, and an audit line (`reply_refused`) says who named what. [`answer`] then sends the
//! `{"ok": …}` / `{"error": …}` document. Every service (enrol, rotate, settings, admin, status)
//! goes through both, so a new one cannot forget the rule.

use async_nats::{Message, Subject};
use serde_json::{json, Value};

use crate::appliance::callout::audit::{AuditRecord, AuditSink, Source, Verdict};
use crate::home::now_unix;
use crate::wire::reply::{self, Asker};

/// The reply subject of `message` if it may be answered for `asker`; otherwise audits the
/// refusal (as `service`) and returns `None`. A request without a reply is ignored silently.
pub fn checked_reply(
    message: &Message,
    asker: Asker<'_>,
    service: Source,
    audit: &AuditSink,
) -> Option<Subject> {
    let reply = message.reply.as_ref()?;
    match reply::check(asker, reply.as_str()) {
        Ok(()) => Some(reply.clone()),
        Err(refused) => {
            let mut record = AuditRecord::at(now_unix(), service, Verdict::Refuse);
            record.code = "reply_refused".into();
            record.reason = format!("{refused} (request on {} not acted on)", message.subject);
            match asker {
                Asker::Peel(id) => {
                    record.peel_id = id.to_string();
                    record.role = "peel".into();
                }
                Asker::Enrolling(nkey) => {
                    record.nkey = nkey.to_string();
                    record.role = "enrolling".into();
                }
                Asker::Admin => record.role = "admin".into(),
                Asker::Master => record.role = "master".into(),
            }
            audit.record(record);
            None
        }
    }
}

/// For a peel's request on `zester.event.<id>.<name>` (a subject only peel `<id>` may publish
/// on): the peel id and the reply subject [`checked_reply`] let through; `None` for anything
/// else.
pub fn peel_request(
    message: &Message,
    service: Source,
    audit: &AuditSink,
) -> Option<(String, Subject)> {
    let id = crate::wire::subjects::event_peel(message.subject.as_str())?.to_string();
    let reply = checked_reply(message, Asker::Peel(&id), service, audit)?;
    Some((id, reply))
}

/// Publishes `outcome` to `reply` (a subject [`checked_reply`] let through) as `{"ok": …}` or
/// `{"error": "…"}`.
pub async fn answer<T: serde::Serialize, E: std::fmt::Display>(
    client: &async_nats::Client,
    reply: Subject,
    outcome: Result<T, E>,
    what: &str,
) {
    let document = match outcome {
        Ok(value) => json!({ "ok": value }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    publish(client, reply, &document, what).await;
}

/// Publishes `document` as it is to `reply` (a subject [`checked_reply`] let through).
pub async fn publish(client: &async_nats::Client, reply: Subject, document: &Value, what: &str) {
    let body = serde_json::to_vec(document).unwrap_or_default();
    if let Err(e) = client.publish(reply, body.into()).await {
        tracing::warn!("answering {what}: {e}");
    }
}
