//! The permission set of every role, per DESIGN §4. Pure: a role in, NATS permissions out.
//!
//! A peel may only speak as itself: publish its events, facts and job answers, and read its own
//! commands, job cancels and its own inbox (`_INBOX.<id>`; the client sets that inbox prefix).
//! Nothing here is taken from what a client claims: the callout decides the role from the key
//! record and asks this module what that role may do.

use crate::identity::admin_name::AdminName;
use crate::identity::claims::{Permission, Permissions, ResponsePermission};
use crate::identity::peel_id::PeelId;
pub use crate::wire::subjects::{ADMIN_INBOX_PREFIX, MASTER_INBOX_PREFIX};
use crate::wire::{audit, subjects};
/// Where nats-server sends auth-callout requests.
pub const AUTH_CALLOUT_SUBJECT: &str = "$SYS.REQ.USER.AUTH";

/// Who a connection is, as far as permissions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// An accepted peel.
    Peel(PeelId),
    /// The master: drives the fleet, owns the KV buckets.
    Master,
    /// An operator's tools (`zester key …`): the home's own admin creds (`None`) or a named
    /// admin made by `zester admin add` (its name, from zester's own list, never from the
    /// client). Every admin has the same permissions; the name is who the appliance records.
    Admin(Option<AdminName>),
    /// A key that is enrolling: it may only talk about itself.
    Enrolling {
        /// The enrolling nkey (U…).
        nkey: String,
    },
    /// The auth-callout service: reads requests, answers them, nothing else.
    Callout,
    /// zester's own service connection (enrol, rotate, settings, admin, status): hears the
    /// requests and may publish only into inboxes, so a steered answer cannot write anything.
    Service,
    /// zester's own key-store connection: the JetStream API of zester's buckets and nothing
    /// else; it hears nothing a client can send.
    Store,
}

impl Role {
    /// A short name for logs and tags.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Peel(_) => "peel",
            Role::Master => "master",
            Role::Admin(_) => "admin",
            Role::Enrolling { .. } => "enrolling",
            Role::Callout => "callout",
            Role::Service => "service",
            Role::Store => "store",
        }
    }

    /// Who a session of this role is filed and recorded as: the peel id, the enrolling key,
    /// `admin` for the home's admin creds, `admin:<name>` for a named admin, else the role name.
    pub fn identity(&self) -> String {
        match self {
            Role::Peel(id) => id.to_string(),
            Role::Enrolling { nkey } => nkey.clone(),
            Role::Admin(Some(name)) => name.identity(),
            other => other.name().to_string(),
        }
    }

    /// The inbox prefix clients of this role must use.
    pub fn inbox_prefix(&self) -> String {
        match self {
            Role::Peel(id) => subjects::peel_inbox_prefix(id.as_str()),
            Role::Master => MASTER_INBOX_PREFIX.to_string(),
            Role::Admin(_) | Role::Callout => ADMIN_INBOX_PREFIX.to_string(),
            Role::Enrolling { nkey } => subjects::enrolling_inbox_prefix(nkey),
            Role::Service => subjects::SERVICE_INBOX_PREFIX.to_string(),
            Role::Store => subjects::STORE_INBOX_PREFIX.to_string(),
        }
    }
}

fn allow(subjects: &[String]) -> Permission {
    Permission {
        allow: subjects.to_vec(),
        deny: Vec::new(),
    }
}

fn strings(subjects: &[&str]) -> Vec<String> {
    subjects.iter().map(|s| s.to_string()).collect()
}

/// Answers to requests a client received: one reply each, server default TTL.
const ONE_REPLY: ResponsePermission = ResponsePermission { max: 1, ttl: 0 };

/// The permissions of `role`.
pub fn permissions_for(role: &Role) -> Permissions {
    match role {
        Role::Peel(id) => Permissions {
            publish: allow(&[
                subjects::events(id.as_str()),
                subjects::fact(id.as_str()),
                subjects::job_acks(id.as_str()),
                subjects::job_returns(id.as_str()),
                // Nothing of `$JS.` or `$KV.`: a JetStream request's answer goes wherever the
                // requester says, sent from inside the account. Settings come from a service
                // request on `zester.event.<id>.settings`, answered to this peel's inbox only.
            ]),
            subscribe: allow(&[
                subjects::cmd(id.as_str()),
                subjects::cmd_below(id.as_str()),
                subjects::JOB_CANCELS.to_string(),
                format!("_INBOX.{id}.>"),
            ]),
            resp: Some(ONE_REPLY),
        },
        Role::Master => {
            let all = strings(&["zester.>", "$JS.API.>", "$KV.>", "_INBOX.>"]);
            // The key store's watch is an ordered consumer with flow control: once enough
            // records are in flight (thousands of keys at start) the server waits for an empty
            // reply on `$JS.FC.<stream>.…` before it sends more, so without this the watch stalls.
            let mut publish = all.clone();
            publish.push("$JS.FC.>".to_string());
            Permissions {
                publish: Permission {
                    allow: publish,
                    // The audit trail is written by zester alone: a record on its subject from
                    // anyone else would be a forgery, and a changed or deleted stream a lost
                    // trail (records are never deleted or purged one by one: the stream denies it).
                    deny: master_denies(),
                },
                subscribe: allow(&all),
                resp: None,
            }
        }
        Role::Admin(_) => Permissions {
            publish: allow(&strings(&[
                "zester.cmd.>",
                "zester.job.>",
                "zester.admin.>",
                "_INBOX._admin.>",
            ])),
            // `zester.audit.>`: the audit trail as it is written (never to publish).
            subscribe: allow(&strings(&[
                "zester.event.>",
                "zester.job.>",
                audit::SUBJECTS,
                "_INBOX._admin.>",
            ])),
            resp: None,
        },
        Role::Enrolling { nkey } => Permissions {
            publish: allow(&[subjects::enrol(nkey)]),
            subscribe: allow(&[format!("_INBOX.{nkey}.>")]),
            resp: None,
        },
        // Deny every publish except replies to the requests it received.
        Role::Callout => Permissions {
            publish: Permission {
                allow: Vec::new(),
                deny: strings(&[">"]),
            },
            subscribe: allow(&strings(&[AUTH_CALLOUT_SUBJECT])),
            resp: Some(ONE_REPLY),
        },
        // Answers into inboxes, never into the master's or the store's (whose JetStream
        // answers it could forge); nothing else.
        Role::Service => Permissions {
            publish: Permission {
                allow: strings(&["_INBOX.>"]),
                deny: vec![
                    format!("{MASTER_INBOX_PREFIX}.>"),
                    format!("{}.>", subjects::STORE_INBOX_PREFIX),
                ],
            },
            subscribe: allow(&strings(&[
                subjects::ENROL_REQUESTS,
                subjects::ROTATE_REQUESTS,
                subjects::ROTATED_NOTICES,
                subjects::RENEW_REQUESTS,
                subjects::SETTINGS_REQUESTS,
                subjects::ADMIN_REQUESTS,
            ])),
            resp: None,
        },
        Role::Store => {
            let mut publish = vec!["$JS.API.INFO".to_string()];
            for bucket in subjects::BUCKETS {
                let stream = format!("KV_{bucket}");
                publish.extend([
                    // STREAM.INFO / CREATE, DIRECT.GET, CONSUMER.CREATE / DELETE of this stream
                    format!("$JS.API.*.*.{stream}"),
                    format!("$JS.API.*.*.{stream}.>"),
                    // STREAM.MSG.GET
                    format!("$JS.API.*.*.*.{stream}"),
                    format!("$KV.{bucket}.>"),
                    // the watch's flow control (see the master above)
                    format!("$JS.FC.{stream}.>"),
                ]);
            }
            // The audit stream: created or updated at start, asked where this node's chain
            // stands, and every record published with an ack (to this connection's inbox).
            let stream = audit::STREAM;
            publish.extend([
                format!("$JS.API.*.*.{stream}"),
                format!("$JS.API.*.*.{stream}.>"),
                format!("$JS.API.*.*.*.{stream}"),
                audit::SUBJECTS.to_string(),
            ]);
            Permissions {
                publish: allow(&publish),
                subscribe: allow(&[format!("{}.>", subjects::STORE_INBOX_PREFIX)]),
                resp: None,
            }
        }
    }
}

/// What the master may not publish although `zester.>`, `$JS.API.>` and `$KV.>` allow it.
///
/// The audit trail is written by zester alone: a record on its subject from anyone else would be
/// a forgery. zester's buckets (keys, settings, tokens, nodes, admins …) are written only by
/// zester's store connection: a put from the master would accept a key, make a token, or mark a
/// node accepted (which then gets the cluster's seeds), and a deleted or purged bucket would lose
/// the fleet. And the master makes no streams at all: a stream's `republish` is sent by the
/// server itself, past every permission, so a stream the master made (or restored, or
/// re-configured) could republish into `$KV.zester-keys.>` (measured with nats-server 2.15.1:
/// the message lands in the bucket). The master still reads streams and buckets and makes
/// consumers (a push consumer's deliveries do not land in another stream: measured too).
fn master_denies() -> Vec<String> {
    let mut deny = vec![audit::SUBJECTS.to_string()];
    for api in [
        "CREATE",
        "UPDATE",
        "RESTORE",
        "DELETE",
        "PURGE",
        "MSG.DELETE",
        "PEER.REMOVE",
    ] {
        deny.push(format!("$JS.API.STREAM.{api}.>"));
    }
    deny.push("$JS.API.STREAM.LEADER.STEPDOWN.>".to_string());
    deny.push("$JS.API.META.LEADER.STEPDOWN".to_string());
    for bucket in subjects::BUCKETS {
        deny.push(format!("$KV.{bucket}.>"));
    }
    deny
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_may_answer_jetstream_flow_control() {
        let master = permissions_for(&Role::Master);
        assert!(master.publish.allow.contains(&"$JS.FC.>".to_string()));
        assert!(!master.subscribe.allow.contains(&"$JS.FC.>".to_string()));
        let peel = peel("web-01");
        assert!(!peel.publish.allow.iter().any(|s| s.starts_with("$JS.FC")));
    }

    #[test]
    fn the_master_may_not_write_zesters_buckets_or_make_streams() {
        let master = permissions_for(&Role::Master);
        let deny = &master.publish.deny;
        for bucket in subjects::BUCKETS {
            assert!(deny.contains(&format!("$KV.{bucket}.>")), "{bucket}");
        }
        for api in [
            "CREATE",
            "UPDATE",
            "RESTORE",
            "DELETE",
            "PURGE",
            "MSG.DELETE",
        ] {
            assert!(deny.contains(&format!("$JS.API.STREAM.{api}.>")), "{api}");
        }
        assert!(deny.contains(&audit::SUBJECTS.to_string()));
        // Reads stay allowed.
        assert!(!deny
            .iter()
            .any(|d| d.contains("INFO") || d.contains("DIRECT") || d.contains("CONSUMER")));
    }

    fn peel(id: &str) -> Permissions {
        permissions_for(&Role::Peel(PeelId::parse(id).unwrap()))
    }

    #[test]
    fn a_peel_only_names_itself() {
        let p = peel("web-01");
        for subject in p.publish.allow.iter().chain(&p.subscribe.allow) {
            let tokens: Vec<&str> = subject.split('.').collect();
            let names_itself = tokens.contains(&"web-01");
            let shared = subject == "zester.job.*.cancel";
            assert!(
                names_itself || shared,
                "{subject} is not scoped to the peel"
            );
            assert!(!tokens.contains(&">") || tokens[tokens.len() - 2] == "web-01" || shared);
        }
        assert!(!p.subscribe.allow.iter().any(|s| s == "_INBOX.>"));
        assert_eq!(p.resp, Some(ONE_REPLY));
    }

    #[test]
    fn two_peels_share_no_subject_but_job_cancel() {
        let a = peel("a");
        let b = peel("b");
        for subject in a.publish.allow.iter().chain(&a.subscribe.allow) {
            let in_b = b.publish.allow.contains(subject) || b.subscribe.allow.contains(subject);
            assert!(
                !in_b || subject == "zester.job.*.cancel",
                "{subject} shared"
            );
        }
    }

    #[test]
    fn enrolling_keys_may_only_talk_about_themselves() {
        let p = permissions_for(&Role::Enrolling {
            nkey: "UABC".into(),
        });
        assert_eq!(p.publish.allow, vec!["zester.enrol.UABC"]);
        assert_eq!(p.subscribe.allow, vec!["_INBOX.UABC.>"]);
    }

    #[test]
    fn no_peel_or_enrolling_key_reaches_jetstream() {
        let enrolling = permissions_for(&Role::Enrolling {
            nkey: "UABC".into(),
        });
        for p in [peel("web-01"), enrolling] {
            for subject in p.publish.allow.iter().chain(&p.subscribe.allow) {
                assert!(
                    !subject.starts_with("$JS") && !subject.starts_with("$KV"),
                    "{subject}"
                );
            }
        }
    }

    #[test]
    fn zesters_own_connections_get_least_privilege() {
        let service = permissions_for(&Role::Service);
        assert_eq!(service.publish.allow, vec!["_INBOX.>"]);
        assert!(service
            .publish
            .deny
            .contains(&"_INBOX._store.>".to_string()));
        assert!(!service.subscribe.allow.iter().any(|s| s.starts_with('$')));
        let store = permissions_for(&Role::Store);
        for subject in &store.publish.allow {
            assert!(
                subject == "$JS.API.INFO"
                    || subject.contains("KV_zester-keys")
                    || subject.contains("KV_zester-settings")
                    || subject.contains("KV_zester-tokens")
                    || subject.contains("KV_zester-nodes")
                    || subject.contains("KV_zester-admins")
                    || subject.starts_with("$KV.zester-keys.")
                    || subject.starts_with("$KV.zester-settings.")
                    || subject.starts_with("$KV.zester-tokens.")
                    || subject.starts_with("$KV.zester-nodes.")
                    || subject.starts_with("$KV.zester-admins.")
                    || subject.contains("zester-audit")
                    || subject == "zester.audit.>",
                "{subject}"
            );
        }
        assert_eq!(store.subscribe.allow, vec!["_INBOX._store.>"]);
    }

    #[test]
    fn only_zesters_store_connection_may_publish_audit_records() {
        let may_publish_audit = |p: &Permissions| {
            let hit = |s: &String| {
                s == "zester.audit.>"
                    || s == "zester.>"
                    || s == ">"
                    || s.starts_with("zester.audit.")
            };
            p.publish.allow.iter().any(hit) && !p.publish.deny.iter().any(|s| s == "zester.audit.>")
        };
        let enrolling = Role::Enrolling {
            nkey: "UABC".into(),
        };
        for role in [
            Role::Peel(PeelId::parse("web-01").unwrap()),
            Role::Master,
            Role::Admin(None),
            enrolling,
            Role::Callout,
            Role::Service,
        ] {
            assert!(!may_publish_audit(&permissions_for(&role)), "{role:?}");
        }
        assert!(may_publish_audit(&permissions_for(&Role::Store)));
        let master = permissions_for(&Role::Master);
        assert!(master
            .publish
            .deny
            .contains(&"$JS.API.STREAM.DELETE.>".to_string()));
        assert!(permissions_for(&Role::Admin(None))
            .subscribe
            .allow
            .contains(&"zester.audit.>".to_string()));
    }

    #[test]
    fn admin_inbox_is_reserved() {
        assert!(PeelId::parse("_admin").is_err());
        assert_eq!(Role::Admin(None).inbox_prefix(), ADMIN_INBOX_PREFIX);
    }

    #[test]
    fn a_named_admin_has_exactly_the_admin_permissions_and_its_own_identity() {
        let alice = Role::Admin(Some(AdminName::parse("alice").unwrap()));
        assert_eq!(permissions_for(&alice), permissions_for(&Role::Admin(None)));
        assert_eq!(alice.name(), "admin");
        assert_eq!(alice.identity(), "admin:alice");
        assert_eq!(Role::Admin(None).identity(), "admin");
        assert_eq!(alice.inbox_prefix(), ADMIN_INBOX_PREFIX);
    }
}
