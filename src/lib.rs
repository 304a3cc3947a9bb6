//! zester: the security core of a NATS fleet on one node.
//!
//! The library holds all logic so that the `zester` binary, the tests and the benchmarks call
//! the same code. `identity` and `permissions` are pure (no files, no network, no clock reads);
//! `home`, `pki` and `broker` are the edges that touch the disk and processes.

pub mod admin;
pub mod authority;
pub mod broker;
pub mod callout;
pub mod cmd;
pub mod commands;
pub mod config;
pub mod connect;
pub mod context;
pub mod enrol;
pub mod home;
pub mod identity;
pub mod keys;
pub mod peel;
pub mod permissions;
pub mod pki;
pub mod respond;
pub mod rotate;
pub mod secrets;
pub mod settings;
pub mod tls;
pub mod up;
pub mod wire;
