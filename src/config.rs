//! `zester.toml`: the typed configuration, its defaults and its validation.
//!
//! The documented default file is `config/zester.toml` (embedded in the binary and copied by
//! `zester init`); its values and the `Default` impls here are kept equal by a test. Parsing is
//! pure (text in, config or error out) so the file's path is added by `home`.

use serde::Deserialize;

use crate::identity::time::{parse_duration, DurationError};

/// The documented default configuration file.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/zester.toml");

/// What is wrong with a configuration text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// A duration key that does not parse.
    #[error("{key}: {source}")]
    Duration {
        /// The key.
        key: &'static str,
        /// The problem.
        source: DurationError,
    },
    /// An address that is not HOST:PORT.
    #[error("{key} = {value:?} is not HOST:PORT (e.g. \"127.0.0.1:4222\")")]
    Address {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// An unknown accept policy.
    #[error("keys.accept = {value:?}: use \"manual\", \"auto-trusted\" or \"auto-all\"")]
    AcceptPolicy {
        /// The value.
        value: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[peels]`.
    pub peels: PeelsConfig,
    /// `[keys]`.
    pub keys: KeysConfig,
}

/// `[server]`: where nats-server listens and which binary runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Client listen address.
    pub listen: String,
    /// Monitoring listen address.
    pub monitor: String,
    /// Extra TLS certificate names.
    pub tls_names: Vec<String>,
    /// nats-server binary path ("" = search).
    pub nats_server: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:4222".to_string(),
            monitor: "127.0.0.1:8222".to_string(),
            tls_names: Vec::new(),
            nats_server: String::new(),
        }
    }
}

/// `[peels]`: lifetimes of peel JWTs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeelsConfig {
    /// Identity JWT lifetime.
    pub expiry: String,
    /// Session JWT lifetime ("0" = as long as the identity JWT).
    pub session_ttl: String,
}

impl Default for PeelsConfig {
    fn default() -> Self {
        PeelsConfig {
            expiry: "180d".to_string(),
            session_ttl: "0".to_string(),
        }
    }
}

/// How enrolling keys are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptPolicy {
    /// An admin accepts each key.
    Manual,
    /// Ids matching the trusted globs are accepted.
    AutoTrusted,
    /// Everything is accepted (labs).
    AutoAll,
}

/// `[keys]`: the accept policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// "manual", "auto-trusted" or "auto-all".
    pub accept: String,
    /// Globs for "auto-trusted".
    pub trusted: Vec<String>,
    /// Most pending keys.
    pub max_pending: u32,
    /// Most enrolment connections per client address and minute.
    pub enrol_rate: u32,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            accept: "manual".to_string(),
            trusted: Vec::new(),
            max_pending: 1000,
            enrol_rate: 10,
        }
    }
}

impl Config {
    /// Parses and validates a configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax(e.to_string().trim().to_string()))?;
        config.peel_expiry()?;
        config.session_ttl()?;
        config.accept_policy()?;
        for (key, value) in [
            ("server.listen", &config.server.listen),
            ("server.monitor", &config.server.monitor),
        ] {
            check_address(key, value)?;
        }
        Ok(config)
    }

    /// Peel identity JWT lifetime in seconds (0 = never expires).
    pub fn peel_expiry(&self) -> Result<i64, ConfigError> {
        parse_duration(&self.peels.expiry).map_err(|source| ConfigError::Duration {
            key: "peels.expiry",
            source,
        })
    }

    /// Session JWT lifetime in seconds (0 = as long as the identity JWT).
    pub fn session_ttl(&self) -> Result<i64, ConfigError> {
        parse_duration(&self.peels.session_ttl).map_err(|source| ConfigError::Duration {
            key: "peels.session_ttl",
            source,
        })
    }

    /// The accept policy.
    pub fn accept_policy(&self) -> Result<AcceptPolicy, ConfigError> {
        match self.keys.accept.as_str() {
            "manual" => Ok(AcceptPolicy::Manual),
            "auto-trusted" => Ok(AcceptPolicy::AutoTrusted),
            "auto-all" => Ok(AcceptPolicy::AutoAll),
            other => Err(ConfigError::AcceptPolicy {
                value: other.to_string(),
            }),
        }
    }
}

/// Checks HOST:PORT (IPv6 hosts in brackets).
pub fn check_address(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::Address {
        key,
        value: value.to_string(),
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let host_ok =
        !host.is_empty() && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    if !host_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_file_equals_the_defaults() {
        assert_eq!(
            Config::parse(DEFAULT_CONFIG_TOML).unwrap(),
            Config::default()
        );
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::parse("[server]\nlisten = \"4222\"\n").unwrap_err();
        assert!(err.to_string().contains("server.listen"), "{err}");
        let err = Config::parse("[peels]\nexpiry = \"forever\"\n").unwrap_err();
        assert!(err.to_string().contains("peels.expiry"), "{err}");
        let err = Config::parse("[keys]\naccept = \"yes\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::AcceptPolicy { .. }));
        let err = Config::parse("[server]\nlisten_on = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");
        assert!(Config::parse("[server\n").is_err());
        assert!(Config::parse("[server]\nlisten = \"[::1]:4222\"\n").is_ok());
    }
}
