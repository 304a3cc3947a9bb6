//! Join tokens (DESIGN §12), pure: what a token is, what is stored of it, how an enrolling
//! peel proves it holds one, and the rule that decides whether a use is allowed.
//!
//! A token is an id and an Ed25519 seed: `zjt1.<id>.<seed>`. The appliance keeps only the
//! public key (a one-way function of the seed, so a copy of the bucket enrols nobody) with the
//! token's limits. The peel never sends the seed: it signs `zester-join:<token id>:<its nkey>`
//! with it, inside its enrolment request (itself signed by the nkey), so what anyone sees of one
//! enrolment cannot enrol another key. Uses are taken by compare-and-set on the stored record.

use std::collections::BTreeMap;

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};

use crate::identity::keys::{self, KeyRole};

/// The prefix of every token's text (its version).
pub const TOKEN_PREFIX: &str = "zjt1";
/// Default number of uses.
pub const DEFAULT_USES: u32 = 1;
/// Default lifetime: one hour.
pub const DEFAULT_TTL_SECS: i64 = 3600;
/// Most tags on a token, and their longest key and value.
pub const MAX_TAGS: usize = 32;
/// Longest tag key or value.
pub const MAX_TAG_LEN: usize = 128;

/// What the appliance stores of a token (never its seed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's id (public, also the bucket key).
    pub id: String,
    /// The public key of its seed (`U…`): checks the peel's proof.
    pub key: String,
    /// Peel id glob it may enrol (`*` = any).
    pub ids: String,
    /// Uses left.
    pub uses_left: u32,
    /// Uses it was made with.
    pub uses: u32,
    /// When it stops working (unix seconds).
    pub expires_at: i64,
    /// Trusted tags given to every key it enrols.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// When it was made.
    pub created_at: i64,
    /// Who made it.
    pub created_by: String,
    /// Revoked by an admin.
    #[serde(default)]
    pub revoked: bool,
    /// The peels it enrolled, in order.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// A new token: its text (shown once) and its record.
#[derive(Debug)]
pub struct NewToken {
    /// `zjt1.<id>.<seed>`: the secret, printed once.
    pub text: String,
    /// What is stored.
    pub record: TokenRecord,
}

/// What a peel puts into its enrolment request to use a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenProof {
    /// The token's id.
    pub id: String,
    /// base64url signature by the token's seed of [`proof_message`].
    pub sig: String,
}

/// Why a token's text or use is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `zjt1.<id>.<seed>`.
    #[error("not a join token (zjt1.<id>.<secret>)")]
    Malformed,
    /// No token with that id.
    #[error("join token {id} is unknown")]
    Unknown {
        /// The id.
        id: String,
    },
    /// The proof does not verify with the token's key: not made with this token for this key.
    #[error("join token {id}: the proof is not for this key")]
    BadProof {
        /// The id.
        id: String,
    },
    /// Past its expiry.
    #[error("join token {id} expired")]
    Expired {
        /// The id.
        id: String,
    },
    /// Revoked by an admin.
    #[error("join token {id} was revoked")]
    Revoked {
        /// The id.
        id: String,
    },
    /// No uses left.
    #[error("join token {id} has no uses left")]
    Exhausted {
        /// The id.
        id: String,
    },
    /// The peel id is not one the token may enrol.
    #[error("join token {id} may enrol ids {ids:?}, not {peel:?}")]
    WrongId {
        /// The token.
        id: String,
        /// Its glob.
        ids: String,
        /// The id asked for.
        peel: String,
    },
}

impl TokenError {
    /// The audit code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::Unknown { .. } => "token_unknown",
            TokenError::BadProof { .. } => "token_bad_proof",
            TokenError::Expired { .. } => "token_expired",
            TokenError::Revoked { .. } => "token_revoked",
            TokenError::Exhausted { .. } => "token_exhausted",
            TokenError::WrongId { .. } => "token_wrong_id",
        }
    }
}

/// The message a token's seed signs for one enrolling key.
pub fn proof_message(token_id: &str, nkey: &str) -> Vec<u8> {
    format!("zester-join:{token_id}:{nkey}").into_bytes()
}

/// Makes a token. `id_bytes` and the key come from the caller's randomness (the key pair is
/// fresh); `ids`, `uses`, `ttl`, `tags` and `by` are the admin's.
pub fn new_token(
    id_bytes: [u8; 8],
    ids: &str,
    uses: u32,
    ttl: i64,
    tags: BTreeMap<String, String>,
    by: &str,
    now: i64,
) -> Result<NewToken, TokenError> {
    let id = data_encoding::HEXLOWER.encode(&id_bytes);
    let key = KeyPair::new_user();
    let seed = key.seed().map_err(|_| TokenError::Malformed)?;
    Ok(NewToken {
        text: format!("{TOKEN_PREFIX}.{id}.{seed}"),
        record: TokenRecord {
            id,
            key: key.public_key(),
            ids: ids.to_string(),
            uses_left: uses,
            uses,
            expires_at: now.saturating_add(ttl),
            tags,
            created_at: now,
            created_by: by.to_string(),
            revoked: false,
            used_by: Vec::new(),
        },
    })
}

/// The proof a peel holding token `text` sends when enrolling `nkey`.
pub fn prove(text: &str, nkey: &str) -> Result<TokenProof, TokenError> {
    let mut parts = text.trim().splitn(3, '.');
    let (Some(TOKEN_PREFIX), Some(id), Some(seed)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let key = keys::pair_from_seed(seed, &[KeyRole::User]).map_err(|_| TokenError::Malformed)?;
    let sig = key
        .sign(&proof_message(id, nkey))
        .map_err(|_| TokenError::Malformed)?;
    Ok(TokenProof {
        id: id.to_string(),
        sig: BASE64URL_NOPAD.encode(&sig),
    })
}

/// Whether `proof` lets `nkey` enrol as `peel` at `now` with the token `record`.
pub fn check_use(
    record: &TokenRecord,
    proof: &TokenProof,
    nkey: &str,
    peel: &str,
    now: i64,
) -> Result<(), TokenError> {
    let id = || record.id.clone();
    let sig = BASE64URL_NOPAD
        .decode(proof.sig.as_bytes())
        .map_err(|_| TokenError::BadProof { id: id() })?;
    keys::verify(&record.key, &proof_message(&record.id, nkey), &sig)
        .map_err(|_| TokenError::BadProof { id: id() })?;
    if record.revoked {
        return Err(TokenError::Revoked { id: id() });
    }
    if now >= record.expires_at {
        return Err(TokenError::Expired { id: id() });
    }
    if record.uses_left == 0 {
        return Err(TokenError::Exhausted { id: id() });
    }
    if !crate::identity::peel_id::glob_matches(&record.ids, peel) {
        return Err(TokenError::WrongId {
            id: id(),
            ids: record.ids.clone(),
            peel: peel.to_string(),
        });
    }
    Ok(())
}

/// The record after one use by `peel`.
pub fn used(record: &TokenRecord, peel: &str) -> TokenRecord {
    let mut next = record.clone();
    next.uses_left = next.uses_left.saturating_sub(1);
    next.used_by.push(peel.to_string());
    next
}

/// Checks `KEY=VALUE` tags: a key of letters, digits, `_`, `-`, `.`, `/`; printable values.
pub fn parse_tag(text: &str) -> Option<(String, String)> {
    let (key, value) = text.split_once('=')?;
    let key_ok = !key.is_empty()
        && key.len() <= MAX_TAG_LEN
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
    let value_ok = value.len() <= MAX_TAG_LEN && !value.chars().any(char::is_control);
    (key_ok && value_ok).then(|| (key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn token(uses: u32) -> NewToken {
        new_token([7; 8], "web-*", uses, 3600, BTreeMap::new(), "admin", NOW).unwrap()
    }

    #[test]
    fn a_proof_binds_the_token_to_one_key() {
        let t = token(1);
        assert!(t.text.starts_with("zjt1.0707070707070707.SU"));
        let alice = KeyPair::new_user().public_key();
        let proof = prove(&t.text, &alice).unwrap();
        assert_eq!(check_use(&t.record, &proof, &alice, "web-01", NOW), Ok(()));
        // What an eavesdropper saw (the proof for alice) does not work for another key.
        let mallory = KeyPair::new_user().public_key();
        assert_eq!(
            check_use(&t.record, &proof, &mallory, "web-01", NOW),
            Err(TokenError::BadProof {
                id: t.record.id.clone()
            })
        );
        // Nor does the stored record itself help: it holds no seed.
        let stored = serde_json::to_string(&t.record).unwrap();
        assert!(!stored.contains(t.text.rsplit('.').next().unwrap()));
    }

    #[test]
    fn limits_refuse_with_their_reason() {
        let t = token(1);
        let nkey = KeyPair::new_user().public_key();
        let proof = prove(&t.text, &nkey).unwrap();
        let code = |record: &TokenRecord, peel: &str, now: i64| {
            check_use(record, &proof, &nkey, peel, now)
                .err()
                .map(|e| e.code())
        };
        assert_eq!(code(&t.record, "web-01", NOW + 3600), Some("token_expired"));
        assert_eq!(code(&t.record, "db-01", NOW), Some("token_wrong_id"));
        let revoked = TokenRecord {
            revoked: true,
            ..t.record.clone()
        };
        assert_eq!(code(&revoked, "web-01", NOW), Some("token_revoked"));
        let spent = used(&t.record, "web-01");
        assert_eq!(spent.used_by, ["web-01"]);
        assert_eq!(code(&spent, "web-02", NOW), Some("token_exhausted"));
        assert_eq!(prove("zjt1.abc", &nkey), Err(TokenError::Malformed));
        assert_eq!(prove("nope", &nkey), Err(TokenError::Malformed));
    }

    #[test]
    fn tags_are_checked() {
        assert_eq!(parse_tag("role=web"), Some(("role".into(), "web".into())));
        assert_eq!(
            parse_tag("dc/zone=eu-1"),
            Some(("dc/zone".into(), "eu-1".into()))
        );
        assert_eq!(parse_tag("=x"), None);
        assert_eq!(parse_tag("a b=x"), None);
        assert_eq!(parse_tag("k=\u{1b}[31m"), None);
        assert_eq!(parse_tag("novalue"), None);
    }
}
