//! Letting a live connection in again when nats-server asks about it a second time. Pure, like
//! [`decide`](super::decide): a request, the session's [`Grant`], the trust anchors and the key
//! records in, a [`Decision`] out.
//!
//! Why this exists: on a configuration reload (SIGHUP; zester sends one to renew the TLS
//! certificate) nats-server 2.15 re-authorises *every* connected client (`reloadAuthorization`
//! always runs, since its `accounts` and `users` options always compare as changed), and for a
//! client the callout let in it has already dropped the JWT the client presented
//! (`auth_callout.go` clears `c.opts.JWT` after an answer). The new request therefore carries
//! only the `default_sentinel`, the nonce of the original connection and the client's
//! signature over it. [`decide`](super::decide) has to refuse that, and a refusal disconnects
//! the client. The server does name the connection, though (its id and the client id, in a
//! request it signed), and the callout remembers whom it let in on that connection, so such a
//! request is decided again from that memory: the nonce signature must verify with the key
//! the session proved, the session must not have expired, and that key must still be in good
//! standing *now* (still accepted, not revoked, its JWT's issuer still a signing key of the
//! account). The answer grants the same role until the same expiry: a reload neither extends
//! nor widens a session.

use super::decide::{verify_nonce, Admission, Decision, KeyLookup, Refusal, Trust};
use crate::appliance::keys::KeyState;
use crate::identity::chain::{self, ChainError};
use crate::identity::claims::AuthRequestNats;
use crate::identity::jwt::JwtError;
use crate::identity::keys::UserKey;
use crate::permissions::Role;

/// The identity JWT a client was let in with, as much of it as deciding again needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityJwt {
    /// Who signed it (the account or one of its signing keys).
    pub issuer: String,
    /// Its `iat`, which revocations are compared with.
    pub issued_at: i64,
}

/// What a session was let in with, kept beside it in the session table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The role it was given.
    pub role: Role,
    /// The session JWT's `exp` (0 = none).
    pub expires: i64,
    /// The identity JWT it presented (none for an enrolling key, which has no JWT yet).
    pub identity: Option<IdentityJwt>,
}

/// Whether `request` is nats-server asking again, at `now`, about a connection it let in: no
/// JWT of the client's own (only a sentinel), no bare nkey, but a nonce signature. The
/// sentinel is the asking server's, which in a cluster is usually another node's than the one
/// whose callout answers, so any node's counts ([`Trust::is_sentinel`]). A client connecting
/// afresh this way is refused by [`decide`](super::decide) whatever this says, since its
/// connection has no session.
pub fn is_asked_again(request: &AuthRequestNats, trust: &Trust, now: i64) -> bool {
    let opts = &request.connect_opts;
    opts.nkey.is_empty()
        && !opts.signed_nonce.is_empty()
        && (opts.jwt.is_empty() || trust.is_sentinel(&opts.jwt, now))
}

/// Decides again, at `now`, on the live connection that was let in as `nkey` with `grant`.
pub fn readmit(
    request: &AuthRequestNats,
    nkey: &UserKey,
    grant: &Grant,
    trust: &Trust,
    keys: &(impl KeyLookup + ?Sized),
    now: i64,
) -> Decision {
    match check(request, nkey, grant, trust, keys, now) {
        Ok(()) => Decision::Allow(Admission {
            role: grant.role.clone(),
            nkey: nkey.clone(),
            expires: grant.expires,
            identity: grant.identity.clone(),
        }),
        Err(refusal) => Decision::Refuse {
            refusal,
            nkey: Some(nkey.to_string()),
        },
    }
}

fn check(
    request: &AuthRequestNats,
    nkey: &UserKey,
    grant: &Grant,
    trust: &Trust,
    keys: &(impl KeyLookup + ?Sized),
    now: i64,
) -> Result<(), Refusal> {
    let key = nkey.as_str();
    verify_nonce(
        &request.client_info.nonce,
        &request.connect_opts.signed_nonce,
        key,
    )?;
    if grant.expires != 0 && grant.expires <= now {
        return Err(Refusal::Jwt(JwtError::Expired { at: grant.expires }));
    }
    if let Some(identity) = &grant.identity {
        chain::verify_account(&trust.operator, &trust.account, now).map_err(Refusal::Chain)?;
        let account = trust.account.claims();
        let strict = trust.operator.claims().nats.strict_signing_key_usage;
        let by_account = identity.issuer == trust.account.subject() && !strict;
        if !by_account && !account.nats.has_signing_key(&identity.issuer) {
            return Err(Refusal::Chain(ChainError::IssuerNotSigningKey {
                issuer: identity.issuer.clone(),
                subject: format!("user {key}"),
            }));
        }
        if let Some(at) = account.nats.revoked_at(key, identity.issued_at) {
            return Err(Refusal::Chain(ChainError::Revoked {
                user: key.to_string(),
                at,
            }));
        }
    }
    match &grant.role {
        Role::Enrolling { .. } => match keys.peel_key(key) {
            Some((id, standing @ (KeyState::Rejected | KeyState::Revoked))) => {
                Err(Refusal::KeyNotAccepted { id, standing })
            }
            _ => Ok(()),
        },
        Role::Peel(id) => match keys.peel_key(key) {
            Some((held, KeyState::Accepted)) if held == *id => Ok(()),
            Some((held, standing)) if held == *id => {
                Err(Refusal::KeyNotAccepted { id: held, standing })
            }
            _ => Err(Refusal::UnknownKey {
                nkey: key.to_string(),
            }),
        },
        role => match trust.service_role(key) {
            Some(held) if held == role => Ok(()),
            _ => Err(Refusal::UnknownKey {
                nkey: key.to_string(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use data_encoding::BASE64URL_NOPAD;
    use nkeys::KeyPair;

    use super::*;
    use crate::authority::Authority;
    use crate::identity::claims::ConnectOptions;
    use crate::identity::peel_id::PeelId;

    const NOW: i64 = 1_800_000_000;

    struct World {
        authority: Authority,
        trust: Trust,
        keys: HashMap<String, (PeelId, KeyState)>,
    }

    fn world() -> World {
        let (authority, _) = Authority::generate(NOW).unwrap();
        let trust = Trust {
            operator: authority.operator_jwt.clone(),
            account: authority.zester_jwt.clone(),
            sentinel: "SENTINEL".into(),
            services: HashMap::new(),
            peers: HashMap::new(),
        };
        World {
            authority,
            trust,
            keys: HashMap::new(),
        }
    }

    /// What nats-server sends on a reload for a connection that signed "nonce-1" with `key`.
    fn asked_again(key: &KeyPair) -> AuthRequestNats {
        let mut request = AuthRequestNats::default();
        request.client_info.nonce = "nonce-1".into();
        request.client_info.id = 7;
        request.server.id = "NSERVER".into();
        request.connect_opts = ConnectOptions {
            jwt: "SENTINEL".into(),
            username: "web-01".into(),
            signed_nonce: BASE64URL_NOPAD.encode(&key.sign(b"nonce-1").unwrap()),
            ..ConnectOptions::default()
        };
        request
    }

    /// A peel `web-01` let in until `expires`, its key accepted.
    fn peel(w: &mut World, expires: i64) -> (KeyPair, UserKey, Grant) {
        let id = PeelId::parse("web-01").unwrap();
        let creds = w.authority.issue_peel(&id, NOW - 10, 3600).unwrap();
        let key = KeyPair::from_seed(&creds.key().seed().unwrap()).unwrap();
        w.keys
            .insert(key.public_key(), (id.clone(), KeyState::Accepted));
        let grant = Grant {
            role: Role::Peel(id),
            expires,
            identity: Some(IdentityJwt {
                issuer: creds.jwt().claims().iss.clone(),
                issued_at: creds.jwt().claims().iat,
            }),
        };
        let nkey = UserKey::parse(&key.public_key()).unwrap();
        (key, nkey, grant)
    }

    fn code(decision: &Decision) -> &'static str {
        match decision {
            Decision::Allow(_) => "allowed",
            Decision::Refuse { refusal, .. } => refusal.code(),
        }
    }

    #[test]
    fn a_reload_lets_a_live_peel_in_again_with_the_same_role_and_expiry() {
        let mut w = world();
        let (key, nkey, grant) = peel(&mut w, NOW + 600);
        let request = asked_again(&key);
        assert!(is_asked_again(&request, &w.trust, NOW));
        match readmit(&request, &nkey, &grant, &w.trust, &w.keys, NOW) {
            Decision::Allow(admission) => {
                assert_eq!(admission.role, grant.role);
                assert_eq!(admission.expires, NOW + 600, "not extended");
                assert_eq!(admission.nkey, nkey);
            }
            refused => panic!("{refused:?}"),
        }
    }

    #[test]
    fn another_nodes_sentinel_is_asked_again_too() {
        let mut w = world();
        let (key, _, _) = peel(&mut w, NOW + 600);
        let mut request = asked_again(&key);
        // Every node issues its own sentinel; the asking server hands out its node's.
        let other = w.authority.issue_sentinel(NOW - 5).unwrap();
        request.connect_opts.jwt = other.token().to_string();
        assert!(is_asked_again(&request, &w.trust, NOW));
        let peel_jwt = w
            .authority
            .issue_peel(&PeelId::parse("web-02").unwrap(), NOW, 60)
            .unwrap();
        request.connect_opts.jwt = peel_jwt.jwt().token().to_string();
        assert!(!is_asked_again(&request, &w.trust, NOW), "a JWT of its own");
    }

    #[test]
    fn only_a_signature_by_the_sessions_key_lets_it_in_again() {
        let mut w = world();
        let (_, nkey, grant) = peel(&mut w, NOW + 600);
        let other = KeyPair::new_user();
        let decision = readmit(&asked_again(&other), &nkey, &grant, &w.trust, &w.keys, NOW);
        assert_eq!(code(&decision), "nonce_signature_mismatch");
        let mut unsigned = asked_again(&other);
        unsigned.connect_opts.signed_nonce.clear();
        assert!(!is_asked_again(&unsigned, &w.trust, NOW));
    }

    #[test]
    fn what_happened_since_the_admission_counts() {
        let mut w = world();
        let (key, nkey, grant) = peel(&mut w, NOW + 600);
        let request = asked_again(&key);
        let expired = readmit(&request, &nkey, &grant, &w.trust, &w.keys, NOW + 600);
        assert_eq!(code(&expired), "jwt_expired");

        let id = PeelId::parse("web-01").unwrap();
        w.keys
            .insert(nkey.to_string(), (id.clone(), KeyState::Revoked));
        let revoked = readmit(&request, &nkey, &grant, &w.trust, &w.keys, NOW);
        assert_eq!(code(&revoked), "key_not_accepted");
        w.keys.clear();
        let forgotten = readmit(&request, &nkey, &grant, &w.trust, &w.keys, NOW);
        assert_eq!(code(&forgotten), "key_unknown");

        w.keys.insert(nkey.to_string(), (id, KeyState::Accepted));
        let mut retired = grant.clone();
        if let Some(identity) = retired.identity.as_mut() {
            identity.issuer = KeyPair::new_account().public_key();
        }
        let by_retired_key = readmit(&request, &nkey, &retired, &w.trust, &w.keys, NOW);
        assert_eq!(code(&by_retired_key), "issuer_not_signing_key");
    }

    #[test]
    fn a_revocation_in_the_account_jwt_since_the_admission_counts() {
        let mut w = world();
        let (key, nkey, grant) = peel(&mut w, NOW + 600);
        let mut claims = w.authority.zester_jwt.claims().clone();
        claims.nats.revocations.insert(nkey.to_string(), NOW);
        w.trust.account = w.authority.sign_account(claims).unwrap();
        let decision = readmit(&asked_again(&key), &nkey, &grant, &w.trust, &w.keys, NOW);
        assert_eq!(code(&decision), "revoked");
    }

    #[test]
    fn service_users_and_enrolling_keys_are_let_in_again_while_they_stand() {
        let mut w = world();
        let key = KeyPair::new_user();
        let nkey = UserKey::parse(&key.public_key()).unwrap();
        let service = Grant {
            role: Role::Master,
            expires: 0,
            identity: Some(IdentityJwt {
                issuer: w.authority.zester_signer.public_key(),
                issued_at: NOW - 10,
            }),
        };
        let request = asked_again(&key);
        let unknown = readmit(&request, &nkey, &service, &w.trust, &w.keys, NOW);
        assert_eq!(code(&unknown), "key_unknown", "no longer a service user");
        w.trust.services.insert(nkey.clone(), Role::Master);
        let allowed = readmit(&request, &nkey, &service, &w.trust, &w.keys, NOW);
        assert_eq!(code(&allowed), "allowed");

        let enrolling = Grant {
            role: Role::Enrolling {
                nkey: key.public_key(),
            },
            expires: NOW + 600,
            identity: None,
        };
        let pending = readmit(&request, &nkey, &enrolling, &w.trust, &w.keys, NOW);
        assert_eq!(code(&pending), "allowed");
        w.keys.insert(
            key.public_key(),
            (PeelId::parse("web-09").unwrap(), KeyState::Rejected),
        );
        let rejected = readmit(&request, &nkey, &enrolling, &w.trust, &w.keys, NOW);
        assert_eq!(code(&rejected), "key_not_accepted");
    }
}
