//! The named admins this home trusts: `<home>/auth/admins.json`.
//!
//! Why a file in `auth/` and not a KV bucket: the list is trust material like the creds and the
//! account JWT beside it, and `zester up` needs it before anything connects — the callout's
//! trust (who is an admin) is built from the home before the store connection has signed in
//! through that same callout, and the callout decides from memory only. A file is also what
//! `zester admin add` can write with no appliance running, the way `creds rotate admin` does.
//! One writer at a time: the running appliance (through the admin API), or the CLI when none
//! runs. `init --force` moves it aside with the rest of `auth/`, since a new operator makes
//! every admin's creds worthless anyway. Written atomically, 0600 (it names keys, no seeds).
//!
//! In a running appliance the list is one for the whole cluster: the KV bucket `zester-admins`
//! holds it and this file is the node's local copy, rewritten from the bucket
//! (`appliance::admins`). Beside it, `admins.synced.json` keeps the list as the node last had
//! it in common with the bucket, so that a change the CLI made here with no appliance running
//! ([`AdminList::changes_since`] that copy) is carried into the cluster's list at the next start
//! instead of being taken for a list that is merely behind.

use serde::{Deserialize, Serialize};

use super::{Home, HomeError, SECRET_MODE};
use crate::home;
use crate::identity::admin_name::AdminName;
use crate::wire::admin::AdminEntry;

/// The file's document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminList {
    /// The named admins, in the order they were added.
    pub admins: Vec<AdminEntry>,
}

/// One change a list went through: what [`AdminList::changes_since`] finds and
/// [`AdminList::apply`] makes again on another list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminChange {
    /// The entry was added, or its name given another key or history.
    Put(AdminEntry),
    /// The admin of that name was removed.
    Remove(AdminName),
}

impl AdminList {
    /// Reads the list (empty when the file does not exist yet).
    pub fn read(home: &Home) -> Result<AdminList, HomeError> {
        Ok(read_at(home.admins_file())?.unwrap_or_default())
    }

    /// Writes the list atomically (0600).
    pub fn write(&self, home: &Home) -> Result<(), HomeError> {
        home::write_atomic(&home.admins_file(), &self.to_json(), SECRET_MODE)
    }

    /// The list as this node last had it in common with the cluster's (`None` before the first
    /// time).
    pub fn read_synced(home: &Home) -> Result<Option<AdminList>, HomeError> {
        read_at(home.admins_synced_file())
    }

    /// Records this list as the one this node has in common with the cluster's (0600).
    pub fn write_synced(&self, home: &Home) -> Result<(), HomeError> {
        home::write_atomic(&home.admins_synced_file(), &self.to_json(), SECRET_MODE)
    }

    /// The document, pretty-printed, as the file and the bucket hold it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        text
    }

    /// What was changed in this list since it was `base`: entries added or changed, names
    /// removed (in this list's order, then `base`'s).
    pub fn changes_since(&self, base: &AdminList) -> Vec<AdminChange> {
        let mut changes: Vec<AdminChange> = self
            .admins
            .iter()
            .filter(|entry| base.get(&entry.name) != Some(*entry))
            .cloned()
            .map(AdminChange::Put)
            .collect();
        changes.extend(
            base.admins
                .iter()
                .filter(|entry| self.get(&entry.name).is_none())
                .map(|entry| AdminChange::Remove(entry.name.clone())),
        );
        changes
    }

    /// Makes `changes` on this list.
    pub fn apply(&mut self, changes: &[AdminChange]) {
        for change in changes {
            match change {
                AdminChange::Put(entry) => {
                    self.put(entry.clone());
                }
                AdminChange::Remove(name) => {
                    self.remove(name);
                }
            }
        }
    }

    /// The entry named `name`.
    pub fn get(&self, name: &AdminName) -> Option<&AdminEntry> {
        self.admins.iter().find(|a| &a.name == name)
    }

    /// Adds `entry`, replacing an entry of the same name; returns the one replaced.
    pub fn put(&mut self, entry: AdminEntry) -> Option<AdminEntry> {
        let old = self.remove(&entry.name);
        self.admins.push(entry);
        old
    }

    /// Removes the entry named `name`; returns it.
    pub fn remove(&mut self, name: &AdminName) -> Option<AdminEntry> {
        let at = self.admins.iter().position(|a| &a.name == name)?;
        Some(self.admins.remove(at))
    }
}

/// The list in the file at `path`, `None` when there is no file.
fn read_at(path: std::path::PathBuf) -> Result<Option<AdminList>, HomeError> {
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(HomeError::Io {
                action: "read",
                path,
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| HomeError::Document { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_round_trips_and_a_missing_file_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        home::create_private_dir(&home.auth_dir()).unwrap();
        assert_eq!(AdminList::read(&home).unwrap(), AdminList::default());
        let alice = AdminName::parse("alice").unwrap();
        let mut list = AdminList::default();
        let entry = |nkey: &str| AdminEntry {
            name: alice.clone(),
            nkey: nkey.into(),
            added_at: 1,
            added_by: "admin".into(),
        };
        assert!(list.put(entry("UA")).is_none());
        assert_eq!(list.put(entry("UB")).unwrap().nkey, "UA");
        list.write(&home).unwrap();
        let read = AdminList::read(&home).unwrap();
        assert_eq!(read.get(&alice).unwrap().nkey, "UB");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.admins_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(AdminList::read_synced(&home).unwrap(), None);
        read.write_synced(&home).unwrap();
        assert_eq!(AdminList::read_synced(&home).unwrap(), Some(read));
        std::fs::write(home.admins_file(), b"{\"admins\":[{\"name\":\"sys\"}]}").unwrap();
        assert!(matches!(
            AdminList::read(&home),
            Err(HomeError::Document { .. })
        ));
    }

    #[test]
    fn offline_changes_are_found_and_made_again_on_a_newer_list() {
        let entry = |name: &str, nkey: &str| AdminEntry {
            name: AdminName::parse(name).unwrap(),
            nkey: nkey.into(),
            added_at: 1,
            added_by: "home".into(),
        };
        let list = |entries: Vec<AdminEntry>| AdminList { admins: entries };
        let base = list(vec![entry("alice", "UA"), entry("bob", "UB")]);
        // Offline: carol added, bob removed, alice's key replaced (`--force`).
        let local = list(vec![entry("alice", "UA2"), entry("carol", "UC")]);
        let changes = local.changes_since(&base);
        assert_eq!(
            changes,
            vec![
                AdminChange::Put(entry("alice", "UA2")),
                AdminChange::Put(entry("carol", "UC")),
                AdminChange::Remove(AdminName::parse("bob").unwrap()),
            ]
        );
        assert!(base.changes_since(&base).is_empty());
        // The cluster added dave meanwhile: he stays, the offline changes are made too.
        let mut cluster = list(vec![
            entry("alice", "UA"),
            entry("bob", "UB"),
            entry("dave", "UD"),
        ]);
        cluster.apply(&changes);
        let mut names: Vec<(String, String)> = cluster
            .admins
            .iter()
            .map(|a| (a.name.to_string(), a.nkey.clone()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [("alice", "UA2"), ("carol", "UC"), ("dave", "UD")]
                .map(|(n, k)| (n.to_string(), k.to_string()))
        );
    }
}
