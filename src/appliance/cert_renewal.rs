//! Keeping nats-server's TLS certificate valid while `zester up` runs: re-issued with the home's
//! CA for the names the current certificate carries, once a third of its life is left, and
//! handed to the running child with a reload, without dropping a client.
//!
//! When is decided by pure functions ([`next`], [`renew_at`], [`retry_after`]) of the
//! certificate's validity and the time, unit-tested without files or clocks. The rest is a step
//! of [`Appliance::start`](super::up::Appliance::start) and one task:
//!
//! - [`CertRenewal::at_start`], before the child starts: a certificate that is due, expired, or
//!   whose key or chain does not belong to it (a renewal killed between two writes) is
//!   re-issued there, so the child starts with a good one and needs no reload.
//! - [`CertRenewal::spawn`]: sleeps until the certificate is due (at most [`MAX_WAIT`] at a
//!   time, so that a suspended machine or a clock step is noticed), re-issues it
//!   ([`Home::reissue_server_cert`]: key 0600, certificate and chain, each written atomically),
//!   sends the child SIGHUP and waits for it to report the reload ([`ReloadHandle::reload`]),
//!   then checks with a TLS handshake that nats-server now serves the new certificate. nats-server re-authorises every client on a
//!   reload; the callout lets live connections in again ([`readmit`]), so nobody is dropped.
//!
//! A single node's renewal makes a new key each time; a node of a cluster keeps its key
//! ([`CertRenewal::keeping_key`]), because the other nodes pin its routes to that key
//! (`pinned_certs`, see [`crate::appliance::pinning`]): a new key would be refused by them.
//!
//! Every renewal is logged (target `audit`) and audited (`Source::Renew`, code
//! `cert_renewed`); a failure is audited as `cert_renew_failed` with its reason and tried again
//! after a tenth of the remaining life (between 1 s and an hour). Nothing here ends `zester up`:
//! a certificate that cannot be renewed is still served until it expires. Logs and audit
//! records name certificates by serial, expiry and names; keys never appear. The CA itself is
//! not renewed here.
//!
//! [`readmit`]: super::callout::readmit

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::appliance::broker::supervisor::{BrokerError, InfoHandle, ReloadHandle};
use crate::appliance::callout::audit::{AuditRecord, AuditSink, Source, Verdict};
use crate::home::{Home, HomeError};
use crate::identity::time::rfc3339;
use crate::net::tls::{self, ProbeError};
use crate::pki::{self, CertSummary, PkiError, ServerNames, CLOCK_SKEW};

/// The longest single sleep; the certificate is looked at again after it.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The shortest wait between two renewals (a certificate cut short by a CA about to expire
/// would otherwise be due again at once).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest and longest wait before a failed renewal is tried again.
pub const RETRY_BOUNDS: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
/// How long nats-server has to serve the new certificate after the reload signal.
pub const SERVED_WITHIN: Duration = Duration::from_secs(10);
/// How long one TLS handshake checking the served certificate may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait before trying again when the certificate could not even be read.
const RETRY_UNREADABLE: Duration = Duration::from_secs(60);
/// How often the served certificate is checked while waiting for the reload to take.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// What to do about the installed certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Re-issue it now.
    RenewNow,
    /// Look again after this long.
    Wait(Duration),
}

/// When a certificate valid from `not_before` to `not_after` is due: when a third of its life
/// is left. Its life counts from its issue, [`CLOCK_SKEW`] after the backdated `not_before`, so
/// a certificate issued for 12 s is due 8 s after it was made.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let (issued, life) = life(not_before, not_after);
    not_after.checked_sub(life / 3).unwrap_or(issued)
}

/// When a certificate was issued (never after `not_after`) and how long it lives from then.
fn life(not_before: SystemTime, not_after: SystemTime) -> (SystemTime, Duration) {
    let issued = not_before
        .checked_add(CLOCK_SKEW)
        .unwrap_or(not_before)
        .min(not_after);
    (issued, not_after.duration_since(issued).unwrap_or_default())
}

/// What to do at `now` about a certificate valid from `not_before` to `not_after`, whose key
/// and chain belong to it (`consistent`) or not.
pub fn next(
    not_before: SystemTime,
    not_after: SystemTime,
    consistent: bool,
    now: SystemTime,
) -> Next {
    if !consistent {
        return Next::RenewNow;
    }
    match renew_at(not_before, not_after).duration_since(now) {
        Ok(wait) if !wait.is_zero() => Next::Wait(wait.min(MAX_WAIT)),
        _ => Next::RenewNow,
    }
}

/// How long to wait after a failed renewal of a certificate valid from `not_before` to
/// `not_after`: a tenth of what is left of it (of its whole life once it has expired), within
/// [`RETRY_BOUNDS`].
pub fn retry_after(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Duration {
    let base = match not_after.duration_since(now) {
        Ok(left) if !left.is_zero() => left / 10,
        _ => life(not_before, not_after).1 / 10,
    };
    base.clamp(RETRY_BOUNDS.0, RETRY_BOUNDS.1)
}

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The installed certificate, its key or the chain could not be read.
    #[error("reading the installed server certificate: {0}")]
    Read(#[source] HomeError),
    /// The new certificate could not be issued or written.
    #[error("issuing and installing a new server certificate: {0}")]
    Reissue(#[source] HomeError),
    /// nats-server could not be told to reload.
    #[error("telling nats-server to reload: {0}")]
    Reload(#[source] BrokerError),
    /// The CA file could not be read to check what nats-server serves.
    #[error("reading the CA certificate to check the served certificate: {0}")]
    Ca(#[source] std::io::Error),
    /// nats-server could not be asked which certificate it serves.
    #[error("checking which certificate nats-server serves: {0}")]
    Probe(#[source] ProbeError),
    /// What nats-server serves could not be read.
    #[error("reading the certificate nats-server serves: {0}")]
    Served(#[source] PkiError),
    /// The reload did not take: nats-server still serves another certificate.
    #[error(
        "nats-server (pid {pid}) still serves the certificate with serial {serving} {within:?} \
         after the reload signal, not the new one ({expected}); its log says why (look for \
         \"reload\")"
    )]
    NotServed {
        /// The child signalled.
        pid: u32,
        /// The new certificate's serial.
        expected: String,
        /// The serial served.
        serving: String,
        /// How long it was given.
        within: Duration,
    },
    /// The blocking check could not be run.
    #[error("the served-certificate check did not run: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Renews the home's server certificate (see the module documentation).
#[derive(Debug, Clone)]
pub struct CertRenewal {
    home: Home,
    lifetime: Duration,
    audit: AuditSink,
    keep_key: bool,
}

/// A certificate re-issued but not yet known to be served.
struct Unserved {
    summary: CertSummary,
}

impl CertRenewal {
    /// Renewal of `home`'s certificate with `lifetime` (`[server] cert_lifetime`), audited to
    /// `audit`.
    pub fn new(home: Home, lifetime: Duration, audit: AuditSink) -> CertRenewal {
        CertRenewal {
            home,
            lifetime,
            audit,
            keep_key: false,
        }
    }

    /// The renewal of a node of a cluster: the certificate is re-issued for the key it has
    /// ([`Home::reissue_server_cert_keeping_key`]), since the other nodes pin routes to that
    /// key (`pinned_certs`); a single node gets a new key at every renewal.
    pub fn keeping_key(self) -> CertRenewal {
        CertRenewal {
            keep_key: true,
            ..self
        }
    }

    /// The step before the child starts: re-issues a certificate that is due, expired, not
    /// consistent with its key and chain, or (on a node of a `cluster`) made before clusters,
    /// without the clientAuth use the routes' mutual TLS needs. Failures are logged and
    /// audited, never returned: the child then starts with what there is (and nats-server names
    /// any problem it has with it).
    pub fn at_start(&self, cluster: bool) {
        let now = SystemTime::now();
        let status = match self.home.server_cert_status() {
            Ok(status) => status,
            Err(e) => {
                self.failed(&RenewError::Read(e));
                return;
            }
        };
        let cert = &status.summary;
        let routes_refuse_it = cluster && !cert.client_auth;
        if next(cert.not_before, cert.not_after, status.consistent, now) != Next::RenewNow
            && !routes_refuse_it
        {
            return;
        }
        let why = if routes_refuse_it {
            "it was made for servers only, and cluster routes present it as a client too"
        } else if !status.consistent {
            "its key or chain did not belong to it"
        } else if cert.not_after <= now {
            "it had expired"
        } else {
            "a third of its life was left"
        };
        match self.reissue(&cert.names, now) {
            Ok(summary) => self.renewed(&summary, &format!("at start, before nats-server: {why}")),
            Err(e) => self.failed(&e),
        }
    }

    /// Runs the renewal loop for the supervised child (`reload`, `child` for its client port)
    /// until the task is aborted.
    pub fn spawn(self, reload: ReloadHandle, child: InfoHandle) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(reload, child).await })
    }

    async fn run(self, reload: ReloadHandle, child: InfoHandle) {
        let mut unserved: Option<Unserved> = None;
        // The last certificate seen, to pace retries when even reading fails.
        let mut last: Option<(SystemTime, SystemTime)> = None;
        loop {
            let wait = match self.round(&reload, &child, &mut unserved, &mut last).await {
                Ok(wait) => wait,
                Err(e) => {
                    self.failed(&e);
                    let now = SystemTime::now();
                    last.map_or(RETRY_UNREADABLE, |(nb, na)| retry_after(nb, na, now))
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One look at the certificate: renews it if due; returns how long to sleep.
    async fn round(
        &self,
        reload: &ReloadHandle,
        child: &InfoHandle,
        unserved: &mut Option<Unserved>,
        last: &mut Option<(SystemTime, SystemTime)>,
    ) -> Result<Duration, RenewError> {
        if let Some(pending) = unserved.as_ref() {
            // Installed by an earlier round whose reload did not take: ask again.
            self.hand_over(reload, child, &pending.summary).await?;
            self.renewed(&pending.summary, "nats-server took it on a later attempt");
            *unserved = None;
        }
        let now = SystemTime::now();
        let status = self.home.server_cert_status().map_err(RenewError::Read)?;
        let cert = &status.summary;
        *last = Some((cert.not_before, cert.not_after));
        match next(cert.not_before, cert.not_after, status.consistent, now) {
            Next::Wait(wait) => return Ok(wait),
            Next::RenewNow => {}
        }
        let summary = self.reissue(&cert.names, now)?;
        *last = Some((summary.not_before, summary.not_after));
        *unserved = Some(Unserved {
            summary: summary.clone(),
        });
        let pid = self.hand_over(reload, child, &summary).await?;
        *unserved = None;
        self.renewed(
            &summary,
            &format!("nats-server (pid {pid}) reloaded and serves it"),
        );
        Ok(
            match next(
                summary.not_before,
                summary.not_after,
                true,
                SystemTime::now(),
            ) {
                Next::Wait(wait) => wait.max(MIN_INTERVAL),
                Next::RenewNow => MIN_INTERVAL,
            },
        )
    }

    fn reissue(&self, names: &ServerNames, now: SystemTime) -> Result<CertSummary, RenewError> {
        // A key that does not parse any more is replaced (what else could be served).
        let kept = match self.keep_key {
            true => self
                .home
                .reissue_server_cert_keeping_key(names, self.lifetime, now)
                .ok(),
            false => None,
        };
        match kept {
            Some(summary) => Ok(summary),
            None => self
                .home
                .reissue_server_cert(names, self.lifetime, now)
                .map_err(RenewError::Reissue),
        }
    }

    /// Signals the child to reload and waits until it serves `expected`; returns its pid.
    async fn hand_over(
        &self,
        reload: &ReloadHandle,
        child: &InfoHandle,
        expected: &CertSummary,
    ) -> Result<u32, RenewError> {
        let pid = reload.reload().await.map_err(RenewError::Reload)?;
        let ca = std::fs::read_to_string(self.home.ca_cert()).map_err(RenewError::Ca)?;
        let deadline = tokio::time::Instant::now() + SERVED_WITHIN;
        loop {
            let addr = child.info().ports.client;
            let ca = ca.clone();
            let served = tokio::task::spawn_blocking(move || {
                tls::served_certificate(addr, &ca, PROBE_TIMEOUT)
            })
            .await
            .map_err(RenewError::Task)?
            .map_err(RenewError::Probe);
            // The child may be restarting or between reading the files: only the deadline
            // makes a failed handshake final.
            let serving = match served {
                Ok(der) => {
                    let served =
                        pki::inspect_cert_pem(&der_to_pem(&der)).map_err(RenewError::Served)?;
                    // The serial tells the new certificate from the old one also when the key
                    // stayed (a node of a cluster).
                    if served.spki_pin == expected.spki_pin && served.serial == expected.serial {
                        return Ok(pid);
                    }
                    Ok(served.serial)
                }
                Err(e) => Err(e),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(match serving {
                    Ok(serving) => RenewError::NotServed {
                        pid,
                        expected: expected.serial.clone(),
                        serving,
                        within: SERVED_WITHIN,
                    },
                    Err(e) => e,
                });
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    fn renewed(&self, cert: &CertSummary, how: &str) {
        let names = names_text(&cert.names);
        let until = rfc3339(unix_seconds(cert.not_after));
        // The sink logs it too (target `audit`).
        let mut record = AuditRecord::at(crate::home::now_unix(), Source::Renew, Verdict::Allow);
        record.code = "cert_renewed".into();
        record.reason = format!(
            "TLS server certificate renewed (serial {}, valid until {until}, names {names}): {how}",
            cert.serial
        );
        self.audit.record(record);
    }

    fn failed(&self, error: &RenewError) {
        let mut record = AuditRecord::at(crate::home::now_unix(), Source::Renew, Verdict::Refuse);
        record.code = "cert_renew_failed".into();
        record.reason = format!("TLS server certificate renewal failed: {error}");
        self.audit.record(record);
    }
}

fn names_text(names: &ServerNames) -> String {
    let mut all: Vec<String> = names.dns.clone();
    all.extend(names.ips.iter().map(|ip| ip.to_string()));
    all.join(", ")
}

fn der_to_pem(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        data_encoding::BASE64.encode(der)
    )
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// The validity `pki` gives a certificate issued at `issued` for `life` seconds.
    fn window(issued: u64, life: u64) -> (SystemTime, SystemTime) {
        (at(issued) - CLOCK_SKEW, at(issued + life))
    }

    #[test]
    fn due_when_a_third_of_the_life_from_issue_is_left() {
        let (nb, na) = window(T0, 12);
        assert_eq!(renew_at(nb, na), at(T0 + 8));
        let (nb, na) = window(T0, 825 * 86_400);
        assert_eq!(renew_at(nb, na), at(T0 + 550 * 86_400));
        assert_eq!(next(nb, na, true, at(T0 + 1)), Next::Wait(MAX_WAIT));
        let (nb, na) = window(T0, 12);
        assert_eq!(
            next(nb, na, true, at(T0 + 3)),
            Next::Wait(Duration::from_secs(5))
        );
        assert_eq!(next(nb, na, true, at(T0 + 8)), Next::RenewNow);
        assert_eq!(next(nb, na, true, at(T0 + 100)), Next::RenewNow, "expired");
    }

    #[test]
    fn a_key_or_chain_that_does_not_belong_is_renewed_at_once() {
        let (nb, na) = window(T0, 825 * 86_400);
        assert_eq!(next(nb, na, false, at(T0 + 1)), Next::RenewNow);
    }

    #[test]
    fn odd_validities_never_panic_and_are_due() {
        // notBefore after notAfter, or a window shorter than the backdating.
        assert_eq!(next(at(T0 + 10), at(T0), true, at(T0)), Next::RenewNow);
        let (nb, na) = (at(T0), at(T0 + 60));
        assert_eq!(renew_at(nb, na), at(T0 + 60));
        assert_eq!(
            next(nb, na, true, at(T0 + 59)),
            Next::Wait(Duration::from_secs(1))
        );
        assert_eq!(next(UNIX_EPOCH, UNIX_EPOCH, true, at(T0)), Next::RenewNow);
    }

    #[test]
    fn failures_are_retried_after_a_tenth_of_what_is_left_within_bounds() {
        let (nb, na) = window(T0, 1000);
        assert_eq!(retry_after(nb, na, at(T0 + 700)), Duration::from_secs(30));
        assert_eq!(retry_after(nb, na, at(T0 + 995)), RETRY_BOUNDS.0);
        let (nb, na) = window(T0, 825 * 86_400);
        assert_eq!(retry_after(nb, na, at(T0 + 600 * 86_400)), RETRY_BOUNDS.1);
        let (nb, na) = window(T0, 100);
        // Expired: a tenth of its whole life, at least 1 s.
        assert_eq!(retry_after(nb, na, at(T0 + 500)), Duration::from_secs(10));
        let (nb, na) = window(T0, 5);
        assert_eq!(retry_after(nb, na, at(T0 + 500)), RETRY_BOUNDS.0);
        assert_eq!(retry_after(at(T0), at(T0), at(T0 + 1)), RETRY_BOUNDS.0);
    }
}
