//! Subject names zester's services listen on and the inbox prefixes of each kind of asker
//! (DESIGN §4). One builder per subject, used by the side that asks, the side that answers and
//! by `permissions`, so the three can never disagree.

use crate::identity::peel_id::PeelId;

/// Where enrolment requests arrive (`zester.enrol.<nkey>`).
pub const ENROL_REQUESTS: &str = "zester.enrol.*";
/// Where rotation requests arrive (`zester.event.<id>.rotate`).
pub const ROTATE_REQUESTS: &str = "zester.event.*.rotate";
/// Where "new key connected" notices arrive (`zester.event.<id>.rotated`).
pub const ROTATED_NOTICES: &str = "zester.event.*.rotated";
/// Where peels ask for a fresh identity JWT (`zester.event.<id>.renew`).
pub const RENEW_REQUESTS: &str = "zester.event.*.renew";
/// Where peels ask for their settings (`zester.event.<id>.settings`).
pub const SETTINGS_REQUESTS: &str = "zester.event.*.settings";
/// Every admin API subject.
pub const ADMIN_REQUESTS: &str = "zester.admin.>";

/// The queue group every service of every node answers in: in a cluster, one node handles
/// each request (the state it acts on is in the replicated buckets).
pub const SERVICE_QUEUE: &str = "zester-services";

/// The key store's KV bucket.
pub const KEYS_BUCKET: &str = "zester-keys";
/// The per-peel settings KV bucket.
pub const SETTINGS_BUCKET: &str = "zester-settings";
/// The join-token KV bucket (public keys and limits, never secrets).
pub const TOKENS_BUCKET: &str = "zester-tokens";
/// The cluster's node records (`zester node list`).
pub const NODES_BUCKET: &str = "zester-nodes";
/// The named admins of the whole cluster: one list, which every node copies into its
/// `auth/admins.json` and its callout's trust.
pub const ADMINS_BUCKET: &str = "zester-admins";
/// Every bucket zester keeps: its store connection may use these and nothing else of JetStream.
pub const BUCKETS: [&str; 5] = [
    KEYS_BUCKET,
    SETTINGS_BUCKET,
    TOKENS_BUCKET,
    NODES_BUCKET,
    ADMINS_BUCKET,
];

/// The inbox prefix the master uses (ids starting with `_` are reserved, so no peel has it).
pub const MASTER_INBOX_PREFIX: &str = "_INBOX._master";
/// The inbox prefix admin tools use.
pub const ADMIN_INBOX_PREFIX: &str = "_INBOX._admin";
/// The inbox prefix of zester's own key-store connection (JetStream answers arrive there).
pub const STORE_INBOX_PREFIX: &str = "_INBOX._store";
/// The inbox prefix of zester's own service connection (it asks nothing, so it never has one).
pub const SERVICE_INBOX_PREFIX: &str = "_INBOX._service";

/// Job cancels every peel hears (`zester.job.<jid>.cancel`).
pub const JOB_CANCELS: &str = "zester.job.*.cancel";

/// `zester.cmd.<id>`: where commands for peel `id` arrive.
pub fn cmd(id: &str) -> String {
    format!("zester.cmd.{id}")
}

/// `zester.cmd.<id>.>`: the peel's sub-command subjects.
pub fn cmd_below(id: &str) -> String {
    format!("zester.cmd.{id}.>")
}

/// `zester.event.<id>.>`: everything peel `id` reports (and asks: rotate, renew, settings).
pub fn events(id: &str) -> String {
    format!("zester.event.{id}.>")
}

/// `zester.event.<id>.<name>`: one event of peel `id`.
pub fn event(id: &str, name: &str) -> String {
    format!("zester.event.{id}.{name}")
}

/// `zester.fact.<id>`: peel `id`'s facts.
pub fn fact(id: &str) -> String {
    format!("zester.fact.{id}")
}

/// `zester.job.*.ack.<id>`: peel `id` acknowledging any job.
pub fn job_acks(id: &str) -> String {
    format!("zester.job.*.ack.{id}")
}

/// `zester.job.*.return.<id>`: peel `id` returning any job's result.
pub fn job_returns(id: &str) -> String {
    format!("zester.job.*.return.{id}")
}

/// `zester.enrol.<nkey>`: the one subject an enrolling key may publish on.
pub fn enrol(nkey: &str) -> String {
    format!("zester.enrol.{nkey}")
}

/// `zester.event.<id>.rotate`.
pub fn rotate(id: &str) -> String {
    event(id, "rotate")
}

/// `zester.event.<id>.renew`.
pub fn renew(id: &str) -> String {
    event(id, "renew")
}

/// `zester.event.<id>.rotated`.
pub fn rotated(id: &str) -> String {
    event(id, "rotated")
}

/// `zester.event.<id>.settings`: a peel asks for its own settings document here.
pub fn settings(id: &PeelId) -> String {
    event(id.as_str(), "settings")
}

/// The inbox prefix of peel `id`: `_INBOX.<id>`.
pub fn peel_inbox_prefix(id: &str) -> String {
    format!("_INBOX.{id}")
}

/// The inbox prefix of an enrolling key: `_INBOX.<nkey>`.
pub fn enrolling_inbox_prefix(nkey: &str) -> String {
    format!("_INBOX.{nkey}")
}

/// The peel id a `zester.event.<id>.…` subject names (the server let only that peel publish
/// there), if the subject has that shape.
pub fn event_peel(subject: &str) -> Option<&str> {
    let mut tokens = subject.split('.');
    match (tokens.next(), tokens.next(), tokens.next()) {
        (Some("zester"), Some("event"), Some(id)) if !id.is_empty() => Some(id),
        _ => None,
    }
}

/// The nkey a `zester.enrol.<nkey>` subject names.
pub fn enrol_nkey(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("zester.enrol.")
        .filter(|n| !n.is_empty() && !n.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_whom_they_are_about() {
        let id = PeelId::parse("web-01").unwrap();
        assert_eq!(settings(&id), "zester.event.web-01.settings");
        assert_eq!(event_peel(&rotate("web-01")), Some("web-01"));
        assert_eq!(event_peel("zester.cmd.web-01"), None);
        assert_eq!(enrol_nkey(&enrol("UABC")), Some("UABC"));
        assert_eq!(enrol_nkey("zester.enrol.UABC.x"), None);
        assert_eq!(enrol_nkey("zester.enrol."), None);
    }
}
