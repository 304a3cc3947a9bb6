//! `zester admin add|list|remove`: per-person admin identities.
//!
//! `add` runs where the home is (it signs the creds with the ZESTER signing key): a fresh user
//! key with the admin role and the person's name, written 0600 to `<home>/admins/NAME.creds`
//! (or `--out`). With an appliance running the key is registered through the admin API, so the
//! callout trusts it the moment the command returns and the appliance records who added it;
//! with none, it goes into `<home>/auth/admins.json`, which `zester up` loads before anything
//! connects (see `home::admins` for why a file). `list` and `remove` go through the appliance
//! when one answers; `remove` there revokes the key in the account JWT and kicks its sessions.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::cli::client::{admin_connect_to, admin_request, AdminTarget, StatusError};
use crate::cli::output::Output;
use crate::home::admins::AdminList;
use crate::home::{self, Home, HomeError};
use crate::identity::admin_name::{AdminName, AdminNameError};
use crate::identity::time::rfc3339;
use crate::permissions::Role;
use crate::wire::admin::{
    AdminAddRequest, AdminEntry, AdminRemoveRequest, ADMINS_ADD, ADMINS_LIST, ADMINS_REMOVE,
};
use crate::wire::record::fingerprint;

/// Who `admin add` records when no appliance runs: whoever holds the home's files.
pub const OFFLINE_BY: &str = "home";

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminsError {
    /// A bad name.
    #[error(transparent)]
    Name(#[from] AdminNameError),
    /// A home or file problem.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The appliance could not be asked, or refused.
    #[error("the running appliance: {0}")]
    Appliance(#[from] StatusError),
    /// The creds file exists.
    #[error("{} already exists: pass --force to replace it", path.display())]
    CredsExist {
        /// The file.
        path: PathBuf,
    },
    /// An admin of that name exists (offline).
    #[error("admin {name} exists already: pass --force to replace its key")]
    Exists {
        /// The name.
        name: String,
    },
    /// No admin of that name (offline).
    #[error("no named admin {name} (see `zester admin list`)")]
    NoSuchAdmin {
        /// The name.
        name: String,
    },
    /// Issuing failed.
    #[error("could not issue the admin's creds: {0}")]
    Issue(#[from] crate::authority::AuthorityError),
    /// Registered, but the creds file could not be written.
    #[error("admin {name} is registered, but {source}; run `zester admin remove {name}` and add it again")]
    RegisteredNotWritten {
        /// The name.
        name: String,
        /// Why.
        source: HomeError,
    },
}

/// Whether to go through an appliance: one was named, or one runs on this home.
fn through_appliance(home: &Home, target: &AdminTarget) -> bool {
    target.server.is_some()
        || target.context.is_some()
        || crate::home::runtime::RuntimeInfo::live(home).is_some()
}

/// `zester admin add NAME [--out FILE] [--force]`.
pub async fn add(
    home: &Home,
    target: &AdminTarget,
    name: &str,
    out: Option<&Path>,
    force: bool,
    now: i64,
) -> Result<Output, AdminsError> {
    let name = AdminName::parse(name)?;
    let path = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| home.admin_creds(name.as_str()));
    if path.exists() && !force {
        return Err(AdminsError::CredsExist { path });
    }
    let authority = home.load_authority()?;
    let creds = authority.issue_creds(
        nkeys::KeyPair::new_user(),
        name.as_str(),
        &Role::Admin(Some(name.clone())),
        now,
        0,
    )?;
    let nkey = creds.key().public_key();
    let (registered, added_by) = if through_appliance(home, target) {
        let client = admin_connect_to(home, target).await?;
        let answer = admin_request(
            &client,
            ADMINS_ADD,
            &AdminAddRequest {
                name: name.to_string(),
                nkey: nkey.clone(),
                force,
            },
        )
        .await?;
        write_admin_creds(home, &path, &creds).map_err(|source| {
            AdminsError::RegisteredNotWritten {
                name: name.to_string(),
                source,
            }
        })?;
        let by = answer["added_by"].as_str().unwrap_or("?").to_string();
        ("appliance", by)
    } else {
        let mut list = AdminList::read(home)?;
        if list.get(&name).is_some() && !force {
            return Err(AdminsError::Exists {
                name: name.to_string(),
            });
        }
        write_admin_creds(home, &path, &creds)?;
        list.put(AdminEntry {
            name: name.clone(),
            nkey: nkey.clone(),
            added_at: now,
            added_by: OFFLINE_BY.to_string(),
        });
        list.write(home)?;
        ("home", OFFLINE_BY.to_string())
    };
    let how = if registered == "appliance" {
        "registered with the running appliance: trusted now".to_string()
    } else {
        format!(
            "recorded in {}: the next `zester up` trusts it",
            home.admins_file().display()
        )
    };
    Ok(Output {
        human: format!(
            "Added admin {name}\n  file         {}\n  user         {nkey}\n  fingerprint  {}\n  added by     {added_by}\n  key          {how}\nuse it: zester --creds {} --server URL --ca ca.pem key list\n",
            path.display(),
            fingerprint(&nkey),
            path.display(),
        ),
        json: json!({
            "name": name,
            "file": path,
            "user_key": nkey,
            "fingerprint": fingerprint(&nkey),
            "added_by": added_by,
            "registered": registered,
        }),
        exit_code: 0,
    })
}

/// Writes the creds 0600; the default directory `<home>/admins/` is made 0700.
fn write_admin_creds(
    home: &Home,
    path: &Path,
    creds: &crate::identity::creds::Creds,
) -> Result<(), HomeError> {
    if path.parent() == Some(home.admins_dir().as_path()) {
        home::create_private_dir(&home.admins_dir())?;
    }
    home::write_creds(path, creds)
}

/// `zester admin list`.
pub async fn list(home: &Home, target: &AdminTarget) -> Result<Output, AdminsError> {
    let admins: Vec<AdminEntry> = if through_appliance(home, target) {
        let client = admin_connect_to(home, target).await?;
        let answer = admin_request(&client, ADMINS_LIST, &json!({})).await?;
        serde_json::from_value(answer).map_err(StatusError::Malformed)?
    } else {
        AdminList::read(home)?.admins
    };
    let mut human = format!(
        "{:<20} {:<48} {:<20} {}\n",
        "NAME", "FINGERPRINT", "ADDED", "BY"
    );
    let mut rows = Vec::new();
    for admin in &admins {
        human.push_str(&format!(
            "{:<20} {:<48} {:<20} {}\n",
            admin.name,
            fingerprint(&admin.nkey),
            rfc3339(admin.added_at),
            admin.added_by
        ));
        rows.push(json!({
            "name": admin.name,
            "nkey": admin.nkey,
            "fingerprint": fingerprint(&admin.nkey),
            "added_at": admin.added_at,
            "added_by": admin.added_by,
        }));
    }
    human.push_str(&format!("{} named admin(s)\n", admins.len()));
    Ok(Output {
        human,
        json: Value::Array(rows),
        exit_code: 0,
    })
}

/// `zester admin remove NAME`.
pub async fn remove(home: &Home, target: &AdminTarget, name: &str) -> Result<Output, AdminsError> {
    let name = AdminName::parse(name)?;
    if through_appliance(home, target) {
        let client = admin_connect_to(home, target).await?;
        let answer = admin_request(
            &client,
            ADMINS_REMOVE,
            &AdminRemoveRequest {
                name: name.to_string(),
            },
        )
        .await?;
        return Ok(Output {
            human: format!(
                "Removed admin {name}: key revoked, {} live session(s) cut off\n",
                answer["kicked"]
            ),
            json: answer,
            exit_code: 0,
        });
    }
    let mut list = AdminList::read(home)?;
    let removed = list.remove(&name).ok_or_else(|| AdminsError::NoSuchAdmin {
        name: name.to_string(),
    })?;
    list.write(home)?;
    Ok(Output {
        human: format!(
            "Removed admin {name} from {}: the next `zester up` refuses its key\n",
            home.admins_file().display()
        ),
        json: json!({ "name": name, "kicked": 0, "revoked": Value::Null, "nkey": removed.nkey }),
        exit_code: 0,
    })
}
