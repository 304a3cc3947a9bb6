//! The home of a node that joined a cluster (`zester node join`): its own keys, made before it
//! asks (the node key, its curve key, its TLS key, in `node/`), and, once the cluster sent its
//! bundle, `auth/`, `pki/` and `zester.toml`, written like `init` writes them: staged, then
//! renamed into place with `auth/` last, so a home has a complete `auth/` or none.

use std::path::PathBuf;

use nkeys::{KeyPair, XKey};

use crate::authority::{Authority, StoredAuthority};
use crate::home::config::DEFAULT_CONFIG_TOML;
use crate::home::{
    create_private_dir, io_error, read_creds_text, rename, sync_dir, write_atomic, write_creds,
    Home, HomeError, IDENTITY_SEEDS, PUBLIC_MODE, SECRET_MODE,
};
use crate::wire::node::NodeBundle;

/// The keys a joining node makes for itself and keeps.
pub struct NodeKeys {
    /// Its node key (it proves itself with it; the cluster records it).
    pub key: KeyPair,
    /// Its curve key (the bundle is sealed to it).
    pub xkey: XKey,
    /// Its TLS private key (PEM): it never leaves the node.
    pub tls_key_pem: String,
}

/// Where this node listens, as `zester node join` was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlacement {
    /// `[node] name`.
    pub name: String,
    /// `[server] listen`.
    pub listen: String,
    /// `[server] monitor`.
    pub monitor: String,
    /// `[cluster] listen`.
    pub cluster_listen: String,
}

impl Home {
    /// `nats/nodes.json`: the home's copy of the cluster's node records (public data only),
    /// where a start finds the routes to the other nodes before JetStream runs, and `zester
    /// context export` every node's URL.
    pub fn nodes_file(&self) -> PathBuf {
        self.nats_dir().join("nodes.json")
    }

    /// The node records [`Home::write_node_records`] kept (none when there is no copy or it is
    /// damaged: it is only a copy).
    pub fn node_records(&self) -> Vec<crate::wire::node::NodeRecord> {
        std::fs::read(self.nodes_file())
            .ok()
            .and_then(|text| serde_json::from_slice(&text).ok())
            .unwrap_or_default()
    }

    /// Whether this home is a node of a cluster: its `zester.toml` has `[cluster] listen`, or
    /// its copy of the node records names more than one node that was not removed. What every
    /// node holds a copy of (the ZESTER signing key, the master's and admin's creds) cannot be
    /// changed on one such node alone.
    pub fn is_cluster_node(&self) -> Result<bool, HomeError> {
        let members = self
            .node_records()
            .iter()
            .filter(|node| node.state != crate::wire::node::NodeState::Removed)
            .count();
        Ok(self.load_config()?.clustered() || members > 1)
    }

    /// Writes [`Home::nodes_file`] atomically.
    pub fn write_node_records(
        &self,
        nodes: &[crate::wire::node::NodeRecord],
    ) -> Result<(), HomeError> {
        let text = serde_json::to_vec_pretty(nodes).unwrap_or_default();
        write_atomic(&self.nodes_file(), &text, PUBLIC_MODE)
    }

    /// `node/`: a joining node's own keys, kept across reruns of `zester node join`.
    pub fn node_dir(&self) -> PathBuf {
        self.root().join("node")
    }

    /// The joining node's keys: made on the first run (seeds 0600 in `node/`), read again on
    /// the next ones, so that a rerun (after a crash, or to wait again) asks with the same key.
    pub fn node_keys(&self) -> Result<NodeKeys, HomeError> {
        let dir = self.node_dir();
        create_private_dir(self.root())?;
        create_private_dir(&dir)?;
        let kept = |name: &str, make: &dyn Fn() -> Result<String, HomeError>| {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text.trim().to_string() + "\n"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let made = make()?;
                    write_atomic(&path, made.as_bytes(), SECRET_MODE)?;
                    Ok(made)
                }
                Err(e) => Err(io_error("read", &path)(e)),
            }
        };
        let damaged = |name: &str| HomeError::Creds {
            path: dir.join(name),
            source: crate::identity::creds::CredsError::Seed(
                crate::identity::keys::KeyError::InvalidSeed,
            ),
        };
        let seed = kept("node.nk", &|| {
            Ok(format!(
                "{}\n",
                KeyPair::new_user().seed().unwrap_or_default()
            ))
        })?;
        let key = KeyPair::from_seed(seed.trim()).map_err(|_| damaged("node.nk"))?;
        let xseed = kept("node.xk", &|| {
            Ok(format!("{}\n", XKey::new().seed().unwrap_or_default()))
        })?;
        let xkey = XKey::from_seed(xseed.trim()).map_err(|_| damaged("node.xk"))?;
        let tls_key_pem = kept("server.key", &|| Ok(crate::pki::generate_server_key()?))?;
        Ok(NodeKeys {
            key,
            xkey,
            tls_key_pem,
        })
    }

    /// Writes the home of an accepted node from the cluster's `bundle`: `auth/` (the signing
    /// keys, JWTs, creds it was given, and its own sys creds, signed here with the SYS signing
    /// key), `pki/` (its own TLS key with the certificate the cluster signed for it) and
    /// `zester.toml` (its name, listen addresses, the cluster and its routes). Checks the whole
    /// before anything is renamed into place; returns the authority it now holds.
    pub fn write_joined(
        &self,
        bundle: &NodeBundle,
        keys: &NodeKeys,
        placement: &NodePlacement,
        now: i64,
    ) -> Result<Authority, HomeError> {
        if self.is_initialised() {
            return Err(HomeError::AlreadyInitialised {
                root: self.root().to_path_buf(),
            });
        }
        let stored = StoredAuthority {
            operator_jwt: bundle.operator_jwt.clone(),
            operator_signing_seed: bundle.operator_signing_seed.clone(),
            sys_jwt: bundle.sys_jwt.clone(),
            sys_signing_seed: bundle.sys_signing_seed.clone(),
            zester_jwt: bundle.zester_jwt.clone(),
            zester_signing_seed: bundle.zester_signing_seed.clone(),
            callout_xkey_seed: bundle.callout_xkey_seed.clone(),
            master_xkey_seed: bundle.master_xkey_seed.clone(),
            ..StoredAuthority::default()
        };
        let damaged = |source| HomeError::Authority {
            dir: self.auth_dir(),
            source: Box::new(source),
        };
        let authority = Authority::assemble(&stored).map_err(damaged)?;
        let sys = authority.issue_sys_creds(now).map_err(damaged)?;
        let cert = crate::pki::inspect_cert_pem(&bundle.server_cert)?;
        if cert.spki_pin != crate::pki::spki_pin_from_key_pem(&keys.tls_key_pem)? {
            return Err(crate::pki::PkiError::CaKeyMismatch.into());
        }

        create_private_dir(self.root())?;
        let auth_stage = self.root().join("auth.new");
        let pki_stage = self.root().join("pki.new");
        for stage in [&auth_stage, &pki_stage] {
            if stage.exists() {
                std::fs::remove_dir_all(stage).map_err(io_error("remove stale", stage))?;
            }
            create_private_dir(stage)?;
        }
        let mut stored = authority.to_stored();
        for (name, field, secret) in crate::home::AUTH_FILES {
            let text = field(&mut stored).clone();
            if text.is_empty() && IDENTITY_SEEDS.contains(&name) {
                continue;
            }
            let mode = if secret { SECRET_MODE } else { PUBLIC_MODE };
            write_atomic(&auth_stage.join(name), format!("{text}\n").as_bytes(), mode)?;
        }
        for (name, text) in [
            ("callout", &bundle.callout_creds),
            ("master", &bundle.master_creds),
            ("admin", &bundle.admin_creds),
        ] {
            let path = auth_stage.join(format!("{name}.creds"));
            write_creds(&path, &read_creds_text(&path, text)?)?;
        }
        write_creds(&auth_stage.join("sys.creds"), &sys)?;
        for (name, contents, mode) in [
            ("ca.pem", &bundle.ca_cert, PUBLIC_MODE),
            ("ca.key", &bundle.ca_key, SECRET_MODE),
            ("server.pem", &bundle.server_cert, PUBLIC_MODE),
            ("server.key", &keys.tls_key_pem, SECRET_MODE),
            (
                "server-chain.pem",
                &format!("{}{}", bundle.server_cert, bundle.ca_cert),
                PUBLIC_MODE,
            ),
        ] {
            write_atomic(&pki_stage.join(name), contents.as_bytes(), mode)?;
        }
        write_atomic(
            &self.config_file(),
            node_config(placement, bundle).as_bytes(),
            PUBLIC_MODE,
        )?;
        for dir in [self.nats_dir(), self.peels_dir()] {
            create_private_dir(&dir)?;
        }
        if self.pki_dir().exists() {
            rename(
                &self.pki_dir(),
                &self.root().join(format!("pki.replaced-{now}")),
            )?;
        }
        rename(&pki_stage, &self.pki_dir())?;
        rename(&auth_stage, &self.auth_dir())?;
        sync_dir(self.root())?;
        self.load_authority()
    }
}

/// `zester.toml` of a joined node: the documented defaults with its name, its addresses, the
/// cluster's name and the routes to the other nodes filled in.
pub fn node_config(placement: &NodePlacement, bundle: &NodeBundle) -> String {
    let quote = |text: &str| toml::Value::String(text.to_string()).to_string();
    let routes = toml::Value::Array(
        bundle
            .routes
            .iter()
            .map(|r| toml::Value::String(r.clone()))
            .collect(),
    )
    .to_string();
    let mut text = String::from(
        "# Written by `zester node join`: this node's name, addresses and routes to the other\n\
         # nodes of the cluster. Everything else is the documented default.\n\n",
    );
    text.push_str(
        &DEFAULT_CONFIG_TOML
            .replacen(
                "listen = \"127.0.0.1:4222\"",
                &format!("listen = {}", quote(&placement.listen)),
                1,
            )
            .replacen(
                "monitor = \"127.0.0.1:8222\"",
                &format!("monitor = {}", quote(&placement.monitor)),
                1,
            )
            .replacen(
                "\nname = \"\"\n",
                &format!("\nname = {}\n", quote(&placement.name)),
                1,
            )
            .replacen(
                "\nname = \"zester\"\n",
                &format!("\nname = {}\n", quote(&bundle.cluster_name)),
                1,
            )
            .replacen(
                "\nlisten = \"\"\n",
                &format!("\nlisten = {}\n", quote(&placement.cluster_listen)),
                1,
            )
            .replacen("\nroutes = []\n", &format!("\nroutes = {routes}\n"), 1),
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::config::Config;

    #[test]
    fn a_joined_nodes_config_names_it_and_its_routes() {
        let bundle = NodeBundle {
            cluster_name: "fleet".into(),
            routes: vec!["10.0.0.1:6222".into(), "[fd00::2]:6222".into()],
            client_urls: vec![],
            operator_jwt: String::new(),
            sys_jwt: String::new(),
            zester_jwt: String::new(),
            operator_signing_seed: String::new(),
            sys_signing_seed: String::new(),
            zester_signing_seed: String::new(),
            callout_xkey_seed: String::new(),
            master_xkey_seed: String::new(),
            callout_creds: String::new(),
            master_creds: String::new(),
            admin_creds: String::new(),
            ca_cert: String::new(),
            ca_key: String::new(),
            server_cert: String::new(),
        };
        let placement = NodePlacement {
            name: "node-c".into(),
            listen: "0.0.0.0:4222".into(),
            monitor: "127.0.0.1:8222".into(),
            cluster_listen: "0.0.0.0:6222".into(),
        };
        let config = Config::parse(&node_config(&placement, &bundle)).unwrap();
        assert_eq!(config.node.name, "node-c");
        assert_eq!(config.cluster.name, "fleet");
        assert_eq!(config.cluster.listen, "0.0.0.0:6222");
        assert_eq!(config.cluster.routes, bundle.routes);
        assert_eq!(config.server.listen, "0.0.0.0:4222");
        assert_eq!(config.server.monitor, "127.0.0.1:8222");
        assert!(config.check_cluster().is_ok());
    }
}
