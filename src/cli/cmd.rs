//! `zester cmd TARGET FUN [ARG…]`: the Salt user's first command. Sends FUN to every accepted
//! peel whose id matches TARGET (an id or a glob) over the admin's connection, and reports one
//! row per peel: its answer, or that none came within the timeout.
//!
//! A peel that is accepted but whose agent has not subscribed yet answers "no responders": that
//! is retried until the timeout, so `zester cmd` right after `zester peel run` waits for the
//! agent instead of failing.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::client::{admin_connect_to, admin_request, StatusError};
use crate::cli::output::Output;
use crate::home::Home;
use crate::identity::peel_id::glob_matches;
use crate::wire::admin::{KeySummary, KEY_LIST};
use crate::wire::record::KeyState;

/// How long to wait between tries while a peel has no responder yet.
const RETRY_NO_RESPONDERS: Duration = Duration::from_millis(200);

/// Why `zester cmd` could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The appliance could not be asked.
    #[error(transparent)]
    Appliance(#[from] StatusError),
    /// No accepted peel matches.
    #[error("no accepted peel matches {target:?} (see `zester key list`)")]
    NoMatch {
        /// The target.
        target: String,
    },
}

/// What one peel said.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Its answer (JSON).
    Answer(Value),
    /// Nothing within the timeout.
    NoAnswer,
}

/// Runs FUN with `args` on every accepted peel matching `target`.
pub async fn run(
    home: &Home,
    admin: &crate::cli::client::AdminTarget,
    target: &str,
    fun: &str,
    args: &[String],
    timeout: Duration,
) -> Result<Output, CmdError> {
    let client = admin_connect_to(home, admin).await?;
    let keys: Vec<KeySummary> = serde_json::from_value(
        admin_request(&client, KEY_LIST, &json!({ "state": KeyState::Accepted })).await?,
    )
    .map_err(StatusError::Malformed)?;
    let mut ids: Vec<String> = keys
        .into_iter()
        .map(|k| k.id)
        .filter(|id| glob_matches(target, id))
        .collect();
    ids.sort();
    if ids.is_empty() {
        return Err(CmdError::NoMatch {
            target: target.to_string(),
        });
    }
    let payload = json!({ "fun": fun, "args": args }).to_string();
    let asks = ids.iter().map(|id| ask(&client, id, &payload, timeout));
    let replies = futures_util::future::join_all(asks).await;
    Ok(report(&ids, &replies, timeout))
}

/// Asks one peel, retrying while it has no responder, until `timeout`.
async fn ask(client: &async_nats::Client, id: &str, payload: &str, timeout: Duration) -> Reply {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Reply::NoAnswer;
        }
        let request = client.request(crate::wire::subjects::cmd(id), payload.to_string().into());
        match tokio::time::timeout(left, request).await {
            Ok(Ok(message)) => {
                return Reply::Answer(serde_json::from_slice(&message.payload).unwrap_or_else(
                    |_| Value::String(String::from_utf8_lossy(&message.payload).into_owned()),
                ))
            }
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                tokio::time::sleep(RETRY_NO_RESPONDERS.min(left)).await;
            }
            Ok(Err(_)) | Err(_) => return Reply::NoAnswer,
        }
    }
}

/// One row per peel, both ways; exit 1 when any peel did not answer.
pub fn report(ids: &[String], replies: &[Reply], timeout: Duration) -> Output {
    let width = ids.iter().map(String::len).max().unwrap_or(0);
    let mut human = String::new();
    let mut rows = Vec::new();
    let mut silent = 0;
    for (id, reply) in ids.iter().zip(replies) {
        match reply {
            Reply::Answer(answer) => {
                human.push_str(&format!("{id:width$}  {answer}\n"));
                rows.push(json!({ "id": id, "answered": true, "answer": answer }));
            }
            Reply::NoAnswer => {
                silent += 1;
                human.push_str(&format!(
                    "{id:width$}  no answer (within {} s)\n",
                    timeout.as_secs_f64()
                ));
                rows.push(json!({ "id": id, "answered": false }));
            }
        }
    }
    Output {
        human,
        json: json!(rows),
        exit_code: i32::from(silent > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_peel_and_exit_1_when_one_is_silent() {
        let ids = vec!["web-01".to_string(), "web-2".to_string()];
        let out = report(
            &ids,
            &[Reply::Answer(Value::Bool(true)), Reply::NoAnswer],
            Duration::from_secs(5),
        );
        assert_eq!(out.exit_code, 1);
        assert_eq!(out.human, "web-01  true\nweb-2   no answer (within 5 s)\n");
        assert_eq!(out.json[0]["answer"], true);
        assert_eq!(out.json[1]["answered"], false);
        let all = report(
            &ids[..1],
            &[Reply::Answer(json!(1))],
            Duration::from_secs(1),
        );
        assert_eq!(all.exit_code, 0);
    }
}
