//! The admin API's wire (`zester.admin.…`): the subjects, and the requests and answers `zester
//! key …`, `settings`, `creds rotate` and `creds issue` send and the appliance's admin service
//! reads. Every answer is `{"ok": …}` or `{"error": "…"}`, sent only to `_INBOX._admin.…`.

use serde::{Deserialize, Serialize};

use crate::wire::record::{KeyRecord, KeyState, StateChange};

/// Subject of the admin status request (answered by any node of a cluster).
pub const STATUS_SUBJECT: &str = "zester.admin.status";

/// The status request only node `node` answers (`zester status` asks the node it is connected
/// to, so that a cluster's status names that node; the services of every node answer
/// [`STATUS_SUBJECT`] in one queue group).
pub fn node_status_subject(node: &str) -> String {
    format!("{STATUS_SUBJECT}.{node}")
}
/// Prefix of every key admin subject.
pub const KEY_SUBJECTS: &str = "zester.admin.key.>";
/// List keys.
pub const KEY_LIST: &str = "zester.admin.key.list";
/// Show one key.
pub const KEY_SHOW: &str = "zester.admin.key.show";
/// Change a key's state.
pub const KEY_CHANGE: &str = "zester.admin.key.change";
/// Delete a key record.
pub const KEY_DELETE: &str = "zester.admin.key.delete";
/// Register an accepted key made by `zester creds issue` (the record as JSON).
pub const KEY_REGISTER: &str = "zester.admin.key.register";
/// Replace a peel's settings document (`{"id", "document"}`).
pub const SETTINGS_SET: &str = "zester.admin.settings.set";
/// Read a peel's settings document (`{"id"}`).
pub const SETTINGS_GET: &str = "zester.admin.settings.get";
/// Both settings subjects.
pub const SETTINGS_REQUESTS: &str = "zester.admin.settings.*";
/// Rotate the master's or the admin's creds (`{"role": "master"|"admin"}`).
pub const CREDS_ROTATE: &str = "zester.admin.creds.rotate";
/// Join tokens: `create`, `list`, `revoke`.
pub const TOKEN_REQUESTS: &str = "zester.admin.token.*";
/// Makes a join token.
pub const TOKEN_CREATE: &str = "zester.admin.token.create";
/// Lists join tokens (never their secrets).
pub const TOKEN_LIST: &str = "zester.admin.token.list";
/// Revokes a join token.
pub const TOKEN_REVOKE: &str = "zester.admin.token.revoke";

/// `list`: keys in a state (all when `None`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListRequest {
    /// The state to list.
    pub state: Option<KeyState>,
    /// Only records with denied claims (`key list --state denied`).
    #[serde(default)]
    pub denied: bool,
}

/// One line of `zester key list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySummary {
    /// Peel id.
    pub id: String,
    /// Its key.
    pub nkey: String,
    /// Fingerprint of the key.
    pub fingerprint: String,
    /// State.
    pub state: KeyState,
    /// Last change, unix seconds.
    pub updated_at: i64,
    /// Who made the last change and why.
    pub last_change: Option<StateChange>,
    /// When the identity JWT handed out last expires (0 = never; absent = not recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_expires_at: Option<i64>,
    /// When the peel last renewed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<i64>,
    /// Trusted tags (set through a join token).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Enrolments that claimed this id with another key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<crate::wire::record::DeniedClaim>,
}

impl KeySummary {
    /// The summary of `record`.
    pub fn of(record: &KeyRecord) -> KeySummary {
        KeySummary {
            id: record.id.to_string(),
            nkey: record.nkey.clone(),
            fingerprint: record.fingerprint(),
            state: record.state,
            updated_at: record.updated_at,
            last_change: record.last_change().cloned(),
            jwt_expires_at: record.jwt_expires_at,
            renewed_at: record.renewed_at,
            tags: record.tags.clone(),
            denied: record.denied.clone(),
        }
    }
}

/// `show` and `delete`: one key, optionally guarded by its fingerprint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyRequest {
    /// Peel id.
    pub id: String,
    /// Act only if the key still has this fingerprint.
    pub fingerprint: Option<String>,
}

/// `change`: move a key to another state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeRequest {
    /// Peel id.
    pub id: String,
    /// The new state.
    pub to: KeyState,
    /// What the client says about who asks: not trusted, not recorded. The history records
    /// the admin whose key signed the request (`wire::admin_auth`).
    pub by: String,
    /// Why (recorded in the history).
    pub reason: String,
    /// Act only if the key still has this fingerprint.
    pub fingerprint: Option<String>,
    /// Act only if the key is still in this state (what the admin saw), so that two admins
    /// deciding on the same pending key at once cannot both win.
    #[serde(default)]
    pub from: Option<KeyState>,
    /// Re-bind the id to the denied claim whose fingerprint is `fingerprint` (`key accept
    /// --replace`): the old key is revoked and kicked.
    #[serde(default)]
    pub replace: bool,
}

/// What a change did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeReply {
    /// The record after the change.
    pub record: KeyRecord,
    /// Live sessions kicked (revocation).
    pub kicked: usize,
    /// Time from the request to the last kick answered, ms (revocation).
    pub cut_off_ms: Option<f64>,
}

/// Add a named admin (`{"name", "nkey"}`): `zester admin add` with an appliance running.
pub const ADMINS_ADD: &str = "zester.admin.admins.add";
/// List the named admins.
pub const ADMINS_LIST: &str = "zester.admin.admins.list";
/// Remove a named admin (`{"name"}`): its key revoked, its sessions kicked.
pub const ADMINS_REMOVE: &str = "zester.admin.admins.remove";
/// The named-admin subjects.
pub const ADMINS_REQUESTS: &str = "zester.admin.admins.*";

/// Whether a request on `subject` changes something, and so must carry an admin's signature
/// (see [`crate::wire::admin_auth`]): reads may come unsigned.
pub fn changes_something(subject: &str) -> bool {
    !matches!(
        subject,
        KEY_LIST | KEY_SHOW | SETTINGS_GET | ADMINS_LIST | TOKEN_LIST | NODE_LIST
    )
}

/// The cluster's nodes: `list`, `accept`, `remove`.
pub const NODE_REQUESTS: &str = "zester.admin.node.*";
/// Lists the nodes.
pub const NODE_LIST: &str = "zester.admin.node.list";
/// Accepts a joining node (`{"name", "fingerprint"?}`).
pub const NODE_ACCEPT: &str = "zester.admin.node.accept";
/// Removes a node (`{"name"}`).
pub const NODE_REMOVE: &str = "zester.admin.node.remove";

/// `node accept` / `node remove`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeChange {
    /// The node's name.
    pub name: String,
    /// `accept` only: the fingerprint the admin expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// `remove` only: remove it even if the nodes left up would be no majority.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// One named admin, as the appliance keeps it (`<home>/auth/admins.json`) and lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminEntry {
    /// The admin's name.
    pub name: crate::identity::admin_name::AdminName,
    /// Its user key (`U…`).
    pub nkey: String,
    /// When it was added, unix seconds.
    pub added_at: i64,
    /// Who added it (`admin`, `admin:<name>`), as the appliance verified it.
    pub added_by: String,
}

/// `admins.add`: a named admin's public key, made by the CLI with its creds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminAddRequest {
    /// The name.
    pub name: String,
    /// The admin's user key.
    pub nkey: String,
    /// Replace an admin of that name (its old key is revoked and kicked).
    #[serde(default)]
    pub force: bool,
}

/// `admins.remove`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminRemoveRequest {
    /// The name.
    pub name: String,
}
