//! Benchmarks of the pure identity core: JWT sign, decode+verify, full chain verify, creds parse.
//!
//! A plain bench binary (no harness dependency, to keep the build lean): each case is warmed
//! up, then timed in 30 samples sized to ~20 ms each; the median and best µs/op are printed.
//! Run with `cargo bench --bench identity` (optimised build).

use std::hint::black_box;
mod common;

use common::{measure, report, SAMPLES};

use zester::authority::Authority;
use zester::identity::chain;
use zester::identity::claims::{AccountNats, OperatorNats, UserNats};
use zester::identity::creds::Creds;
use zester::identity::jwt::{self, AccountJwt, OperatorJwt};
use zester::identity::peel_id::PeelId;

const NOW: i64 = 1_800_000_000;
fn main() {
    let (authority, _) = Authority::generate(NOW).expect("generate authority");
    let id = PeelId::parse("web-01").expect("valid id");
    let creds = authority.issue_peel(&id, NOW, 180 * 86_400).expect("issue");
    let user_token = creds.jwt().token().to_string();
    let operator_token = authority.operator_jwt.token().to_string();
    let account_token = authority.zester_jwt.token().to_string();
    let creds_text = creds.to_text();
    let operator: OperatorJwt = authority.operator_jwt.clone();
    let account: AccountJwt = authority.zester_jwt.clone();
    let user_key = creds.key().public_key();

    println!("zester identity core, {} samples per case", SAMPLES);
    report(
        "sign peel user JWT (claims + ed25519)",
        measure(|| {
            black_box(
                authority
                    .issue_user(
                        &user_key,
                        "web-01",
                        &zester::permissions::Role::Peel(id.clone()),
                        NOW,
                        3600,
                    )
                    .expect("sign"),
            );
        }),
    );
    report(
        "decode + verify user JWT",
        measure(|| {
            black_box(jwt::decode::<UserNats>(black_box(&user_token), NOW).expect("decode"));
        }),
    );
    report(
        "chain verify (user decoded, account+op cached)",
        measure(|| {
            let user = jwt::decode::<UserNats>(black_box(&user_token), NOW).expect("decode");
            black_box(chain::verify_user(&operator, &account, &user, NOW).expect("chain"));
        }),
    );
    report(
        "full chain verify (decode all three JWTs)",
        measure(|| {
            let op = jwt::decode::<OperatorNats>(black_box(&operator_token), NOW).expect("op");
            let acc = jwt::decode::<AccountNats>(black_box(&account_token), NOW).expect("acc");
            let user = jwt::decode::<UserNats>(black_box(&user_token), NOW).expect("user");
            black_box(chain::verify_user(&op, &acc, &user, NOW).expect("chain"));
        }),
    );
    report(
        "parse .creds (decode JWT + seed match)",
        measure(|| {
            black_box(Creds::parse(black_box(&creds_text)).expect("parse"));
        }),
    );
}
