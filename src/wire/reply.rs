//! Where a service may send its answer (DESIGN §4, "no confused deputy").
//!
//! Every service answer is published with zester's own rights, and nats-server lets the asker
//! name any reply subject. So a service answers only to the asking identity's own inbox: a
//! peel's `_INBOX.<id>.`, an enrolling key's `_INBOX.<nkey>.`, the admin's `_INBOX._admin.`.
//! The asker is known from the subject the request came in on (the server let only that
//! identity publish there), never from the payload. [`check`] is the one rule; every service
//! goes through it before it acts on a request.

use std::fmt;

/// The longest reply subject answered (async-nats' inboxes are ~60 bytes).
const MAX_REPLY_LEN: usize = 256;

/// Who asked, as far as the subject tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker<'a> {
    /// Peel `<id>` (a request on `zester.event.<id>.…`).
    Peel(&'a str),
    /// The enrolling key `<nkey>` (a request on `zester.enrol.<nkey>`).
    Enrolling(&'a str),
    /// An admin tool (a request on `zester.admin.…`, or a command to a peel).
    Admin,
    /// The master (a command to a peel).
    Master,
}

impl Asker<'_> {
    /// The inbox prefix answers to this asker must start with (without the final dot).
    pub fn inbox_prefix(&self) -> String {
        match self {
            Asker::Peel(id) => super::subjects::peel_inbox_prefix(id),
            Asker::Enrolling(nkey) => super::subjects::enrolling_inbox_prefix(nkey),
            Asker::Admin => super::subjects::ADMIN_INBOX_PREFIX.to_string(),
            Asker::Master => super::subjects::MASTER_INBOX_PREFIX.to_string(),
        }
    }
}

impl fmt::Display for Asker<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Asker::Peel(id) => write!(f, "peel {id}"),
            Asker::Enrolling(nkey) => write!(f, "enrolling key {nkey}"),
            Asker::Admin => f.write_str("admin"),
            Asker::Master => f.write_str("master"),
        }
    }
}

/// A reply subject a service will not answer to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a request from {asker} named reply subject {reply:?}: answers go only to {prefix}.…")]
pub struct ReplyRefused {
    /// Who asked.
    pub asker: String,
    /// The reply subject named (shortened, escaped when shown).
    pub reply: String,
    /// Where answers to this asker may go.
    pub prefix: String,
}

/// Accepts `reply` only inside the asker's own inbox: `<prefix>.` followed by one or more
/// non-empty literal tokens (no wildcards, no whitespace or control characters).
pub fn check(asker: Asker<'_>, reply: &str) -> Result<(), ReplyRefused> {
    let prefix = asker.inbox_prefix();
    let inside = reply
        .strip_prefix(prefix.as_str())
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|rest| {
            reply.len() <= MAX_REPLY_LEN
                && rest.split('.').all(|token| {
                    !token.is_empty()
                        && token != "*"
                        && token != ">"
                        && !token.chars().any(|c| c.is_whitespace() || c.is_control())
                })
        });
    if inside {
        Ok(())
    } else {
        Err(ReplyRefused {
            asker: asker.to_string(),
            reply: reply.chars().take(MAX_REPLY_LEN).collect(),
            prefix,
        })
    }
}

/// A peel's answer to a command (`zester.cmd.<id>`, which the admin and the master may send):
/// it goes out with the peel's right to reply, so only into the admin's or the master's inbox.
pub fn check_command_reply(reply: &str) -> Result<(), ReplyRefused> {
    check(Asker::Admin, reply).or_else(|_| check(Asker::Master, reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_go_only_to_the_askers_own_inbox() {
        let peel = Asker::Peel("web-01");
        assert!(check(peel, "_INBOX.web-01.abc.1").is_ok());
        assert!(check(peel, "_INBOX.web-01.x").is_ok());
        for hostile in [
            "$JS.API.STREAM.DELETE.KV_zester-keys",
            "$KV.zester-keys.web-02",
            "zester.cmd.web-02",
            "$SYS.REQ.SERVER.PING",
            "_INBOX.web-02.x",
            "_INBOX.web-01x.y",
            "_INBOX.web-0.x",
            "_INBOX.web-01",
            "_INBOX.web-01.",
            "_INBOX.web-01..x",
            "_INBOX.web-01.>",
            "_INBOX.web-01.*",
            "_INBOX.web-01.a b",
            "_INBOX.web-01.a\nb",
            "_INBOX._admin.x",
            "_INBOX._store.x",
            "",
        ] {
            let refused = check(peel, hostile).unwrap_err();
            assert_eq!(refused.prefix, "_INBOX.web-01");
        }
        assert!(check(peel, &format!("_INBOX.web-01.{}", "a".repeat(300))).is_err());
        let nkey = "UABCDEF";
        assert!(check(Asker::Enrolling(nkey), "_INBOX.UABCDEF.r.1").is_ok());
        assert!(check(Asker::Enrolling(nkey), "$KV.zester-keys.web-01").is_err());
        assert!(check(Asker::Admin, "_INBOX._admin.q.2").is_ok());
        assert!(check(Asker::Admin, "_INBOX._master.q").is_err());
        assert!(check(Asker::Admin, "_INBOX.web-01.q").is_err());
    }

    #[test]
    fn a_peel_answers_commands_only_into_the_commanders_inboxes() {
        assert!(check_command_reply("_INBOX._admin.a.1").is_ok());
        assert!(check_command_reply("_INBOX._master.b").is_ok());
        for hostile in [
            "$KV.zester-keys.web-01",
            "_INBOX.web-02.x",
            "zester.cmd.web-02",
        ] {
            assert!(check_command_reply(hostile).is_err(), "{hostile}");
        }
    }

    #[test]
    fn a_refusal_says_what_was_named_and_where_answers_go() {
        let text = check(Asker::Peel("a"), "$JS.API.STREAM.DELETE.KV_zester-keys")
            .unwrap_err()
            .to_string();
        assert!(text.contains("peel a"), "{text}");
        assert!(text.contains("KV_zester-keys"), "{text}");
        assert!(text.contains("_INBOX.a."), "{text}");
    }
}
