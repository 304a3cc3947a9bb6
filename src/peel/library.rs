//! The peel side as a library, for an application that runs as a peel with its own code (as
//! the Go Zester's `LoadCredsFile` / `NATSOptionsForPeel`): find the peel's creds and profile,
//! get async-nats connect options that keep to the peel's rights, keep its identity JWT renewed,
//! and read its settings and secrets. `examples/peel.rs` answers a command in a few lines with it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::StreamExt;
//! let peel = zester::peel::Peel::from_dir("/etc/zester-peel".as_ref())?;
//! let client = peel.connect().await?;
//! let _renewal = peel.keep_renewed(&client); // renews the identity JWT before it expires
//! let mut commands = client.subscribe(peel.command_subject()).await?;
//! while let Some(command) = commands.next().await {
//!     if let Some(reply) = command.reply.filter(|r| zester::peel::Peel::may_answer(r)) {
//!         client.publish(reply, "true".into()).await?;
//!     }
//! }
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use async_nats::ConnectOptions;
use serde_json::Value;

use super::agent::{
    load_creds, peel_options, AgentError, AgentOptions, ReconnectPacing, SettingsKey,
};
use super::profile::{resolve_run, RunInputs, RunSetupError};
use super::settings::SettingsError;
use crate::identity::peel_id::PeelId;

/// One peel, as an application sees it: who it is, where its master is and how to trust it,
/// and (when its curve seed and the master's key are known) how to open its secrets.
#[derive(Debug, Clone)]
pub struct Peel {
    id: PeelId,
    options: AgentOptions,
    settings_key: Option<SettingsKey>,
    /// Paces the reconnects of clients made by [`Peel::connect_options`]; shared, so that
    /// [`Peel::keep_renewed`] can make the reconnect after a renewal an immediate one.
    pacing: Arc<ReconnectPacing>,
}

/// Why a secret could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PeelSecretError {
    /// No curve seed or no master key for this peel.
    #[error(
        "peel {id} has no curve seed (<id>.xk) or no master key (profile) to open secrets with"
    )]
    NoKey {
        /// The peel.
        id: String,
    },
    /// The seed file cannot be used.
    #[error("cannot read the curve seed {path}: {reason}")]
    Seed {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The envelope does not open.
    #[error(transparent)]
    Envelope(#[from] crate::secrets::SecretError),
}

impl Peel {
    /// The peel whose creds are at `creds`; the server, the CA pin and the master's key come
    /// from the profile beside them (`<id>.json`), the curve seed from `<id>.xk` if it is there.
    pub fn from_creds(creds: &Path) -> Result<Peel, RunSetupError> {
        let id = super::profile::creds_id(creds)?;
        let seed = creds.with_file_name(format!("{id}.xk"));
        Peel::resolve(RunInputs {
            creds: Some(creds.to_path_buf()),
            xkey: seed.exists().then_some(seed),
            ..RunInputs::default()
        })
    }

    /// The peel `zester peel enrol --dir DIR` enrolled (the only creds in DIR).
    pub fn from_dir(dir: &Path) -> Result<Peel, RunSetupError> {
        Peel::resolve(RunInputs {
            dir: Some(dir.to_path_buf()),
            ..RunInputs::default()
        })
    }

    fn resolve(inputs: RunInputs) -> Result<Peel, RunSetupError> {
        let (options, settings_key) = resolve_run(inputs)?;
        let (_, id) = load_creds(&options.creds).map_err(|e| RunSetupError::NotAPeel {
            path: options.creds.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Peel {
            id,
            options,
            settings_key,
            pacing: Arc::new(ReconnectPacing::default()),
        })
    }

    /// The peel id.
    pub fn id(&self) -> &PeelId {
        &self.id
    }

    /// The master's URL this peel connects to.
    pub fn server(&self) -> &str {
        &self.options.server
    }

    /// Where commands for this peel arrive: `zester.cmd.<id>`.
    pub fn command_subject(&self) -> String {
        crate::wire::subjects::cmd(self.id.as_str())
    }

    /// True when a command's reply subject may be answered: only the admin's and the master's
    /// inboxes. A peel's answer goes out with its right to reply, so answering anywhere else
    /// would let a command's sender use the peel to write where it may not.
    pub fn may_answer(reply: &str) -> bool {
        crate::wire::reply::check_command_reply(reply).is_ok()
    }

    /// async-nats options that connect as this peel: creds re-read at every (re)connect (so a
    /// rotation just works), TLS by the CA file or the pinned CA, the name `zester-peel-<id>`,
    /// the inbox prefix `_INBOX.<id>`, reconnects forever with the fleet's backoff. Setting
    /// another event callback on them replaces the one that paces reconnects.
    pub fn connect_options(&self) -> ConnectOptions {
        let events = self.pacing.clone();
        peel_options(&self.options, &self.id, self.pacing.clone()).event_callback(move |event| {
            events.on_event(&event);
            async {}
        })
    }

    /// Connects as this peel.
    pub async fn connect(&self) -> Result<async_nats::Client, AgentError> {
        self.connect_options()
            .connect(crate::net::connect::server_list(&self.options.server))
            .await
            .map_err(|source| AgentError::Connect {
                url: self.options.server.clone(),
                source,
            })
    }

    /// Keeps this peel's identity JWT renewed over `client` (one made with
    /// [`Peel::connect_options`]), as `zester peel run` does: at 2/3 of its lifetime plus
    /// jitter, the creds file replaced atomically, then `client` reconnected at once with it
    /// (nats-server ends a connection when the JWT it was opened with expires). Runs until the
    /// returned task is aborted or the client is gone.
    pub fn keep_renewed(&self, client: &async_nats::Client) -> tokio::task::JoinHandle<()> {
        let (renewed_tx, renewed_rx) = tokio::sync::mpsc::channel(1);
        let reconnects = tokio::spawn(super::agent::reconnect_after_renewal(
            client.clone(),
            self.pacing.clone(),
            renewed_rx,
        ));
        let renewal =
            super::renew::renew_forever(client.clone(), self.options.creds.clone(), renewed_tx);
        tokio::spawn(async move {
            renewal.await;
            reconnects.abort();
        })
    }

    /// This peel's settings document, with its secrets opened in memory when the peel's curve
    /// seed and the master's key are known (else as stored, sealed); `None` when it has none.
    pub async fn settings(
        &self,
        client: &async_nats::Client,
    ) -> Result<Option<Value>, SettingsError> {
        let document = super::settings::fetch(client, &self.id).await?;
        match (document, self.curve_key()) {
            (Some(document), Ok((seed, master))) => {
                super::settings::open_secrets(&document, &seed, &master).map(Some)
            }
            (document, _) => Ok(document),
        }
    }

    /// Opens a secret envelope (`ENC[…]`) sealed by the master for this peel.
    pub fn open_secret(&self, envelope: &str) -> Result<Vec<u8>, PeelSecretError> {
        let (seed, master) = self.curve_key()?;
        Ok(crate::secrets::open(envelope, &seed, &master)?)
    }

    fn curve_key(&self) -> Result<(nkeys::XKey, String), PeelSecretError> {
        let key = self
            .settings_key
            .as_ref()
            .ok_or_else(|| PeelSecretError::NoKey {
                id: self.id.to_string(),
            })?;
        let seed_error = |reason: String| PeelSecretError::Seed {
            path: key.xkey_seed.display().to_string(),
            reason,
        };
        let text =
            std::fs::read_to_string(&key.xkey_seed).map_err(|e| seed_error(e.to_string()))?;
        let seed = nkeys::XKey::from_seed(text.trim())
            .map_err(|_| seed_error("not a curve seed".into()))?;
        Ok((seed, key.master_xkey.clone()))
    }
}
