//! Compatibility with the official nats-io JavaScript implementation (`@nats-io/jwt`,
//! `@nats-io/nkeys`): fixtures it made (`testdata/compat`, by `scripts/compat/gen-fixtures.mjs`)
//! decode and verify here field by field, and what zester makes decodes and verifies there
//! (`scripts/compat/verify.mjs`, run with node).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use zester::authority::Authority;
use zester::home::now_unix;
use zester::identity::chain::{self, ChainError};
use zester::identity::claims::{AccountNats, OperatorNats, UserNats};
use zester::identity::creds::Creds;
use zester::identity::jwt::{self, AccountJwt, OperatorJwt, UserJwt};
use zester::identity::peel_id::PeelId;

fn fixture(name: &str) -> String {
    let path = common::repo_root().join("testdata/compat").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn manifest() -> Value {
    serde_json::from_str(&fixture("manifest.json")).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn jwt_js_fixtures_decode_and_chain_here() {
    let m = manifest();
    let keys = &m["keys"];
    let now = now_unix();
    let operator: OperatorJwt = jwt::decode(fixture("operator.jwt").trim(), now).unwrap();
    assert_eq!(operator.subject(), keys["operator"]);
    assert!(operator.claims().nats.strict_signing_key_usage);
    assert_eq!(
        operator.claims().nats.signing_keys,
        vec![keys["operator_signing_key"].as_str().unwrap()]
    );
    assert_eq!(operator.claims().nats.system_account, keys["sys"]);

    let sys: AccountJwt = jwt::decode(fixture("sys.jwt").trim(), now).unwrap();
    let zester: AccountJwt = jwt::decode(fixture("zester.jwt").trim(), now).unwrap();
    chain::verify_account(&operator, &sys, now).unwrap();
    chain::verify_account(&operator, &zester, now).unwrap();
    assert!(zester
        .claims()
        .nats
        .has_signing_key(keys["zester_signing_key"].as_str().unwrap()));
    assert_eq!(zester.claims().nats.limits.disk_storage, -1);
    let revocations: Value = serde_json::to_value(&zester.claims().nats.revocations).unwrap();
    assert_eq!(revocations, m["revocations"]);

    let creds = Creds::parse(&fixture("peel1.creds")).unwrap();
    assert_eq!(creds.key().public_key(), keys["peel1"]);
    let peel = creds.jwt().claims();
    let expected = &m["peel1"];
    assert_eq!(peel.nats.publish.allow, strings(&expected["pub_allow"]));
    assert_eq!(peel.nats.subscribe.allow, strings(&expected["sub_allow"]));
    assert_eq!(peel.nats.resp.map(|r| (r.max, r.ttl)), Some((1, 0)));
    assert_eq!(peel.nats.tags, strings(&expected["tags"]));
    assert_eq!(peel.exp, expected["exp"].as_i64().unwrap());
    assert_eq!(peel.nats.issuer_account, keys["zester"]);
    let verified = chain::verify_user(&operator, &zester, creds.jwt(), now).unwrap();
    assert_eq!(verified.user_signer(), keys["zester_signing_key"]);

    let bearer: UserJwt = jwt::decode(fixture("bearer.jwt").trim(), now).unwrap();
    assert!(bearer.claims().nats.bearer_token);

    // jwt.js lets the identity key sign; our strict operator does not accept it.
    let identity: UserJwt = jwt::decode(fixture("identity-signed.jwt").trim(), now).unwrap();
    assert!(matches!(
        chain::verify_user(&operator, &zester, &identity, now),
        Err(ChainError::IssuerNotSigningKey { .. })
    ));
    // Types are not interchangeable.
    assert!(jwt::decode::<OperatorNats>(fixture("zester.jwt").trim(), now).is_err());
    assert!(jwt::decode::<AccountNats>(fixture("peel1.jwt").trim(), now).is_err());
    assert!(jwt::decode::<UserNats>(fixture("peel1.jwt").trim(), now).is_ok());
}

/// Runs verify.mjs; returns (exit code, stdout JSON or Null, stderr).
fn node_verify(args: &[&Path], extra: &[&str], stdin: Option<&str>) -> (i32, Value, String) {
    let dir = common::node_compat_dir();
    let mut child = Command::new("node")
        .arg(dir.join("verify.mjs"))
        .args(args)
        .args(extra)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is needed for the compatibility test");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn zester_output_decodes_and_chains_in_jwt_js() {
    let now = now_unix();
    let dir = tempfile::tempdir().unwrap();
    let (authority, users) = Authority::generate(now).unwrap();
    let creds = authority
        .issue_peel(&PeelId::parse("web-01").unwrap(), now, 3600)
        .unwrap();
    let op = write(dir.path(), "operator.jwt", authority.operator_jwt.token());
    let acc = write(dir.path(), "zester.jwt", authority.zester_jwt.token());
    let peel = write(dir.path(), "web-01.creds", &creds.to_text());

    let chain_args = |creds: &Path| {
        node_verify(
            &[creds, Path::new("--chain"), &op, &acc],
            &["--creds-seed-matches"],
            None,
        )
    };
    let (code, claims, err) = chain_args(&peel);
    assert_eq!(code, 0, "jwt.js refused zester creds: {err}");
    assert_eq!(claims["sub"], creds.key().public_key());
    assert_eq!(claims["name"], "web-01");
    assert_eq!(
        claims["nats"]["issuer_account"],
        authority.zester.public_key()
    );
    assert_eq!(claims["nats"]["pub"]["allow"][0], "zester.event.web-01.>");
    assert_eq!(claims["nats"]["type"], "user");

    // Service creds and every account JWT decode there too.
    let master = write(dir.path(), "master.creds", &users.master.to_text());
    let (code, _, err) = chain_args(&master);
    assert_eq!(code, 0, "{err}");
    for token in [
        authority.operator_jwt.token(),
        authority.sys_jwt.token(),
        authority.zester_jwt.token(),
    ] {
        let (code, claims, err) = node_verify(&[], &[], Some(token));
        assert_eq!(code, 0, "{err}");
        assert_eq!(claims["iss"].as_str().map(|s| s.len()), Some(56));
    }

    // And what we consider broken, it does too.
    let mut tampered = creds.jwt().token().to_string();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (code, _, _) = node_verify(&[], &[], Some(&tampered));
    assert_eq!(code, 1, "jwt.js accepted a tampered signature");
    let foreign = Authority::generate(now).unwrap().0;
    let foreign_acc = write(dir.path(), "foreign.jwt", foreign.zester_jwt.token());
    let (code, _, _) = node_verify(&[&peel, Path::new("--chain"), &op, &foreign_acc], &[], None);
    assert_eq!(code, 1, "jwt.js chained our peel to a foreign account");
}
