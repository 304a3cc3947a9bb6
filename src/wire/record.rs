//! One peel's key record: which nkey speaks for a peel id, and whether it may.
//!
//! This is the pure part of the key store (no I/O, no clock: callers pass `now`). A record is
//! stored as JSON under its peel id in the `zester-keys` bucket, and in a journal file when
//! `zester creds issue` registers a key offline. Both places may hold damaged or foreign text, so
//! reading validates everything again (peel id rule, nkey roles) and every failure names where
//! the record came from; nothing here panics on input.
//!
//! The state machine is deliberately small (DESIGN §6):
//!
//! ```text
//!   pending ──accept──▶ accepted ──revoke──▶ revoked (final)
//!      │                   ▲
//!      └──reject──▶ rejected
//! ```
//!
//! `rejected → accepted` is allowed: rejecting answers an enrolment request ("not now"), it does
//! not say the key is compromised, so an operator who rejected by mistake can accept without the
//! peel enrolling again. Compromise is what `revoke` is for, and a revoked key never comes back.

use std::fmt;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::identity::keys::{self as nkeys_roles, KeyRole};
use crate::identity::peel_id::{PeelId, PeelIdError};

/// How many state changes a record remembers; older ones are dropped first.
pub const HISTORY_CAP: usize = 50;

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Enrolled, waiting for an operator (or a policy) to decide.
    Pending,
    /// Admitted: sessions get the peel's permissions.
    Accepted,
    /// Refused at enrolment; may still be accepted later.
    Rejected,
    /// Withdrawn for good.
    Revoked,
}

impl KeyState {
    /// The state as stored and printed (`"pending"`, `"accepted"`…).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Accepted => "accepted",
            KeyState::Rejected => "rejected",
            KeyState::Revoked => "revoked",
        }
    }

    /// Whether a record in this state may move to `to` (see the module doc).
    pub fn can_become(self, to: KeyState) -> bool {
        use KeyState::*;
        matches!(
            (self, to),
            (Pending, Accepted) | (Pending, Rejected) | (Accepted, Revoked) | (Rejected, Accepted)
        )
    }

    /// How strongly the state keeps a key out, used when two records claim one nkey: the more
    /// restrictive record wins, so a revoked key can never be readmitted under another id.
    pub(crate) fn restrictiveness(self) -> u8 {
        match self {
            KeyState::Accepted => 0,
            KeyState::Pending => 1,
            KeyState::Rejected => 2,
            KeyState::Revoked => 3,
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of state: when, by whom, to what, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    /// Unix seconds.
    pub at: i64,
    /// Who made the change (an admin name, `"policy:auto-trusted"`, `"creds-issue"`…).
    pub by: String,
    /// The state the record moved to.
    pub state: KeyState,
    /// Free text given with the change.
    #[serde(default)]
    pub reason: String,
}

/// What is wrong with a key record or a requested change to it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The stored bytes are not JSON of a key record.
    #[error(
        "{origin}: not a readable key record ({source}); delete it or write it again with zester"
    )]
    Corrupt {
        /// Where the record came from: its key in the bucket, or a journal file.
        origin: String,
        /// What the JSON decoder found.
        source: serde_json::Error,
    },
    /// The record's `id` breaks the peel id rule.
    #[error("{origin}: the record's peel id is invalid: {source}")]
    InvalidId {
        /// Where the record came from.
        origin: String,
        /// Why the id is refused.
        source: PeelIdError,
    },
    /// The record is stored under a key other than its own id.
    #[error("{origin}: the record is stored under the wrong key (it belongs to peel {id}); delete the entry and register the key again")]
    Misfiled {
        /// The key the record was found under.
        origin: String,
        /// The id inside the record.
        id: PeelId,
    },
    /// `nkey` is not a valid user public key.
    #[error("key record {id}: nkey is not usable: {source}")]
    InvalidNkey {
        /// The peel id.
        id: PeelId,
        /// What is wrong with the key.
        source: nkeys_roles::KeyError,
    },
    /// `xkey` is not a valid curve public key.
    #[error("key record {id}: xkey is not usable: {source}")]
    InvalidXkey {
        /// The peel id.
        id: PeelId,
        /// What is wrong with the key.
        source: nkeys_roles::KeyError,
    },
    /// The state machine does not allow this move.
    #[error("the key of peel {id} is {from} and cannot become {to}: {}", transition_hint(*.from, *.to))]
    InvalidTransition {
        /// The peel id.
        id: PeelId,
        /// Its current state.
        from: KeyState,
        /// The state asked for.
        to: KeyState,
    },
    /// The record is already in the state asked for.
    #[error("the key of peel {id} is already {state}; nothing to do")]
    Unchanged {
        /// The peel id.
        id: PeelId,
        /// Its (unchanged) state.
        state: KeyState,
    },
}

fn transition_hint(from: KeyState, to: KeyState) -> &'static str {
    use KeyState::*;
    match (from, to) {
        (Revoked, _) => "a revoked key stays revoked; the peel has to enrol a new key",
        (Accepted, Rejected) => "an accepted key is withdrawn by revoking it",
        (Pending, Revoked) => "a pending key was never admitted; reject it instead",
        (Rejected, Revoked) => "a rejected key is not admitted anyway",
        (_, Pending) => "a key only becomes pending by enrolling",
        _ => "that move is not part of the key life cycle",
    }
}

/// The key record of one peel id.
///
/// Fields are public for reading; records from outside (the bucket, a journal file) only come
/// in through [`KeyRecord::from_json`] / [`KeyRecord::from_kv`], which validate them, and the
/// store runs [`KeyRecord::validate`] before every write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RecordWire")]
pub struct KeyRecord {
    /// The peel id (also the record's key in the bucket).
    #[serde(serialize_with = "serialize_peel_id")]
    pub id: PeelId,
    /// The peel's user public key (`U…`).
    pub nkey: String,
    /// The peel's curve public key (`X…`) secrets are sealed to; `None` for keys registered by
    /// `creds issue`, which makes no curve key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xkey: Option<String>,
    /// Where the key stands.
    pub state: KeyState,
    /// The key a rotation replaced, until the peel's "new key connected" notice cut it off:
    /// that notice may name this key and no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_nkey: Option<String>,
    /// Unix seconds the record was made.
    pub created_at: i64,
    /// Unix seconds of the last change.
    pub updated_at: i64,
    /// State changes, oldest first, at most [`HISTORY_CAP`].
    pub history: Vec<StateChange>,
    /// When the identity JWT handed out last for this key expires (unix seconds; 0 = never;
    /// `None` when zester has not recorded one, as in records older than renewal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_expires_at: Option<i64>,
    /// When the peel last renewed its identity JWT (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<i64>,
    /// Trusted tags, set by an admin (through a join token), never by the peel: shown apart
    /// from the facts a peel reports about itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Enrolments that claimed this id with another key (a rebuilt machine, or an impostor),
    /// newest last, at most [`MAX_DENIED`]: kept for an admin to see and, with
    /// `key accept --replace`, to re-bind the id to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<DeniedClaim>,
}

/// Most denied claims a record keeps (the oldest go first).
pub const MAX_DENIED: usize = 8;

/// An enrolment that claimed an id bound to another key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedClaim {
    /// The claimant's key.
    pub nkey: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Its curve key, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xkey: Option<String>,
    /// The client address its enrolling connection came from.
    #[serde(default)]
    pub address: String,
    /// The hostname it reported (escaped).
    #[serde(default)]
    pub hostname: String,
    /// When (unix seconds).
    pub at: i64,
}

fn serialize_peel_id<S: Serializer>(id: &PeelId, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(id.as_str())
}

/// The JSON shape before validation. Unknown fields are ignored so that a newer zester's
/// records stay readable by an older one.
#[derive(Deserialize)]
struct RecordWire {
    id: String,
    nkey: String,
    #[serde(default)]
    xkey: Option<String>,
    state: KeyState,
    #[serde(default)]
    replaced_nkey: Option<String>,
    created_at: i64,
    updated_at: i64,
    #[serde(default)]
    history: Vec<StateChange>,
    #[serde(default)]
    jwt_expires_at: Option<i64>,
    #[serde(default)]
    renewed_at: Option<i64>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    denied: Vec<DeniedClaim>,
}

impl TryFrom<RecordWire> for KeyRecord {
    type Error = KeyError;
    fn try_from(wire: RecordWire) -> Result<KeyRecord, KeyError> {
        let origin = format!("key record {:?}", nkeys_roles::shorten(&wire.id));
        KeyRecord::from_wire(wire, &origin)
    }
}

impl KeyRecord {
    /// A record accepted from the start (a key whose creds we signed ourselves, or one approved
    /// out of band), with one history entry saying who and why.
    pub fn new_accepted(
        id: PeelId,
        nkey: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<KeyRecord, KeyError> {
        KeyRecord::new(id, nkey, None, KeyState::Accepted, by, reason, now)
    }

    /// A pending record, as enrolment makes it: the key and its curve key, waiting for a
    /// decision.
    pub fn new_pending(
        id: PeelId,
        nkey: &str,
        xkey: Option<&str>,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<KeyRecord, KeyError> {
        KeyRecord::new(id, nkey, xkey, KeyState::Pending, by, reason, now)
    }

    fn new(
        id: PeelId,
        nkey: &str,
        xkey: Option<&str>,
        state: KeyState,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<KeyRecord, KeyError> {
        let record = KeyRecord {
            id,
            nkey: nkey.to_string(),
            xkey: xkey.map(str::to_string),
            state,
            replaced_nkey: None,
            created_at: now,
            updated_at: now,
            history: vec![StateChange {
                at: now,
                by: by.to_string(),
                state,
                reason: reason.to_string(),
            }],
            jwt_expires_at: None,
            renewed_at: None,
            tags: BTreeMap::new(),
            denied: Vec::new(),
        };
        record.validate()?;
        Ok(record)
    }

    /// Checks the keys' encodings and roles (the id is valid by construction).
    pub fn validate(&self) -> Result<(), KeyError> {
        if let Some(replaced) = &self.replaced_nkey {
            nkeys_roles::expect_role(replaced, &[KeyRole::User]).map_err(|source| {
                KeyError::InvalidNkey {
                    id: self.id.clone(),
                    source,
                }
            })?;
        }
        nkeys_roles::expect_role(&self.nkey, &[KeyRole::User]).map_err(|source| {
            KeyError::InvalidNkey {
                id: self.id.clone(),
                source,
            }
        })?;
        if let Some(xkey) = &self.xkey {
            nkeys_roles::expect_role(xkey, &[KeyRole::Curve]).map_err(|source| {
                KeyError::InvalidXkey {
                    id: self.id.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// The record moved to `to`, with the change appended to its history (capped at
    /// [`HISTORY_CAP`]). `self` is left as it was, so a caller can still compare-and-set
    /// against the revision it read.
    pub fn transition(
        &self,
        to: KeyState,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<KeyRecord, KeyError> {
        if self.state == to {
            return Err(KeyError::Unchanged {
                id: self.id.clone(),
                state: to,
            });
        }
        if !self.state.can_become(to) {
            return Err(KeyError::InvalidTransition {
                id: self.id.clone(),
                from: self.state,
                to,
            });
        }
        let mut next = self.clone();
        next.state = to;
        Ok(next.changed(by, reason.to_string(), now))
    }

    /// Stamps a change into the record and its history (capped at [`HISTORY_CAP`]).
    fn changed(mut self, by: &str, reason: String, now: i64) -> KeyRecord {
        self.updated_at = now;
        self.history.push(StateChange {
            at: now,
            by: by.to_string(),
            state: self.state,
            reason,
        });
        let excess = self.history.len().saturating_sub(HISTORY_CAP);
        self.history.drain(..excess);
        self
    }

    /// The record with its key replaced by `new_nkey` (rotation): only an accepted key rotates,
    /// the state stays accepted, and the history says from which fingerprint to which.
    pub fn rotate(&self, new_nkey: &str, by: &str, now: i64) -> Result<KeyRecord, KeyError> {
        if self.state != KeyState::Accepted {
            return Err(KeyError::InvalidTransition {
                id: self.id.clone(),
                from: self.state,
                to: KeyState::Accepted,
            });
        }
        let mut next = self.clone();
        next.nkey = new_nkey.to_string();
        next.replaced_nkey = Some(self.nkey.clone());
        next.validate()?;
        let reason = format!(
            "key rotated from {} to {}",
            self.fingerprint(),
            next.fingerprint()
        );
        Ok(next.changed(by, reason, now))
    }

    /// The record once the key a rotation replaced has been cut off (no history entry: the
    /// rotation itself is the change).
    pub fn rotation_finished(&self) -> KeyRecord {
        KeyRecord {
            replaced_nkey: None,
            ..self.clone()
        }
    }

    /// The record once an identity JWT expiring at `expires_at` (0 = never) was handed out for
    /// its key; `renewal` when the peel renewed (rather than enrolled, fetched or rotated). No
    /// history entry: renewals would push the state changes out of it.
    pub fn jwt_issued(&self, expires_at: i64, renewal: bool, now: i64) -> KeyRecord {
        KeyRecord {
            jwt_expires_at: Some(expires_at),
            renewed_at: if renewal { Some(now) } else { self.renewed_at },
            ..self.clone()
        }
    }

    /// The record with `claim` added to its denied claims (one per key: a claimant that comes
    /// back replaces its earlier entry; the oldest go past [`MAX_DENIED`]).
    pub fn with_denied(&self, claim: DeniedClaim) -> KeyRecord {
        let mut next = self.clone();
        next.denied.retain(|d| d.nkey != claim.nkey);
        next.denied.push(claim);
        let excess = next.denied.len().saturating_sub(MAX_DENIED);
        next.denied.drain(..excess);
        next
    }

    /// The record re-bound to the denied claimant with `fingerprint` (a rebuilt machine): its
    /// key and curve key become the record's, the state accepted, the claim and the others
    /// with it cleared; `None` when no denied claim has that fingerprint.
    pub fn rebound(
        &self,
        fingerprint: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<KeyRecord>, KeyError> {
        let Some(claim) = self
            .denied
            .iter()
            .find(|d| d.fingerprint.eq_ignore_ascii_case(fingerprint))
        else {
            return Ok(None);
        };
        let mut next = self.clone();
        next.nkey = claim.nkey.clone();
        next.xkey = claim.xkey.clone();
        next.state = KeyState::Accepted;
        next.replaced_nkey = None;
        next.jwt_expires_at = None;
        next.renewed_at = None;
        next.denied.clear();
        next.validate()?;
        let reason = format!(
            "id re-bound from {} to {} ({reason})",
            self.fingerprint(),
            next.fingerprint()
        );
        Ok(Some(next.changed(by, reason, now)))
    }

    /// The most recent change (who/why of the current state), if the history has any.
    pub fn last_change(&self) -> Option<&StateChange> {
        self.history.last()
    }

    /// The key's fingerprint, see [`fingerprint`].
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.nkey)
    }

    /// The record as stored: compact JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Only strings, integers and enums: serialising cannot fail.
        serde_json::to_vec(self).expect("a key record always serialises to JSON")
    }

    /// Reads and validates a record; `origin` (a bucket key or a file path) is named in every
    /// error.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<KeyRecord, KeyError> {
        let wire: RecordWire =
            serde_json::from_slice(bytes).map_err(|source| KeyError::Corrupt {
                origin: origin.to_string(),
                source,
            })?;
        KeyRecord::from_wire(wire, origin)
    }

    /// Reads a record found under `key` in the bucket, and checks it is filed under its own id.
    pub fn from_kv(key: &str, bytes: &[u8]) -> Result<KeyRecord, KeyError> {
        let origin = format!("key store entry {:?}", nkeys_roles::shorten(key));
        let record = KeyRecord::from_json(bytes, &origin)?;
        if record.id.as_str() != key {
            return Err(KeyError::Misfiled {
                origin,
                id: record.id,
            });
        }
        Ok(record)
    }

    fn from_wire(wire: RecordWire, origin: &str) -> Result<KeyRecord, KeyError> {
        let id = PeelId::parse(&wire.id).map_err(|source| KeyError::InvalidId {
            origin: origin.to_string(),
            source,
        })?;
        let record = KeyRecord {
            id,
            nkey: wire.nkey,
            xkey: wire.xkey,
            state: wire.state,
            replaced_nkey: wire.replaced_nkey,
            created_at: wire.created_at,
            updated_at: wire.updated_at,
            history: wire.history,
            jwt_expires_at: wire.jwt_expires_at,
            renewed_at: wire.renewed_at,
            tags: wire.tags,
            denied: wire.denied,
        };
        record.validate()?;
        Ok(record)
    }
}

/// The fingerprint people compare when they approve a key: `SHA256:` followed by the first 16
/// bytes of SHA-256 over the public key's text (the `U…` string as printed), in lowercase hex,
/// in groups of two bytes joined by `:`, e.g. `SHA256:9f86:d081:884c:7d65:9a2f:eaa0:c55a:d015`.
/// The same digest is `printf %s U… | sha256sum | cut -c1-32`.
pub fn fingerprint(nkey: &str) -> String {
    let digest = Sha256::digest(nkey.as_bytes());
    let groups: Vec<String> = digest[..16]
        .chunks(2)
        .map(|pair| format!("{:02x}{:02x}", pair[0], pair[1]))
        .collect();
    format!("SHA256:{}", groups.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nkeys::KeyPair;

    fn id(text: &str) -> PeelId {
        PeelId::parse(text).unwrap()
    }

    fn accepted(name: &str) -> KeyRecord {
        let nkey = KeyPair::new_user().public_key();
        KeyRecord::new_accepted(id(name), &nkey, "test", "issued", 1_800_000_000).unwrap()
    }

    #[test]
    fn json_round_trip_keeps_everything() {
        let xkey = nkeys::XKey::new().public_key();
        let nkey = KeyPair::new_user().public_key();
        let pending =
            KeyRecord::new_pending(id("web-01"), &nkey, Some(&xkey), "enrol", "hello", 10).unwrap();
        let record = pending
            .transition(KeyState::Accepted, "admin", "looks right", 20)
            .unwrap();
        let json = record.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"state\":\"accepted\""), "{text}");
        assert!(text.contains("\"id\":\"web-01\""), "{text}");
        let back = KeyRecord::from_kv("web-01", &json).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.history.len(), 2);
        assert_eq!(back.updated_at, 20);
        assert_eq!(back.created_at, 10);
        // Plain serde works too (for messages that embed a record).
        let via_serde: KeyRecord = serde_json::from_slice(&json).unwrap();
        assert_eq!(via_serde, record);
        // A creds-issued record has no xkey, and the field is simply absent.
        let plain = accepted("db");
        assert!(!String::from_utf8(plain.to_json()).unwrap().contains("xkey"));
        assert_eq!(KeyRecord::from_kv("db", &plain.to_json()).unwrap(), plain);
    }

    #[test]
    fn transitions_follow_the_life_cycle() {
        use KeyState::*;
        let pending = KeyRecord::new_pending(
            id("p"),
            &KeyPair::new_user().public_key(),
            None,
            "enrol",
            "",
            1,
        )
        .unwrap();
        let rejected = pending.transition(Rejected, "admin", "who?", 2).unwrap();
        let accepted = rejected.transition(Accepted, "admin", "oops", 3).unwrap();
        let revoked = accepted
            .transition(Revoked, "admin", "lost laptop", 4)
            .unwrap();
        assert_eq!(revoked.state, Revoked);
        assert_eq!(
            revoked.history.iter().map(|c| c.state).collect::<Vec<_>>(),
            vec![Pending, Rejected, Accepted, Revoked]
        );
        assert_eq!(revoked.last_change().unwrap().reason, "lost laptop");
        assert_eq!(
            pending.state, Pending,
            "transition leaves the original alone"
        );

        for to in [Pending, Accepted, Rejected] {
            let err = revoked.transition(to, "admin", "", 5).unwrap_err();
            assert!(
                matches!(err, KeyError::InvalidTransition { from: Revoked, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("stays revoked"), "{err}");
        }
        let err = accepted.transition(Rejected, "a", "", 5).unwrap_err();
        assert!(err.to_string().contains("revoking"), "{err}");
        assert!(matches!(
            accepted.transition(Accepted, "a", "", 5),
            Err(KeyError::Unchanged {
                state: Accepted,
                ..
            })
        ));
        assert!(pending.transition(Revoked, "a", "", 5).is_err());
        assert!(accepted.transition(Pending, "a", "", 5).is_err());
    }

    #[test]
    fn history_is_capped_oldest_first() {
        let mut record = accepted("cap");
        for i in 0..(HISTORY_CAP as i64 + 10) {
            // Bounce between the two states that allow it, via a manual reset.
            record.state = KeyState::Rejected;
            record = record
                .transition(KeyState::Accepted, "t", &i.to_string(), i)
                .unwrap();
        }
        assert_eq!(record.history.len(), HISTORY_CAP);
        assert_eq!(
            record.history.last().unwrap().reason,
            (HISTORY_CAP as i64 + 9).to_string()
        );
        assert_eq!(record.history[0].reason, "10");
    }

    #[test]
    fn corrupted_json_names_where_it_came_from() {
        let err = KeyRecord::from_kv("web-01", b"\x00garbage").unwrap_err();
        assert!(matches!(err, KeyError::Corrupt { .. }));
        let text = err.to_string();
        assert!(text.contains("\"web-01\""), "{text}");

        let good = accepted("web-01");
        let err = KeyRecord::from_kv("web-02", &good.to_json()).unwrap_err();
        assert!(matches!(err, KeyError::Misfiled { .. }), "{err}");
        assert!(err.to_string().contains("web-02"), "{err}");

        let mut value: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
        value["id"] = "a.b".into();
        let err = KeyRecord::from_json(value.to_string().as_bytes(), "/j/1.json").unwrap_err();
        assert!(matches!(err, KeyError::InvalidId { .. }), "{err}");
        assert!(err.to_string().starts_with("/j/1.json"), "{err}");

        let mut value: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
        value["nkey"] = KeyPair::new_account().public_key().into();
        let err = KeyRecord::from_kv("web-01", value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::InvalidNkey { .. }), "{err}");

        let mut value: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
        value["xkey"] = KeyPair::new_user().public_key().into();
        let err = KeyRecord::from_kv("web-01", value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::InvalidXkey { .. }), "{err}");

        let mut value: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
        value["state"] = "maybe".into();
        assert!(matches!(
            KeyRecord::from_kv("web-01", value.to_string().as_bytes()),
            Err(KeyError::Corrupt { .. })
        ));
        // Unknown fields from a newer writer are ignored.
        value["state"] = "accepted".into();
        value["future"] = 1.into();
        KeyRecord::from_kv("web-01", value.to_string().as_bytes()).unwrap();
    }

    #[test]
    fn constructors_refuse_keys_of_the_wrong_role() {
        let account = KeyPair::new_account().public_key();
        assert!(matches!(
            KeyRecord::new_accepted(id("x"), &account, "t", "", 1),
            Err(KeyError::InvalidNkey { .. })
        ));
        assert!(matches!(
            KeyRecord::new_accepted(id("x"), "Unot-a-key", "t", "", 1),
            Err(KeyError::InvalidNkey { .. })
        ));
        let user = KeyPair::new_user().public_key();
        assert!(matches!(
            KeyRecord::new_pending(id("x"), &user, Some(&user), "t", "", 1),
            Err(KeyError::InvalidXkey { .. })
        ));
    }

    #[test]
    fn fingerprints_are_stable_and_documented() {
        // sha256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 …
        assert_eq!(
            fingerprint("abc"),
            "SHA256:ba78:16bf:8f01:cfea:4141:40de:5dae:2223"
        );
        let record = accepted("fp");
        assert_eq!(record.fingerprint(), fingerprint(&record.nkey));
        assert_eq!(record.fingerprint().len(), "SHA256:".len() + 8 * 4 + 7);
    }
}
