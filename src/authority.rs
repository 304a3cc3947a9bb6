//! The zester trust hierarchy (DESIGN §3): operator, SYS and ZESTER accounts, their signing
//! keys, the callout and master curve keys, and issuing user JWTs from them.
//!
//! Pure apart from drawing random keys: no files (see `home`), no clock (callers pass `now`).
//! The operator sets `strict_signing_key_usage`, so accounts are signed by the operator signing
//! key and users by their account's signing key with `issuer_account`; identity keys only
//! identify. An [`Authority`] is either freshly generated or assembled from stored text, and
//! assembling checks that every seed matches the JWT that names it.

use nkeys::{KeyPair, XKey};

use crate::identity::chain::{self, ChainError};
use crate::identity::claims::{AccountLimits, AccountNats, Claims, ExternalAuthorization};
use crate::identity::claims::{OperatorNats, Permission, Permissions, SigningKey, UserNats};
use crate::identity::creds::{Creds, CredsError};
use crate::identity::jwt::{self, AccountJwt, JwtError, OperatorJwt, UserJwt};
use crate::identity::keys::{self, KeyError, KeyRole};
use crate::identity::peel_id::PeelId;
use crate::permissions::{permissions_for, Role};

/// The tag of the `default_sentinel` JWT: how every node's callout knows any node's sentinel.
pub const SENTINEL_TAG: &str = "zester-role:sentinel";

/// Name of the operator.
pub const OPERATOR_NAME: &str = "zester-op";
/// Name of the system account.
pub const SYS_ACCOUNT: &str = "SYS";
/// Name of the account peels, the master and admins live in.
pub const ZESTER_ACCOUNT: &str = "ZESTER";

/// Why an authority could not be made or assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// A stored seed is unusable.
    #[error("{what}: {source}")]
    Key {
        /// Which key.
        what: &'static str,
        /// The problem.
        source: KeyError,
    },
    /// A stored JWT is unusable.
    #[error("{what}: {source}")]
    Jwt {
        /// Which JWT.
        what: &'static str,
        /// The problem.
        source: JwtError,
    },
    /// A stored seed does not belong to the JWT next to it.
    #[error("{what}: the seed is for {seed_key} but the JWT names {jwt_key}; the files do not belong together")]
    Mismatch {
        /// Which pair.
        what: &'static str,
        /// Public key of the seed.
        seed_key: String,
        /// Key in the JWT.
        jwt_key: String,
    },
    /// The stored accounts do not chain to the stored operator.
    #[error("{what}: {source}")]
    Chain {
        /// Which account.
        what: &'static str,
        /// The problem.
        source: ChainError,
    },
    /// Issued creds did not come out consistent (a bug, reported rather than hidden).
    #[error("issued creds are inconsistent: {0}")]
    Creds(CredsError),
}

/// The stored form of an authority: seeds and JWTs as text, as `home` reads them.
#[derive(Debug, Clone, Default)]
pub struct StoredAuthority {
    /// Operator identity seed.
    pub operator_seed: String,
    /// Operator signing seed.
    pub operator_signing_seed: String,
    /// Operator JWT.
    pub operator_jwt: String,
    /// SYS identity seed.
    pub sys_seed: String,
    /// SYS signing seed.
    pub sys_signing_seed: String,
    /// SYS account JWT.
    pub sys_jwt: String,
    /// ZESTER identity seed.
    pub zester_seed: String,
    /// ZESTER signing seed.
    pub zester_signing_seed: String,
    /// ZESTER account JWT.
    pub zester_jwt: String,
    /// Curve seed the callout opens requests with.
    pub callout_xkey_seed: String,
    /// The master's curve seed (secrets).
    pub master_xkey_seed: String,
}

/// The whole hierarchy with its private keys.
#[derive(Debug)]
pub struct Authority {
    /// Operator identity key.
    pub operator: KeyPair,
    /// Operator signing key (signs accounts).
    pub operator_signer: KeyPair,
    /// Operator JWT.
    pub operator_jwt: OperatorJwt,
    /// SYS identity key.
    pub sys: KeyPair,
    /// SYS signing key (signs the sys user).
    pub sys_signer: KeyPair,
    /// SYS account JWT.
    pub sys_jwt: AccountJwt,
    /// ZESTER identity key.
    pub zester: KeyPair,
    /// ZESTER signing key (signs every user in ZESTER and callout responses).
    pub zester_signer: KeyPair,
    /// ZESTER account JWT.
    pub zester_jwt: AccountJwt,
    /// Curve key auth-callout requests are sealed to.
    pub callout_xkey: XKey,
    /// The master's curve key (secrets are sealed from it).
    pub master_xkey: XKey,
}

/// The service users made at init, as creds.
#[derive(Debug)]
pub struct ServiceUsers {
    /// The callout service (listed in ZESTER's `auth_users`).
    pub callout: Creds,
    /// The master.
    pub master: Creds,
    /// The admin tools.
    pub admin: Creds,
    /// The system-account user (kicks, claim updates).
    pub sys: Creds,
}

fn seed_of(pair: &KeyPair) -> String {
    // Pairs made here or from a seed carry their seed; the identity keys of a node that joined
    // a cluster are public only, and are stored as nothing.
    pair.seed().unwrap_or_default()
}

fn xkey_seed_of(key: &XKey) -> String {
    key.seed().unwrap_or_default()
}

impl Authority {
    /// Generates a new hierarchy, and the service users whose keys it must know about.
    pub fn generate(now: i64) -> Result<(Authority, ServiceUsers), AuthorityError> {
        let operator = KeyPair::new_operator();
        let operator_signer = KeyPair::new_operator();
        let sys = KeyPair::new_account();
        let zester = KeyPair::new_account();
        let callout_user = KeyPair::new_user();
        let callout_xkey = XKey::new();
        let operator_jwt = sign(
            operator_claims(&operator, &operator_signer, &sys, now),
            &operator,
            "operator JWT",
        )?;
        let sys_signer = KeyPair::new_account();
        let zester_signer = KeyPair::new_account();
        let sys_jwt = sign(
            account_claims(
                &sys,
                &sys_signer,
                SYS_ACCOUNT,
                AccountLimits::unlimited(),
                now,
            ),
            &operator_signer,
            "SYS account JWT",
        )?;
        let mut zester_claims = account_claims(
            &zester,
            &zester_signer,
            ZESTER_ACCOUNT,
            AccountLimits::unlimited_with_jetstream(),
            now,
        );
        zester_claims.nats.authorization = ExternalAuthorization {
            auth_users: vec![callout_user.public_key()],
            allowed_accounts: Vec::new(),
            xkey: callout_xkey.public_key(),
        };
        let zester_jwt = sign(zester_claims, &operator_signer, "ZESTER account JWT")?;
        let authority = Authority {
            operator,
            operator_signer,
            operator_jwt,
            sys,
            sys_signer,
            sys_jwt,
            zester,
            zester_signer,
            zester_jwt,
            callout_xkey,
            master_xkey: XKey::new(),
        };
        let users = ServiceUsers {
            callout: authority.issue_creds(callout_user, "callout", &Role::Callout, now, 0)?,
            master: authority.issue_creds(KeyPair::new_user(), "master", &Role::Master, now, 0)?,
            admin: authority.issue_creds(
                KeyPair::new_user(),
                "admin",
                &Role::Admin(None),
                now,
                0,
            )?,
            sys: authority.issue_sys_creds(now)?,
        };
        Ok((authority, users))
    }

    /// Rebuilds an authority from its stored text, checking that it is whole and consistent.
    ///
    /// The identity seeds of the operator and both accounts may be empty: a node that joined a
    /// cluster (`zester node join`) never receives them, only the signing keys (the identity
    /// keys stay where they were made, so that a leaked signing key can be replaced from
    /// there). Their public keys then come from the JWTs; nothing a running node does needs
    /// more than that.
    pub fn assemble(stored: &StoredAuthority) -> Result<Authority, AuthorityError> {
        let seed = |what: &'static str, text: &str, role: KeyRole| {
            keys::pair_from_seed(text, &[role])
                .map_err(|source| AuthorityError::Key { what, source })
        };
        let identity = |what: &'static str, text: &str, role: KeyRole, public: &str| {
            if text.trim().is_empty() {
                KeyPair::from_public_key(public).map_err(|_| AuthorityError::Key {
                    what,
                    source: KeyError::InvalidSeed,
                })
            } else {
                seed(what, text, role)
            }
        };
        let xkey = |what: &'static str, text: &str| {
            XKey::from_seed(text.trim()).map_err(|_| AuthorityError::Key {
                what,
                source: KeyError::InvalidSeed,
            })
        };
        let operator_jwt: OperatorJwt = decode("operator JWT", &stored.operator_jwt)?;
        let sys_jwt: AccountJwt = decode("SYS account JWT", &stored.sys_jwt)?;
        let zester_jwt: AccountJwt = decode("ZESTER account JWT", &stored.zester_jwt)?;
        let operator = identity(
            "operator seed",
            &stored.operator_seed,
            KeyRole::Operator,
            operator_jwt.subject(),
        )?;
        let operator_signer = seed(
            "operator signing seed",
            &stored.operator_signing_seed,
            KeyRole::Operator,
        )?;
        let sys = identity(
            "SYS seed",
            &stored.sys_seed,
            KeyRole::Account,
            sys_jwt.subject(),
        )?;
        let sys_signer = seed(
            "SYS signing seed",
            &stored.sys_signing_seed,
            KeyRole::Account,
        )?;
        let zester = identity(
            "ZESTER seed",
            &stored.zester_seed,
            KeyRole::Account,
            zester_jwt.subject(),
        )?;
        let zester_signer = seed(
            "ZESTER signing seed",
            &stored.zester_signing_seed,
            KeyRole::Account,
        )?;
        same_key("operator", &operator, operator_jwt.subject())?;
        same_key("SYS account", &sys, sys_jwt.subject())?;
        same_key("ZESTER account", &zester, zester_jwt.subject())?;
        listed(
            "operator signing key",
            &operator_signer,
            operator_jwt
                .claims()
                .nats
                .signing_keys
                .iter()
                .map(String::as_str),
        )?;
        listed(
            "SYS signing key",
            &sys_signer,
            sys_jwt
                .claims()
                .nats
                .signing_keys
                .iter()
                .map(SigningKey::key),
        )?;
        listed(
            "ZESTER signing key",
            &zester_signer,
            zester_jwt
                .claims()
                .nats
                .signing_keys
                .iter()
                .map(SigningKey::key),
        )?;
        for (what, account) in [
            ("SYS account JWT", &sys_jwt),
            ("ZESTER account JWT", &zester_jwt),
        ] {
            // Expiry is not part of integrity; these JWTs are issued without one.
            chain::verify_account(&operator_jwt, account, account.claims().iat)
                .map_err(|source| AuthorityError::Chain { what, source })?;
        }
        Ok(Authority {
            operator,
            operator_signer,
            operator_jwt,
            sys,
            sys_signer,
            sys_jwt,
            zester,
            zester_signer,
            zester_jwt,
            callout_xkey: xkey("callout xkey seed", &stored.callout_xkey_seed)?,
            master_xkey: xkey("master xkey seed", &stored.master_xkey_seed)?,
        })
    }

    /// The text form of every secret and JWT, for `home` to store.
    pub fn to_stored(&self) -> StoredAuthority {
        StoredAuthority {
            operator_seed: seed_of(&self.operator),
            operator_signing_seed: seed_of(&self.operator_signer),
            operator_jwt: self.operator_jwt.token().to_string(),
            sys_seed: seed_of(&self.sys),
            sys_signing_seed: seed_of(&self.sys_signer),
            sys_jwt: self.sys_jwt.token().to_string(),
            zester_seed: seed_of(&self.zester),
            zester_signing_seed: seed_of(&self.zester_signer),
            zester_jwt: self.zester_jwt.token().to_string(),
            callout_xkey_seed: xkey_seed_of(&self.callout_xkey),
            master_xkey_seed: xkey_seed_of(&self.master_xkey),
        }
    }

    /// Signs a ZESTER user JWT for `user_key` with `role`'s permissions.
    ///
    /// `ttl` is seconds from `now` (0 = no expiry). The JWT's `name` is `name`.
    pub fn issue_user(
        &self,
        user_key: &str,
        name: &str,
        role: &Role,
        now: i64,
        ttl: i64,
    ) -> Result<UserJwt, AuthorityError> {
        let exp = if ttl > 0 { now.saturating_add(ttl) } else { 0 };
        self.sign_user(user_key, name, permissions_for(role), role.name(), now, exp)
    }

    /// Signs a callout session JWT for `user_nkey` (the key nats-server made for this
    /// connection) with `role`'s permissions, expiring at `exp` (unix seconds, 0 = never).
    pub fn issue_session(
        &self,
        user_nkey: &str,
        name: &str,
        role: &Role,
        now: i64,
        exp: i64,
    ) -> Result<UserJwt, AuthorityError> {
        self.sign_user(
            user_nkey,
            name,
            permissions_for(role),
            role.name(),
            now,
            exp,
        )
    }

    /// Issues creds for a new peel: a fresh user key and a JWT with the peel permissions.
    pub fn issue_peel(&self, id: &PeelId, now: i64, ttl: i64) -> Result<Creds, AuthorityError> {
        self.issue_creds(
            KeyPair::new_user(),
            id.as_str(),
            &Role::Peel(id.clone()),
            now,
            ttl,
        )
    }

    /// Issues creds for `key` (a fresh user key pair) with `role`.
    pub fn issue_creds(
        &self,
        key: KeyPair,
        name: &str,
        role: &Role,
        now: i64,
        ttl: i64,
    ) -> Result<Creds, AuthorityError> {
        let jwt = self.issue_user(&key.public_key(), name, role, now, ttl)?;
        Creds::new(jwt, key).map_err(AuthorityError::Creds)
    }

    fn sign_user(
        &self,
        user_key: &str,
        name: &str,
        permissions: Permissions,
        role_tag: &str,
        now: i64,
        exp: i64,
    ) -> Result<UserJwt, AuthorityError> {
        let mut nats = UserNats::with_permissions(permissions);
        nats.issuer_account = self.zester.public_key();
        nats.tags = vec![format!("zester-role:{role_tag}")];
        let claims = Claims {
            sub: user_key.to_string(),
            name: name.to_string(),
            iat: now,
            exp,
            nats,
            ..Claims::default()
        };
        sign(claims, &self.zester_signer, "user JWT")
    }

    /// The `default_sentinel` nats-server hands to clients that bring no JWT of their own, so
    /// that they reach the callout: a bearer user of ZESTER that may do nothing at all.
    pub fn issue_sentinel(&self, now: i64) -> Result<UserJwt, AuthorityError> {
        let nothing = Permissions {
            publish: Permission {
                allow: Vec::new(),
                deny: vec![">".to_string()],
            },
            subscribe: Permission {
                allow: Vec::new(),
                deny: vec![">".to_string()],
            },
            resp: None,
        };
        let mut nats = UserNats::with_permissions(nothing);
        nats.bearer_token = true;
        nats.issuer_account = self.zester.public_key();
        nats.tags = vec![SENTINEL_TAG.to_string()];
        let claims = Claims {
            sub: KeyPair::new_user().public_key(),
            name: "sentinel".to_string(),
            iat: now,
            nats,
            ..Claims::default()
        };
        sign(claims, &self.zester_signer, "sentinel JWT")
    }

    /// Issues the system-account user (no permission limits: it is the operator's own tool).
    pub fn issue_sys_creds(&self, now: i64) -> Result<Creds, AuthorityError> {
        self.sys_creds(KeyPair::new_user(), now, 0)
    }

    /// The system-account user's creds for `key`, valid for `ttl` seconds (0 = no expiry).
    fn sys_creds(&self, key: KeyPair, now: i64, ttl: i64) -> Result<Creds, AuthorityError> {
        let mut nats = UserNats::with_permissions(Permissions::default());
        nats.issuer_account = self.sys.public_key();
        let claims = Claims {
            sub: key.public_key(),
            name: "sys".to_string(),
            iat: now,
            exp: if ttl > 0 { now + ttl } else { 0 },
            nats,
            ..Claims::default()
        };
        let jwt = sign(claims, &self.sys_signer, "sys user JWT")?;
        Creds::new(jwt, key).map_err(AuthorityError::Creds)
    }

    /// Fresh creds, for the same `key`, of one of zester's own users in the home (`master`,
    /// `admin`, `callout` or `sys`), valid for `ttl` seconds (0 = no expiry); `None` for any
    /// other name.
    pub fn renew_own_user(
        &self,
        name: &str,
        key: KeyPair,
        now: i64,
        ttl: i64,
    ) -> Option<Result<Creds, AuthorityError>> {
        let role = match name {
            "sys" => return Some(self.sys_creds(key, now, ttl)),
            "master" => Role::Master,
            "admin" => Role::Admin(None),
            "callout" => Role::Callout,
            _ => return None,
        };
        Some(self.issue_creds(key, name, &role, now, ttl))
    }

    /// Re-signs the ZESTER account JWT with or without the auth-callout section.
    ///
    /// Without it, nats-server authenticates ZESTER users by their JWT alone (native auth):
    /// tests and the native-auth benchmark baseline use that.
    pub fn zester_account(
        &self,
        with_callout: bool,
        now: i64,
    ) -> Result<AccountJwt, AuthorityError> {
        let mut claims = self.zester_jwt.claims().clone();
        claims.iat = now;
        if !with_callout {
            claims.nats.authorization = ExternalAuthorization::default();
        }
        sign(claims, &self.operator_signer, "ZESTER account JWT")
    }

    /// Starts a rotation of the ZESTER signing key: a new key signs from now on and is listed
    /// first in the account JWT; the previous ones stay listed, so JWTs they signed (peels')
    /// keep working until [`Authority::retire_previous_signing_keys`]. The service users are
    /// re-issued with the new key.
    pub fn rotate_signing_key(
        self,
        now: i64,
        callout_user: KeyPair,
    ) -> Result<(Authority, ServiceUsers), AuthorityError> {
        let signer = KeyPair::new_account();
        let mut claims = self.zester_jwt.claims().clone();
        claims
            .nats
            .signing_keys
            .insert(0, SigningKey::Key(signer.public_key()));
        claims.iat = now.max(claims.iat + 1);
        let zester_jwt = self.sign_account(claims)?;
        let authority = Authority {
            zester_signer: signer,
            zester_jwt,
            ..self
        };
        let users = ServiceUsers {
            callout: authority.issue_creds(callout_user, "callout", &Role::Callout, now, 0)?,
            master: authority.issue_creds(KeyPair::new_user(), "master", &Role::Master, now, 0)?,
            admin: authority.issue_creds(
                KeyPair::new_user(),
                "admin",
                &Role::Admin(None),
                now,
                0,
            )?,
            sys: authority.issue_sys_creds(now)?,
        };
        Ok((authority, users))
    }

    /// Finishes a rotation: only the current signing key stays in the account JWT, and JWTs the
    /// previous keys signed stop working.
    pub fn retire_previous_signing_keys(self, now: i64) -> Result<Authority, AuthorityError> {
        let current = self.zester_signer.public_key();
        let mut claims = self.zester_jwt.claims().clone();
        claims.nats.signing_keys.retain(|k| k.key() == current);
        claims.iat = now.max(claims.iat + 1);
        let zester_jwt = self.sign_account(claims)?;
        Ok(Authority { zester_jwt, ..self })
    }

    /// Signs arbitrary account claims with the operator signing key.
    pub fn sign_account(&self, claims: Claims<AccountNats>) -> Result<AccountJwt, AuthorityError> {
        sign(claims, &self.operator_signer, "account JWT")
    }
}

fn operator_claims(
    operator: &KeyPair,
    signer: &KeyPair,
    sys: &KeyPair,
    now: i64,
) -> Claims<OperatorNats> {
    Claims {
        sub: operator.public_key(),
        name: OPERATOR_NAME.to_string(),
        iat: now,
        nats: OperatorNats {
            signing_keys: vec![signer.public_key()],
            system_account: sys.public_key(),
            strict_signing_key_usage: true,
            ..OperatorNats::default()
        },
        ..Claims::default()
    }
}

fn account_claims(
    account: &KeyPair,
    signer: &KeyPair,
    name: &str,
    limits: AccountLimits,
    now: i64,
) -> Claims<AccountNats> {
    Claims {
        sub: account.public_key(),
        name: name.to_string(),
        iat: now,
        nats: AccountNats {
            limits,
            signing_keys: vec![SigningKey::Key(signer.public_key())],
            ..AccountNats::default()
        },
        ..Claims::default()
    }
}

fn sign<N: crate::identity::claims::ClaimBody>(
    claims: Claims<N>,
    signer: &KeyPair,
    what: &'static str,
) -> Result<jwt::Jwt<N>, AuthorityError> {
    jwt::encode(claims, signer).map_err(|source| AuthorityError::Jwt { what, source })
}

fn decode<N: crate::identity::claims::ClaimBody>(
    what: &'static str,
    token: &str,
) -> Result<jwt::Jwt<N>, AuthorityError> {
    jwt::decode_ignoring_time(token.trim()).map_err(|source| AuthorityError::Jwt { what, source })
}

fn same_key(what: &'static str, pair: &KeyPair, jwt_key: &str) -> Result<(), AuthorityError> {
    let seed_key = pair.public_key();
    if seed_key == jwt_key {
        Ok(())
    } else {
        Err(AuthorityError::Mismatch {
            what,
            seed_key,
            jwt_key: jwt_key.to_string(),
        })
    }
}

fn listed<'a>(
    what: &'static str,
    pair: &KeyPair,
    mut keys: impl Iterator<Item = &'a str>,
) -> Result<(), AuthorityError> {
    let seed_key = pair.public_key();
    if keys.any(|k| k == seed_key) {
        Ok(())
    } else {
        Err(AuthorityError::Mismatch {
            what,
            seed_key,
            jwt_key: "(not among the JWT's signing keys)".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn generated_users_chain_to_the_operator() {
        let (authority, users) = Authority::generate(NOW).unwrap();
        for creds in [&users.callout, &users.master, &users.admin] {
            chain::verify_user(
                &authority.operator_jwt,
                &authority.zester_jwt,
                creds.jwt(),
                NOW,
            )
            .unwrap();
        }
        chain::verify_user(
            &authority.operator_jwt,
            &authority.sys_jwt,
            users.sys.jwt(),
            NOW,
        )
        .unwrap();
        let auth = &authority.zester_jwt.claims().nats.authorization;
        assert_eq!(auth.auth_users, vec![users.callout.key().public_key()]);
        assert_eq!(auth.xkey, authority.callout_xkey.public_key());
        assert!(
            authority
                .operator_jwt
                .claims()
                .nats
                .strict_signing_key_usage
        );
    }

    #[test]
    fn peels_get_expiring_jwts_with_peel_permissions() {
        let (authority, _) = Authority::generate(NOW).unwrap();
        let id = PeelId::parse("web-01").unwrap();
        let creds = authority.issue_peel(&id, NOW, 180 * 86_400).unwrap();
        let claims = creds.jwt().claims();
        assert_eq!(claims.name, "web-01");
        assert_eq!(claims.exp, NOW + 180 * 86_400);
        assert_eq!(claims.nats.issuer_account, authority.zester.public_key());
        assert_eq!(claims.iss, authority.zester_signer.public_key());
        assert_eq!(claims.nats.permissions(), permissions_for(&Role::Peel(id)));
        chain::verify_user(
            &authority.operator_jwt,
            &authority.zester_jwt,
            creds.jwt(),
            NOW,
        )
        .unwrap();
    }

    #[test]
    fn stored_form_round_trips_and_mismatches_are_caught() {
        let (authority, _) = Authority::generate(NOW).unwrap();
        let stored = authority.to_stored();
        let back = Authority::assemble(&stored).unwrap();
        assert_eq!(back.zester_jwt, authority.zester_jwt);

        let (other, _) = Authority::generate(NOW).unwrap();
        let mut mixed = stored.clone();
        mixed.zester_seed = other.to_stored().zester_seed;
        assert!(matches!(
            Authority::assemble(&mixed),
            Err(AuthorityError::Mismatch {
                what: "ZESTER account",
                ..
            })
        ));
        let mut mixed = stored.clone();
        mixed.zester_jwt = other.to_stored().zester_jwt;
        assert!(Authority::assemble(&mixed).is_err());
        let mut broken = stored;
        broken.operator_jwt.pop();
        assert!(matches!(
            Authority::assemble(&broken),
            Err(AuthorityError::Jwt {
                what: "operator JWT",
                ..
            })
        ));
    }

    #[test]
    fn signing_key_rotation_keeps_old_jwts_until_retired() {
        let (authority, users) = Authority::generate(NOW).unwrap();
        let peel = authority
            .issue_peel(&PeelId::parse("web-01").unwrap(), NOW, 3600)
            .unwrap();
        let callout = KeyPair::from_seed(&users.callout.key().seed().unwrap()).unwrap();
        let old_signer = authority.zester_signer.public_key();
        let (rotated, users) = authority.rotate_signing_key(NOW + 1, callout).unwrap();
        assert_ne!(rotated.zester_signer.public_key(), old_signer);
        assert_eq!(
            users.master.jwt().issuer(),
            rotated.zester_signer.public_key()
        );
        let ok = |a: &Authority| {
            chain::verify_user(&a.operator_jwt, &a.zester_jwt, peel.jwt(), NOW + 2).is_ok()
        };
        assert!(ok(&rotated), "old peel JWTs still work during the rotation");
        let stored = Authority::assemble(&rotated.to_stored()).unwrap();
        assert_eq!(
            stored.zester_signer.public_key(),
            rotated.zester_signer.public_key()
        );
        let retired = rotated.retire_previous_signing_keys(NOW + 3).unwrap();
        assert!(!ok(&retired), "retired keys no longer sign");
        assert_eq!(retired.zester_jwt.claims().nats.signing_keys.len(), 1);
    }

    #[test]
    fn account_without_callout_keeps_everything_else() {
        let (authority, _) = Authority::generate(NOW).unwrap();
        let plain = authority.zester_account(false, NOW).unwrap();
        assert!(plain.claims().nats.authorization.is_empty());
        assert_eq!(
            plain.claims().nats.signing_keys,
            authority.zester_jwt.claims().nats.signing_keys
        );
        chain::verify_account(&authority.operator_jwt, &plain, NOW).unwrap();
    }
}
