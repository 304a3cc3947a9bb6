//! Joining a cluster's wire (DESIGN §9): what a new node asks on `zester.enrol.<its nkey>` —
//! signed like a peel's enrolment — the record the cluster keeps of it, and the sealed bundle
//! it receives once an admin accepted it.
//!
//! The fewest secrets travel. A node keeps its own TLS key (only its public point is sent, and
//! a certificate for it comes back) and its own node key. It receives the **signing** keys
//! (operator, SYS, ZESTER), the callout's curve key and the master's, the creds of the
//! callout, master and admin users, and the CA key: every node must sign sessions, answer any
//! server's callout request, update account JWTs, admit the same master and admins, renew its
//! own certificate and answer the next node's join. (Whoever holds the ZESTER signing key can
//! already mint any user of the fleet, so the CA key adds no power a node did not have.) The
//! **identity** keys of the operator and the accounts stay where they were made: from there a
//! leaked signing key can be replaced. The bundle is sealed to the node's curve key with a
//! one-time sender key.

use data_encoding::BASE64URL_NOPAD;
use nkeys::{KeyPair, XKey};
use serde::{Deserialize, Serialize};

use crate::wire::enrol::{RequestError, SignedRequest};

/// The longest node or cluster name (nats-server has no limit; a name is written in logs,
/// subjects of the monitoring events and JetStream's peer lists).
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` is a valid node or cluster name: 1 to [`MAX_NAME_LEN`] ASCII letters, digits,
/// `-`, `_` or `.` (nats-server refuses spaces in `server_name`, and a name also appears
/// in subjects, where `.`-free would be stricter than needed but `*`, `>` and spaces are not
/// allowed).
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// What a joining node asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeOp {
    /// Record me as a node waiting for an admin.
    NodeJoin,
    /// Give me what a node needs (once accepted).
    NodeFetch,
}

/// The signed body of a node's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRequest {
    /// What is asked.
    pub op: NodeOp,
    /// The node's name (its `server_name`).
    pub name: String,
    /// The node's key (`U…`), the one signing the request.
    pub nkey: String,
    /// The node's curve key (`X…`): the bundle is sealed to it.
    pub xkey: String,
    /// The public point of the node's TLS key (base64url), to be certified.
    pub tls_key: String,
    /// The DNS names and IP addresses its certificate must carry.
    pub tls_names: Vec<String>,
    /// Where its clients will connect (`tls://HOST:PORT`), for the others' lists.
    pub client_url: String,
    /// Where the others reach its routes (`HOST:PORT`).
    pub cluster_url: String,
    /// The machine's host name, for the admin's eyes.
    pub hostname: String,
    /// Unix seconds when made.
    pub at: i64,
}

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Waiting for `zester node accept`.
    Pending,
    /// A node of the cluster.
    Accepted,
    /// Removed (`zester node remove`): it may not fetch again, its announcements are ignored.
    Removed,
}

impl NodeState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Accepted => "accepted",
            NodeState::Removed => "removed",
        }
    }
}

/// What the cluster keeps of one node (bucket `zester-nodes`, one record per name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's name.
    pub name: String,
    /// Its node key (empty for a node that made the cluster rather than joined it).
    #[serde(default)]
    pub nkey: String,
    /// Its curve key.
    #[serde(default)]
    pub xkey: String,
    /// Where it stands.
    pub state: NodeState,
    /// Its client URL.
    pub client_url: String,
    /// Its route address.
    pub cluster_url: String,
    /// Its TLS key's public point (base64url), while it waits.
    #[serde(default)]
    pub tls_key: String,
    /// The names its certificate asked for.
    #[serde(default)]
    pub tls_names: Vec<String>,
    /// Its host name as it said.
    #[serde(default)]
    pub hostname: String,
    /// When it asked to join (or first ran as a node).
    pub since: i64,
    /// When its state last changed.
    pub changed_at: i64,
    /// Who changed it (`admin`, `admin:<name>`, or `node` for itself).
    pub changed_by: String,
    /// When it last said it runs (every node refreshes its own record while up).
    #[serde(default)]
    pub seen_at: i64,
    /// The lowercase hex sha256 of its server certificate's SubjectPublicKeyInfo, what
    /// nats-server's `pinned_certs` lists: set from `tls_key` when it asks to join, and by
    /// the node itself from its certificate while it runs. Empty in a record of a node that
    /// has not run since pinning came (then no node pins routes, see
    /// [`crate::appliance::pinning`]).
    #[serde(default)]
    pub route_pin: String,
    /// The public key of its own system-account user (`auth/sys.creds`), said by the node
    /// itself while it runs: what `zester node remove` revokes. Empty when not known.
    #[serde(default)]
    pub sys_user: String,
    /// What `zester node remove` revoked, once removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// What removing a node took from it (`zester node remove`), kept in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Its system-account user key, now in the SYS account JWT's revocations (empty when the
    /// record never said it: a node that has not run since this was recorded).
    pub sys_user: String,
    /// How many servers confirmed the SYS account JWT with that revocation.
    pub sys_updated_on: usize,
    /// Whether the nodes pin their routes, so that its certificate is refused from now on.
    pub routes_refused: bool,
    /// Why routes are not pinned, when they are not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub routes_note: String,
}

impl NodeRecord {
    /// The key's fingerprint, as `zester node list` shows it (empty for a founding node).
    pub fn fingerprint(&self) -> String {
        if self.nkey.is_empty() {
            String::new()
        } else {
            crate::wire::record::fingerprint(&self.nkey)
        }
    }
}

/// The appliance's answer to a node's request (inside `{"ok": …}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnswer {
    /// Where the node stands.
    pub state: NodeState,
    /// Its key's fingerprint (for the admin to compare).
    pub fingerprint: String,
    /// Once accepted: the [`NodeBundle`] as JSON sealed to the node's curve key (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// The one-time curve key the bundle was sealed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
}

/// What a node needs to run: see the module documentation for why these and no others.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBundle {
    /// `[cluster] name`.
    pub cluster_name: String,
    /// The other nodes' route addresses (`[cluster] routes`).
    pub routes: Vec<String>,
    /// Every node's client URL (for peels' profiles and the CLI).
    pub client_urls: Vec<String>,
    /// The operator JWT.
    pub operator_jwt: String,
    /// The SYS account JWT.
    pub sys_jwt: String,
    /// The ZESTER account JWT.
    pub zester_jwt: String,
    /// The operator signing seed (account JWT updates: revocations, signing-key rotation).
    pub operator_signing_seed: String,
    /// The SYS signing seed (the node's own system user).
    pub sys_signing_seed: String,
    /// The ZESTER signing seed (sessions, peel JWTs, zester's own users).
    pub zester_signing_seed: String,
    /// The callout's curve seed (every server's request is sealed to it).
    pub callout_xkey_seed: String,
    /// The master's curve seed (secrets sealed to peels).
    pub master_xkey_seed: String,
    /// The callout user's creds (the account lets that one key answer callouts).
    pub callout_creds: String,
    /// The master's creds (one master for the fleet, on any node).
    pub master_creds: String,
    /// The admin creds (the same admin on every node).
    pub admin_creds: String,
    /// The CA certificate.
    pub ca_cert: String,
    /// The CA key (the node renews its own certificate, and certifies the next node's).
    pub ca_key: String,
    /// The node's server certificate, for its own TLS key.
    pub server_cert: String,
}

impl std::fmt::Debug for NodeBundle {
    /// Names what it holds, never a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBundle")
            .field("cluster_name", &self.cluster_name)
            .field("routes", &self.routes)
            .field("client_urls", &self.client_urls)
            .finish_non_exhaustive()
    }
}

/// Why a node's bundle could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not base64url, or the curve key is not one.
    #[error("the node bundle is malformed: {0}")]
    Malformed(&'static str),
    /// The box does not open with this key (not sealed to it, or altered).
    #[error("the node bundle does not open with this node's curve key (sealed to another key, or altered on the way)")]
    Sealed,
}

/// Signs `request` with the node key.
pub fn sign_node_request(
    key: &KeyPair,
    request: &NodeRequest,
) -> Result<SignedRequest, RequestError> {
    crate::wire::enrol::sign_body(key, request)
}

/// Whether a signed enrolment payload is a node's request (its `op` is a node op), so the
/// enrolment service hands it to the node service. Unreadable payloads are not.
pub fn is_node_request(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Op {
        op: String,
    }
    crate::wire::enrol::claimed_body::<Op>(payload).is_some_and(|o| o.op.starts_with("node_"))
}

/// Verifies a node's request that arrived on `zester.enrol.<subject_nkey>` at `now`: the
/// signature of the key it names, the subject and the time (as for a peel's), the name and
/// the kinds of its keys.
pub fn verify_node_request(
    payload: &[u8],
    subject_nkey: &str,
    now: i64,
) -> Result<NodeRequest, RequestError> {
    let body = crate::wire::enrol::open_signed(payload, subject_nkey, now)?;
    let request: NodeRequest =
        serde_json::from_slice(&body).map_err(|e| RequestError::Malformed(e.to_string()))?;
    if request.nkey != subject_nkey {
        return Err(RequestError::BadSignature);
    }
    if !valid_name(&request.name) {
        return Err(RequestError::Malformed(format!(
            "node name {:?} is not 1 to 64 letters, digits, '-', '_' or '.'",
            request.name
        )));
    }
    if XKey::from_public_key(&request.xkey).is_err() {
        return Err(RequestError::Malformed("xkey is not a curve key".into()));
    }
    let point = BASE64URL_NOPAD
        .decode(request.tls_key.as_bytes())
        .map_err(|_| RequestError::Malformed("tls_key is not base64url".into()))?;
    crate::pki::P256PublicKey::from_point(&point)
        .map_err(|_| RequestError::Malformed("tls_key is not a P-256 point".into()))?;
    Ok(request)
}

/// Seals `bundle` to the node's curve key `to` with a one-time sender key: `(box, sender)`.
pub fn seal_bundle(bundle: &NodeBundle, to: &str) -> Result<(String, String), BundleError> {
    let recipient =
        XKey::from_public_key(to).map_err(|_| BundleError::Malformed("not a curve key"))?;
    let sender = XKey::new();
    let body = serde_json::to_vec(bundle).map_err(|_| BundleError::Malformed("not JSON"))?;
    let sealed = sender
        .seal(&body, &recipient)
        .map_err(|_| BundleError::Sealed)?;
    Ok((BASE64URL_NOPAD.encode(&sealed), sender.public_key()))
}

/// Opens a bundle sealed to `node` by `sender`.
pub fn open_bundle(sealed: &str, sender: &str, node: &XKey) -> Result<NodeBundle, BundleError> {
    let sender =
        XKey::from_public_key(sender).map_err(|_| BundleError::Malformed("not a curve key"))?;
    let sealed = BASE64URL_NOPAD
        .decode(sealed.as_bytes())
        .map_err(|_| BundleError::Malformed("not base64url"))?;
    let body = node
        .open(&sealed, &sender)
        .map_err(|_| BundleError::Sealed)?;
    serde_json::from_slice(&body).map_err(|_| BundleError::Malformed("not a node bundle"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn request(key: &KeyPair, xkey: &XKey) -> NodeRequest {
        let tls = crate::pki::generate_server_key().unwrap();
        let point = crate::pki::P256PublicKey::of_key_pem(&tls).unwrap();
        NodeRequest {
            op: NodeOp::NodeJoin,
            name: "node-b".into(),
            nkey: key.public_key(),
            xkey: xkey.public_key(),
            tls_key: BASE64URL_NOPAD.encode(point.point()),
            tls_names: vec!["localhost".into()],
            client_url: "tls://127.0.0.1:4223".into(),
            cluster_url: "127.0.0.1:6223".into(),
            hostname: "b".into(),
            at: NOW,
        }
    }

    fn bundle() -> NodeBundle {
        NodeBundle {
            cluster_name: "zester".into(),
            routes: vec!["127.0.0.1:6222".into()],
            client_urls: vec!["tls://127.0.0.1:4222".into()],
            operator_jwt: "o".into(),
            sys_jwt: "s".into(),
            zester_jwt: "z".into(),
            operator_signing_seed: "SO-secret".into(),
            sys_signing_seed: "SA-secret".into(),
            zester_signing_seed: "SA-secret-2".into(),
            callout_xkey_seed: "SX-1".into(),
            master_xkey_seed: "SX-2".into(),
            callout_creds: "c".into(),
            master_creds: "m".into(),
            admin_creds: "a".into(),
            ca_cert: "ca".into(),
            ca_key: "ca-secret".into(),
            server_cert: "cert".into(),
        }
    }

    #[test]
    fn a_node_request_verifies_only_for_its_key_and_is_told_from_a_peels() {
        let key = KeyPair::new_user();
        let xkey = XKey::new();
        let signed = sign_node_request(&key, &request(&key, &xkey)).unwrap();
        let body = serde_json::to_vec(&signed).unwrap();
        assert!(is_node_request(&body));
        let verified = verify_node_request(&body, &key.public_key(), NOW).unwrap();
        assert_eq!(verified.name, "node-b");
        assert_eq!(
            verify_node_request(&body, &KeyPair::new_user().public_key(), NOW),
            Err(RequestError::BadSignature)
        );
        assert!(matches!(
            verify_node_request(&body, &key.public_key(), NOW + 301),
            Err(RequestError::Stale { .. })
        ));
        let mut bad = request(&key, &xkey);
        bad.name = "node b".into();
        let body = serde_json::to_vec(&sign_node_request(&key, &bad).unwrap()).unwrap();
        assert!(matches!(
            verify_node_request(&body, &key.public_key(), NOW),
            Err(RequestError::Malformed(_))
        ));
        // A peel's enrolment is not a node request.
        let peel = crate::wire::enrol::EnrolRequest {
            op: crate::wire::enrol::Op::Enrol,
            id: "web-01".into(),
            nkey: key.public_key(),
            xkey: None,
            hostname: String::new(),
            at: NOW,
            token: None,
        };
        let signed = crate::wire::enrol::sign_request(&key, &peel).unwrap();
        assert!(!is_node_request(&serde_json::to_vec(&signed).unwrap()));
        assert!(!is_node_request(b"junk"));
    }

    #[test]
    fn the_bundle_opens_only_with_the_nodes_key_and_never_prints_a_secret() {
        let node = XKey::new();
        let (sealed, sender) = seal_bundle(&bundle(), &node.public_key()).unwrap();
        assert_eq!(open_bundle(&sealed, &sender, &node).unwrap(), bundle());
        assert_eq!(
            open_bundle(&sealed, &sender, &XKey::new()),
            Err(BundleError::Sealed)
        );
        let mut altered = BASE64URL_NOPAD.decode(sealed.as_bytes()).unwrap();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(
            open_bundle(&BASE64URL_NOPAD.encode(&altered), &sender, &node),
            Err(BundleError::Sealed)
        );
        let printed = format!("{:?}", bundle());
        assert!(
            !printed.contains("secret") && !printed.contains("SX-"),
            "{printed}"
        );
    }
}
