//! `zester token create|list|revoke`: join tokens through the running appliance's admin API
//! (`zester.admin.token.*`). The token's secret is printed once, by `create`, and nowhere
//! else: the appliance keeps only its public key and limits.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::cli::client::{admin_connect_to, admin_request, AdminTarget, StatusError};
use crate::cli::output::Output;
use crate::home::Home;
use crate::identity::time::{parse_duration, rfc3339, DurationError};
use crate::wire::admin::{TOKEN_CREATE, TOKEN_LIST, TOKEN_REVOKE};

/// Why a token command failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenCommandError {
    /// The running appliance could not be reached, or refused.
    #[error(transparent)]
    Appliance(#[from] StatusError),
    /// A bad `--ttl`.
    #[error("--ttl: {0}")]
    Ttl(DurationError),
    /// A bad `--tag`.
    #[error("--tag {0:?}: write KEY=VALUE (KEY of letters, digits, _ - . /; VALUE printable, at most 128 characters each)")]
    Tag(String),
}

/// What `zester token create` was given.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// `--ids GLOB` (default `*`).
    pub ids: String,
    /// `--uses N` (default 1).
    pub uses: u32,
    /// `--ttl DUR` (default 1h).
    pub ttl: String,
    /// `--tag KEY=VALUE`, repeated.
    pub tags: Vec<String>,
}

/// `zester token create`: prints the token once.
pub async fn create(
    home: &Home,
    target: &AdminTarget,
    options: &CreateOptions,
) -> Result<Output, TokenCommandError> {
    let ttl = parse_duration(&options.ttl).map_err(TokenCommandError::Ttl)?;
    let mut tags = BTreeMap::new();
    for tag in &options.tags {
        let (key, value) = crate::wire::token::parse_tag(tag)
            .ok_or_else(|| TokenCommandError::Tag(tag.clone()))?;
        tags.insert(key, value);
    }
    // Who made it is what the appliance verified of this connection's signature, not a name
    // sent here.
    let client = admin_connect_to(home, target).await?;
    let created = admin_request(
        &client,
        TOKEN_CREATE,
        &json!({ "ids": options.ids, "uses": options.uses, "ttl": ttl, "tags": tags }),
    )
    .await?;
    let human = format!(
        "{}\n\nJoin token {} for ids {:?}: {} use(s), expires {}{}.\nShown once: give it to the peel (`zester peel enrol … --token TOKEN`, or ZESTER_JOIN_TOKEN).\n",
        created["token"].as_str().unwrap_or("?"),
        created["id"].as_str().unwrap_or("?"),
        created["ids"].as_str().unwrap_or("?"),
        created["uses"],
        rfc3339(created["expires"].as_i64().unwrap_or(0)),
        tags_text(&created["tags"]),
    );
    Ok(Output {
        human,
        json: created,
        exit_code: 0,
    })
}

fn tags_text(tags: &Value) -> String {
    let text: Vec<String> = tags
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    if text.is_empty() {
        String::new()
    } else {
        format!(", tags {}", text.join(" "))
    }
}

/// `zester token list`: never the secret (the appliance does not have it).
pub async fn list(home: &Home, target: &AdminTarget) -> Result<Output, TokenCommandError> {
    let client = admin_connect_to(home, target).await?;
    let list = admin_request(&client, TOKEN_LIST, &json!({})).await?;
    let now = crate::home::now_unix();
    let mut human = format!(
        "{:<18} {:<16} {:<9} {:<22} {:<9} {}\n",
        "ID", "IDS", "USES", "EXPIRES", "STATE", "USED BY"
    );
    let tokens = list.as_array().cloned().unwrap_or_default();
    for t in &tokens {
        let expires = t["expires_at"].as_i64().unwrap_or(0);
        let state = if t["revoked"].as_bool().unwrap_or(false) {
            "revoked"
        } else if expires <= now {
            "expired"
        } else if t["uses_left"].as_u64() == Some(0) {
            "used up"
        } else {
            "valid"
        };
        let used_by: Vec<&str> = t["used_by"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        human.push_str(&format!(
            "{:<18} {:<16} {:<9} {:<22} {:<9} {}\n",
            t["id"].as_str().unwrap_or("?"),
            t["ids"].as_str().unwrap_or("?"),
            format!("{}/{}", t["uses_left"], t["uses"]),
            rfc3339(expires),
            state,
            used_by.join(","),
        ));
    }
    human.push_str(&format!("{} token(s)\n", tokens.len()));
    Ok(Output {
        human,
        json: list,
        exit_code: 0,
    })
}

/// `zester token revoke ID`.
pub async fn revoke(
    home: &Home,
    target: &AdminTarget,
    id: &str,
) -> Result<Output, TokenCommandError> {
    let client = admin_connect_to(home, target).await?;
    let revoked = admin_request(&client, TOKEN_REVOKE, &json!({ "id": id })).await?;
    Ok(Output {
        human: format!(
            "join token {} revoked: it enrols nobody from now on\n",
            revoked["revoked"].as_str().unwrap_or(id)
        ),
        json: revoked,
        exit_code: 0,
    })
}
