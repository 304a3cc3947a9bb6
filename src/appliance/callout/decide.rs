//! The callout's decision: who is this client, and may it in? Pure: a verified request, the
//! trust anchors and a key lookup in, a [`Decision`] out — no I/O, no clock (callers pass `now`).
//!
//! The order follows DESIGN §5: a client presenting a user JWT must hold a JWT that chains to our
//! operator through the *current* ZESTER account (signing key, `issuer_account`, revocations,
//! `exp`/`nbf`), must have signed the server's nonce with the JWT's key, and that key must be a
//! service user of this node (master, admin) or an accepted peel key. The role — and for a peel
//! its id — comes from our records, never from what the client claims. Clients that arrive on
//! the `default_sentinel` brought no JWT of their own: user/password, tokens and bare
//! connections are refused with a reason saying so.

use std::collections::HashMap;

use data_encoding::{BASE64, BASE64URL, BASE64URL_NOPAD, BASE64_NOPAD};

use super::readmit::IdentityJwt;
use crate::appliance::keys::KeyState;
use crate::identity::chain::{self, ChainError};
use crate::identity::claims::{AuthRequestNats, UserNats};
use crate::identity::jwt::{self, AccountJwt, JwtError, OperatorJwt};
use crate::identity::keys::{self, UserKey};
use crate::identity::peel_id::PeelId;
use crate::permissions::Role;

/// Where the decision looks up peel keys (the in-memory key cache in production).
pub trait KeyLookup {
    /// The peel id and standing bound to `nkey`, if any record holds it.
    fn peel_key(&self, nkey: &str) -> Option<(PeelId, KeyState)>;
}

impl KeyLookup for HashMap<String, (PeelId, KeyState)> {
    fn peel_key(&self, nkey: &str) -> Option<(PeelId, KeyState)> {
        self.get(nkey).cloned()
    }
}

/// The trust anchors of this node, swapped as a whole when the account JWT changes.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Our operator.
    pub operator: OperatorJwt,
    /// The current ZESTER account JWT (signing keys, revocations).
    pub account: AccountJwt,
    /// The `default_sentinel` token given to clients without a JWT.
    pub sentinel: String,
    /// Service users of this node by nkey (master, admin).
    pub services: HashMap<UserKey, Role>,
    /// The per-run service and store users of the other nodes of a cluster, by nkey, as they
    /// announced them over the system account (`appliance::cluster`): any node's callout may
    /// answer for any node's server, so each must know the others' own users.
    pub peers: HashMap<UserKey, Role>,
}

impl Trust {
    /// The role of one of zester's own users (this node's first, then the other nodes'), or
    /// `None` for a key that is not one of them.
    pub fn service_role(&self, nkey: &str) -> Option<&Role> {
        self.services.get(nkey).or_else(|| self.peers.get(nkey))
    }

    /// Whether `jwt` is a `default_sentinel`: this node's own, or that of another node of the
    /// cluster (each signs its own at start, so they differ): a bearer JWT of this account,
    /// tagged [`SENTINEL_TAG`]. A sentinel grants nothing (it denies every subject), so a
    /// client presenting one is treated as one that presented no JWT, as nats-server does.
    pub fn is_sentinel(&self, jwt_text: &str, now: i64) -> bool {
        if jwt_text == self.sentinel {
            return true;
        }
        // Every peel's JWT passes here: look before paying for a signature check.
        if !jwt::unverified_bearer_tagged(jwt_text, SENTINEL_TAG) {
            return false;
        }
        let Ok(user) = jwt::decode::<UserNats>(jwt_text, now) else {
            return false;
        };
        user.claims().nats.bearer_token
            && user.claims().nats.tags.iter().any(|t| t == SENTINEL_TAG)
            && chain::verify_user(&self.operator, &self.account, &user, now).is_ok()
    }
}

/// The tag of a `default_sentinel` JWT ([`crate::authority::Authority::issue_sentinel`]).
pub const SENTINEL_TAG: &str = crate::authority::SENTINEL_TAG;

/// Why a client was refused. `code` is stable for scripts; `Display` is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Nothing presented at all.
    #[error("no credentials: connect with a .creds file issued by zester")]
    NoCredentials,
    /// user/password.
    #[error("user/password authentication is not accepted: connect with a .creds file")]
    PasswordNotAccepted,
    /// A token.
    #[error("token authentication is not accepted: connect with a .creds file")]
    TokenNotAccepted,
    /// An "nkey" that is not a user key.
    #[error("the nkey presented is not a user key")]
    NkeyWithoutJwt,
    /// Too many enrolment connections from one address.
    #[error("too many enrolment attempts from {ip}: try again in a minute")]
    EnrolRateLimited {
        /// The client address.
        ip: String,
    },
    /// The client sent a JWT (it signed the nonce) that nats-server could not decode or verify,
    /// so the server handed it the sentinel instead.
    #[error("the user JWT presented is not valid (tampered, truncated or not a NATS user JWT)")]
    JwtRejectedByServer,
    /// A bearer JWT (no proof of key possession).
    #[error("bearer JWTs are not accepted: the client must sign the nonce")]
    Bearer,
    /// The user JWT itself is broken, tampered, expired…
    #[error("user JWT: {0}")]
    Jwt(JwtError),
    /// The JWT does not chain to our operator through ZESTER.
    #[error("user JWT: {0}")]
    Chain(ChainError),
    /// No nonce signature.
    #[error("no nonce signature: the client did not prove it holds the key")]
    MissingSignature,
    /// The signature is not base64.
    #[error("nonce signature is not valid base64")]
    SignatureEncoding,
    /// The nonce was not signed by the JWT's key.
    #[error("nonce signature does not verify with {nkey}: the seed does not belong to this JWT")]
    NonceSignatureMismatch {
        /// The key it was checked against.
        nkey: String,
    },
    /// nats-server refused a client whose JWT checks out, without asking the callout. The server
    /// checks the nonce signature itself before asking, so that is the likely cause; but a server
    /// too busy to get to the client before its auth timeout (a reconnect storm) looks the same
    /// from here, since neither event says more than "Authentication Failure".
    #[error("nats-server refused {nkey} without asking the callout although its JWT is valid: most likely its nonce signature does not verify (the seed does not belong to this JWT), or the server was too busy to get to it before its auth timeout (many of these at once during a reconnect storm)")]
    NonceSignatureSuspected {
        /// The key of the JWT.
        nkey: String,
    },
    /// The key is unknown to the key store.
    #[error("key {nkey} is not known to this node")]
    UnknownKey {
        /// The key.
        nkey: String,
    },
    /// The key exists but is not accepted.
    #[error("key of peel {id} is {}, not accepted", standing.as_str())]
    KeyNotAccepted {
        /// The peel.
        id: PeelId,
        /// Its standing.
        standing: KeyState,
    },
    /// The request itself is malformed or not from a server.
    #[error("authorization request: {0}")]
    BadRequest(String),
    /// nats-server held a valid client for its whole auth timeout without an answer from the
    /// callout: the callout connection was not subscribed yet (just after a restart of the
    /// child) or too busy. The client retries; nothing is wrong with its creds.
    #[error("nats-server got no answer from the callout in time (it was reconnecting or overloaded); the creds are fine and the client retries")]
    NoCalloutAnswer,
    /// A user of the system account, which nats-server checks itself (zester's own system
    /// connections, or a removed node's, whose user is revoked in the SYS account JWT).
    #[error("user {nkey} is a system account user (a zester node's system connection): nats-server refused it itself: revoked in the SYS account (a removed node's, see `zester node list`), expired, or its nonce signature failed")]
    SystemUser {
        /// The user's key.
        nkey: String,
    },
}

impl Refusal {
    /// A short stable code for the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoCredentials => "no_credentials",
            Refusal::PasswordNotAccepted => "password_not_accepted",
            Refusal::TokenNotAccepted => "token_not_accepted",
            Refusal::NkeyWithoutJwt => "nkey_invalid",
            Refusal::EnrolRateLimited { .. } => "enrol_rate_limited",
            Refusal::Bearer => "bearer_not_accepted",
            Refusal::JwtRejectedByServer => "jwt_invalid",
            Refusal::Jwt(JwtError::Expired { .. }) => "jwt_expired",
            Refusal::Jwt(JwtError::NotYetValid { .. }) => "jwt_not_yet_valid",
            Refusal::Jwt(JwtError::SignatureMismatch { .. }) => "jwt_signature",
            Refusal::Jwt(_) => "jwt_invalid",
            Refusal::Chain(ChainError::IssuerNotSigningKey { .. }) => "issuer_not_signing_key",
            Refusal::Chain(ChainError::Revoked { .. }) => "revoked",
            Refusal::Chain(ChainError::Time { .. }) => "jwt_expired",
            Refusal::Chain(_) => "foreign_issuer",
            Refusal::MissingSignature | Refusal::SignatureEncoding => "nonce_signature_missing",
            Refusal::NonceSignatureMismatch { .. } | Refusal::NonceSignatureSuspected { .. } => {
                "nonce_signature_mismatch"
            }
            Refusal::UnknownKey { .. } => "key_unknown",
            Refusal::KeyNotAccepted { .. } => "key_not_accepted",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::NoCalloutAnswer => "callout_no_answer",
            Refusal::SystemUser { .. } => "system_user_refused",
        }
    }
}

/// Who was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Its role (a peel carries its id).
    pub role: Role,
    /// The key it proved (the identity JWT's subject, or the enrolling nkey).
    pub nkey: UserKey,
    /// The latest the session may last (0 = no bound): an enrolling key's short session. A user
    /// with an identity JWT is not bound by that JWT's `exp`: the JWT is checked when the
    /// client connects, the peel renews it while connected (DESIGN §11), and a key that loses
    /// its standing is kicked at once; ending the session at the old `exp` would only drop
    /// every renewing peel once per lifetime.
    pub expires: i64,
    /// The identity JWT presented (none for an enrolling key), remembered with the session so
    /// that the connection can be decided on again without it ([`readmit`](super::readmit)).
    pub identity: Option<IdentityJwt>,
}

/// The decision, with the identity key when one was seen (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let in.
    Allow(Admission),
    /// Refused.
    Refuse {
        /// Why.
        refusal: Refusal,
        /// The key the client presented, if any.
        nkey: Option<String>,
    },
}

/// Decides on one authorization request at `now`.
pub fn decide(
    request: &AuthRequestNats,
    trust: &Trust,
    keys: &(impl KeyLookup + ?Sized),
    now: i64,
) -> Decision {
    let opts = &request.connect_opts;
    let presented_jwt = !opts.jwt.is_empty() && !trust.is_sentinel(&opts.jwt, now);
    if !presented_jwt && !opts.nkey.is_empty() {
        return admit_enrolling(request, keys, now);
    }
    if !presented_jwt {
        let refusal = if !opts.signed_nonce.is_empty() {
            Refusal::JwtRejectedByServer
        } else if !opts.username.is_empty() || !opts.password.is_empty() {
            Refusal::PasswordNotAccepted
        } else if !opts.token.is_empty() {
            Refusal::TokenNotAccepted
        } else {
            Refusal::NoCredentials
        };
        let nkey = (!opts.nkey.is_empty()).then(|| opts.nkey.clone());
        return Decision::Refuse { refusal, nkey };
    }
    match admit_user_jwt(request, trust, keys, now) {
        Ok(admission) => Decision::Allow(admission),
        Err((refusal, nkey)) => Decision::Refuse { refusal, nkey },
    }
}

fn admit_user_jwt(
    request: &AuthRequestNats,
    trust: &Trust,
    keys: &(impl KeyLookup + ?Sized),
    now: i64,
) -> Result<Admission, (Refusal, Option<String>)> {
    let opts = &request.connect_opts;
    let user = jwt::decode::<UserNats>(&opts.jwt, now).map_err(|e| (Refusal::Jwt(e), None))?;
    let user_key = UserKey::parse(user.subject())
        .map_err(|e| (Refusal::Jwt(jwt::JwtError::Subject(e)), None))?;
    let nkey = user.subject().to_string();
    let fail = |refusal: Refusal| (refusal, Some(nkey.clone()));
    chain::verify_user(&trust.operator, &trust.account, &user, now)
        .map_err(|e| fail(Refusal::Chain(e)))?;
    if user.claims().nats.bearer_token {
        return Err(fail(Refusal::Bearer));
    }
    verify_nonce(&request.client_info.nonce, &opts.signed_nonce, &nkey).map_err(fail)?;
    let role = match trust.service_role(nkey.as_str()) {
        Some(role) => role.clone(),
        None => match keys.peel_key(&nkey) {
            Some((id, KeyState::Accepted)) => Role::Peel(id),
            Some((id, standing)) => return Err(fail(Refusal::KeyNotAccepted { id, standing })),
            None => return Err(fail(Refusal::UnknownKey { nkey: nkey.clone() })),
        },
    };
    Ok(Admission {
        role,
        expires: 0,
        nkey: user_key,
        identity: Some(IdentityJwt {
            issuer: user.issuer().to_string(),
            issued_at: user.claims().iat,
        }),
    })
}

/// How long nats-server must have held a client before its refusal can be a callout that never
/// answered (the server waits its auth timeout, [`AUTH_TIMEOUT_SECS`]).
///
/// [`AUTH_TIMEOUT_SECS`]: crate::wire::AUTH_TIMEOUT_SECS
pub const NO_ANSWER_AFTER: std::time::Duration =
    std::time::Duration::from_millis(crate::wire::AUTH_TIMEOUT_SECS as u64 * 1000 - 500);

/// Explains a refusal the callout did not make, from the JWT the client presented (the
/// server's auth-error event carries it, but only says "Authentication Failure"). The server
/// checks signature, expiry, the chain and the nonce signature itself before asking the
/// callout, so a JWT that passes every check here most likely failed the nonce signature (or
/// the server was overloaded; see [`Refusal::NonceSignatureSuspected`]) — unless the caller
/// knows the callout left the request unanswered (`unanswered`: the server held the
/// client for its auth timeout while the callout was reconnecting or shedding load).
pub fn diagnose(jwt_text: &str, trust: &Trust, now: i64, unanswered: bool) -> Refusal {
    if jwt_text.is_empty() || trust.is_sentinel(jwt_text, now) {
        return Refusal::NoCredentials;
    }
    let user = match jwt::decode::<UserNats>(jwt_text, now) {
        Ok(user) => user,
        Err(e) => return Refusal::Jwt(e),
    };
    // Not a ZESTER user at all: checking it against ZESTER would call it foreign.
    let system = &trust.operator.claims().nats.system_account;
    if !system.is_empty()
        && (user.claims().nats.issuer_account == *system || user.claims().iss == *system)
    {
        return Refusal::SystemUser {
            nkey: user.subject().to_string(),
        };
    }
    if let Err(e) = chain::verify_user(&trust.operator, &trust.account, &user, now) {
        return Refusal::Chain(e);
    }
    if unanswered {
        return Refusal::NoCalloutAnswer;
    }
    Refusal::NonceSignatureSuspected {
        nkey: user.subject().to_string(),
    }
}

/// How long an enrolling session lasts: enough to enrol and wait a little; `--wait` reconnects.
pub const ENROLLING_SESSION_SECS: i64 = 600;

/// An nkey without a JWT is a peel enrolling (DESIGN §6): it must prove the key by signing the
/// nonce, and a key already rejected or revoked stays out.
fn admit_enrolling(
    request: &AuthRequestNats,
    keys: &(impl KeyLookup + ?Sized),
    now: i64,
) -> Decision {
    let nkey = request.connect_opts.nkey.clone();
    let refuse = |refusal| Decision::Refuse {
        refusal,
        nkey: Some(nkey.clone()),
    };
    let Ok(user_key) = UserKey::parse(&nkey) else {
        return refuse(Refusal::NkeyWithoutJwt);
    };
    if let Err(refusal) = verify_nonce(
        &request.client_info.nonce,
        &request.connect_opts.signed_nonce,
        &nkey,
    ) {
        return refuse(refusal);
    }
    if let Some((id, standing @ (KeyState::Rejected | KeyState::Revoked))) = keys.peel_key(&nkey) {
        return refuse(Refusal::KeyNotAccepted { id, standing });
    }
    Decision::Allow(Admission {
        role: Role::Enrolling { nkey },
        nkey: user_key,
        expires: now + ENROLLING_SESSION_SECS,
        identity: None,
    })
}

/// Checks `signature` (base64url without padding as nats.go and async-nats send it, or standard
/// base64 with padding as nats.py sends it) over the nonce, by `nkey`.
pub fn verify_nonce(nonce: &str, signature: &str, nkey: &str) -> Result<(), Refusal> {
    if signature.is_empty() {
        return Err(Refusal::MissingSignature);
    }
    let raw = [&BASE64URL_NOPAD, &BASE64, &BASE64URL, &BASE64_NOPAD]
        .iter()
        .find_map(|encoding| encoding.decode(signature.as_bytes()).ok())
        .ok_or(Refusal::SignatureEncoding)?;
    keys::verify(nkey, nonce.as_bytes(), &raw).map_err(|_| Refusal::NonceSignatureMismatch {
        nkey: nkey.to_string(),
    })
}

/// The session's expiry: the admission's bound (see [`Admission::expires`]), shortened to
/// `now + session_ttl` when configured; 0 = none.
pub fn session_expiry(bound: i64, session_ttl: i64, now: i64) -> i64 {
    if session_ttl <= 0 {
        return bound;
    }
    let by_ttl = now.saturating_add(session_ttl);
    if bound == 0 {
        by_ttl
    } else {
        bound.min(by_ttl)
    }
}

#[cfg(test)]
mod tests {
    use nkeys::KeyPair;

    use super::*;
    use crate::authority::Authority;
    use crate::identity::claims::{Claims, ConnectOptions};

    const NOW: i64 = 1_800_000_000;

    struct World {
        authority: Authority,
        trust: Trust,
        keys: HashMap<String, (PeelId, KeyState)>,
    }

    fn world() -> World {
        let (authority, users) = Authority::generate(NOW).unwrap();
        let mut services = HashMap::new();
        services.insert(
            UserKey::parse(&users.master.key().public_key()).unwrap(),
            Role::Master,
        );
        let trust = Trust {
            operator: authority.operator_jwt.clone(),
            account: authority.zester_jwt.clone(),
            sentinel: "SENTINEL".into(),
            services,
            peers: HashMap::new(),
        };
        World {
            authority,
            trust,
            keys: HashMap::new(),
        }
    }

    fn request(jwt: &str, key: Option<&KeyPair>) -> AuthRequestNats {
        let mut request = AuthRequestNats::default();
        request.client_info.nonce = "nonce-123".into();
        request.connect_opts = ConnectOptions {
            jwt: jwt.to_string(),
            signed_nonce: key
                .map(|k| BASE64URL_NOPAD.encode(&k.sign(b"nonce-123").unwrap()))
                .unwrap_or_default(),
            ..ConnectOptions::default()
        };
        request
    }

    fn peel(w: &mut World, id: &str, standing: KeyState) -> (KeyPair, String) {
        let id = PeelId::parse(id).unwrap();
        let creds = w.authority.issue_peel(&id, NOW, 3600).unwrap();
        w.keys.insert(creds.key().public_key(), (id, standing));
        let token = creds.jwt().token().to_string();
        let seed = creds.key().seed().unwrap();
        (KeyPair::from_seed(&seed).unwrap(), token)
    }

    fn refusal(d: Decision) -> Refusal {
        match d {
            Decision::Refuse { refusal, .. } => refusal,
            Decision::Allow(a) => panic!("allowed: {a:?}"),
        }
    }

    #[test]
    fn another_nodes_sentinel_is_a_sentinel_and_nothing_else_is() {
        let w = world();
        // Another node signed its own sentinel at its own start.
        let theirs = w.authority.issue_sentinel(NOW - 60).unwrap();
        assert!(w.trust.is_sentinel("SENTINEL", NOW));
        assert!(w.trust.is_sentinel(theirs.token(), NOW));
        // An enrolling client on that node's server reaches the enrolment path here.
        let key = KeyPair::new_user();
        let mut enrolling = request(theirs.token(), Some(&key));
        enrolling.connect_opts.nkey = key.public_key();
        match decide(&enrolling, &w.trust, &w.keys, NOW) {
            Decision::Allow(a) => assert!(matches!(a.role, Role::Enrolling { .. }), "{a:?}"),
            other => panic!("refused: {other:?}"),
        }
        // A bearer JWT of this account without the tag, or a sentinel of another account, is
        // no sentinel.
        let untagged = w
            .authority
            .issue_user(
                &KeyPair::new_user().public_key(),
                "x",
                &Role::Master,
                NOW,
                0,
            )
            .unwrap();
        assert!(!w.trust.is_sentinel(untagged.token(), NOW));
        let (foreign, _) = Authority::generate(NOW).unwrap();
        let foreign_sentinel = foreign.issue_sentinel(NOW).unwrap();
        assert!(!w.trust.is_sentinel(foreign_sentinel.token(), NOW));
        assert!(!w.trust.is_sentinel("not a jwt", NOW));
    }

    #[test]
    fn a_refused_system_user_is_named_as_one_not_as_foreign() {
        let w = world();
        let sys = w.authority.issue_sys_creds(NOW).unwrap();
        let refusal = diagnose(sys.jwt().token(), &w.trust, NOW, false);
        assert_eq!(refusal.code(), "system_user_refused");
        assert!(
            refusal.to_string().contains("system account user"),
            "{refusal}"
        );
    }

    #[test]
    fn a_server_refusal_the_callout_missed_is_a_missing_answer() {
        let mut w = world();
        let (_, token) = peel(&mut w, "web-01", KeyState::Accepted);
        assert_eq!(
            diagnose(&token, &w.trust, NOW, false).code(),
            "nonce_signature_mismatch"
        );
        assert_eq!(
            diagnose(&token, &w.trust, NOW, true).code(),
            "callout_no_answer"
        );
        // A JWT that is itself bad keeps its own reason whatever the callout did.
        assert_eq!(
            diagnose(&token, &w.trust, NOW + 7200, true).code(),
            "jwt_expired"
        );
        assert_eq!(diagnose("", &w.trust, NOW, true).code(), "no_credentials");
    }

    #[test]
    fn an_accepted_peel_gets_its_own_role() {
        let mut w = world();
        let (key, token) = peel(&mut w, "web-01", KeyState::Accepted);
        match decide(&request(&token, Some(&key)), &w.trust, &w.keys, NOW) {
            Decision::Allow(a) => {
                assert_eq!(a.role, Role::Peel(PeelId::parse("web-01").unwrap()));
                assert_eq!(a.nkey.as_str(), key.public_key());
                assert_eq!(
                    a.expires, 0,
                    "not bound by the identity JWT: peels renew it"
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn nats_py_padded_signatures_verify() {
        let mut w = world();
        let (key, token) = peel(&mut w, "web-01", KeyState::Accepted);
        let mut req = request(&token, None);
        req.connect_opts.signed_nonce = BASE64.encode(&key.sign(b"nonce-123").unwrap());
        assert!(matches!(
            decide(&req, &w.trust, &w.keys, NOW),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn services_are_recognised_by_key_not_by_claim() {
        let w = world();
        let master = KeyPair::new_user();
        let mut services = w.trust.services.clone();
        services.insert(UserKey::parse(&master.public_key()).unwrap(), Role::Master);
        let trust = Trust {
            services,
            ..w.trust.clone()
        };
        let jwt = w
            .authority
            .issue_user(&master.public_key(), "admin", &Role::Admin(None), NOW, 0)
            .unwrap();
        match decide(&request(jwt.token(), Some(&master)), &trust, &w.keys, NOW) {
            Decision::Allow(a) => assert_eq!(a.role, Role::Master),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn every_bad_client_is_refused_with_its_reason() {
        let mut w = world();
        let (key, token) = peel(&mut w, "web-01", KeyState::Accepted);
        let (pending_key, pending) = peel(&mut w, "web-02", KeyState::Pending);
        let (revoked_key, revoked) = peel(&mut w, "web-03", KeyState::Revoked);

        let mut none = request("SENTINEL", None);
        assert_eq!(
            refusal(decide(&none, &w.trust, &w.keys, NOW)),
            Refusal::NoCredentials
        );
        none.connect_opts.username = "bob".into();
        none.connect_opts.password = "pw".into();
        assert_eq!(
            refusal(decide(&none, &w.trust, &w.keys, NOW)),
            Refusal::PasswordNotAccepted
        );

        let mut tampered = token.clone();
        tampered.insert(40, 'x');
        assert_eq!(
            refusal(decide(
                &request(&tampered, Some(&key)),
                &w.trust,
                &w.keys,
                NOW
            ))
            .code(),
            "jwt_invalid"
        );

        let foreign = Authority::generate(NOW).unwrap().0;
        let stranger = foreign
            .issue_peel(&PeelId::parse("web-01").unwrap(), NOW, 3600)
            .unwrap();
        let stranger_key = KeyPair::from_seed(&stranger.key().seed().unwrap()).unwrap();
        let r = refusal(decide(
            &request(stranger.jwt().token(), Some(&stranger_key)),
            &w.trust,
            &w.keys,
            NOW,
        ));
        assert_eq!(r.code(), "foreign_issuer", "{r}");

        let mut claims: Claims<UserNats> = jwt::decode_ignoring_time::<UserNats>(&token)
            .unwrap()
            .claims()
            .clone();
        claims.nats.issuer_account.clear();
        let identity_signed = jwt::encode(claims, &w.authority.zester).unwrap();
        let r = refusal(decide(
            &request(identity_signed.token(), Some(&key)),
            &w.trust,
            &w.keys,
            NOW,
        ));
        assert_eq!(r.code(), "issuer_not_signing_key");

        let r = refusal(decide(
            &request(&token, Some(&key)),
            &w.trust,
            &w.keys,
            NOW + 3601,
        ));
        assert_eq!(r.code(), "jwt_expired");

        let wrong = KeyPair::new_user();
        let r = refusal(decide(
            &request(&token, Some(&wrong)),
            &w.trust,
            &w.keys,
            NOW,
        ));
        assert_eq!(r.code(), "nonce_signature_mismatch");
        let r = refusal(decide(&request(&token, None), &w.trust, &w.keys, NOW));
        assert_eq!(r, Refusal::MissingSignature);

        let r = refusal(decide(
            &request(&pending, Some(&pending_key)),
            &w.trust,
            &w.keys,
            NOW,
        ));
        assert_eq!(r.code(), "key_not_accepted");
        let r = refusal(decide(
            &request(&revoked, Some(&revoked_key)),
            &w.trust,
            &w.keys,
            NOW,
        ));
        assert!(r.to_string().contains("revoked"), "{r}");

        w.keys.clear();
        let r = refusal(decide(&request(&token, Some(&key)), &w.trust, &w.keys, NOW));
        assert_eq!(r.code(), "key_unknown");
    }

    #[test]
    fn account_revocations_apply() {
        let mut w = world();
        let (key, token) = peel(&mut w, "web-01", KeyState::Accepted);
        let mut claims = w.trust.account.claims().clone();
        claims.nats.revocations.insert(key.public_key(), NOW);
        w.trust.account = w.authority.sign_account(claims).unwrap();
        let r = refusal(decide(&request(&token, Some(&key)), &w.trust, &w.keys, NOW));
        assert_eq!(r.code(), "revoked");
    }

    #[test]
    fn session_expiry_keeps_the_bound_and_the_ttl() {
        assert_eq!(session_expiry(NOW + 100, 0, NOW), NOW + 100);
        assert_eq!(session_expiry(NOW + 100, 10, NOW), NOW + 10);
        assert_eq!(session_expiry(NOW + 5, 10, NOW), NOW + 5);
        assert_eq!(session_expiry(0, 10, NOW), NOW + 10);
        assert_eq!(session_expiry(0, 0, NOW), 0);
    }
}
