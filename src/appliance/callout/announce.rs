//! Admissions told to the other nodes of a cluster, so that every node's session table holds
//! every admission (DESIGN §9). Pure: a [`Session`] in, a [`SessionNotice`] out, and back,
//! checked; `appliance::cluster` publishes and hears them.
//!
//! Why: on a configuration reload nats-server asks the callout again about every connection it
//! let in, with nothing but the original nonce and the client's signature
//! ([`readmit`](super::readmit)), and the callouts of all nodes answer in one queue group with
//! no preference for the local one. The node that answers must know the connection, whichever
//! node admitted it, or the client is refused and disconnected.
//!
//! What a notice can do: file one session row, nothing more. Re-admission from that row still
//! verifies the nonce signature with the row's key, the row's expiry, and the key's standing
//! *now* in the node's own key cache and trust anchors, so a notice grants nothing by itself;
//! it only lets a live connection keep what it already has. Only zester's own system
//! connections can publish in the system account, and a notice is checked anyway: its size,
//! every key's encoding and role, the peel id and admin name, the address, and its role is one
//! a callout can grant (never the callout's own).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::readmit::{Grant, IdentityJwt};
use super::sessions::Session;
use crate::identity::admin_name::AdminName;
use crate::identity::keys::{expect_role, KeyError, KeyRole, UserKey};
use crate::identity::peel_id::PeelId;
use crate::permissions::Role;

/// The largest notice read (a real one is under 600 bytes).
pub const MAX_NOTICE_BYTES: usize = 2048;

/// The most notices one answer to a node asking for the table carries.
pub const BATCH: usize = 200;
/// The largest such answer read.
pub const MAX_BATCH_BYTES: usize = BATCH * MAX_NOTICE_BYTES;

/// One admission as a node tells the others about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionNotice {
    /// The node whose callout let the connection in.
    pub node: String,
    /// The server the connection is on (its `N…` id).
    pub server: String,
    /// Its client id there.
    pub client: u64,
    /// The key it proved.
    pub nkey: UserKey,
    /// When it was let in (unix seconds).
    pub since: i64,
    /// The role it was given.
    pub role: NoticeRole,
    /// The session JWT's `exp` (0 = none).
    pub expires: i64,
    /// The identity JWT's issuer and `iat` (none for an enrolling key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<NoticeIdentity>,
    /// The client's address (kept for enrolling keys and admins only, as in the table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// A role as a notice names it: only the roles a callout grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoticeRole {
    /// An accepted peel.
    Peel {
        /// Its id (checked when heard).
        id: String,
    },
    /// The master.
    Master,
    /// The home's admin (`name` none) or a named admin.
    Admin {
        /// The admin's name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<AdminName>,
    },
    /// An enrolling key (the session's own key).
    Enrolling,
    /// A node's own service connection.
    Service,
    /// A node's own key-store connection.
    Store,
}

/// The identity JWT's part of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeIdentity {
    /// Who signed it (an `A…` key: the account or one of its signing keys).
    pub issuer: String,
    /// Its `iat`.
    pub iat: i64,
}

/// Why a notice was not filed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    /// Larger than any real notice.
    #[error("a session notice of {bytes} bytes (at most {MAX_NOTICE_BYTES})")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// Not a notice at all.
    #[error("not a session notice: {reason}")]
    Malformed {
        /// What the parser said.
        reason: String,
    },
    /// The server id is not a server key.
    #[error("the server id of a session notice: {0}")]
    Server(KeyError),
    /// The issuer is not an account key.
    #[error("the identity issuer of a session notice: {0}")]
    Issuer(KeyError),
    /// The peel id does not parse.
    #[error("the peel id of a session notice: {reason}")]
    PeelId {
        /// What the parser said.
        reason: String,
    },
    /// A field is out of range (a zero client id, a negative time, an enrolling key with an
    /// identity JWT, an address that is none or kept for a role that has none).
    #[error("a session notice with an impossible {field}")]
    Impossible {
        /// The field.
        field: &'static str,
    },
}

/// A notice that passed every check: the row to file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    /// The node that admitted it.
    pub node: String,
    /// Where the session is filed (the table's identity: peel id, enrolling key, role name).
    pub identity: String,
    /// The server id.
    pub server: String,
    /// The client id.
    pub client: u64,
    /// The key it proved.
    pub nkey: UserKey,
    /// When it was let in.
    pub since: i64,
    /// The address, if kept.
    pub ip: Option<String>,
    /// What it was let in with.
    pub grant: Grant,
}

impl SessionNotice {
    /// The notice node `node` sends about `session`; `None` for a session without a grant or
    /// with a role no callout grants.
    pub fn of(node: &str, session: &Session) -> Option<SessionNotice> {
        let grant = session.grant.as_deref()?;
        let role = match &grant.role {
            Role::Peel(id) => NoticeRole::Peel { id: id.to_string() },
            Role::Master => NoticeRole::Master,
            Role::Admin(name) => NoticeRole::Admin { name: name.clone() },
            Role::Enrolling { .. } => NoticeRole::Enrolling,
            Role::Service => NoticeRole::Service,
            Role::Store => NoticeRole::Store,
            Role::Callout => return None,
        };
        Some(SessionNotice {
            node: node.to_string(),
            server: session.server_id.to_string(),
            client: session.client_id,
            nkey: session.nkey.clone(),
            since: session.since,
            role,
            expires: grant.expires,
            identity: grant.identity.as_ref().map(|i| NoticeIdentity {
                issuer: i.issuer.clone(),
                iat: i.issued_at,
            }),
            ip: session.ip.as_deref().map(str::to_string),
        })
    }

    /// The notice in `payload` if another node than `me` sent it (`Ok(None)` for this node's
    /// own), checked as the module doc says.
    pub fn heard(me: &str, payload: &[u8]) -> Result<Option<Heard>, NoticeError> {
        if payload.len() > MAX_NOTICE_BYTES {
            return Err(NoticeError::TooLarge {
                bytes: payload.len(),
            });
        }
        let notice: SessionNotice =
            serde_json::from_slice(payload).map_err(|e| NoticeError::Malformed {
                reason: e.to_string(),
            })?;
        if notice.node == me {
            return Ok(None);
        }
        notice.check().map(Some)
    }

    /// The notices of a batch (what a node answers a node that asks for its table, see
    /// `appliance::cluster::relay_sessions`), each checked as [`SessionNotice::heard`] does;
    /// one that fails its checks is left out, a batch too large or malformed is refused whole.
    pub fn heard_batch(me: &str, payload: &[u8]) -> Result<Vec<Heard>, NoticeError> {
        if payload.len() > MAX_BATCH_BYTES {
            return Err(NoticeError::TooLarge {
                bytes: payload.len(),
            });
        }
        let batch: Vec<SessionNotice> =
            serde_json::from_slice(payload).map_err(|e| NoticeError::Malformed {
                reason: e.to_string(),
            })?;
        if batch.len() > BATCH {
            return Err(NoticeError::Impossible {
                field: "batch size",
            });
        }
        Ok(batch
            .into_iter()
            .filter(|n| n.node != me)
            .filter_map(|n| n.check().ok())
            .collect())
    }

    fn check(self) -> Result<Heard, NoticeError> {
        let impossible = |field| Err(NoticeError::Impossible { field });
        expect_role(&self.server, &[KeyRole::Server]).map_err(NoticeError::Server)?;
        if self.client == 0 {
            return impossible("client id");
        }
        if self.since <= 0 || self.expires < 0 {
            return impossible("time");
        }
        if self.node.is_empty() || self.node.len() > 64 {
            return impossible("node name");
        }
        let identity = match &self.identity {
            Some(identity) => {
                expect_role(&identity.issuer, &[KeyRole::Account]).map_err(NoticeError::Issuer)?;
                Some(IdentityJwt {
                    issuer: identity.issuer.clone(),
                    issued_at: identity.iat,
                })
            }
            None => None,
        };
        let role = match self.role {
            NoticeRole::Peel { id } => {
                Role::Peel(PeelId::parse(&id).map_err(|e| NoticeError::PeelId {
                    reason: e.to_string(),
                })?)
            }
            NoticeRole::Master => Role::Master,
            NoticeRole::Admin { name } => Role::Admin(name),
            NoticeRole::Enrolling => Role::Enrolling {
                nkey: self.nkey.to_string(),
            },
            NoticeRole::Service => Role::Service,
            NoticeRole::Store => Role::Store,
        };
        // Only an enrolling key has no identity JWT, and only it has none.
        if matches!(role, Role::Enrolling { .. }) != identity.is_none() {
            return impossible("identity JWT");
        }
        // The table keeps an address for enrolling keys and admins only.
        if let Some(ip) = &self.ip {
            let kept = matches!(role, Role::Enrolling { .. } | Role::Admin(_));
            if !kept || ip.len() > 64 || ip.parse::<IpAddr>().is_err() {
                return impossible("address");
            }
        }
        Ok(Heard {
            node: self.node,
            identity: role.identity(),
            server: self.server,
            client: self.client,
            nkey: self.nkey,
            since: self.since,
            ip: self.ip,
            grant: Grant {
                role,
                expires: self.expires,
                identity,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nkeys::KeyPair;

    use super::*;
    use crate::identity::keys::ServerId;

    fn session(role: Role, identity: Option<IdentityJwt>, ip: Option<&str>) -> Session {
        let key = KeyPair::new_user().public_key();
        Session {
            server_id: ServerId::new(&KeyPair::new_server().public_key()),
            client_id: 42,
            nkey: UserKey::parse(&key).unwrap(),
            since: 1_800_000_000,
            ip: ip.map(Arc::from),
            grant: Some(Arc::new(Grant {
                role,
                expires: 1_800_000_600,
                identity,
            })),
        }
    }

    fn issuer() -> Option<IdentityJwt> {
        Some(IdentityJwt {
            issuer: KeyPair::new_account().public_key(),
            issued_at: 1_799_999_000,
        })
    }

    fn wire(notice: &SessionNotice) -> Vec<u8> {
        serde_json::to_vec(notice).unwrap()
    }

    #[test]
    fn a_notice_is_the_session_and_its_grant_and_comes_back_as_it_was() {
        let peel = Role::Peel(PeelId::parse("web-01").unwrap());
        let named = Role::Admin(Some(AdminName::parse("alice").unwrap()));
        for (role, identity, ip) in [
            (peel, issuer(), None),
            (Role::Store, issuer(), None),
            (named, issuer(), Some("10.0.0.7")),
            (Role::Admin(None), issuer(), Some("127.0.0.1")),
            (Role::Master, issuer(), None),
            (
                Role::Enrolling {
                    nkey: String::new(),
                },
                None,
                Some("::1"),
            ),
        ] {
            let mut session = session(role, identity, ip);
            if let Some(grant) = session.grant.as_mut() {
                if let Role::Enrolling { nkey } = &mut Arc::make_mut(grant).role {
                    *nkey = session.nkey.to_string();
                }
            }
            let notice = SessionNotice::of("a", &session).unwrap();
            let bytes = wire(&notice);
            assert!(bytes.len() < 600, "{} bytes", bytes.len());
            let heard = SessionNotice::heard("b", &bytes).unwrap().unwrap();
            let grant = session.grant.as_deref().unwrap();
            assert_eq!(heard.grant, *grant);
            assert_eq!(heard.identity, grant.role.identity());
            assert_eq!(
                (heard.server.as_str(), heard.client, heard.since),
                (session.server_id.as_str(), 42, session.since)
            );
            assert_eq!(heard.ip.as_deref(), ip);
            assert_eq!(SessionNotice::heard("a", &bytes), Ok(None), "its own");
        }
        let callout = session(Role::Callout, issuer(), None);
        assert_eq!(SessionNotice::of("a", &callout), None);
    }

    #[test]
    fn a_notice_that_could_not_come_from_a_callout_is_not_filed() {
        let peel = Role::Peel(PeelId::parse("web-01").unwrap());
        let good = SessionNotice::of("a", &session(peel, issuer(), None)).unwrap();
        let refused = |notice: &SessionNotice| SessionNotice::heard("b", &wire(notice)).is_err();
        assert!(!refused(&good));

        let mut bad = good.clone();
        bad.server = KeyPair::new_user().public_key();
        assert!(refused(&bad), "a user key as server id");
        let mut bad = good.clone();
        bad.client = 0;
        assert!(refused(&bad));
        let mut bad = good.clone();
        bad.role = NoticeRole::Peel { id: "A B".into() };
        assert!(refused(&bad), "not a peel id");
        let mut bad = good.clone();
        bad.identity = None;
        assert!(refused(&bad), "a peel without its identity JWT");
        let mut bad = good.clone();
        bad.role = NoticeRole::Enrolling;
        assert!(refused(&bad), "an enrolling key with an identity JWT");
        let mut bad = good.clone();
        bad.ip = Some("10.0.0.1".into());
        assert!(refused(&bad), "an address kept for a peel");
        let mut bad = good.clone();
        if let Some(identity) = bad.identity.as_mut() {
            identity.issuer = KeyPair::new_operator().public_key();
        }
        assert!(refused(&bad), "an operator as issuer");

        let text = String::from_utf8(wire(&good)).unwrap();
        let callout = text.replace(r#""kind":"peel","id":"web-01""#, r#""kind":"callout""#);
        assert_ne!(callout, text);
        assert!(SessionNotice::heard("b", callout.as_bytes()).is_err());
        let account_key = text.replace(good.nkey.as_str(), &KeyPair::new_account().public_key());
        assert!(SessionNotice::heard("b", account_key.as_bytes()).is_err());
        let padded = text.replacen('{', &format!(r#"{{"pad":"{}","#, "x".repeat(2048)), 1);
        assert!(matches!(
            SessionNotice::heard("b", padded.as_bytes()),
            Err(NoticeError::TooLarge { .. })
        ));
        assert!(SessionNotice::heard("b", b"not json").is_err());

        let batch = serde_json::to_vec(&vec![good.clone(), bad, good.clone()]).unwrap();
        assert_eq!(SessionNotice::heard_batch("b", &batch).unwrap().len(), 2);
        assert!(SessionNotice::heard_batch("a", &batch).unwrap().is_empty());
        let many = serde_json::to_vec(&vec![good; BATCH + 1]).unwrap();
        assert!(SessionNotice::heard_batch("b", &many).is_err());
    }
}
