//! Renewal's wire (DESIGN §11): what a running peel asks on `zester.event.<id>.renew` — its
//! id, its key and the time, signed by that key — the rule the appliance applies (only an
//! accepted key that is the record's current key gets a fresh JWT for that same key), the
//! answer, and when a peel should ask: at 2/3 of its JWT's lifetime plus up to a tenth of the
//! lifetime of jitter, so that a fleet issued at once does not renew at once.

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};

use crate::identity::keys::{self, KeyRole};
use crate::wire::record::{KeyRecord, KeyState};

/// How far a request's time may be from the appliance's clock.
pub const MAX_SKEW_SECS: i64 = 300;

/// The signed body of a renewal request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    /// The peel.
    pub id: String,
    /// The key whose JWT is renewed (the one signing).
    pub nkey: String,
    /// Unix seconds when made.
    pub at: i64,
}

/// The wire form: the body as base64url JSON and its signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedRenewal {
    /// base64url(JSON of [`Renewal`]).
    pub request: String,
    /// base64url(Ed25519 signature of the decoded `request` bytes by `nkey`).
    pub sig: String,
}

/// The appliance's answer (inside `{"ok": …}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewAnswer {
    /// The fresh identity JWT, for the same key.
    pub jwt: String,
    /// Its `exp` (unix seconds; 0 = never).
    pub expires_at: i64,
}

/// A renewal request that is not the wire form, or whose signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("renewal request refused: {0}")]
pub struct InvalidRenewal(pub &'static str);

/// Why the appliance will not renew, from the key record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewRefusal {
    /// No record for the id.
    #[error("peel {id} has no key record (deleted?): enrol again")]
    Unknown {
        /// The id.
        id: String,
    },
    /// The record is not accepted.
    #[error("the key of peel {id} is {state}: it may not renew")]
    NotAccepted {
        /// The id.
        id: String,
        /// Where it stands.
        state: KeyState,
    },
    /// The record holds another key (a rotation replaced this one).
    #[error("peel {id} holds another key now ({current}): this key may not renew")]
    NotCurrent {
        /// The id.
        id: String,
        /// The fingerprint of the key the record holds.
        current: String,
    },
}

impl RenewRefusal {
    /// The audit code's detail: which refusal.
    pub fn reason_code(&self) -> &'static str {
        match self {
            RenewRefusal::Unknown { .. } => "unknown",
            RenewRefusal::NotAccepted {
                state: KeyState::Revoked,
                ..
            } => "revoked",
            RenewRefusal::NotAccepted {
                state: KeyState::Rejected,
                ..
            } => "rejected",
            RenewRefusal::NotAccepted { .. } => "pending",
            RenewRefusal::NotCurrent { .. } => "not_current",
        }
    }
}

/// Signs `renewal` with `key`.
pub fn sign_renewal(renewal: &Renewal, key: &KeyPair) -> Result<SignedRenewal, InvalidRenewal> {
    let body = serde_json::to_vec(renewal).map_err(|_| InvalidRenewal("cannot encode"))?;
    let sig = key
        .sign(&body)
        .map_err(|_| InvalidRenewal("cannot sign with this key"))?;
    Ok(SignedRenewal {
        request: BASE64URL_NOPAD.encode(&body),
        sig: BASE64URL_NOPAD.encode(&sig),
    })
}

/// Verifies a renewal request for peel `id` (the subject's) at `now`.
pub fn verify_renewal(payload: &[u8], id: &str, now: i64) -> Result<Renewal, InvalidRenewal> {
    let signed: SignedRenewal =
        serde_json::from_slice(payload).map_err(|_| InvalidRenewal("not a renewal request"))?;
    let body = BASE64URL_NOPAD
        .decode(signed.request.as_bytes())
        .map_err(|_| InvalidRenewal("the request is not base64url"))?;
    let renewal: Renewal =
        serde_json::from_slice(&body).map_err(|_| InvalidRenewal("not a renewal request"))?;
    if renewal.id != id {
        return Err(InvalidRenewal(
            "the request names another peel than its subject",
        ));
    }
    if (now - renewal.at).abs() > MAX_SKEW_SECS {
        return Err(InvalidRenewal("the request is too old or from the future"));
    }
    keys::expect_role(&renewal.nkey, &[KeyRole::User])
        .map_err(|_| InvalidRenewal("not a user key"))?;
    let sig = BASE64URL_NOPAD
        .decode(signed.sig.as_bytes())
        .map_err(|_| InvalidRenewal("the signature is not base64url"))?;
    keys::verify(&renewal.nkey, &body, &sig)
        .map_err(|_| InvalidRenewal("the signature does not verify"))?;
    Ok(renewal)
}

/// The key state is the authority: only the record's current key, accepted, may renew.
pub fn check_renewable(
    record: Option<&KeyRecord>,
    id: &str,
    nkey: &str,
) -> Result<(), RenewRefusal> {
    let Some(record) = record else {
        return Err(RenewRefusal::Unknown { id: id.to_string() });
    };
    if record.nkey != nkey {
        return Err(RenewRefusal::NotCurrent {
            id: id.to_string(),
            current: record.fingerprint(),
        });
    }
    if record.state != KeyState::Accepted {
        return Err(RenewRefusal::NotAccepted {
            id: id.to_string(),
            state: record.state,
        });
    }
    Ok(())
}

/// When a JWT issued at `issued_at` that expires at `expires_at` should be renewed: at 2/3 of
/// its lifetime plus `jitter` (0.0 to 1.0) times a tenth of it. `None` for a JWT that never
/// expires.
pub fn renew_at(issued_at: i64, expires_at: i64, jitter: f64) -> Option<i64> {
    if expires_at <= 0 {
        return None;
    }
    let lifetime = (expires_at - issued_at).max(0);
    let jitter = jitter.clamp(0.0, 1.0);
    let spread = (lifetime as f64 / 10.0 * jitter) as i64;
    Some(issued_at + lifetime * 2 / 3 + spread)
}

/// Whether creds of zester's own users issued at `issued_at`, expiring at `expires_at` (0 =
/// never), are due for re-issue at `now` when the configured lifetime is `configured` (0 =
/// never): at 2/3 of their lifetime (no jitter: there are four of them, not a fleet), or at
/// once when they never expire but should.
pub fn own_creds_due(issued_at: i64, expires_at: i64, configured: i64, now: i64) -> bool {
    match renew_at(issued_at, expires_at, 0.0) {
        Some(at) => now >= at,
        None => configured > 0,
    }
}

/// How long to wait before asking again after a failed attempt (the appliance unreachable, or
/// a refusal): a thirtieth of the lifetime, between 1 s and 10 min, and never past the JWT's
/// expiry when that is nearer.
pub fn retry_after(issued_at: i64, expires_at: i64, now: i64) -> i64 {
    let lifetime = (expires_at - issued_at).max(0);
    let step = (lifetime / 30).clamp(1, 600);
    let left = expires_at - now;
    if left > 1 {
        step.min(left / 2).max(1)
    } else {
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::peel_id::PeelId;

    const NOW: i64 = 1_800_000_000;

    fn record(nkey: &str, state: KeyState) -> KeyRecord {
        let record = KeyRecord::new_pending(
            PeelId::parse("web-01").unwrap(),
            nkey,
            None,
            "test",
            "test",
            NOW,
        )
        .unwrap();
        match state {
            KeyState::Pending => record,
            KeyState::Revoked => record
                .transition(KeyState::Accepted, "admin", "test", NOW)
                .unwrap()
                .transition(KeyState::Revoked, "admin", "test", NOW)
                .unwrap(),
            other => record.transition(other, "admin", "test", NOW).unwrap(),
        }
    }

    #[test]
    fn only_the_key_itself_can_ask() {
        let key = KeyPair::new_user();
        let renewal = Renewal {
            id: "web-01".into(),
            nkey: key.public_key(),
            at: NOW,
        };
        let good = serde_json::to_vec(&sign_renewal(&renewal, &key).unwrap()).unwrap();
        assert_eq!(verify_renewal(&good, "web-01", NOW).unwrap(), renewal);
        assert!(
            verify_renewal(&good, "web-02", NOW).is_err(),
            "another subject"
        );
        assert!(verify_renewal(&good, "web-01", NOW + 301).is_err(), "stale");
        let thief = KeyPair::new_user();
        let forged = serde_json::to_vec(&sign_renewal(&renewal, &thief).unwrap()).unwrap();
        assert_eq!(
            verify_renewal(&forged, "web-01", NOW),
            Err(InvalidRenewal("the signature does not verify"))
        );
        let account = KeyPair::new_account();
        let wrong_kind = Renewal {
            nkey: account.public_key(),
            ..renewal
        };
        let signed = serde_json::to_vec(&sign_renewal(&wrong_kind, &account).unwrap()).unwrap();
        assert_eq!(
            verify_renewal(&signed, "web-01", NOW),
            Err(InvalidRenewal("not a user key"))
        );
        assert!(verify_renewal(b"{}", "web-01", NOW).is_err());
    }

    #[test]
    fn only_the_current_accepted_key_renews() {
        let key = KeyPair::new_user().public_key();
        let other = KeyPair::new_user().public_key();
        assert!(check_renewable(Some(&record(&key, KeyState::Accepted)), "web-01", &key).is_ok());
        for (state, code) in [
            (KeyState::Revoked, "revoked"),
            (KeyState::Rejected, "rejected"),
            (KeyState::Pending, "pending"),
        ] {
            let refusal = check_renewable(Some(&record(&key, state)), "web-01", &key).unwrap_err();
            assert_eq!(refusal.reason_code(), code);
        }
        let refusal =
            check_renewable(Some(&record(&other, KeyState::Accepted)), "web-01", &key).unwrap_err();
        assert_eq!(refusal.reason_code(), "not_current");
        let refusal = check_renewable(None, "web-01", &key).unwrap_err();
        assert_eq!(refusal.reason_code(), "unknown");
    }

    #[test]
    fn renewal_time_is_two_thirds_plus_at_most_a_tenth() {
        assert_eq!(renew_at(NOW, NOW + 90, 0.0), Some(NOW + 60));
        assert_eq!(renew_at(NOW, NOW + 90, 1.0), Some(NOW + 69));
        assert_eq!(renew_at(NOW, NOW + 90, 7.0), Some(NOW + 69), "clamped");
        assert_eq!(renew_at(NOW, 0, 0.5), None, "never expires");
        let thirty_days = 30 * 86_400;
        let at = renew_at(NOW, NOW + thirty_days, 0.5).unwrap();
        assert!(at > NOW + 20 * 86_400 && at < NOW + 22 * 86_400);
    }

    #[test]
    fn own_creds_renew_at_two_thirds_or_when_they_should_expire_but_do_not() {
        assert!(!own_creds_due(NOW, NOW + 90, 90, NOW + 59));
        assert!(own_creds_due(NOW, NOW + 90, 90, NOW + 60));
        assert!(
            own_creds_due(NOW, NOW + 90, 0, NOW + 60),
            "lifetime removed: at the next due"
        );
        assert!(own_creds_due(NOW, 0, 90, NOW), "given a lifetime");
        assert!(
            !own_creds_due(NOW, 0, 0, NOW + 1_000_000),
            "never expires, as configured"
        );
    }

    #[test]
    fn retries_come_sooner_as_expiry_nears() {
        assert_eq!(retry_after(NOW, NOW + 9, NOW + 6), 1);
        assert_eq!(retry_after(NOW, NOW + 30 * 86_400, NOW), 600);
        assert_eq!(retry_after(NOW, NOW + 3000, NOW + 2990), 5);
        assert_eq!(retry_after(NOW, NOW + 90, NOW + 100), 3, "already expired");
    }
}
