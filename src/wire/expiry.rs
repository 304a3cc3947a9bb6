//! What `zester status` warns about: credentials that expire soon. A pure rule over (kind, name,
//! expiry, lifetime): within [`WARN_WITHIN`] for everything zester renews, and only once less
//! than a fifth of the lifetime is left, past the latest point a healthy renewal happens (2/3
//! plus a tenth of jitter for JWTs, a third left for the certificate): so a listed peel is one
//! that stopped renewing, a listed service creds or certificate a renewal that keeps failing,
//! and a healthy fleet lists nothing. The CA, never renewed automatically, is listed a year
//! ([`CA_WARN_WITHIN`]) ahead. Already expired ones are listed too.

use serde::{Deserialize, Serialize};

/// How far ahead renewed credentials are warned about: 14 days.
pub const WARN_WITHIN: i64 = 14 * 86_400;
/// How far ahead the CA is warned about: a year (it is replaced by a person, with every peel).
pub const CA_WARN_WITHIN: i64 = 365 * 86_400;

/// What kind of credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A peel's identity JWT (the last one handed out).
    Peel,
    /// The creds of one of zester's own users (master, admin, callout, sys).
    Service,
    /// nats-server's TLS certificate.
    ServerCert,
    /// The CA that signs it.
    Ca,
}

impl CredentialKind {
    /// How far ahead this kind is warned about.
    pub fn warn_within(self) -> i64 {
        match self {
            CredentialKind::Ca => CA_WARN_WITHIN,
            _ => WARN_WITHIN,
        }
    }

    /// The name shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Peel => "peel",
            CredentialKind::Service => "service",
            CredentialKind::ServerCert => "server_cert",
            CredentialKind::Ca => "ca",
        }
    }
}

/// One credential that expires soon (or has).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiring {
    /// What it is.
    pub kind: CredentialKind,
    /// Which: the peel id, the user's name, or the certificate's file name.
    pub name: String,
    /// When (unix seconds).
    pub expires_at: i64,
    /// Seconds left (negative: expired that long ago).
    pub in_secs: i64,
}

/// One credential to look at: what, which, when it expires (0 = never) and how long it is
/// issued for (0 = unknown).
pub type Credential = (CredentialKind, String, i64, i64);

/// Those of `credentials` that expire within their kind's window of `now`, soonest first.
pub fn expiring(credentials: impl IntoIterator<Item = Credential>, now: i64) -> Vec<Expiring> {
    let mut soon: Vec<Expiring> = credentials
        .into_iter()
        .filter(|(kind, _, at, lifetime)| {
            let window = match (kind, *lifetime) {
                (CredentialKind::Ca, _) | (_, 0) => kind.warn_within(),
                (_, lifetime) => kind.warn_within().min(lifetime / 5),
            };
            *at > 0 && *at - now <= window
        })
        .map(|(kind, name, expires_at, _)| Expiring {
            kind,
            name,
            expires_at,
            in_secs: expires_at - now,
        })
        .collect();
    soon.sort_by_key(|e| (e.expires_at, e.name.clone()));
    soon
}

/// Seconds from `now` to the soonest expiry of each kind among `credentials` (those that expire
/// at all), kinds in declaration order: what the metrics report, whatever the warning windows.
pub fn soonest_by_kind(
    credentials: impl IntoIterator<Item = Credential>,
    now: i64,
) -> Vec<(CredentialKind, i64)> {
    let mut soonest: Vec<(CredentialKind, i64)> = Vec::new();
    for (kind, _, at, _) in credentials {
        if at <= 0 {
            continue;
        }
        match soonest.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, left)) => *left = (*left).min(at - now),
            None => soonest.push((kind, at - now)),
        }
    }
    soonest.sort_by_key(|(kind, _)| *kind as u8);
    soonest
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    #[test]
    fn windows_by_kind_soonest_first() {
        let month = 30 * DAY;
        let soon = expiring(
            [
                (
                    CredentialKind::Peel,
                    "web-01".to_string(),
                    NOW + 20 * DAY,
                    month,
                ),
                // 8 days left of 30: a healthy peel renewed already; not a warning.
                (
                    CredentialKind::Peel,
                    "healthy".to_string(),
                    NOW + 8 * DAY,
                    month,
                ),
                (
                    CredentialKind::Peel,
                    "web-02".to_string(),
                    NOW + 3 * DAY,
                    month,
                ),
                (CredentialKind::Peel, "web-03".to_string(), NOW - DAY, month),
                (CredentialKind::Peel, "web-04".to_string(), 0, month),
                (
                    CredentialKind::Service,
                    "master".to_string(),
                    NOW + 14 * DAY,
                    0,
                ),
                (
                    CredentialKind::Ca,
                    "ca.pem".to_string(),
                    NOW + 300 * DAY,
                    3650 * DAY,
                ),
                (
                    CredentialKind::ServerCert,
                    "server.pem".to_string(),
                    NOW + 300 * DAY,
                    825 * DAY,
                ),
                // Seconds-long lifetimes: listed only once a fifth is left.
                (CredentialKind::Service, "sys".to_string(), NOW + 3, 9),
                (CredentialKind::Service, "admin".to_string(), NOW + 1, 9),
            ],
            NOW,
        );
        let names: Vec<&str> = soon.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["web-03", "admin", "web-02", "master", "ca.pem"]);
        assert_eq!(soon[0].in_secs, -DAY, "expired ones are listed");
    }

    #[test]
    fn the_soonest_of_each_kind() {
        let credential = |kind, at| (kind, String::new(), at, 0);
        let soonest = soonest_by_kind(
            [
                credential(CredentialKind::Ca, NOW + 3000 * DAY),
                credential(CredentialKind::Peel, NOW + 20 * DAY),
                credential(CredentialKind::Peel, NOW - 5),
                // Never expires: not a candidate.
                credential(CredentialKind::Service, 0),
                credential(CredentialKind::Peel, NOW + DAY),
            ],
            NOW,
        );
        assert_eq!(
            soonest,
            [(CredentialKind::Peel, -5), (CredentialKind::Ca, 3000 * DAY)]
        );
    }
}
