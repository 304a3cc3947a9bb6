//! Admin names: what a person's admin identity is called (`zester admin add alice`).
//!
//! A name ends up in file names (`<home>/admins/<name>.creds`), in the `name` of the user JWT,
//! in key history (`admin:<name>`) and in audit lines, so it follows the peel-id rule
//! (`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`) and may not be one of zester's own user names: a named
//! admin called `master` would read as the master in every log.

use std::fmt;

use super::peel_id::SERVICE_NAMES;

/// The longest admin name allowed.
pub const MAX_LEN: usize = 64;

/// Why a text is not an admin name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminNameError {
    /// Empty.
    #[error("admin name is empty")]
    Empty,
    /// Longer than [`MAX_LEN`].
    #[error("admin name is {len} characters long; at most {MAX_LEN} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside `A-Za-z0-9_-`, or a first character that is not a letter or digit.
    #[error("admin name {name:?} has {ch:?} at position {position}: use letters, digits, '_' and '-' only, starting with a letter or digit")]
    InvalidCharacter {
        /// The name (shortened).
        name: String,
        /// The offending character.
        ch: char,
        /// Its position (in characters).
        position: usize,
    },
    /// The name of one of zester's own users.
    #[error("admin name {name:?} is the name of one of zester's own users ({}): pick another", SERVICE_NAMES.join(", "))]
    ServiceName {
        /// The name.
        name: String,
    },
}

/// A validated admin name. Only [`AdminName::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct AdminName(String);

impl AdminName {
    /// Validates `text` as an admin name.
    pub fn parse(text: &str) -> Result<AdminName, AdminNameError> {
        if text.is_empty() {
            return Err(AdminNameError::Empty);
        }
        for (position, ch) in text.chars().enumerate() {
            let allowed = ch.is_ascii_alphanumeric() || (position > 0 && (ch == '_' || ch == '-'));
            if !allowed {
                return Err(AdminNameError::InvalidCharacter {
                    name: super::keys::shorten(text),
                    ch,
                    position,
                });
            }
        }
        if text.len() > MAX_LEN {
            return Err(AdminNameError::TooLong { len: text.len() });
        }
        if SERVICE_NAMES.iter().any(|n| n.eq_ignore_ascii_case(text)) {
            return Err(AdminNameError::ServiceName {
                name: text.to_string(),
            });
        }
        Ok(AdminName(text.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How the appliance files and records this admin: `admin:<name>`.
    pub fn identity(&self) -> String {
        format!("admin:{}", self.0)
    }
}

impl fmt::Display for AdminName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for AdminName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AdminName, D::Error> {
        let text = String::deserialize(d)?;
        AdminName::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_peel_id_rule_and_refuse_service_names() {
        for good in ["alice", "Bob-2", "ops_team", "a"] {
            assert_eq!(AdminName::parse(good).unwrap().as_str(), good);
        }
        assert_eq!(AdminName::parse(""), Err(AdminNameError::Empty));
        for bad in ["-x", "_x", "a.b", "a b", "a*", "a>", "ä", "../x"] {
            assert!(
                matches!(
                    AdminName::parse(bad),
                    Err(AdminNameError::InvalidCharacter { .. })
                ),
                "{bad:?}"
            );
        }
        for service in ["master", "ADMIN", "Callout", "sys", "service", "store"] {
            assert!(
                matches!(
                    AdminName::parse(service),
                    Err(AdminNameError::ServiceName { .. })
                ),
                "{service}"
            );
        }
        assert!(matches!(
            AdminName::parse(&"a".repeat(65)),
            Err(AdminNameError::TooLong { len: 65 })
        ));
        assert_eq!(AdminName::parse("alice").unwrap().identity(), "admin:alice");
        assert!(serde_json::from_str::<AdminName>("\"sys\"").is_err());
    }
}
