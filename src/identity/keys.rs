//! nkey roles and the few key operations the identity core needs.
//!
//! NATS public keys are base32 strings whose first letter names the role (O operator, A account,
//! U user, N server, X curve). A JWT is only meaningful when each key plays the role its position
//! demands, so every key that enters the core is classified here first.

use std::fmt;

use nkeys::KeyPair;

/// A user's public key (`U…`), checked when made: a peel's, the master's, an admin's or one of
/// zester's own users'. Compares and hashes as its text, so maps keyed by it are looked up
/// with a `&str`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct UserKey(String);

impl UserKey {
    /// Checks that `key` is a user's public key.
    pub fn parse(key: &str) -> Result<UserKey, KeyError> {
        expect_role(key, &[KeyRole::User])?;
        Ok(UserKey(key.to_string()))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserKey {
    type Error = KeyError;
    fn try_from(key: String) -> Result<UserKey, KeyError> {
        expect_role(&key, &[KeyRole::User])?;
        Ok(UserKey(key))
    }
}

impl<'de> serde::Deserialize<'de> for UserKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<UserKey, D::Error> {
        UserKey::try_from(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl std::borrow::Borrow<str> for UserKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A nats-server's id (its `N…` public key, as the server reports it in authorization
/// requests and events): the half of a connection's address that kicks need. Cheap to clone
/// (every session on a server shares one copy); compares and hashes as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ServerId(std::sync::Arc<str>);

impl ServerId {
    /// The id as the server gave it (not checked: servers are trusted to name themselves, and
    /// the id is only ever used to address that server).
    pub fn new(id: &str) -> ServerId {
        ServerId(std::sync::Arc::from(id))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when both are the same shared copy (not just equal).
    pub fn is_same_copy(&self, other: &ServerId) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }

    /// How many copies of this id are held (the session table drops ids only it holds).
    pub fn holders(&self) -> usize {
        std::sync::Arc::strong_count(&self.0)
    }
}

impl std::borrow::Borrow<str> for ServerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The role a NATS public key plays, read from its prefix letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRole {
    /// `O…`: the root of trust.
    Operator,
    /// `A…`: an account (or an account signing key).
    Account,
    /// `U…`: a user, i.e. a peel, the master, an admin or a service user.
    User,
    /// `N…`: a nats-server (signs authorization requests).
    Server,
    /// `X…`: a curve (x25519) key used for sealing.
    Curve,
}

impl KeyRole {
    /// The role name as NATS tools print it.
    pub fn name(self) -> &'static str {
        match self {
            KeyRole::Operator => "operator",
            KeyRole::Account => "account",
            KeyRole::User => "user",
            KeyRole::Server => "server",
            KeyRole::Curve => "curve",
        }
    }

    /// The prefix letter of public keys of this role.
    pub fn prefix(self) -> char {
        match self {
            KeyRole::Operator => 'O',
            KeyRole::Account => 'A',
            KeyRole::User => 'U',
            KeyRole::Server => 'N',
            KeyRole::Curve => 'X',
        }
    }

    fn from_type(kind: nkeys::KeyPairType) -> Option<KeyRole> {
        match kind {
            nkeys::KeyPairType::Operator => Some(KeyRole::Operator),
            nkeys::KeyPairType::Account => Some(KeyRole::Account),
            nkeys::KeyPairType::User => Some(KeyRole::User),
            nkeys::KeyPairType::Server => Some(KeyRole::Server),
            nkeys::KeyPairType::Curve => Some(KeyRole::Curve),
            _ => None,
        }
    }
}

impl fmt::Display for KeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What can be wrong with a key handed to the core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not a NATS public key at all (bad base32, bad checksum, unknown prefix).
    #[error("{key:?} is not a valid NATS public key (bad encoding or checksum)")]
    InvalidPublicKey {
        /// The offending text, shortened.
        key: String,
    },
    /// A valid key, but of the wrong role for where it was used.
    #[error("{key} is a {found} key, but {expected} key is needed here")]
    WrongRole {
        /// The key.
        key: String,
        /// Its role.
        found: KeyRole,
        /// The role(s) that would have been accepted, as text.
        expected: String,
    },
    /// Not a valid nkey seed. The seed itself is never echoed.
    #[error("not a valid nkey seed (bad encoding or checksum)")]
    InvalidSeed,
    /// A signature that does not verify.
    #[error("signature does not verify with key {key}")]
    BadSignature {
        /// The key the signature was checked against.
        key: String,
    },
}

/// Shortens untrusted text for error messages so a huge input cannot flood a log line.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// Classifies a public key by its prefix after checking its encoding and checksum.
pub fn role_of(public_key: &str) -> Result<KeyRole, KeyError> {
    let invalid = || KeyError::InvalidPublicKey {
        key: shorten(public_key),
    };
    if public_key.starts_with('X') {
        // Curve keys are not signing keys; nkeys only parses them through XKey.
        return nkeys::XKey::from_public_key(public_key)
            .map(|_| KeyRole::Curve)
            .map_err(|_| invalid());
    }
    let pair = KeyPair::from_public_key(public_key).map_err(|_| invalid())?;
    KeyRole::from_type(pair.key_pair_type()).ok_or_else(invalid)
}

/// Checks that `public_key` is valid and of one of the `allowed` roles.
pub fn expect_role(public_key: &str, allowed: &[KeyRole]) -> Result<KeyRole, KeyError> {
    let role = role_of(public_key)?;
    if allowed.contains(&role) {
        Ok(role)
    } else {
        Err(KeyError::WrongRole {
            key: public_key.to_string(),
            found: role,
            expected: roles_text(allowed),
        })
    }
}

/// "an operator", "an account or an operator"…, for messages.
pub(crate) fn roles_text(roles: &[KeyRole]) -> String {
    let names: Vec<String> = roles
        .iter()
        .map(|r| {
            let n = r.name();
            if n.starts_with(['a', 'e', 'i', 'o', 'u']) {
                format!("an {n}")
            } else {
                format!("a {n}")
            }
        })
        .collect();
    names.join(" or ")
}

/// Verifies an Ed25519 signature by the holder of `public_key`.
pub fn verify(public_key: &str, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
    let pair = KeyPair::from_public_key(public_key).map_err(|_| KeyError::InvalidPublicKey {
        key: shorten(public_key),
    })?;
    pair.verify(message, signature)
        .map_err(|_| KeyError::BadSignature {
            key: public_key.to_string(),
        })
}

/// Parses a seed (`S…`) into a key pair, checking its role.
pub fn pair_from_seed(seed: &str, allowed: &[KeyRole]) -> Result<KeyPair, KeyError> {
    let pair = KeyPair::from_seed(seed.trim()).map_err(|_| KeyError::InvalidSeed)?;
    let public = pair.public_key();
    expect_role(&public, allowed)?;
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_read_from_prefixes() {
        assert_eq!(
            role_of(&KeyPair::new_operator().public_key()),
            Ok(KeyRole::Operator)
        );
        assert_eq!(
            role_of(&KeyPair::new_account().public_key()),
            Ok(KeyRole::Account)
        );
        assert_eq!(
            role_of(&KeyPair::new_user().public_key()),
            Ok(KeyRole::User)
        );
        assert_eq!(
            role_of(&KeyPair::new_server().public_key()),
            Ok(KeyRole::Server)
        );
        assert_eq!(
            role_of(&nkeys::XKey::new().public_key()),
            Ok(KeyRole::Curve)
        );
    }

    #[test]
    fn a_flipped_character_breaks_the_checksum() {
        let key = KeyPair::new_user().public_key();
        let mut bytes = key.into_bytes();
        bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
        let broken = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            role_of(&broken),
            Err(KeyError::InvalidPublicKey { .. })
        ));
    }

    #[test]
    fn wrong_role_names_what_was_expected() {
        let key = KeyPair::new_user().public_key();
        let err = expect_role(&key, &[KeyRole::Account]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{key} is a user key, but an account key is needed here")
        );
    }

    #[test]
    fn signatures_verify_only_with_the_signing_key() {
        let pair = KeyPair::new_user();
        let sig = pair.sign(b"nonce").unwrap();
        assert!(verify(&pair.public_key(), b"nonce", &sig).is_ok());
        assert!(verify(&pair.public_key(), b"other", &sig).is_err());
        let other = KeyPair::new_user().public_key();
        assert!(matches!(
            verify(&other, b"nonce", &sig),
            Err(KeyError::BadSignature { .. })
        ));
    }

    #[test]
    fn seeds_are_checked_for_role() {
        let seed = KeyPair::new_account().seed().unwrap();
        assert!(pair_from_seed(&seed, &[KeyRole::Account]).is_ok());
        assert!(matches!(
            pair_from_seed(&seed, &[KeyRole::User]),
            Err(KeyError::WrongRole { .. })
        ));
        assert_eq!(
            pair_from_seed("SUAnotaseed", &[KeyRole::User]).unwrap_err(),
            KeyError::InvalidSeed
        );
    }
}
