//! The `.creds` file format: a user JWT and its nkey seed, decorated as nats-io/jwt writes them.
//!
//! Reading is as tolerant as nats.go (`jwt.ParseDecoratedJWT` / `ParseDecoratedNKey`): any
//! text around the blocks, CRLF line ends, fences of any length and a missing closing fence are
//! fine. What is actually broken — no JWT, no seed, a seed that is not a user seed, a JWT that
//! does not verify, or a seed that does not belong to the JWT — is refused with its own error.
//! This module is pure; `home` reads and writes the files.

use nkeys::KeyPair;

use super::jwt::{self, JwtError, UserJwt};
use super::keys::{self, KeyError, KeyRole};

/// Why a creds text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredsError {
    /// No JWT block and no bare JWT.
    #[error("no user JWT found: expected a '-----BEGIN NATS USER JWT-----' block")]
    NoJwt,
    /// No seed block and no line holding a seed.
    #[error("no nkey seed found: expected a '-----BEGIN USER NKEY SEED-----' block")]
    NoSeed,
    /// The JWT does not decode or verify.
    #[error("the user JWT is not valid: {0}")]
    Jwt(JwtError),
    /// The seed is malformed or not a user seed.
    #[error("the nkey seed is not usable: {0}")]
    Seed(KeyError),
    /// The seed's public key is not the JWT's subject.
    #[error("the seed belongs to {seed_key}, but the JWT was issued to {jwt_subject}: these creds were put together from two identities")]
    SeedDoesNotMatch {
        /// Public key of the seed.
        seed_key: String,
        /// `sub` of the JWT.
        jwt_subject: String,
    },
}

/// A parsed, internally consistent `.creds`: a signature-verified user JWT and the seed of its
/// subject. Expiry is not checked here (an expired creds is still readable, e.g. to inspect it).
#[derive(Debug)]
pub struct Creds {
    jwt: UserJwt,
    key: KeyPair,
}

impl Creds {
    /// Parses creds text (see the module documentation for what is tolerated).
    pub fn parse(text: &str) -> Result<Creds, CredsError> {
        let blocks = decorated_blocks(text);
        let jwt_text = match blocks.first() {
            Some(first) => first.as_str(),
            None => bare_jwt(text).ok_or(CredsError::NoJwt)?,
        };
        let seed_text = match blocks.get(1) {
            Some(second) => second.as_str(),
            None => bare_seed(text).ok_or(CredsError::NoSeed)?,
        };
        let jwt = jwt::decode_ignoring_time(jwt_text).map_err(CredsError::Jwt)?;
        let key = keys::pair_from_seed(seed_text, &[KeyRole::User]).map_err(CredsError::Seed)?;
        Creds::new(jwt, key)
    }

    /// Pairs an already-verified JWT with its key, checking they belong together.
    pub fn new(jwt: UserJwt, key: KeyPair) -> Result<Creds, CredsError> {
        let seed_key = key.public_key();
        if seed_key != jwt.subject() {
            return Err(CredsError::SeedDoesNotMatch {
                seed_key,
                jwt_subject: jwt.subject().to_string(),
            });
        }
        Ok(Creds { jwt, key })
    }

    /// The verified user JWT.
    pub fn jwt(&self) -> &UserJwt {
        &self.jwt
    }

    /// The user's key pair (holds the seed: never print it).
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The decorated text, exactly as nats-io/jwt `FormatUserConfig` writes it.
    pub fn to_text(&self) -> String {
        // A KeyPair made from a seed always has its seed.
        let seed = self.key.seed().unwrap_or_default();
        format_creds(self.jwt.token(), &seed)
    }
}

/// Formats a JWT and a user seed as a decorated `.creds` text.
pub fn format_creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// Decorates any JWT the way nats-io/jwt `DecorateJWT` does (for `.jwt` files people read).
pub fn decorate_jwt(kind: &str, jwt: &str) -> String {
    let kind = kind.to_ascii_uppercase();
    format!("-----BEGIN NATS {kind} JWT-----\n{jwt}\n------END NATS {kind} JWT------\n")
}

fn is_fence(line: &str) -> bool {
    let line = line.trim();
    line.len() >= 6 && line.starts_with("---") && line.ends_with("---")
}

fn is_token(line: &str) -> bool {
    !line.is_empty()
        && line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'='))
}

/// The values of `---fence---` / value / `---fence---` blocks, in order. As in nats.go, a
/// value is one line of `[\w\-.=]+` right after a fence; the closing fence may be missing.
fn decorated_blocks(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut values = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if is_fence(lines[i]) {
            if let Some(value) = lines.get(i + 1).map(|l| l.trim()).filter(|l| is_token(l)) {
                values.push(value.to_string());
                i += 2;
                if lines.get(i).is_some_and(|l| is_fence(l)) {
                    i += 1;
                }
                continue;
            }
        }
        i += 1;
    }
    values
}

/// A file holding just a JWT.
fn bare_jwt(text: &str) -> Option<&str> {
    let trimmed = text.trim();
    (trimmed.matches('.').count() == 2 && is_token(trimmed)).then_some(trimmed)
}

/// nats.go's fallback: the first line that starts with a seed prefix.
fn bare_seed(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU") || l.starts_with("SA") || l.starts_with("SO"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::claims::{Claims, UserNats};

    fn make() -> (String, KeyPair, String) {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let claims = Claims {
            sub: user.public_key(),
            iat: 1,
            nats: UserNats::default(),
            ..Claims::default()
        };
        let jwt = jwt::encode(claims, &account).unwrap();
        let seed = user.seed().unwrap();
        (
            format_creds(jwt.token(), &seed),
            user,
            jwt.token().to_string(),
        )
    }

    #[test]
    fn round_trip() {
        let (text, user, token) = make();
        let creds = Creds::parse(&text).unwrap();
        assert_eq!(creds.jwt().token(), token);
        assert_eq!(creds.key().public_key(), user.public_key());
        assert_eq!(creds.to_text(), text);
    }

    #[test]
    fn tolerates_crlf_extra_text_and_missing_trailer() {
        let (text, user, _) = make();
        let crlf = text.replace('\n', "\r\n");
        assert_eq!(
            Creds::parse(&crlf).unwrap().key().public_key(),
            user.public_key()
        );
        let noisy = format!("# issued for web-01\n\n{text}\ntrailing words\n");
        assert!(Creds::parse(&noisy).is_ok());
        let cut = text
            .split("------END USER NKEY SEED------")
            .next()
            .unwrap()
            .trim_end();
        assert!(
            Creds::parse(cut).is_ok(),
            "closing fence of the seed is optional"
        );
        let short_fences = text.replace("-----BEGIN NATS USER JWT-----", "---JWT---");
        assert!(Creds::parse(&short_fences).is_ok());
    }

    #[test]
    fn broken_creds_say_what_is_broken() {
        let (text, _, token) = make();
        assert_eq!(Creds::parse("").unwrap_err(), CredsError::NoJwt);
        assert_eq!(Creds::parse(&token).unwrap_err(), CredsError::NoSeed);
        let other_seed = KeyPair::new_user().seed().unwrap();
        let seed = text.lines().find(|l| l.starts_with("SU")).unwrap();
        assert!(matches!(
            Creds::parse(&text.replace(seed, &other_seed)),
            Err(CredsError::SeedDoesNotMatch { .. })
        ));
        let account_seed = KeyPair::new_account().seed().unwrap();
        assert!(matches!(
            Creds::parse(&text.replace(seed, &account_seed)),
            Err(CredsError::Seed(KeyError::WrongRole { .. }))
        ));
        let truncated_jwt = text.replace(&token, &token[..token.len() - 3]);
        assert!(matches!(
            Creds::parse(&truncated_jwt),
            Err(CredsError::Jwt(_))
        ));
        assert!(matches!(
            Creds::parse(&text.replace(seed, "SUNOTASEED")),
            Err(CredsError::Seed(KeyError::InvalidSeed))
        ));
    }

    #[test]
    fn errors_never_contain_the_seed() {
        let (text, _, _) = make();
        let seed = text
            .lines()
            .find(|l| l.starts_with("SU"))
            .unwrap()
            .to_string();
        let broken = text.replace(&seed, &format!("{seed}X"));
        let message = Creds::parse(&broken).unwrap_err().to_string();
        assert!(!message.contains(&seed[..20]), "{message}");
    }
}
