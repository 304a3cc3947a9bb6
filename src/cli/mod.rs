//! The admin's terminal: the bodies of the CLI commands (`commands`), nats CLI contexts
//! (`context`) and `zester cmd` (`cmd`). `main.rs` parses arguments and calls these.

pub mod cmd;
pub mod commands;
pub mod context;
