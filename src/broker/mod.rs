//! Everything about the bundled nats-server child: finding the binary (and, later, rendering
//! its configuration and supervising it).

pub mod binary;
pub mod config;
pub mod supervisor;
