//! The peel: the agent that runs on every managed host and does what the master asks.
//!
//! `agent` owns the connection (creds re-read on every reconnect, TLS, the peel's inbox prefix,
//! unlimited reconnects with jitter) and serves commands on `zester.cmd.<id>`; `facts` gathers
//! what the peel tells the master about its host on every (re)connect; `profile` is the public
//! `<id>.json` beside the creds that says how to reach and trust the master. The `zester peel run`
//! command calls [`run`]; tests and embedders use [`Agent`] directly.

pub mod agent;
pub mod enrol;
pub mod facts;
pub mod profile;
pub mod rotate;
pub mod settings;

pub use agent::{run, Agent, AgentError, AgentOptions};
pub use profile::PeelProfile;
