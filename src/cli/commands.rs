//! The bodies of the local CLI commands (`init`, `creds issue`, `creds inspect`).
//!
//! Each takes plain arguments plus `now`, does its work through `home` and the identity core,
//! and returns an [`Output`] holding both the human text and the `--json` document, so `main`
//! only parses arguments and prints. Nothing secret ever goes into an `Output`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::home::journal;
use crate::home::{self, Home, HomeError};
use crate::identity::chain;
use crate::identity::creds::Creds;
use crate::identity::peel_id::{PeelId, PeelIdError};
use crate::identity::time::{parse_duration, rfc3339, DurationError};
use crate::wire::profile::PeelProfile;
use crate::wire::record::{KeyRecord, KeyState};

pub use super::output::Output;

/// Why a command could not run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A home or file problem.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// A bad peel id.
    #[error(transparent)]
    PeelId(#[from] PeelIdError),
    /// A bad `--expiry`.
    #[error("--expiry: {0}")]
    Expiry(DurationError),
    /// The output creds file exists.
    #[error("{} already exists: pass --force to replace it (the creds in it stay valid until they expire)", path.display())]
    CredsExist {
        /// The file.
        path: PathBuf,
    },
    /// The running appliance could not be reached, or refused.
    #[error("the running appliance: {0}")]
    Appliance(#[from] crate::cli::client::StatusError),
    /// The running appliance refused to register the key.
    #[error("the running appliance: registering the key: {0}")]
    RegisterRefused(crate::cli::client::StatusError),
    /// The key was registered but its files could not be written.
    #[error("the key is registered, but {source}; revoke and delete it (`zester key revoke {id}`, `zester key delete {id}`) and issue again")]
    RegisteredNotWritten {
        /// The peel.
        id: PeelId,
        /// Why the files were not written.
        source: HomeError,
    },
    /// The key record could not be made.
    #[error("the key record: {0}")]
    Record(#[from] crate::wire::record::KeyError),
    /// The key could not be registered for the appliance.
    #[error("creds were written, but the key could not be registered: {0}")]
    Register(#[from] crate::home::journal::JournalError),
    /// The server URL for the profile.
    #[error(transparent)]
    Context(#[from] crate::cli::context::ContextError),
    /// The command needs the appliance stopped.
    #[error("zester up is running: stop it first (it restarts in well under a second), rotate, then start it again")]
    Running,
    /// Issuing failed.
    #[error("could not issue creds: {0}")]
    Issue(crate::authority::AuthorityError),
    /// The signing key of a cluster cannot be rotated on one node.
    #[error("this home is a node of cluster {cluster:?}: every node holds a copy of the ZESTER signing key and signs with it, so rotating it here alone would leave the others signing with the old key, and `--finish` would make every user they issue invalid. Rotating a cluster's signing key is not supported yet; nothing was changed")]
    ClusterSigningKey {
        /// The cluster's name.
        cluster: String,
    },
    /// The master's or admin's creds of a cluster cannot be rotated on one node.
    #[error("this home is a node of cluster {cluster:?}: every node holds a copy of the {role} creds and its callout trusts their key, so rotating them here alone would leave the other nodes refusing the new creds and still admitting the old ones. Rotating a cluster's {role} creds is not supported yet; nothing was changed (to shut out one admin, use named admins: `zester admin add NAME`, `zester admin remove NAME`)")]
    ClusterServiceCreds {
        /// `master` or `admin`.
        role: String,
        /// The cluster's name.
        cluster: String,
    },
}

/// `zester init`.
pub fn init(home: &Home, force: bool, hostname: &str, now: i64) -> Result<Output, CommandError> {
    let report = home.init(force, hostname, now)?;
    let mut human = String::new();
    if let Some(aside) = &report.replaced {
        human.push_str(&format!(
            "Replaced the previous keys (kept in {}).\n",
            aside.display()
        ));
    }
    human.push_str(&format!(
        "Initialised zester home {}\n\n\
         operator  zester-op  {}\n\
         account   SYS        {}\n\
         account   ZESTER     {}\n\
         signing   ZESTER     {}\n\
         callout xkey         {}\n\
         master xkey          {}\n\n\
         TLS CA pin  {}\n\
         TLS names   {}\n\n\
         Next steps:\n  \
         zester creds issue <peel-id>      issue creds for a peel (written to {})\n  \
         zester creds inspect <file>       check a creds file against this home\n  \
         edit {} to change listen addresses and lifetimes\n",
        report.root.display(),
        report.operator,
        report.sys_account,
        report.zester_account,
        report.zester_signing_key,
        report.callout_xkey,
        report.master_xkey,
        report.ca_pin,
        report.tls_names.join(", "),
        home.peels_dir().display(),
        home.config_file().display(),
    ));
    let json = json!({
        "home": report.root,
        "operator": report.operator,
        "sys_account": report.sys_account,
        "zester_account": report.zester_account,
        "zester_signing_key": report.zester_signing_key,
        "callout_xkey": report.callout_xkey,
        "master_xkey": report.master_xkey,
        "ca_pin": report.ca_pin,
        "ca_file": home.ca_cert(),
        "tls_names": report.tls_names,
        "replaced": report.replaced,
    });
    Ok(Output {
        human,
        json,
        exit_code: 0,
    })
}

/// `zester creds issue`: fresh creds for peel `id`, registered as an accepted key — through the
/// running appliance when there is one (admitted when this returns), else in the offline
/// journal that `zester up` imports before it says ready — and the peel's public profile beside
/// them (`<id>.json`: servers, CA pin, master curve key).
pub async fn creds_issue(
    home: &Home,
    id: &str,
    out: Option<&Path>,
    expiry: Option<&str>,
    force: bool,
    now: i64,
) -> Result<Output, CommandError> {
    let id = PeelId::parse(id)?;
    let authority = home.load_authority()?;
    let config = home.load_config()?;
    let ttl = match expiry {
        Some(text) => parse_duration(text).map_err(CommandError::Expiry)?,
        None => config.peel_expiry().map_err(|source| HomeError::Config {
            path: home.config_file(),
            source,
        })?,
    };
    let path = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| home.peel_creds(id.as_str()));
    if path.exists() && !force {
        return Err(CommandError::CredsExist { path });
    }
    let creds = authority
        .issue_peel(&id, now, ttl)
        .map_err(CommandError::Issue)?;
    // A curve key too, so that secrets can be sealed to this peel (`secret encrypt --peel`).
    let curve = nkeys::XKey::new();
    let mut record = KeyRecord::new_accepted(
        id.clone(),
        &creds.key().public_key(),
        "zester creds issue",
        "creds signed by this node",
        now,
    )?;
    record.xkey = Some(curve.public_key());
    let record = record.jwt_issued(creds.jwt().claims().exp, false, now);
    let curve_path = path.with_file_name(format!("{id}.xk"));
    let write_files = || -> Result<(), HomeError> {
        home::write_creds(&path, &creds)?;
        let seed = curve.seed().unwrap_or_default();
        home::write_atomic(
            &curve_path,
            format!("{seed}\n").as_bytes(),
            home::SECRET_MODE,
        )
    };
    let running = crate::home::runtime::RuntimeInfo::live(home);
    let registered = match &running {
        Some(_) => {
            let client = crate::cli::client::admin_connect(home).await?;
            crate::cli::client::admin_request(&client, crate::wire::admin::KEY_REGISTER, &record)
                .await
                .map_err(CommandError::RegisterRefused)?;
            write_files().map_err(|source| CommandError::RegisteredNotWritten {
                id: id.clone(),
                source,
            })?;
            "appliance"
        }
        None => {
            write_files()?;
            journal::record(home, &record)?;
            "journal"
        }
    };
    let profile_path = PeelProfile::beside(&path, id.as_str());
    let profile = PeelProfile {
        id: id.to_string(),
        // In a cluster every node's URL, this one first: the agent fails over among them.
        servers: crate::cli::context::with_every_node(
            home,
            crate::cli::context::client_url(
                running.as_ref().map(|r| r.url.as_str()),
                &config.server.listen,
            )?,
        ),
        ca_pin: home.ca_pin()?,
        master_xkey: authority.master_xkey.public_key(),
    };
    home::write_atomic(&profile_path, &profile.to_json(), home::PUBLIC_MODE)?;
    let claims = creds.jwt().claims();
    let expires = expiry_text(claims.exp, now);
    let registered_text = if registered == "appliance" {
        "registered with the running appliance: admitted now".to_string()
    } else {
        format!(
            "journalled in {}: `zester up` imports it before it says ready",
            home.keys_journal_dir().display()
        )
    };
    Ok(Output {
        human: format!(
            "Issued creds for peel {id}\n  file     {}\n  curve    {} (seed of {})\n  profile  {} (servers {})\n  user     {}\n  expires  {expires}\n  key      {registered_text}\n",
            path.display(),
            curve_path.display(),
            curve.public_key(),
            profile_path.display(),
            profile.servers.join(", "),
            claims.sub,
        ),
        json: json!({
            "id": id.as_str(),
            "file": path,
            "profile": profile_path,
            "servers": profile.servers,
            "xkey": curve.public_key(),
            "xkey_seed_file": curve_path,
            "user_key": claims.sub,
            "expires_at": (claims.exp > 0).then_some(claims.exp),
            "registered": registered,
        }),
        exit_code: 0,
    })
}

fn expiry_text(exp: i64, now: i64) -> String {
    if exp == 0 {
        return "never".to_string();
    }
    let days = (exp - now) / 86_400;
    if exp < now {
        format!("{} (EXPIRED)", rfc3339(exp))
    } else {
        format!("{} (in {days} days)", rfc3339(exp))
    }
}

/// `zester creds inspect`: decode a creds file and check its chain against the home.
///
/// Exits 1 when the creds are expired or do not chain to this home's operator; a file that
/// cannot be read or parsed is an error.
pub fn creds_inspect(home: &Home, file: &Path, now: i64) -> Result<Output, CommandError> {
    let creds = home::read_creds(file)?;
    let (chain_human, chain_json, chain_ok) = check_chain(home, &creds, now);
    let claims = creds.jwt().claims();
    let nats = &claims.nats;
    let expired = claims.exp > 0 && now > claims.exp;
    let list = |v: &[String]| {
        if v.is_empty() {
            "(any)".to_string()
        } else {
            v.join(" ")
        }
    };
    let resp = match nats.resp {
        Some(r) => format!("allowed (max {}, ttl {} ns)", r.max, r.ttl),
        None => "no".to_string(),
    };
    let mut human = format!(
        "file        {}\nname        {}\nuser        {}\nissuer      {}\n",
        file.display(),
        claims.name,
        claims.sub,
        claims.iss
    );
    if !nats.issuer_account.is_empty() {
        human.push_str(&format!("account     {}\n", nats.issuer_account));
    }
    human.push_str(&format!(
        "issued      {}\nexpires     {}\nbearer      {}\npub allow   {}\npub deny    {}\nsub allow   {}\nsub deny    {}\nresponses   {resp}\ntags        {}\nchain       {chain_human}\n",
        rfc3339(claims.iat),
        expiry_text(claims.exp, now),
        if nats.bearer_token { "yes" } else { "no" },
        list(&nats.publish.allow),
        if nats.publish.deny.is_empty() { "-".to_string() } else { nats.publish.deny.join(" ") },
        list(&nats.subscribe.allow),
        if nats.subscribe.deny.is_empty() { "-".to_string() } else { nats.subscribe.deny.join(" ") },
        nats.tags.join(" "),
    ));
    let json = json!({
        "file": file,
        "name": claims.name,
        "user_key": claims.sub,
        "issuer": claims.iss,
        "issuer_account": nats.issuer_account,
        "issued_at": claims.iat,
        "expires_at": (claims.exp > 0).then_some(claims.exp),
        "expired": expired,
        "bearer": nats.bearer_token,
        "permissions": nats.permissions(),
        "tags": nats.tags,
        "chain": chain_json,
    });
    Ok(Output {
        human,
        json,
        exit_code: if chain_ok && !expired { 0 } else { 1 },
    })
}

fn check_chain(home: &Home, creds: &Creds, now: i64) -> (String, Value, bool) {
    if !home.is_initialised() {
        let text = format!("not checked: no zester home at {}", home.root().display());
        return (
            text.clone(),
            json!({"verified": false, "reason": text}),
            true,
        );
    }
    let authority = match home.load_authority() {
        Ok(a) => a,
        Err(e) => {
            let text = e.to_string();
            return (
                text.clone(),
                json!({"verified": false, "reason": text}),
                false,
            );
        }
    };
    let jwt = creds.jwt();
    let account = if jwt.claims().nats.issuer_account == authority.sys.public_key() {
        &authority.sys_jwt
    } else {
        &authority.zester_jwt
    };
    match chain::verify_user(&authority.operator_jwt, account, jwt, now) {
        Ok(verified) => (
            format!(
                "valid: user {} ← account {} ({}) ← operator {} ({})",
                verified.user(),
                account.claims().name,
                verified.account(),
                authority.operator_jwt.claims().name,
                verified.operator()
            ),
            json!({
                "verified": true,
                "home": home.root(),
                "operator": verified.operator(),
                "account": verified.account(),
                "signer": verified.user_signer(),
            }),
            true,
        ),
        Err(e) => (
            format!("INVALID against {}: {e}", home.root().display()),
            json!({"verified": false, "home": home.root(), "reason": e.to_string()}),
            false,
        ),
    }
}

/// `zester status`: renders the appliance's status document for people (JSON as it came).
pub fn status(status: &Value) -> Output {
    let z = &status["zester"];
    let n = &status["nats_server"];
    let d = &status["decisions"];
    let k = &status["keys"];
    let human = format!(
        "zester      running, pid {}, up {} s (ready in {} ms)\n\
         url         {}\n\
         monitor     {}\n\
         nats-server {} pid {}, up {} s, restarts {}\n\
         connections {}\n\
         decisions   {} allowed, {} refused (p50 {} µs, p99 {} µs)\n\
         sessions    {}\n\
         keys        {} accepted, {} pending, {} rejected, {} revoked\n",
        z["pid"],
        z["uptime_secs"],
        z["ready_ms"],
        z["url"].as_str().unwrap_or("?"),
        z["monitor_url"].as_str().unwrap_or("-"),
        n["version"].as_str().unwrap_or("?"),
        n["pid"],
        n["uptime_secs"],
        n["restarts"],
        status["connections"],
        d["allowed"],
        d["refused"],
        d["p50_micros"],
        d["p99_micros"],
        status["sessions"],
        k["accepted"],
        k["pending"],
        k["rejected"],
        k["revoked"],
    );
    let mut human = human;
    human.push_str(&cluster_lines(&status["cluster"]));
    let expiring: Vec<crate::wire::expiry::Expiring> =
        serde_json::from_value(status["expiring"].clone()).unwrap_or_default();
    if expiring.is_empty() {
        human.push_str("expiring    nothing within 14 days (the CA: within a year)\n");
    }
    for (n, e) in expiring.iter().enumerate() {
        let when = if e.in_secs < 0 {
            format!("EXPIRED {} ago", crate::cli::output::span(-e.in_secs))
        } else {
            format!("in {}", crate::cli::output::span(e.in_secs))
        };
        let hint = match e.kind {
            crate::wire::expiry::CredentialKind::Peel => {
                " (stopped renewing? see `zester key show`)"
            }
            crate::wire::expiry::CredentialKind::Ca => {
                " (not renewed automatically: plan a new CA and re-enrol the peels)"
            }
            _ => " (renewal failing? see the log)",
        };
        human.push_str(&format!(
            "{:<12}{} {} expires {} {when}{hint}\n",
            if n == 0 { "expiring" } else { "" },
            e.kind.as_str(),
            e.name,
            rfc3339(e.expires_at),
        ));
    }
    human.push_str(&audit_status(&status["audit"]));
    Output {
        human,
        json: status.clone(),
        exit_code: 0,
    }
}

/// The `audit` lines of `zester status`: the log (written, dropped, failing), the policy, and
/// the `zester-audit` stream.
fn audit_status(audit: &Value) -> String {
    if audit.is_null() {
        return String::new();
    }
    let log = match audit["error"].as_str() {
        Some(error) if audit["failing"] == true => format!("FAILING: {error}"),
        _ => "ok".to_string(),
    };
    let refusing = if audit["refusing"] == true {
        ", REFUSING new connections"
    } else {
        ""
    };
    let stream = &audit["stream"];
    let stream_error = stream["error"]
        .as_str()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    format!(
        "audit       audit.log {log}; {} written, {} dropped, {}/{} queued, on_overflow {}{refusing}\n\
         {:<12}stream {} ({}) {}{stream_error}; {} published, {} waiting, {} left out\n",
        audit["written"],
        audit["dropped"],
        audit["queued"],
        audit["queue"],
        audit["on_overflow"].as_str().unwrap_or("?"),
        "",
        stream["name"].as_str().unwrap_or("?"),
        stream["subject"].as_str().unwrap_or("?"),
        stream["state"].as_str().unwrap_or("?"),
        stream["published"],
        stream["backlog"],
        stream["dropped"],
    )
}

/// The cluster part of `zester status` for people: one line on a single node; else this node,
/// the meta leader, every node with its state, the routes and each bucket's replicas.
fn cluster_lines(cluster: &Value) -> String {
    if cluster.is_null() {
        return "cluster     single node\n".to_string();
    }
    let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let mut out = format!(
        "node        {}, of cluster {}\nmeta leader {}\n",
        text(&cluster["node"]),
        text(&cluster["name"]),
        cluster["leader"]
            .as_str()
            .unwrap_or("none (more than half of the nodes must be up and routed)"),
    );
    let empty = Vec::new();
    let nodes = cluster["nodes"].as_array().unwrap_or(&empty);
    let node_text: Vec<String> = nodes
        .iter()
        .map(|n| {
            let name = text(&n["name"]);
            if n["this_node"] == true {
                return format!("{name} (this node)");
            }
            let mut state = vec![match (n["offline"] == true, n["current"] == true) {
                (true, _) => "offline".to_string(),
                (false, true) => "current".to_string(),
                (false, false) => "not current".to_string(),
            }];
            if let Some(lag) = n["lag"].as_u64().filter(|lag| *lag > 0) {
                state.push(format!("lag {lag}"));
            }
            state.push(
                if n["routed"] == true {
                    "routed"
                } else {
                    "no route"
                }
                .to_string(),
            );
            format!("{name} {}", state.join(", "))
        })
        .collect();
    out.push_str(&format!(
        "nodes       {}: {}\n",
        nodes.len(),
        node_text.join("; ")
    ));
    let routes: Vec<String> = cluster["routes"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| format!("{} {}", text(&r["name"]), text(&r["address"])))
        .collect();
    out.push_str(&format!(
        "routes      {}\n",
        if routes.is_empty() {
            "none".to_string()
        } else {
            routes.join("; ")
        }
    ));
    for bucket in cluster["buckets"].as_array().unwrap_or(&empty) {
        let current: Vec<String> = bucket["current"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(text)
            .collect();
        let behind: Vec<String> = bucket["behind"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|b| text(&b["name"]))
            .collect();
        out.push_str(&format!(
            "bucket      {} R{}, leader {}, current: {}{}\n",
            text(&bucket["bucket"]),
            bucket["replicas"],
            bucket["leader"].as_str().unwrap_or("none"),
            current.join(" "),
            if behind.is_empty() {
                String::new()
            } else {
                format!(", behind: {}", behind.join(" "))
            },
        ));
    }
    out
}

/// What `zester key accept|reject|revoke|delete` acts on.
#[derive(Debug, Clone)]
pub struct KeyAction {
    /// The new state, or `None` to delete the record.
    pub to: Option<KeyState>,
    /// One id, or a glob.
    pub target: String,
    /// Act on several matches without asking.
    pub yes: bool,
    /// Why (kept in the key's history).
    pub reason: String,
    /// Act only if the key is still in this state.
    pub from: Option<KeyState>,
    /// Act only if the key still has this fingerprint (with `replace`: the denied claim's).
    pub fingerprint: Option<String>,
    /// `key accept --replace`: re-bind the id to a denied claim.
    pub replace: bool,
}

/// Why a `zester key` command failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyCommandError {
    /// The appliance could not be asked.
    #[error(transparent)]
    Appliance(#[from] crate::cli::client::StatusError),
    /// Nothing matched.
    #[error("no key matches {0:?} (see `zester key list`)")]
    NoMatch(String),
    /// Several keys matched and nobody confirmed.
    #[error("nothing done: several keys match and the action was not confirmed (pass --yes)")]
    Declined,
}

/// `zester key list`; with `denied`, the ids other keys claimed (`--state denied`), one line
/// per claim.
pub async fn key_list(
    home: &Home,
    target: &crate::cli::client::AdminTarget,
    state: Option<KeyState>,
    denied: bool,
) -> Result<Output, KeyCommandError> {
    let client = crate::cli::client::admin_connect_to(home, target).await?;
    let list = crate::cli::client::admin_request(
        &client,
        crate::wire::admin::KEY_LIST,
        &crate::wire::admin::ListRequest { state, denied },
    )
    .await?;
    let summaries: Vec<crate::wire::admin::KeySummary> =
        serde_json::from_value(list.clone()).unwrap_or_default();
    if denied {
        let mut human = format!(
            "{:<24} {:<48} {:<40} {:<20} {}\n",
            "ID", "CLAIMANT FINGERPRINT", "ADDRESS", "AT", "HELD BY"
        );
        let mut claims = 0;
        for s in &summaries {
            for d in &s.denied {
                claims += 1;
                human.push_str(&format!(
                    "{:<24} {:<48} {:<40} {:<20} {} ({})\n",
                    s.id,
                    d.fingerprint,
                    if d.address.is_empty() {
                        "-"
                    } else {
                        &d.address
                    },
                    rfc3339(d.at),
                    s.fingerprint,
                    s.state.as_str(),
                ));
            }
        }
        human.push_str(&format!(
            "{claims} denied claim(s); re-bind an id to its claimant with `zester key accept ID --replace --fingerprint FP`, forget them with `zester key delete ID`\n"
        ));
        return Ok(Output {
            human,
            json: list,
            exit_code: 0,
        });
    }
    let mut human = format!(
        "{:<24} {:<9} {:<48} {:<20} {:<20} {}\n",
        "ID", "STATE", "FINGERPRINT", "CHANGED", "EXPIRES", "RENEWED"
    );
    for s in &summaries {
        human.push_str(&format!(
            "{:<24} {:<9} {:<48} {:<20} {:<20} {}\n",
            s.id,
            s.state.as_str(),
            s.fingerprint,
            rfc3339(s.updated_at),
            match s.jwt_expires_at {
                None => "-".to_string(),
                Some(0) => "never".to_string(),
                Some(at) => rfc3339(at),
            },
            s.renewed_at.map_or_else(|| "-".to_string(), rfc3339),
        ));
    }
    human.push_str(&format!("{} key(s)\n", summaries.len()));
    Ok(Output {
        human,
        json: list,
        exit_code: 0,
    })
}

/// `zester key show ID`.
pub async fn key_show(
    home: &Home,
    target: &crate::cli::client::AdminTarget,
    id: &str,
) -> Result<Output, KeyCommandError> {
    let client = crate::cli::client::admin_connect_to(home, target).await?;
    let shown = crate::cli::client::key_show(&client, id).await?;
    let record = &shown["record"];
    let mut human = format!(
        "id           {}\nstate        {}\nnkey         {}\nxkey         {}\nfingerprint  {}\ncreated      {}\nexpires      {}\nrenewed      {}\nsessions     {}\n",
        record["id"].as_str().unwrap_or("?"),
        record["state"].as_str().unwrap_or("?"),
        record["nkey"].as_str().unwrap_or("?"),
        record["xkey"].as_str().unwrap_or("-"),
        shown["fingerprint"].as_str().unwrap_or("?"),
        rfc3339(record["created_at"].as_i64().unwrap_or(0)),
        match record["jwt_expires_at"].as_i64() {
            None => "- (not recorded)".to_string(),
            Some(0) => "never".to_string(),
            Some(at) => rfc3339(at),
        },
        record["renewed_at"]
            .as_i64()
            .map_or_else(|| "-".to_string(), rfc3339),
        shown["sessions"].as_array().map_or(0, Vec::len),
    );
    let tags: Vec<String> = record["tags"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    if !tags.is_empty() {
        // Set by an admin (a join token), unlike the facts the peel reports about itself.
        human.push_str(&format!(
            "tags (trusted, set by an admin) {}\n",
            tags.join(" ")
        ));
    }
    for claim in record["denied"].as_array().into_iter().flatten() {
        human.push_str(&format!(
            "denied claim {} from {} at {} (host {:?}): `zester key accept {} --replace --fingerprint {}` re-binds the id to it\n",
            claim["fingerprint"].as_str().unwrap_or("?"),
            claim["address"].as_str().filter(|a| !a.is_empty()).unwrap_or("?"),
            rfc3339(claim["at"].as_i64().unwrap_or(0)),
            claim["hostname"].as_str().unwrap_or(""),
            record["id"].as_str().unwrap_or("?"),
            claim["fingerprint"].as_str().unwrap_or("?"),
        ));
    }
    human.push_str("history:\n");
    for change in record["history"].as_array().into_iter().flatten() {
        human.push_str(&format!(
            "  {}  {:<9} by {}: {}\n",
            rfc3339(change["at"].as_i64().unwrap_or(0)),
            change["state"].as_str().unwrap_or("?"),
            change["by"].as_str().unwrap_or("?"),
            change["reason"].as_str().unwrap_or(""),
        ));
    }
    Ok(Output {
        human,
        json: shown,
        exit_code: 0,
    })
}

/// `zester key accept|reject|revoke|delete ID|GLOB` (and `accept --all-pending`, which is the
/// glob `*` over pending keys).
pub async fn key_act(
    home: &Home,
    target: &crate::cli::client::AdminTarget,
    action: &KeyAction,
    only_state: Option<KeyState>,
    confirm: impl Fn(&[String]) -> bool,
) -> Result<Output, KeyCommandError> {
    let client = crate::cli::client::admin_connect_to(home, target).await?;
    let ids: Vec<String> = if crate::identity::peel_id::is_glob(&action.target) {
        let list = crate::cli::client::admin_request(
            &client,
            crate::wire::admin::KEY_LIST,
            &crate::wire::admin::ListRequest {
                state: only_state.or(action.from),
                denied: false,
            },
        )
        .await?;
        let summaries: Vec<crate::wire::admin::KeySummary> =
            serde_json::from_value(list).unwrap_or_default();
        summaries
            .into_iter()
            .filter(|s| crate::identity::peel_id::glob_matches(&action.target, &s.id))
            .map(|s| s.id)
            .collect()
    } else {
        vec![action.target.clone()]
    };
    if ids.is_empty() {
        return Err(KeyCommandError::NoMatch(action.target.clone()));
    }
    if ids.len() > 1 && !action.yes && !confirm(&ids) {
        return Err(KeyCommandError::Declined);
    }
    // Who acts is what the appliance verifies from the request's signature, never a name
    // sent here (it used to be `$USER`); the field stays for older appliances.
    let by = String::new();
    let mut human = String::new();
    let mut results = Vec::new();
    let mut failed = 0;
    for id in &ids {
        let outcome = match action.to {
            Some(to) => {
                crate::cli::client::admin_request(
                    &client,
                    crate::wire::admin::KEY_CHANGE,
                    &crate::wire::admin::ChangeRequest {
                        id: id.clone(),
                        to,
                        by: by.clone(),
                        reason: action.reason.clone(),
                        fingerprint: action.fingerprint.clone(),
                        from: if action.replace { None } else { action.from },
                        replace: action.replace,
                    },
                )
                .await
            }
            None => {
                crate::cli::client::admin_request(
                    &client,
                    crate::wire::admin::KEY_DELETE,
                    &crate::wire::admin::KeyRequest {
                        id: id.clone(),
                        fingerprint: action.fingerprint.clone(),
                    },
                )
                .await
            }
        };
        match outcome {
            Ok(value) => {
                let verb = action.to.map_or("deleted", KeyState::as_str);
                let mut line = format!("{id}: {verb}");
                if let Some(ms) = value["cut_off_ms"].as_f64() {
                    line.push_str(&format!(
                        " ({} live session(s) cut off in {ms:.1} ms)",
                        value["kicked"]
                    ));
                }
                human.push_str(&line);
                human.push('\n');
                results.push(json!({"id": id, "ok": value}));
            }
            Err(e) => {
                failed += 1;
                human.push_str(&format!("{id}: FAILED: {e}\n"));
                results.push(json!({"id": id, "error": e.to_string()}));
            }
        }
    }
    Ok(Output {
        human,
        json: json!(results),
        exit_code: i32::from(failed > 0),
    })
}

/// `zester creds rotate master|admin`: through the running appliance when there is one (so the
/// callout learns the new key at once), else directly in the home.
pub async fn creds_rotate(home: &Home, role: &str, now: i64) -> Result<Output, CommandError> {
    if home.is_cluster_node()? {
        return Err(CommandError::ClusterServiceCreds {
            role: role.to_string(),
            cluster: home.load_config()?.cluster.name,
        });
    }
    let rotated = match crate::cli::client::admin_connect(home).await {
        Ok(client) => {
            crate::cli::client::admin_request(
                &client,
                crate::wire::admin::CREDS_ROTATE,
                &json!({ "role": role }),
            )
            .await?
        }
        Err(crate::cli::client::StatusError::NotRunning { .. }) => {
            let authority = home.load_authority()?;
            let role_value = match role {
                "master" => crate::permissions::Role::Master,
                _ => crate::permissions::Role::Admin(None),
            };
            let creds = authority
                .issue_creds(nkeys::KeyPair::new_user(), role, &role_value, now, 0)
                .map_err(CommandError::Issue)?;
            let path = home.service_creds(role);
            home::write_creds(&path, &creds)?;
            json!({
                "role": role,
                "file": path,
                "fingerprint": crate::wire::record::fingerprint(&creds.key().public_key()),
            })
        }
        Err(e) => return Err(CommandError::Appliance(e)),
    };
    Ok(Output {
        human: format!(
            "{role} creds rotated: new key {} in {}\n",
            rotated["fingerprint"].as_str().unwrap_or("?"),
            rotated["file"].as_str().unwrap_or("?")
        ),
        json: rotated,
        exit_code: 0,
    })
}

/// `zester creds rotate signing-key [--finish]` (with the appliance stopped: every running
/// component signs with the key it loaded at start).
pub fn signing_key_rotate(home: &Home, finish: bool, now: i64) -> Result<Output, CommandError> {
    let config = home.load_config()?;
    if home.is_cluster_node()? {
        return Err(CommandError::ClusterSigningKey {
            cluster: config.cluster.name.clone(),
        });
    }
    if crate::home::runtime::RuntimeInfo::live(home).is_some() {
        return Err(CommandError::Running);
    }
    let signer = home.rotate_signing_key(finish, now)?;
    let human = if finish {
        format!("previous signing keys retired; {signer} is the only ZESTER signing key\n")
    } else {
        format!(
            "new ZESTER signing key {signer}: it signs from now on, service creds re-issued.\n\
             Peels keep working with their current creds. When every peel has fresh creds\n\
             (`zester peel enrol --id ID --dir DIR` again on the peel, or `zester creds issue`),\n\
             run `zester creds rotate signing-key --finish` to remove the old key.\n"
        )
    };
    Ok(Output {
        human,
        json: json!({ "signing_key": signer, "finished": finish }),
        exit_code: 0,
    })
}
