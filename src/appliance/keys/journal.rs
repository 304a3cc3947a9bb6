//! Importing the offline journal (`home::journal`) into the key store: every entry, oldest
//! first, deleted once the store holds it; entries that cannot be applied are moved aside.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::store::{CreateOutcome, KeyStore, KeyStoreError};
use crate::home::journal::{io_error, move_aside};
pub use crate::home::journal::{pending_entries, record, JournalError, RejectedEntry};
use crate::home::Home;
use crate::identity::peel_id::PeelId;
use crate::wire::record::KeyRecord;

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The journal's files.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The store failed while an entry was applied; that entry and the ones after it stay in
    /// the journal for the next import.
    #[error("key journal: importing {} stopped: {source}; the remaining entries stay for the next import", file.display())]
    Store {
        /// The entry being applied.
        file: PathBuf,
        /// The store's error.
        source: KeyStoreError,
    },
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Records written to the store, in journal order.
    pub imported: Vec<PeelId>,
    /// Records the store already held (the same key, accepted).
    pub already_present: Vec<PeelId>,
    /// Entries moved to `rejected/`.
    pub rejected: Vec<RejectedEntry>,
}

/// Applies every journal entry of `home` to `store`, oldest first, deleting each once the
/// store holds it. Damaged entries and entries whose id belongs to another key are moved to
/// `rejected/` (with a warning in the log and a line in the report); a store failure stops the
/// import and leaves the remaining entries for next time.
pub async fn import(home: &Home, store: &KeyStore) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    for file in pending_entries(home)? {
        let bytes = match fs::read(&file) {
            Ok(bytes) => bytes,
            // Imported and deleted by someone else in the meantime.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(io_error("read", &file)(error).into()),
        };
        let record = match KeyRecord::from_json(&bytes, &file.display().to_string()) {
            Ok(record) => record,
            Err(error) => {
                report
                    .rejected
                    .push(move_aside(home, &file, error.to_string())?);
                continue;
            }
        };
        match store.create_or_same(&record).await {
            Ok(outcome) => {
                fs::remove_file(&file).map_err(io_error("remove imported entry", &file))?;
                match outcome {
                    CreateOutcome::Created(revision) => {
                        tracing::info!(id = %record.id, revision, file = %file.display(), "imported a journalled key record");
                        report.imported.push(record.id);
                    }
                    CreateOutcome::AlreadyPresent(_) => report.already_present.push(record.id),
                }
            }
            Err(error @ KeyStoreError::AlreadyExists { .. }) => {
                report
                    .rejected
                    .push(move_aside(home, &file, error.to_string())?);
            }
            Err(source) => return Err(ImportError::Store { file, source }),
        }
    }
    Ok(report)
}
