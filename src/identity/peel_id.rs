//! Peel ids: the names peels are known by, and the subject tokens they become.
//!
//! An id ends up inside NATS subjects (`zester.cmd.<id>`) and file names (`<id>.creds`), so the
//! rule is strict: `^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`. Dots, wildcards, spaces and non-ASCII
//! look-alikes can never reach a subject. Ids starting with `_` are reserved for the master.

use std::fmt;

/// The longest id allowed.
pub const MAX_LEN: usize = 128;

/// The names zester's own users go by (their sessions, audit lines and kicks are filed under
/// them), so no peel may take one, in any case.
pub const SERVICE_NAMES: [&str; 6] = ["master", "admin", "callout", "sys", "service", "store"];

/// Why a text is not a peel id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeelIdError {
    /// Empty.
    #[error("peel id is empty")]
    Empty,
    /// Longer than [`MAX_LEN`].
    #[error("peel id is {len} characters long; at most {MAX_LEN} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Starts with `_`.
    #[error("peel id {id:?} starts with '_', which is reserved for the master and admins")]
    Reserved {
        /// The id.
        id: String,
    },
    /// The name of one of zester's own users.
    #[error("peel id {id:?} is the name of one of zester's own users ({}): pick another id", SERVICE_NAMES.join(", "))]
    ServiceName {
        /// The id.
        id: String,
    },
    /// Looks like an nkey: its inbox (`_INBOX.<id>`) would be an enrolling key's.
    #[error("peel id {id:?} has the shape of an nkey (56 characters starting with U), whose inbox belongs to enrolling keys: pick another id")]
    LooksLikeKey {
        /// The id (shortened).
        id: String,
    },
    /// Contains a character outside `A-Za-z0-9_-`, or starts with `-`.
    #[error("peel id {id:?} has {ch:?} at position {position}: use letters, digits, '_' and '-' only, starting with a letter or digit")]
    InvalidCharacter {
        /// The id (shortened).
        id: String,
        /// The offending character.
        ch: char,
        /// Its position (in characters).
        position: usize,
    },
}

/// A validated peel id. Only [`PeelId::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeelId(String);

impl PeelId {
    /// Validates `text` as a peel id.
    pub fn parse(text: &str) -> Result<PeelId, PeelIdError> {
        if text.is_empty() {
            return Err(PeelIdError::Empty);
        }
        if text.starts_with('_') {
            return Err(PeelIdError::Reserved {
                id: super::keys::shorten(text),
            });
        }
        for (position, ch) in text.chars().enumerate() {
            let allowed = ch.is_ascii_alphanumeric() || (position > 0 && (ch == '_' || ch == '-'));
            if !allowed {
                return Err(PeelIdError::InvalidCharacter {
                    id: super::keys::shorten(text),
                    ch,
                    position,
                });
            }
        }
        if text.len() > MAX_LEN {
            return Err(PeelIdError::TooLong { len: text.len() });
        }
        if SERVICE_NAMES
            .iter()
            .any(|name| name.eq_ignore_ascii_case(text))
        {
            return Err(PeelIdError::ServiceName {
                id: text.to_string(),
            });
        }
        if text.len() == 56 && text.starts_with('U') {
            return Err(PeelIdError::LooksLikeKey {
                id: super::keys::shorten(text),
            });
        }
        Ok(PeelId(text.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PeelId {
    type Err = PeelIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeelId::parse(s)
    }
}

/// `*` (any run) and `?` (one character) glob matching on peel ids.
pub fn glob_matches(pattern: &str, id: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), id.as_bytes())
}

/// True when `text` is a glob rather than one id.
pub fn is_glob(text: &str) -> bool {
    text.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_shape() {
        for ok in ["a", "web-01", "db_2", "A9", &"x".repeat(MAX_LEN)] {
            assert_eq!(PeelId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_everything_else_with_a_reason() {
        assert_eq!(PeelId::parse(""), Err(PeelIdError::Empty));
        assert!(matches!(
            PeelId::parse("_master"),
            Err(PeelIdError::Reserved { .. })
        ));
        for name in ["master", "Admin", "callout", "sys", "service", "STORE"] {
            assert!(
                matches!(PeelId::parse(name), Err(PeelIdError::ServiceName { .. })),
                "{name}"
            );
        }
        let nkey = format!("U{}", "A".repeat(55));
        assert!(matches!(
            PeelId::parse(&nkey),
            Err(PeelIdError::LooksLikeKey { .. })
        ));
        assert!(PeelId::parse(&format!("u{}", "a".repeat(55))).is_ok());
        assert!(matches!(
            PeelId::parse(&"x".repeat(MAX_LEN + 1)),
            Err(PeelIdError::TooLong { .. })
        ));
        for bad in [
            "a.b",
            "*",
            ">",
            "-a",
            "a b",
            "pe\u{0435}l",
            "a/b",
            "a\n",
            "a$",
        ] {
            assert!(
                matches!(
                    PeelId::parse(bad),
                    Err(PeelIdError::InvalidCharacter { .. })
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn globs() {
        assert!(glob_matches("web-*", "web-01"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("db-0?", "db-07"));
        assert!(!glob_matches("db-0?", "db-10"));
        assert!(!glob_matches("web-*", "db-01"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(is_glob("web-*") && !is_glob("web-01"));
    }
}
