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

impl AdminList {
    /// Reads the list (empty when the file does not exist yet).
    pub fn read(home: &Home) -> Result<AdminList, HomeError> {
        let path = home.admins_file();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AdminList::default()),
            Err(source) => {
                return Err(HomeError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&text).map_err(|source| HomeError::Document { path, source })
    }

    /// Writes the list atomically (0600).
    pub fn write(&self, home: &Home) -> Result<(), HomeError> {
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        home::write_atomic(&home.admins_file(), &text, SECRET_MODE)
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
        std::fs::write(home.admins_file(), b"{\"admins\":[{\"name\":\"sys\"}]}").unwrap();
        assert!(matches!(
            AdminList::read(&home),
            Err(HomeError::Document { .. })
        ));
    }
}
