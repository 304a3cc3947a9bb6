//! `Config::parse` on arbitrary TOML text (`zester.toml` is edited by hand). Never a panic;
//! a configuration that parses is valid throughout — every accessor that re-reads a value
//! (durations, accept policy, addresses) agrees with the parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zester::home::config::{check_address, Config};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text) {
        Ok(config) => {
            config.peel_expiry().expect("checked by parse");
            config.session_ttl().expect("checked by parse");
            config.accept_policy().expect("checked by parse");
            check_address("server.listen", &config.server.listen).expect("checked by parse");
            check_address("server.monitor", &config.server.monitor).expect("checked by parse");
        }
        Err(e) => drop(e.to_string()),
    }
});
