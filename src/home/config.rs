//! `zester.toml`: the typed configuration, its defaults and its validation.
//!
//! The documented default file is `config/zester.toml` (embedded in the binary and copied by
//! `zester init`); its values and the `Default` impls here are kept equal by a test. Parsing is
//! pure (text in, config or error out) so the file's path is added by `home`.

use std::fmt;

use serde::Deserialize;

use crate::identity::time::{parse_duration, DurationError};

/// The documented default configuration file.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/zester.toml");

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
    /// A size key (`jetstream.max_memory`, `jetstream.max_file`) that does not parse.
    #[error(
        "{key} = {value}: {source}; write a whole number of bytes or a number and a unit \
         (B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB, all powers of 1024), \
         e.g. \"256MiB\", \"8GiB\" or 268435456"
    )]
    Size {
        /// The key.
        key: &'static str,
        /// The value as written.
        value: SizeSetting,
        /// The problem.
        source: SizeError,
    },
    /// A lifetime that must not be "never".
    #[error("{key} = \"0\": a certificate always expires; give a lifetime such as \"825d\"")]
    NeverExpires {
        /// The key.
        key: &'static str,
    },
    /// `audit.on_overflow` other than "drop" or "refuse".
    #[error("audit.on_overflow = {0}")]
    Overflow(String),
    /// `audit.queue = 0`.
    #[error("audit.queue = 0: at least one record must be able to wait for the writer")]
    EmptyQueue,
    /// `keys.accept = "hook"` without `keys.hook`.
    #[error("keys.accept = \"hook\" needs keys.hook = \"/path/to/executable\" (it gets the enrolment request as JSON on stdin; exit 0 accepts, 1 rejects)")]
    NoHook,
    /// A node or cluster name nats-server or zester cannot use.
    #[error("{key} = {value:?}: a name is 1 to 64 letters, digits, '-', '_' or '.' (no spaces), e.g. \"node-a\"")]
    Name {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// `cluster.routes` without `cluster.listen`.
    #[error("cluster.routes is set but cluster.listen is empty: a node in a cluster listens for routes too; set cluster.listen = \"HOST:PORT\" (e.g. \"0.0.0.0:6222\") or pass --cluster-listen")]
    RoutesWithoutListen,
    /// An unknown accept policy.
    #[error("keys.accept = {value:?}: use \"manual\", \"auto-trusted\", \"auto-all\" or \"hook\"")]
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
    /// `[jetstream]`.
    pub jetstream: JetStreamConfig,
    /// `[service]`.
    pub service: ServiceConfig,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[node]`.
    pub node: NodeConfig,
    /// `[cluster]`.
    pub cluster: ClusterConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
}

/// `[node]`: this node among the nodes of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name, nats-server's `server_name`: unique in the cluster and stable across
    /// restarts (JetStream's Raft groups know their peers by it). Empty: `zester` on a single
    /// node, the machine's host name in a cluster.
    pub name: String,
}

/// `[cluster]`: nats-server routes to the other nodes, over mutual TLS with the zester CA.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name; the same on every node.
    pub name: String,
    /// Where this node listens for routes from the other nodes, `HOST:PORT`; empty = a single
    /// node (no cluster).
    pub listen: String,
    /// The other nodes' route addresses, `HOST:PORT` each.
    pub routes: Vec<String>,
}

/// The default of `cluster.name`.
pub const DEFAULT_CLUSTER_NAME: &str = "zester";
/// The name of a node that is not in a cluster (and of one whose host name gives none): its
/// `server_name`, and the `node` of its audit records and audit subject `zester.audit.<node>`.
pub const DEFAULT_NODE_NAME: &str = "zester";

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: DEFAULT_CLUSTER_NAME.to_string(),
            listen: String::new(),
            routes: Vec::new(),
        }
    }
}

pub use crate::wire::node::{valid_name, MAX_NAME_LEN};

/// The node name a host name gives: its first label, with anything [`valid_name`] refuses
/// replaced by `-`; `zester` when nothing is left.
pub fn node_name_from_host(hostname: &str) -> String {
    let label = hostname.split('.').next().unwrap_or_default();
    let name: String = label
        .chars()
        .take(MAX_NAME_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.trim_matches('-').is_empty() {
        DEFAULT_NODE_NAME.to_string()
    } else {
        name
    }
}

/// `[metrics]`: the Prometheus endpoint (`/metrics`), off unless `listen` is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served: HOST:PORT, or a bare PORT for 127.0.0.1:PORT. Absent or
    /// empty: no metrics listener.
    pub listen: Option<String>,
}

/// `[audit]`: how `audit.log` is kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The most bytes one `audit.log` file holds before it is rotated.
    pub max_file_bytes: SizeSetting,
    /// How many rotated files (`audit.log.1` …) are kept.
    pub keep: u32,
    /// How long the `zester-audit` stream keeps a record ("0": until `max_bytes`).
    pub max_age: String,
    /// The most bytes the `zester-audit` stream holds (oldest records go first).
    pub max_bytes: SizeSetting,
    /// How many records may wait for the writer.
    pub queue: usize,
    /// "drop" or "refuse": what the callout does while records cannot be written.
    pub on_overflow: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_file_bytes: SizeSetting::Text("64MiB".to_string()),
            keep: 5,
            max_age: "90d".to_string(),
            max_bytes: SizeSetting::Text("1GiB".to_string()),
            queue: 8192,
            on_overflow: "drop".to_string(),
        }
    }
}

/// `[service]`: zester's own users (master, admin, callout, sys).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Lifetime of their JWTs; `zester up` re-issues them at 2/3 of it ("0" = never expire).
    pub expiry: String,
}

/// The default of `service.expiry`.
pub const DEFAULT_SERVICE_EXPIRY: &str = "90d";

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            expiry: DEFAULT_SERVICE_EXPIRY.to_string(),
        }
    }
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
    /// Lifetime of the TLS server certificate; `zester up` renews it when a third is left.
    pub cert_lifetime: String,
}

/// The default of `server.cert_lifetime`: 825 days, the longest Apple's TLS stack accepts.
pub const DEFAULT_CERT_LIFETIME: &str = "825d";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:4222".to_string(),
            monitor: "127.0.0.1:8222".to_string(),
            tls_names: Vec::new(),
            nats_server: String::new(),
            cert_lifetime: DEFAULT_CERT_LIFETIME.to_string(),
        }
    }
}

/// `[peels]`: lifetimes of peel JWTs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeelsConfig {
    /// Identity JWT lifetime (peels renew at 2/3 of it).
    pub expiry: String,
    /// Session JWT lifetime ("0" = until the client disconnects or its key is revoked).
    pub session_ttl: String,
}

impl Default for PeelsConfig {
    fn default() -> Self {
        PeelsConfig {
            expiry: DEFAULT_PEEL_EXPIRY.to_string(),
            session_ttl: "0".to_string(),
        }
    }
}

/// The default of `peels.expiry`: 30 days. Agents renew at 2/3 of it (about day 20, with up to
/// 3 days of jitter), so a peel that stops renewing (switched off, stolen, forgotten) loses its
/// standing within a month rather than half a year, while a peel that is off for a long weekend
/// or a holiday still has a week or more in hand; and one that comes back later re-fetches its
/// creds by itself as long as its key is accepted.
pub const DEFAULT_PEEL_EXPIRY: &str = "30d";

/// How enrolling keys are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptPolicy {
    /// An admin accepts each key.
    Manual,
    /// Ids matching the trusted globs are accepted.
    AutoTrusted,
    /// Everything is accepted (labs).
    AutoAll,
    /// An executable decides (`keys.hook`), given the enrolment request.
    Hook,
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
    /// With `accept = "hook"`: the executable that decides.
    pub hook: String,
    /// How long the hook may take before the key stays pending.
    pub hook_timeout: String,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            accept: "manual".to_string(),
            trusted: Vec::new(),
            max_pending: 1000,
            enrol_rate: 10,
            hook: String::new(),
            hook_timeout: "10s".to_string(),
        }
    }
}

/// `[jetstream]`: the most memory and disk nats-server's JetStream may use.
///
/// Without them nats-server sizes JetStream from the host (75% of its memory and most of its
/// free disk, up to 1 TB: 17 GB and 59 GB were seen on a 24 GB machine), so the broker could
/// claim the appliance. zester's own buckets (key records, peel settings) are file-backed and
/// small, a few MB for ten thousand peels, and peels get no JetStream access at all, so the
/// defaults are ceilings with ample room rather than reservations: 256 MiB of memory for
/// memory-backed streams, which zester itself does not use, and 8 GiB of disk, which fits the
/// small disks appliances run on. nats-server allocates neither up front.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// `max_memory_store`: memory for memory-backed streams.
    pub max_memory: SizeSetting,
    /// `max_file_store`: disk for file-backed streams (under `<home>/nats/jetstream`).
    pub max_file: SizeSetting,
}

/// The default of `jetstream.max_memory`.
pub const DEFAULT_JETSTREAM_MAX_MEMORY: &str = "256MiB";
/// The default of `jetstream.max_file`.
pub const DEFAULT_JETSTREAM_MAX_FILE: &str = "8GiB";

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            max_memory: SizeSetting::Text(DEFAULT_JETSTREAM_MAX_MEMORY.to_string()),
            max_file: SizeSetting::Text(DEFAULT_JETSTREAM_MAX_FILE.to_string()),
        }
    }
}

/// A size as written in `zester.toml`: a TOML integer (bytes) or a string with a unit.
/// Turned into bytes by [`parse_size`] (through [`Config::jetstream_limits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeSetting {
    /// An integer: a number of bytes.
    Bytes(i64),
    /// A string such as `"256MiB"`.
    Text(String),
}

impl fmt::Display for SizeSetting {
    /// As it would be written in TOML, so errors quote the value the way the file has it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSetting::Bytes(n) => write!(f, "{n}"),
            SizeSetting::Text(text) => write!(f, "{text:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for SizeSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SizeSetting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a whole number of bytes or a string such as \"256MiB\"")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeSetting, E> {
                Ok(SizeSetting::Bytes(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeSetting, E> {
                i64::try_from(v)
                    .map(SizeSetting::Bytes)
                    .map_err(|_| E::custom(SizeError::TooLarge))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeSetting, E> {
                Ok(SizeSetting::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Why a size does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Nothing but spaces.
    #[error("the size is empty")]
    Empty,
    /// The text does not start with digits.
    #[error("a size starts with a whole number")]
    NotANumber,
    /// A decimal point.
    #[error("sizes are whole numbers (write 1536MiB, not 1.5GiB)")]
    Fraction,
    /// A unit that is not one of the listed ones.
    #[error("unknown unit {unit:?}")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
    },
    /// Below zero.
    #[error("a size cannot be negative")]
    Negative,
    /// Zero: nats-server would take it literally and store nothing.
    #[error("0 leaves JetStream no room at all (zester's own buckets live there)")]
    Zero,
    /// More than nats-server's 64-bit signed sizes hold.
    #[error("more than nats-server can hold (at most 8EiB - 1 bytes)")]
    TooLarge,
}

/// Parses a size into bytes: digits, optional spaces, then an optional unit.
///
/// Every unit is binary: `K`, `KB` and `KiB` all mean 1024 bytes, and so on for `M`, `G` and
/// `T` (case-insensitive; `B` or no unit means bytes). That is what the people writing memory
/// and disk limits mostly mean, and what nats-server itself means by `"1GB"`, so the same text
/// gives the same number in `zester.toml` and in a hand-written nats-server config; a decimal
/// number is written exactly as bytes. Fractions are refused rather than rounded, and so is 0:
/// nats-server would take it literally and store nothing, which breaks zester's key store.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(if unit.starts_with('-') {
            SizeError::Negative
        } else {
            SizeError::NotANumber
        });
    }
    let unit = unit.trim_start();
    if unit.starts_with(['.', ',']) {
        return Err(SizeError::Fraction);
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(SizeError::UnknownUnit {
                unit: unit.to_string(),
            })
        }
    };
    // Digits only, so the one way to fail is overflow.
    let number: u64 = number.parse().map_err(|_| SizeError::TooLarge)?;
    let bytes = number
        .checked_mul(1u64 << shift)
        .filter(|&b| i64::try_from(b).is_ok())
        .ok_or(SizeError::TooLarge)?;
    if bytes == 0 {
        return Err(SizeError::Zero);
    }
    Ok(bytes)
}

/// Bytes of a [`SizeSetting`], by the rules of [`parse_size`].
fn size_bytes(setting: &SizeSetting) -> Result<u64, SizeError> {
    match setting {
        SizeSetting::Bytes(n) if *n < 0 => Err(SizeError::Negative),
        SizeSetting::Bytes(0) => Err(SizeError::Zero),
        // Positive, so it fits.
        SizeSetting::Bytes(n) => Ok(n.unsigned_abs()),
        SizeSetting::Text(text) => parse_size(text),
    }
}

/// JetStream's limits in bytes, each more than 0 and at most `i64::MAX` (nats-server's type):
/// made only from a [`JetStreamConfig`] or as the defaults, so a renderer can print them as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JetStreamLimits {
    max_memory: u64,
    max_file: u64,
}

impl JetStreamLimits {
    /// Bytes of memory-backed storage (`max_memory_store`).
    pub fn max_memory(&self) -> u64 {
        self.max_memory
    }

    /// Bytes of file-backed storage (`max_file_store`).
    pub fn max_file(&self) -> u64 {
        self.max_file
    }
}

impl Default for JetStreamLimits {
    /// [`DEFAULT_JETSTREAM_MAX_MEMORY`] and [`DEFAULT_JETSTREAM_MAX_FILE`] in bytes.
    fn default() -> Self {
        JetStreamLimits {
            max_memory: 256 << 20,
            max_file: 8 << 30,
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
        config.service_expiry()?;
        config.cert_lifetime()?;
        config.accept_policy()?;
        config.hook_timeout()?;
        config.audit_max_file_bytes()?;
        config.audit_stream_limits()?;
        config.audit_overflow()?;
        config.audit_queue()?;
        config.jetstream_limits()?;
        config.metrics_listen()?;
        for (key, value) in [
            ("server.listen", &config.server.listen),
            ("server.monitor", &config.server.monitor),
        ] {
            check_address(key, value)?;
        }
        config.check_cluster_settings()?;
        Ok(config)
    }

    /// Checks `[node]` and `[cluster]` once the command line had its say (`--cluster-listen`):
    /// [`Config::check_cluster_settings`], and routes only with a listen address.
    pub fn check_cluster(&self) -> Result<(), ConfigError> {
        self.check_cluster_settings()?;
        if self.cluster.listen.is_empty() && !self.cluster.routes.is_empty() {
            return Err(ConfigError::RoutesWithoutListen);
        }
        Ok(())
    }

    /// Checks the names and addresses of `[node]` and `[cluster]`, each on its own.
    pub fn check_cluster_settings(&self) -> Result<(), ConfigError> {
        if !self.node.name.is_empty() && !valid_name(&self.node.name) {
            return Err(ConfigError::Name {
                key: "node.name",
                value: self.node.name.clone(),
            });
        }
        if !valid_name(&self.cluster.name) {
            return Err(ConfigError::Name {
                key: "cluster.name",
                value: self.cluster.name.clone(),
            });
        }
        if !self.cluster.listen.is_empty() {
            check_address("cluster.listen", &self.cluster.listen)?;
        }
        for route in &self.cluster.routes {
            check_address("cluster.routes", route)?;
        }
        Ok(())
    }

    /// Whether this node is (configured as) part of a cluster.
    pub fn clustered(&self) -> bool {
        !self.cluster.listen.is_empty()
    }

    /// The node's name (`server_name`): `[node] name`, else `zester` alone or the first label
    /// of `hostname` in a cluster.
    pub fn node_name(&self, hostname: &str) -> String {
        if !self.node.name.is_empty() {
            self.node.name.clone()
        } else if self.clustered() {
            node_name_from_host(hostname)
        } else {
            DEFAULT_NODE_NAME.to_string()
        }
    }

    /// Peel identity JWT lifetime in seconds (0 = never expires).
    pub fn peel_expiry(&self) -> Result<i64, ConfigError> {
        parse_duration(&self.peels.expiry).map_err(|source| ConfigError::Duration {
            key: "peels.expiry",
            source,
        })
    }

    /// `audit.max_file_bytes` in bytes (at least one record's worth: 1 KiB).
    pub fn audit_max_file_bytes(&self) -> Result<u64, ConfigError> {
        let value = &self.audit.max_file_bytes;
        let bytes = size_bytes(value).map_err(|source| ConfigError::Size {
            key: "audit.max_file_bytes",
            value: value.clone(),
            source,
        })?;
        Ok(bytes.max(1024))
    }

    /// `audit.max_age` (seconds, 0 = no age limit) and `audit.max_bytes` of the
    /// `zester-audit` stream.
    pub fn audit_stream_limits(&self) -> Result<(i64, u64), ConfigError> {
        let age = parse_duration(&self.audit.max_age).map_err(|source| ConfigError::Duration {
            key: "audit.max_age",
            source,
        })?;
        let value = &self.audit.max_bytes;
        let bytes = size_bytes(value).map_err(|source| ConfigError::Size {
            key: "audit.max_bytes",
            value: value.clone(),
            source,
        })?;
        Ok((age, bytes))
    }

    /// `audit.on_overflow`.
    pub fn audit_overflow(&self) -> Result<crate::wire::audit::Overflow, ConfigError> {
        self.audit
            .on_overflow
            .parse()
            .map_err(ConfigError::Overflow)
    }

    /// `audit.queue` (at least 1).
    pub fn audit_queue(&self) -> Result<usize, ConfigError> {
        match self.audit.queue {
            0 => Err(ConfigError::EmptyQueue),
            queue => Ok(queue),
        }
    }

    /// `keys.hook_timeout`, seconds.
    pub fn hook_timeout(&self) -> Result<i64, ConfigError> {
        parse_duration(&self.keys.hook_timeout).map_err(|source| ConfigError::Duration {
            key: "keys.hook_timeout",
            source,
        })
    }

    /// Lifetime of zester's own users' JWTs in seconds (0 = never expire).
    pub fn service_expiry(&self) -> Result<i64, ConfigError> {
        parse_duration(&self.service.expiry).map_err(|source| ConfigError::Duration {
            key: "service.expiry",
            source,
        })
    }

    /// Lifetime of the TLS server certificate in seconds (at least one second: a certificate
    /// always expires).
    pub fn cert_lifetime(&self) -> Result<i64, ConfigError> {
        let seconds =
            parse_duration(&self.server.cert_lifetime).map_err(|source| ConfigError::Duration {
                key: "server.cert_lifetime",
                source,
            })?;
        if seconds == 0 {
            return Err(ConfigError::NeverExpires {
                key: "server.cert_lifetime",
            });
        }
        Ok(seconds)
    }

    /// Session JWT lifetime in seconds (0 = until the client disconnects or is revoked).
    pub fn session_ttl(&self) -> Result<i64, ConfigError> {
        parse_duration(&self.peels.session_ttl).map_err(|source| ConfigError::Duration {
            key: "peels.session_ttl",
            source,
        })
    }

    /// JetStream's memory and disk limits in bytes.
    pub fn jetstream_limits(&self) -> Result<JetStreamLimits, ConfigError> {
        let bytes = |key: &'static str, value: &SizeSetting| {
            size_bytes(value).map_err(|source| ConfigError::Size {
                key,
                value: value.clone(),
                source,
            })
        };
        Ok(JetStreamLimits {
            max_memory: bytes("jetstream.max_memory", &self.jetstream.max_memory)?,
            max_file: bytes("jetstream.max_file", &self.jetstream.max_file)?,
        })
    }

    /// `metrics.listen` as HOST:PORT ([`metrics_address`]), `None` when the endpoint is off.
    pub fn metrics_listen(&self) -> Result<Option<String>, ConfigError> {
        match &self.metrics.listen {
            Some(value) => metrics_address("metrics.listen", value),
            None => Ok(None),
        }
    }

    /// The accept policy.
    pub fn accept_policy(&self) -> Result<AcceptPolicy, ConfigError> {
        match self.keys.accept.as_str() {
            "manual" => Ok(AcceptPolicy::Manual),
            "auto-trusted" => Ok(AcceptPolicy::AutoTrusted),
            "auto-all" => Ok(AcceptPolicy::AutoAll),
            "hook" if self.keys.hook.is_empty() => Err(ConfigError::NoHook),
            "hook" => Ok(AcceptPolicy::Hook),
            other => Err(ConfigError::AcceptPolicy {
                value: other.to_string(),
            }),
        }
    }
}

/// Where the metrics endpoint listens, from `[metrics] listen` or `--metrics`: a bare port
/// (`"9464"`) means loopback, `127.0.0.1:9464`, so that exposing the metrics beyond the
/// machine is always an explicit choice of host; HOST:PORT is taken as written (port 0 picks
/// a free one); an empty value means off (`None`).
pub fn metrics_address(key: &'static str, value: &str) -> Result<Option<String>, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let address = if value.parse::<u16>().is_ok() {
        format!("127.0.0.1:{value}")
    } else {
        value.to_string()
    };
    check_address(key, &address)?;
    Ok(Some(address))
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
    fn cluster_settings_are_checked() {
        let parse = |text: &str| Config::parse(text);
        let config = parse(
            "[node]\nname = \"node-a\"\n[cluster]\nlisten = \"127.0.0.1:6222\"\nroutes = [\"10.0.0.2:6222\", \"[fd00::3]:6222\"]\n",
        )
        .unwrap();
        assert!(config.clustered());
        assert_eq!(config.node_name("host.example.com"), "node-a");
        assert_eq!(config.cluster.name, "zester");
        assert!(matches!(
            parse("[node]\nname = \"node a\"\n"),
            Err(ConfigError::Name {
                key: "node.name",
                ..
            })
        ));
        assert!(matches!(
            parse("[cluster]\nname = \"\"\n"),
            Err(ConfigError::Name {
                key: "cluster.name",
                ..
            })
        ));
        // Routes alone parse (`--cluster-listen` may give the address), but cannot start.
        assert_eq!(
            parse("[cluster]\nroutes = [\"10.0.0.2:6222\"]\n")
                .unwrap()
                .check_cluster(),
            Err(ConfigError::RoutesWithoutListen)
        );
        assert!(matches!(
            parse("[cluster]\nlisten = \"0.0.0.0:6222\"\nroutes = [\"nowhere\"]\n"),
            Err(ConfigError::Address {
                key: "cluster.routes",
                ..
            })
        ));
        // A single node keeps the name it always had; a cluster node defaults to its host.
        assert_eq!(Config::default().node_name("web.example.com"), "zester");
        let mut clustered = Config::default();
        clustered.cluster.listen = "0.0.0.0:6222".into();
        assert_eq!(clustered.node_name("web-01.example.com"), "web-01");
        assert_eq!(node_name_from_host("we b"), "we-b");
        assert_eq!(node_name_from_host("..."), "zester");
        assert!(valid_name("node_a.1") && !valid_name("a>b") && !valid_name(&"x".repeat(65)));
    }

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

    #[test]
    fn metrics_are_off_unless_given_and_a_bare_port_is_loopback() {
        assert_eq!(Config::default().metrics_listen(), Ok(None));
        let listen = |text: &str| Config::parse(text).and_then(|c| c.metrics_listen());
        assert_eq!(listen("[metrics]\n"), Ok(None));
        assert_eq!(listen("[metrics]\nlisten = \"\"\n"), Ok(None));
        assert_eq!(
            listen("[metrics]\nlisten = \"9464\"\n"),
            Ok(Some("127.0.0.1:9464".into()))
        );
        assert_eq!(
            listen("[metrics]\nlisten = \"0.0.0.0:9464\"\n"),
            Ok(Some("0.0.0.0:9464".into()))
        );
        assert_eq!(
            metrics_address("--metrics", "[::1]:0"),
            Ok(Some("[::1]:0".into()))
        );
        let err = Config::parse("[metrics]\nlisten = \"everywhere\"\n").unwrap_err();
        assert!(err.to_string().contains("metrics.listen"), "{err}");
        assert!(metrics_address("--metrics", "99999").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        const KIB: u64 = 1024;
        for (text, bytes) in [
            ("1", 1),
            ("512B", 512),
            ("512 b", 512),
            ("4K", 4 * KIB),
            ("4KB", 4 * KIB),
            ("4KiB", 4 * KIB),
            ("4kib", 4 * KIB),
            ("64M", 64 * KIB * KIB),
            ("64MB", 64 * KIB * KIB),
            ("64MiB", 64 * KIB * KIB),
            ("256MiB", 256 << 20),
            ("  1 GiB ", 1 << 30),
            ("1G", 1 << 30),
            ("1gb", 1 << 30),
            ("8GiB", 8 << 30),
            ("2T", 2 << 40),
            ("2TB", 2 << 40),
            ("2TiB", 2 << 40),
            ("8388607TiB", 8_388_607 << 40),
            ("9223372036854775807", i64::MAX as u64),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text:?}");
        }
    }

    #[test]
    fn bad_sizes_say_why() {
        for (text, err) in [
            ("", SizeError::Empty),
            ("   ", SizeError::Empty),
            ("MiB", SizeError::NotANumber),
            ("+5M", SizeError::NotANumber),
            ("-5M", SizeError::Negative),
            ("1.5GiB", SizeError::Fraction),
            ("1,5G", SizeError::Fraction),
            ("0", SizeError::Zero),
            ("0GiB", SizeError::Zero),
            ("8388608TiB", SizeError::TooLarge),
            ("9223372036854775808", SizeError::TooLarge),
            ("99999999999999999999999", SizeError::TooLarge),
        ] {
            assert_eq!(parse_size(text), Err(err), "{text:?}");
        }
        for unit in ["PiB", "Mb s", "MiBs", "mega", "KiB2"] {
            assert_eq!(
                parse_size(&format!("5{unit}")),
                Err(SizeError::UnknownUnit {
                    unit: unit.to_string()
                })
            );
        }
        assert_eq!(
            parse_size("5 1"),
            Err(SizeError::UnknownUnit { unit: "1".into() })
        );
    }

    #[test]
    fn jetstream_section_gives_bytes() {
        let limits = Config::default().jetstream_limits().unwrap();
        assert_eq!(limits, JetStreamLimits::default());
        assert_eq!(limits.max_memory(), 256 * 1024 * 1024);
        assert_eq!(limits.max_file(), 8 * 1024 * 1024 * 1024);
        assert_eq!(
            parse_size(DEFAULT_JETSTREAM_MAX_MEMORY),
            Ok(limits.max_memory())
        );
        assert_eq!(
            parse_size(DEFAULT_JETSTREAM_MAX_FILE),
            Ok(limits.max_file())
        );

        let config =
            Config::parse("[jetstream]\nmax_memory = \"64MiB\"\nmax_file = 1073741824\n").unwrap();
        let limits = config.jetstream_limits().unwrap();
        assert_eq!(limits.max_memory(), 64 << 20);
        assert_eq!(limits.max_file(), 1 << 30);
        // A key left out keeps its default.
        let config = Config::parse("[jetstream]\nmax_file = \"2GB\"\n").unwrap();
        let limits = config.jetstream_limits().unwrap();
        assert_eq!(limits.max_memory(), 256 << 20);
        assert_eq!(limits.max_file(), 2 << 30);
    }

    #[test]
    fn bad_jetstream_values_name_the_key_and_an_example() {
        let err = Config::parse("[jetstream]\nmax_memory = \"lots\"\n").unwrap_err();
        assert_eq!(
            err,
            ConfigError::Size {
                key: "jetstream.max_memory",
                value: SizeSetting::Text("lots".into()),
                source: SizeError::NotANumber,
            }
        );
        assert_eq!(
            err.to_string(),
            "jetstream.max_memory = \"lots\": a size starts with a whole number; write a whole \
             number of bytes or a number and a unit (B, K/KB/KiB, M/MB/MiB, G/GB/GiB, \
             T/TB/TiB, all powers of 1024), e.g. \"256MiB\", \"8GiB\" or 268435456"
        );
        let err = Config::parse("[jetstream]\nmax_file = \"8 PB\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("jetstream.max_file = \"8 PB\": unknown unit \"PB\""),
            "{text}"
        );
        let err = Config::parse("[jetstream]\nmax_file = -1\n").unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Size {
                key: "jetstream.max_file",
                source: SizeError::Negative,
                ..
            }
        ));
        assert!(
            err.to_string().starts_with("jetstream.max_file = -1: "),
            "{err}"
        );
        let err = Config::parse("[jetstream]\nmax_memory = 0\n").unwrap_err();
        assert!(err.to_string().contains("no room at all"), "{err}");
        // A value of the wrong type is refused by the parser, which shows the line.
        let err = Config::parse("[jetstream]\nmax_memory = 1.5\n").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::Syntax(_)));
        assert!(
            text.contains("max_memory = 1.5") && text.contains("\"256MiB\""),
            "{text}"
        );
        let err = Config::parse("[jetstream]\nmax_disk = \"1GiB\"\n").unwrap_err();
        assert!(err.to_string().contains("max_disk"), "{err}");
    }
}
