//! Rendering the nats-server configuration file: text in memory, no I/O.
//!
//! zester owns the whole of `nats-server.conf`: it is generated from `zester.toml` and the
//! home's keys on every start and never edited by hand, so [`render`] is a pure function from
//! a [`ServerConfigInput`] to the file's text. Keeping it pure means every line can be checked
//! by unit tests, and one test feeds the result to the real binary (`nats-server -t`).
//!
//! Facts about nats-server 2.15 this relies on (read from `server/opts.go` and `conf/lex.go`):
//!
//! - `listen`/`http` take `"HOST:PORT"`, split by Go's `net.SplitHostPort` (so IPv6 hosts are
//!   bracketed); port `-1` asks for a random port, which is how zester renders port 0. The real
//!   ports are learnt from the ports file nats-server writes into `ports_file_dir`.
//! - A double-quoted string knows only the escapes `\t \n \r \" \\ \xHH`: JSON's `\u00XX`,
//!   `\b` and `\f` are errors, so [`quote`] is written here rather than borrowed from JSON.
//!   `$` is not special inside quotes. Quoted keys have no escapes at all, which is why the
//!   only keys rendered from input (the `resolver_preload` account keys) are validated first.
//! - `resolver { type: full }` is a writable directory resolver, so `resolver_preload` works
//!   with it: preloads are stored with "save if newer", so a JWT updated at run time (say, with
//!   a new revocation) is not rolled back by an older preload at the next start.
//! - Left out, `max_memory_store`/`max_file_store` make nats-server size JetStream from the
//!   host (75% of memory, most of the free disk), so both are always rendered, as plain byte
//!   counts: nats-server reads a quoted `"1G"` and a bare `1GB` as 2^30 but a bare `1G` as
//!   10^9. An explicit 0 is taken literally (no room); `zester.toml` refuses it.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use crate::home::config::JetStreamLimits;

/// Everything the rendered config depends on.
#[derive(Debug, Clone)]
pub struct ServerConfigInput<'a> {
    /// `server_name` (no spaces; nats-server refuses them).
    pub server_name: &'a str,
    /// Client listen address, `HOST:PORT` (`server.listen` or `--listen`); port 0 = random.
    pub listen: &'a str,
    /// Monitoring listen address, `HOST:PORT`, loopback only; port 0 = random.
    pub monitor: &'a str,
    /// The operator JWT file.
    pub operator_jwt_file: &'a Path,
    /// Public key of the system account (SYS).
    pub system_account: &'a str,
    /// Directory of the full account resolver (`<home>/nats/jwt`).
    pub resolver_dir: &'a Path,
    /// `(account public key, account JWT)` pairs stored in the resolver at start.
    pub preload: &'a [(&'a str, &'a str)],
    /// The bearer user JWT that clients without a JWT of their own get (DESIGN §5).
    pub default_sentinel: &'a str,
    /// Server certificate (PEM).
    pub tls_cert_file: &'a Path,
    /// Server private key (PEM).
    pub tls_key_file: &'a Path,
    /// CA certificate (PEM).
    pub tls_ca_file: &'a Path,
    /// JetStream storage directory.
    pub jetstream_dir: &'a Path,
    /// JetStream's memory and disk ceilings (`[jetstream]` in `zester.toml`).
    pub jetstream_limits: JetStreamLimits,
    /// Longest protocol line accepted; CONNECT lines carry a user JWT and a signature.
    pub max_control_line: usize,
    /// Where nats-server writes `<executable>_<pid>.ports`, the ports it really listens on.
    pub ports_file_dir: &'a Path,
    /// Where nats-server writes its pid.
    pub pid_file: &'a Path,
    /// Routes to the other nodes, when this node is one of a cluster.
    pub cluster: Option<ClusterInput<'a>>,
}

/// The `cluster {}` block: routes over mutual TLS with the client TLS files (DESIGN §9).
#[derive(Debug, Clone, Copy)]
pub struct ClusterInput<'a> {
    /// `cluster.name`, the same on every node.
    pub name: &'a str,
    /// Where routes are accepted, `HOST:PORT`; port 0 = random.
    pub listen: &'a str,
    /// The other nodes' route addresses, `HOST:PORT` each.
    pub routes: &'a [String],
    /// The route certificates accepted (`tls { pinned_certs }`: the lowercase hex sha256 of
    /// each accepted node's certificate's SubjectPublicKeyInfo, this node's included). Empty:
    /// any certificate of the zester CA.
    pub pinned_certs: &'a [String],
}

/// Where this node stands: its `server_name`, and its cluster if it has one.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// `server_name`.
    pub server_name: &'a str,
    /// The cluster block, if any.
    pub cluster: Option<ClusterInput<'a>>,
}

impl Placement<'static> {
    /// A single node named `zester`, as every node was before clusters.
    pub const SINGLE: Placement<'static> = Placement {
        server_name: crate::home::config::DEFAULT_NODE_NAME,
        cluster: None,
    };
}

/// Why a configuration could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigRenderError {
    /// An address that is not `HOST:PORT`.
    #[error(
        "{key} = {value:?} is not HOST:PORT (e.g. \"127.0.0.1:4222\", \"[::1]:4222\", \
         \"localhost:4222\"; port 0 picks a free port)"
    )]
    BadAddress {
        /// The setting it came from (`server.listen`, `server.monitor`).
        key: &'static str,
        /// The value given.
        value: String,
    },
    /// The monitoring address is reachable from other hosts.
    #[error(
        "server.monitor = {value:?} is not a loopback address; the monitoring port has no \
         authentication and lists every connection, so zester serves it only on 127.0.0.1, \
         [::1] or localhost (change server.monitor in zester.toml or pass --monitor)"
    )]
    MonitorNotLoopback {
        /// The value given.
        value: String,
    },
    /// A route pin that is not a hex sha256.
    #[error("route pin {value:?} is not a hex sha256 of a certificate's public key: a node record in nats/nodes.json is damaged")]
    BadPin {
        /// The value given.
        value: String,
    },
    /// Something that must be an account public key is not one.
    #[error(
        "{what} {value:?} is not an account public key (56 characters, starting with 'A'); \
         the home's auth/ files are damaged"
    )]
    BadAccountKey {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: String,
    },
}

/// A parsed `HOST:PORT`: an IP literal or a host name, and a port (0 = random).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// Parses `HOST:PORT` (IPv6 in brackets: `[::1]:4222`); `key` names the setting in errors.
    pub fn parse(key: &'static str, value: &str) -> Result<HostPort, ConfigRenderError> {
        let bad = || ConfigRenderError::BadAddress {
            key,
            value: value.to_string(),
        };
        let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|_| port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(bad)?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(bad)?;
            inner.parse::<Ipv6Addr>().map_err(|_| bad())?;
            inner
        } else {
            let is_name = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !is_name {
                return Err(bad());
            }
            host
        };
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }

    /// The host: an IP literal (IPv6 without brackets) or a name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port; 0 means nats-server picks a free one.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as an IP address, if it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The address as a socket address, if the host is an IP literal (no name lookup).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// True for `localhost` and loopback IPs (127.0.0.0/8, ::1).
    pub fn is_loopback(&self) -> bool {
        match self.ip() {
            Some(ip) => ip.is_loopback(),
            None => self.host.eq_ignore_ascii_case("localhost"),
        }
    }

    /// The form nats-server's `listen`/`http` take, with port 0 written as `-1` (random).
    pub fn to_nats_listen(&self) -> String {
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        format!("{}:{port}", self.bracketed_host())
    }

    fn bracketed_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.bracketed_host(), self.port)
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> HostPort {
        HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl Default for HostPort {
    /// `127.0.0.1:0`: loopback, random port.
    fn default() -> HostPort {
        HostPort::from(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
}

/// Renders the configuration of a zester home: its operator, accounts (preloaded into the full
/// resolver under `<home>/nats/jwt`), TLS files, JetStream store and its limits, ports and pid
/// files, with `sentinel` as the `default_sentinel` and the given listen/monitor addresses.
#[allow(clippy::too_many_arguments)]
pub fn render_for_home(
    home: &crate::home::Home,
    authority: &crate::authority::Authority,
    sentinel: &str,
    listen: &str,
    monitor: &str,
    jetstream_limits: JetStreamLimits,
    placement: Placement<'_>,
) -> Result<String, ConfigRenderError> {
    let sys = authority.sys.public_key();
    let zester = authority.zester.public_key();
    render(&ServerConfigInput {
        server_name: placement.server_name,
        cluster: placement.cluster,
        listen,
        monitor,
        operator_jwt_file: &home.operator_jwt(),
        system_account: &sys,
        resolver_dir: &home.resolver_dir(),
        preload: &[
            (&sys, authority.sys_jwt.token()),
            (&zester, authority.zester_jwt.token()),
        ],
        default_sentinel: sentinel,
        tls_cert_file: &home.server_chain(),
        tls_key_file: &home.server_key(),
        tls_ca_file: &home.ca_cert(),
        jetstream_dir: &home.jetstream_dir(),
        jetstream_limits,
        max_control_line: MAX_CONTROL_LINE,
        ports_file_dir: &home.nats_dir(),
        pid_file: &home.nats_pid_file(),
    })
}

/// Renders the `cluster {}` block (routes over mutual TLS: every node presents its server
/// certificate as a client too, and checks the other's against the zester CA).
fn render_cluster(
    input: &ServerConfigInput,
    cluster: &ClusterInput,
    line: &mut impl FnMut(String),
) -> Result<(), ConfigRenderError> {
    let listen = HostPort::parse("cluster.listen", cluster.listen)?;
    let routes = cluster
        .routes
        .iter()
        .map(|route| HostPort::parse("cluster.routes", route))
        .collect::<Result<Vec<_>, _>>()?;
    line(String::new());
    line("# Routes to the other zester nodes: mutual TLS with the zester CA.".into());
    line("cluster {".into());
    line(format!("  name: {}", quote(cluster.name)));
    line(format!("  listen: {}", quote(&listen.to_nats_listen())));
    // A node cut off by the network (no reset, packets just lost) is noticed in seconds, not
    // nats-server's two minutes: until its route closes, the others still route a share of
    // every queue group (the callouts, the services) to it, and those requests are lost.
    line(format!("  ping_interval: \"{ROUTE_PING_INTERVAL_SECS}s\""));
    line(format!("  ping_max: {ROUTE_PING_MAX}"));
    line("  routes: [".into());
    for route in &routes {
        line(format!("    {}", quote(&format!("nats-route://{route}"))));
    }
    line("  ]".into());
    line("  tls {".into());
    line(format!(
        "    cert_file: {}",
        quote_path(input.tls_cert_file)
    ));
    line(format!("    key_file: {}", quote_path(input.tls_key_file)));
    line(format!("    ca_file: {}", quote_path(input.tls_ca_file)));
    line("    verify: true".into());
    line("    min_version: \"1.3\"".into());
    line(format!("    timeout: {TLS_TIMEOUT_SECS}"));
    if !cluster.pinned_certs.is_empty() {
        // nats-server checks a route's peer certificate against these on every handshake,
        // both ways, and on a reload closes the routes whose certificate is no longer listed.
        line("    pinned_certs: [".into());
        for pin in cluster.pinned_certs {
            if !is_pin(pin) {
                return Err(ConfigRenderError::BadPin { value: pin.clone() });
            }
            line(format!("      {}", quote(pin)));
        }
        line("    ]".into());
    }
    line("  }".into());
    line("}".into());
    Ok(())
}

/// Whether `pin` is what `pinned_certs` takes: 64 lowercase hex digits.
fn is_pin(pin: &str) -> bool {
    pin.len() == 64
        && pin
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Seconds between pings on a route, and the pings without answer after which the route is
/// closed: a node lost without a reset leaves the others' queue groups within about
/// `ROUTE_PING_INTERVAL_SECS * (ROUTE_PING_MAX + 1)` seconds.
pub const ROUTE_PING_INTERVAL_SECS: u32 = 2;
/// See [`ROUTE_PING_INTERVAL_SECS`].
pub const ROUTE_PING_MAX: u32 = 2;

/// Seconds a client has for its TLS handshake (nats-server's default is 2). Under a reconnect
/// storm of thousands of peels on a small machine, handshakes queue for CPU: a handshake given
/// up on is work thrown away that the client repeats.
pub const TLS_TIMEOUT_SECS: u32 = 5;

pub use crate::wire::AUTH_TIMEOUT_SECS;

/// Longest control line nats-server accepts (CONNECT carries the JWT and the signature).
pub const MAX_CONTROL_LINE: usize = 32 * 1024;

/// Renders `nats-server.conf`.
///
/// Fails on a malformed address, a monitoring address other hosts could reach, or an account
/// key that is not one (it would be rendered as a config key, which cannot be escaped).
pub fn render(input: &ServerConfigInput) -> Result<String, ConfigRenderError> {
    let listen = HostPort::parse("server.listen", input.listen)?;
    let monitor = HostPort::parse("server.monitor", input.monitor)?;
    if !monitor.is_loopback() {
        return Err(ConfigRenderError::MonitorNotLoopback {
            value: input.monitor.to_string(),
        });
    }
    check_account_key("system_account", input.system_account)?;
    for (key, _) in input.preload {
        check_account_key("resolver_preload account", key)?;
    }

    let mut out = String::with_capacity(4096);
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line("# Generated by zester at every start from zester.toml and the home's keys.".into());
    line("# Do not edit: changes are overwritten. Change zester.toml instead.".into());
    line(String::new());
    line(format!("server_name: {}", quote(input.server_name)));
    line(format!("listen: {}", quote(&listen.to_nats_listen())));
    line("# Monitoring has no authentication: loopback only.".into());
    line(format!("http: {}", quote(&monitor.to_nats_listen())));
    line(format!("max_control_line: {}", input.max_control_line));
    line(format!(
        "ports_file_dir: {}",
        quote_path(input.ports_file_dir)
    ));
    line(format!("pid_file: {}", quote_path(input.pid_file)));
    line(String::new());
    line("# Operator mode: accounts and users are JWTs signed by the operator's keys.".into());
    line(format!("operator: {}", quote_path(input.operator_jwt_file)));
    line(format!("system_account: {}", quote(input.system_account)));
    line("resolver {".into());
    line("  type: full".into());
    line(format!("  dir: {}", quote_path(input.resolver_dir)));
    line("  allow_delete: false".into());
    line("  interval: \"2m\"".into());
    line("  timeout: \"1.9s\"".into());
    line("}".into());
    line("resolver_preload {".into());
    for (key, jwt) in input.preload {
        line(format!("  {}: {}", quote(key), quote(jwt)));
    }
    line("}".into());
    line(
        "# Clients without a JWT (enrolling peels) get this bearer JWT of ZESTER and so reach"
            .into(),
    );
    line("# the auth callout, which decides.".into());
    line(format!(
        "default_sentinel: {}",
        quote(input.default_sentinel)
    ));
    line(String::new());
    line("# Clients verify the server against the CA; they present no certificate.".into());
    line("tls {".into());
    line(format!("  cert_file: {}", quote_path(input.tls_cert_file)));
    line(format!("  key_file: {}", quote_path(input.tls_key_file)));
    line(format!("  ca_file: {}", quote_path(input.tls_ca_file)));
    line("  min_version: \"1.3\"".into());
    line(format!("  timeout: {TLS_TIMEOUT_SECS}"));
    line("}".into());
    line("# How long a client may take from accepting to being let in, callout included.".into());
    line(format!("authorization {{ timeout: {AUTH_TIMEOUT_SECS} }}"));
    line(String::new());
    line("jetstream {".into());
    line(format!("  store_dir: {}", quote_path(input.jetstream_dir)));
    line(
        "  # Ceilings from zester.toml [jetstream], in bytes; without them nats-server takes"
            .into(),
    );
    line("  # most of the host's memory and disk.".into());
    line(format!(
        "  max_memory_store: {}",
        input.jetstream_limits.max_memory()
    ));
    line(format!(
        "  max_file_store: {}",
        input.jetstream_limits.max_file()
    ));
    line("}".into());
    if let Some(cluster) = &input.cluster {
        render_cluster(input, cluster, &mut line)?;
    }
    Ok(out)
}

fn check_account_key(what: &'static str, value: &str) -> Result<(), ConfigRenderError> {
    let ok = value.len() == 56
        && value.starts_with('A')
        && value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ConfigRenderError::BadAccountKey {
            what,
            value: value.to_string(),
        })
    }
}

/// A double-quoted nats-server config string holding exactly `text`.
///
/// Only the escapes nats-server's lexer knows are used: `\"`, `\\`, `\t`, `\n`, `\r`, and
/// `\xHH` for the other control characters.
pub fn quote(text: &str) -> String {
    quote_bytes(text.as_bytes())
}

/// [`quote`] for a path; bytes that are not UTF-8 are written as `\xHH`, which nats-server
/// turns back into the same bytes, so any Unix path survives.
pub fn quote_path(path: &Path) -> String {
    quote_bytes(path.as_os_str().as_encoded_bytes())
}

fn quote_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                // Writing to a String cannot fail.
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const SYS: &str = "ADQGSLKS2PXDJ4U6CM7E3RJGWSJB2MM4CUGRYEHWCMWHEMAOJQPMIFJH";
    const ZESTER: &str = "ACFTK4XZLJK5BHQBMZ6AFBQSOD2U2BRSSJXNSA2GGZ3AKHXDVDBRMMZA";

    struct Paths {
        operator: PathBuf,
        resolver: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        js: PathBuf,
        ports: PathBuf,
        pid: PathBuf,
    }

    impl Paths {
        fn under(root: &Path) -> Paths {
            Paths {
                operator: root.join("auth/operator.jwt"),
                resolver: root.join("nats/jwt"),
                cert: root.join("pki/server.pem"),
                key: root.join("pki/server.key"),
                ca: root.join("pki/ca.pem"),
                js: root.join("nats/jetstream"),
                ports: root.join("nats"),
                pid: root.join("nats/nats-server.pid"),
            }
        }

        fn input<'a>(
            &'a self,
            listen: &'a str,
            monitor: &'a str,
            preload: &'a [(&'a str, &'a str)],
            sentinel: &'a str,
            sys: &'a str,
        ) -> ServerConfigInput<'a> {
            ServerConfigInput {
                server_name: "zester",
                listen,
                monitor,
                operator_jwt_file: &self.operator,
                system_account: sys,
                resolver_dir: &self.resolver,
                preload,
                default_sentinel: sentinel,
                tls_cert_file: &self.cert,
                tls_key_file: &self.key,
                tls_ca_file: &self.ca,
                jetstream_dir: &self.js,
                jetstream_limits: JetStreamLimits::default(),
                max_control_line: 32768,
                ports_file_dir: &self.ports,
                pid_file: &self.pid,
                cluster: None,
            }
        }
    }

    fn render_with(listen: &str, monitor: &str) -> Result<String, ConfigRenderError> {
        let paths = Paths::under(Path::new("/var/lib/zester"));
        let preload = [(SYS, "sys.jwt.token"), (ZESTER, "zester.jwt.token")];
        render(&paths.input(listen, monitor, &preload, "sentinel.jwt", SYS))
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().map(str::trim).collect()
    }

    #[test]
    fn a_cluster_node_renders_routes_over_mutual_tls() {
        let paths = Paths::under(Path::new("/var/lib/zester"));
        let preload = [(SYS, "sys.jwt.token"), (ZESTER, "zester.jwt.token")];
        let routes = ["10.0.0.2:6222".to_string(), "[fd00::3]:6222".to_string()];
        let mut input = paths.input("0.0.0.0:4222", "127.0.0.1:8222", &preload, "s", SYS);
        input.server_name = "node-a";
        input.cluster = Some(ClusterInput {
            name: "zester",
            listen: "0.0.0.0:6222",
            routes: &routes,
            pinned_certs: &[],
        });
        let text = render(&input).unwrap();
        let cluster = &text[text.find("cluster {").expect("a cluster block")..];
        let lines = lines(cluster);
        for expected in [
            "name: \"zester\"",
            "listen: \"0.0.0.0:6222\"",
            "\"nats-route://10.0.0.2:6222\"",
            "\"nats-route://[fd00::3]:6222\"",
            "cert_file: \"/var/lib/zester/pki/server.pem\"",
            "ca_file: \"/var/lib/zester/pki/ca.pem\"",
            // Mutual: a route must present a certificate of the zester CA.
            "verify: true",
            "min_version: \"1.3\"",
            // A lost node's route closes in seconds.
            "ping_interval: \"2s\"",
            "ping_max: 2",
        ] {
            assert!(
                lines.contains(&expected),
                "missing {expected:?} in:\n{text}"
            );
        }
        assert!(text.contains("server_name: \"node-a\""));
        assert!(
            !text.contains("pinned_certs"),
            "no pins: any certificate of the CA"
        );
        let pins = ["ab".repeat(32), "0f".repeat(32)];
        input.cluster = Some(ClusterInput {
            name: "zester",
            listen: "0.0.0.0:6222",
            routes: &routes,
            pinned_certs: &pins,
        });
        let text = render(&input).unwrap();
        let tls = &text[text.find("pinned_certs: [").expect("pinned certs")..];
        let tls: Vec<&str> = tls.lines().map(str::trim).collect();
        assert!(tls.starts_with(&[
            "pinned_certs: [",
            &format!("\"{}\"", pins[0]),
            &format!("\"{}\"", pins[1]),
            "]",
            "}",
            "}"
        ]));
        let bad = ["sha256:ab".to_string()];
        input.cluster = Some(ClusterInput {
            name: "zester",
            listen: "0.0.0.0:6222",
            routes: &routes,
            pinned_certs: &bad,
        });
        assert!(matches!(
            render(&input),
            Err(ConfigRenderError::BadPin { .. })
        ));
        let nowhere = ["nowhere".to_string()];
        input.cluster = Some(ClusterInput {
            name: "zester",
            listen: "0.0.0.0:6222",
            routes: &nowhere,
            pinned_certs: &[],
        });
        assert_eq!(
            render(&input).unwrap_err(),
            ConfigRenderError::BadAddress {
                key: "cluster.routes",
                value: "nowhere".into()
            }
        );
        // A single node has no cluster block.
        assert!(!render_with("0.0.0.0:4222", "127.0.0.1:8222")
            .unwrap()
            .contains("cluster {"));
    }

    #[test]
    fn renders_the_important_lines() {
        let text = render_with("0.0.0.0:4222", "127.0.0.1:8222").unwrap();
        let lines = lines(&text);
        for expected in [
            "server_name: \"zester\"",
            "listen: \"0.0.0.0:4222\"",
            "http: \"127.0.0.1:8222\"",
            "max_control_line: 32768",
            "ports_file_dir: \"/var/lib/zester/nats\"",
            "pid_file: \"/var/lib/zester/nats/nats-server.pid\"",
            "operator: \"/var/lib/zester/auth/operator.jwt\"",
            &format!("system_account: \"{SYS}\""),
            "resolver {",
            "type: full",
            "dir: \"/var/lib/zester/nats/jwt\"",
            "allow_delete: false",
            "interval: \"2m\"",
            "timeout: \"1.9s\"",
            &format!("\"{SYS}\": \"sys.jwt.token\""),
            &format!("\"{ZESTER}\": \"zester.jwt.token\""),
            "default_sentinel: \"sentinel.jwt\"",
            "cert_file: \"/var/lib/zester/pki/server.pem\"",
            "key_file: \"/var/lib/zester/pki/server.key\"",
            "ca_file: \"/var/lib/zester/pki/ca.pem\"",
            "min_version: \"1.3\"",
            "timeout: 5",
            "authorization { timeout: 10 }",
            "store_dir: \"/var/lib/zester/nats/jetstream\"",
            // The defaults when zester.toml has no [jetstream]: 256 MiB and 8 GiB.
            "max_memory_store: 268435456",
            "max_file_store: 8589934592",
        ] {
            assert!(
                lines.contains(&expected),
                "missing {expected:?} in:\n{text}"
            );
        }
        // Clients present no certificate, so none may be demanded.
        assert!(!lines.iter().any(|l| l.starts_with("verify")), "{text}");
        // The preloads sit inside the resolver_preload block.
        let start = text.find("resolver_preload {").unwrap();
        let end = start + text[start..].find('}').unwrap();
        assert!(text[start..end].contains(SYS) && text[start..end].contains(ZESTER));
    }

    #[test]
    fn jetstream_limits_are_rendered_in_bytes_inside_the_jetstream_block() {
        let config = crate::home::config::Config::parse(
            "[jetstream]\nmax_memory = \"64MiB\"\nmax_file = \"1GiB\"\n",
        )
        .unwrap();
        let paths = Paths::under(Path::new("/h"));
        let mut input = paths.input("127.0.0.1:0", "127.0.0.1:0", &[], "s", SYS);
        input.jetstream_limits = config.jetstream_limits().unwrap();
        let text = render(&input).unwrap();
        let start = text.find("jetstream {").unwrap();
        let end = start + text[start..].find('}').unwrap();
        let block = lines(&text[start..end]);
        assert!(block.contains(&"max_memory_store: 67108864"), "{text}");
        assert!(block.contains(&"max_file_store: 1073741824"), "{text}");
        assert_eq!(text.matches("max_memory_store").count(), 1, "{text}");
        assert_eq!(text.matches("max_file_store").count(), 1, "{text}");
    }

    #[test]
    fn port_zero_is_rendered_as_random() {
        let text = render_with("127.0.0.1:0", "127.0.0.1:0").unwrap();
        let v4 = lines(&text);
        assert!(v4.contains(&"listen: \"127.0.0.1:-1\""), "{text}");
        assert!(v4.contains(&"http: \"127.0.0.1:-1\""), "{text}");
        let text = render_with("[::1]:0", "[::1]:8222").unwrap();
        let v6 = lines(&text);
        assert!(v6.contains(&"listen: \"[::1]:-1\""), "{text}");
        assert!(v6.contains(&"http: \"[::1]:8222\""), "{text}");
    }

    #[test]
    fn monitor_must_be_loopback() {
        for monitor in [
            "0.0.0.0:8222",
            "192.168.1.5:8222",
            "[::]:8222",
            "example.com:8222",
        ] {
            let err = render_with("127.0.0.1:4222", monitor).unwrap_err();
            assert_eq!(
                err,
                ConfigRenderError::MonitorNotLoopback {
                    value: monitor.to_string()
                }
            );
            assert!(err.to_string().contains("--monitor"), "{err}");
        }
        for monitor in [
            "127.0.0.1:8222",
            "127.0.0.2:0",
            "[::1]:8222",
            "localhost:8222",
        ] {
            render_with("127.0.0.1:4222", monitor).unwrap();
        }
    }

    #[test]
    fn bad_addresses_are_named() {
        for (listen, monitor, key) in [
            ("4222", "127.0.0.1:8222", "server.listen"),
            ("127.0.0.1:", "127.0.0.1:8222", "server.listen"),
            (":4222", "127.0.0.1:8222", "server.listen"),
            ("::1:4222", "127.0.0.1:8222", "server.listen"),
            ("[::1:4222", "127.0.0.1:8222", "server.listen"),
            ("[nothost]:4222", "127.0.0.1:8222", "server.listen"),
            ("127.0.0.1:65536", "127.0.0.1:8222", "server.listen"),
            ("127.0.0.1:-1", "127.0.0.1:8222", "server.listen"),
            ("127.0.0.1:+1", "127.0.0.1:8222", "server.listen"),
            ("a host:4222", "127.0.0.1:8222", "server.listen"),
            ("a\"b:4222", "127.0.0.1:8222", "server.listen"),
            ("127.0.0.1:4222", "8222", "server.monitor"),
        ] {
            match render_with(listen, monitor) {
                Err(ConfigRenderError::BadAddress { key: k, value }) => {
                    assert_eq!(k, key, "{listen} {monitor}");
                    assert!(value == listen || value == monitor);
                }
                other => panic!("{listen} {monitor}: expected BadAddress, got {other:?}"),
            }
        }
    }

    #[test]
    fn host_port_parses_and_prints() {
        let hp = HostPort::parse("k", "[::1]:4222").unwrap();
        assert_eq!(hp.host(), "::1");
        assert_eq!(hp.port(), 4222);
        assert_eq!(hp.to_string(), "[::1]:4222");
        assert_eq!(hp.socket_addr(), Some("[::1]:4222".parse().unwrap()));
        assert!(hp.is_loopback());
        let hp = HostPort::parse("k", "localhost:0").unwrap();
        assert_eq!(hp.socket_addr(), None);
        assert_eq!(hp.to_nats_listen(), "localhost:-1");
        assert!(hp.is_loopback());
        assert!(!HostPort::parse("k", "0.0.0.0:1").unwrap().is_loopback());
        assert_eq!(HostPort::default().to_string(), "127.0.0.1:0");
    }

    #[test]
    fn account_keys_are_checked() {
        let paths = Paths::under(Path::new("/h"));
        let preload = [("A\"}evil", "jwt")];
        let err = render(&paths.input("127.0.0.1:0", "127.0.0.1:0", &preload, "s", SYS));
        assert!(matches!(err, Err(ConfigRenderError::BadAccountKey { .. })));
        let err = render(&paths.input("127.0.0.1:0", "127.0.0.1:0", &[], "s", "SYS"));
        assert!(matches!(
            err,
            Err(ConfigRenderError::BadAccountKey {
                what: "system_account",
                ..
            })
        ));
    }

    #[test]
    fn quoting_uses_only_escapes_nats_server_knows() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("a \"b\" c"), "\"a \\\"b\\\" c\"");
        assert_eq!(quote("back\\slash"), "\"back\\\\slash\"");
        assert_eq!(quote("t\tn\nr\r"), "\"t\\tn\\nr\\r\"");
        assert_eq!(quote("bell\u{7}del\u{7f}"), "\"bell\\x07del\\x7f\"");
        assert_eq!(quote("$VAR ünï"), "\"$VAR ünï\"");
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\xff\xfe/x"));
        assert_eq!(quote_path(path), "\"/tmp/\\xff\\xfe/x\"");
    }

    /// The rendered config from a real home passes the real binary's config test.
    #[test]
    fn real_nats_server_accepts_a_rendered_config() {
        use crate::home::{now_unix, Home};

        let binary = match crate::appliance::broker::binary::locate(None) {
            Ok(found) => found.path,
            Err(e) => {
                eprintln!("skipped: no nats-server binary to test the config with: {e}");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        // Spaces, quotes, a backslash and non-ASCII in every path exercise the quoting.
        let home = Home::at(dir.path().join("a home \"quoted\" \\ ü"));
        let now = now_unix();
        home.init(false, "localhost", now).unwrap();
        let authority = home.load_authority().unwrap();

        let sentinel = authority.issue_sentinel(now).unwrap();
        let nats = home.nats_dir();
        let text = render_for_home(
            &home,
            &authority,
            sentinel.token(),
            "127.0.0.1:0",
            "127.0.0.1:0",
            JetStreamLimits::default(),
            Placement {
                server_name: "node-a",
                cluster: Some(ClusterInput {
                    name: "zester",
                    listen: "127.0.0.1:0",
                    routes: &["127.0.0.1:6223".to_string(), "[::1]:6224".to_string()],
                    pinned_certs: &["ab".repeat(32), "0f".repeat(32)],
                }),
            },
        )
        .unwrap();
        let file = nats.join("nats-server.conf");
        std::fs::write(&file, &text).unwrap();

        let output = std::process::Command::new(&binary)
            .arg("-t")
            .arg("-c")
            .arg(&file)
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "nats-server -t refused the config ({}): {printed}\n{text}",
            output.status
        );
        assert!(printed.contains("is valid"), "{printed}");
        // Parsing the full resolver made its directory, under the quoted path.
        assert!(home.resolver_dir().is_dir(), "{printed}");
    }
}
