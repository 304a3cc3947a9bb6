//! The secrets envelope, `ENC[<recipient xkey>,<base64>]`, on arbitrary input: `parse`, `open`
//! on the peel, `rewrap` on the master, and `open_payload` on the raw bytes (the form secrets
//! travel in inside peel settings). Never a panic; an envelope has one text form; only the
//! seed envelope and payload open, to exactly the sealed secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zester::secrets;
use zester_fuzz::{world, SECRET};

fuzz_target!(|data: &[u8]| {
    let w = world();
    let text = String::from_utf8_lossy(data);
    let master = w.master_xkey.public_key();
    let peel = w.peel_xkey.public_key();
    match secrets::parse(&text) {
        Ok(envelope) => {
            assert_eq!(
                envelope.to_text(),
                text.trim(),
                "two texts for one envelope"
            );
            assert_eq!(secrets::parse(&envelope.to_text()).as_ref(), Ok(&envelope));
        }
        Err(e) => drop(e.to_string()),
    }
    match secrets::open(&text, &w.peel_xkey, &master) {
        Ok(plain) => {
            assert_eq!(
                text.trim(),
                w.envelope,
                "an envelope that is not the seed opened"
            );
            assert_eq!(plain, SECRET);
        }
        Err(e) => drop(e.to_string()),
    }
    match secrets::rewrap(&text, &w.master_xkey, &peel) {
        Ok(rewrapped) => {
            assert_eq!(
                text.trim(),
                w.envelope,
                "the master rewrapped a forged envelope"
            );
            assert_eq!(
                secrets::open(&rewrapped, &w.peel_xkey, &master).as_deref(),
                Ok(SECRET)
            );
        }
        Err(e) => drop(e.to_string()),
    }
    match secrets::open_payload(data, &w.peel_xkey, &master) {
        Ok(plain) => {
            assert_eq!(
                data,
                &w.payload[..],
                "a payload that is not the seed opened"
            );
            assert_eq!(plain, SECRET);
        }
        Err(e) => drop(e.to_string()),
    }
});
