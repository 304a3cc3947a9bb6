//! How zester's own clients connect: creds, TLS with the home's CA or a pinned one, names and
//! inbox prefixes (`connect`), and the verifier that trusts only a CA with a given pin (`tls`).

pub mod connect;
pub mod tls;
