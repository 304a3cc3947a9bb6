//! The `zester` command line: argument parsing and dispatch only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use zester::appliance::up::{Appliance, StopSignals, UpOptions};
use zester::cli::commands::{self, Output};
use zester::home::{now_unix, Home};

/// zester: the security core of a NATS fleet on one node.
///
/// It keeps the operator, accounts and keys of the fleet, issues peel credentials, and with
/// `zester up` runs nats-server with an auth callout giving every peel least-privilege
/// permissions. Start with `zester up`, then `zester creds issue <peel-id>` and
/// `zester peel run --creds <home>/peels/<peel-id>.creds` on the peel.
#[derive(Debug, Parser)]
#[command(name = "zester", version, propagate_version = true)]
struct Cli {
    /// The zester home directory (keys, certificates, configuration).
    /// Default: $XDG_DATA_HOME/zester or ~/.local/share/zester.
    #[arg(long, global = true, env = "ZESTER_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// How log lines on stderr look: text for people, or json (one JSON object per line,
    /// nats-server's forwarded lines included, with their level and pid) for collectors.
    #[arg(
        long,
        global = true,
        env = "ZESTER_LOG_FORMAT",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new home: operator, SYS and ZESTER accounts with signing keys, the callout,
    /// master, admin and sys users, curve keys, a TLS CA and server certificate, zester.toml.
    ///
    /// Prints public keys and the CA's SPKI pin (give the pin to peels for out-of-band trust);
    /// never a seed.
    Init {
        /// Replace the keys of an existing home. The old auth/ and pki/ are moved aside, not
        /// deleted, but every creds issued so far stops working.
        #[arg(long)]
        force: bool,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the appliance: nats-server (supervised, restarted if it dies) with the auth callout
    /// that admits every client, the key store and the audit log. Initialises the home first
    /// if it does not exist. Stops cleanly on SIGINT/SIGTERM.
    ///
    /// Logs go to stderr (ZESTER_LOG=debug for more); decisions also go to <home>/audit.log.
    Up {
        /// Client listen address, HOST:PORT (port 0 picks a free one). Default: server.listen.
        #[arg(long, value_name = "HOST:PORT", env = "ZESTER_LISTEN")]
        listen: Option<String>,
        /// Monitoring address, HOST:PORT on loopback (port 0 picks a free one).
        /// Default: server.monitor.
        #[arg(long, value_name = "HOST:PORT", env = "ZESTER_MONITOR")]
        monitor: Option<String>,
        /// The nats-server binary (default: ZESTER_NATS_SERVER, nats/bin/ beside the source
        /// tree or this executable, then PATH).
        #[arg(long, value_name = "PATH")]
        nats_server: Option<PathBuf>,
        /// Be a node of a cluster: accept routes from the other nodes at HOST:PORT (mutual TLS
        /// with the zester CA). Default: cluster.listen (empty: a single node). The other
        /// nodes are cluster.routes in zester.toml.
        #[arg(long, value_name = "HOST:PORT", env = "ZESTER_CLUSTER_LISTEN")]
        cluster_listen: Option<String>,
        /// This node's name in the cluster (nats-server's server_name: unique, stable across
        /// restarts). Default: node.name, else the host name in a cluster, "zester" alone.
        #[arg(long, value_name = "NAME", env = "ZESTER_NODE_NAME")]
        node_name: Option<String>,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics (a bare PORT listens on
        /// 127.0.0.1; port 0 picks a free one; "" turns it off). Default: metrics.listen (off).
        #[arg(long, value_name = "HOST:PORT", env = "ZESTER_METRICS")]
        metrics: Option<String>,
    },
    /// Ask the running appliance how it is: nats-server pid and restarts, connections,
    /// decisions allowed/refused with latency, key counts. Exits 1 when it is not running.
    Status {
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminConnArgs,
    },
    /// Send a command to peels, Salt style: `zester cmd 'web-*' test.ping`. TARGET is a peel
    /// id or a glob over accepted keys; one row per peel with its answer, or "no answer"
    /// after --timeout. Exits 1 when any peel did not answer.
    Cmd {
        /// A peel id or a glob (`*` any run, `?` one character) over accepted keys.
        target: String,
        /// The function, e.g. test.ping.
        fun: String,
        /// Arguments, passed as the command's "args" list.
        args: Vec<String>,
        /// How long to wait for each peel (e.g. 5s, 1m).
        #[arg(long, value_name = "DURATION", default_value = "5s")]
        timeout: String,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminConnArgs,
    },
    /// Manage peel keys on the running appliance, salt-key style: list, show, accept,
    /// reject, revoke (cuts live connections at once), delete.
    Key {
        #[command(flatten)]
        admin: AdminConnArgs,
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Join tokens: enrolment without a person in the loop. A peel that enrols with a valid
    /// token (`zester peel enrol … --token TOKEN`) is accepted at once; the token limits which
    /// ids, how many uses and for how long, and its tags become the key's trusted tags.
    Token {
        #[command(flatten)]
        admin: AdminConnArgs,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Grow a cluster: `join` (on the new machine, with a fresh home) asks a running node to
    /// let this machine in and, once an admin ran `node accept NAME`, writes its home;
    /// `list`, `accept` and `remove` go to a running node. See the README's "Three nodes".
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Named admins: per-person admin creds (`add`), who they are (`list`), and cutting one
    /// off at once (`remove`: key revoked, live sessions kicked). Every admin action the
    /// appliance records names the admin whose key signed it.
    Admin {
        #[command(flatten)]
        admin: AdminConnArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Secrets for one peel: ENC[<peel xkey>,<base64>] envelopes sealed from the master's
    /// curve key to the peel's (nkeys xkey format). Envelopes and plaintext go through
    /// stdin/stdout only.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// The peel side: enrol with a master.
    Peel {
        #[command(subcommand)]
        command: PeelCommand,
    },
    /// Per-peel settings (pillar): a JSON document per peel, written by the master, readable
    /// only by that peel. Secret values go in as `zester secret encrypt` envelopes.
    Settings {
        #[command(flatten)]
        admin: AdminConnArgs,
        #[command(subcommand)]
        command: SettingsCommand,
    },
    /// Issue and inspect NATS .creds files.
    Creds {
        #[command(subcommand)]
        command: CredsCommand,
    },
    /// The audit trail in this home's files: check its hash chain (`verify`), or read it
    /// (`tail`). No appliance is needed.
    ///
    /// Every decision and admin action is one JSON line in <home>/audit.log (rotated by size
    /// into audit.log.1, .2 …), numbered per node (`seq`) and linked to the line before it by
    /// `prev`, the SHA-256 of that line as written: a changed, removed or reordered line breaks
    /// the chain there. The same lines go to the JetStream stream zester-audit (subject
    /// zester.audit.<node>) for NATS tools and SIEM consumers.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Hand this node's admin or master user to other NATS tools.
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },
}

/// How an admin command reaches the appliance. Default: this home's admin creds, the URL in
/// its runtime.json and its CA — on the appliance host nothing needs to be given.
#[derive(Debug, Clone, clap::Args)]
struct AdminConnArgs {
    /// The admin's creds (yours, from `zester admin add`). Default: the context's, else
    /// <home>/auth/admin.creds.
    #[arg(long, global = true, env = "ZESTER_ADMIN_CREDS", value_name = "FILE")]
    creds: Option<PathBuf>,
    /// The appliance's URL, e.g. tls://host:4222. Default: the context's, else
    /// <home>/nats/runtime.json.
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    /// The CA the server's certificate chains to (the appliance's pki/ca.pem). Default: the
    /// context's, else <home>/pki/ca.pem.
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// A nats CLI context ($XDG_CONFIG_HOME/nats/context/NAME.json: its url, creds and ca);
    /// --creds, --server and --ca win over it.
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
}

impl AdminConnArgs {
    fn target(self) -> zester::cli::client::AdminTarget {
        zester::cli::client::AdminTarget {
            creds: self.creds,
            server: self.server,
            ca: self.ca,
            context: self.context,
        }
    }
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Issue creds for a named admin: a fresh user key with the admin role and NAME, written
    /// 0600 to <home>/admins/NAME.creds (or --out). With the appliance running it trusts the
    /// key at once; otherwise the next `zester up` does. Give the file to that person.
    Add {
        /// The admin's name: letters, digits, '_' and '-', starting with a letter or digit, at
        /// most 64 characters; not master, admin, callout, sys, service or store.
        name: String,
        /// Where to write the creds (mode 0600). Default: <home>/admins/NAME.creds.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace an existing file, and an admin of that name (its old key is revoked).
        #[arg(long)]
        force: bool,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the named admins: name, key fingerprint, when and by whom they were added.
    List {
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a named admin: refused from now on, its key revoked in the account, its live
    /// connections cut off.
    Remove {
        /// The admin's name.
        name: String,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ContextCommand {
    /// Write a nats CLI context ($XDG_CONFIG_HOME/nats/context/NAME.json, 0600) that connects
    /// as the admin or master user: the URL of the running appliance (else server.listen),
    /// the creds and CA by absolute path (never copied), and the inbox prefix zester's
    /// permissions allow. Then: nats --context NAME rtt
    Export {
        /// The context name.
        #[arg(long, default_value = zester::cli::context::DEFAULT_NAME)]
        name: String,
        /// admin or master.
        #[arg(long, default_value = "admin", value_parser = ["admin", "master"])]
        role: String,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// A key state change: a target and the shared options.
#[derive(Debug, clap::Args)]
struct KeyActionArgs {
    /// A peel id, or a glob over ids (`*`, `?`), e.g. 'web-*'.
    target: String,
    #[command(flatten)]
    options: KeyActionOptions,
}

/// Options shared by every key state change.
#[derive(Debug, clap::Args)]
struct KeyActionOptions {
    /// Act on every key a glob matches without asking.
    #[arg(long)]
    yes: bool,
    /// Why (kept in the key's history).
    #[arg(long, value_name = "TEXT", default_value = "")]
    reason: String,
    /// Act only if the key still has this fingerprint (guards against a re-created key).
    #[arg(long, value_name = "FP")]
    fingerprint: Option<String>,
    /// Print a JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// List keys (default: all states).
    List {
        /// pending, accepted, rejected, revoked, all, or denied (ids another key claimed:
        /// the claimant's fingerprint, address and time).
        #[arg(long, default_value = "all")]
        state: String,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one key: nkey, xkey, fingerprint, live sessions, and its history (who, when, why).
    Show {
        /// The peel id.
        id: String,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Accept pending keys: the peel may connect (and fetch its creds).
    Accept {
        /// Accept every pending key.
        #[arg(long, conflicts_with = "target")]
        all_pending: bool,
        /// Accept keys that were rejected earlier (instead of pending ones).
        #[arg(long, conflicts_with = "all_pending")]
        reconsider: bool,
        /// Re-bind the id to the denied claim with --fingerprint FP (a rebuilt machine's new
        /// key, see `key list --state denied`): the key it held is revoked and kicked.
        #[arg(long, conflicts_with_all = ["all_pending", "reconsider"], requires = "fingerprint")]
        replace: bool,
        /// A peel id or glob (not with --all-pending).
        target: Option<String>,
        #[command(flatten)]
        options: KeyActionOptions,
    },
    /// Reject pending keys.
    Reject(KeyActionArgs),
    /// Revoke accepted keys: their live connections are cut at once and they cannot return.
    Revoke(KeyActionArgs),
    /// Delete key records that are not accepted (revoke first), freeing the id.
    Delete(KeyActionArgs),
}

#[derive(Debug, Subcommand)]
enum SettingsCommand {
    /// Replace peel ID's settings with the JSON object in FILE ('-' for stdin).
    Set {
        /// The peel id.
        id: String,
        /// A JSON object; '-' reads stdin.
        file: PathBuf,
    },
    /// Show peel ID's settings as stored (secret values stay sealed).
    Show {
        /// The peel id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PeelCommand {
    /// Rotate this peel's key without downtime: a new nkey, proven with the old and the new
    /// key, swapped in the master's record; the new creds replace FILE atomically, and the old
    /// key is revoked once the new one has connected. A running `zester peel run` on the same
    /// file picks the new creds up at its next reconnect.
    Rotate {
        /// The master's client URL.
        #[arg(long, value_name = "URL")]
        server: String,
        /// The peel's creds file.
        #[arg(long, value_name = "FILE")]
        creds: PathBuf,
        /// The master's CA certificate.
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
    },
    /// Renew this peel's identity JWT once, for peels whose clients are not `zester peel run`
    /// (nats.py, cron): a request signed by its key over a connection with its creds, answered
    /// with a fresh JWT for the same key while the key is accepted; the creds file is replaced
    /// atomically (0600), the key stays. Creds that already expired are refreshed with the key
    /// alone (the enrolment path). A running `zester peel run` renews by itself at 2/3 of the
    /// lifetime; this is for everything else, e.g. daily from cron. Exit 1 when refused.
    ///
    /// What is not given comes from the peel's profile beside the creds, as for `peel run`.
    Renew {
        /// The peel's creds file (replaced atomically).
        #[arg(long, value_name = "FILE", required_unless_present = "dir")]
        creds: Option<PathBuf>,
        /// The directory `zester peel enrol --dir` wrote.
        #[arg(long, value_name = "DIR", conflicts_with = "creds")]
        dir: Option<PathBuf>,
        /// With --dir holding several peels: which one.
        #[arg(long, value_name = "ID", requires = "dir")]
        id: Option<String>,
        /// The master's client URL. Default: the profile's.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// The master's CA certificate. Default: the profile's CA pin.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Trust only a CA with this pin in the server's chain.
        #[arg(long, value_name = "sha256:HEX", conflicts_with = "ca")]
        pin: Option<String>,
        /// Print a JSON document (id, creds, expires_at, via) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the peel agent: connects with its creds (re-read from the file at every reconnect,
    /// so rotated creds are picked up), publishes its facts, answers commands (test.ping),
    /// reconnects forever. A server that is down, or a key not accepted yet, is waited for
    /// (retried with backoff, the reason logged at most once a minute). SIGINT/SIGTERM: drain
    /// and exit 0.
    ///
    /// What is not given comes from the peel's profile beside the creds (<id>.json, written
    /// by `zester peel enrol` and `zester creds issue`): the server, the CA pin, the master's
    /// curve key. `zester peel run --dir DIR` runs the peel enrolled into DIR with nothing else.
    Run {
        /// The master's client URL, e.g. tls://master.example:4222; repeat it (or separate
        /// URLs with commas) for the nodes of a cluster: the agent connects to one and fails
        /// over to the others. Default: every server the profile lists.
        #[arg(long, value_name = "URL")]
        server: Vec<String>,
        /// The peel's creds (written by `zester peel enrol` or `zester creds issue`).
        #[arg(long, value_name = "FILE", required_unless_present = "dir")]
        creds: Option<PathBuf>,
        /// The directory `zester peel enrol --dir` wrote (creds, curve seed, profile); its
        /// curve seed, if there, turns on settings.
        #[arg(long, value_name = "DIR", conflicts_with = "creds")]
        dir: Option<PathBuf>,
        /// With --dir holding several peels: which one.
        #[arg(long, value_name = "ID", requires = "dir")]
        id: Option<String>,
        /// The master's CA certificate. Default: the profile's CA pin (else the system roots).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Trust only a CA with this pin in the server's chain (as `peel enrol --pin`).
        #[arg(long, value_name = "sha256:HEX", conflicts_with = "ca")]
        pin: Option<String>,
        /// The peel's curve seed (`<dir>/<id>.xk` from `zester peel enrol`): the agent fetches
        /// its settings after every connect and opens their secrets in memory.
        #[arg(long, value_name = "FILE")]
        xkey: Option<PathBuf>,
        /// The master's curve public key (default: the profile's; "master xkey" printed by
        /// `zester init`).
        #[arg(long, value_name = "X…")]
        from: Option<String>,
        /// Give up with exit 1 when no connection was made within this long (e.g. 30s, 5m).
        /// Default: wait until it works.
        #[arg(long, value_name = "DURATION")]
        connect_timeout: Option<String>,
    },
    /// Enrol this machine as peel ID: makes its nkey and curve key locally (seeds 0600 in
    /// --dir; reused when present), proves the key to the master, waits for an admin to
    /// accept it (with --wait), then writes <dir>/<ID>.creds itself. The seed never leaves.
    Enrol {
        /// The master's client URL, e.g. tls://master.example:4222.
        #[arg(long, value_name = "URL")]
        server: String,
        /// The peel id to enrol as.
        #[arg(long)]
        id: String,
        /// The master's CA certificate (its pki/ca.pem).
        #[arg(long, value_name = "FILE", required_unless_present = "pin")]
        ca: Option<PathBuf>,
        /// The master CA's pin, printed by `zester init`: alone, the CA is taken from the
        /// server's certificate chain only if it has this pin; with --ca, the file is checked.
        #[arg(long, value_name = "sha256:HEX")]
        pin: Option<String>,
        /// Where the seeds and the creds are kept.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// Keep waiting until an admin decides.
        #[arg(long)]
        wait: bool,
        /// A join token from `zester token create` (zjt1.…): the key is accepted at once if
        /// the token allows this id and has uses left. The token's secret never leaves this
        /// machine: the request carries a proof bound to this key. Env: ZESTER_JOIN_TOKEN.
        #[arg(
            long,
            value_name = "TOKEN",
            env = "ZESTER_JOIN_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a join token and print it once (at least 128 bits of secret; the appliance keeps
    /// only its public key and limits, in the KV bucket zester-tokens).
    Create {
        /// Peel ids it may enrol, a glob (`*`, `?`), e.g. "web-*".
        #[arg(long, value_name = "GLOB", default_value = "*")]
        ids: String,
        /// How many peels it may enrol.
        #[arg(long, value_name = "N", default_value_t = 1)]
        uses: u32,
        /// How long it is valid, e.g. 30m, 1h, 7d.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        ttl: String,
        /// A trusted tag every key it enrols gets (shown apart from the peel's own facts);
        /// repeat for more.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Print a JSON document (id, token, ids, uses, expires, tags) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List join tokens: id, ids, uses left, expiry, state, the peels each enrolled (never
    /// a secret: the appliance does not have it).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a join token: it enrols nobody from now on (keys it enrolled stay accepted).
    Revoke {
        /// The token's id (from `token create` or `token list`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// On a new machine: make this node's keys (the node key, its curve key and its TLS key,
    /// which never leaves it), prove them to the cluster at --server, and with --wait wait
    /// until an admin runs `zester node accept NAME`; then write this home (auth/, pki/,
    /// zester.toml with the routes) from what the cluster sends, sealed to this node. Exits 2
    /// while pending (without --wait). Then start the node with `zester up`.
    Join {
        /// A running node's client URL, e.g. tls://node-a.example:4222.
        #[arg(long, value_name = "URL")]
        server: String,
        /// The cluster CA's SPKI pin (`zester init` printed it on the first node).
        #[arg(long, value_name = "sha256:HEX")]
        pin: Option<String>,
        /// The cluster's CA certificate (the first node's pki/ca.pem), instead of or with --pin.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// This node's name: unique in the cluster, stable (nats-server's server_name).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Where this node will listen for clients (server.listen).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:4222")]
        listen: String,
        /// Where this node will listen for the other nodes' routes (cluster.listen; mutual
        /// TLS with the cluster's CA).
        #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:6222")]
        cluster_listen: String,
        /// This node's monitoring address, loopback only (server.monitor).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8222")]
        monitor: String,
        /// Wait until an admin accepts (or refuses) this node.
        #[arg(long)]
        wait: bool,
        /// Print a JSON document (name, state, fingerprint, cluster, routes, client_urls,
        /// home) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Let a joining node in (its `node join --wait` then writes its home).
    Accept {
        /// The node's name.
        name: String,
        /// The fingerprint `node join` printed on the new machine: refused if it differs.
        #[arg(long, value_name = "FP")]
        fingerprint: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminConnArgs,
    },
    /// The cluster's nodes: name, state, client URL, route address, when last seen running.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminConnArgs,
    },
    /// Remove a node: it may not fetch again and the others ignore what it announces.
    Remove {
        /// The node's name.
        name: String,
        /// Remove it even if the nodes left up would be fewer than the cluster needs for key
        /// changes (refused otherwise: start the nodes that are down first).
        #[arg(long)]
        force: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminConnArgs,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain across the files and name the first break (file, line, record,
    /// what is wrong). Exits 0 when intact, 1 at a break.
    ///
    /// Without FILE: the home's audit.log.N … audit.log.1, audit.log, oldest first. The
    /// oldest kept record may link to a file rotated away: that first link is taken on trust
    /// and printed (its seq and prev), to compare with an archived copy or the stream.
    /// Lines older than the chain (written before it existed) are counted, not checked.
    ///
    /// Example: zester audit verify; zester audit verify old/audit.log.2 old/audit.log.1
    Verify {
        /// Files to check, oldest first (default: the home's).
        files: Vec<PathBuf>,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print audit records from the home's files: the last 10 (or --lines N, or all since
    /// --since), one readable line each or, with --json, the JSON lines as written; with
    /// --follow, then every new record as it is written, across rotations, until Ctrl-C.
    ///
    /// Example: zester audit tail --follow --code key_unknown --since 2h
    Tail {
        /// Keep reading as records are written.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only records about this peel id.
        #[arg(long, value_name = "ID")]
        peel: Option<String>,
        /// Only records with this reason code (key_unknown, key_revoked, audit_unavailable …).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
        /// Only records from this long ago on (e.g. 10m, 2h, 7d); then every one, not just
        /// the last --lines.
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// How many of the last matching records to print before following (0 = all).
        /// Default: 10, or all with --since.
        #[arg(long, short = 'n', value_name = "N")]
        lines: Option<usize>,
        /// Print each record as the JSON line written (JSON lines), not text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CredsCommand {
    /// Replace the master's or the admin's creds with a new key. With the appliance running it
    /// does it (the old key's sessions are cut off; zester's own services never use these creds);
    /// otherwise the file is replaced and the next `zester up` uses it.
    ///
    /// `signing-key` rotates the ZESTER account signing key (with zester stopped): a new key
    /// signs from now on, the old one stays valid so peels keep working; once every peel has
    /// fresh creds (`zester peel enrol` again with its --dir, or `zester creds issue`),
    /// `--finish` removes the old key.
    Rotate {
        /// master, admin or signing-key.
        #[arg(value_parser = ["master", "admin", "signing-key"])]
        role: String,
        /// With signing-key: retire the previous signing keys.
        #[arg(long)]
        finish: bool,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Issue creds for a peel: a fresh user nkey and a JWT signed by the ZESTER signing key with
    /// the peel's permissions (its own subjects only).
    ///
    /// Example: zester creds issue web-01 --expiry 90d
    Issue {
        /// The peel id: letters, digits, '_' and '-', starting with a letter or digit, at most
        /// 128 characters.
        id: String,
        /// Where to write the creds (mode 0600). Default: <home>/peels/<ID>.creds.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Lifetime of the JWT, e.g. 180d, 12h, 1y, or 0 for never.
        /// Default: peels.expiry from zester.toml (30d; the peel renews it at 2/3).
        #[arg(long, value_name = "DURATION")]
        expiry: Option<String>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show what a creds file holds (never its seed) and check its chain against the home.
    ///
    /// Exits 1 when the creds are expired or do not chain to this home's operator.
    Inspect {
        /// The creds file.
        file: PathBuf,
        /// Print a JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// On the master: seal a secret for one peel (plaintext from --value or stdin, byte for
    /// byte; the envelope on stdout). Uses the home's master curve key.
    Encrypt {
        /// The peel id: its curve key is read from its key record (needs the running appliance).
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "xkey",
            conflicts_with = "xkey"
        )]
        peel: Option<String>,
        /// The peel's curve public key (X…, as `zester key show` prints); no appliance needed.
        #[arg(long, value_name = "X…")]
        xkey: Option<String>,
        /// The plaintext (default: read stdin). Beware: visible in the process list and shell
        /// history.
        #[arg(long, value_name = "TEXT")]
        value: Option<String>,
    },
    /// On the peel: open an envelope (stdin) with the peel's curve seed; plaintext on stdout.
    Decrypt {
        /// The peel's curve seed file (<dir>/<id>.xk written by `zester peel enrol`).
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "creds",
            conflicts_with = "creds"
        )]
        seed: Option<PathBuf>,
        /// The peel's creds: the seed is <same dir>/<id>.xk, the id being the JWT's name.
        #[arg(long, value_name = "FILE")]
        creds: Option<PathBuf>,
        /// The master's curve public key ("master xkey", printed by `zester init`): it proves
        /// who sealed the secret. Default: the peel's profile (<id>.json beside the seed or
        /// the creds, written by `zester peel enrol` and `zester creds issue`).
        #[arg(long = "from", value_name = "X…")]
        from: Option<String>,
    },
    /// On the master, after a peel rotated its curve key: open an envelope (stdin) sealed by
    /// this home's master key and seal it again to the new key (stdout).
    Rewrap {
        /// The peel's new curve public key.
        #[arg(long, value_name = "X…")]
        xkey: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    init_logging(format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            match format {
                LogFormat::Text => eprintln!("zester: error: {e}"),
                // Every line on stderr is one JSON object in this format.
                LogFormat::Json => tracing::error!(target: "zester", "{e}"),
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let home = Home::locate(cli.home.as_deref())?;
    let now = now_unix();
    let (output, json) = match cli.command {
        Command::Init { force, json } => (commands::init(&home, force, &hostname(), now)?, json),
        Command::Up {
            listen,
            monitor,
            nats_server,
            cluster_listen,
            node_name,
            metrics,
        } => {
            let options = UpOptions {
                listen,
                monitor,
                nats_server,
                hostname: hostname(),
                cluster_listen,
                node_name,
                metrics,
            };
            return up(home, options);
        }
        Command::Peel { command } => return peel_command(command),
        Command::Secret { command } => {
            secret_command(&home, command)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Settings { admin, command } => {
            return settings_command(&home, &admin.target(), command)
        }
        Command::Admin { admin, command } => {
            let target = admin.target();
            let rt = runtime()?;
            match command {
                AdminCommand::Add {
                    name,
                    out,
                    force,
                    json,
                } => (
                    rt.block_on(zester::cli::admins::add(
                        &home,
                        &target,
                        &name,
                        out.as_deref(),
                        force,
                        now,
                    ))?,
                    json,
                ),
                AdminCommand::List { json } => (
                    rt.block_on(zester::cli::admins::list(&home, &target))?,
                    json,
                ),
                AdminCommand::Remove { name, json } => (
                    rt.block_on(zester::cli::admins::remove(&home, &target, &name))?,
                    json,
                ),
            }
        }
        Command::Cmd {
            target,
            fun,
            args,
            timeout,
            json,
            admin,
        } => {
            let secs = zester::identity::time::parse_duration(&timeout)
                .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
            let timeout = std::time::Duration::from_secs(secs.max(1) as u64);
            (
                runtime()?.block_on(zester::cli::cmd::run(
                    &home,
                    &admin.target(),
                    &target,
                    &fun,
                    &args,
                    timeout,
                ))?,
                json,
            )
        }
        Command::Key { admin, command } => {
            runtime()?.block_on(key_command(&home, &admin.target(), command))?
        }
        Command::Token { admin, command } => {
            runtime()?.block_on(token_command(&home, &admin.target(), command))?
        }
        Command::Node { command } => runtime()?.block_on(node_command(&home, command))?,
        Command::Status { json, admin } => {
            match runtime()?.block_on(zester::cli::client::query_status(&home, &admin.target())) {
                Ok(status) => (commands::status(&status), json),
                Err(e) => {
                    eprintln!("zester: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Creds { command } => creds_command(&home, command, now)?,
        Command::Audit { command } => return audit_command(&home, command, now),
        Command::Context {
            command: ContextCommand::Export { name, role, json },
        } => {
            let dir = zester::cli::context::context_dir(
                std::env::var_os("XDG_CONFIG_HOME"),
                std::env::var_os("HOME"),
            )?;
            (
                zester::cli::context::export(&home, &name, role.parse()?, &dir)?,
                json,
            )
        }
    };
    print(&output, json)?;
    Ok(ExitCode::from(u8::try_from(output.exit_code).unwrap_or(1)))
}

/// `zester audit …`: the local audit trail.
fn audit_command(home: &Home, command: AuditCommand, now: i64) -> anyhow::Result<ExitCode> {
    use zester::cli::audit;
    let output = match command {
        AuditCommand::Verify { files, json } => (audit::verify(home, &files)?, json),
        AuditCommand::Tail {
            follow,
            peel,
            code,
            since,
            lines,
            json,
        } => {
            let options = audit::TailOptions {
                filter: zester::wire::audit::Filter {
                    peel,
                    code,
                    since: since.as_deref().map(|s| audit::since(s, now)).transpose()?,
                },
                lines: lines.unwrap_or(if since.is_some() { 0 } else { 10 }),
                follow,
                json,
            };
            audit::tail(home, &options, &mut std::io::stdout().lock())?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    print(&output.0, output.1)?;
    Ok(ExitCode::from(
        u8::try_from(output.0.exit_code).unwrap_or(1),
    ))
}

/// `zester node …`.
async fn node_command(home: &Home, command: NodeCommand) -> anyhow::Result<(Output, bool)> {
    use zester::cli::node;
    Ok(match command {
        NodeCommand::Join {
            server,
            pin,
            ca,
            name,
            listen,
            cluster_listen,
            monitor,
            wait,
            json,
        } => {
            let options = node::JoinOptions {
                server,
                pin,
                ca,
                name,
                listen,
                cluster_listen,
                monitor,
                wait,
                hostname: hostname(),
            };
            let progress = |line: &str| eprintln!("zester: {line}");
            (node::join(home, &options, progress).await?, json)
        }
        NodeCommand::Accept {
            name,
            fingerprint,
            json,
            admin,
        } => (
            node::change(home, &admin.target(), &name, fingerprint, false, false).await?,
            json,
        ),
        NodeCommand::List { json, admin } => (node::list(home, &admin.target()).await?, json),
        NodeCommand::Remove {
            name,
            force,
            json,
            admin,
        } => (
            node::change(home, &admin.target(), &name, None, true, force).await?,
            json,
        ),
    })
}

/// `zester up`: runs the appliance until SIGINT/SIGTERM.
fn up(home: Home, options: UpOptions) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut signals = StopSignals::install()?;
        match Appliance::start_unless_stopped(home, options, &mut signals).await? {
            Some(appliance) => appliance.run_until_signal(signals).await,
            None => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `zester peel …`: the peel side.
fn peel_command(command: PeelCommand) -> anyhow::Result<ExitCode> {
    match command {
        PeelCommand::Run {
            server,
            creds,
            dir,
            id,
            ca,
            pin,
            xkey,
            from,
            connect_timeout,
        } => {
            let inputs = zester::peel::profile::RunInputs {
                server: (!server.is_empty()).then(|| server.join(",")),
                creds,
                ca,
                pin,
                xkey,
                from,
                dir,
                id,
            };
            let (options, settings) = zester::peel::profile::resolve_run(inputs)?;
            let timeout = connect_timeout
                .map(|text| {
                    zester::identity::time::parse_duration(&text)
                        .map(|secs| std::time::Duration::from_secs(secs.max(0) as u64))
                        .map_err(|e| anyhow::anyhow!("--connect-timeout: {e}"))
                })
                .transpose()?;
            let ran =
                runtime()?.block_on(zester::peel::agent::run_waiting(options, settings, timeout));
            match ran {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e @ zester::peel::AgentError::GaveUp { .. }) => {
                    eprintln!("zester: {e}");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
        PeelCommand::Renew {
            creds,
            dir,
            id,
            server,
            ca,
            pin,
            json,
        } => {
            let inputs = zester::peel::profile::RunInputs {
                server,
                creds,
                ca,
                pin,
                dir,
                id,
                ..Default::default()
            };
            let (options, _) = zester::peel::profile::resolve_run(inputs)?;
            let renewed = match runtime()?.block_on(zester::peel::renew::renew_once(&options)) {
                Ok(renewed) => renewed,
                Err(e) => {
                    eprintln!(
                        "zester: {e}; the creds in {} are unchanged",
                        options.creds.display()
                    );
                    return Ok(ExitCode::from(1));
                }
            };
            let until = match renewed.expires_at {
                0 => "never expires".to_string(),
                at => format!("valid until {}", zester::identity::time::rfc3339(at)),
            };
            let output = Output {
                human: format!(
                    "renewed peel {}: identity JWT {until}; creds replaced in {}\n",
                    renewed.id,
                    renewed.creds.display()
                ),
                json: serde_json::json!({
                    "id": renewed.id.as_str(),
                    "creds": renewed.creds,
                    "expires_at": (renewed.expires_at > 0).then_some(renewed.expires_at),
                    "via": renewed.via,
                }),
                exit_code: 0,
            };
            print(&output, json)?;
            Ok(ExitCode::SUCCESS)
        }
        PeelCommand::Rotate { server, creds, ca } => {
            let options = zester::peel::rotate::RotateOptions { server, creds, ca };
            let fingerprint = runtime()?.block_on(zester::peel::rotate::rotate(&options))?;
            println!(
                "key rotated: new key {fingerprint}; creds replaced in {}; the old key is revoked",
                options.creds.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PeelCommand::Enrol {
            server,
            id,
            ca,
            pin,
            dir,
            wait,
            token,
        } => {
            let options = zester::peel::enrol::EnrolOptions {
                server,
                id: id.clone(),
                ca,
                pin,
                dir,
                wait,
                token,
            };
            let outcome = runtime()?.block_on(zester::peel::enrol::enrol(&options, |step| {
                eprintln!("zester: {step}")
            }))?;
            Ok(match outcome {
                zester::peel::enrol::EnrolOutcome::Enrolled { creds } => {
                    println!("enrolled as {id}: creds written to {}", creds.display());
                    ExitCode::SUCCESS
                }
                zester::peel::enrol::EnrolOutcome::Pending { fingerprint } => {
                    println!(
                    "pending: ask an admin to run `zester key accept {id} --fingerprint {fingerprint}`, then run this again (or use --wait)"
                );
                    ExitCode::SUCCESS
                }
                zester::peel::enrol::EnrolOutcome::Rejected => {
                    eprintln!("zester: the key for {id} was rejected by an admin");
                    ExitCode::from(1)
                }
            })
        }
    }
}

/// `zester settings set|show`, through the admin API.
fn settings_command(
    home: &Home,
    target: &zester::cli::client::AdminTarget,
    command: SettingsCommand,
) -> anyhow::Result<ExitCode> {
    let (subject, body) = match command {
        SettingsCommand::Set { id, file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
            };
            let document: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", file.display()))?;
            (
                zester::wire::admin::SETTINGS_SET,
                serde_json::json!({ "id": id, "document": document }),
            )
        }
        SettingsCommand::Show { id } => (
            zester::wire::admin::SETTINGS_GET,
            serde_json::json!({ "id": id }),
        ),
    };
    let answer = runtime()?.block_on(async {
        let client = zester::cli::client::admin_connect_to(home, target).await?;
        zester::cli::client::admin_request(&client, subject, &body).await
    })?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(ExitCode::SUCCESS)
}

/// `zester creds …`.
fn creds_command(home: &Home, command: CredsCommand, now: i64) -> anyhow::Result<(Output, bool)> {
    Ok(match command {
        CredsCommand::Issue {
            id,
            out,
            expiry,
            force,
            json,
        } => (
            runtime()?.block_on(commands::creds_issue(
                home,
                &id,
                out.as_deref(),
                expiry.as_deref(),
                force,
                now,
            ))?,
            json,
        ),
        CredsCommand::Rotate { role, finish, json } if role == "signing-key" => {
            (commands::signing_key_rotate(home, finish, now)?, json)
        }
        CredsCommand::Rotate { role, json, .. } => (
            runtime()?.block_on(commands::creds_rotate(home, &role, now))?,
            json,
        ),
        CredsCommand::Inspect { file, json } => (commands::creds_inspect(home, &file, now)?, json),
    })
}

fn print(output: &Output, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let text = if json {
        format!("{}\n", serde_json::to_string_pretty(&output.json)?)
    } else {
        output.human.clone()
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // A reader that stopped early (`| head`) is not an error of ours.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

async fn token_command(
    home: &Home,
    target: &zester::cli::client::AdminTarget,
    command: TokenCommand,
) -> anyhow::Result<(Output, bool)> {
    use zester::cli::token;
    Ok(match command {
        TokenCommand::Create {
            ids,
            uses,
            ttl,
            tags,
            json,
        } => (
            token::create(
                home,
                target,
                &token::CreateOptions {
                    ids,
                    uses,
                    ttl,
                    tags,
                },
            )
            .await?,
            json,
        ),
        TokenCommand::List { json } => (token::list(home, target).await?, json),
        TokenCommand::Revoke { id, json } => (token::revoke(home, target, &id).await?, json),
    })
}

async fn key_command(
    home: &Home,
    target: &zester::cli::client::AdminTarget,
    command: KeyCommand,
) -> anyhow::Result<(Output, bool)> {
    use zester::wire::record::KeyState;
    let act = |to: Option<KeyState>, from: Option<KeyState>, args: KeyActionArgs| {
        let KeyActionArgs { target, options } = args;
        (
            commands::KeyAction {
                to,
                from,
                target,
                yes: options.yes,
                reason: options.reason,
                fingerprint: options.fingerprint,
                replace: false,
            },
            options.json,
        )
    };
    let (action, only, json) = match command {
        KeyCommand::List { state, json } => {
            let (state, denied) = match state.as_str() {
                "all" => (None, false),
                "denied" => (None, true),
                other => (Some(parse_state(other)?), false),
            };
            return Ok((commands::key_list(home, target, state, denied).await?, json));
        }
        KeyCommand::Show { id, json } => {
            return Ok((commands::key_show(home, target, &id).await?, json))
        }
        KeyCommand::Accept {
            all_pending,
            reconsider,
            replace,
            target,
            mut options,
        } => {
            let target = match (all_pending, target) {
                (true, _) => "*".to_string(),
                (false, Some(target)) => target,
                (false, None) => anyhow::bail!("name a peel id or glob, or pass --all-pending"),
            };
            let only = all_pending.then_some(KeyState::Pending);
            let from = if reconsider {
                KeyState::Rejected
            } else {
                KeyState::Pending
            };
            options.yes |= all_pending;
            let (mut action, json) = act(
                Some(KeyState::Accepted),
                Some(from),
                KeyActionArgs { target, options },
            );
            action.replace = replace;
            (action, only, json)
        }
        KeyCommand::Reject(args) => {
            let (a, j) = act(Some(KeyState::Rejected), Some(KeyState::Pending), args);
            (a, None, j)
        }
        KeyCommand::Revoke(args) => {
            let (a, j) = act(Some(KeyState::Revoked), Some(KeyState::Accepted), args);
            (a, None, j)
        }
        KeyCommand::Delete(args) => {
            let (a, j) = act(None, None, args);
            (a, None, j)
        }
    };
    let output = commands::key_act(home, target, &action, only, confirm).await?;
    Ok((output, json))
}

/// `zester secret …`: reads stdin, writes stdout; errors never carry plaintext.
fn secret_command(home: &Home, command: SecretCommand) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use zester::secrets;
    let mut input = Vec::new();
    let read_stdin = |input: &mut Vec<u8>| std::io::stdin().read_to_end(input).map(|_| ());
    let out = match command {
        SecretCommand::Encrypt { peel, xkey, value } => {
            let recipient = match (xkey, peel) {
                (Some(xkey), _) => xkey,
                (None, Some(id)) => {
                    runtime()?.block_on(zester::cli::secret::peel_xkey(home, &id))?
                }
                (None, None) => anyhow::bail!("give --peel ID or --xkey X…"),
            };
            let master = home.load_authority()?.master_xkey;
            let plaintext = match value {
                Some(value) => value.into_bytes(),
                None => {
                    read_stdin(&mut input)?;
                    input
                }
            };
            format!("{}\n", secrets::seal(&plaintext, &master, &recipient)?).into_bytes()
        }
        SecretCommand::Decrypt { seed, creds, from } => {
            let seed = match (seed, creds) {
                (Some(seed), _) => seed,
                (None, Some(creds)) => zester::cli::secret::seed_path_for_creds(&creds)?,
                (None, None) => anyhow::bail!("give --seed FILE or --creds FILE"),
            };
            // The seed is <dir>/<id>.xk, and the profile <dir>/<id>.json.
            let profile = seed.with_extension("json");
            let from = zester::peel::profile::master_xkey(from, &profile).map_err(|reason| {
                anyhow::anyhow!(
                    "the master's curve key is not known ({reason}): give --from X… (the master xkey `zester init` printed)"
                )
            })?;
            let key = zester::cli::secret::read_seed_file(&seed)?;
            read_stdin(&mut input)?;
            let text = String::from_utf8(input).map_err(|_| secrets::SecretError::NotEnvelope)?;
            secrets::open(&text, &key, &from)?
        }
        SecretCommand::Rewrap { xkey } => {
            let master = home.load_authority()?.master_xkey;
            read_stdin(&mut input)?;
            let text = String::from_utf8(input).map_err(|_| secrets::SecretError::NotEnvelope)?;
            format!("{}\n", secrets::rewrap(&text, &master, &xkey)?).into_bytes()
        }
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(())
}

fn parse_state(text: &str) -> anyhow::Result<zester::wire::record::KeyState> {
    use zester::wire::record::KeyState;
    Ok(match text {
        "pending" => KeyState::Pending,
        "accepted" => KeyState::Accepted,
        "rejected" => KeyState::Rejected,
        "revoked" => KeyState::Revoked,
        other => {
            anyhow::bail!("--state {other:?}: use pending, accepted, rejected, revoked or all")
        }
    })
}

/// Asks on the terminal before acting on several keys; refuses when nobody can answer.
fn confirm(ids: &[String]) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        eprintln!(
            "zester: {} keys match: {}; pass --yes to act on all of them",
            ids.len(),
            ids.join(", ")
        );
        return false;
    }
    eprint!(
        "{} keys match: {}\nProceed? [y/N] ",
        ids.len(),
        ids.join(", ")
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    matches!(line.trim(), "y" | "Y" | "yes")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Logs to stderr at the level in ZESTER_LOG (error, warn, info, debug, trace; default info).
/// The NATS client library's own connection chatter is kept to warnings unless debugging.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = std::env::var("ZESTER_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let client_level = if level >= tracing::Level::DEBUG {
        level
    } else {
        tracing::Level::WARN
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_target("async_nats", client_level);
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(filter)
        .init();
}

/// This machine's hostname, for the TLS certificate (empty when unknown).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
