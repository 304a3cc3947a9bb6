//! zester's own users' creds in the home (`auth/{master,admin,callout,sys}.creds`) over time:
//! which are due for re-issue ([`crate::wire::renew::own_creds_due`]), re-issuing them for the
//! same key with the configured lifetime (`[service] expiry`), written atomically (0600), and
//! when the next one is due. `zester up` calls these at start and while it runs.

use crate::authority::Authority;
use crate::home::{owned_key, read_creds, write_creds, Home, HomeError};
use crate::wire::renew::{own_creds_due, renew_at};

/// zester's own users whose creds live in the home.
pub const OWN_USERS: [&str; 4] = ["master", "admin", "callout", "sys"];

/// One re-issued creds file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewedOwnCreds {
    /// `master`, `admin`, `callout` or `sys`.
    pub name: &'static str,
    /// The new JWT's `exp` (0 = never).
    pub expires_at: i64,
}

impl Home {
    /// Re-issues, each for its own key, those of zester's own creds that are due at `now` with
    /// a lifetime of `expiry` seconds (0 = never); returns what it re-issued.
    pub fn renew_own_creds(
        &self,
        authority: &Authority,
        expiry: i64,
        now: i64,
    ) -> Result<Vec<RenewedOwnCreds>, HomeError> {
        let mut renewed = Vec::new();
        for name in OWN_USERS {
            let path = self.service_creds(name);
            let creds = read_creds(&path)?;
            let claims = creds.jwt().claims();
            if !own_creds_due(claims.iat, claims.exp, expiry, now) {
                continue;
            }
            let key = owned_key(&path, &creds)?;
            let Some(fresh) = authority.renew_own_user(name, key, now, expiry) else {
                continue;
            };
            let fresh = fresh.map_err(|source| HomeError::Authority {
                dir: self.auth_dir(),
                source: Box::new(source),
            })?;
            let expires_at = fresh.jwt().claims().exp;
            write_creds(&path, &fresh)?;
            renewed.push(RenewedOwnCreds { name, expires_at });
        }
        Ok(renewed)
    }

    /// When the next of zester's own creds is due (`None`: none expires; a file that cannot
    /// be read counts as due now, so that the renewal reports it).
    pub fn next_own_creds_renewal(&self, now: i64) -> Option<i64> {
        OWN_USERS
            .iter()
            .filter_map(|name| match read_creds(&self.service_creds(name)) {
                Ok(creds) => renew_at(creds.jwt().claims().iat, creds.jwt().claims().exp, 0.0),
                Err(_) => Some(now),
            })
            .min()
    }

    /// The `iat` and `exp` of each of zester's own creds (`exp` 0 = never), for `status`;
    /// unreadable files are left out.
    pub fn own_creds_expiry(&self) -> Vec<(&'static str, i64, i64)> {
        OWN_USERS
            .iter()
            .filter_map(|name| {
                read_creds(&self.service_creds(name)).ok().map(|creds| {
                    let claims = creds.jwt().claims();
                    (*name, claims.iat, claims.exp)
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::now_unix;

    #[test]
    fn own_creds_get_a_lifetime_and_keep_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        home.init(false, "localhost", now_unix()).unwrap();
        let authority = home.load_authority().unwrap();
        let now = now_unix();
        let keys_before: Vec<String> = OWN_USERS
            .iter()
            .map(|n| {
                read_creds(&home.service_creds(n))
                    .unwrap()
                    .key()
                    .public_key()
            })
            .collect();
        assert_eq!(home.next_own_creds_renewal(now), None, "init: none expires");
        let renewed = home.renew_own_creds(&authority, 90, now).unwrap();
        assert_eq!(renewed.len(), 4, "{renewed:?}");
        assert!(renewed.iter().all(|r| r.expires_at == now + 90));
        for (name, key) in OWN_USERS.iter().zip(&keys_before) {
            let path = home.service_creds(name);
            let creds = read_creds(&path).unwrap();
            assert_eq!(&creds.key().public_key(), key, "{name} keeps its key");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{name} stays private");
        }
        assert_eq!(home.next_own_creds_renewal(now), Some(now + 60));
        assert!(home
            .renew_own_creds(&authority, 90, now + 59)
            .unwrap()
            .is_empty());
        assert_eq!(
            home.renew_own_creds(&authority, 90, now + 60)
                .unwrap()
                .len(),
            4
        );
        // The sys user still chains to the SYS account, the others to ZESTER.
        let sys = read_creds(&home.service_creds("sys")).unwrap();
        assert_eq!(sys.jwt().claims().name, "sys");
        assert_eq!(
            sys.jwt().claims().nats.issuer_account,
            authority.sys.public_key()
        );
    }
}
