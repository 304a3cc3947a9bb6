//! Facts: what a peel tells the master about its host every time it (re)connects.
//!
//! Published as JSON on `zester.fact.<id>` (DESIGN §4). Gathering reads a few files under
//! `/proc` and `/etc`; the parsing of those files is done by pure functions so it can be tested
//! without the host. A value that cannot be found is sent as `null` rather than guessed: the
//! master decides what to do with an unknown.

use serde::Serialize;

use crate::identity::peel_id::PeelId;
use crate::identity::time::rfc3339;

/// The zester version this agent was built from.
pub const ZESTER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the kernel keeps the host name, then the distribution's file.
const HOSTNAME_FILES: [&str; 2] = ["/proc/sys/kernel/hostname", "/etc/hostname"];

/// The kernel's memory report.
const MEMINFO_FILE: &str = "/proc/meminfo";

/// The facts of one peel at one connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// The peel id (the `name` of its creds).
    pub id: String,
    /// The host name, if it could be read.
    pub hostname: Option<String>,
    /// Operating system, as Rust names it (`linux`, `macos`, …).
    pub os: String,
    /// CPU architecture, as Rust names it (`x86_64`, `aarch64`, …).
    pub arch: String,
    /// CPUs this process may use, if known.
    pub cpus: Option<usize>,
    /// Total memory in bytes (`MemTotal`), if known.
    pub memory_bytes: Option<u64>,
    /// The agent's zester version.
    pub zester_version: String,
    /// When this connection was made (RFC 3339, UTC).
    pub connected_at: String,
}

impl Facts {
    /// Gathers the facts of this host for peel `id`, connected at `connected_at` (unix seconds).
    pub fn gather(id: &PeelId, connected_at: i64) -> Facts {
        Facts {
            id: id.to_string(),
            hostname: hostname(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
            memory_bytes: memory_bytes(),
            zester_version: ZESTER_VERSION.to_string(),
            connected_at: rfc3339(connected_at),
        }
    }

    /// The JSON payload published on `zester.fact.<id>`.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail; an empty object is never sent.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The host name from the first of `HOSTNAME_FILES` that holds one.
pub fn hostname() -> Option<String> {
    HOSTNAME_FILES.iter().find_map(|path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| parse_hostname(&text))
    })
}

/// The host name in the text of a hostname file: its first line, trimmed; `None` when empty.
pub fn parse_hostname(text: &str) -> Option<String> {
    let name = text.lines().next()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Total memory from `MEMINFO_FILE`.
pub fn memory_bytes() -> Option<u64> {
    std::fs::read_to_string(MEMINFO_FILE)
        .ok()
        .and_then(|text| parse_mem_total(&text))
}

/// `MemTotal` in bytes from the text of `/proc/meminfo` (`MemTotal:  16303424 kB`). The kernel
/// always writes kB (meaning KiB); any other unit or a malformed line gives `None`.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match (words.next(), words.next()) {
        (Some("kB"), None) => value.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_kib() {
        let meminfo = "MemTotal:       16303424 kB\nMemFree:         1234567 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(16_303_424 * 1024));
        let later = "MemFree:  1 kB\nMemTotal:  2 kB\n";
        assert_eq!(parse_mem_total(later), Some(2048));
    }

    #[test]
    fn a_missing_or_odd_mem_total_is_unknown() {
        assert_eq!(parse_mem_total(""), None);
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 1 MB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 1\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 1 kB extra\n"), None);
        assert_eq!(
            parse_mem_total(&format!("MemTotal: {} kB\n", u64::MAX)),
            None
        );
    }

    #[test]
    fn the_hostname_is_the_trimmed_first_line() {
        assert_eq!(parse_hostname("web-01\n").as_deref(), Some("web-01"));
        assert_eq!(
            parse_hostname("  web-01  \nother\n").as_deref(),
            Some("web-01")
        );
        assert_eq!(parse_hostname(""), None);
        assert_eq!(parse_hostname("\n"), None);
        assert_eq!(parse_hostname("   \nweb-01\n"), None);
    }

    #[test]
    fn facts_serialise_with_the_documented_names_and_null_for_unknowns() {
        let facts = Facts {
            id: "web-01".into(),
            hostname: None,
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: Some(4),
            memory_bytes: None,
            zester_version: ZESTER_VERSION.into(),
            connected_at: rfc3339(0),
        };
        let json: serde_json::Value = serde_json::from_slice(&facts.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "web-01",
                "hostname": null,
                "os": "linux",
                "arch": "x86_64",
                "cpus": 4,
                "memory_bytes": null,
                "zester_version": ZESTER_VERSION,
                "connected_at": "1970-01-01T00:00:00Z",
            })
        );
    }

    #[test]
    fn gathering_names_this_platform() {
        let id = PeelId::parse("web-01").unwrap();
        let facts = Facts::gather(&id, 0);
        assert_eq!(facts.id, "web-01");
        assert_eq!(facts.os, std::env::consts::OS);
        assert_eq!(facts.arch, std::env::consts::ARCH);
        assert!(facts.cpus.is_some_and(|n| n > 0));
    }
}
