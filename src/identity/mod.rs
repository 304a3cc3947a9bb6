//! The pure identity core: nkeys roles, NATS JWT v2 claims, chain validation, `.creds` and
//! peel ids. Nothing here touches files, the network or the clock: callers pass `now`.

pub mod admin_name;
pub mod chain;
pub mod claims;
pub mod creds;
pub mod jwt;
pub mod keys;
pub mod peel_id;
pub mod time;
