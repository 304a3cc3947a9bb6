//! The servers' own list of the ZESTER account's connections (`$SYS.REQ.SERVER.<id>.CONNZ`
//! filtered by account, paged, for this node's server and every routed one), asked on the
//! system connection. The session table is zester's memory of what the callout admitted; this is the truth it is checked against: a revocation kicks what the table
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

/// Every connection of `account` (only those of `user` when given) that the servers report —
/// this node's server and, in a cluster, every server it has routes to — or `None` when a page
/// did not come (the caller must then not act on a partial list).
pub async fn list(
    sys: &async_nats::Client,
    account: &str,
    user: Option<&str>,
) -> Option<Vec<Connection>> {
    let mut found = Vec::new();
    for server in servers(sys).await {
        found.extend(list_on(sys, &server, account, user).await?);
    }
    Some(found)
}

/// The ids of this node's server and of the servers it has routes to. (The account-wide
/// `$SYS.REQ.ACCOUNT.<acc>.CONNZ` is answered by every server, and a request keeps only the
/// first answer, so each server is asked on its own.)
pub async fn servers(sys: &async_nats::Client) -> Vec<String> {
    let own = sys.server_info().server_id;
    let mut servers = vec![own.clone()];
    let subject = format!("$SYS.REQ.SERVER.{own}.ROUTEZ");
    let asked = sys.request(subject, "{}".into());
    if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(2), asked).await {
        let page: Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
        let routes = page["data"]["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for route in routes {
            if let Some(id) = route["remote_id"].as_str() {
                if !servers.iter().any(|s| s == id) {
                    servers.push(id.to_string());
                }
            }
        }
    }
    servers
}

/// The connections of `account` (of `user` when given) on the server `server_id`, paged.
pub async fn list_on(
    sys: &async_nats::Client,
    server_id: &str,
    account: &str,
    user: Option<&str>,
) -> Option<Vec<Connection>> {
    let mut found = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut body = json!({ "auth": true, "acc": account, "offset": offset, "limit": PAGE });
        if let Some(user) = user {
            body["user"] = json!(user);
        }
        let subject = format!("$SYS.REQ.SERVER.{server_id}.CONNZ");
        let asked = sys.request(subject, body.to_string().into());
        let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(2), asked).await else {
            tracing::warn!(
                server = server_id,
                "listing the account's connections: no answer from the server"
            );
            return None;
        };
        let page: Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
        let data = &page["data"];
        let connections = data["connections"].as_array().cloned().unwrap_or_default();
        for connection in &connections {
            found.push(Connection {
                server_id: server_id.to_string(),
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
