//! The in-process NATS auth-callout service (DESIGN §5).
//!
//! `protocol` opens requests and seals answers, `decide` is the pure decision, `service` wires
//! them to a NATS subscription, `sessions` remembers who is connected where (for kicks) and
//! counts decisions, `audit` writes one line per decision.

pub mod audit;
pub mod decide;
pub mod protocol;
pub mod service;
pub mod sessions;
