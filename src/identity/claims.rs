//! NATS JWT v2 claim types: operator, account, user, authorization request and response.
//!
//! JSON names are exactly those of nats-io/jwt v2 (`v2/*_claims.go`), so tokens made by nsc,
//! nats-server or jwt.js decode here and ours decode there. Parts zester never interprets
//! (imports, exports, mappings, tiered limits…) are kept as raw JSON so nothing is lost when
//! such a token is read and shown. Numbers left out by Go's `omitempty` decode as 0.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::keys::KeyRole;

/// The JWT format version this code reads and writes.
pub const JWT_VERSION: u32 = 2;

/// "No limit" in NATS limits.
pub const NO_LIMIT: i64 = -1;

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The registered JWT claims shared by every NATS claim type, plus the NATS-specific body `nats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims<N> {
    /// Audience (`aud`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aud: String,
    /// Expiry, unix seconds; 0 = never (`exp`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exp: i64,
    /// Token id: base32 of SHA-512/256 over the registered claims (`jti`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    /// Issued at, unix seconds (`iat`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub iat: i64,
    /// Public key of the signer (`iss`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iss: String,
    /// Human-readable name (`name`); for peels, the peel id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Not valid before, unix seconds; 0 = always (`nbf`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nbf: i64,
    /// Public key of the entity the token describes (`sub`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub: String,
    /// The NATS-specific body.
    #[serde(default)]
    pub nats: N,
}

/// What the codec needs to know about each claim body.
pub trait ClaimBody: Serialize + DeserializeOwned + Default {
    /// The `nats.type` value.
    const TYPE: &'static str;
    /// Key roles allowed to sign this kind of claim (nats-io/jwt `ExpectedPrefixes`).
    const ISSUER_ROLES: &'static [KeyRole];
    /// Key roles allowed as `sub`.
    const SUBJECT_ROLES: &'static [KeyRole];
    /// The `nats.type` found in a decoded token.
    fn claim_type(&self) -> &str;
    /// The `nats.version` found in a decoded token.
    fn version(&self) -> u32;
    /// Sets `nats.type` and `nats.version` before encoding.
    fn stamp(&mut self);
}

macro_rules! claim_body {
    ($body:ty, $type:literal, issuers: $issuers:expr, subjects: $subjects:expr) => {
        impl ClaimBody for $body {
            const TYPE: &'static str = $type;
            const ISSUER_ROLES: &'static [KeyRole] = $issuers;
            const SUBJECT_ROLES: &'static [KeyRole] = $subjects;
            fn claim_type(&self) -> &str {
                &self.claim_type
            }
            fn version(&self) -> u32 {
                self.version
            }
            fn stamp(&mut self) {
                self.claim_type = Self::TYPE.to_string();
                self.version = JWT_VERSION;
            }
        }
    };
}

/// An allow/deny list of subjects (`Permission`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Permission {
    /// Subjects allowed; empty means all (unless denied).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub allow: Vec<String>,
    /// Subjects denied.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub deny: Vec<String>,
}

impl Permission {
    /// True when neither list has an entry.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// Permission to answer requests received (`ResponsePermission`, i.e. allow_responses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponsePermission {
    /// How many replies per request (0 = server default of 1).
    #[serde(default)]
    pub max: i64,
    /// How long a reply subject stays usable, nanoseconds (0 = server default).
    #[serde(default)]
    pub ttl: i64,
}

/// Publish / subscribe / response permissions (`Permissions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Permissions {
    /// Publish permission (`pub`).
    #[serde(rename = "pub", skip_serializing_if = "Permission::is_empty")]
    pub publish: Permission,
    /// Subscribe permission (`sub`).
    #[serde(rename = "sub", skip_serializing_if = "Permission::is_empty")]
    pub subscribe: Permission,
    /// Response permission (`resp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resp: Option<ResponsePermission>,
}

/// A connect-time window (`TimeRange`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeRange {
    /// Start, "HH:MM:SS".
    pub start: String,
    /// End, "HH:MM:SS".
    pub end: String,
}

/// The body of a user JWT (`User`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserNats {
    /// Publish permission.
    #[serde(rename = "pub", skip_serializing_if = "Permission::is_empty")]
    pub publish: Permission,
    /// Subscribe permission.
    #[serde(rename = "sub", skip_serializing_if = "Permission::is_empty")]
    pub subscribe: Permission,
    /// Response permission (allow_responses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resp: Option<ResponsePermission>,
    /// Allowed source networks (`src`; read as an array or a comma-separated string).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "string_or_list"
    )]
    pub src: Vec<String>,
    /// Allowed connect times.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub times: Vec<TimeRange>,
    /// Time zone of `times` (`times_location`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub times_location: String,
    /// Max subscriptions (-1 = unlimited).
    #[serde(skip_serializing_if = "is_zero")]
    pub subs: i64,
    /// Max bytes (-1 = unlimited).
    #[serde(skip_serializing_if = "is_zero")]
    pub data: i64,
    /// Max message payload (-1 = unlimited).
    #[serde(skip_serializing_if = "is_zero")]
    pub payload: i64,
    /// The JWT alone authenticates, without a nonce signature (`bearer_token`).
    #[serde(skip_serializing_if = "is_false")]
    pub bearer_token: bool,
    /// Must connect through a trusted proxy (`proxy_required`).
    #[serde(skip_serializing_if = "is_false")]
    pub proxy_required: bool,
    /// Allowed connection types (STANDARD, WEBSOCKET, LEAFNODE, MQTT…).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub allowed_connection_types: Vec<String>,
    /// The account identity when the issuer is one of its signing keys.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub issuer_account: String,
    /// Free-form tags.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub tags: Vec<String>,
    /// Claim type, "user".
    #[serde(rename = "type")]
    pub claim_type: String,
    /// Format version, 2.
    pub version: u32,
}

impl UserNats {
    /// A user body with the given permissions and the unlimited limits nsc writes.
    pub fn with_permissions(permissions: Permissions) -> UserNats {
        UserNats {
            publish: permissions.publish,
            subscribe: permissions.subscribe,
            resp: permissions.resp,
            subs: NO_LIMIT,
            data: NO_LIMIT,
            payload: NO_LIMIT,
            ..UserNats::default()
        }
    }

    /// The permissions part of the body.
    pub fn permissions(&self) -> Permissions {
        Permissions {
            publish: self.publish.clone(),
            subscribe: self.subscribe.clone(),
            resp: self.resp,
        }
    }
}

claim_body!(UserNats, "user", issuers: &[KeyRole::Account], subjects: &[KeyRole::User]);

/// Account, NATS and JetStream limits of an account (`OperatorLimits`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountLimits {
    /// Max subscriptions.
    #[serde(skip_serializing_if = "is_zero")]
    pub subs: i64,
    /// Max bytes.
    #[serde(skip_serializing_if = "is_zero")]
    pub data: i64,
    /// Max payload.
    #[serde(skip_serializing_if = "is_zero")]
    pub payload: i64,
    /// Max imports.
    #[serde(skip_serializing_if = "is_zero")]
    pub imports: i64,
    /// Max exports.
    #[serde(skip_serializing_if = "is_zero")]
    pub exports: i64,
    /// Wildcard exports allowed.
    #[serde(skip_serializing_if = "is_false")]
    pub wildcards: bool,
    /// Bearer user JWTs refused.
    #[serde(skip_serializing_if = "is_false")]
    pub disallow_bearer: bool,
    /// Max connections.
    #[serde(skip_serializing_if = "is_zero")]
    pub conn: i64,
    /// Max leaf node connections.
    #[serde(skip_serializing_if = "is_zero")]
    pub leaf: i64,
    /// JetStream memory storage bytes (0 = JetStream off, -1 = unlimited).
    #[serde(skip_serializing_if = "is_zero")]
    pub mem_storage: i64,
    /// JetStream disk storage bytes (0 = JetStream off, -1 = unlimited).
    #[serde(skip_serializing_if = "is_zero")]
    pub disk_storage: i64,
    /// Max streams.
    #[serde(skip_serializing_if = "is_zero")]
    pub streams: i64,
    /// Max consumers.
    #[serde(skip_serializing_if = "is_zero")]
    pub consumer: i64,
    /// Max ack pending per stream.
    #[serde(skip_serializing_if = "is_zero")]
    pub max_ack_pending: i64,
    /// Max bytes of a memory stream.
    #[serde(skip_serializing_if = "is_zero")]
    pub mem_max_stream_bytes: i64,
    /// Max bytes of a disk stream.
    #[serde(skip_serializing_if = "is_zero")]
    pub disk_max_stream_bytes: i64,
    /// Streams must declare max bytes.
    #[serde(skip_serializing_if = "is_false")]
    pub max_bytes_required: bool,
    /// Per-tier JetStream limits, kept as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tiered_limits: Option<Value>,
}

impl AccountLimits {
    /// No limits, JetStream enabled without bounds.
    pub fn unlimited_with_jetstream() -> AccountLimits {
        AccountLimits::unlimited().with_jetstream()
    }

    /// No limits, JetStream off (the nsc default for a new account).
    pub fn unlimited() -> AccountLimits {
        AccountLimits {
            subs: NO_LIMIT,
            data: NO_LIMIT,
            payload: NO_LIMIT,
            imports: NO_LIMIT,
            exports: NO_LIMIT,
            wildcards: true,
            conn: NO_LIMIT,
            leaf: NO_LIMIT,
            ..AccountLimits::default()
        }
    }

    fn with_jetstream(mut self) -> AccountLimits {
        self.mem_storage = NO_LIMIT;
        self.disk_storage = NO_LIMIT;
        self.streams = NO_LIMIT;
        self.consumer = NO_LIMIT;
        self.max_ack_pending = NO_LIMIT;
        self
    }
}

/// An account signing key: a bare key, or a scoped key with a user permission template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SigningKey {
    /// A plain signing key.
    Key(String),
    /// A scoped signing key (`UserScope`): users it signs get the template's permissions.
    Scoped {
        /// "user_scope".
        kind: String,
        /// The signing key.
        key: String,
        /// Role name.
        #[serde(default)]
        role: String,
        /// Permission template, kept as written.
        #[serde(default)]
        template: Value,
        /// Description.
        #[serde(default)]
        description: String,
    },
}

impl SigningKey {
    /// The public key, scoped or not.
    pub fn key(&self) -> &str {
        match self {
            SigningKey::Key(key) | SigningKey::Scoped { key, .. } => key,
        }
    }
}

/// The account's auth-callout section (`ExternalAuthorization`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExternalAuthorization {
    /// Users that bypass the callout (the callout service itself). Empty = callout off.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub auth_users: Vec<String>,
    /// Accounts the callout may place users in.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub allowed_accounts: Vec<String>,
    /// Curve key requests are sealed to.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub xkey: String,
}

impl ExternalAuthorization {
    /// True when the callout section is absent.
    pub fn is_empty(&self) -> bool {
        self.auth_users.is_empty() && self.allowed_accounts.is_empty() && self.xkey.is_empty()
    }
}

/// The body of an account JWT (`Account`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountNats {
    /// Imports, kept as written.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub imports: Vec<Value>,
    /// Exports, kept as written.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub exports: Vec<Value>,
    /// Limits.
    pub limits: AccountLimits,
    /// Keys allowed to sign this account's users.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub signing_keys: Vec<SigningKey>,
    /// Revoked user keys (or "*") → unix time; JWTs issued at or before it are refused.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub revocations: BTreeMap<String, i64>,
    /// Permissions of users whose JWT sets none.
    #[serde(skip_serializing_if = "permissions_is_empty")]
    pub default_permissions: Permissions,
    /// Subject mappings, kept as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mappings: Option<Value>,
    /// The auth-callout section.
    #[serde(skip_serializing_if = "ExternalAuthorization::is_empty")]
    pub authorization: ExternalAuthorization,
    /// Message tracing, kept as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Value>,
    /// Cluster traffic setting.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_traffic: String,
    /// Description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Info URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub info_url: String,
    /// Free-form tags.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub tags: Vec<String>,
    /// Claim type, "account".
    #[serde(rename = "type")]
    pub claim_type: String,
    /// Format version, 2.
    pub version: u32,
}

fn permissions_is_empty(p: &Permissions) -> bool {
    p.publish.is_empty() && p.subscribe.is_empty() && p.resp.is_none()
}

impl AccountNats {
    /// True when `key` is one of this account's signing keys (scoped or not).
    pub fn has_signing_key(&self, key: &str) -> bool {
        self.signing_keys.iter().any(|k| k.key() == key)
    }

    /// The revocation time that applies to `user_key`, if any (its own entry or "*").
    pub fn revoked_at(&self, user_key: &str, issued_at: i64) -> Option<i64> {
        [user_key, "*"]
            .iter()
            .filter_map(|k| self.revocations.get(*k).copied())
            .find(|&at| at >= issued_at)
    }
}

claim_body!(AccountNats, "account", issuers: &[KeyRole::Operator], subjects: &[KeyRole::Account]);

/// The body of an operator JWT (`Operator`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OperatorNats {
    /// Keys allowed to sign accounts.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub signing_keys: Vec<String>,
    /// Account server URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub account_server_url: String,
    /// Operator service URLs.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub operator_service_urls: Vec<String>,
    /// The system account's public key.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub system_account: String,
    /// Minimum server version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub assert_server_version: String,
    /// Accounts must be signed by a signing key, and account identity keys do not sign users.
    #[serde(skip_serializing_if = "is_false")]
    pub strict_signing_key_usage: bool,
    /// Free-form tags.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub tags: Vec<String>,
    /// Claim type, "operator".
    #[serde(rename = "type")]
    pub claim_type: String,
    /// Format version, 2.
    pub version: u32,
}

claim_body!(OperatorNats, "operator", issuers: &[KeyRole::Operator], subjects: &[KeyRole::Operator]);

/// The server that sent an authorization request (`ServerID`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerIdentity {
    /// Server name.
    pub name: String,
    /// Server host.
    pub host: String,
    /// Server id (its N… public key); responses go back to it as `aud`.
    pub id: String,
    /// Server version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Cluster name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// Server tags.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub tags: Vec<String>,
    /// Server curve key the response is sealed to.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub xkey: String,
}

/// The connecting client as the server saw it (`ClientInformation`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientInformation {
    /// Client IP.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// Connection id on that server (for kicks).
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub id: u64,
    /// The user key the client presented.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Connection name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Tags.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub tags: Vec<String>,
    /// Name tag.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name_tag: String,
    /// Client kind.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Client type.
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub client_type: String,
    /// MQTT client id.
    #[serde(rename = "mqtt_id", skip_serializing_if = "String::is_empty")]
    pub mqtt: String,
    /// The nonce the client had to sign.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nonce: String,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The client's CONNECT options (`ConnectOptions`). Debug output hides the password and token.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectOptions {
    /// The user JWT the client presented.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub jwt: String,
    /// The nkey the client presented (nkey-only clients).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub nkey: String,
    /// Base64url signature of the nonce.
    #[serde(rename = "sig", skip_serializing_if = "String::is_empty")]
    pub signed_nonce: String,
    /// Token (secret).
    #[serde(rename = "auth_token", skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Username.
    #[serde(rename = "user", skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Password (secret).
    #[serde(rename = "pass", skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// Connection name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Client language.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub lang: String,
    /// Client version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Protocol level.
    pub protocol: i64,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "<hidden>" };
        f.debug_struct("ConnectOptions")
            .field("jwt", &self.jwt)
            .field("nkey", &self.nkey)
            .field("sig", &self.signed_nonce)
            .field("auth_token", &hidden(&self.token))
            .field("user", &self.username)
            .field("pass", &hidden(&self.password))
            .field("name", &self.name)
            .field("lang", &self.lang)
            .field("version", &self.version)
            .field("protocol", &self.protocol)
            .finish()
    }
}

/// TLS details of the client connection (`ClientTLS`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientTls {
    /// TLS version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Cipher suite.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cipher: String,
    /// Client certificates, PEM.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub certs: Vec<String>,
    /// Verified chains, PEM.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub verified_chains: Vec<Vec<String>>,
}

/// The body of an authorization request from nats-server (`AuthorizationRequest`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthRequestNats {
    /// The server asking.
    #[serde(rename = "server_id")]
    pub server: ServerIdentity,
    /// The user key the session JWT must be issued to.
    pub user_nkey: String,
    /// The client as the server saw it.
    pub client_info: ClientInformation,
    /// The client's CONNECT options.
    pub connect_opts: ConnectOptions,
    /// TLS details, when the client used TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTls>,
    /// Request nonce.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_nonce: String,
    /// Tags.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub tags: Vec<String>,
    /// Claim type, "authorization_request".
    #[serde(rename = "type")]
    pub claim_type: String,
    /// Format version, 2.
    pub version: u32,
}

claim_body!(
    AuthRequestNats,
    "authorization_request",
    issuers: &[KeyRole::Server],
    subjects: &[KeyRole::Account]
);

/// The body of the callout's answer (`AuthorizationResponse`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthResponseNats {
    /// The issued session user JWT (when allowed).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub jwt: String,
    /// Why the client was refused (when refused).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The account identity when signed by one of its signing keys.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub issuer_account: String,
    /// Tags.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub tags: Vec<String>,
    /// Claim type, "authorization_response".
    #[serde(rename = "type")]
    pub claim_type: String,
    /// Format version, 2.
    pub version: u32,
}

claim_body!(
    AuthResponseNats,
    "authorization_response",
    issuers: &[KeyRole::Account],
    subjects: &[KeyRole::User]
);

/// Go writes `null` for nil slices and maps: read it as empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `CIDRList` is written as an array, but older tools wrote one comma-separated string.
fn string_or_list<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Option::<Either>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(Either::List(list)) => list,
        Some(Either::Text(text)) => text
            .split(',')
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_body_uses_the_nats_jwt_names() {
        let mut body = UserNats::with_permissions(Permissions {
            publish: Permission {
                allow: vec!["a.>".into()],
                deny: vec![],
            },
            subscribe: Permission::default(),
            resp: Some(ResponsePermission { max: 1, ttl: 0 }),
        });
        body.issuer_account = "AXXX".into();
        body.stamp();
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "pub": {"allow": ["a.>"]},
                "resp": {"max": 1, "ttl": 0},
                "subs": -1, "data": -1, "payload": -1,
                "issuer_account": "AXXX",
                "type": "user", "version": 2
            })
        );
    }

    #[test]
    fn go_nulls_and_comma_cidr_lists_decode() {
        let body: UserNats = serde_json::from_str(
            r#"{"pub":{"allow":null},"src":"192.0.2.0/24, 10.0.0.0/8","tags":null,"type":"user","version":2}"#,
        )
        .unwrap();
        assert!(body.publish.allow.is_empty());
        assert_eq!(body.src, vec!["192.0.2.0/24", "10.0.0.0/8"]);
    }

    #[test]
    fn signing_keys_may_be_plain_or_scoped() {
        let body: AccountNats = serde_json::from_str(
            r#"{"signing_keys":["AKEY1",{"kind":"user_scope","key":"AKEY2","role":"r","template":{}}],"type":"account","version":2}"#,
        )
        .unwrap();
        assert!(body.has_signing_key("AKEY1"));
        assert!(body.has_signing_key("AKEY2"));
        assert!(!body.has_signing_key("AKEY3"));
    }

    #[test]
    fn revocations_cover_tokens_issued_at_or_before() {
        let mut body = AccountNats::default();
        body.revocations.insert("UKEY".into(), 100);
        assert_eq!(body.revoked_at("UKEY", 100), Some(100));
        assert_eq!(body.revoked_at("UKEY", 101), None);
        body.revocations.insert("*".into(), 200);
        assert_eq!(body.revoked_at("UOTHER", 150), Some(200));
    }

    #[test]
    fn connect_options_debug_hides_secrets() {
        let opts = ConnectOptions {
            password: "hunter2".into(),
            token: "tok".into(),
            ..ConnectOptions::default()
        };
        let shown = format!("{opts:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("tok\""));
    }
}
