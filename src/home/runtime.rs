//! `<home>/nats/runtime.json`: what a running appliance tells the CLI on the same home — its
//! pid, its client and monitoring URLs, when it started. The appliance writes it when it is
//! ready and removes it when it stops; the CLI reads it to find the appliance.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Home;

/// What a running appliance writes to `<home>/nats/runtime.json` for CLI clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// zester's pid.
    pub pid: u32,
    /// Client URL (TLS required).
    pub url: String,
    /// Monitoring URL.
    pub monitor_url: Option<String>,
    /// The Prometheus endpoint (`http://HOST:PORT/metrics`), when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_url: Option<String>,
    /// Unix seconds zester started.
    pub started_at: i64,
}

impl RuntimeInfo {
    /// What `<home>/nats/runtime.json` says, if it is there and readable.
    pub fn read(home: &Home) -> Result<RuntimeInfo, String> {
        let path = home.runtime_file();
        let text = std::fs::read_to_string(&path)
            .map_err(|_| format!("no {} (start it with `zester up`; one that is starting writes it once it says `zester is ready`)", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{} is unreadable: {e}", path.display()))
    }

    /// True while the process that wrote it still runs.
    pub fn is_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    /// The runtime info of a `zester up` that is running now on `home`.
    pub fn live(home: &Home) -> Option<RuntimeInfo> {
        RuntimeInfo::read(home).ok().filter(RuntimeInfo::is_alive)
    }
}
