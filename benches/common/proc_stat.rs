//! CPU time of a process or thread from `/proc`, for the bench binaries that run processes
//! side by side (`connect`, `load`). Linux only: elsewhere every reading is 0.

use std::path::Path;

/// utime + stime of a `/proc/.../stat` file, in seconds (0 when unreadable).
pub fn cpu_seconds(path: &Path) -> f64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name is in parentheses and may hold spaces; fields count from after it,
    // where field 3 (state) comes first, so utime (14) and stime (15) are at 11 and 12.
    let Some(rest) = text.rfind(')').map(|at| &text[at + 1..]) else {
        return 0.0;
    };
    let fields: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    fields.iter().sum::<f64>() / (ticks.max(1) as f64)
}
