//! The NATS JWT decoders on arbitrary text: `decode_any` (tools handed "some JWT") and the
//! typed `decode` of the two kinds that arrive over the network (user JWTs in CONNECT,
//! authorization requests). Never a panic; and the only tokens that may verify are the seeds
//! themselves — a valid token mutated in any way (a flipped bit, a changed claim, a re-encoded
//! part, a swapped signature) must be refused, as tests/fuzz_parsers.rs checks on a budget.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zester::identity::claims::{AuthRequestNats, UserNats};
use zester::identity::jwt::{self, AnyJwt};
use zester_fuzz::{world, NOW};

fn must_be_a_seed(token: &str) {
    assert!(
        world().tokens.iter().any(|seed| seed == token),
        "a token that is not one of the seeds verified: {token:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match jwt::decode_any(&text) {
        Ok(any) => {
            let token = match &any {
                AnyJwt::Operator(t) => t.token(),
                AnyJwt::Account(t) => t.token(),
                AnyJwt::User(t) => t.token(),
                AnyJwt::AuthRequest(t) => t.token(),
                AnyJwt::AuthResponse(t) => t.token(),
            };
            assert_eq!(token, text);
            must_be_a_seed(&text);
        }
        Err(e) => drop(e.to_string()),
    }
    match jwt::decode::<UserNats>(&text, NOW) {
        Ok(user) => must_be_a_seed(user.token()),
        Err(e) => drop(e.to_string()),
    }
    match jwt::decode::<AuthRequestNats>(&text, NOW) {
        Ok(request) => must_be_a_seed(request.token()),
        Err(e) => drop(e.to_string()),
    }
});
