//! Enrolment's wire (DESIGN §6): what an enrolling key asks on `zester.enrol.<its nkey>` —
//! `{"request": base64url(json), "sig": base64url(ed25519)}` — and how it is signed and
//! checked. The signature binds the id, the curve key and the time to the nkey, and the subject
//! must name the same key.

use data_encoding::BASE64URL_NOPAD;
use nkeys::{KeyPair, XKey};
use serde::{Deserialize, Serialize};

use crate::identity::keys::{self, KeyRole};
use crate::wire::record::KeyState;

/// How far a request's time may be from the appliance's clock.
pub const MAX_SKEW_SECS: i64 = 300;

/// What the peel asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Record my key for this id.
    Enrol,
    /// Give me my user JWT (once accepted).
    Fetch,
}

/// The signed body of an enrolment request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolRequest {
    /// What is asked.
    pub op: Op,
    /// The peel id wanted.
    pub id: String,
    /// The peel's user key (`U…`), the one signing the request.
    pub nkey: String,
    /// The peel's curve key (`X…`), for secrets.
    pub xkey: Option<String>,
    /// The peel's hostname, for the admin's eyes.
    pub hostname: String,
    /// Unix seconds when made.
    pub at: i64,
    /// A join token's proof for this key: accepted at once if the token allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<crate::wire::token::TokenProof>,
}

/// The wire form: the request as base64url JSON and its signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedRequest {
    /// base64url(JSON of [`EnrolRequest`]).
    pub request: String,
    /// base64url(Ed25519 signature of the decoded `request` bytes by `nkey`).
    pub sig: String,
}

/// The appliance's answer to an enrolment request (inside `{"ok": …}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolAnswer {
    /// Where the key stands.
    pub state: KeyState,
    /// The key's fingerprint (when just recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The peel's user JWT (a fetch by an accepted key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    /// The master's curve public key, for the peel's profile (with the JWT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_xkey: Option<String>,
    /// Every node's client URL, in a cluster (with the JWT), for the peel's profile: it fails
    /// over among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

impl EnrolAnswer {
    /// An answer that only says where the key stands.
    pub fn state(state: KeyState) -> EnrolAnswer {
        EnrolAnswer {
            state,
            fingerprint: None,
            jwt: None,
            master_xkey: None,
            servers: Vec::new(),
        }
    }
}

/// Why an enrolment request is not acceptable as a request (before any key-store decision).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not the wire form.
    #[error("malformed enrolment request: {0}")]
    Malformed(String),
    /// The signature does not verify, or the subject names another key.
    #[error("the enrolment request is not signed by the key it names")]
    BadSignature,
    /// Too old or from the future.
    #[error("the enrolment request is {age} s away from the master's clock (more than {MAX_SKEW_SECS} s): check the peel's clock")]
    Stale {
        /// Seconds off.
        age: i64,
    },
}

impl RequestError {
    /// A short stable code for the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Malformed(_) => "enrol_malformed",
            RequestError::BadSignature => "enrol_bad_signature",
            RequestError::Stale { .. } => "enrol_stale",
        }
    }
}

/// Signs `request` with `key`.
pub fn sign_request(key: &KeyPair, request: &EnrolRequest) -> Result<SignedRequest, RequestError> {
    sign_body(key, request)
}

/// Signs any request body with `key` in the enrolment's wire form (a node's request too).
pub fn sign_body(key: &KeyPair, request: &impl Serialize) -> Result<SignedRequest, RequestError> {
    let body = serde_json::to_vec(request).map_err(|e| RequestError::Malformed(e.to_string()))?;
    let sig = key.sign(&body).map_err(|_| RequestError::BadSignature)?;
    Ok(SignedRequest {
        request: BASE64URL_NOPAD.encode(&body),
        sig: BASE64URL_NOPAD.encode(&sig),
    })
}

/// The body of a signed request that arrived on `zester.enrol.<subject_nkey>` at `now`, once
/// its `nkey` is the subject's, a user key, and has signed it, and its `at` is within
/// [`MAX_SKEW_SECS`]. The caller parses the body into its request type.
pub fn open_signed(payload: &[u8], subject_nkey: &str, now: i64) -> Result<Vec<u8>, RequestError> {
    #[derive(Deserialize)]
    struct Signer {
        nkey: String,
        at: i64,
    }
    let signed: SignedRequest =
        serde_json::from_slice(payload).map_err(|e| RequestError::Malformed(e.to_string()))?;
    let decode = |text: &str| {
        BASE64URL_NOPAD
            .decode(text.as_bytes())
            .map_err(|_| RequestError::Malformed("not base64url".into()))
    };
    let body = decode(&signed.request)?;
    let sig = decode(&signed.sig)?;
    let signer: Signer =
        serde_json::from_slice(&body).map_err(|e| RequestError::Malformed(e.to_string()))?;
    if signer.nkey != subject_nkey {
        return Err(RequestError::BadSignature);
    }
    keys::expect_role(&signer.nkey, &[KeyRole::User]).map_err(|_| RequestError::BadSignature)?;
    keys::verify(&signer.nkey, &body, &sig).map_err(|_| RequestError::BadSignature)?;
    if (now - signer.at).abs() > MAX_SKEW_SECS {
        return Err(RequestError::Stale {
            age: now - signer.at,
        });
    }
    Ok(body)
}

/// What a signed request says, unchecked (for the audit record of one that was refused).
pub fn claimed_body<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Option<T> {
    let signed: SignedRequest = serde_json::from_slice(payload).ok()?;
    let body = BASE64URL_NOPAD.decode(signed.request.as_bytes()).ok()?;
    serde_json::from_slice(&body).ok()
}

/// Verifies a request that arrived on `zester.enrol.<subject_nkey>` at `now`.
pub fn verify_request(
    payload: &[u8],
    subject_nkey: &str,
    now: i64,
) -> Result<EnrolRequest, RequestError> {
    let body = open_signed(payload, subject_nkey, now)?;
    let request: EnrolRequest =
        serde_json::from_slice(&body).map_err(|e| RequestError::Malformed(e.to_string()))?;
    if let Some(xkey) = &request.xkey {
        if XKey::from_public_key(xkey).is_err() {
            return Err(RequestError::Malformed("xkey is not a curve key".into()));
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn request(key: &KeyPair, at: i64) -> EnrolRequest {
        EnrolRequest {
            op: Op::Enrol,
            id: "web-01".into(),
            nkey: key.public_key(),
            xkey: Some(XKey::new().public_key()),
            hostname: "h".into(),
            at,
            token: None,
        }
    }

    #[test]
    fn signed_requests_verify_only_for_their_key_and_time() {
        let key = KeyPair::new_user();
        let signed = sign_request(&key, &request(&key, NOW)).unwrap();
        let body = serde_json::to_vec(&signed).unwrap();
        assert_eq!(
            verify_request(&body, &key.public_key(), NOW).unwrap().id,
            "web-01"
        );
        let other = KeyPair::new_user().public_key();
        assert!(matches!(
            verify_request(&body, &other, NOW),
            Err(RequestError::BadSignature)
        ));
        assert!(matches!(
            verify_request(&body, &key.public_key(), NOW + 301),
            Err(RequestError::Stale { .. })
        ));
        // A request signed by one key but claiming another.
        let thief = KeyPair::new_user();
        let forged = sign_request(&thief, &request(&key, NOW)).unwrap();
        let body = serde_json::to_vec(&forged).unwrap();
        assert!(matches!(
            verify_request(&body, &key.public_key(), NOW),
            Err(RequestError::BadSignature)
        ));
        assert!(matches!(
            verify_request(b"{}", &key.public_key(), NOW),
            Err(RequestError::Malformed(_))
        ));
    }
}
