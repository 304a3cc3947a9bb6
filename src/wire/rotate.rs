//! Peel key rotation's wire (DESIGN §6): the body a peel signs with its old and its new key,
//! and how either side signs and checks it. The flow: the peel asks on
//! `zester.event.<id>.rotate` with a request signed by BOTH keys (the old one proves it is the
//! peel, the new one that it holds it); the appliance swaps the key in the record and answers
//! with a JWT for the new key; once connected with it, the peel sends a notice on
//! `zester.event.<id>.rotated` signed by the new key, and the appliance cuts the old key off.

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};

use crate::identity::keys::{self, KeyRole};

/// How far a request's time may be from the appliance's clock.
pub const MAX_SKEW_SECS: i64 = 300;

/// The signed body of a rotation request or notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The peel.
    pub id: String,
    /// The key being replaced.
    pub old_nkey: String,
    /// The new key.
    pub new_nkey: String,
    /// Unix seconds when made.
    pub at: i64,
}

/// The wire form: the body and its signatures (base64url).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedRotation {
    /// base64url(JSON of [`Rotation`]).
    pub request: String,
    /// Signature by the old key (requests only).
    #[serde(default)]
    pub old_sig: String,
    /// Signature by the new key.
    pub new_sig: String,
}

/// A rotation request or notice that is not the wire form, or whose signatures do not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rotation request refused: {0}")]
pub struct InvalidRotation(pub String);

fn sign(key: &KeyPair, body: &[u8]) -> Result<String, InvalidRotation> {
    key.sign(body)
        .map(|sig| BASE64URL_NOPAD.encode(&sig))
        .map_err(|_| InvalidRotation("cannot sign".into()))
}

/// Signs `rotation` with the old key (when given) and the new key.
pub fn sign_rotation(
    rotation: &Rotation,
    old: Option<&KeyPair>,
    new: &KeyPair,
) -> Result<SignedRotation, InvalidRotation> {
    let body = serde_json::to_vec(rotation).map_err(|e| InvalidRotation(e.to_string()))?;
    Ok(SignedRotation {
        request: BASE64URL_NOPAD.encode(&body),
        old_sig: old.map(|k| sign(k, &body)).transpose()?.unwrap_or_default(),
        new_sig: sign(new, &body)?,
    })
}

/// Verifies a rotation for peel `id` at `now`; `need_old` for requests (both signatures).
pub fn verify_rotation(
    payload: &[u8],
    id: &str,
    need_old: bool,
    now: i64,
) -> Result<Rotation, InvalidRotation> {
    let invalid = |why: &str| InvalidRotation(why.to_string());
    let signed: SignedRotation =
        serde_json::from_slice(payload).map_err(|e| InvalidRotation(e.to_string()))?;
    let body = BASE64URL_NOPAD
        .decode(signed.request.as_bytes())
        .map_err(|_| invalid("not base64url"))?;
    let rotation: Rotation =
        serde_json::from_slice(&body).map_err(|e| InvalidRotation(e.to_string()))?;
    if rotation.id != id {
        return Err(invalid("the request names another peel than its subject"));
    }
    if (now - rotation.at).abs() > MAX_SKEW_SECS {
        return Err(invalid("the request is too old or from the future"));
    }
    let check = |nkey: &str, sig: &str| -> Result<(), InvalidRotation> {
        keys::expect_role(nkey, &[KeyRole::User]).map_err(|_| invalid("not a user key"))?;
        let sig = BASE64URL_NOPAD
            .decode(sig.as_bytes())
            .map_err(|_| invalid("signature is not base64url"))?;
        keys::verify(nkey, &body, &sig).map_err(|_| invalid("a signature does not verify"))
    };
    if rotation.old_nkey == rotation.new_nkey {
        return Err(invalid("the new key is the old key"));
    }
    // A notice carries no signature of the old key, but its old key is what gets revoked:
    // it must be one user key (never `*`, an account or a wildcard).
    keys::expect_role(&rotation.old_nkey, &[KeyRole::User])
        .map_err(|_| invalid("the old key is not a user key"))?;
    check(&rotation.new_nkey, &signed.new_sig)?;
    if need_old {
        check(&rotation.old_nkey, &signed.old_sig)?;
    }
    Ok(rotation)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn both_keys_must_sign() {
        let old = KeyPair::new_user();
        let new = KeyPair::new_user();
        let rotation = Rotation {
            id: "web-01".into(),
            old_nkey: old.public_key(),
            new_nkey: new.public_key(),
            at: NOW,
        };
        let good =
            serde_json::to_vec(&sign_rotation(&rotation, Some(&old), &new).unwrap()).unwrap();
        assert!(verify_rotation(&good, "web-01", true, NOW).is_ok());
        assert!(
            verify_rotation(&good, "web-02", true, NOW).is_err(),
            "another peel's subject"
        );
        assert!(
            verify_rotation(&good, "web-01", true, NOW + 400).is_err(),
            "stale"
        );
        let thief = KeyPair::new_user();
        let forged =
            serde_json::to_vec(&sign_rotation(&rotation, Some(&thief), &new).unwrap()).unwrap();
        assert!(
            verify_rotation(&forged, "web-01", true, NOW).is_err(),
            "old key not proven"
        );
        let no_old = serde_json::to_vec(&sign_rotation(&rotation, None, &new).unwrap()).unwrap();
        assert!(verify_rotation(&no_old, "web-01", true, NOW).is_err());
        assert!(
            verify_rotation(&no_old, "web-01", false, NOW).is_ok(),
            "a notice needs the new key only"
        );
        for old_nkey in ["*".to_string(), KeyPair::new_account().public_key()] {
            let notice = Rotation {
                old_nkey,
                ..rotation.clone()
            };
            let signed = serde_json::to_vec(&sign_rotation(&notice, None, &new).unwrap()).unwrap();
            assert!(
                verify_rotation(&signed, "web-01", false, NOW).is_err(),
                "a notice naming {} as the old key",
                notice.old_nkey
            );
        }
    }
}
