//! The auth-callout wire protocol (DESIGN §5), pure: open a request, build the signed answer.
//!
//! nats-server sends an `authorization_request` JWT it signed with its server key, sealed to the
//! ZESTER account's curve key when it sends the `Nats-Server-Xkey` header. The answer is an
//! `authorization_response` JWT for the per-connection `user_nkey`, addressed (`aud`) to the
//! server id, signed by the ZESTER signing key with `issuer_account`, and sealed back to the
//! server's curve key. Everything here is checked as if the request could come from anyone.

use crypto_box::aead::{Aead, AeadCore};
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use nkeys::XKey;

use crate::identity::claims::{AuthRequestNats, AuthResponseNats, Claims};
use crate::identity::jwt::{self, AuthRequestJwt, JwtError};
use crate::identity::keys::{self, KeyRole};

/// The header carrying the server's curve key.
pub const XKEY_HEADER: &str = "Nats-Server-Xkey";
/// The `aud` of every authorization request.
pub const REQUEST_AUDIENCE: &str = "nats-authorization-request";

/// Why a request could not be opened or an answer not built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The sealed payload does not open with our curve key.
    #[error("the request is sealed but does not open with the callout curve key (wrong xkey in the account JWT?)")]
    Unseal,
    /// The server's curve key is not a curve key.
    #[error("the {XKEY_HEADER} header does not hold a curve key")]
    BadServerXkey,
    /// The request JWT is invalid.
    #[error("request JWT: {0}")]
    Request(JwtError),
    /// Signed by another key than the server id it names.
    #[error("request signed by {issuer}, but it names server {server_id}")]
    NotFromServer {
        /// `iss`.
        issuer: String,
        /// `nats.server_id.id`.
        server_id: String,
    },
    /// Wrong `aud`.
    #[error("request audience is {found:?}, not {REQUEST_AUDIENCE:?}")]
    WrongAudience {
        /// The `aud` found.
        found: String,
    },
    /// A request for another account.
    #[error("request is for account {found}, not ZESTER ({expected})")]
    WrongAccount {
        /// `sub` found.
        found: String,
        /// Our account.
        expected: String,
    },
    /// `user_nkey` is not a user key.
    #[error("request user_nkey is not a user key")]
    BadUserNkey,
    /// Sealing the answer failed.
    #[error("could not seal the answer to the server's curve key")]
    Seal,
    /// Signing the answer failed.
    #[error("could not sign the answer: {0}")]
    Sign(#[from] crate::identity::jwt::JwtError),
}

/// The version tag of nkeys xkey envelopes: `xkv1` ‖ 24-byte nonce ‖ NaCl box.
const XKEY_V1: &[u8] = b"xkv1";
/// NaCl box nonce length.
const NONCE_LEN: usize = 24;

/// A NaCl box between the callout's curve key and one server's curve key, in the nkeys xkey
/// envelope format. The shared key is derived once per server, not twice per request (a
/// server keeps its curve key for its whole life, and the X25519 step is a third of the cost
/// of sealing).
pub struct Channel {
    salsa: SalsaBox,
}

impl Channel {
    /// The channel between `callout` (with its secret) and the server curve key `server_xkey`.
    pub fn new(callout: &XKey, server_xkey: &str) -> Result<Channel, ProtocolError> {
        XKey::from_public_key(server_xkey).map_err(|_| ProtocolError::BadServerXkey)?;
        let (_, public) =
            nkeys::from_public_key(server_xkey).map_err(|_| ProtocolError::BadServerXkey)?;
        let seed = callout.seed().map_err(|_| ProtocolError::Unseal)?;
        let (_, secret) = nkeys::decode_seed(&seed).map_err(|_| ProtocolError::Unseal)?;
        Ok(Channel {
            salsa: SalsaBox::new(&PublicKey::from(public), &SecretKey::from(secret)),
        })
    }

    /// Opens an envelope the server sealed to us.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let body = sealed.strip_prefix(XKEY_V1).ok_or(ProtocolError::Unseal)?;
        if body.len() <= NONCE_LEN {
            return Err(ProtocolError::Unseal);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        self.salsa
            .decrypt(nonce.into(), ciphertext)
            .map_err(|_| ProtocolError::Unseal)
    }

    /// Seals `plain` to the server with a fresh random nonce.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let nonce = SalsaBox::generate_nonce(&mut rand::rngs::OsRng);
        let ciphertext = self
            .salsa
            .encrypt(&nonce, plain)
            .map_err(|_| ProtocolError::Seal)?;
        let mut out = Vec::with_capacity(XKEY_V1.len() + NONCE_LEN + ciphertext.len());
        out.extend_from_slice(XKEY_V1);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }
}

/// Opens and verifies a request at `now`: unseal through `channel` when the request came sealed,
/// check the server's signature, `exp`, that it is signed by the server it names, and that it is
/// for `account`.
pub fn open_request(
    payload: &[u8],
    channel: Option<&Channel>,
    account: &str,
    now: i64,
) -> Result<AuthRequestJwt, ProtocolError> {
    let opened;
    let token = match channel {
        Some(channel) => {
            opened = channel.open(payload)?;
            &opened[..]
        }
        None => payload,
    };
    let token = std::str::from_utf8(token)
        .map_err(|_| ProtocolError::Request(JwtError::NotThreeParts { found: 0 }))?;
    let request: AuthRequestJwt = jwt::decode(token.trim(), now).map_err(ProtocolError::Request)?;
    let claims = request.claims();
    if claims.iss != claims.nats.server.id {
        return Err(ProtocolError::NotFromServer {
            issuer: claims.iss.clone(),
            server_id: claims.nats.server.id.clone(),
        });
    }
    if claims.aud != REQUEST_AUDIENCE {
        return Err(ProtocolError::WrongAudience {
            found: claims.aud.clone(),
        });
    }
    if claims.sub != account {
        return Err(ProtocolError::WrongAccount {
            found: claims.sub.clone(),
            expected: account.to_string(),
        });
    }
    keys::expect_role(&claims.nats.user_nkey, &[KeyRole::User])
        .map_err(|_| ProtocolError::BadUserNkey)?;
    Ok(request)
}

/// The answer: `Ok(session jwt)` or `Err(reason)`.
pub type Verdict<'a> = Result<&'a str, &'a str>;

/// Builds the signed `authorization_response` for `request` and seals it through `channel` when
/// the request came sealed.
pub fn answer(
    request: &AuthRequestNats,
    verdict: Verdict<'_>,
    signer: &nkeys::KeyPair,
    account: &str,
    channel: Option<&Channel>,
    now: i64,
) -> Result<Vec<u8>, ProtocolError> {
    let (jwt, error) = match verdict {
        Ok(jwt) => (jwt.to_string(), String::new()),
        Err(reason) => (String::new(), reason.to_string()),
    };
    let claims = Claims {
        sub: request.user_nkey.clone(),
        aud: request.server.id.clone(),
        iat: now,
        nats: AuthResponseNats {
            jwt,
            error,
            issuer_account: account.to_string(),
            ..AuthResponseNats::default()
        },
        ..Claims::default()
    };
    let response = jwt::encode(claims, signer)?;
    match channel {
        Some(channel) => channel.seal(response.token().as_bytes()),
        None => Ok(response.token().as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use nkeys::KeyPair;

    use super::*;
    use crate::identity::claims::{AuthResponseNats, ServerIdentity};

    const NOW: i64 = 1_800_000_000;

    fn server_request(server: &KeyPair, account: &str) -> String {
        let claims = Claims {
            sub: account.to_string(),
            aud: REQUEST_AUDIENCE.to_string(),
            iat: NOW,
            exp: NOW + 2,
            nats: AuthRequestNats {
                server: ServerIdentity {
                    id: server.public_key(),
                    name: "zester".into(),
                    ..ServerIdentity::default()
                },
                user_nkey: KeyPair::new_user().public_key(),
                ..AuthRequestNats::default()
            },
            ..Claims::default()
        };
        jwt::encode(claims, server).unwrap().token().to_string()
    }

    #[test]
    fn sealed_round_trip() {
        let server = KeyPair::new_server();
        let server_x = XKey::new();
        let callout_x = XKey::new();
        let account = KeyPair::new_account();
        let signer = KeyPair::new_account();
        let token = server_request(&server, &account.public_key());
        let sealed = server_x
            .seal(
                token.as_bytes(),
                &XKey::from_public_key(&callout_x.public_key()).unwrap(),
            )
            .unwrap();
        let channel = Channel::new(&callout_x, &server_x.public_key()).unwrap();
        let request = open_request(&sealed, Some(&channel), &account.public_key(), NOW).unwrap();
        let reply = answer(
            &request.claims().nats,
            Err("nope"),
            &signer,
            &account.public_key(),
            Some(&channel),
            NOW,
        )
        .unwrap();
        let opened = server_x
            .open(
                &reply,
                &XKey::from_public_key(&callout_x.public_key()).unwrap(),
            )
            .unwrap();
        let response =
            jwt::decode::<AuthResponseNats>(std::str::from_utf8(&opened).unwrap(), NOW).unwrap();
        assert_eq!(response.claims().sub, request.claims().nats.user_nkey);
        assert_eq!(response.claims().aud, server.public_key());
        assert_eq!(response.claims().nats.error, "nope");
        assert_eq!(response.claims().nats.issuer_account, account.public_key());
    }

    #[test]
    fn requests_not_from_the_named_server_or_for_other_accounts_are_refused() {
        let server = KeyPair::new_server();
        let callout_x = XKey::new();
        let account = KeyPair::new_account().public_key();
        let token = server_request(&server, &account);
        let other = KeyPair::new_account().public_key();
        assert!(matches!(
            open_request(token.as_bytes(), None, &other, NOW),
            Err(ProtocolError::WrongAccount { .. })
        ));
        assert!(matches!(
            open_request(token.as_bytes(), None, &account, NOW + 10),
            Err(ProtocolError::Request(JwtError::Expired { .. }))
        ));
        // A request re-signed by another server key that still names the first server.
        let mut claims = jwt::decode::<AuthRequestNats>(&token, NOW)
            .unwrap()
            .claims()
            .clone();
        claims.nats.server.id = server.public_key();
        let forged = jwt::encode(claims, &KeyPair::new_server()).unwrap();
        assert!(matches!(
            open_request(forged.token().as_bytes(), None, &account, NOW),
            Err(ProtocolError::NotFromServer { .. })
        ));
        // Sealed to someone else's key.
        let sealed = XKey::new().seal(token.as_bytes(), &XKey::new()).unwrap();
        let channel = Channel::new(&callout_x, &XKey::new().public_key()).unwrap();
        assert!(matches!(
            open_request(&sealed, Some(&channel), &account, NOW),
            Err(ProtocolError::Unseal)
        ));
        assert!(matches!(
            Channel::new(&callout_x, &KeyPair::new_user().public_key()),
            Err(ProtocolError::BadServerXkey)
        ));
    }
}
