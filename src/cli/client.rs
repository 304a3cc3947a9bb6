//! The CLI's client of a running appliance: connect with an admin's creds, send one admin
//! request signed by that admin's key and unwrap its `{"ok": …}` / `{"error": …}` answer, and
//! say clearly why there is no answer (not running, restarting, nothing serving).
//!
//! Where to connect and as whom ([`AdminTarget`]): on the appliance host nothing needs to be
//! given (the home's admin creds, `runtime.json`'s URL, the home's CA); from elsewhere an admin
//! passes `--creds` (their own, from `zester admin add`), `--server` and `--ca`, or a nats CLI
//! context (`--context NAME`: its `url`, `creds` and `ca`). Flags win over the context, the
//! context over the home. Every request carries a signature by the creds' key
//! (`wire::admin_auth`), which is how the appliance knows who asked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::home::runtime::RuntimeInfo;
use crate::home::Home;
use crate::net::connect::{self, ClientSpec, Endpoint};
use crate::wire::admin::STATUS_SUBJECT;
use crate::wire::subjects::ADMIN_INBOX_PREFIX;

/// Where an admin command connects and with which creds; `None` fields come from the context,
/// then from the home.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminTarget {
    /// The admin's creds file (`--creds`, `ZESTER_ADMIN_CREDS`).
    pub creds: Option<PathBuf>,
    /// The appliance's URL (`--server`).
    pub server: Option<String>,
    /// The CA the server's certificate must chain to (`--ca`).
    pub ca: Option<PathBuf>,
    /// A nats CLI context name (`--context`).
    pub context: Option<String>,
}

/// The fields of a nats CLI context zester uses (jsm.go `natscontext`: `url`, `creds`, `ca`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct NatsContext {
    #[serde(default)]
    url: String,
    #[serde(default)]
    creds: String,
    #[serde(default)]
    ca: String,
}

/// Reads the nats CLI context `name` from the CLI's context directory.
fn read_context(name: &str) -> Result<NatsContext, StatusError> {
    crate::cli::context::validate_name(name).map_err(|source| StatusError::Context {
        name: name.to_string(),
        reason: source.to_string(),
    })?;
    let dir = crate::cli::context::context_dir(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
    .map_err(|source| StatusError::Context {
        name: name.to_string(),
        reason: source.to_string(),
    })?;
    let path = dir.join(format!("{name}.json"));
    let text = std::fs::read(&path).map_err(|source| StatusError::ContextFile {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| StatusError::ContextJson { path, source })
}

/// A connection to the appliance and the admin key its requests are signed with.
pub struct AdminClient {
    client: async_nats::Client,
    key: Arc<nkeys::KeyPair>,
}

impl std::ops::Deref for AdminClient {
    type Target = async_nats::Client;
    fn deref(&self) -> &async_nats::Client {
        &self.client
    }
}

/// What an admin request goes out on: an [`AdminClient`] signs it, a bare client does not
/// (enough for reads such as status).
pub trait AdminChannel {
    /// The connection.
    fn nats(&self) -> &async_nats::Client;
    /// The key requests are signed with, if any.
    fn signer(&self) -> Option<&nkeys::KeyPair>;
}

impl AdminChannel for AdminClient {
    fn nats(&self) -> &async_nats::Client {
        &self.client
    }
    fn signer(&self) -> Option<&nkeys::KeyPair> {
        Some(&self.key)
    }
}

impl AdminChannel for async_nats::Client {
    fn nats(&self) -> &async_nats::Client {
        self
    }
    fn signer(&self) -> Option<&nkeys::KeyPair> {
        None
    }
}

/// Connects to the running appliance with the home's admin creds (for `zester status`,
/// `zester key`).
pub async fn admin_connect(home: &Home) -> Result<AdminClient, StatusError> {
    admin_connect_to(home, &AdminTarget::default()).await
}

/// Connects as `target` says (see [`AdminTarget`]), falling back to the home.
pub async fn admin_connect_to(
    home: &Home,
    target: &AdminTarget,
) -> Result<AdminClient, StatusError> {
    let context = match &target.context {
        Some(name) => Some(read_context(name)?),
        None => None,
    };
    let from_context = |field: fn(&NatsContext) -> &String| {
        context
            .as_ref()
            .map(field)
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let creds = target
        .creds
        .clone()
        .or_else(|| from_context(|c| &c.creds).map(PathBuf::from))
        .unwrap_or_else(|| home.service_creds("admin"));
    let ca = target
        .ca
        .clone()
        .or_else(|| from_context(|c| &c.ca).map(PathBuf::from))
        .unwrap_or_else(|| home.ca_cert());
    let server = target.server.clone().or_else(|| {
        // A context may list several servers, comma-separated: the first one.
        from_context(|c| &c.url)
            .map(|url| url.split(',').next().unwrap_or_default().trim().to_string())
    });
    // Without a server given, the home's runtime.json says where (and whether) zester runs:
    // asked first, so that "not running" is the answer on a host where nothing runs.
    let runtime = match &server {
        Some(_) => None,
        None => Some(RuntimeInfo::read(home).map_err(|reason| StatusError::NotRunning { reason })?),
    };
    let key = crate::home::read_creds(&creds)
        .map_err(|source| StatusError::Creds { source })?
        .key()
        .seed()
        .ok()
        .and_then(|seed| nkeys::KeyPair::from_seed(&seed).ok())
        .ok_or_else(|| StatusError::Context {
            name: creds.display().to_string(),
            reason: "the creds hold no usable seed".into(),
        })?;
    let key = Arc::new(key);
    let spec = ClientSpec {
        creds: &creds,
        name: "zester-admin-cli",
        inbox_prefix: ADMIN_INBOX_PREFIX,
        long_lived: false,
    };
    let Some(runtime) = runtime else {
        let url = server.unwrap_or_default();
        if !ca.is_file() {
            return Err(StatusError::NoCa { path: ca });
        }
        let endpoint = Endpoint {
            url: url.clone(),
            ca,
        };
        let client =
            connect::connect(&endpoint, &spec)
                .await
                .map_err(|e| StatusError::Connect {
                    url,
                    reason: e.to_string(),
                })?;
        return Ok(AdminClient { client, key });
    };
    let endpoint = Endpoint {
        url: runtime.url.clone(),
        ca,
    };
    let client = connect::connect(&endpoint, &spec).await.map_err(|e| {
        if runtime.is_alive() {
            StatusError::Unreachable {
                pid: runtime.pid,
                reason: e.to_string(),
            }
        } else {
            StatusError::NotRunning {
                reason: format!(
                    "{e}; pid {} from {} is gone",
                    runtime.pid,
                    home.runtime_file().display()
                ),
            }
        }
    })?;
    Ok(AdminClient { client, key })
}

/// Sends one admin request and unwraps its `{"ok": …}` / `{"error": …}` answer.
pub async fn admin_request<C: AdminChannel + ?Sized>(
    channel: &C,
    subject: &str,
    body: &impl Serialize,
) -> Result<Value, StatusError> {
    let body = serde_json::to_vec(body).map_err(StatusError::Malformed)?;
    let mut headers = async_nats::HeaderMap::new();
    if let Some(key) = channel.signer() {
        let nonce: [u8; 16] = rand::random();
        let proof =
            crate::wire::admin_auth::sign(key, subject, crate::home::now_unix(), &nonce, &body)
                .map_err(|source| StatusError::Sign { source })?;
        for (name, value) in proof.headers() {
            headers.insert(name, value.as_str());
        }
    }
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        channel
            .nats()
            .request_with_headers(subject.to_string(), headers, body.into()),
    )
    .await
    .map_err(|_| StatusError::NoAnswer)?
    .map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => StatusError::NotServing {
            subject: subject.to_string(),
        },
        async_nats::RequestErrorKind::TimedOut => StatusError::NoAnswer,
        _ => StatusError::NotRunning {
            reason: e.to_string(),
        },
    })?;
    let mut answer: Value =
        serde_json::from_slice(&reply.payload).map_err(StatusError::Malformed)?;
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        return Err(StatusError::Refused(error.to_string()));
    }
    match answer.get_mut("ok") {
        Some(ok) => Ok(ok.take()),
        None => Ok(answer),
    }
}

/// Asks a running appliance for its status (`zester status`), as `target` says.
pub async fn query_status(home: &Home, target: &AdminTarget) -> Result<Value, StatusError> {
    let client = admin_connect_to(home, target).await?;
    // The node this connection is on answers; an appliance from before node subjects (or one
    // whose service connection is reconnecting) leaves it to any node.
    let node = client.nats().server_info().server_name;
    let subject = crate::wire::admin::node_status_subject(&node);
    match admin_request(&client, &subject, &json!({})).await {
        Err(StatusError::NotServing { .. }) => {
            admin_request(&client, STATUS_SUBJECT, &json!({})).await
        }
        answer => answer,
    }
}

/// Why `zester status` has no status to show.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing is running.
    #[error("zester is not running: {reason}")]
    NotRunning {
        /// Why we think so.
        reason: String,
    },
    /// zester runs, but its nats-server does not answer (e.g. while it is being restarted).
    #[error("zester (pid {pid}) is running, but its nats-server does not answer: {reason} (restarting? try again in a moment)")]
    Unreachable {
        /// zester's pid.
        pid: u32,
        /// The connection error.
        reason: String,
    },
    /// Connected, but no answer.
    #[error("zester is running but did not answer within 10 s (restarting nats-server? try again in a moment)")]
    NoAnswer,
    /// Connected, but nothing listens on the subject: zester's service connection, which serves
    /// the admin API, is reconnecting (after a restart of nats-server).
    #[error("zester is running but nothing serves {subject} right now (its service connection is reconnecting, e.g. after a restart of nats-server): try again in a moment")]
    NotServing {
        /// The request subject.
        subject: String,
    },
    /// The appliance answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The given server could not be reached or refused the creds.
    #[error("could not connect to {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// The connection error.
        reason: String,
    },
    /// A nats CLI context that cannot be used.
    #[error("nats context {name}: {reason}")]
    Context {
        /// The context name (or the creds file).
        name: String,
        /// Why.
        reason: String,
    },
    /// The context file cannot be read.
    #[error("nats context {}: {source}", path.display())]
    ContextFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The context file is not JSON.
    #[error("nats context {}: {source}", path.display())]
    ContextJson {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The admin creds cannot be read.
    #[error("admin creds: {source}")]
    Creds {
        /// Why.
        source: crate::home::HomeError,
    },
    /// No CA to verify the server with.
    #[error("{} does not exist: pass --ca FILE (the appliance's pki/ca.pem)", path.display())]
    NoCa {
        /// The file looked for.
        path: PathBuf,
    },
    /// The request could not be signed.
    #[error("signing the admin request: {source}")]
    Sign {
        /// Why.
        source: crate::wire::admin_auth::ProofError,
    },
    /// An answer that is not JSON.
    #[error("zester answered with an unreadable status: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// The admin API's `key show` for peel `id`: its record, fingerprint, revision and sessions.
pub async fn key_show<C: AdminChannel + ?Sized>(
    client: &C,
    id: &str,
) -> Result<Value, StatusError> {
    admin_request(
        client,
        crate::wire::admin::KEY_SHOW,
        &crate::wire::admin::KeyRequest {
            id: id.to_string(),
            fingerprint: None,
        },
    )
    .await
}
