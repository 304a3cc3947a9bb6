//! `zester node join|accept|list|remove`: growing a cluster. `join` runs on the new machine
//! (a fresh home): it makes the node's own keys, proves them over the one NATS port like an
//! enrolling peel, waits for an admin's `zester node accept NAME`, then writes its home from
//! the sealed bundle; `zester up` starts it. The other three go through a running node's admin
//! API (`zester.admin.node.*`).

use std::path::PathBuf;
use std::time::Duration;

use data_encoding::BASE64URL_NOPAD;
use serde_json::{json, Value};

use crate::cli::client::{admin_connect_to, admin_request, AdminTarget, StatusError};
use crate::cli::output::Output;
use crate::home::join::{NodeKeys, NodePlacement};
use crate::home::{Home, HomeError};
use crate::identity::time::rfc3339;
use crate::pki::{P256PublicKey, ServerNames};
use crate::wire::admin::{NodeChange, NODE_ACCEPT, NODE_LIST, NODE_REMOVE};
use crate::wire::enrol::RequestError;
use crate::wire::node::{
    open_bundle, sign_node_request, BundleError, NodeAnswer, NodeOp, NodeRecord, NodeRequest,
    NodeState,
};

/// How often `node join --wait` asks again.
const POLL: Duration = Duration::from_secs(2);

/// Why a node command failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeCommandError {
    /// The running node could not be reached, or refused.
    #[error(transparent)]
    Appliance(#[from] StatusError),
    /// This home already holds keys.
    #[error("{} already holds a zester home: a node joins with a fresh home (pass --home DIR or ZESTER_HOME for a new one)", root.display())]
    Initialised {
        /// The home.
        root: PathBuf,
    },
    /// Neither --pin nor --ca.
    #[error("say how to trust the cluster's certificate: --pin sha256:… (printed by `zester init` on the first node) or --ca FILE (its pki/ca.pem)")]
    NoTrust,
    /// The CA file's pin is not the one given.
    #[error("{ca}: its pin is {found}, not {pin}: not the CA you meant")]
    PinMismatch {
        /// The file.
        ca: String,
        /// Its pin.
        found: String,
        /// The pin given.
        pin: String,
    },
    /// A bad address.
    #[error("{flag} {value:?} is not HOST:PORT")]
    Address {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
    },
    /// The name is not one.
    #[error("--name {0:?}: a node name is 1 to 64 letters, digits, '-', '_' or '.'")]
    Name(String),
    /// The home could not be read or written.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// TLS material.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The TLS setup for a pin.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The connection failed.
    #[error("cannot connect to {url} to join: {source}{hint}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
        /// What it likely means.
        hint: &'static str,
    },
    /// The request could not be signed or sent.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// No answer.
    #[error("no answer from {url} within {after:?}: is zester running there, as a cluster node (--cluster-listen)?")]
    NoAnswer {
        /// The URL.
        url: String,
        /// How long it waited.
        after: Duration,
    },
    /// The cluster refused.
    #[error("the cluster refused: {0}")]
    Refused(String),
    /// An answer that is not one.
    #[error("unreadable answer: {0}")]
    Unreadable(#[from] serde_json::Error),
    /// The bundle did not open.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Sending failed.
    #[error("sending the request: {0}")]
    Send(#[from] async_nats::RequestError),
}

/// What `zester node join` was given.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// `--server URL`: a running node's client URL.
    pub server: String,
    /// `--pin sha256:…`.
    pub pin: Option<String>,
    /// `--ca FILE`.
    pub ca: Option<PathBuf>,
    /// `--name NAME`.
    pub name: String,
    /// `--listen HOST:PORT` (clients).
    pub listen: String,
    /// `--cluster-listen HOST:PORT` (routes).
    pub cluster_listen: String,
    /// `--monitor HOST:PORT` (loopback).
    pub monitor: String,
    /// `--wait`: until an admin decides.
    pub wait: bool,
    /// This machine's host name.
    pub hostname: String,
}

/// `zester node join`: asks, and with `--wait` waits, to be a node; writes the home once
/// accepted. `progress` hears each step.
pub async fn join(
    home: &Home,
    options: &JoinOptions,
    progress: impl Fn(&str),
) -> Result<Output, NodeCommandError> {
    if home.is_initialised() {
        return Err(NodeCommandError::Initialised {
            root: home.root().to_path_buf(),
        });
    }
    if !crate::wire::node::valid_name(&options.name) {
        return Err(NodeCommandError::Name(options.name.clone()));
    }
    let placement = NodePlacement {
        name: options.name.clone(),
        listen: options.listen.clone(),
        monitor: options.monitor.clone(),
        cluster_listen: options.cluster_listen.clone(),
    };
    let keys = home.node_keys()?;
    let fingerprint = crate::wire::record::fingerprint(&keys.key.public_key());
    progress(&format!(
        "node {} key {} (fingerprint {fingerprint})",
        options.name,
        keys.key.public_key()
    ));
    let request = node_request(options, &keys)?;
    let client = connect(options, &keys, &progress).await?;
    let joined = ask(&client, options, &keys, &request, NodeOp::NodeJoin).await?;
    progress(&format!("join recorded: {}", joined.state.as_str()));
    if options.wait && joined.state == NodeState::Pending {
        progress(&format!(
            "waiting for an admin to run `zester node accept {} --fingerprint {fingerprint}` on a running node (Ctrl-C stops; running this again resumes with the same key)",
            options.name
        ));
    }
    loop {
        let fetched = ask(&client, options, &keys, &request, NodeOp::NodeFetch).await?;
        match (fetched.state, fetched.bundle, fetched.sender) {
            (NodeState::Accepted, Some(sealed), Some(sender)) => {
                let bundle = open_bundle(&sealed, &sender, &keys.xkey)?;
                home.write_joined(&bundle, &keys, &placement, crate::home::now_unix())?;
                let human = format!(
                    "node {} joined cluster {}: home written to {} (routes to {}).\nStart it with `zester {}up`.\n",
                    options.name,
                    bundle.cluster_name,
                    home.root().display(),
                    if bundle.routes.is_empty() { "none".to_string() } else { bundle.routes.join(", ") },
                    match std::env::var_os("ZESTER_HOME") {
                        Some(_) => String::new(),
                        None => format!("--home {} ", home.root().display()),
                    },
                );
                return Ok(Output {
                    human,
                    json: json!({
                        "name": options.name,
                        "state": "accepted",
                        "fingerprint": fingerprint,
                        "cluster": bundle.cluster_name,
                        "routes": bundle.routes,
                        "client_urls": bundle.client_urls,
                        "home": home.root(),
                    }),
                    exit_code: 0,
                });
            }
            (NodeState::Pending, _, _) if options.wait => tokio::time::sleep(POLL).await,
            (state, _, _) => {
                let human = format!(
                    "{}: ask an admin to run `zester node accept {} --fingerprint {fingerprint}` on a running node, then run this again (or use --wait)\n",
                    state.as_str(),
                    options.name,
                );
                return Ok(Output {
                    human,
                    json: json!({
                        "name": options.name,
                        "state": state.as_str(),
                        "fingerprint": fingerprint,
                    }),
                    exit_code: 2,
                });
            }
        }
    }
}

/// The request a node sends: its keys, its certificate's names, where it will listen.
fn node_request(options: &JoinOptions, keys: &NodeKeys) -> Result<NodeRequest, NodeCommandError> {
    let address = |flag: &'static str, value: &str| {
        split_host_port(value).ok_or_else(|| NodeCommandError::Address {
            flag,
            value: value.to_string(),
        })
    };
    let (listen_host, listen_port) = address("--listen", &options.listen)?;
    let (cluster_host, cluster_port) = address("--cluster-listen", &options.cluster_listen)?;
    let reachable = |host: &str| match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => options.hostname.clone(),
        _ => host.to_string(),
    };
    let mut extra = Vec::new();
    for host in [&listen_host, &cluster_host] {
        let host = reachable(host).trim_matches(['[', ']']).to_string();
        if !host.is_empty() && !extra.contains(&host) {
            extra.push(host);
        }
    }
    let names = ServerNames::defaults(&options.hostname, &extra)?;
    let mut tls_names = names.dns.clone();
    tls_names.extend(names.ips.iter().map(|ip| ip.to_string()));
    let point = P256PublicKey::of_key_pem(&keys.tls_key_pem)?;
    Ok(NodeRequest {
        op: NodeOp::NodeJoin,
        name: options.name.clone(),
        nkey: keys.key.public_key(),
        xkey: keys.xkey.public_key(),
        tls_key: BASE64URL_NOPAD.encode(point.point()),
        tls_names,
        client_url: format!("tls://{}:{listen_port}", reachable(&listen_host)),
        cluster_url: format!("{}:{cluster_port}", reachable(&cluster_host)),
        hostname: options.hostname.clone(),
        at: 0,
    })
}

/// `HOST:PORT` (IPv6 in brackets) split, checked as `zester.toml` checks addresses.
fn split_host_port(value: &str) -> Option<(String, u16)> {
    crate::home::config::check_address("address", value).ok()?;
    let (host, port) = value.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// Connects with the node key alone (the callout admits it as an enrolling key that may only
/// ask on `zester.enrol.<its key>`), trusting the CA file or the pinned CA; with `--wait` a
/// node that is not up yet is waited for.
async fn connect(
    options: &JoinOptions,
    keys: &NodeKeys,
    progress: &impl Fn(&str),
) -> Result<async_nats::Client, NodeCommandError> {
    let nkey = keys.key.public_key();
    let trust = async_nats::ConnectOptions::with_nkey(keys.key.seed().unwrap_or_default());
    let trust = match (&options.ca, &options.pin) {
        (Some(ca), pin) => {
            if let Some(pin) = pin {
                let found = crate::home::cert_file_pin(ca)?;
                if !found.eq_ignore_ascii_case(pin.trim()) {
                    return Err(NodeCommandError::PinMismatch {
                        ca: ca.display().to_string(),
                        found,
                        pin: pin.clone(),
                    });
                }
            }
            trust.add_root_certificates(ca.clone())
        }
        (None, Some(pin)) => trust.tls_client_config(crate::net::tls::pinned_client_config(pin)?),
        (None, None) => return Err(NodeCommandError::NoTrust),
    };
    let trust = trust
        .require_tls(true)
        .name(format!("zester-node-{}", options.name))
        .custom_inbox_prefix(format!("_INBOX.{nkey}"))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(3));
    crate::net::connect::connect_waiting(&trust, &options.server, options.wait, progress)
        .await
        .map_err(|source| {
            let refused = crate::net::connect::is_refusal(&source);
            NodeCommandError::Connect {
                url: options.server.clone(),
                source,
                hint: if refused {
                    " (the cluster refused this key, or this address made too many attempts; see the audit log there)"
                } else {
                    " (is zester up running there, with --cluster-listen? `--wait` waits for it)"
                },
            }
        })
}

/// Sends one signed request (`op`, stamped now) and unwraps the answer.
async fn ask(
    client: &async_nats::Client,
    options: &JoinOptions,
    keys: &NodeKeys,
    request: &NodeRequest,
    op: NodeOp,
) -> Result<NodeAnswer, NodeCommandError> {
    let request = NodeRequest {
        op,
        at: crate::home::now_unix(),
        ..request.clone()
    };
    let signed = sign_node_request(&keys.key, &request)?;
    let body = serde_json::to_vec(&signed)?;
    let wait = Duration::from_secs(10);
    let reply = tokio::time::timeout(
        wait,
        client.request(crate::wire::subjects::enrol(&request.nkey), body.into()),
    )
    .await
    .map_err(|_| NodeCommandError::NoAnswer {
        url: options.server.clone(),
        after: wait,
    })??;
    let answer: Value = serde_json::from_slice(&reply.payload)?;
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Err(NodeCommandError::Refused(error.to_string()));
    }
    Ok(serde_json::from_value(answer["ok"].clone())?)
}

/// `zester node list`.
pub async fn list(home: &Home, target: &AdminTarget) -> Result<Output, NodeCommandError> {
    let client = admin_connect_to(home, target).await?;
    let answer = admin_request(&client, NODE_LIST, &json!({})).await?;
    let nodes: Vec<NodeRecord> = serde_json::from_value(answer.clone())?;
    let mut human = format!(
        "{:<20} {:<9} {:<30} {:<24} {:<20} {}\n",
        "NAME", "STATE", "URL", "ROUTES AT", "SEEN", "FINGERPRINT"
    );
    for node in &nodes {
        human.push_str(&format!(
            "{:<20} {:<9} {:<30} {:<24} {:<20} {}\n",
            node.name,
            node.state.as_str(),
            node.client_url,
            node.cluster_url,
            if node.seen_at > 0 {
                rfc3339(node.seen_at)
            } else {
                "-".into()
            },
            node.fingerprint(),
        ));
    }
    human.push_str(&format!("{} node(s)\n", nodes.len()));
    Ok(Output {
        human,
        json: answer,
        exit_code: 0,
    })
}

/// `zester node accept NAME [--fingerprint FP]` and `zester node remove NAME [--force]`.
pub async fn change(
    home: &Home,
    target: &AdminTarget,
    name: &str,
    fingerprint: Option<String>,
    remove: bool,
    force: bool,
) -> Result<Output, NodeCommandError> {
    let client = admin_connect_to(home, target).await?;
    let subject = if remove { NODE_REMOVE } else { NODE_ACCEPT };
    let asked = admin_request(
        &client,
        subject,
        &NodeChange {
            name: name.to_string(),
            fingerprint,
            force,
        },
    )
    .await;
    let answer = match asked {
        // Any node's service may answer, the one being removed too, whose answer can be lost
        // with the routes its removal closes: the node records say whether it was done.
        Err(StatusError::NoAnswer) if remove => match removed_record(&client, name).await {
            Some(record) => {
                let mut human = removed_text(&record);
                human.push_str("(the answer was lost, likely with the removed node's routes; the node records show it removed)\n");
                let mut json = serde_json::to_value(&record)?;
                json["answer_lost"] = json!(true);
                return Ok(Output {
                    human,
                    json,
                    exit_code: 0,
                });
            }
            None => return Err(StatusError::NoAnswer.into()),
        },
        other => other?,
    };
    let record: NodeRecord = serde_json::from_value(answer.clone())?;
    let human = if remove {
        removed_text(&record)
    } else {
        format!(
            "node {}: accepted ({}); its `zester node join` now writes its home\n",
            record.name,
            record.fingerprint()
        )
    };
    Ok(Output {
        human,
        json: answer,
        exit_code: 0,
    })
}

/// The record of `name` once the cluster's node records show it removed (asked for up to
/// 10 s, through whichever node answers), `None` if they do not.
async fn removed_record(
    client: &crate::cli::client::AdminClient,
    name: &str,
) -> Option<NodeRecord> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(answer) = admin_request(client, NODE_LIST, &json!({})).await {
            let nodes: Vec<NodeRecord> = serde_json::from_value(answer).unwrap_or_default();
            if let Some(record) = nodes.into_iter().find(|n| n.name == name) {
                if record.state == NodeState::Removed {
                    return Some(record);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// What `zester node remove` says: what was taken from the node, and what it still holds.
fn removed_text(record: &NodeRecord) -> String {
    let mut text = format!(
        "node {}: removed (it may not fetch again; the other nodes ignore what it announces)\n",
        record.name
    );
    let Some(revoked) = &record.revoked else {
        return text;
    };
    if revoked.sys_user.is_empty() {
        text.push_str("  system user: not known (the node never ran since zester recorded it): nothing revoked\n");
    } else {
        text.push_str(&format!(
            "  system user {}: revoked in the SYS account JWT (confirmed by {} server(s)); its system connection is closed everywhere\n",
            revoked.sys_user, revoked.sys_updated_on
        ));
    }
    if revoked.routes_refused {
        text.push_str("  routes: its certificate is no longer pinned; every node drops its routes and refuses new ones\n");
    } else {
        text.push_str(&format!(
            "  routes: NOT refused, routes are not pinned ({}); it can still route to the others\n",
            revoked.routes_note
        ));
    }
    text.push_str(
        "  it still holds the cluster's signing seeds, the CA key and the shared callout, master and admin creds: only a full re-key takes those from it (see README, \"Removing a node\")\n",
    );
    text
}
