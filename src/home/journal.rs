//! The offline registration journal: key records written to disk while no appliance runs.
//!
//! `zester creds issue` works without a running appliance, yet the key it signs must end up in
//! the key store, or the callout would not know it. So it appends the record to
//! `<home>/keys/journal/` (one JSON file per record, written atomically, 0600 in a 0700
//! directory), and the appliance imports the journal into the store when it comes up
//! (`appliance::keys::journal::import`); this module is the files, that one the import.
//!
//! File names are `<unix-nanos, 20 digits>-<peel id>.json`, so sorting names replays the entries
//! in the order they were made. Import is idempotent and crash-safe: an entry is deleted only
//! after the store holds it, and importing a record the store already holds counts as done. An
//! entry that cannot be applied (damaged, or the id already belongs to another key) is moved to
//! `rejected/` with a warning, never silently dropped and never a reason to stop the appliance.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Home, HomeError, SECRET_MODE};
use crate::home;
use crate::wire::record::KeyRecord;

/// What went wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A journal file or directory could not be read, written or moved.
    #[error("key journal: could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing an entry (or making its directory) failed.
    #[error("key journal: {0}")]
    Home(#[from] HomeError),
    /// The record to journal is invalid.
    #[error("key journal: {0}")]
    Record(#[from] crate::wire::record::KeyError),
}

/// Maps an I/O error on `path` to [`JournalError::Io`].
pub fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io {
        action,
        path,
        source,
    }
}

/// One journal entry that was moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedEntry {
    /// Where the entry is now (under `rejected/`).
    pub file: PathBuf,
    /// Why it was not imported.
    pub reason: String,
}

/// Appends `record` to the journal of `home` and returns the file written.
pub fn record(home: &Home, record: &KeyRecord) -> Result<PathBuf, JournalError> {
    record.validate()?;
    let dir = home.keys_journal_dir();
    home::create_private_dir(&dir)?;
    let mut nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    // Two entries within one nanosecond (or a clock step back onto an older name) must not
    // replace each other: take the next free name.
    let path = loop {
        let path = dir.join(format!("{nanos:020}-{}.json", record.id));
        if !path.exists() {
            break path;
        }
        nanos += 1;
    };
    home::write_atomic(&path, &record.to_json(), SECRET_MODE)?;
    Ok(path)
}

/// The entries waiting in the journal of `home`, oldest first.
pub fn pending_entries(home: &Home) -> Result<Vec<PathBuf>, JournalError> {
    let dir = home.keys_journal_dir();
    let listing = match fs::read_dir(&dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error("list", &dir)(error)),
    };
    let mut entries = Vec::new();
    for item in listing {
        let item = item.map_err(io_error("list", &dir))?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        // Skips `rejected/` and the temp files of writes in progress (`.name.pid.random.tmp`).
        let is_file = item.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && !name.starts_with('.') && name.ends_with(".json") {
            entries.push(item.path());
        }
    }
    entries.sort();
    Ok(entries)
}

/// Moves a journal entry that cannot be imported to `rejected/`, saying why in the log.
pub fn move_aside(home: &Home, file: &Path, reason: String) -> Result<RejectedEntry, JournalError> {
    let dir = home.keys_journal_rejected_dir();
    home::create_private_dir(&dir)?;
    let name = file.file_name().map(PathBuf::from).unwrap_or_default();
    let target = dir.join(name);
    fs::rename(file, &target).map_err(io_error("move aside", file))?;
    tracing::warn!(
        file = %target.display(),
        %reason,
        "a key journal entry could not be imported and was moved aside"
    );
    Ok(RejectedEntry {
        file: target,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::peel_id::PeelId;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn entries_are_private_ordered_and_never_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let nkey = nkeys::KeyPair::new_user().public_key();
        let record =
            KeyRecord::new_accepted(PeelId::parse("web").unwrap(), &nkey, "t", "", 1).unwrap();
        let first = super::record(&home, &record).unwrap();
        let second = super::record(&home, &record).unwrap();
        assert_ne!(first, second);
        assert_eq!(mode(&first), 0o600);
        assert_eq!(mode(&home.keys_journal_dir()), 0o700);
        assert!(first
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("-web.json"));
        assert_eq!(pending_entries(&home).unwrap(), vec![first.clone(), second]);
        assert_eq!(
            KeyRecord::from_json(&fs::read(&first).unwrap(), "x").unwrap(),
            record
        );
        // Stray files are not entries.
        fs::write(home.keys_journal_dir().join(".x.json.1.tmp"), "half").unwrap();
        fs::write(home.keys_journal_dir().join("notes.txt"), "hi").unwrap();
        assert_eq!(pending_entries(&home).unwrap().len(), 2);
    }

    #[test]
    fn an_absent_journal_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(pending_entries(&Home::at(dir.path())).unwrap().is_empty());
    }
}
