//! The on-disk home of a zester node: its layout, atomic private writes, and `init`.
//!
//! Every path zester uses is built here and nowhere else. Layout (DESIGN §3):
//!
//! ```text
//! $ZESTER_HOME/            0700  (default ~/.local/share/zester)
//!   zester.toml                  configuration (never overwritten by init)
//!   auth/                  0700  operator.jwt, *.nk seeds, sys.jwt, zester.jwt, *.xk curve
//!                                seeds, callout/master/admin/sys .creds
//!   pki/                   0700  ca.pem, ca.key, server.pem, server.key, server-chain.pem
//!   nats/                  0700  generated nats-server config, jetstream/, log
//!   peels/                 0700  creds exported by `zester creds issue`
//! ```
//!
//! Files are written atomically (temp file in the same directory, fsync, rename, fsync of the
//! directory) with mode 0600 for secrets and 0644 for public material. `init` builds `auth/` and
//! `pki/` in staging directories and renames them into place, `auth/` last, so a home either has
//! a complete `auth/` or none: a killed init is simply run again.

pub mod admins;
pub mod config;
pub mod join;
pub mod journal;
pub mod own_creds;
pub mod runtime;

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::authority::{Authority, AuthorityError, ServiceUsers, StoredAuthority};
use crate::home::config::{Config, ConfigError, DEFAULT_CONFIG_TOML};
use crate::identity::creds::{Creds, CredsError};
use crate::permissions::Role;
use crate::pki::{self, PkiError, ServerNames};

/// Mode of secret files.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of public files (JWTs, certificates).
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of every directory zester creates.
pub const DIR_MODE: u32 = 0o700;

/// What went wrong with the home or a file in it.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// A file system operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "read", "create directory"…).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// No home there yet.
    #[error("no zester home at {}: run `zester init` first (or point --home / ZESTER_HOME at an existing one)", root.display())]
    NotInitialised {
        /// The home looked at.
        root: PathBuf,
    },
    /// `init` without `--force` on an existing home.
    #[error("{} already holds a zester home; `zester init --force` replaces its keys (the old ones are kept in {}/auth.replaced-*, and every creds issued so far stops working)", root.display(), root.display())]
    AlreadyInitialised {
        /// The home.
        root: PathBuf,
    },
    /// Neither --home, ZESTER_HOME nor HOME is set.
    #[error("cannot tell where the zester home is: set ZESTER_HOME or pass --home DIR")]
    NoHomeDirectory,
    /// A creds file is broken.
    #[error("{}: {source}", path.display())]
    Creds {
        /// The file.
        path: PathBuf,
        /// The problem.
        source: CredsError,
    },
    /// The stored keys and JWTs are broken or do not belong together.
    #[error("the keys in {} are damaged: {source}. Restore auth/ from a backup, or re-create the home with `zester init --force`", dir.display())]
    Authority {
        /// The auth directory.
        dir: PathBuf,
        /// The problem (boxed: it is large and rare).
        source: Box<AuthorityError>,
    },
    /// The configuration file is invalid.
    #[error("{}: {source}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The problem.
        source: ConfigError,
    },
    /// The TLS PKI could not be made.
    #[error("TLS certificates: {0}")]
    Pki(#[from] PkiError),
    /// A JSON document of the home (the named admins) cannot be read.
    #[error("{} is damaged: {source}; restore it from a backup", path.display())]
    Document {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

pub(crate) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> HomeError {
    let path = path.to_path_buf();
    move |source| HomeError::Io {
        action,
        path,
        source,
    }
}

/// Creates `dir` and any missing parents with mode 0700 (existing ones are left as they are,
/// except `dir` itself, which is set to 0700).
pub fn create_private_dir(dir: &Path) -> Result<(), HomeError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_error("create directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
        .map_err(io_error("set permissions on", dir))
}

/// Writes `contents` to `path` atomically with `mode`: never a partial file, never a moment
/// with looser permissions.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), HomeError> {
    write_atomic_with(path, contents, mode, |_| Ok(()))
}

/// [`write_atomic`] with a hook run after the temp file is synced and before the rename, so
/// tests can inject a failure (or a crash) at the worst moment.
pub fn write_atomic_with(
    path: &Path,
    contents: &[u8],
    mode: u32,
    before_rename: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), HomeError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A temp name of our own: pid and a random part, so neither a concurrent writer nor the
    // leftover of a killed process with the same pid is ever opened or removed by mistake.
    let (temp, mut file) = create_temp(dir, &name, mode).map_err(io_error("create", path))?;
    // Errors name `path`, the file the user asked for: the temp file is gone by the time they
    // read the message (a full disk reads "could not write …/web-01.creds: No space left").
    let result = (|| {
        // The umask may have narrowed the mode; widen it back to exactly `mode`.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("set permissions on", path))?;
        file.write_all(contents).map_err(io_error("write", path))?;
        file.sync_all().map_err(io_error("sync", path))?;
        before_rename(&temp).map_err(io_error("write", path))?;
        fs::rename(&temp, path).map_err(io_error("replace", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Creates `<dir>/.<name>.<pid>.<random>.tmp` with `mode`, trying other random parts if a name
/// is taken.
fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..16 {
        let temp = dir.join(format!(
            ".{name}.{}.{:08x}.tmp",
            std::process::id(),
            rand::random::<u32>()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temp file name")))
}

fn read_text(path: &Path) -> Result<String, HomeError> {
    fs::read_to_string(path).map_err(io_error("read", path))
}

/// The SPKI pin (`sha256:<hex>`) of the certificate in the PEM file `path`.
pub fn cert_file_pin(path: &Path) -> Result<String, HomeError> {
    let pem = fs::read_to_string(path).map_err(|source| HomeError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(crate::pki::spki_pin_from_cert_pem(&pem)?)
}

/// Parses `text` as the `.creds` file `path` will hold; errors name the file.
pub fn read_creds_text(path: &Path, text: &str) -> Result<Creds, HomeError> {
    Creds::parse(text).map_err(|source| HomeError::Creds {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and parses a `.creds` file; errors name the file.
pub fn read_creds(path: &Path) -> Result<Creds, HomeError> {
    let text = read_text(path)?;
    Creds::parse(&text).map_err(|source| HomeError::Creds {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a `.creds` file atomically with mode 0600, creating its directory (0700) if needed.
pub fn write_creds(path: &Path, creds: &Creds) -> Result<(), HomeError> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        create_private_dir(dir)?;
    }
    write_atomic(path, creds.to_text().as_bytes(), SECRET_MODE)
}

/// The home directory of one zester node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

/// The installed server certificate (see [`Home::server_cert_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCertStatus {
    /// Its names, validity, key pin and serial.
    pub summary: pki::CertSummary,
    /// Whether the key and the chain nats-server loads belong to this certificate.
    pub consistent: bool,
}

/// What `init` made, for the caller to report (public material only).
#[derive(Debug)]
pub struct InitReport {
    /// The home.
    pub root: PathBuf,
    /// Operator identity key.
    pub operator: String,
    /// SYS account key.
    pub sys_account: String,
    /// ZESTER account key.
    pub zester_account: String,
    /// ZESTER signing key.
    pub zester_signing_key: String,
    /// Callout curve key.
    pub callout_xkey: String,
    /// Master curve key.
    pub master_xkey: String,
    /// SPKI pin of the CA.
    pub ca_pin: String,
    /// Names in the server certificate.
    pub tls_names: Vec<String>,
    /// Whether an existing home's keys were replaced (and where they were moved).
    pub replaced: Option<PathBuf>,
}

impl Home {
    /// A home at `root` (nothing is checked or created).
    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The home given by `--home`/`ZESTER_HOME` (already merged by the caller into `explicit`),
    /// else `$XDG_DATA_HOME/zester`, else `~/.local/share/zester`.
    pub fn locate(explicit: Option<&Path>) -> Result<Home, HomeError> {
        if let Some(path) = explicit {
            return Ok(Home::at(path));
        }
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(data) = env("XDG_DATA_HOME") {
            return Ok(Home::at(data.join("zester")));
        }
        env("HOME")
            .map(|home| Home::at(home.join(".local/share/zester")))
            .ok_or(HomeError::NoHomeDirectory)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `zester.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("zester.toml")
    }
    /// `auth/`.
    pub fn auth_dir(&self) -> PathBuf {
        self.root.join("auth")
    }
    /// `auth/zester.jwt`: this node's copy of the ZESTER account JWT.
    pub fn zester_jwt_file(&self) -> PathBuf {
        self.auth_dir().join("zester.jwt")
    }
    /// `pki/`.
    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }
    /// `nats/`.
    pub fn nats_dir(&self) -> PathBuf {
        self.root.join("nats")
    }
    /// `peels/`.
    pub fn peels_dir(&self) -> PathBuf {
        self.root.join("peels")
    }
    /// The generated nats-server configuration.
    pub fn nats_config_file(&self) -> PathBuf {
        self.nats_dir().join("nats-server.conf")
    }
    /// The nats resolver's account JWT directory (claim updates survive restarts there).
    pub fn resolver_dir(&self) -> PathBuf {
        self.nats_dir().join("jwt")
    }
    /// JetStream's store.
    pub fn jetstream_dir(&self) -> PathBuf {
        self.nats_dir().join("jetstream")
    }
    /// The mode JetStream last ran in on this store, `standalone` or `clustered`
    /// (`appliance::grow`).
    pub fn jetstream_mode_file(&self) -> PathBuf {
        self.nats_dir().join("jetstream.mode")
    }
    /// A standalone node's store, set aside while a node that grew into a cluster copies its
    /// buckets over (removed once the copy is verified).
    pub fn jetstream_set_aside_dir(&self) -> PathBuf {
        self.nats_dir().join("jetstream.standalone")
    }
    /// The private standalone nats-server that reads the set-aside store: its config and ports
    /// file.
    pub fn grow_dir(&self) -> PathBuf {
        self.nats_dir().join("grow")
    }
    /// nats-server's pid file.
    pub fn nats_pid_file(&self) -> PathBuf {
        self.nats_dir().join("nats-server.pid")
    }
    /// Written by a running `zester up`: its pid and where it listens (removed on clean exit).
    pub fn runtime_file(&self) -> PathBuf {
        self.nats_dir().join("runtime.json")
    }
    /// The audit log, one JSON line per decision.
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit.log")
    }
    /// The audit log's files that exist, oldest first: `audit.log.N` … `audit.log.1`, then
    /// `audit.log` (see [`audit_files_of`]).
    pub fn audit_files(&self) -> Vec<PathBuf> {
        audit_files_of(&self.audit_log())
    }
    /// Where `zester creds issue ID` writes by default.
    pub fn peel_creds(&self, id: &str) -> PathBuf {
        self.peels_dir().join(format!("{id}.creds"))
    }
    /// `keys/journal/`: key records registered while no appliance ran (`creds issue`), waiting
    /// to be imported into the key store.
    pub fn keys_journal_dir(&self) -> PathBuf {
        self.root.join("keys").join("journal")
    }
    /// `keys/journal/rejected/`: journal entries that could not be imported.
    pub fn keys_journal_rejected_dir(&self) -> PathBuf {
        self.keys_journal_dir().join("rejected")
    }
    /// `auth/admins.json`: the named admins this home trusts (`zester admin add`).
    pub fn admins_file(&self) -> PathBuf {
        self.auth_dir().join("admins.json")
    }
    /// `auth/admins.synced.json`: the named admins as this node last had them in common with
    /// the cluster's list (the bucket `zester-admins`): what tells an offline `zester admin add`
    /// or `remove` since then from a list that is merely behind the cluster's.
    pub fn admins_synced_file(&self) -> PathBuf {
        self.auth_dir().join("admins.synced.json")
    }
    /// `admins/`: where `zester admin add NAME` writes `NAME.creds` by default.
    pub fn admins_dir(&self) -> PathBuf {
        self.root.join("admins")
    }
    /// Where `zester admin add NAME` writes by default: `admins/<name>.creds`.
    pub fn admin_creds(&self, name: &str) -> PathBuf {
        self.admins_dir().join(format!("{name}.creds"))
    }
    /// A service user's creds: `auth/<name>.creds` (callout, master, admin, sys).
    pub fn service_creds(&self, name: &str) -> PathBuf {
        self.auth_dir().join(format!("{name}.creds"))
    }
    /// The CA certificate peels verify the server with.
    pub fn ca_cert(&self) -> PathBuf {
        self.pki_dir().join("ca.pem")
    }
    /// The SPKI pin of this home's CA (`sha256:<hex>`), as `init` printed it.
    pub fn ca_pin(&self) -> Result<String, HomeError> {
        cert_file_pin(&self.ca_cert())
    }
    /// The server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.pki_dir().join("server.pem")
    }
    /// The server certificate followed by the CA certificate: what nats-server presents, so
    /// that a peel knowing only the CA's pin can find the CA in the chain.
    pub fn server_chain(&self) -> PathBuf {
        self.pki_dir().join("server-chain.pem")
    }
    /// Writes [`Home::server_chain`] from the certificates (homes made before it existed).
    pub fn write_server_chain(&self) -> Result<(), HomeError> {
        let chain = format!(
            "{}{}",
            read_text(&self.server_cert())?,
            read_text(&self.ca_cert())?
        );
        write_atomic(&self.server_chain(), chain.as_bytes(), PUBLIC_MODE)
    }
    /// The server key.
    pub fn server_key(&self) -> PathBuf {
        self.pki_dir().join("server.key")
    }
    /// The CA's private key (only needed to issue server certificates).
    pub fn ca_key(&self) -> PathBuf {
        self.pki_dir().join("ca.key")
    }

    /// `[server] cert_lifetime` of `config` as a duration, errors naming this home's file.
    pub fn cert_lifetime(&self, config: &Config) -> Result<Duration, HomeError> {
        let seconds = config.cert_lifetime().map_err(|source| HomeError::Config {
            path: self.config_file(),
            source,
        })?;
        // Never 0 and never negative (`Config::cert_lifetime` refuses those).
        Ok(Duration::from_secs(
            u64::try_from(seconds).unwrap_or(1).max(1),
        ))
    }

    /// The server certificate installed now, as nats-server would load it: the certificate's
    /// names and validity, and whether `server.key` and the first certificate of
    /// `server-chain.pem` (when it exists) belong to it. A pair that does not belong together
    /// is what a renewal interrupted between two of its writes leaves.
    pub fn server_cert_status(&self) -> Result<ServerCertStatus, HomeError> {
        let summary = pki::inspect_cert_pem(&read_text(&self.server_cert())?)?;
        let key_pin = pki::spki_pin_from_key_pem(&read_text(&self.server_key())?)?;
        let chain_matches = match fs::read_to_string(self.server_chain()) {
            Ok(chain) => pki::inspect_cert_pem(&chain)?.spki_pin == summary.spki_pin,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_error("read", &self.server_chain())(e)),
        };
        Ok(ServerCertStatus {
            consistent: key_pin == summary.spki_pin && chain_matches,
            summary,
        })
    }

    /// Issues a new server certificate with this home's CA for `names`, valid until
    /// `now + lifetime` (never past the CA), and installs it: `server.key` (0600), then
    /// `server.pem` and `server-chain.pem` (0644), each written atomically. Until all three are
    /// written nats-server must not be told to reload; a crash in between leaves a pair that
    /// [`Home::server_cert_status`] reports as not consistent. Returns the new certificate.
    pub fn reissue_server_cert(
        &self,
        names: &ServerNames,
        lifetime: Duration,
        now: std::time::SystemTime,
    ) -> Result<pki::CertSummary, HomeError> {
        let ca_cert = read_text(&self.ca_cert())?;
        let ca_key = read_text(&self.ca_key())?;
        let (cert_pem, key_pem) = pki::issue_server_cert(&ca_cert, &ca_key, names, now, lifetime)?;
        let summary = pki::inspect_cert_pem(&cert_pem)?;
        write_atomic(&self.server_key(), key_pem.as_bytes(), SECRET_MODE)?;
        self.install_server_cert(&cert_pem, &ca_cert)?;
        Ok(summary)
    }

    /// [`Home::reissue_server_cert`] for the key `server.key` holds now, which stays: a node
    /// of a cluster keeps its key, since the other nodes pin its routes to it (`pinned_certs`
    /// lists keys, not certificates). Writes `server.pem`, then `server-chain.pem`.
    pub fn reissue_server_cert_keeping_key(
        &self,
        names: &ServerNames,
        lifetime: Duration,
        now: std::time::SystemTime,
    ) -> Result<pki::CertSummary, HomeError> {
        let ca_cert = read_text(&self.ca_cert())?;
        let ca_key = read_text(&self.ca_key())?;
        let key = pki::P256PublicKey::of_key_pem(&read_text(&self.server_key())?)?;
        let cert_pem = pki::issue_server_cert_for(&ca_cert, &ca_key, &key, names, now, lifetime)?;
        let summary = pki::inspect_cert_pem(&cert_pem)?;
        self.install_server_cert(&cert_pem, &ca_cert)?;
        Ok(summary)
    }

    /// Writes `server.pem`, then `server-chain.pem` (the certificate and the CA), each
    /// atomically.
    fn install_server_cert(&self, cert_pem: &str, ca_cert: &str) -> Result<(), HomeError> {
        write_atomic(&self.server_cert(), cert_pem.as_bytes(), PUBLIC_MODE)?;
        write_atomic(
            &self.server_chain(),
            format!("{cert_pem}{ca_cert}").as_bytes(),
            PUBLIC_MODE,
        )
    }
    /// The operator JWT.
    pub fn operator_jwt(&self) -> PathBuf {
        self.auth_dir().join(AUTH_FILES[2].0)
    }

    /// True when the home has been initialised (its `auth/` exists).
    pub fn is_initialised(&self) -> bool {
        self.auth_dir().join(AUTH_FILES[2].0).is_file()
    }

    /// Reads `zester.toml` (defaults when the file does not exist).
    pub fn load_config(&self) -> Result<Config, HomeError> {
        let path = self.config_file();
        if !path.exists() {
            return Ok(Config::default());
        }
        Config::parse(&read_text(&path)?).map_err(|source| HomeError::Config { path, source })
    }

    /// Loads and cross-checks the stored hierarchy.
    pub fn load_authority(&self) -> Result<Authority, HomeError> {
        if !self.is_initialised() {
            return Err(HomeError::NotInitialised {
                root: self.root.clone(),
            });
        }
        let dir = self.auth_dir();
        let mut stored = StoredAuthority::default();
        for (name, field, _) in AUTH_FILES {
            let path = dir.join(name);
            *field(&mut stored) = match fs::read_to_string(&path) {
                // A node that joined a cluster has no identity seeds (`Authority::assemble`).
                Err(e) if e.kind() == io::ErrorKind::NotFound && IDENTITY_SEEDS.contains(&name) => {
                    String::new()
                }
                read => read.map_err(io_error("read", &path))?,
            };
        }
        Authority::assemble(&stored).map_err(|source| HomeError::Authority {
            dir,
            source: Box::new(source),
        })
    }

    /// Creates the home: hierarchy, service creds, TLS PKI and `zester.toml`.
    ///
    /// Refuses an initialised home unless `force`; with `force` the old `auth/` and `pki/` are
    /// moved aside to `auth.replaced-<now>` / `pki.replaced-<now>`, never deleted.
    pub fn init(&self, force: bool, hostname: &str, now: i64) -> Result<InitReport, HomeError> {
        let replacing = self.is_initialised();
        if replacing && !force {
            return Err(HomeError::AlreadyInitialised {
                root: self.root.clone(),
            });
        }
        create_private_dir(&self.root)?;
        let config_path = self.config_file();
        if !config_path.exists() {
            write_atomic(&config_path, DEFAULT_CONFIG_TOML.as_bytes(), PUBLIC_MODE)?;
        }
        let config = self.load_config()?;
        let cert_lifetime = self.cert_lifetime(&config)?;
        let names = ServerNames::defaults(hostname, &config.server.tls_names)?;
        let (authority, users) =
            Authority::generate(now).map_err(|source| HomeError::Authority {
                dir: self.auth_dir(),
                source: Box::new(source),
            })?;
        let pki = pki::generate(&names, system_time(now), cert_lifetime)?;

        let auth_stage = self.root.join("auth.new");
        let pki_stage = self.root.join("pki.new");
        for stage in [&auth_stage, &pki_stage] {
            if stage.exists() {
                fs::remove_dir_all(stage).map_err(io_error("remove stale", stage))?;
            }
            create_private_dir(stage)?;
        }
        write_authority(&auth_stage, &authority, &users)?;
        for (name, contents, mode) in [
            ("ca.pem", &pki.ca_cert_pem, PUBLIC_MODE),
            ("ca.key", &pki.ca_key_pem, SECRET_MODE),
            ("server.pem", &pki.server_cert_pem, PUBLIC_MODE),
            ("server.key", &pki.server_key_pem, SECRET_MODE),
            (
                "server-chain.pem",
                &format!("{}{}", pki.server_cert_pem, pki.ca_cert_pem),
                PUBLIC_MODE,
            ),
        ] {
            write_atomic(&pki_stage.join(name), contents.as_bytes(), mode)?;
        }
        for dir in [self.nats_dir(), self.peels_dir()] {
            create_private_dir(&dir)?;
        }

        let mut replaced = None;
        if replacing {
            let aside = self.root.join(format!("auth.replaced-{now}"));
            rename(&self.auth_dir(), &aside)?;
            replaced = Some(aside);
        }
        if self.pki_dir().exists() {
            // Either replaced with --force, or left by an init that was interrupted.
            rename(
                &self.pki_dir(),
                &self.root.join(format!("pki.replaced-{now}")),
            )?;
        }
        rename(&pki_stage, &self.pki_dir())?;
        rename(&auth_stage, &self.auth_dir())?;
        sync_dir(&self.root)?;

        let mut tls_names: Vec<String> = names.dns.clone();
        tls_names.extend(names.ips.iter().map(|ip| ip.to_string()));
        Ok(InitReport {
            root: self.root.clone(),
            operator: authority.operator.public_key(),
            sys_account: authority.sys.public_key(),
            zester_account: authority.zester.public_key(),
            zester_signing_key: authority.zester_signer.public_key(),
            callout_xkey: authority.callout_xkey.public_key(),
            master_xkey: authority.master_xkey.public_key(),
            ca_pin: pki.ca_pin()?,
            tls_names,
            replaced,
        })
    }
}

impl Home {
    /// Rotates the ZESTER account signing key (see [`Authority::rotate_signing_key`]), or with
    /// `finish` retires the previous ones. Files are written in an order that keeps the home
    /// consistent if the process dies between two of them: the account JWT (listing old and
    /// new keys) first, then the new seed, then the re-issued service creds. Returns the public
    /// key now signing.
    pub fn rotate_signing_key(&self, finish: bool, now: i64) -> Result<String, HomeError> {
        let authority = self.load_authority()?;
        let damaged = |source| HomeError::Authority {
            dir: self.auth_dir(),
            source: Box::new(source),
        };
        let dir = self.auth_dir();
        let write_account = |authority: &Authority| {
            write_atomic(
                &dir.join("zester.jwt"),
                format!("{}\n", authority.zester_jwt.token()).as_bytes(),
                PUBLIC_MODE,
            )
        };
        if finish {
            // A rotation killed before it rewrote the service creds left them signed by a key
            // about to be retired: sign them again (same keys) with the current one first.
            self.reissue_creds_signed_by_old_keys(&authority, now)?;
            let authority = authority
                .retire_previous_signing_keys(now)
                .map_err(damaged)?;
            write_account(&authority)?;
            return Ok(authority.zester_signer.public_key());
        }
        let callout_path = self.service_creds("callout");
        let callout_key = owned_key(&callout_path, &read_creds(&callout_path)?)?;
        let (authority, users) = authority
            .rotate_signing_key(now, callout_key)
            .map_err(damaged)?;
        write_account(&authority)?;
        write_atomic(
            &dir.join("zester-signing.nk"),
            format!("{}\n", authority.to_stored().zester_signing_seed).as_bytes(),
            SECRET_MODE,
        )?;
        for (name, creds) in [
            ("callout", &users.callout),
            ("master", &users.master),
            ("admin", &users.admin),
        ] {
            write_creds(&self.service_creds(name), creds)?;
        }
        Ok(authority.zester_signer.public_key())
    }
}

impl Home {
    /// Re-issues, with the same key, every service creds (callout, master, admin) that the
    /// current ZESTER signing key did not sign; returns their names.
    fn reissue_creds_signed_by_old_keys(
        &self,
        authority: &Authority,
        now: i64,
    ) -> Result<Vec<&'static str>, HomeError> {
        let current = authority.zester_signer.public_key();
        let mut reissued = Vec::new();
        for (name, role) in [
            ("callout", Role::Callout),
            ("master", Role::Master),
            ("admin", Role::Admin(None)),
        ] {
            let path = self.service_creds(name);
            let creds = read_creds(&path)?;
            if creds.jwt().claims().iss == current {
                continue;
            }
            let key = owned_key(&path, &creds)?;
            let fresh = authority
                .issue_creds(key, name, &role, now, 0)
                .map_err(|source| HomeError::Authority {
                    dir: self.auth_dir(),
                    source: Box::new(source),
                })?;
            write_creds(&path, &fresh)?;
            tracing::warn!(creds = %path.display(), "re-signed with the current signing key (the last rotation did not finish)");
            reissued.push(name);
        }
        Ok(reissued)
    }
}

/// A key pair of its own made from the seed in `creds` (read from `path`), to issue new creds
/// for the same key.
pub(crate) fn owned_key(path: &Path, creds: &Creds) -> Result<nkeys::KeyPair, HomeError> {
    nkeys::KeyPair::from_seed(&creds.key().seed().unwrap_or_default()).map_err(|_| {
        HomeError::Creds {
            path: path.to_path_buf(),
            source: CredsError::Seed(crate::identity::keys::KeyError::InvalidSeed),
        }
    })
}

pub(crate) type StoredField = fn(&mut StoredAuthority) -> &mut String;

/// The identity seeds of the operator and the accounts: the files a node that joined a cluster
/// does not have (they stay on the node that made them).
pub const IDENTITY_SEEDS: [&str; 3] = ["operator.nk", "sys.nk", "zester.nk"];

/// File name, the stored field it holds, and whether it is secret.
pub(crate) const AUTH_FILES: [(&str, StoredField, bool); 11] = [
    ("operator.nk", |s| &mut s.operator_seed, true),
    (
        "operator-signing.nk",
        |s| &mut s.operator_signing_seed,
        true,
    ),
    ("operator.jwt", |s| &mut s.operator_jwt, false),
    ("sys.nk", |s| &mut s.sys_seed, true),
    ("sys-signing.nk", |s| &mut s.sys_signing_seed, true),
    ("sys.jwt", |s| &mut s.sys_jwt, false),
    ("zester.nk", |s| &mut s.zester_seed, true),
    ("zester-signing.nk", |s| &mut s.zester_signing_seed, true),
    ("zester.jwt", |s| &mut s.zester_jwt, false),
    ("callout.xk", |s| &mut s.callout_xkey_seed, true),
    ("master.xk", |s| &mut s.master_xkey_seed, true),
];

fn write_authority(
    dir: &Path,
    authority: &Authority,
    users: &ServiceUsers,
) -> Result<(), HomeError> {
    let mut stored = authority.to_stored();
    for (name, field, secret) in AUTH_FILES {
        let mode = if secret { SECRET_MODE } else { PUBLIC_MODE };
        let text = format!("{}\n", field(&mut stored));
        write_atomic(&dir.join(name), text.as_bytes(), mode)?;
    }
    for (name, creds) in [
        ("callout", &users.callout),
        ("master", &users.master),
        ("admin", &users.admin),
        ("sys", &users.sys),
    ] {
        write_creds(&dir.join(format!("{name}.creds")), creds)?;
    }
    Ok(())
}

pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), HomeError> {
    fs::rename(from, to).map_err(io_error("move", from))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), HomeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync directory", dir))
}

/// Unix seconds to `SystemTime` (times before 1970 clamp to the epoch).
pub fn system_time(unix: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0))
}

/// The current time in unix seconds (the one clock read the CLI makes).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The files of the log at `log` that exist, oldest first: its rotated copies `<log>.N` (by
/// number, highest first, whatever gaps a changed `keep` left), then `log` itself if present.
pub fn audit_files_of(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut rotated: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let file = entry.file_name().to_string_lossy().into_owned();
                    let number = file.strip_prefix(&prefix)?.parse::<u64>().ok()?;
                    Some((number, entry.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    rotated.sort_by_key(|(number, _)| std::cmp::Reverse(*number));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, path)| path).collect();
    if std::fs::symlink_metadata(log).is_ok() {
        files.push(log.to_path_buf());
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn atomic_writes_set_the_mode_and_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.creds");
        write_atomic(&path, b"old", SECRET_MODE).unwrap();
        assert_eq!(mode(&path), 0o600);
        write_atomic(&path, b"new", PUBLIC_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn a_failure_before_rename_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.creds");
        write_atomic(&path, b"old", SECRET_MODE).unwrap();
        let err = write_atomic_with(&path, b"half-written new", SECRET_MODE, |temp| {
            assert!(temp.exists(), "the temp file is complete before the rename");
            Err(io::Error::other("injected crash"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("injected crash"));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temp file was cleaned up");
    }

    #[test]
    fn a_failed_write_names_the_file_asked_for_not_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/x.creds");
        let err = write_atomic(&path, b"new", SECRET_MODE).unwrap_err();
        let HomeError::Io {
            path: named,
            source,
            ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(named, &path, "{err}");
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(err
            .to_string()
            .starts_with(&format!("could not create {}: ", path.display())));
    }

    #[test]
    fn init_makes_a_private_complete_home_and_refuses_to_clobber_it() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        let report = home.init(false, "testhost", 1_800_000_000).unwrap();
        assert!(report.ca_pin.starts_with("sha256:"));
        assert!(report.tls_names.contains(&"testhost".to_string()));
        for d in [
            home.root().to_path_buf(),
            home.auth_dir(),
            home.pki_dir(),
            home.peels_dir(),
        ] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        for (name, _, secret) in AUTH_FILES {
            assert_eq!(
                mode(&home.auth_dir().join(name)),
                if secret { 0o600 } else { 0o644 },
                "{name}"
            );
        }
        for name in ["callout", "master", "admin", "sys"] {
            assert_eq!(mode(&home.service_creds(name)), 0o600);
            read_creds(&home.service_creds(name)).unwrap();
        }
        assert_eq!(mode(&home.pki_dir().join("ca.key")), 0o600);
        assert_eq!(mode(&home.server_key()), 0o600);
        let authority = home.load_authority().unwrap();
        assert_eq!(authority.operator.public_key(), report.operator);

        assert!(matches!(
            home.init(false, "testhost", 1_800_000_001),
            Err(HomeError::AlreadyInitialised { .. })
        ));
        let again = home.init(true, "testhost", 1_800_000_002).unwrap();
        assert_ne!(again.operator, report.operator);
        let aside = again.replaced.unwrap();
        assert!(
            aside.join("operator.nk").exists(),
            "old keys are kept, not deleted"
        );
    }

    #[test]
    fn init_and_reissue_use_the_configured_certificate_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        create_private_dir(home.root()).unwrap();
        fs::write(home.config_file(), "[server]\ncert_lifetime = \"20s\"\n").unwrap();
        let now = 1_800_000_000;
        home.init(false, "h", now).unwrap();
        let first = home.server_cert_status().unwrap();
        assert!(first.consistent);
        assert_eq!(first.summary.not_after, system_time(now + 20));

        let lifetime = home.cert_lifetime(&home.load_config().unwrap()).unwrap();
        assert_eq!(lifetime, Duration::from_secs(20));
        let renewed = home
            .reissue_server_cert(&first.summary.names, lifetime, system_time(now + 14))
            .unwrap();
        assert_eq!(renewed.not_after, system_time(now + 34));
        assert_eq!(renewed.names, first.summary.names);
        assert_ne!(renewed.serial, first.summary.serial);
        assert_eq!(mode(&home.server_key()), 0o600);
        assert_eq!(mode(&home.server_cert()), 0o644);
        assert_eq!(mode(&home.server_chain()), 0o644);
        let status = home.server_cert_status().unwrap();
        assert!(status.consistent);
        assert_eq!(status.summary, renewed);
        assert_eq!(
            home.ca_pin().unwrap(),
            pki::spki_pin_from_cert_pem(
                fs::read_to_string(home.server_chain())
                    .unwrap()
                    .split_inclusive("-----END CERTIFICATE-----\n")
                    .nth(1)
                    .unwrap()
            )
            .unwrap(),
            "the chain still ends with the same CA"
        );
    }

    #[test]
    fn a_cluster_nodes_renewal_keeps_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        let now = 1_800_000_000;
        home.init(false, "h", now).unwrap();
        let first = home.server_cert_status().unwrap();
        let key = fs::read(home.server_key()).unwrap();
        let renewed = home
            .reissue_server_cert_keeping_key(
                &first.summary.names,
                Duration::from_secs(60),
                system_time(now + 10),
            )
            .unwrap();
        assert_ne!(renewed.serial, first.summary.serial);
        assert_eq!(renewed.spki_pin, first.summary.spki_pin, "the same key");
        assert_eq!(fs::read(home.server_key()).unwrap(), key);
        let status = home.server_cert_status().unwrap();
        assert!(status.consistent);
        assert_eq!(status.summary, renewed);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        home.init(false, "h", 1_800_000_000).unwrap();
        // What a renewal killed after writing the new key leaves behind.
        let other = pki::generate(
            &ServerNames::defaults("h", &[]).unwrap(),
            system_time(1_800_000_000),
            pki::SERVER_VALIDITY,
        )
        .unwrap();
        write_atomic(
            &home.server_key(),
            other.server_key_pem.as_bytes(),
            SECRET_MODE,
        )
        .unwrap();
        assert!(!home.server_cert_status().unwrap().consistent);
    }

    #[test]
    fn an_interrupted_init_is_simply_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        create_private_dir(&home.root().join("auth.new")).unwrap();
        fs::write(home.root().join("auth.new/operator.nk"), "partial").unwrap();
        create_private_dir(&home.pki_dir()).unwrap();
        assert!(!home.is_initialised());
        home.init(false, "h", 1_800_000_000).unwrap();
        home.load_authority().unwrap();
        assert!(!home.root().join("auth.new").exists());
    }

    #[test]
    fn damaged_homes_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        assert!(matches!(
            home.load_authority(),
            Err(HomeError::NotInitialised { .. })
        ));
        home.init(false, "h", 1_800_000_000).unwrap();
        fs::write(home.auth_dir().join("zester.jwt"), "eyJ0eXAi.garbage.x\n").unwrap();
        let err = home.load_authority().unwrap_err().to_string();
        assert!(err.contains("ZESTER account JWT"), "{err}");
        fs::write(home.config_file(), "[server]\nlisten = 5\n").unwrap();
        let err = home.load_config().unwrap_err().to_string();
        assert!(err.contains("zester.toml"), "{err}");
    }
}
