//! Keeping the creds of zester's own users valid while `zester up` runs (`[service] expiry`):
//! master, admin, callout and sys, each re-issued for its own key at 2/3 of its lifetime
//! ([`Home::renew_own_creds`]), at start before anything connects and then whenever the next
//! one is due.
//!
//! nats-server ends a connection when the JWT it was opened with expires (it arms that timer
//! when it checks the JWT), so a new file alone is not enough for zester's own long-lived
//! connections. Those of a re-issued user are reconnected on purpose with the new file: the
//! callout's connections one at a time, each back in the queue group before the next goes, so
//! an answer to a connecting client is never missing; the system connection at once (what it
//! misses meanwhile, the periodic reconcile repairs). The master's and admins' own clients are
//! not zester's: they read the new file when they reconnect (the fleet master should reconnect
//! when its creds file changes, or before its JWT's `exp`). zester's per-run service and store
//! users never expire: their keys exist only in this process's memory.
//!
//! Every re-issue is logged (target `audit`) and audited (`Source::Renew`, code
//! `service_renewed`; a failure `service_renew_failed`, tried again a minute later).

use std::time::Duration;

use crate::appliance::callout::audit::{AuditRecord, AuditSink, Source, Verdict};
use crate::authority::Authority;
use crate::home::own_creds::RenewedOwnCreds;
use crate::home::{now_unix, Home, HomeError};
use crate::identity::time::rfc3339;

/// The longest single sleep; the files are looked at again after it.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The wait after a failed re-issue.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long one callout connection has to come back before the next one goes anyway.
const BACK_WITHIN: Duration = Duration::from_secs(10);

/// The renewal of zester's own creds in one home.
pub struct OwnRenewal {
    /// The home with the creds.
    pub home: Home,
    /// Signs the new JWTs.
    pub authority: std::sync::Arc<Authority>,
    /// `[service] expiry`, seconds (0 = never).
    pub expiry: i64,
    /// Where re-issues are audited.
    pub audit: AuditSink,
}

/// The long-lived connections that sign in with the home's creds.
pub struct OwnConnections {
    /// The callout's connections (one queue group).
    pub callout: Vec<async_nats::Client>,
    /// The system connection.
    pub sys: async_nats::Client,
}

impl OwnRenewal {
    /// Before anything connects: re-issues what is due (or should expire and does not yet).
    pub fn at_start(&self) -> Result<(), HomeError> {
        let renewed = self
            .home
            .renew_own_creds(&self.authority, self.expiry, now_unix())?;
        for creds in &renewed {
            self.audit_renewed(creds);
        }
        Ok(())
    }

    /// Keeps them valid while running, reconnecting `connections` after each re-issue.
    pub fn spawn(self, connections: OwnConnections) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let now = now_unix();
                let wait = match self.home.next_own_creds_renewal(now) {
                    Some(due) => Duration::from_secs((due - now).max(0) as u64).min(MAX_WAIT),
                    None => MAX_WAIT,
                };
                tokio::time::sleep(wait).await;
                match self
                    .home
                    .renew_own_creds(&self.authority, self.expiry, now_unix())
                {
                    Ok(renewed) => {
                        for creds in &renewed {
                            self.audit_renewed(creds);
                        }
                        reconnect(&connections, &renewed).await;
                    }
                    Err(e) => {
                        let mut record =
                            AuditRecord::at(now_unix(), Source::Renew, Verdict::Refuse);
                        record.code = "service_renew_failed".into();
                        record.reason = e.to_string();
                        self.audit.record(record);
                        tracing::warn!(target: "audit", "renewing zester's own creds failed, trying again in a minute: {e}");
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
        })
    }

    fn audit_renewed(&self, creds: &RenewedOwnCreds) {
        let until = match creds.expires_at {
            0 => "never expires".to_string(),
            at => format!("valid until {}", rfc3339(at)),
        };
        tracing::info!(target: "audit", user = creds.name, "{} creds re-issued, {until}", creds.name);
        let mut record = AuditRecord::at(now_unix(), Source::Renew, Verdict::Allow);
        record.code = "service_renewed".into();
        record.role = creds.name.to_string();
        record.reason = format!("{} creds re-issued, {until}", creds.name);
        self.audit.record(record);
    }
}

/// Reconnects the connections whose creds were re-issued: the callout's one at a time.
async fn reconnect(connections: &OwnConnections, renewed: &[RenewedOwnCreds]) {
    let renewed = |name: &str| renewed.iter().any(|r| r.name == name);
    if renewed("callout") {
        for client in &connections.callout {
            reconnect_one(client).await;
        }
    }
    if renewed("sys") {
        reconnect_one(&connections.sys).await;
    }
}

/// Reconnects `client` and waits (up to [`BACK_WITHIN`]) until it is connected again: the
/// server gives every connection a new client id, so a new id means the new connection is up.
async fn reconnect_one(client: &async_nats::Client) {
    let before = client.server_info().client_id;
    if let Err(e) = client.force_reconnect().await {
        tracing::warn!("reconnecting with re-issued creds: {e}");
        return;
    }
    let back = async {
        while client.server_info().client_id == before
            || client.connection_state() != async_nats::connection::State::Connected
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(BACK_WITHIN, back).await.is_err() {
        tracing::warn!(
            "a connection did not come back within {BACK_WITHIN:?} after its creds were re-issued"
        );
    }
    // Its subscription is re-sent right after the connect; give the server a moment.
    tokio::time::sleep(Duration::from_millis(25)).await;
}
