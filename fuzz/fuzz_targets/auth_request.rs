//! The callout's first two steps on whatever arrives on `$SYS.REQ.USER.AUTH`:
//! `protocol::open_request` on the payload as a sealed request (through the server's
//! `Channel`) and as a plain one. Never a panic; a mutated sealed request never opens, and a
//! mutated plain request never verifies (only whitespace around the seed token is tolerated,
//! as `open_request` trims it). Driven like `authorization_requests_survive_garbage_and_mutations`
//! in tests/fuzz_parsers.rs, without its iteration budget.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zester::appliance::callout::protocol;
use zester_fuzz::{world, NOW};

fuzz_target!(|data: &[u8]| {
    let w = world();
    match protocol::open_request(data, None, &w.account, NOW) {
        Ok(request) => assert_eq!(
            request.token(),
            w.request_jwt,
            "a plain request that is not the seed verified"
        ),
        Err(e) => drop(e.to_string()),
    }
    match protocol::open_request(data, Some(&w.channel), &w.account, NOW) {
        Ok(_) => assert_eq!(
            data,
            &w.sealed_request[..],
            "a sealed request that is not the seed opened"
        ),
        Err(e) => drop(e.to_string()),
    }
});
