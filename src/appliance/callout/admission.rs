//! The admission step of one callout request, pure: given the opened request, the trust
//! anchors, the key records and whether the client's address may still enrol this minute, it
//! says who gets in with which role, where the session is filed, and fills the audit record.
//! No signing, no shared state, no I/O: `CalloutState::process` does those around it (sign
//! the session JWT, remember the session, answer).

use super::audit::{AuditRecord, Source, Verdict};
use super::decide::{self, Admission, Decision, KeyLookup, Refusal, Trust};
use super::readmit;
use super::sessions::Session;
use crate::identity::claims::AuthRequestNats;
use crate::permissions::Role;

/// Where an admitted session is filed: under the peel id, the enrolling key itself (so that its
/// requests can be limited per address), or the service's role name — peel ids can be none of
/// the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filing {
    /// The session table's identity, and the name in the session JWT.
    pub identity: String,
    /// The peel id for the audit line (empty for other roles).
    pub peel: String,
    /// The client's address, kept for enrolling keys and admins only.
    pub ip: Option<String>,
}

/// What admitting one request decided.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The decision, the enrolment rate applied.
    pub decision: Decision,
    /// The audit record: what the request says and, for a refusal, why.
    pub audit: AuditRecord,
    /// For an admission: where the session is filed.
    pub filing: Option<Filing>,
}

/// Decides `request` at `now`. `may_enrol(ip)` says whether an enrolling key from that address
/// is still within its rate (asked only for enrolling keys). `live` is the session already
/// filed for the request's connection, if any: a request that only repeats the connection's
/// nonce signature is then decided again from it ([`readmit`]).
pub fn admit(
    request: &AuthRequestNats,
    trust: &Trust,
    keys: &dyn KeyLookup,
    may_enrol: impl FnOnce(&str) -> bool,
    live: Option<&Session>,
    now: i64,
) -> Admitted {
    let mut audit = AuditRecord::at(now, Source::Callout, Verdict::Refuse);
    audit.client_ip = request.client_info.host.clone();
    audit.client_id = request.client_info.id;
    audit.connection_name = request.client_info.name.clone();
    audit.server_id = request.server.id.clone();
    let again = live
        .and_then(|session| Some((&session.nkey, session.grant.as_deref()?)))
        .filter(|_| readmit::is_asked_again(request, trust, now));
    if let Some((nkey, grant)) = again {
        let decision = readmit::readmit(request, nkey, grant, trust, keys, now);
        let filing = match &decision {
            Decision::Allow(admission) => {
                audit.reason =
                    "let in again: nats-server asked once more about this live connection (it does on a configuration reload)".into();
                Some(filing(admission, request))
            }
            Decision::Refuse { refusal, nkey } => {
                audit.code = refusal.code().to_string();
                audit.reason = format!("asked again about a live connection: {refusal}");
                audit.nkey = nkey.clone().unwrap_or_default();
                None
            }
        };
        return Admitted {
            decision,
            audit,
            filing,
        };
    }
    let mut decision = decide::decide(request, trust, keys, now);
    if let Decision::Allow(admission) = &decision {
        let ip = &request.client_info.host;
        if matches!(admission.role, Role::Enrolling { .. }) && !may_enrol(ip) {
            decision = Decision::Refuse {
                refusal: Refusal::EnrolRateLimited { ip: ip.clone() },
                nkey: Some(admission.nkey.to_string()),
            };
        }
    }
    let filing = match &decision {
        Decision::Allow(admission) => Some(filing(admission, request)),
        Decision::Refuse { refusal, nkey } => {
            audit.code = refusal.code().to_string();
            audit.reason = refusal.to_string();
            audit.nkey = nkey.clone().unwrap_or_default();
            None
        }
    };
    Admitted {
        decision,
        audit,
        filing,
    }
}

fn filing(admission: &Admission, request: &AuthRequestNats) -> Filing {
    match &admission.role {
        Role::Peel(id) => Filing {
            identity: id.to_string(),
            peel: id.to_string(),
            ip: None,
        },
        Role::Enrolling { nkey } => Filing {
            identity: nkey.clone(),
            peel: String::new(),
            ip: Some(request.client_info.host.clone()),
        },
        // A named admin is filed as `admin:<name>`, so `admin remove` kicks exactly its
        // sessions; its address is kept so its actions are audited with where it acts from.
        Role::Admin(_) => Filing {
            identity: admission.role.identity(),
            peel: String::new(),
            ip: Some(request.client_info.host.clone()),
        },
        other => Filing {
            identity: other.identity(),
            peel: String::new(),
            ip: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use data_encoding::BASE64URL_NOPAD;
    use nkeys::KeyPair;

    use super::*;
    use crate::authority::Authority;
    use crate::identity::claims::ConnectOptions;
    use crate::identity::peel_id::PeelId;
    use crate::wire::record::KeyState;

    const NOW: i64 = 1_800_000_000;

    fn trust(authority: &Authority, sentinel: &str) -> Trust {
        Trust {
            operator: authority.operator_jwt.clone(),
            account: authority.zester_jwt.clone(),
            sentinel: sentinel.to_string(),
            services: HashMap::new(),
            peers: HashMap::new(),
        }
    }

    fn request(jwt: &str, key: &KeyPair, nkey_only: bool) -> AuthRequestNats {
        let mut request = AuthRequestNats::default();
        request.client_info.nonce = "nonce-1".into();
        request.client_info.host = "10.0.0.7".into();
        request.client_info.id = 42;
        request.client_info.name = "zester-peel-x".into();
        request.server.id = "NSERVER".into();
        request.connect_opts = ConnectOptions {
            jwt: jwt.to_string(),
            nkey: if nkey_only {
                key.public_key()
            } else {
                String::new()
            },
            signed_nonce: BASE64URL_NOPAD.encode(&key.sign(b"nonce-1").unwrap()),
            ..ConnectOptions::default()
        };
        request
    }

    #[test]
    fn an_accepted_peel_is_filed_under_its_id_and_audited_with_the_request() {
        let (authority, _) = Authority::generate(NOW).unwrap();
        let id = PeelId::parse("web-01").unwrap();
        let creds = authority.issue_peel(&id, NOW, 3600).unwrap();
        let key = KeyPair::from_seed(&creds.key().seed().unwrap()).unwrap();
        let mut keys = HashMap::new();
        keys.insert(key.public_key(), (id.clone(), KeyState::Accepted));
        let admitted = admit(
            &request(creds.jwt().token(), &key, false),
            &trust(&authority, "SENTINEL"),
            &keys,
            |_| panic!("a peel is not rate-limited as an enrolling key"),
            None,
            NOW,
        );
        assert!(matches!(admitted.decision, Decision::Allow(_)));
        assert_eq!(
            admitted.filing,
            Some(Filing {
                identity: "web-01".into(),
                peel: "web-01".into(),
                ip: None
            })
        );
        assert_eq!(admitted.audit.client_ip, "10.0.0.7");
        assert_eq!(admitted.audit.client_id, 42);
        assert_eq!(admitted.audit.server_id, "NSERVER");
    }

    #[test]
    fn an_enrolling_key_is_filed_under_itself_with_its_address_and_rate_limited() {
        let (authority, _) = Authority::generate(NOW).unwrap();
        let sentinel = authority.issue_sentinel(NOW).unwrap();
        let key = KeyPair::new_user();
        let trust = trust(&authority, sentinel.token());
        let keys: HashMap<String, (PeelId, KeyState)> = HashMap::new();
        let ask = request(sentinel.token(), &key, true);
        let admitted = admit(&ask, &trust, &keys, |ip| ip == "10.0.0.7", None, NOW);
        assert_eq!(
            admitted.filing,
            Some(Filing {
                identity: key.public_key(),
                peel: String::new(),
                ip: Some("10.0.0.7".into())
            })
        );
        let limited = admit(&ask, &trust, &keys, |_| false, None, NOW);
        assert!(limited.filing.is_none());
        assert_eq!(limited.audit.code, "enrol_rate_limited");
        assert_eq!(limited.audit.nkey, key.public_key());
        assert_eq!(limited.audit.decision, Verdict::Refuse);
    }

    #[test]
    fn a_live_connection_asked_about_again_is_let_in_again_only_with_its_session() {
        let (authority, _) = Authority::generate(NOW).unwrap();
        let id = PeelId::parse("web-01").unwrap();
        let creds = authority.issue_peel(&id, NOW, 3600).unwrap();
        let key = KeyPair::from_seed(&creds.key().seed().unwrap()).unwrap();
        let mut keys = HashMap::new();
        keys.insert(key.public_key(), (id.clone(), KeyState::Accepted));
        let trust = trust(&authority, "SENTINEL");
        // What nats-server sends on a reload: the sentinel instead of the JWT it has dropped.
        let again = request("SENTINEL", &key, false);
        let first = admit(
            &request(creds.jwt().token(), &key, false),
            &trust,
            &keys,
            |_| true,
            None,
            NOW,
        );
        let Decision::Allow(admission) = &first.decision else {
            panic!("{:?}", first.decision)
        };
        let table = crate::appliance::callout::sessions::SessionTable::default();
        table.insert_granted(
            "web-01",
            ("NSERVER", 42),
            admission.nkey.clone(),
            NOW,
            None,
            Some(readmit::Grant {
                role: admission.role.clone(),
                expires: NOW + 600,
                identity: admission.identity.clone(),
            }),
        );
        let live = table.admitted("NSERVER", 42);
        let readmitted = admit(
            &again,
            &trust,
            &keys,
            |_| panic!("not enrolling"),
            live.as_ref(),
            NOW,
        );
        assert!(matches!(
            &readmitted.decision,
            Decision::Allow(a) if a.expires == NOW + 600 && a.role == Role::Peel(id.clone())
        ));
        assert_eq!(readmitted.filing, first.filing);
        assert!(readmitted.audit.reason.contains("again"));

        let stranger = admit(&again, &trust, &keys, |_| true, None, NOW);
        assert_eq!(
            stranger.audit.code, "jwt_invalid",
            "no session, no second chance"
        );
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_reason() {
        let (authority, _) = Authority::generate(NOW).unwrap();
        let id = PeelId::parse("ghost").unwrap();
        let creds = authority.issue_peel(&id, NOW, 3600).unwrap();
        let key = KeyPair::from_seed(&creds.key().seed().unwrap()).unwrap();
        let keys: HashMap<String, (PeelId, KeyState)> = HashMap::new();
        let admitted = admit(
            &request(creds.jwt().token(), &key, false),
            &trust(&authority, "SENTINEL"),
            &keys,
            |_| true,
            None,
            NOW,
        );
        assert!(admitted.filing.is_none());
        assert_eq!(admitted.audit.code, "key_unknown");
        assert!(!admitted.audit.reason.is_empty());
    }
}
