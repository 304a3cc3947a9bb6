//! Peel keys: which nkey speaks for which peel id, and whether it is admitted (DESIGN §6).
//!
//! Split by concern, pure first:
//!
//! - `wire::record`: the key record, its states and allowed transitions, its JSON form (pure,
//!   shared with the CLI, which journals records, and the admin API).
//! - [`cache`]: the in-memory snapshot the callout decides from without ever awaiting.
//! - [`store`]: the JetStream KV bucket `zester-keys` (compare-and-set writes) and the watch
//!   task that keeps a cache current, across nats-server restarts.
//! - [`journal`]: records registered on disk while no appliance runs, imported at start.

pub mod cache;
pub mod journal;
pub mod store;

pub use crate::wire::record::{fingerprint, KeyError, KeyRecord, KeyState, StateChange};
pub use cache::{CacheError, KeyCache, KeyCounts, Snapshot};
pub use journal::{ImportError, ImportReport, JournalError, RejectedEntry};
pub use store::{CreateOutcome, KeyStore, KeyStoreError, BUCKET};
