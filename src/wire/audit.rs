//! The audit trail's line format as both ends read it, pure: the hash chain that links every
//! record to the one before it (per node), its verification over an ordered list of lines,
//! and the filters and text rendering of `zester audit tail`.
//!
//! The appliance writes `audit.log` (and publishes the same bytes to the `zester-audit`
//! stream); the CLI reads the files back. Both sides agree here on what a link is, so a
//! record is checked exactly as it was written. The rule: each record carries `node` (the
//! server name of the node that wrote it), `seq` (1, 2, 3 … per node, continuing across
//! restarts and rotations) and `prev`, the hex SHA-256 of the previous record's line of that
//! node exactly as written (without its newline); the first record a node ever writes has
//! `prev` = [`GENESIS`]. Changing, removing, inserting or reordering a line breaks the chain at
//! that place. No I/O here: callers read the files and pass lines in order.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev` of the first record of a chain: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The JetStream stream holding every audit record (same bytes as `audit.log`).
pub const STREAM: &str = "zester-audit";

/// `zester.audit.<node>`: where node `node` publishes its records into [`STREAM`]. Only
/// zester's own store connection may publish there (see `permissions`).
pub fn subject(node: &str) -> String {
    format!("zester.audit.{node}")
}

/// Every node's audit subject: the stream's subjects, and what admins may subscribe to.
pub const SUBJECTS: &str = "zester.audit.>";

/// `[audit] on_overflow`: what the callout does while records cannot be written (the queue is
/// full, or the writer cannot write `audit.log`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// Admit as decided, drop the records that cannot be written and count them.
    #[default]
    Drop,
    /// Refuse new connections (`audit_unavailable`) instead of admitting them unaudited.
    Refuse,
}

impl std::str::FromStr for Overflow {
    type Err = String;

    fn from_str(text: &str) -> Result<Overflow, String> {
        match text {
            "drop" => Ok(Overflow::Drop),
            "refuse" => Ok(Overflow::Refuse),
            other => Err(format!("{other:?}: use \"drop\" or \"refuse\"")),
        }
    }
}

impl Overflow {
    /// The name in `zester.toml` and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Drop => "drop",
            Overflow::Refuse => "refuse",
        }
    }
}

/// The reason code of a connection refused because records cannot be written.
pub const UNAVAILABLE: &str = "audit_unavailable";

/// The hex SHA-256 of a line as written, without its newline: the next record's `prev`.
pub fn line_hash(line: &str) -> String {
    let digest = Sha256::digest(line.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Where a chain goes on: the `seq` and `prev` the next record of this node gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The next record's `seq`.
    pub seq: u64,
    /// The next record's `prev`.
    pub prev: String,
}

impl ChainHead {
    /// A chain that has no record yet.
    pub fn genesis() -> ChainHead {
        ChainHead {
            seq: 1,
            prev: GENESIS.to_string(),
        }
    }

    /// The head after `line` (a record with `seq`) was written; `None` if `line` is not a
    /// chained record.
    pub fn after(line: &str) -> Option<ChainHead> {
        let link = Link::parse(line).ok()?;
        Some(ChainHead {
            seq: link.seq.checked_add(1)?,
            prev: line_hash(line),
        })
    }

    /// Where to go on from the lines of the newest existing file(s), newest last: after the
    /// last chained record among them (a torn or foreign last line is skipped, and left for
    /// `verify` to report), else from the start.
    pub fn continuing<'a>(lines: impl DoubleEndedIterator<Item = &'a str>) -> ChainHead {
        lines
            .rev()
            .find_map(ChainHead::after)
            .unwrap_or_else(ChainHead::genesis)
    }
}

/// The chain fields of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The node that wrote it.
    pub node: String,
    /// Its number in that node's chain.
    pub seq: u64,
    /// The hash of the node's record before it.
    pub prev: String,
}

/// Why a line is not a chained record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a JSON object (a changed byte, a torn write).
    #[error("not a JSON record")]
    NotJson,
    /// A JSON object without `seq` and `prev` (written before the chain began).
    #[error("no seq/prev: not a chained record")]
    Unchained,
}

impl Link {
    /// Reads `node`, `seq` and `prev` from a line.
    pub fn parse(line: &str) -> Result<Link, LinkError> {
        let value: Value = serde_json::from_str(line).map_err(|_| LinkError::NotJson)?;
        if !value.is_object() {
            return Err(LinkError::NotJson);
        }
        let (Some(seq), Some(prev)) = (value["seq"].as_u64(), value["prev"].as_str()) else {
            return Err(LinkError::Unchained);
        };
        Ok(Link {
            node: value["node"].as_str().unwrap_or_default().to_string(),
            seq,
            prev: prev.to_string(),
        })
    }
}

/// One line to check: which file, which line of it (from 1), its text.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// The file (as the user should see it).
    pub file: &'a str,
    /// Line number in that file, from 1.
    pub number: usize,
    /// The line without its newline.
    pub text: &'a str,
}

/// What is wrong at a break.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The line is not a record, or not a chained one after the chain began.
    #[error("not a chained record ({why}): changed, torn or inserted")]
    NotARecord {
        /// What the parser said.
        why: String,
    },
    /// `seq` is not the one after the node's previous record.
    #[error("seq {found} where {expected} was expected: records missing, reordered or inserted")]
    Seq {
        /// What the chain expected.
        expected: u64,
        /// What the line says.
        found: u64,
    },
    /// `prev` is not the hash of the node's previous line.
    #[error("prev does not match the hash of the record before it (at {before}): one of the two was changed")]
    Prev {
        /// Where that previous record is (`file:line`).
        before: String,
        /// Its hash.
        expected: String,
        /// What the line says.
        found: String,
    },
    /// A second start of the node's chain after it had begun.
    #[error("the chain starts again (seq 1) after seq {after}")]
    Restarted {
        /// The seq before.
        after: u64,
    },
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// The file.
    pub file: String,
    /// The line in it, from 1.
    pub line: usize,
    /// The node whose chain broke (empty when the line did not parse).
    pub node: String,
    /// The record's seq, when it has one.
    pub seq: Option<u64>,
    /// What is wrong.
    pub problem: Problem,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(seq) = self.seq {
            write!(f, "record {seq}")?;
            if !self.node.is_empty() {
                write!(f, " of node {}", self.node)?;
            }
            write!(f, ": ")?;
        }
        write!(f, "{}", self.problem)
    }
}

/// One node's chain as far as it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeChain {
    /// Records of this node.
    pub records: u64,
    /// The first seq read.
    pub first_seq: u64,
    /// The last seq read.
    pub last_seq: u64,
    /// True when the first record read is the chain's very start ([`GENESIS`]); false when it
    /// links to a record no longer in the files (rotated away): that first link is taken on
    /// trust, and `anchor` is what it links to.
    pub from_genesis: bool,
    /// The `prev` of the first record read.
    pub anchor: String,
    /// The hash of the last record read (what the next record must carry).
    pub head: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Lines read.
    pub lines: u64,
    /// Lines before the first chained record that carry no chain (written before the chain
    /// existed): counted, not checked.
    pub unchained: u64,
    /// Each node's chain.
    pub nodes: BTreeMap<String, NodeChain>,
    /// The first break, if any (checking stops there).
    pub first_break: Option<Break>,
}

impl Report {
    /// True when no break was found.
    pub fn intact(&self) -> bool {
        self.first_break.is_none()
    }
}

struct Last {
    seq: u64,
    hash: String,
    at: String,
}

/// Checks the chain over `lines`, oldest first, and stops at the first break. Empty lines
/// are skipped. The first record of each node is accepted as it is (it may link to a file
/// rotated away); from then on every record must be the next seq and link to the hash of the
/// one before.
pub fn verify<'a>(lines: impl IntoIterator<Item = Line<'a>>) -> Report {
    let mut report = Report {
        lines: 0,
        unchained: 0,
        nodes: BTreeMap::new(),
        first_break: None,
    };
    let mut last: BTreeMap<String, Last> = BTreeMap::new();
    for line in lines {
        if line.text.is_empty() {
            continue;
        }
        report.lines += 1;
        let broken = |node: &str, seq: Option<u64>, problem: Problem| Break {
            file: line.file.to_string(),
            line: line.number,
            node: node.to_string(),
            seq,
            problem,
        };
        let link = match Link::parse(line.text) {
            Ok(link) => link,
            Err(LinkError::Unchained) if last.is_empty() => {
                report.unchained += 1;
                continue;
            }
            Err(e) => {
                report.first_break =
                    Some(broken("", None, Problem::NotARecord { why: e.to_string() }));
                return report;
            }
        };
        let hash = line_hash(line.text);
        let at = format!("{}:{}", line.file, line.number);
        match last.get(&link.node) {
            None => {
                report.nodes.insert(
                    link.node.clone(),
                    NodeChain {
                        records: 1,
                        first_seq: link.seq,
                        last_seq: link.seq,
                        from_genesis: link.prev == GENESIS,
                        anchor: link.prev.clone(),
                        head: hash.clone(),
                    },
                );
            }
            Some(before) => {
                let problem = if link.seq == 1 && link.prev == GENESIS {
                    Some(Problem::Restarted { after: before.seq })
                } else if link.seq != before.seq + 1 {
                    Some(Problem::Seq {
                        expected: before.seq + 1,
                        found: link.seq,
                    })
                } else if link.prev != before.hash {
                    Some(Problem::Prev {
                        before: before.at.clone(),
                        expected: before.hash.clone(),
                        found: link.prev.clone(),
                    })
                } else {
                    None
                };
                if let Some(problem) = problem {
                    report.first_break = Some(broken(&link.node, Some(link.seq), problem));
                    return report;
                }
                if let Some(chain) = report.nodes.get_mut(&link.node) {
                    chain.records += 1;
                    chain.last_seq = link.seq;
                    chain.head = hash.clone();
                }
            }
        }
        last.insert(
            link.node,
            Last {
                seq: link.seq,
                hash,
                at,
            },
        );
    }
    report
}

/// What `zester audit tail` shows: records matching every filter given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `--peel ID`: records about that peel.
    pub peel: Option<String>,
    /// `--code CODE`: records with that reason code.
    pub code: Option<String>,
    /// `--since DUR`, resolved to an RFC 3339 time: records at or after it (the log's times
    /// are RFC 3339 UTC of one width, so they compare as text).
    pub since: Option<String>,
}

impl Filter {
    /// True when `record` passes every filter.
    pub fn matches(&self, record: &Value) -> bool {
        let field = |name: &str| record[name].as_str().unwrap_or_default();
        self.peel.as_deref().is_none_or(|p| field("peel_id") == p)
            && self.code.as_deref().is_none_or(|c| field("code") == c)
            && self
                .since
                .as_deref()
                .is_none_or(|since| field("time") >= since)
    }
}

/// One record as a line for people: time, source, decision, code, who, from where, why.
/// Client-chosen strings are quoted with escapes, so a record cannot fake a line.
pub fn render(record: &Value) -> String {
    let field = |name: &str| record[name].as_str().unwrap_or_default();
    let mut line = format!(
        "{} {:<8} {:<6}",
        field("time"),
        field("source"),
        field("decision")
    );
    if !field("code").is_empty() {
        line.push_str(&format!(" {}", field("code")));
    }
    for (label, name) in [
        ("peel", "peel_id"),
        ("role", "role"),
        ("admin", "admin"),
        ("ip", "client_ip"),
    ] {
        if !field(name).is_empty() {
            line.push_str(&format!(" {label}={:?}", field(name)));
        }
    }
    if !field("connection_name").is_empty() {
        line.push_str(&format!(" name={:?}", field("connection_name")));
    }
    if !field("reason").is_empty() {
        line.push_str(&format!(" — {:?}", field("reason")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` records of `node` as written, from `head`.
    fn chain(node: &str, n: u64, mut head: ChainHead) -> Vec<String> {
        (0..n)
            .map(|i| {
                let line = serde_json::json!({
                    "node": node,
                    "seq": head.seq,
                    "prev": head.prev,
                    "code": format!("c{i}"),
                })
                .to_string();
                head = ChainHead::after(&line).unwrap();
                line
            })
            .collect()
    }

    fn check(lines: &[String]) -> Report {
        verify(lines.iter().enumerate().map(|(i, text)| Line {
            file: "audit.log",
            number: i + 1,
            text,
        }))
    }

    #[test]
    fn an_intact_chain_verifies() {
        let lines = chain("zester", 5, ChainHead::genesis());
        let report = check(&lines);
        assert!(report.intact(), "{:?}", report.first_break);
        let node = &report.nodes["zester"];
        assert_eq!((node.first_seq, node.last_seq, node.records), (1, 5, 5));
        assert!(node.from_genesis);
        assert_eq!(node.head, line_hash(&lines[4]));
        assert_eq!(ChainHead::after(&lines[4]).unwrap().seq, 6);
    }

    #[test]
    fn a_flipped_byte_breaks_at_that_line_or_the_next() {
        let mut lines = chain("zester", 5, ChainHead::genesis());
        // A changed value keeps the JSON valid: the next record no longer links to it.
        lines[2] = lines[2].replace("\"c2\"", "\"c9\"");
        let found = check(&lines).first_break.unwrap();
        assert_eq!((found.line, found.seq), (4, Some(4)));
        assert!(
            matches!(found.problem, Problem::Prev { ref before, .. } if before == "audit.log:3")
        );
        assert!(found
            .to_string()
            .starts_with("audit.log:4: record 4 of node zester"));
        // A changed byte that breaks the JSON is named at its own line.
        let mut lines = chain("zester", 5, ChainHead::genesis());
        lines[1] = lines[1].replacen('{', "[", 1);
        let found = check(&lines).first_break.unwrap();
        assert_eq!(found.line, 2);
        assert!(matches!(found.problem, Problem::NotARecord { .. }));
    }

    #[test]
    fn a_deleted_line_and_a_reordered_pair_break_the_chain() {
        let mut lines = chain("zester", 5, ChainHead::genesis());
        lines.remove(2);
        let found = check(&lines).first_break.unwrap();
        assert_eq!(found.line, 3);
        assert_eq!(
            found.problem,
            Problem::Seq {
                expected: 3,
                found: 4
            }
        );
        let mut lines = chain("zester", 5, ChainHead::genesis());
        lines.swap(1, 2);
        let found = check(&lines).first_break.unwrap();
        assert_eq!((found.line, found.seq), (2, Some(3)));
        // The last line removed cannot be seen from the lines alone: the head says where the
        // chain ended, to compare with the stream.
        let lines = chain("zester", 5, ChainHead::genesis());
        assert!(check(&lines[..4]).intact());
    }

    #[test]
    fn the_first_kept_record_may_link_to_a_rotated_file() {
        let lines = chain("zester", 6, ChainHead::genesis());
        let report = check(&lines[3..]);
        assert!(report.intact());
        let node = &report.nodes["zester"];
        assert!(!node.from_genesis);
        assert_eq!(node.first_seq, 4);
        assert_eq!(node.anchor, line_hash(&lines[2]));
    }

    #[test]
    fn nodes_chain_separately_and_old_unchained_lines_are_counted() {
        let a = chain("a", 3, ChainHead::genesis());
        let b = chain("b", 3, ChainHead::genesis());
        let mut lines = vec![r#"{"code":"old"}"#.to_string()];
        for i in 0..3 {
            lines.push(a[i].clone());
            lines.push(b[i].clone());
        }
        let report = check(&lines);
        assert!(report.intact(), "{:?}", report.first_break);
        assert_eq!(report.unchained, 1);
        assert_eq!(report.nodes.len(), 2);
        // An unchained line once the chain began is a break.
        lines.push(r#"{"code":"forged"}"#.to_string());
        assert_eq!(check(&lines).first_break.unwrap().line, 8);
        // A second genesis of the same node too.
        let mut again = chain("a", 2, ChainHead::genesis());
        again.extend(chain("a", 1, ChainHead::genesis()));
        assert_eq!(
            check(&again).first_break.unwrap().problem,
            Problem::Restarted { after: 2 }
        );
    }

    #[test]
    fn the_writer_goes_on_after_the_last_chained_line() {
        let lines = chain("zester", 3, ChainHead::genesis());
        let mut read: Vec<&str> = lines.iter().map(String::as_str).collect();
        read.push("{\"node\":\"zester\",\"se");
        let head = ChainHead::continuing(read.into_iter());
        assert_eq!(head, ChainHead::after(&lines[2]).unwrap());
        assert_eq!(ChainHead::continuing([].into_iter()), ChainHead::genesis());
        assert_eq!(
            ChainHead::continuing([r#"{"code":"old"}"#].into_iter()),
            ChainHead::genesis()
        );
    }

    #[test]
    fn filters_and_text() {
        let record = serde_json::json!({
            "time": "2026-12-01T10:00:00Z", "source": "callout", "decision": "refuse",
            "code": "key_unknown", "peel_id": "web-01", "client_ip": "10.0.0.1",
            "connection_name": "evil\nline", "reason": "no such key",
        });
        let all = Filter::default();
        assert!(all.matches(&record));
        let peel = Filter {
            peel: Some("web-01".into()),
            ..Filter::default()
        };
        assert!(peel.matches(&record));
        let other = Filter {
            peel: Some("web-02".into()),
            ..Filter::default()
        };
        assert!(!other.matches(&record));
        let code = Filter {
            code: Some("key_unknown".into()),
            since: Some("2026-12-01T09:59:59Z".into()),
            ..Filter::default()
        };
        assert!(code.matches(&record));
        let later = Filter {
            since: Some("2026-12-01T10:00:01Z".into()),
            ..Filter::default()
        };
        assert!(!later.matches(&record));
        let text = render(&record);
        assert!(text.starts_with("2026-12-01T10:00:00Z callout  refuse key_unknown"));
        assert!(text.contains("name=\"evil\\nline\""), "{text}");
        assert!(!text.contains('\n'));
    }
}
