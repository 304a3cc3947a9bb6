//! Chain validation: user ← account ← operator, as nats-server checks it.
//!
//! Each link is a signature-verified `Jwt`; this module checks who signed whom: an account must
//! be signed by the operator (identity key, or a listed signing key — only the latter when the
//! operator sets `strict_signing_key_usage`), a user by its account (identity key, or a listed
//! signing key with `issuer_account` naming the account; again only a signing key when strict),
//! every link must be within its `exp`/`nbf` at `now`, and the account must not revoke the user.
//! A [`VerifiedChain`] only comes out of [`verify_user`].

use super::claims::AccountNats;
use super::jwt::{AccountJwt, JwtError, OperatorJwt, UserJwt};

/// Why a chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A link is outside its validity window.
    #[error("{link} JWT: {source}")]
    Time {
        /// "operator", "account" or "user".
        link: &'static str,
        /// Expired or not yet valid.
        source: JwtError,
    },
    /// The operator JWT is not signed by the operator itself.
    #[error("operator JWT for {operator} is signed by {issuer}, not by the operator itself")]
    OperatorNotSelfSigned {
        /// The operator key.
        operator: String,
        /// Who signed it.
        issuer: String,
    },
    /// The account was signed by a key that is not this operator's.
    #[error("account {account} is signed by {issuer}, which is neither operator {operator} nor one of its signing keys (a JWT from another operator?)")]
    AccountNotIssuedByOperator {
        /// The account.
        account: String,
        /// Who signed it.
        issuer: String,
        /// The trusted operator.
        operator: String,
    },
    /// Signed with an identity key where the operator requires a signing key.
    #[error("{subject} is signed by the identity key {issuer}, but the operator sets strict_signing_key_usage: only signing keys may sign")]
    IssuerNotSigningKey {
        /// The identity key used.
        issuer: String,
        /// What it signed.
        subject: String,
    },
    /// The user was signed by a key that is not this account's.
    #[error("user {user} is signed by {issuer}, which is neither account {account} nor one of its signing keys")]
    UserNotIssuedByAccount {
        /// The user.
        user: String,
        /// Who signed it.
        issuer: String,
        /// The account.
        account: String,
    },
    /// `issuer_account` names another account.
    #[error("user {user} claims issuer_account {issuer_account}, but is checked against account {account}")]
    IssuerAccountMismatch {
        /// The user.
        user: String,
        /// What the user JWT says.
        issuer_account: String,
        /// The account checked against.
        account: String,
    },
    /// The account revoked this user's JWT.
    #[error("user {user} was revoked by its account at unix {at} (the JWT was issued at or before that)")]
    Revoked {
        /// The user.
        user: String,
        /// The revocation time.
        at: i64,
    },
}

/// A user whose whole chain up to the trusted operator has been verified at some `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    operator: String,
    account: String,
    user: String,
    user_signer: String,
}

impl VerifiedChain {
    /// The operator's identity key.
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// The account's identity key.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The user's key.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The key that signed the user (the account or one of its signing keys).
    pub fn user_signer(&self) -> &str {
        &self.user_signer
    }
}

fn in_time<N>(link: &'static str, jwt: &super::jwt::Jwt<N>, now: i64) -> Result<(), ChainError> {
    jwt.check_times(now)
        .map_err(|source| ChainError::Time { link, source })
}

/// Checks that `operator` is self-signed and `account` is signed by it, both valid at `now`.
pub fn verify_account(
    operator: &OperatorJwt,
    account: &AccountJwt,
    now: i64,
) -> Result<(), ChainError> {
    let op = operator.claims();
    if op.iss != op.sub {
        return Err(ChainError::OperatorNotSelfSigned {
            operator: op.sub.clone(),
            issuer: op.iss.clone(),
        });
    }
    in_time("operator", operator, now)?;
    in_time("account", account, now)?;
    let issuer = account.issuer();
    let by_signing_key = op.nats.signing_keys.iter().any(|k| k == issuer);
    if issuer == op.sub && op.nats.strict_signing_key_usage {
        return Err(ChainError::IssuerNotSigningKey {
            issuer: issuer.to_string(),
            subject: format!("account {}", account.subject()),
        });
    }
    if issuer != op.sub && !by_signing_key {
        return Err(ChainError::AccountNotIssuedByOperator {
            account: account.subject().to_string(),
            issuer: issuer.to_string(),
            operator: op.sub.clone(),
        });
    }
    Ok(())
}

/// Checks the whole chain of `user` at `now`.
pub fn verify_user(
    operator: &OperatorJwt,
    account: &AccountJwt,
    user: &UserJwt,
    now: i64,
) -> Result<VerifiedChain, ChainError> {
    verify_account(operator, account, now)?;
    in_time("user", user, now)?;
    let strict = operator.claims().nats.strict_signing_key_usage;
    verify_user_issuer(account, user, strict)?;
    check_revocation(&account.claims().nats, user)?;
    Ok(VerifiedChain {
        operator: operator.subject().to_string(),
        account: account.subject().to_string(),
        user: user.subject().to_string(),
        user_signer: user.issuer().to_string(),
    })
}

/// Checks that `user` was signed by `account` (its identity key or a signing key).
pub fn verify_user_issuer(
    account: &AccountJwt,
    user: &UserJwt,
    strict: bool,
) -> Result<(), ChainError> {
    let account_key = account.subject();
    let issuer = user.issuer();
    let issuer_account = &user.claims().nats.issuer_account;
    if !issuer_account.is_empty() && issuer_account != account_key {
        return Err(ChainError::IssuerAccountMismatch {
            user: user.subject().to_string(),
            issuer_account: issuer_account.clone(),
            account: account_key.to_string(),
        });
    }
    if issuer == account_key {
        if strict {
            return Err(ChainError::IssuerNotSigningKey {
                issuer: issuer.to_string(),
                subject: format!("user {}", user.subject()),
            });
        }
        return Ok(());
    }
    if account.claims().nats.has_signing_key(issuer) && issuer_account == account_key {
        return Ok(());
    }
    if account.claims().nats.has_signing_key(issuer) {
        // Signed by our signing key but without issuer_account: nats-server cannot place it.
        return Err(ChainError::IssuerAccountMismatch {
            user: user.subject().to_string(),
            issuer_account: String::new(),
            account: account_key.to_string(),
        });
    }
    Err(ChainError::UserNotIssuedByAccount {
        user: user.subject().to_string(),
        issuer: issuer.to_string(),
        account: account_key.to_string(),
    })
}

/// Refuses a user whose JWT the account revoked (nats-io/jwt `IsClaimRevoked`).
pub fn check_revocation(account: &AccountNats, user: &UserJwt) -> Result<(), ChainError> {
    match account.revoked_at(user.subject(), user.claims().iat) {
        Some(at) => Err(ChainError::Revoked {
            user: user.subject().to_string(),
            at,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use nkeys::KeyPair;

    use super::*;
    use crate::identity::claims::{Claims, OperatorNats, SigningKey, UserNats};
    use crate::identity::jwt::encode;

    const NOW: i64 = 1_800_000_000;

    struct World {
        op: KeyPair,
        op_signer: KeyPair,
        acc: KeyPair,
        acc_signer: KeyPair,
        operator: OperatorJwt,
        account: AccountJwt,
    }

    fn world(strict: bool) -> World {
        let op = KeyPair::new_operator();
        let op_signer = KeyPair::new_operator();
        let acc = KeyPair::new_account();
        let acc_signer = KeyPair::new_account();
        let operator = encode(
            Claims {
                sub: op.public_key(),
                iat: NOW,
                nats: OperatorNats {
                    signing_keys: vec![op_signer.public_key()],
                    strict_signing_key_usage: strict,
                    ..OperatorNats::default()
                },
                ..Claims::default()
            },
            &op,
        )
        .unwrap();
        let account = encode(
            Claims {
                sub: acc.public_key(),
                iat: NOW,
                nats: AccountNats {
                    signing_keys: vec![SigningKey::Key(acc_signer.public_key())],
                    ..AccountNats::default()
                },
                ..Claims::default()
            },
            &op_signer,
        )
        .unwrap();
        World {
            op,
            op_signer,
            acc,
            acc_signer,
            operator,
            account,
        }
    }

    fn user(signer: &KeyPair, issuer_account: &str) -> UserJwt {
        let nats = UserNats {
            issuer_account: issuer_account.to_string(),
            ..UserNats::default()
        };
        encode(
            Claims {
                sub: KeyPair::new_user().public_key(),
                iat: NOW,
                exp: NOW + 60,
                nats,
                ..Claims::default()
            },
            signer,
        )
        .unwrap()
    }

    #[test]
    fn a_user_signed_by_the_account_signing_key_verifies() {
        let w = world(true);
        let u = user(&w.acc_signer, &w.acc.public_key());
        let chain = verify_user(&w.operator, &w.account, &u, NOW).unwrap();
        assert_eq!(chain.account, w.acc.public_key());
        assert_eq!(chain.user_signer, w.acc_signer.public_key());
    }

    #[test]
    fn strict_operators_refuse_identity_key_signatures() {
        let w = world(true);
        let u = user(&w.acc, "");
        assert!(matches!(
            verify_user(&w.operator, &w.account, &u, NOW),
            Err(ChainError::IssuerNotSigningKey { .. })
        ));
        let relaxed = world(false);
        let u = user(&relaxed.acc, "");
        assert!(verify_user(&relaxed.operator, &relaxed.account, &u, NOW).is_ok());
    }

    #[test]
    fn strict_operators_refuse_accounts_signed_by_the_operator_identity() {
        let w = world(true);
        let account = encode(w.account.claims().clone(), &w.op).unwrap();
        assert!(matches!(
            verify_account(&w.operator, &account, NOW),
            Err(ChainError::IssuerNotSigningKey { .. })
        ));
        assert!(verify_account(&w.operator, &w.account, NOW).is_ok());
        let _ = &w.op_signer;
    }

    #[test]
    fn foreign_keys_are_refused() {
        let w = world(true);
        let foreign = world(true);
        let u = user(&foreign.acc_signer, &w.acc.public_key());
        assert!(matches!(
            verify_user(&w.operator, &w.account, &u, NOW),
            Err(ChainError::UserNotIssuedByAccount { .. })
        ));
        assert!(matches!(
            verify_account(&w.operator, &foreign.account, NOW),
            Err(ChainError::AccountNotIssuedByOperator { .. })
        ));
        let u = user(&w.acc_signer, &foreign.acc.public_key());
        assert!(matches!(
            verify_user(&w.operator, &w.account, &u, NOW),
            Err(ChainError::IssuerAccountMismatch { .. })
        ));
        let u = user(&w.acc_signer, "");
        assert!(matches!(
            verify_user(&w.operator, &w.account, &u, NOW),
            Err(ChainError::IssuerAccountMismatch { .. })
        ));
    }

    #[test]
    fn expired_links_and_revocations_are_refused() {
        let w = world(true);
        let u = user(&w.acc_signer, &w.acc.public_key());
        assert!(matches!(
            verify_user(&w.operator, &w.account, &u, NOW + 61),
            Err(ChainError::Time { link: "user", .. })
        ));
        let mut claims = w.account.claims().clone();
        claims.nats.revocations.insert(u.subject().to_string(), NOW);
        let revoking = encode(claims, &w.op_signer).unwrap();
        assert_eq!(
            verify_user(&w.operator, &revoking, &u, NOW).unwrap_err(),
            ChainError::Revoked {
                user: u.subject().to_string(),
                at: NOW
            }
        );
    }
}
