//! `Creds::parse` on arbitrary text (a `.creds` file is read from disk or handed over by a
//! person). Never a panic; and whatever parses must be the fixture peel's creds — its JWT
//! cannot be forged by mutating the seeds — and must survive a round trip through `to_text`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zester::identity::creds::Creds;
use zester_fuzz::world;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Creds::parse(&text) {
        Ok(creds) => {
            let w = world();
            assert_eq!(
                creds.jwt().token(),
                w.user_jwt,
                "creds with a forged JWT parsed"
            );
            assert_eq!(creds.key().public_key(), creds.jwt().subject());
            let again = Creds::parse(&creds.to_text()).expect("to_text parses back");
            assert_eq!(again.jwt().token(), creds.jwt().token());
            assert_eq!(again.key().public_key(), creds.key().public_key());
        }
        // Errors are printed to people: rendering one must not panic either.
        Err(e) => drop(e.to_string()),
    }
});
