//! A node among the nodes of a cluster (DESIGN §9): what it tells the others so that any
//! node's callout admits any node's own users, what it learns from nats-server about the
//! cluster (routes, the JetStream meta leader and size, and for `zester status` the nodes, routes
//! and bucket replicas in one document, [`cluster_status`], pure), and how many replicas
//! zester's buckets keep.
//!
//! Every node's callout answers in one queue group, and nats-server does not prefer the local
//! member, so the auth request of node B's store connection is usually answered by another
//! node's callout. B's per-run service and store users exist only in B's memory (only this
//! run's are trusted): B announces their keys on [`ANNOUNCE_SUBJECT`] in the **system
//! account** before they connect, waits for every routed node to answer with its own, and
//! announces again every [`ANNOUNCE_EVERY`]. Only zester's own system connections are in that
//! account (no peel, admin or master can publish there), and an announcement only ever names
//! `service` and `store` users, so hearing one can never make a key an admin.
//!
//! Nodes also announce the revision of every key record they write, on [`KEYS_SUBJECT`] in the
//! same account ([`relay_key_writes`]): a node whose key store watch stalled (its consumer was
//! on a node that died) then reloads within a second instead of after missed heartbeats. A
//! notice carries a revision and nothing else; the records are always read from the bucket.
//!
//! And every admission, on [`SESSIONS_SUBJECT`] ([`relay_sessions`]): on a configuration
//! reload nats-server asks again about every live connection, the answer comes from any
//! node's callout, and that callout must know the connection whichever node let it in. A
//! notice files one session row and grants nothing by itself (the re-admission checks the
//! key's standing again).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::appliance::callout::service::CalloutState;
use crate::identity::keys::UserKey;
use crate::permissions::Role;

/// Where nodes announce their own users, in the system account.
pub const ANNOUNCE_SUBJECT: &str = "zester.cluster.users";
/// The inbox prefix of zester's system connections: the only place an announcement is
/// answered to.
pub const SYSTEM_INBOX: &str = "_INBOX._sys.";
/// How often a node announces its users again (heals an announcement missed in a partition).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(30);
/// How long a starting node waits for the routed nodes to answer its announcement.
pub const INTRODUCE_WAIT: Duration = Duration::from_secs(5);
/// How often a clustered node checks that its buckets have the replicas the cluster allows.
pub const REPLICAS_EVERY: Duration = Duration::from_secs(10);

/// Where nodes announce the revisions of their key writes, in the system account.
pub const KEYS_SUBJECT: &str = "zester.cluster.keys";
/// The largest key notice read (a real one is under 100 bytes).
const MAX_NOTICE_BYTES: usize = 1024;

/// Where nodes announce the sessions their callouts let in, in the system account.
pub const SESSIONS_SUBJECT: &str = "zester.cluster.sessions";
/// Where a starting node asks the others for their session tables, in the system account.
pub const SESSIONS_SYNC_SUBJECT: &str = "zester.cluster.sessions.sync";
/// How long a starting node takes in the other nodes' tables.
pub const SESSIONS_SYNC_WAIT: Duration = Duration::from_secs(10);
/// How many admissions may wait to be announced before new ones are dropped (and counted).
pub const SESSIONS_QUEUE: usize = 4096;

/// The most replicas zester asks JetStream for: R3 survives the loss of any one node.
pub const MAX_REPLICAS: usize = 3;

/// The replicas of a bucket in a cluster of `nodes` JetStream servers: `min(3, nodes)`, at
/// least 1.
pub fn replicas_for(nodes: usize) -> usize {
    nodes.clamp(1, MAX_REPLICAS)
}

/// What a node says about itself: its name, this run, and its per-run users' keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The node's name (`server_name`).
    pub node: String,
    /// A random id of this run of `zester up` (a restarted node replaces its old keys).
    pub run: String,
    /// The per-run service user.
    pub service: UserKey,
    /// The per-run store user.
    pub store: UserKey,
}

/// The other nodes' users as last announced, one announcement per node.
#[derive(Debug, Clone, Default)]
pub struct PeerUsers {
    me: String,
    by_node: HashMap<String, Announcement>,
}

impl PeerUsers {
    /// The table of node `me` (whose own announcements are ignored).
    pub fn new(me: &str) -> PeerUsers {
        PeerUsers {
            me: me.to_string(),
            by_node: HashMap::new(),
        }
    }

    /// Takes in what a node announced; true when the trusted keys changed.
    pub fn hear(&mut self, announcement: Announcement) -> bool {
        if announcement.node == self.me {
            return false;
        }
        let changed = self.by_node.get(&announcement.node) != Some(&announcement);
        self.by_node.insert(announcement.node.clone(), announcement);
        changed
    }

    /// Forgets node `name` (removed from the cluster): its users are no longer trusted; true
    /// when it had announced any.
    pub fn forget(&mut self, name: &str) -> bool {
        self.by_node.remove(name).is_some()
    }

    /// The nodes heard from.
    pub fn nodes(&self) -> usize {
        self.by_node.len()
    }

    /// Every other node's users, by key (for [`CalloutState::set_peers`]).
    pub fn trusted(&self) -> HashMap<UserKey, Role> {
        let mut trusted = HashMap::new();
        for announcement in self.by_node.values() {
            trusted.insert(announcement.service.clone(), Role::Service);
            trusted.insert(announcement.store.clone(), Role::Store);
        }
        trusted
    }
}

/// This node's part in the cluster: its announcement, and the table of what it heard.
#[derive(Clone)]
pub struct Node {
    sys: async_nats::Client,
    me: Announcement,
    state: Arc<CalloutState>,
    peers: Arc<std::sync::Mutex<PeerUsers>>,
    /// The home, whose copy of the node records says which nodes were removed.
    home: crate::home::Home,
}

impl Node {
    /// Node `name` with its per-run `service` and `store` users, on the system connection.
    pub fn new(
        sys: async_nats::Client,
        name: &str,
        (service, store): (UserKey, UserKey),
        state: Arc<CalloutState>,
        home: crate::home::Home,
    ) -> Node {
        let me = Announcement {
            node: name.to_string(),
            run: format!("{:016x}", rand::random::<u64>()),
            service,
            store,
        };
        Node {
            sys,
            peers: Arc::new(std::sync::Mutex::new(PeerUsers::new(name))),
            me,
            state,
            home,
        }
    }

    fn hear(&self, payload: &[u8]) -> Option<Announcement> {
        let announcement: Announcement = serde_json::from_slice(payload).ok()?;
        let removed = crate::appliance::nodes::read_cache(&self.home)
            .iter()
            .any(|n| {
                n.name == announcement.node && n.state == crate::wire::node::NodeState::Removed
            });
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if removed {
            if peers.forget(&announcement.node) {
                self.state.set_peers(peers.trusted());
                tracing::warn!(node = %announcement.node, "cluster: that node was removed: its own users are no longer trusted");
            }
            return None;
        }
        if peers.hear(announcement.clone()) {
            self.state.set_peers(peers.trusted());
            tracing::info!(node = %announcement.node, run = %announcement.run, "cluster: trusting that node's own users");
        }
        Some(announcement)
    }

    fn payload(&self) -> Vec<u8> {
        serde_json::to_vec(&self.me).unwrap_or_default()
    }

    /// Starts answering other nodes' announcements (with this node's own) and re-announcing
    /// every [`ANNOUNCE_EVERY`]. Started as soon as the system connection is up, so that nodes
    /// starting together answer each other while JetStream still elects its leader.
    pub async fn listen(&self) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
        let mut heard = self.sys.subscribe(ANNOUNCE_SUBJECT).await?;
        let node = self.clone();
        Ok(tokio::spawn(async move {
            let mut every = tokio::time::interval(ANNOUNCE_EVERY);
            every.tick().await;
            loop {
                tokio::select! {
                    message = heard.next() => {
                        let Some(message) = message else { return };
                        let from_other = node.hear(&message.payload).is_some_and(|a| a.node != node.me.node);
                        // Only into another node's system inbox, never a subject a sender names
                        // (the system connection may publish anything).
                        if let (true, Some(reply)) = (from_other, message.reply) {
                            if reply.as_str().starts_with(SYSTEM_INBOX) {
                                let _ = node.sys.publish(reply, node.payload().into()).await;
                            }
                        }
                    }
                    _ = every.tick() => {
                        let _ = node.sys.publish(ANNOUNCE_SUBJECT, node.payload().into()).await;
                    }
                }
            }
        }))
    }

    /// Announces this node's users once more, without waiting for answers.
    pub async fn announce(&self) {
        let _ = self
            .sys
            .publish(ANNOUNCE_SUBJECT, self.payload().into())
            .await;
        let _ = self.sys.flush().await;
    }

    /// Announces this node and waits (at most [`INTRODUCE_WAIT`]) until each of the `routed`
    /// nodes answered with its own, so that this node's users are trusted everywhere before
    /// they connect. Returns how many nodes answered.
    pub async fn introduce(&self, routed: usize) -> usize {
        let inbox = self.sys.new_inbox();
        let Ok(mut answers) = self.sys.subscribe(inbox.clone()).await else {
            return 0;
        };
        if self
            .sys
            .publish_with_reply(ANNOUNCE_SUBJECT, inbox, self.payload().into())
            .await
            .is_err()
        {
            return 0;
        }
        let _ = self.sys.flush().await;
        let mut nodes = HashSet::new();
        let deadline = tokio::time::sleep(INTRODUCE_WAIT);
        tokio::pin!(deadline);
        while nodes.len() < routed {
            tokio::select! {
                answer = answers.next() => {
                    let Some(answer) = answer else { break };
                    if let Some(announcement) = self.hear(&answer.payload) {
                        nodes.insert(announcement.node);
                    }
                }
                _ = &mut deadline => {
                    tracing::info!(answered = nodes.len(), routed, "cluster: not every routed node answered this node's announcement (starting, or not running zester); they learn this node's users when they start");
                    break;
                }
            }
        }
        nodes.len()
    }
}

/// Asks this node's nats-server (`server_id`, over the system connection) for one of its
/// monitoring documents (`ROUTEZ`, `JSZ` …): the `data` of the answer.
pub async fn server_document(
    sys: &async_nats::Client,
    server_id: &str,
    what: &str,
) -> Option<Value> {
    let subject = format!("$SYS.REQ.SERVER.{server_id}.{what}");
    let answer = tokio::time::timeout(Duration::from_secs(2), sys.request(subject, "{}".into()))
        .await
        .ok()?
        .ok()?;
    let mut document: Value = serde_json::from_slice(&answer.payload).ok()?;
    Some(document.get_mut("data")?.take())
}

/// Asks the JetStream meta leader (whichever server it is, over the system connection) for one
/// of its monitoring documents (`JSZ`): the `data` of its answer, `None` while there is no
/// leader.
pub async fn leader_document(sys: &async_nats::Client, what: &str) -> Option<Value> {
    let subject = format!("$SYS.REQ.SERVER.PING.{what}");
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        sys.request(subject, r#"{"leader_only":true}"#.into()),
    )
    .await
    .ok()?
    .ok()?;
    let mut document: Value = serde_json::from_slice(&answer.payload).ok()?;
    Some(document.get_mut("data")?.take())
}

/// The other servers this server has routes to (by name; a route pool has several routes per
/// server).
pub fn routed_servers(routez: &Value) -> HashSet<String> {
    routez
        .get("routes")
        .and_then(Value::as_array)
        .map(|routes| {
            routes
                .iter()
                .filter_map(|r| {
                    r.get("remote_name")
                        .or_else(|| r.get("remote_id"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How many nodes the meta group knows and how many are up, refreshed by [`watch_nodes`] for
/// the metrics.
#[derive(Debug, Default)]
pub struct NodeCount {
    known: std::sync::atomic::AtomicU64,
    up: std::sync::atomic::AtomicU64,
}

impl NodeCount {
    /// `(known, up)`.
    pub fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.known.load(Relaxed), self.up.load(Relaxed))
    }
}

/// `(known, up)` of a `JSZ` document: the meta group's peers (this server and its replicas)
/// and those current and online. A server without a leader counts itself only.
pub fn nodes_of(jsz: &Value) -> (u64, u64) {
    let meta = &jsz["meta_cluster"];
    let replicas = meta["replicas"].as_array().cloned().unwrap_or_default();
    let up = replicas
        .iter()
        .filter(|r| r["current"] == true && r["offline"] != true)
        .count() as u64;
    let known = meta["cluster_size"]
        .as_u64()
        .unwrap_or(0)
        .max(replicas.len() as u64 + 1);
    let this = u64::from(meta["leader"].as_str().is_some_and(|l| !l.is_empty()));
    (known, up + this)
}

/// What removing node `name` would leave, from the meta leader's `JSZ`: the nodes still up and
/// current without it (the leader and its current, online replicas), and how many the meta
/// group needs (a majority of its size: a removal does not shrink the group).
/// `None` while there is no leader.
pub fn live_without(jsz: &Value, name: &str) -> Option<(Vec<String>, u64)> {
    let meta = &jsz["meta_cluster"];
    let leader = meta["leader"].as_str().filter(|l| !l.is_empty())?;
    let replicas = meta["replicas"].as_array().cloned().unwrap_or_default();
    let mut live = vec![leader.to_string()];
    live.extend(
        replicas
            .iter()
            .filter(|r| r["current"] == true && r["offline"] != true)
            .filter_map(|r| r["name"].as_str().map(str::to_string)),
    );
    live.retain(|node| node != name);
    let size = meta["cluster_size"]
        .as_u64()
        .unwrap_or(0)
        .max(replicas.len() as u64 + 1);
    Some((live, size / 2 + 1))
}

/// What a node says after writing a key record: the bucket has reached `revision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyNotice {
    /// The node that wrote.
    pub node: String,
    /// The bucket's revision after the write.
    pub revision: u64,
}

impl KeyNotice {
    /// The revision another node than `me` announced in `payload`, if it is a notice.
    pub fn heard(me: &str, payload: &[u8]) -> Option<u64> {
        if payload.len() > MAX_NOTICE_BYTES {
            return None;
        }
        let notice: KeyNotice = serde_json::from_slice(payload).ok()?;
        (notice.node != me).then_some(notice.revision)
    }
}

/// Announces every key write of node `me` on [`KEYS_SUBJECT`], and tells `keys` of every other
/// node's (see the module doc). A notice is never answered, whatever reply subject it names.
pub async fn relay_key_writes(
    sys: async_nats::Client,
    me: String,
    keys: Arc<crate::appliance::keys::KeyStore>,
) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
    let mut heard = sys.subscribe(KEYS_SUBJECT).await?;
    let mut written = keys.written();
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                message = heard.next() => {
                    let Some(message) = message else { return };
                    if let Some(revision) = KeyNotice::heard(&me, &message.payload) {
                        keys.expect(revision);
                    }
                }
                changed = written.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let revision = *written.borrow_and_update();
                    let notice = KeyNotice { node: me.clone(), revision };
                    if let Ok(payload) = serde_json::to_vec(&notice) {
                        let _ = sys.publish(KEYS_SUBJECT, payload.into()).await;
                    }
                }
            }
        }
    }))
}

/// Announces every session node `me`'s callout lets in (handed over on `to_announce`, see
/// [`CalloutState::announce_sessions`]; set before the callout starts, so that what it lets in
/// while the node joins waits there) on [`SESSIONS_SUBJECT`], and files every other node's
/// into this node's session table, so that any node's callout can let any live connection in
/// again after a configuration reload (see the module doc of
/// [`callout::announce`](crate::appliance::callout::announce)). A notice is never answered, and
/// one that fails its checks files nothing.
///
/// Starting, the node also asks the others for their tables on [`SESSIONS_SYNC_SUBJECT`] (once
/// subscribed, so nothing falls between the two) and files what they send within
/// [`SESSIONS_SYNC_WAIT`]: the sessions let in while it was not listening, among them the
/// other nodes' own connections when the nodes start together. A node answers in batches,
/// only into another node's system inbox.
pub async fn relay_sessions(
    sys: async_nats::Client,
    me: String,
    state: Arc<CalloutState>,
    mut to_announce: tokio::sync::mpsc::Receiver<crate::appliance::callout::sessions::Session>,
) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
    use crate::appliance::callout::announce::{SessionNotice, BATCH};
    let mut heard = sys.subscribe(SESSIONS_SUBJECT).await?;
    let mut asked = sys.subscribe(SESSIONS_SYNC_SUBJECT).await?;
    let inbox = sys.new_inbox();
    let mut tables = sys.subscribe(inbox.clone()).await?;
    let _ = sys
        .publish_with_reply(SESSIONS_SYNC_SUBJECT, inbox, me.clone().into())
        .await;
    let filing = state.clone();
    let from = me.clone();
    tokio::spawn(async move {
        let mut filed = 0usize;
        let _ = tokio::time::timeout(SESSIONS_SYNC_WAIT, async {
            while let Some(batch) = tables.next().await {
                if let Ok(sessions) = SessionNotice::heard_batch(&from, &batch.payload) {
                    for session in sessions {
                        filed += usize::from(filing.sessions.hear(session));
                    }
                }
            }
        })
        .await;
        tracing::info!(filed, "cluster: took in the other nodes' session tables");
    });
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                question = asked.next() => {
                    let Some(question) = question else { return };
                    let Some(reply) = question.reply else { continue };
                    if question.payload.as_ref() == me.as_bytes() || !reply.as_str().starts_with(SYSTEM_INBOX) {
                        continue;
                    }
                    let notices: Vec<SessionNotice> = state
                        .sessions
                        .all()
                        .iter()
                        .filter_map(|s| SessionNotice::of(&me, s))
                        .collect();
                    for batch in notices.chunks(BATCH) {
                        if let Ok(payload) = serde_json::to_vec(batch) {
                            let _ = sys.publish(reply.clone(), payload.into()).await;
                        }
                    }
                }
                message = heard.next() => {
                    let Some(message) = message else { return };
                    match SessionNotice::heard(&me, &message.payload) {
                        Ok(Some(session)) => {
                            state.sessions.hear(session);
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!("cluster: ignored a session notice: {e}"),
                    }
                }
                session = to_announce.recv() => {
                    let Some(session) = session else { return };
                    let Some(notice) = SessionNotice::of(&me, &session) else { continue };
                    if let Ok(payload) = serde_json::to_vec(&notice) {
                        let _ = sys.publish(SESSIONS_SUBJECT, payload.into()).await;
                    }
                }
            }
        }
    }))
}

/// Refreshes `count` from this node's server every 10 s.
pub async fn watch_nodes(sys: async_nats::Client, count: Arc<NodeCount>) {
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        let server_id = sys.server_info().server_id;
        if let Some(jsz) = server_document(&sys, &server_id, "JSZ").await {
            let (known, up) = nodes_of(&jsz);
            count.known.store(known, Relaxed);
            count.up.store(up, Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// JetStream's meta group as one server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The meta leader's server name, empty while there is none.
    pub leader: String,
    /// The known size of the cluster (JetStream servers).
    pub cluster_size: usize,
}

/// The meta group of a `JSZ` document; a server without a cluster is a group of one, its own
/// leader.
pub fn meta_of(jsz: &Value) -> Option<Meta> {
    match jsz.get("meta_cluster") {
        Some(meta) => Some(Meta {
            leader: meta
                .get("leader")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            cluster_size: meta
                .get("cluster_size")
                .and_then(Value::as_u64)
                .map_or(1, |n| usize::try_from(n).unwrap_or(1)),
        }),
        None => jsz.get("server_id").map(|_| Meta {
            leader: "(standalone)".to_string(),
            cluster_size: 1,
        }),
    }
}

/// Waits until JetStream has a meta leader (in a cluster, more than half of the nodes must be
/// up to elect one), saying every few seconds what it waits for. Returns the meta group.
pub async fn wait_for_meta_leader(sys: &async_nats::Client, server_id: &str) -> Meta {
    let started = std::time::Instant::now();
    let mut said = started;
    loop {
        let meta = server_document(sys, server_id, "JSZ")
            .await
            .and_then(|jsz| meta_of(&jsz));
        if let Some(meta) = meta.filter(|m| !m.leader.is_empty()) {
            return meta;
        }
        if said.elapsed() >= Duration::from_secs(5) {
            said = std::time::Instant::now();
            tracing::info!(
                waited_secs = started.elapsed().as_secs(),
                "cluster: waiting for JetStream to elect a meta leader (more than half of the nodes must be up and routed)"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Raises the replicas of zester's streams to what a cluster of the current size allows, every
/// [`REPLICAS_EVERY`], never lowering them (a node that is down for a while must not shrink the
/// copies). `streams` are stream names (`KV_zester-keys` …).
pub async fn keep_replicated(
    store: async_nats::Client,
    sys: async_nats::Client,
    streams: Vec<String>,
) {
    let js = async_nats::jetstream::new(store);
    loop {
        let server_id = sys.server_info().server_id;
        if let Some(meta) = server_document(&sys, &server_id, "JSZ")
            .await
            .and_then(|jsz| meta_of(&jsz))
        {
            let want = replicas_for(meta.cluster_size);
            for name in &streams {
                let Ok(mut stream) = js.get_stream(name).await else {
                    continue;
                };
                let Ok(info) = stream.info().await else {
                    continue;
                };
                if info.config.num_replicas >= want {
                    continue;
                }
                let mut config = info.config.clone();
                let from = config.num_replicas;
                config.num_replicas = want;
                match js.update_stream(config).await {
                    Ok(_) => {
                        tracing::info!(stream = %name, from, to = want, "cluster: raised the replicas")
                    }
                    Err(e) => {
                        tracing::warn!(stream = %name, to = want, "cluster: could not raise the replicas: {e}")
                    }
                }
            }
        }
        tokio::time::sleep(REPLICAS_EVERY).await;
    }
}

/// One peer of a Raft group (the meta group, or a bucket's stream) as a server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The server name.
    pub name: String,
    /// Up to date with the group's leader.
    pub current: bool,
    /// Considered offline by the group.
    pub offline: bool,
    /// Operations it is behind the leader, when known.
    pub lag: Option<u64>,
}

/// One of zester's streams and its copies, from the JetStream API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReplicas {
    /// The stream (`KV_zester-keys` …).
    pub stream: String,
    /// The replicas its configuration asks for.
    pub replicas: usize,
    /// The server leading it, if any.
    pub leader: Option<String>,
    /// The other copies.
    pub peers: Vec<Peer>,
}

fn peer_of(value: &Value) -> Option<Peer> {
    Some(Peer {
        name: value.get("name")?.as_str()?.to_string(),
        current: value
            .get("current")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        offline: value
            .get("offline")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        lag: value.get("lag").and_then(Value::as_u64),
    })
}

/// The cluster part of `zester status` (DESIGN §9), from what node `me` of cluster `name`
/// sees: its own `JSZ` and `ROUTEZ` documents, the meta leader's `JSZ` (only the leader knows
/// whether the other peers are current; a follower's own view says nothing about them) and the
/// replicas of zester's streams. Nodes are this one first, then the meta group's peers by name
/// (`current`, `offline`, `lag`, and whether this node has a route to them), then any routed
/// server the meta group does not know yet.
pub fn cluster_status(
    me: &str,
    name: &str,
    jsz: Option<&Value>,
    leader_jsz: Option<&Value>,
    routez: Option<&Value>,
    streams: &[StreamReplicas],
) -> Value {
    let meta = jsz.or(leader_jsz).and_then(meta_of);
    let routed = routez.map(routed_servers).unwrap_or_default();
    let leader = meta
        .as_ref()
        .map(|m| m.leader.clone())
        .filter(|l| !l.is_empty());
    let view = leader_jsz.or(jsz);
    let mut peers: Vec<Peer> = Vec::new();
    if let Some(leader) = &leader {
        peers.push(Peer {
            name: leader.clone(),
            current: true,
            offline: false,
            lag: None,
        });
    }
    peers.extend(
        view.and_then(|j| j.pointer("/meta_cluster/replicas"))
            .and_then(Value::as_array)
            .map(|replicas| replicas.iter().filter_map(peer_of).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    if !peers.iter().any(|p| p.name == me) {
        peers.push(Peer {
            name: me.to_string(),
            current: leader.is_some(),
            offline: false,
            lag: None,
        });
    }
    let mut known: HashSet<String> = HashSet::new();
    peers.retain(|p| known.insert(p.name.clone()));
    let mut strangers: Vec<&String> = routed.iter().filter(|r| !known.contains(*r)).collect();
    strangers.sort();
    peers.sort_by(|a, b| (a.name != me, &a.name).cmp(&(b.name != me, &b.name)));
    let mut nodes: Vec<Value> = peers
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "this_node": p.name == me,
                "current": p.current,
                "offline": p.offline,
                "lag": p.lag,
                "routed": (p.name != me).then(|| routed.contains(&p.name)),
            })
        })
        .collect();
    for server in strangers {
        nodes.push(serde_json::json!({
            "name": server,
            "this_node": false,
            "current": false,
            "offline": false,
            "lag": null,
            "routed": true,
        }));
    }
    let mut routes: Vec<Value> = Vec::new();
    let mut seen = HashSet::new();
    for route in routez
        .and_then(|r| r.get("routes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(server) = route
            .get("remote_name")
            .or_else(|| route.get("remote_id"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        if !seen.insert(server.to_string()) {
            continue;
        }
        let address = match (
            route.get("ip").and_then(Value::as_str),
            route.get("port").and_then(Value::as_u64),
        ) {
            (Some(ip), Some(port)) => format!("{ip}:{port}"),
            _ => String::new(),
        };
        routes.push(serde_json::json!({"name": server, "address": address}));
    }
    routes.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let buckets: Vec<Value> = streams
        .iter()
        .map(|s| {
            let mut current: Vec<&str> = s.leader.iter().map(String::as_str).collect();
            current.extend(
                s.peers
                    .iter()
                    .filter(|p| p.current && !p.offline)
                    .map(|p| p.name.as_str()),
            );
            current.sort_unstable();
            let behind: Vec<Value> = s
                .peers
                .iter()
                .filter(|p| !p.current || p.offline)
                .map(|p| serde_json::json!({"name": p.name, "offline": p.offline, "lag": p.lag}))
                .collect();
            serde_json::json!({
                "stream": s.stream,
                "bucket": s.stream.strip_prefix("KV_").unwrap_or(&s.stream),
                "replicas": s.replicas,
                "leader": s.leader,
                "current": current,
                "behind": behind,
            })
        })
        .collect();
    serde_json::json!({
        "node": me,
        "name": name,
        "leader": leader,
        "cluster_size": meta.map(|m| m.cluster_size),
        "nodes": nodes,
        "routes": routes,
        "buckets": buckets,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_removal_that_would_leave_no_majority_up_is_seen() {
        let jsz = serde_json::json!({"meta_cluster": {
            "leader": "a", "cluster_size": 3,
            "replicas": [
                {"name": "b", "current": false, "offline": true},
                {"name": "c", "current": true}
            ]
        }});
        // b down: removing c leaves a alone, of the 2 the group of 3 needs.
        assert_eq!(live_without(&jsz, "c"), Some((vec!["a".to_string()], 2)));
        // Removing b (the one down) leaves a and c.
        assert_eq!(
            live_without(&jsz, "b"),
            Some((vec!["a".to_string(), "c".to_string()], 2))
        );
        // Removing the leader itself counts it out too.
        assert_eq!(live_without(&jsz, "a"), Some((vec!["c".to_string()], 2)));
        let leaderless = serde_json::json!({"meta_cluster": {"leader": "", "cluster_size": 3}});
        assert_eq!(live_without(&leaderless, "c"), None);
    }

    use super::*;

    fn key(n: u8) -> UserKey {
        let seed = [n; 32];
        let pair = nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, seed).unwrap();
        UserKey::parse(&pair.public_key()).unwrap()
    }

    fn announcement(node: &str, run: &str, n: u8) -> Announcement {
        Announcement {
            node: node.into(),
            run: run.into(),
            service: key(n),
            store: key(n + 1),
        }
    }

    #[test]
    fn nodes_up_are_the_current_replicas_and_this_one() {
        let jsz = serde_json::json!({"meta_cluster": {"leader": "a", "cluster_size": 3, "replicas": [
            {"name": "b", "current": true},
            {"name": "c", "current": false, "offline": true}
        ]}});
        assert_eq!(nodes_of(&jsz), (3, 2));
        let leaderless = serde_json::json!({"meta_cluster": {"cluster_size": 3}});
        assert_eq!(nodes_of(&leaderless), (3, 0));
    }

    #[test]
    fn replicas_are_three_at_most_and_one_at_least() {
        assert_eq!([0, 1, 2, 3, 5].map(replicas_for), [1, 1, 2, 3, 3]);
    }

    #[test]
    fn a_node_trusts_what_others_announce_and_a_restart_replaces_it() {
        let mut peers = PeerUsers::new("a");
        assert!(!peers.hear(announcement("a", "1", 1)), "its own is ignored");
        assert!(peers.trusted().is_empty());
        assert!(peers.hear(announcement("b", "1", 10)));
        assert!(
            !peers.hear(announcement("b", "1", 10)),
            "the same again changes nothing"
        );
        assert_eq!(peers.trusted().get(key(10).as_str()), Some(&Role::Service));
        assert_eq!(peers.trusted().get(key(11).as_str()), Some(&Role::Store));
        // b restarts with new keys: the old ones are no longer trusted.
        assert!(peers.hear(announcement("b", "2", 20)));
        let trusted = peers.trusted();
        assert_eq!(trusted.len(), 2);
        assert!(!trusted.contains_key(key(10).as_str()));
        assert!(peers.hear(announcement("c", "1", 30)));
        assert_eq!(peers.nodes(), 2);
        assert_eq!(peers.trusted().len(), 4);
    }

    #[test]
    fn a_key_notice_is_another_nodes_revision_and_nothing_else() {
        let notice = |node: &str, revision: u64| {
            serde_json::to_vec(&KeyNotice {
                node: node.to_string(),
                revision,
            })
            .unwrap()
        };
        assert_eq!(KeyNotice::heard("a", &notice("b", 42)), Some(42));
        assert_eq!(KeyNotice::heard("a", &notice("a", 42)), None, "its own");
        assert_eq!(KeyNotice::heard("a", b"{\"node\":\"b\"}"), None);
        assert_eq!(KeyNotice::heard("a", b"not json"), None);
        let mut padded = br#"{"node":"b","revision":7,"pad":""#.to_vec();
        padded.extend(std::iter::repeat_n(b'x', MAX_NOTICE_BYTES));
        padded.extend(br#""}"#);
        assert_eq!(KeyNotice::heard("a", &padded), None, "too large");
    }

    #[test]
    fn an_announcement_names_user_keys_only() {
        let text = serde_json::to_string(&announcement("b", "1", 1)).unwrap();
        let account = nkeys::KeyPair::new_account().public_key();
        let forged = text.replace(key(1).as_str(), &account);
        assert!(serde_json::from_str::<Announcement>(&forged).is_err());
    }

    #[test]
    fn the_cluster_status_names_nodes_routes_leader_and_replicas() {
        let jsz = serde_json::json!({"server_id": "NA", "meta_cluster": {
            "leader": "b", "cluster_size": 3,
            "replicas": [
                {"name": "b", "current": true, "active": 1000, "peer": "x"},
                {"name": "c", "current": false, "offline": true, "lag": 7, "peer": "y"}
            ]
        }});
        let routez = serde_json::json!({"routes": [
            {"remote_name": "b", "ip": "127.0.0.1", "port": 7002},
            {"remote_name": "b", "ip": "127.0.0.1", "port": 7002},
            {"remote_name": "d", "ip": "127.0.0.1", "port": 7004}
        ]});
        let streams = [StreamReplicas {
            stream: "KV_zester-keys".into(),
            replicas: 3,
            leader: Some("a".into()),
            peers: vec![
                Peer {
                    name: "b".into(),
                    current: true,
                    offline: false,
                    lag: Some(0),
                },
                Peer {
                    name: "c".into(),
                    current: false,
                    offline: true,
                    lag: Some(7),
                },
            ],
        }];
        let status = cluster_status("a", "zester", Some(&jsz), None, Some(&routez), &streams);
        assert_eq!(status["leader"], "b");
        assert_eq!(status["cluster_size"], 3);
        let nodes = status["nodes"].as_array().unwrap();
        let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["a", "b", "c", "d"],
            "this node, the meta peers, then routed strangers"
        );
        assert_eq!(nodes[0]["this_node"], true);
        assert_eq!(
            (nodes[1]["current"].clone(), nodes[1]["routed"].clone()),
            (true.into(), true.into())
        );
        assert_eq!(
            (
                nodes[2]["offline"].clone(),
                nodes[2]["lag"].clone(),
                nodes[2]["routed"].clone()
            ),
            (true.into(), 7.into(), false.into())
        );
        assert_eq!(status["routes"].as_array().unwrap().len(), 2);
        assert_eq!(status["routes"][0]["address"], "127.0.0.1:7002");
        let bucket = &status["buckets"][0];
        assert_eq!(bucket["bucket"], "zester-keys");
        assert_eq!(bucket["replicas"], 3);
        assert_eq!(bucket["current"], serde_json::json!(["a", "b"]));
        assert_eq!(bucket["behind"][0]["name"], "c");
        // Without a leader yet nothing claims one.
        let none = cluster_status("a", "zester", None, None, None, &[]);
        assert_eq!(none["leader"], Value::Null);
        assert_eq!(none["nodes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn routes_and_meta_are_read_from_the_monitoring_documents() {
        let routez = serde_json::json!({"routes": [
            {"remote_name": "b", "remote_id": "NB"},
            {"remote_name": "b", "remote_id": "NB"},
            {"remote_name": "c", "remote_id": "NC"}
        ]});
        assert_eq!(routed_servers(&routez).len(), 2);
        assert!(routed_servers(&serde_json::json!({})).is_empty());
        let jsz = serde_json::json!({"server_id": "NA", "meta_cluster": {"leader": "b", "cluster_size": 3}});
        assert_eq!(
            meta_of(&jsz),
            Some(Meta {
                leader: "b".into(),
                cluster_size: 3
            })
        );
        let alone = serde_json::json!({"server_id": "NA"});
        assert_eq!(meta_of(&alone).unwrap().cluster_size, 1);
        assert!(!meta_of(&alone).unwrap().leader.is_empty());
        assert_eq!(meta_of(&serde_json::json!({})), None);
    }
}
