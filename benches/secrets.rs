//! Benchmarks of secret envelopes (`zester::secrets`): seal and open, 64 B and 4 KiB.
//!
//! A plain bench binary like `benches/identity.rs`: each case is warmed up, then timed in 30
//! samples sized to ~20 ms each; the median and best µs/op are printed. Every call derives the
//! box key afresh (one X25519), as the CLI does for each envelope.
//! Run with `cargo bench --bench secrets` (optimised build).

use std::hint::black_box;
mod common;

use common::{measure, report, SAMPLES};

use nkeys::XKey;
use zester::secrets;

fn main() {
    let master = XKey::new();
    let peel = XKey::new();
    let master_public = master.public_key();
    let peel_public = peel.public_key();
    println!("zester secrets, {SAMPLES} samples per case");
    for (label, size) in [("64 B", 64usize), ("4 KiB", 4096)] {
        let plaintext = vec![0x5Au8; size];
        let envelope = secrets::seal(&plaintext, &master, &peel_public).expect("seal");
        report(
            &format!("seal {label} (envelope text)"),
            measure(|| {
                black_box(
                    secrets::seal(black_box(&plaintext), &master, &peel_public).expect("seal"),
                );
            }),
        );
        report(
            &format!("open {label} (parse + check + open)"),
            measure(|| {
                black_box(
                    secrets::open(black_box(&envelope), &peel, &master_public).expect("open"),
                );
            }),
        );
    }
}
