//! What both ends of a conversation share, pure: the subjects (`subjects`) and the rule for
//! where a service may send its answer (`reply`); the signed requests of enrolment, rotation
//! and renewal (`enrol`, `rotate`, `renew`); join tokens (`token`); a node joining a cluster (`node`); the admin API's requests (`admin`); the audit trail's hash chain and filters (`audit`); the key record (`record`)
//! and the peel's profile (`profile`); the timeouts both sides must agree on. No I/O here: the
//! appliance, the peel and the CLI build on it.

pub mod admin;
pub mod admin_auth;
pub mod audit;
pub mod enrol;
pub mod expiry;
pub mod node;
pub mod profile;
pub mod record;
pub mod renew;
pub mod reply;
pub mod rotate;
pub mod subjects;
pub mod token;

/// Seconds from accepting a client to letting it in, the callout's answer included
/// (nats-server's default with TLS is the TLS timeout + 1). nats-server handles callout answers
/// under its server-wide lock, queued behind every other connection in progress: under a storm
/// answers zester gave in milliseconds arrive after a 3 s limit, the client is refused and tries
/// again, and that load keeps the queue long. Measured with 10,000 peels (issue 7): back in
/// 66 s with 10 s, 119 s with the defaults. A peel's own connect timeout must be longer.
///
/// Both sides read it (the appliance renders it, the peel waits longer), so it lives here.
pub const AUTH_TIMEOUT_SECS: u32 = 10;
