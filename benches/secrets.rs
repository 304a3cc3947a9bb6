//! Benchmarks of secret envelopes (`zester::secrets`): seal and open, 64 B and 4 KiB.
//!
//! A plain bench binary like `benches/identity.rs`: each case is warmed up, then timed in 30
//! samples sized to ~20 ms each; the median and best µs/op are printed. Every call derives the
//! box key afresh (one X25519), as the CLI does for each envelope.
//! Run with `cargo bench --bench secrets` (optimised build).

use std::hint::black_box;
use std::time::{Duration, Instant};

use nkeys::XKey;
use zester::secrets;

const SAMPLES: usize = 30;
const SAMPLE_TARGET: Duration = Duration::from_millis(20);

/// Times `op`, returning (median, best) microseconds per call.
fn measure(mut op: impl FnMut()) -> (f64, f64) {
    let warm_until = Instant::now() + Duration::from_millis(300);
    let mut calls = 0u64;
    while Instant::now() < warm_until {
        op();
        calls += 1;
    }
    let per_sample = ((calls as f64 / 0.3) * SAMPLE_TARGET.as_secs_f64()).max(1.0) as u64;
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_sample {
                op();
            }
            start.elapsed().as_secs_f64() * 1e6 / per_sample as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    (samples[SAMPLES / 2], samples[0])
}

fn report(name: &str, (median, best): (f64, f64)) {
    println!("{name:<44} {median:>9.2} µs/op   (best {best:.2})");
}

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
