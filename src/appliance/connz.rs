//! The servers' own list of the ZESTER account's connections (`$SYS.REQ.ACCOUNT.<acc>.CONNZ`,
//! paged), asked on the system connection. The session table is zester's memory of what the
//! callout admitted; this is the truth it is checked against: a revocation kicks what the table
//! does not list, and after a restart of the child (when disconnect events can be missed while
//! the system connection is away) the table forgets what the server no longer has.

use std::time::Duration;

use serde_json::{json, Value};

/// How many connections one page lists.
const PAGE: u64 = 256;

/// One live connection as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The server it is on.
    pub server_id: String,
    /// Its client id there.
    pub cid: u64,
    /// Its user (for a callout session: the name in the JWT the callout issued).
    pub user: String,
}

/// Every connection of `account` (only those of `user` when given) the servers report, or
/// `None` when a page did not come (the caller must then not act on a partial list).
pub async fn list(
    sys: &async_nats::Client,
    account: &str,
    user: Option<&str>,
) -> Option<Vec<Connection>> {
    let mut found = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut body = json!({ "auth": true, "offset": offset, "limit": PAGE });
        if let Some(user) = user {
            body["user"] = json!(user);
        }
        let subject = format!("$SYS.REQ.ACCOUNT.{account}.CONNZ");
        let asked = sys.request(subject, body.to_string().into());
        let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(2), asked).await else {
            tracing::warn!("listing the account's connections: no answer from the server");
            return None;
        };
        let page: Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
        let data = &page["data"];
        let server = data["server_id"].as_str().unwrap_or_default().to_string();
        let connections = data["connections"].as_array().cloned().unwrap_or_default();
        for connection in &connections {
            found.push(Connection {
                server_id: server.clone(),
                cid: connection["cid"].as_u64().unwrap_or_default(),
                user: connection["authorized_user"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        let total = data["total"].as_u64().unwrap_or_default();
        offset += connections.len() as u64;
        if connections.is_empty() || offset >= total {
            return Some(found);
        }
    }
}
