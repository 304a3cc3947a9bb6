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
