//! Every node follows the cluster's ZESTER account JWT (DESIGN §9), through nats-server's full
//! resolver rather than beside it.
//!
//! Each node keeps a copy of the account JWT (`auth/zester.jwt`, and the callout's
//! [`Trust::account`]), and any node may re-sign it (a revocation, answered by whichever node's
//! admin service the queue group picked). A copy that falls behind decides with stale
//! revocations, and worse, a revocation signed from it would drop the revocations made
//! elsewhere. So:
//! - before re-signing, a node asks every server's resolver for its copy
//!   (`$SYS.REQ.ACCOUNT.<acc>.CLAIMS.LOOKUP`: each server answers, without a queue group, with
//!   the JWT it holds or an empty message) and starts from the [`merged`] claims: the newest
//!   claims, the revocations of all (the later time per key), the highest `iat`;
//! - it follows the updates the servers take (`$SYS.REQ.ACCOUNT.<acc>.CLAIMS.UPDATE`,
//!   `$SYS.ACCOUNT.<acc>.CLAIMS.UPDATE`, `$SYS.REQ.CLAIMS.UPDATE`: every server subscribes to
//!   them without a queue group, so every push reaches every server and every node), as a pure
//!   listener: it never replies there, the servers do;
//! - at start it looks up the resolvers' copies once (a node that was down meanwhile).
//!
//! Only system-account users may publish on those subjects (zester's own system connections and
//! the servers), and only a holder of the operator's signing key can sign an account JWT. Still,
//! whatever is heard is verified ([`verify`]): ours, signed by one of our operator's signing
//! keys, with the callout section zester runs with and zester's signing key; an older `iat`
//! is never taken; and revocations that would cut off zester itself ([`harmful_revocations`])
//! are taken out and the repaired JWT pushed. nats-server's update handler itself does not
//! compare `iat` (only its periodic sync does), so a node never pushes anything older than what
//! it knows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use crate::appliance::admin::{AdminError, AdminService};
use crate::appliance::callout::decide::Trust;
use crate::home::{self, now_unix};
use crate::identity::chain::{self, ChainError};
use crate::identity::claims::{AccountNats, Claims};
use crate::identity::jwt::{self, AccountJwt, JwtError};
use crate::permissions::Role;

/// How long a lookup waits for the first server's answer, and for all of them.
const LOOKUP_WITHIN: Duration = Duration::from_secs(2);
/// Once one server answered, how long a lookup waits for another before it stops listening.
const LOOKUP_QUIET: Duration = Duration::from_millis(250);
/// How long a push waits for a server to answer.
const PUSH_WITHIN: Duration = Duration::from_secs(5);

/// Why an account JWT that was heard or looked up is not taken.
#[derive(Debug, thiserror::Error)]
pub enum Unfit {
    /// Not a valid account JWT (format, signature, times).
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// Another account's JWT.
    #[error("the JWT is for account {found}, not for ZESTER ({expected})")]
    OtherAccount {
        /// Ours.
        expected: String,
        /// What the JWT is for.
        found: String,
    },
    /// Not signed by our operator.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// Signed by the operator's identity key, which zester never signs accounts with.
    #[error("the JWT is signed by {issuer}, not by one of the operator's signing keys")]
    NotBySigningKey {
        /// Who signed it.
        issuer: String,
    },
    /// Its auth-callout section is not the one this node's callout runs with.
    #[error("its auth-callout section differs from the one zester runs with")]
    CalloutSection,
    /// It no longer lists the key zester signs its users with.
    #[error("it does not list zester's signing key {key}")]
    SigningKeyMissing {
        /// The key.
        key: String,
    },
}

/// Verifies `token` as a ZESTER account JWT this node may follow: signature and times at
/// `now`, for the account of `trust`, signed by one of `trust`'s operator's signing keys, with
/// the same auth-callout section as the current one, still listing `signer` (zester's signing
/// key).
pub fn verify(token: &str, trust: &Trust, signer: &str, now: i64) -> Result<AccountJwt, Unfit> {
    let account: AccountJwt = jwt::decode(token.trim(), now)?;
    let expected = trust.account.subject();
    if account.subject() != expected {
        return Err(Unfit::OtherAccount {
            expected: expected.to_string(),
            found: account.subject().to_string(),
        });
    }
    chain::verify_account(&trust.operator, &account, now)?;
    if account.issuer() == trust.operator.subject() {
        return Err(Unfit::NotBySigningKey {
            issuer: account.issuer().to_string(),
        });
    }
    if account.claims().nats.authorization != trust.account.claims().nats.authorization {
        return Err(Unfit::CalloutSection);
    }
    if !account.claims().nats.has_signing_key(signer) {
        return Err(Unfit::SigningKeyMissing {
            key: signer.to_string(),
        });
    }
    Ok(account)
}

/// The revocations in `nats` that would cut off zester itself: `*` (everyone), the callout's
/// keys, and the keys `is_own_user` names (zester's own users).
pub fn harmful_revocations(nats: &AccountNats, is_own_user: impl Fn(&str) -> bool) -> Vec<String> {
    let callout_keys = &nats.authorization.auth_users;
    nats.revocations
        .keys()
        .filter(|key| key.as_str() == "*" || is_own_user(key) || callout_keys.contains(key))
        .cloned()
        .collect()
}

/// Whether `key` is one of zester's own users in `trust` that may never be revoked: any but a
/// named admin's (`zester admin remove` revokes those, see `admin::check_revocable`).
pub fn is_unrevocable_own_user(trust: &Trust, key: &str) -> bool {
    trust
        .service_role(key)
        .is_some_and(|role| !matches!(role, Role::Admin(Some(_))))
}

/// The claims to re-sign from, knowing `current` and `other`: the newer one's claims (`other`'s
/// when as new), the revocations of both (the later time per key) less the harmful ones, the
/// higher `iat` (the caller raises it).
pub fn merged(
    current: &AccountJwt,
    other: Option<&AccountJwt>,
    is_own_user: impl Fn(&str) -> bool,
) -> Claims<AccountNats> {
    let Some(other) = other else {
        let mut claims = current.claims().clone();
        for key in harmful_revocations(&claims.nats, &is_own_user) {
            claims.nats.revocations.remove(&key);
        }
        return claims;
    };
    let (base, rest) = if other.claims().iat >= current.claims().iat {
        (other, current)
    } else {
        (current, other)
    };
    let mut claims = base.claims().clone();
    claims.nats.revocations = union(
        &base.claims().nats.revocations,
        &rest.claims().nats.revocations,
    );
    for key in harmful_revocations(&claims.nats, &is_own_user) {
        claims.nats.revocations.remove(&key);
    }
    claims
}

fn union(a: &BTreeMap<String, i64>, b: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let mut all = a.clone();
    for (key, &at) in b {
        all.entry(key.clone())
            .and_modify(|t| *t = (*t).max(at))
            .or_insert(at);
    }
    all
}

/// What a node does about a verified account JWT it heard of, given the one it holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing: it is the one held, or adds nothing to it.
    Keep,
    /// Take it as it is.
    Adopt(AccountJwt),
    /// Sign these claims (the union, repaired), push them and take them: the servers hold a JWT
    /// that lacks revocations this node knows of, or revokes zester itself.
    Sign(Claims<AccountNats>),
}

/// Decides what to do about `heard` knowing `current` (see [`merged`]), at `now`.
pub fn converge(
    current: &AccountJwt,
    heard: &AccountJwt,
    is_own_user: impl Fn(&str) -> bool,
    now: i64,
) -> Step {
    if heard.token() == current.token() {
        return Step::Keep;
    }
    let mut target = merged(current, Some(heard), is_own_user);
    let (newer, older) = if heard.claims().iat >= current.claims().iat {
        (heard, current)
    } else {
        (current, heard)
    };
    if target.nats.revocations == newer.claims().nats.revocations {
        let adds = newer.claims().iat > older.claims().iat
            || newer.claims().nats.revocations != older.claims().nats.revocations;
        return match std::ptr::eq(newer, heard) && adds {
            true => Step::Adopt(heard.clone()),
            false => Step::Keep,
        };
    }
    target.iat = now.max(target.iat + 1);
    Step::Sign(target)
}

/// Asks every server's resolver for its copy of `account`; the JWTs they hold (empty answers,
/// "none here", are left out). With `one_server`, stops at the first answer.
pub async fn lookup(
    sys: &async_nats::Client,
    account: &str,
    one_server: bool,
) -> Result<Vec<String>, async_nats::Error> {
    let inbox = sys.new_inbox();
    let mut answers = sys.subscribe(inbox.clone()).await?;
    sys.publish_with_reply(
        format!("$SYS.REQ.ACCOUNT.{account}.CLAIMS.LOOKUP"),
        inbox,
        Default::default(),
    )
    .await?;
    let deadline = Instant::now() + LOOKUP_WITHIN;
    let mut found = Vec::new();
    let mut answered = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = if answered {
            left.min(LOOKUP_QUIET)
        } else {
            left
        };
        match tokio::time::timeout(wait, answers.next()).await {
            Ok(Some(message)) => {
                answered = true;
                if let Ok(text) = std::str::from_utf8(&message.payload) {
                    if !text.trim().is_empty() {
                        found.push(text.trim().to_string());
                    }
                }
                if one_server {
                    break;
                }
            }
            _ => break,
        }
    }
    let _ = answers.unsubscribe().await;
    Ok(found)
}

/// The newest of the servers' copies that verifies (see [`verify`]), if any; what does not
/// verify is logged at debug level and left out.
pub async fn newest(admin: &AdminService, trust: &Trust, now: i64) -> Option<AccountJwt> {
    let account = trust.account.subject().to_string();
    let tokens = match lookup(&admin.sys, &account, admin.nodes.is_none()).await {
        Ok(tokens) => tokens,
        Err(e) => {
            tracing::warn!(error = %e, "looking up the servers' copies of the ZESTER account JWT");
            return None;
        }
    };
    let signer = admin.authority.zester_signer.public_key();
    tokens
        .iter()
        .filter_map(|token| match verify(token, trust, &signer, now) {
            Ok(jwt) => Some(jwt),
            Err(e) => {
                tracing::debug!(error = %e, "a server's copy of the ZESTER account JWT ignored");
                None
            }
        })
        .max_by_key(|jwt| jwt.claims().iat)
}

/// Pushes `account` to the resolvers (`$SYS.REQ.ACCOUNT.<acc>.CLAIMS.UPDATE`); every server
/// takes it, the first answer is checked.
pub async fn push(sys: &async_nats::Client, account: &AccountJwt) -> Result<(), AdminError> {
    let subject = format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", account.subject());
    let answer = tokio::time::timeout(
        PUSH_WITHIN,
        sys.request(subject, account.token().as_bytes().to_vec().into()),
    )
    .await
    .map_err(|_| AdminError::AccountNoAnswer { after: PUSH_WITHIN })??;
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
    if let Some(error) = answer.get("error") {
        return Err(AdminError::AccountRefused(error.to_string()));
    }
    Ok(())
}

/// Keeps `account` as this node's copy: `auth/zester.jwt` (atomically) and the callout's trust
/// (only its account: what else changed meanwhile stays).
pub fn keep(admin: &AdminService, account: AccountJwt) -> Result<(), AdminError> {
    home::write_atomic(
        &admin.home.zester_jwt_file(),
        format!("{}\n", account.token()).as_bytes(),
        home::PUBLIC_MODE,
    )?;
    admin.callout.set_account(account);
    Ok(())
}

/// Signs `claims` as the account JWT, pushes it and keeps it.
async fn sign_push_keep(
    admin: &AdminService,
    claims: Claims<AccountNats>,
) -> Result<AccountJwt, AdminError> {
    let account = admin.authority.sign_account(claims)?;
    push(&admin.sys, &account).await?;
    keep(admin, account.clone())?;
    Ok(account)
}

/// Where a JWT to converge with came from.
#[derive(Debug, Clone, Copy)]
enum Heard {
    /// Pushed on an update subject.
    Update,
    /// The servers' copy at start.
    Start,
}

/// Acts on `heard` (see [`converge`]) under the account lock.
async fn take(admin: &AdminService, heard: AccountJwt, how: Heard) -> Result<(), AdminError> {
    let _guard = admin.account_lock.lock().await;
    let trust = admin.callout.trust();
    let current = &trust.account;
    if matches!(how, Heard::Update) && heard.claims().iat < current.claims().iat {
        tracing::debug!(
            heard_iat = heard.claims().iat,
            held_iat = current.claims().iat,
            "an older ZESTER account JWT was pushed; not taken"
        );
        return Ok(());
    }
    let now = now_unix();
    match converge(current, &heard, |k| is_unrevocable_own_user(&trust, k), now) {
        Step::Keep => {}
        Step::Adopt(account) => {
            let (iat, revocations) = (
                account.claims().iat,
                account.claims().nats.revocations.len(),
            );
            keep(admin, account.clone())?;
            if matches!(how, Heard::Start) {
                // This node's server may have started with the older copy (its resolver syncs
                // with the others only every few minutes): give it the newest now.
                push(&admin.sys, &account).await?;
            }
            tracing::info!(
                ?how,
                iat,
                revocations,
                "took the cluster's newer ZESTER account JWT"
            );
        }
        Step::Sign(claims) => {
            let missing: Vec<&String> = current
                .claims()
                .nats
                .revocations
                .keys()
                .filter(|k| !heard.claims().nats.revocations.contains_key(*k))
                .collect();
            let harmful =
                harmful_revocations(&heard.claims().nats, |k| is_unrevocable_own_user(&trust, k));
            tracing::warn!(?how, ?missing, ?harmful, "the cluster's ZESTER account JWT lacked revocations this node holds, or revoked zester itself: merged, re-signed and pushed");
            sign_push_keep(admin, claims).await?;
        }
    }
    Ok(())
}

/// The subjects account updates reach the servers on, for `account`.
pub fn update_subjects(account: &str) -> [String; 3] {
    [
        format!("$SYS.REQ.ACCOUNT.{account}.CLAIMS.UPDATE"),
        format!("$SYS.ACCOUNT.{account}.CLAIMS.UPDATE"),
        "$SYS.REQ.CLAIMS.UPDATE".to_string(),
    ]
}

/// Starts following the cluster's ZESTER account JWT with `admin`'s system connection: listens
/// to the update subjects, then takes the servers' copy once (before the task is returned, so a
/// node that was down is current before it says ready).
pub async fn follow(
    admin: Arc<AdminService>,
) -> Result<tokio::task::JoinHandle<()>, async_nats::Error> {
    let account = admin.callout.trust().account.subject().to_string();
    let mut subscriptions = Vec::new();
    for subject in update_subjects(&account) {
        subscriptions.push(admin.sys.subscribe(subject).await?);
    }
    let mut updates = futures_util::stream::select_all(subscriptions);
    let trust = admin.callout.trust();
    if let Some(found) = newest(&admin, &trust, now_unix()).await {
        if let Err(e) = take(&admin, found, Heard::Start).await {
            tracing::warn!(error = %e, "taking the cluster's ZESTER account JWT at start");
        }
    }
    Ok(tokio::spawn(async move {
        while let Some(message) = updates.next().await {
            let Ok(token) = std::str::from_utf8(&message.payload) else {
                continue;
            };
            // `$SYS.REQ.CLAIMS.UPDATE` carries every account's updates.
            if jwt::unverified_subject(token.trim()).as_deref() != Some(account.as_str()) {
                continue;
            }
            let trust = admin.callout.trust();
            let signer = admin.authority.zester_signer.public_key();
            let heard = match verify(token, &trust, &signer, now_unix()) {
                Ok(heard) => heard,
                Err(e) => {
                    tracing::debug!(subject = %message.subject, error = %e, "an account JWT update that does not verify; ignored");
                    continue;
                }
            };
            if let Err(e) = take(&admin, heard, Heard::Update).await {
                tracing::warn!(error = %e, "following the cluster's ZESTER account JWT");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::Authority;
    use nkeys::KeyPair;

    const NOW: i64 = 1_700_000_000;

    fn trust(authority: &Authority) -> Trust {
        Trust {
            operator: authority.operator_jwt.clone(),
            account: authority.zester_jwt.clone(),
            sentinel: String::new(),
            services: Default::default(),
            peers: Default::default(),
        }
    }

    fn with(
        authority: &Authority,
        base: &AccountJwt,
        iat: i64,
        revoked: &[(&str, i64)],
    ) -> AccountJwt {
        let mut claims = base.claims().clone();
        claims.iat = iat;
        for (key, at) in revoked {
            claims.nats.revocations.insert(key.to_string(), *at);
        }
        authority.sign_account(claims).unwrap()
    }

    fn user() -> String {
        KeyPair::new_user().public_key()
    }

    fn authority() -> Authority {
        Authority::generate(NOW).unwrap().0
    }

    #[test]
    fn only_our_account_signed_by_our_operator_with_our_callout_section_verifies() {
        let a = authority();
        let t = trust(&a);
        let signer = a.zester_signer.public_key();
        let ours = with(&a, &a.zester_jwt, NOW + 1, &[]);
        assert!(verify(ours.token(), &t, &signer, NOW + 2).is_ok());

        let other = authority();
        let foreign = with(&other, &other.zester_jwt, NOW + 1, &[]);
        assert!(matches!(
            verify(foreign.token(), &t, &signer, NOW + 2),
            Err(Unfit::OtherAccount { .. })
        ));

        // Our account's claims, signed by another operator.
        let forged = other.sign_account(ours.claims().clone()).unwrap();
        assert!(matches!(
            verify(forged.token(), &t, &signer, NOW + 2),
            Err(Unfit::Chain(ChainError::AccountNotIssuedByOperator { .. }))
        ));

        let mut claims = ours.claims().clone();
        claims.nats.authorization = Default::default();
        let no_callout = a.sign_account(claims).unwrap();
        assert!(matches!(
            verify(no_callout.token(), &t, &signer, NOW + 2),
            Err(Unfit::CalloutSection)
        ));

        let mut claims = ours.claims().clone();
        claims.nats.signing_keys.clear();
        let no_signer = a.sign_account(claims).unwrap();
        assert!(matches!(
            verify(no_signer.token(), &t, &signer, NOW + 2),
            Err(Unfit::SigningKeyMissing { .. })
        ));

        assert!(matches!(
            verify("eyJ0eXAi.garbage.x", &t, &signer, NOW + 2),
            Err(Unfit::Jwt(_))
        ));
    }

    #[test]
    fn a_newer_jwt_that_holds_every_revocation_is_adopted() {
        let a = authority();
        let (p1, p2) = (user(), user());
        let current = with(&a, &a.zester_jwt, NOW + 1, &[(&p1, NOW + 1)]);
        let heard = with(&a, &current, NOW + 2, &[(&p2, NOW + 2)]);
        assert_eq!(
            converge(&current, &heard, |_| false, NOW + 3),
            Step::Adopt(heard.clone())
        );
        assert_eq!(converge(&heard, &heard, |_| false, NOW + 3), Step::Keep);
        // Ours is newer and holds all of it.
        assert_eq!(converge(&heard, &current, |_| false, NOW + 3), Step::Keep);
    }

    #[test]
    fn a_newer_jwt_that_drops_a_revocation_is_merged_and_signed_newer_still() {
        let a = authority();
        let (p1, p2) = (user(), user());
        let base = with(&a, &a.zester_jwt, NOW + 1, &[]);
        let current = with(&a, &base, NOW + 2, &[(&p1, NOW + 2)]);
        // Signed elsewhere from the older copy: it knows p2, not p1.
        let heard = with(&a, &base, NOW + 3, &[(&p2, NOW + 3)]);
        let Step::Sign(claims) = converge(&current, &heard, |_| false, NOW + 3) else {
            panic!("not signed");
        };
        assert_eq!(claims.iat, NOW + 4, "newer than both");
        assert_eq!(claims.nats.revocations.get(&p1), Some(&(NOW + 2)));
        assert_eq!(claims.nats.revocations.get(&p2), Some(&(NOW + 3)));
        // As new as ours, different: the union too.
        let sibling = with(&a, &base, NOW + 2, &[(&p2, NOW + 2)]);
        assert!(matches!(
            converge(&current, &sibling, |_| false, NOW + 3),
            Step::Sign(_)
        ));
    }

    #[test]
    fn merged_keeps_the_later_time_and_the_newer_claims() {
        let a = authority();
        let p1 = user();
        let older = with(&a, &a.zester_jwt, NOW + 1, &[(&p1, NOW + 5)]);
        let mut claims = older.claims().clone();
        claims.iat = NOW + 2;
        claims.nats.description = "newer".into();
        claims.nats.revocations.insert(p1.clone(), NOW + 1);
        let newer = a.sign_account(claims).unwrap();
        let m = merged(&older, Some(&newer), |_| false);
        assert_eq!(m.iat, NOW + 2);
        assert_eq!(m.nats.description, "newer");
        assert_eq!(m.nats.revocations.get(&p1), Some(&(NOW + 5)));
    }

    #[test]
    fn revocations_of_zester_itself_are_taken_out_and_the_repair_signed() {
        let a = authority();
        let own = user();
        let callout = a.zester_jwt.claims().nats.authorization.auth_users[0].clone();
        let current = with(&a, &a.zester_jwt, NOW + 1, &[]);
        let heard = with(
            &a,
            &current,
            NOW + 2,
            &[("*", NOW), (&own, NOW), (&callout, NOW)],
        );
        let Step::Sign(claims) = converge(&current, &heard, |k| k == own, NOW + 3) else {
            panic!("not repaired");
        };
        assert!(
            claims.nats.revocations.is_empty(),
            "{:?}",
            claims.nats.revocations
        );
        assert_eq!(
            harmful_revocations(&heard.claims().nats, |k| k == own).len(),
            3
        );
    }

    #[test]
    fn a_named_admins_key_may_be_revoked_zester_s_own_users_not() {
        let a = authority();
        let mut t = trust(&a);
        let (master, named) = (user(), user());
        t.services.insert(
            crate::identity::keys::UserKey::parse(&master).unwrap(),
            Role::Master,
        );
        t.services.insert(
            crate::identity::keys::UserKey::parse(&named).unwrap(),
            Role::Admin(Some(
                crate::identity::admin_name::AdminName::parse("ann").unwrap(),
            )),
        );
        assert!(is_unrevocable_own_user(&t, &master));
        assert!(!is_unrevocable_own_user(&t, &named));
        assert!(!is_unrevocable_own_user(&t, &user()));
    }
}
