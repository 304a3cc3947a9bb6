//! The peel: what runs on every managed host.
//!
//! - `agent`: the agent of `zester peel run` — owns the connection (creds re-read on every
//!   reconnect, TLS, the peel's inbox prefix, unlimited reconnects with jitter), answers
//!   commands on `zester.cmd.<id>`, waits for a server that is not up yet;
//! - `library`: [`Peel`], the same connection for an application that runs as a peel with its
//!   own code (see `examples/peel.rs`);
//! - `enrol`, `rotate`, `renew`, `settings`: the peel's halves of enrolment, key rotation,
//!   renewal of its identity JWT and settings;
//!   `ask`: the request-and-answer they share;
//! - `profile`: the public `<id>.json` beside the creds that says how to reach and trust the
//!   master; `facts`: what the peel tells the master about its host on every (re)connect.

pub mod agent;
pub mod ask;
pub mod enrol;
pub mod facts;
pub mod library;
pub mod profile;
pub mod renew;
pub mod rotate;
pub mod settings;

pub use agent::{run, Agent, AgentError, AgentOptions};
pub use library::Peel;
pub use profile::PeelProfile;
