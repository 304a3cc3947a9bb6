//! Everything about the bundled nats-server child: finding and checking the binary
//! (`binary`), rendering its configuration (`config`) and supervising it (`supervisor`).

pub mod binary;
pub mod config;
pub mod supervisor;
