//! zester: the security core of a NATS fleet on one node.
//!
//! The library holds all logic so that the `zester` binary, the tests and the benchmarks call
//! the same code. It is one house with three sides and a shared core (../shared/LAYOUT.md;
//! `tests/layering.rs` keeps it so):
//!
//! - `cli`: the admin's terminal — the command bodies and the client of a running appliance;
//! - `appliance`: what runs inside `zester up` — the supervised nats-server, the auth callout,
//!   the key store, the services (admin API, enrolment, rotation, settings);
//! - `peel`: what runs on a managed host — the agent, its profile, the client half of
//!   enrolment, rotation and settings;
//! - the pure core, which does no I/O: `wire` (what both ends of a conversation share:
//!   subjects, the reply rule, signed requests, the key record), `identity` (nkeys roles, JWT
//!   codec, chains, creds, peel ids), `permissions`, `secrets`, `authority`, `pki`;
//! - the edges: `home` (every path in the home, atomic writes, init, `zester.toml`) and `net`
//!   (how zester's own clients connect, the pinned TLS verifier).
//!
//! The sides never import each other; the pure core imports no side, nor `home`, nor `net`.

pub mod appliance;
pub mod authority;
pub mod cli;
pub mod home;
pub mod identity;
pub mod net;
pub mod peel;
pub mod permissions;
pub mod pki;
pub mod secrets;
pub mod wire;
