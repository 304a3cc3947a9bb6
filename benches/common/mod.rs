//! The timing harness shared by the plain bench binaries (no harness dependency): each case
//! is warmed up, then timed in [`SAMPLES`] samples sized to ~20 ms each.

use std::time::{Duration, Instant};

/// Samples per case.
pub const SAMPLES: usize = 30;
const SAMPLE_TARGET: Duration = Duration::from_millis(20);

/// Times `op`, returning (median, best) microseconds per call.
pub fn measure(mut op: impl FnMut()) -> (f64, f64) {
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

/// Prints one result line.
pub fn report(name: &str, (median, best): (f64, f64)) {
    println!("{name:<44} {median:>9.2} µs/op   (best {best:.2})");
}
