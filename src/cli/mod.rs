//! The admin's terminal: the bodies of the CLI commands (`commands`), named admins (`admins`),
//! the local audit trail (`audit`), nats CLI contexts (`context`), `zester cmd` (`cmd`), join
//! tokens (`token`), the cluster's nodes (`node`) and the client of a running appliance
//! (`client`). `main.rs` parses arguments and calls these.

pub mod admins;
pub mod audit;
pub mod client;
pub mod cmd;
pub mod commands;
pub mod context;
pub mod node;
pub mod output;
pub mod secret;
pub mod token;
