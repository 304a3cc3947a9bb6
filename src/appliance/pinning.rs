//! Routes only between the accepted nodes of a cluster: every node's `cluster { tls {} }`
//! lists the accepted nodes' certificates in `pinned_certs`, and nats-server is reloaded when
//! the node records say a node must be let in or shut out ([`needs_reload`]), so that a node
//! removed with `zester node remove` is refused at once. A reload re-authorises every client
//! through the callouts, so none is made for a change that refuses nobody.
//!
//! Why pins and not the CA alone: every node's server certificate is signed by the zester CA,
//! and a route checks only the CA, so a removed node would stay in the cluster (in the
//! JetStream meta group, its callout answering everyone's auth requests) for as long as its
//! certificate lasts. Facts read from nats-server's source (2.15, `server/auth.go`,
//! `server/opts.go`, `server/reload.go`) and measured in `tests/cluster_remove.rs`:
//!
//! - `pinned_certs` is a list of the lowercase hex sha256 of the DER SubjectPublicKeyInfo of a
//!   peer's certificate (`RawSubjectPublicKeyInfo`), checked on the TLS handshake of every
//!   route, accepted or solicited. A pin is of a key, not of a certificate: a node keeps its
//!   key when its certificate is renewed ([`crate::appliance::cert_renewal`]).
//! - A reload may change the cluster's `pinned_certs` and routes; after it nats-server closes
//!   every route whose peer certificate is no longer pinned (`recheckPinnedCerts`).
//!
//! A node never locks out a legitimate one: the pins are those of every *accepted* record
//! ([`pins_for`], pure) plus this node's own certificate, a joining node's record carries its
//! pin from the moment it asks (its key is certified as it is), and a node says its own pin
//! while it runs. When any accepted record has no pin (a node that has not run since pins
//! came, or no records yet), nothing is pinned and the log says which node: routes then
//! accept any certificate of the CA, as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::appliance::broker::config::{self as server_config, ConfigRenderError};
use crate::appliance::broker::supervisor::{BrokerError, ReloadHandle};
use crate::appliance::nodes::{write_cache, NodeStore, SEEN_EVERY};
use crate::authority::Authority;
use crate::home::config::JetStreamLimits;
use crate::home::{self, Home, HomeError};
use crate::wire::node::{NodeRecord, NodeState};

/// What the routes of a node accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pins {
    /// Only certificates of these keys (sorted, each once).
    Pinned(Vec<String>),
    /// Any certificate of the CA, and why.
    Open(String),
}

impl Pins {
    /// The `pinned_certs` to render (none when open).
    pub fn certs(&self) -> &[String] {
        match self {
            Pins::Pinned(pins) => pins,
            Pins::Open(_) => &[],
        }
    }
}

/// Why the accepted nodes in `records` cannot all be pinned, if they cannot.
pub fn unpinnable(records: &[NodeRecord]) -> Option<String> {
    let accepted: Vec<&NodeRecord> = records
        .iter()
        .filter(|n| n.state == NodeState::Accepted)
        .collect();
    if accepted.is_empty() {
        return Some("no node records known yet".into());
    }
    accepted.iter().find(|n| n.route_pin.is_empty()).map(|n| {
        format!(
            "node {}'s record has no certificate pin (it has not run since zester pinned routes; it says it once it runs)",
            n.name
        )
    })
}

/// The pins of node `me`, whose own certificate has pin `own`: every accepted node's and its
/// own, or open when any accepted record has none (see the module doc).
pub fn pins_for(records: &[NodeRecord], me: &str, own: &str) -> Pins {
    if own.is_empty() {
        return Pins::Open("this node's own certificate could not be read".into());
    }
    if let Some(why) = unpinnable(records) {
        return Pins::Open(why);
    }
    let mut pins: Vec<String> = records
        .iter()
        .filter(|n| n.state == NodeState::Accepted && n.name != me)
        .map(|n| n.route_pin.to_ascii_lowercase())
        .chain(std::iter::once(own.to_ascii_lowercase()))
        .collect();
    pins.sort();
    pins.dedup();
    Pins::Pinned(pins)
}

/// The routes of a node: `configured` (its `[cluster] routes` and the accepted nodes it knew
/// at start) without those of removed nodes, then every other accepted node's, each once. A
/// removed node's route is kept when it is the only one (a node never renders no routes).
pub fn routes_for(configured: &[String], records: &[NodeRecord], me: &str) -> Vec<String> {
    let removed: Vec<&str> = records
        .iter()
        .filter(|n| n.state == NodeState::Removed && n.name != me)
        .map(|n| n.cluster_url.as_str())
        .collect();
    let kept: Vec<String> = configured
        .iter()
        .filter(|r| !removed.contains(&r.as_str()))
        .cloned()
        .collect();
    let routes = crate::appliance::nodes::routes_for(&kept, records, me);
    if routes.is_empty() {
        configured.to_vec()
    } else {
        routes
    }
}

/// Whether nats-server, running with the cluster block `running`, must be reloaded for
/// `wanted` (pure): when the pins change while pinned (a node accepted must be let in, a node
/// removed shut out, and a record that lost its pin must not lock its node out), or when it
/// runs open and a removed node with a pin is to be refused. Open to pinned with no node
/// removed, and a change of routes alone, are not worth a reload: each reload re-authorises
/// every client through the callouts, and the routes learn new nodes from each other anyway.
pub fn needs_reload(
    running: Option<&Rendered>,
    wanted: Option<&Rendered>,
    records: &[NodeRecord],
) -> bool {
    let (Some(running), Some(wanted)) = (running, wanted) else {
        return false;
    };
    match (&running.pins, &wanted.pins) {
        (Pins::Pinned(now), Pins::Pinned(then)) => now != then,
        (Pins::Pinned(_), Pins::Open(_)) => true,
        (Pins::Open(_), Pins::Pinned(_)) => records
            .iter()
            .any(|n| n.state == NodeState::Removed && !n.route_pin.is_empty()),
        (Pins::Open(_), Pins::Open(_)) => false,
    }
}

/// What went wrong rendering or reloading.
#[derive(Debug, thiserror::Error)]
pub enum PinningError {
    /// The configuration could not be rendered.
    #[error(transparent)]
    Render(#[from] ConfigRenderError),
    /// It could not be written.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// nats-server did not take it.
    #[error("nats-server did not reload the new routes: {0}")]
    Reload(#[from] BrokerError),
}

/// A node's `cluster {}` block as it stands: its name, listen address and start routes.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// `[cluster] name`.
    pub name: String,
    /// `[cluster] listen`.
    pub listen: String,
    /// The routes it started with.
    pub routes: Vec<String>,
}

/// Everything `nats-server.conf` is rendered from, owned, so that it can be rendered again
/// while the node runs (new pins and routes).
#[derive(Clone)]
pub struct Rendering {
    /// The home.
    pub home: Home,
    /// Its keys and JWTs.
    pub authority: Arc<Authority>,
    /// The `default_sentinel` JWT.
    pub sentinel: String,
    /// `[jetstream]` limits.
    pub limits: JetStreamLimits,
    /// `server_name`.
    pub server_name: String,
    /// The cluster block, on a node that runs clustered.
    pub cluster: Option<ClusterPlan>,
}

/// What a rendering put in the cluster block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The routes.
    pub routes: Vec<String>,
    /// The pins.
    pub pins: Pins,
}

impl Rendering {
    /// This node's own pin, from its installed certificate (empty when it cannot be read).
    pub fn own_pin(&self) -> String {
        std::fs::read_to_string(self.home.server_cert())
            .ok()
            .and_then(|pem| crate::pki::route_pin_from_cert_pem(&pem).ok())
            .unwrap_or_default()
    }

    /// What the cluster block holds for `records`.
    pub fn plan(&self, records: &[NodeRecord]) -> Option<Rendered> {
        let cluster = self.cluster.as_ref()?;
        Some(Rendered {
            routes: routes_for(&cluster.routes, records, &self.server_name),
            pins: pins_for(records, &self.server_name, &self.own_pin()),
        })
    }

    /// Renders `nats-server.conf` for clients on `listen`, monitoring on `monitor` and the
    /// node records `records`, and writes it (0600, atomically); returns what the cluster
    /// block holds.
    pub fn write(
        &self,
        listen: &str,
        monitor: &str,
        records: &[NodeRecord],
    ) -> Result<Option<Rendered>, PinningError> {
        let plan = self.plan(records);
        let placement = server_config::Placement {
            server_name: &self.server_name,
            cluster: match (&self.cluster, &plan) {
                (Some(cluster), Some(plan)) => Some(server_config::ClusterInput {
                    name: &cluster.name,
                    listen: &cluster.listen,
                    routes: &plan.routes,
                    pinned_certs: plan.pins.certs(),
                }),
                _ => None,
            },
        };
        let rendered = server_config::render_for_home(
            &self.home,
            &self.authority,
            &self.sentinel,
            listen,
            monitor,
            self.limits,
            placement,
        )?;
        home::write_atomic(
            &self.home.nats_config_file(),
            rendered.as_bytes(),
            home::SECRET_MODE,
        )?;
        Ok(plan)
    }
}

/// Logs what `rendered` pins (at start, and after each change).
pub fn log_pins(rendered: &Rendered) {
    match &rendered.pins {
        Pins::Pinned(pins) => tracing::info!(
            pinned = pins.len(),
            routes = rendered.routes.len(),
            "cluster: routes accept only the accepted nodes' certificates (pinned_certs)"
        ),
        Pins::Open(why) => tracing::warn!(
            "cluster: routes are not pinned, any certificate of the zester CA is accepted (a removed node is not refused): {why}"
        ),
    }
}

/// Follows the node records while the node runs: on every change (and every
/// [`SEEN_EVERY`]) the home's copy is rewritten and, when [`needs_reload`] says so against
/// what nats-server runs with (`running`), `nats-server.conf` is rendered again for `listen`
/// and `monitor` and nats-server reloaded. A failed reload is tried again at the next change.
pub async fn follow(
    store: Arc<NodeStore>,
    rendering: Rendering,
    (listen, monitor): (String, String),
    reload: ReloadHandle,
    mut running: Option<Rendered>,
) {
    loop {
        let mut changes = match store.changes().await {
            Ok(changes) => Some(changes),
            Err(e) => {
                tracing::debug!("cluster: cannot watch the node records ({e}); reading them every {SEEN_EVERY:?}");
                None
            }
        };
        loop {
            if let Ok(records) = store.list().await {
                write_cache(&rendering.home, &records);
                let wanted = rendering.plan(&records);
                if needs_reload(running.as_ref(), wanted.as_ref(), &records) {
                    let started = Instant::now();
                    match apply(&rendering, (&listen, &monitor), &records, &reload).await {
                        Ok(rendered) => {
                            tracing::info!(
                                reload_ms = started.elapsed().as_millis() as u64,
                                "cluster: the node records changed: nats-server reloaded with the new routes"
                            );
                            if let Some(rendered) = &rendered {
                                log_pins(rendered);
                            }
                            running = rendered;
                        }
                        Err(e) => tracing::warn!(
                            "cluster: the node records changed, but {e}; tried again at the next change"
                        ),
                    }
                }
            }
            let ended = match changes.as_mut() {
                Some(changes) => matches!(
                    tokio::time::timeout(SEEN_EVERY, changes.next()).await,
                    Ok(None)
                ),
                None => {
                    tokio::time::sleep(SEEN_EVERY).await;
                    true
                }
            };
            if ended {
                // The watch ended (or never began): begin it again after a pause.
                tokio::time::sleep(Duration::from_secs(1)).await;
                break;
            }
        }
    }
}

async fn apply(
    rendering: &Rendering,
    (listen, monitor): (&str, &str),
    records: &[NodeRecord],
    reload: &ReloadHandle,
) -> Result<Option<Rendered>, PinningError> {
    let rendered = rendering.write(listen, monitor, records)?;
    reload.reload().await?;
    Ok(rendered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, state: NodeState, pin: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            nkey: String::new(),
            xkey: String::new(),
            state,
            client_url: format!("tls://{name}:4222"),
            cluster_url: format!("{name}:6222"),
            tls_key: String::new(),
            tls_names: Vec::new(),
            hostname: String::new(),
            since: 0,
            changed_at: 0,
            changed_by: "node".into(),
            seen_at: 0,
            route_pin: pin.into(),
            sys_user: String::new(),
            revoked: None,
        }
    }

    #[test]
    fn the_accepted_nodes_and_this_one_are_pinned_and_no_other() {
        let records = [
            node("a", NodeState::Accepted, "aa"),
            node("b", NodeState::Accepted, "BB"),
            node("c", NodeState::Removed, "cc"),
            node("d", NodeState::Pending, "dd"),
        ];
        assert_eq!(
            pins_for(&records, "a", "a2"),
            Pins::Pinned(vec!["a2".into(), "bb".into()]),
            "this node's own certificate, not what its record says"
        );
        assert_eq!(unpinnable(&records), None);
    }

    #[test]
    fn a_record_without_a_pin_leaves_routes_open() {
        let records = [
            node("a", NodeState::Accepted, "aa"),
            node("b", NodeState::Accepted, ""),
            node("c", NodeState::Removed, ""),
        ];
        let Pins::Open(why) = pins_for(&records, "a", "aa") else {
            panic!("pinned without b's pin");
        };
        assert!(why.contains("node b"), "{why}");
        assert!(matches!(pins_for(&[], "a", "aa"), Pins::Open(_)));
        assert!(matches!(pins_for(&records[..1], "a", ""), Pins::Open(_)));
        assert!(pins_for(&records, "a", "aa").certs().is_empty());
    }

    #[test]
    fn a_reload_is_made_to_let_a_node_in_or_shut_one_out_and_for_nothing_else() {
        let pinned = |pins: &[&str]| Rendered {
            routes: vec!["b:6222".into()],
            pins: Pins::Pinned(pins.iter().map(|p| p.to_string()).collect()),
        };
        let open = Rendered {
            routes: vec!["b:6222".into()],
            pins: Pins::Open("no records".into()),
        };
        let accepted = [
            node("a", NodeState::Accepted, "aa"),
            node("b", NodeState::Accepted, "bb"),
        ];
        let mut removed = accepted.to_vec();
        removed.push(node("c", NodeState::Removed, "cc"));
        let ab = pinned(&["aa", "bb"]);
        // Let in a node accepted, shut out one removed.
        assert!(needs_reload(
            Some(&ab),
            Some(&pinned(&["aa", "bb", "dd"])),
            &accepted
        ));
        assert!(needs_reload(
            Some(&pinned(&["aa", "bb", "cc"])),
            Some(&ab),
            &removed
        ));
        // Never lock out a node whose record lost its pin.
        assert!(needs_reload(Some(&ab), Some(&open), &accepted));
        // Open to pinned only when someone is to be refused.
        assert!(!needs_reload(Some(&open), Some(&ab), &accepted));
        assert!(needs_reload(Some(&open), Some(&ab), &removed));
        // Nothing changed, or only the routes.
        let mut more_routes = ab.clone();
        more_routes.routes.push("c:6222".into());
        assert!(!needs_reload(Some(&ab), Some(&more_routes), &accepted));
        assert!(!needs_reload(Some(&open), Some(&open), &removed));
        assert!(!needs_reload(None, None, &removed));
    }

    #[test]
    fn a_removed_nodes_route_goes_unless_it_is_the_only_one() {
        let records = [
            node("a", NodeState::Accepted, "aa"),
            node("b", NodeState::Accepted, "bb"),
            node("c", NodeState::Removed, "cc"),
        ];
        let configured = ["c:6222".to_string(), "b:6222".to_string()];
        assert_eq!(routes_for(&configured, &records, "a"), ["b:6222"]);
        let only = ["c:6222".to_string()];
        assert_eq!(routes_for(&only, &records[2..], "a"), ["c:6222"]);
    }
}
