//! How zester's own clients connect: creds, TLS with the home's CA or a pinned one, names and
//! inbox prefixes (`connect`), and the verifier that trusts only a CA with a given pin (`tls`);
//! and telling a service manager (systemd) that a process is ready (`notify`).

pub mod connect;
pub mod notify;
pub mod tls;
