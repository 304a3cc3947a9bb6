//! What a CLI command produces: the text for people, the `--json` document for scripts, and
//! the exit code, so that `main` only prints and every command can be tested without a
//! terminal. Nothing secret ever goes into an `Output`.

use serde_json::Value;

/// What a command prints, both ways, and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Text for people.
    pub human: String,
    /// The `--json` document.
    pub json: Value,
    /// Process exit code (0 = success).
    pub exit_code: i32,
}

/// A span of seconds for people: "45 s", "12 min", "5 h", "3 d".
pub fn span(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spans_read_naturally() {
        assert_eq!(super::span(45), "45 s");
        assert_eq!(super::span(600), "10 min");
        assert_eq!(super::span(5 * 3600), "5 h");
        assert_eq!(super::span(3 * 86_400 + 5), "3 d");
    }
}
