//! The README's table of connections and their grants is what zester really issues: each row
//! is compared with the permissions in the JWTs zester signs for that connection (the callout's
//! session JWTs, and the creds of the callout and sys users in a fresh home). When the table
//! or the code changes, the other must follow.

use std::collections::BTreeSet;

use nkeys::KeyPair;
use zester::home::{now_unix, read_creds, Home};
use zester::identity::claims::{Permission, UserNats};
use zester::identity::peel_id::PeelId;
use zester::permissions::Role;
use zester::wire::subjects::BUCKETS;

/// One row of the table, placeholders filled in.
#[derive(Debug, PartialEq, Eq)]
struct Grants {
    publish_allow: BTreeSet<String>,
    publish_deny: BTreeSet<String>,
    subscribe_allow: BTreeSet<String>,
    replies: Option<u64>,
}

/// The subjects quoted in `cell`, with `<id>`, `<nkey>` and `<b>` filled in.
fn subjects(cell: &str, nkey: &str) -> BTreeSet<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|s| {
            let s = s.replace("<id>", "web-01").replace("<nkey>", nkey);
            if s.contains("<b>") {
                BUCKETS.iter().map(|b| s.replace("<b>", b)).collect()
            } else {
                vec![s]
            }
        })
        .collect()
}

fn row(cells: &[&str], nkey: &str) -> Grants {
    let (allow, deny) = cells[1].split_once("deny").unwrap_or((cells[1], ""));
    Grants {
        publish_allow: subjects(allow, nkey),
        publish_deny: subjects(deny, nkey),
        subscribe_allow: subjects(cells[2], nkey),
        replies: cells[3].trim().parse().ok(),
    }
}

fn issued(nats: &UserNats) -> Grants {
    let set = |p: &Permission, deny: bool| -> BTreeSet<String> {
        if deny { &p.deny } else { &p.allow }
            .iter()
            .cloned()
            .collect()
    };
    assert!(
        nats.subscribe.deny.is_empty(),
        "no subscribe denies are documented"
    );
    Grants {
        publish_allow: set(&nats.publish, false),
        publish_deny: set(&nats.publish, true),
        subscribe_allow: set(&nats.subscribe, false),
        replies: nats.resp.as_ref().map(|r| r.max as u64),
    }
}

#[test]
fn the_readme_lists_every_connections_grants_as_issued() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let table = readme
        .split("<!-- grants:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- grants:end -->").next())
        .expect("the README has the grants table between its markers");
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("home"));
    let now = now_unix();
    home.init(false, "localhost", now).expect("init");
    let authority = home.load_authority().unwrap();
    let nkey = KeyPair::new_user().public_key();
    let session = |role: Role| {
        let jwt = authority
            .issue_session(&KeyPair::new_user().public_key(), "x", &role, now, 0)
            .unwrap();
        issued(&jwt.claims().nats)
    };
    let from_creds = |name: &str| {
        let creds = read_creds(&home.service_creds(name)).unwrap();
        issued(&creds.jwt().claims().nats)
    };

    let mut seen = Vec::new();
    for line in table.lines().filter(|l| l.starts_with('|')).skip(2) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        assert_eq!(cells.len(), 4, "{line}");
        let label = cells[0].trim();
        let expected = match label.split_whitespace().next().unwrap_or_default() {
            "peel" => session(Role::Peel(PeelId::parse("web-01").unwrap())),
            "enrolling" => session(Role::Enrolling { nkey: nkey.clone() }),
            "master" => session(Role::Master),
            "admin" => session(Role::Admin(None)),
            "service" => session(Role::Service),
            "store" => session(Role::Store),
            "callout" => from_creds("callout"),
            "sys" => {
                let sys = from_creds("sys");
                assert_eq!(
                    sys,
                    Grants {
                        publish_allow: BTreeSet::new(),
                        publish_deny: BTreeSet::new(),
                        subscribe_allow: BTreeSet::new(),
                        replies: None
                    },
                    "sys is documented as unlimited"
                );
                seen.push("sys");
                continue;
            }
            other => panic!("the README lists an unknown connection {other:?}"),
        };
        assert_eq!(row(&cells, &nkey), expected, "README row {label:?}");
        seen.push(label.split_whitespace().next().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            "admin",
            "callout",
            "enrolling",
            "master",
            "peel",
            "service",
            "store",
            "sys"
        ],
        "every connection has exactly one row"
    );
}
