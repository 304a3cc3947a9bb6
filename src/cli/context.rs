//! `zester context export`: a nats CLI context (ADR-21) for this node's admin or master user.
//!
//! The context is a JSON file `$XDG_CONFIG_HOME/nats/context/<name>.json` (default
//! `~/.config/nats/context/`) with the field names of jsm.go's `natscontext` package. It
//! names files, it never copies them: `creds` and `ca` are absolute paths into the home, so
//! a rotated creds file is picked up and no secret is duplicated. `inbox_prefix` matters for
//! the admin: zester lets it subscribe only to `_INBOX._admin.>`, so on a client's default
//! inbox every request fails with a permission violation. The master may use any inbox; it
//! gets `_INBOX._master`, the master's prefix (the one peels answer commands into).
//!
//! Deciding the document (URL, fields, where it goes) is pure and unit-tested; [`export`] only
//! reads the home and writes the file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::cli::output::Output;
use crate::home::runtime::RuntimeInfo;
use crate::home::{self, Home, HomeError};
use crate::permissions;

/// The context name used when none is given.
pub const DEFAULT_NAME: &str = "zester";

/// Which service user the context logs in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `auth/admin.creds`: key management and status.
    Admin,
    /// `auth/master.creds`: reaches every peel.
    Master,
}

impl Role {
    /// "admin" or "master", also the creds file's stem.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Master => "master",
        }
    }

    /// The inbox prefix zester's permissions give this user (for the admin, the only one
    /// it may receive replies on).
    pub fn inbox_prefix(self) -> &'static str {
        match self {
            Role::Admin => permissions::ADMIN_INBOX_PREFIX,
            Role::Master => permissions::MASTER_INBOX_PREFIX,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = ContextError;
    fn from_str(s: &str) -> Result<Role, ContextError> {
        match s {
            "admin" => Ok(Role::Admin),
            "master" => Ok(Role::Master),
            other => Err(ContextError::Role {
                value: other.to_string(),
            }),
        }
    }
}

/// Why no context was written.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A name the nats CLI could not load, or one that would leave the context directory.
    #[error("context name {name:?}: use letters, digits, '_', '-' and '.', not starting with '.'")]
    Name {
        /// The name given.
        name: String,
    },
    /// An unknown role.
    #[error("role {value:?}: use admin or master")]
    Role {
        /// The value given.
        value: String,
    },
    /// Neither XDG_CONFIG_HOME nor HOME is set.
    #[error("cannot tell where the nats CLI keeps contexts: set XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    /// `server.listen` is not HOST:PORT.
    #[error("server.listen = {value:?} is not HOST:PORT")]
    Listen {
        /// The value.
        value: String,
    },
    /// The role's creds are missing (home not initialised, or damaged).
    #[error("{} is missing: run `zester init` first", path.display())]
    MissingCreds {
        /// The creds file looked for.
        path: PathBuf,
    },
    /// Reading the home or writing the file failed.
    #[error(transparent)]
    Home(#[from] HomeError),
}

/// Checks a context name: one plain file name the nats CLI accepts.
pub fn validate_name(name: &str) -> Result<(), ContextError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ContextError::Name {
            name: name.to_string(),
        })
    }
}

/// The nats CLI's context directory: `$XDG_CONFIG_HOME/nats/context`, else
/// `$HOME/.config/nats/context` (empty variables count as unset, as in the CLI).
pub fn context_dir(
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, ContextError> {
    let base = match (xdg_config_home, home) {
        (Some(x), _) if !x.is_empty() => PathBuf::from(x),
        (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".config"),
        _ => return Err(ContextError::NoConfigDir),
    };
    Ok(base.join("nats").join("context"))
}

/// The client URL: the running appliance's when there is one, else `tls://` + `listen`
/// with a wildcard host replaced by loopback (a client cannot dial 0.0.0.0).
pub fn client_url(running: Option<&str>, listen: &str) -> Result<String, ContextError> {
    if let Some(url) = running {
        return Ok(url.to_string());
    }
    let bad = || ContextError::Listen {
        value: listen.to_string(),
    };
    let (host, port) = listen.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "[::]" | "::" => "[::1]",
        other => other,
    };
    Ok(format!("tls://{host}:{port}"))
}

/// The context document, with jsm.go `natscontext` field names. Fields zester does not use
/// are left out; the CLI treats missing fields as empty.
pub fn context_json(name: &str, role: Role, url: &str, creds: &Path, ca: &Path) -> Value {
    json!({
        "description": format!("zester {} ({name})", role.as_str()),
        "url": url,
        "creds": creds.display().to_string(),
        "ca": ca.display().to_string(),
        "inbox_prefix": role.inbox_prefix(),
    })
}

/// The URL of a live `zester up` on `home`, if its runtime file names a living process.
fn running_url(home: &Home) -> Option<String> {
    RuntimeInfo::live(home).map(|runtime| runtime.url)
}

fn absolute(path: PathBuf) -> Result<PathBuf, ContextError> {
    std::path::absolute(&path).map_err(|source| {
        ContextError::Home(HomeError::Io {
            action: "resolve",
            path,
            source,
        })
    })
}

/// `url` (this node's), then the client URL of every other accepted node of the cluster, as
/// the home's copy of the node records lists them: what a client given them fails over among.
pub fn with_every_node(home: &Home, url: String) -> Vec<String> {
    let mut urls = vec![url];
    for node in home.node_records() {
        if node.state == crate::wire::node::NodeState::Accepted && !urls.contains(&node.client_url)
        {
            urls.push(node.client_url);
        }
    }
    urls
}

/// Writes the context for `role` as `name` into `dir` (0700, file 0600, atomically) and says
/// what it did. The creds and CA are referred to by absolute path, never copied or printed.
pub fn export(home: &Home, name: &str, role: Role, dir: &Path) -> Result<Output, ContextError> {
    validate_name(name)?;
    let creds = absolute(home.service_creds(role.as_str()))?;
    if !creds.is_file() {
        return Err(ContextError::MissingCreds { path: creds });
    }
    let ca = absolute(home.ca_cert())?;
    let running = running_url(home);
    let listen = match running {
        Some(_) => String::new(),
        None => home.load_config()?.server.listen,
    };
    let url = client_url(running.as_deref(), &listen)?;
    // In a cluster, every node's URL (this one first): the nats CLI fails over among them.
    let url = with_every_node(home, url).join(",");
    let document = context_json(name, role, &url, &creds, &ca);
    let path = dir.join(format!("{name}.json"));
    home::create_private_dir(dir)?;
    let mut text = serde_json::to_vec_pretty(&document).unwrap_or_default();
    text.push(b'\n');
    home::write_atomic(&path, &text, home::SECRET_MODE)?;

    let source = if running.is_some() {
        "the running appliance"
    } else {
        "server.listen (zester is not running)"
    };
    let human = format!(
        "wrote nats context {name} ({role}) to {path}\n  url           {url}  (from {source})\n  creds         {creds}\n  ca            {ca}\n  inbox_prefix  {inbox}  (the {role} user's inbox in zester's permissions)\nuse it: nats --context {name} rtt   (or `nats context select {name}`)\n",
        role = role.as_str(),
        path = path.display(),
        creds = creds.display(),
        ca = ca.display(),
        inbox = role.inbox_prefix(),
    );
    Ok(Output {
        human,
        json: json!({
            "name": name,
            "path": path.display().to_string(),
            "role": role.as_str(),
            "context": document,
            "hint": format!("nats --context {name} rtt"),
        }),
        exit_code: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_context_directory() {
        for good in ["zester", "t1", "prod-admin", "a.b_c"] {
            validate_name(good).unwrap();
        }
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a b", "ä"] {
            assert!(
                matches!(validate_name(bad), Err(ContextError::Name { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn context_dir_prefers_xdg_then_home() {
        let dir = context_dir(Some("/x".into()), Some("/h".into())).unwrap();
        assert_eq!(dir, Path::new("/x/nats/context"));
        let dir = context_dir(Some("".into()), Some("/h".into())).unwrap();
        assert_eq!(dir, Path::new("/h/.config/nats/context"));
        assert!(matches!(
            context_dir(None, None),
            Err(ContextError::NoConfigDir)
        ));
    }

    #[test]
    fn url_from_runtime_wins_and_wildcards_become_loopback() {
        assert_eq!(
            client_url(Some("nats://127.0.0.1:40001"), "0.0.0.0:4222").unwrap(),
            "nats://127.0.0.1:40001"
        );
        assert_eq!(
            client_url(None, "0.0.0.0:4222").unwrap(),
            "tls://127.0.0.1:4222"
        );
        assert_eq!(client_url(None, "[::]:4222").unwrap(), "tls://[::1]:4222");
        assert_eq!(
            client_url(None, "nats.example:4333").unwrap(),
            "tls://nats.example:4333"
        );
        assert!(matches!(
            client_url(None, "nohost"),
            Err(ContextError::Listen { .. })
        ));
        assert!(matches!(
            client_url(None, "h:notaport"),
            Err(ContextError::Listen { .. })
        ));
    }

    #[test]
    fn document_has_the_natscontext_fields_and_the_role_inbox() {
        let doc = context_json(
            "t1",
            Role::Master,
            "tls://127.0.0.1:4222",
            Path::new("/h/auth/master.creds"),
            Path::new("/h/pki/ca.pem"),
        );
        assert_eq!(doc["url"], "tls://127.0.0.1:4222");
        assert_eq!(doc["creds"], "/h/auth/master.creds");
        assert_eq!(doc["ca"], "/h/pki/ca.pem");
        assert_eq!(doc["inbox_prefix"], "_INBOX._master");
        assert!(doc["description"].as_str().unwrap().contains("master"));
        let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5, "only the fields zester sets: {keys:?}");
        assert_eq!(Role::Admin.inbox_prefix(), "_INBOX._admin");
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
        assert!("sys".parse::<Role>().is_err());
    }

    #[test]
    fn export_writes_a_private_file_without_secrets() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("home"));
        home.init(false, "localhost", crate::home::now_unix())
            .unwrap();
        let dir = tmp.path().join("cfg/nats/context");
        let out = export(&home, "t1", Role::Admin, &dir).unwrap();
        let path = dir.join("t1.json");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dmeta = std::fs::metadata(&dir).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["url"], "tls://127.0.0.1:4222");
        assert_eq!(
            Path::new(doc["creds"].as_str().unwrap()),
            std::path::absolute(home.service_creds("admin")).unwrap()
        );
        assert_eq!(doc["inbox_prefix"], "_INBOX._admin");
        let seed_marker = "SU";
        for text in [out.human.as_str(), &out.json.to_string(), &doc.to_string()] {
            assert!(!text.contains("NKEY SEED"), "{text}");
            assert!(!text.contains("-----BEGIN"), "{text}");
            assert!(
                !text
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|w| w.starts_with(seed_marker) && w.len() > 50),
                "{text}"
            );
        }
        assert!(out.human.contains("nats --context t1"));
    }
}
