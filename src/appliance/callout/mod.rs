//! The in-process NATS auth-callout service (DESIGN §5).
//!
//! `protocol` opens requests and seals answers, `decide` is the pure decision, `admission` the
//! pure admission step around it (rate, filing, audit fields), `readmit` decides again on a
//! live connection nats-server asks about a second time (after a reload), `service` wires
//! them to a NATS subscription, `sessions` remembers who is connected where (for kicks) and
//! counts decisions, `announce` is what a node tells the others of a cluster about each
//! admission (so every node's table holds them all), `audit` writes one line per decision.

pub mod admission;
pub mod announce;
pub mod audit;
pub mod decide;
pub mod protocol;
pub mod readmit;
pub mod service;
pub mod sessions;
