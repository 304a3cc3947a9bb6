//! Who sent an admin request: a signature by the admin's own key, carried in headers.
//!
//! The admin API is served on zester's service connection, which hears every request on
//! `zester.admin.>` but not who published it: nats-server 2.15 adds no header naming the
//! publisher of a plain subscription (`Nats-Request-Info` exists only across service imports),
//! and any body field naming the sender (`by`, `$USER`) is a claim, not an identity. So the
//! CLI signs each request with the seed of the creds it connected with, and the appliance
//! verifies the signature against the keys it trusts as admins (the home's admin and the
//! named admins of `zester admin add`): a deputy that relays or rewrites a request cannot
//! produce the signature, and a key that is not an admin's proves nothing.
//!
//! What is signed: [`SIGNING_CONTEXT`], the subject, the time, a random nonce and the body, each
//! separated by `\n` (the body last, byte for byte), so a signature cannot be moved to another
//! subject or body. The time bounds replays to [`MAX_SKEW_SECS`] either way; the appliance also
//! refuses a signature it has seen within that window. The nonce is there because Ed25519 is
//! deterministic: without it, the same command run twice within a second would be signed
//! identically and the second taken for a replay. Pure: `now` and the nonce are passed in.

use data_encoding::{BASE64URL, BASE64URL_NOPAD};

use crate::identity::keys::{self, KeyError, UserKey};

/// Header with the signer's public user key (`U…`).
pub const KEY_HEADER: &str = "Zester-Admin-Key";
/// Header with the signing time, unix seconds.
pub const TIME_HEADER: &str = "Zester-Admin-Time";
/// Header with the request's random nonce (base64url), making every signature unique.
pub const NONCE_HEADER: &str = "Zester-Admin-Nonce";
/// Header with the Ed25519 signature, base64url without padding.
pub const SIGNATURE_HEADER: &str = "Zester-Admin-Sig";
/// Domain separation: a signature made for anything else never verifies here.
pub const SIGNING_CONTEXT: &str = "zester-admin-request-v1";
/// How far the signing time may be from the appliance's clock, either way.
pub const MAX_SKEW_SECS: i64 = 60;

/// The proof an admin request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminProof {
    /// The signer's public key, as sent.
    pub key: String,
    /// The signing time, unix seconds.
    pub time: i64,
    /// The random nonce, as sent.
    pub nonce: String,
    /// The signature, base64url.
    pub signature: String,
}

/// Why a request's proof of identity does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Some of the headers are there, not all, or one is not readable.
    #[error("incomplete admin signature headers: {0}")]
    Incomplete(&'static str),
    /// The key is not a user key.
    #[error("admin signature: {0}")]
    Key(#[from] KeyError),
    /// The signing time is too far from now.
    #[error("admin signature made at {time}, {}s from the appliance's clock (at most {MAX_SKEW_SECS}s): check the clock, or this is a replay", (now - time).abs())]
    Stale {
        /// The signing time.
        time: i64,
        /// The appliance's time.
        now: i64,
    },
    /// The signature is not base64url.
    #[error("admin signature is not base64url")]
    Encoding,
    /// The signature does not verify with the key for this subject and body.
    #[error("admin signature does not verify with {key} for this subject and body")]
    Mismatch {
        /// The key (shortened).
        key: String,
    },
    /// The signer could not sign (a key without a seed).
    #[error("cannot sign the admin request: the key has no seed")]
    NoSeed,
}

/// The bytes that are signed for a request on `subject` with `body` at `time`.
pub fn signing_input(subject: &str, time: i64, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut input = format!("{SIGNING_CONTEXT}\n{subject}\n{time}\n{nonce}\n").into_bytes();
    input.extend_from_slice(body);
    input
}

/// Signs a request with `key` (the seed of the admin's creds); `nonce` is random bytes the
/// caller drew (16 are plenty).
pub fn sign(
    key: &nkeys::KeyPair,
    subject: &str,
    time: i64,
    nonce: &[u8],
    body: &[u8],
) -> Result<AdminProof, ProofError> {
    let nonce = BASE64URL_NOPAD.encode(nonce);
    let signature = key
        .sign(&signing_input(subject, time, &nonce, body))
        .map_err(|_| ProofError::NoSeed)?;
    Ok(AdminProof {
        key: key.public_key(),
        time,
        nonce,
        signature: BASE64URL_NOPAD.encode(&signature),
    })
}

impl AdminProof {
    /// The proof in the four header values (key, time, nonce, signature; `None` when no header
    /// is there: an unsigned request). A partial set is an error, never "unsigned".
    pub fn from_headers(
        key: Option<&str>,
        time: Option<&str>,
        nonce: Option<&str>,
        signature: Option<&str>,
    ) -> Result<Option<AdminProof>, ProofError> {
        match (key, time, nonce, signature) {
            (None, None, None, None) => Ok(None),
            (Some(key), Some(time), Some(nonce), Some(signature)) => Ok(Some(AdminProof {
                key: key.to_string(),
                time: time
                    .trim()
                    .parse()
                    .map_err(|_| ProofError::Incomplete("the time is not unix seconds"))?,
                nonce: nonce.to_string(),
                signature: signature.to_string(),
            })),
            _ => Err(ProofError::Incomplete(
                "Zester-Admin-Key, -Time, -Nonce and -Sig go together",
            )),
        }
    }

    /// The proof as `(header, value)` pairs, to put on the request.
    pub fn headers(&self) -> [(&'static str, String); 4] {
        [
            (KEY_HEADER, self.key.clone()),
            (TIME_HEADER, self.time.to_string()),
            (NONCE_HEADER, self.nonce.clone()),
            (SIGNATURE_HEADER, self.signature.clone()),
        ]
    }

    /// Checks the proof for a request on `subject` with `body` at `now`: a user key, a time
    /// within [`MAX_SKEW_SECS`], and a signature by that key. Returns the key that signed;
    /// whether it is an admin's is for the caller to decide.
    pub fn verify(&self, subject: &str, body: &[u8], now: i64) -> Result<UserKey, ProofError> {
        let key = UserKey::parse(&self.key)?;
        if (now - self.time).abs() > MAX_SKEW_SECS {
            return Err(ProofError::Stale {
                time: self.time,
                now,
            });
        }
        let raw = BASE64URL_NOPAD
            .decode(self.signature.as_bytes())
            .or_else(|_| BASE64URL.decode(self.signature.as_bytes()))
            .map_err(|_| ProofError::Encoding)?;
        let input = signing_input(subject, self.time, &self.nonce, body);
        keys::verify(key.as_str(), &input, &raw).map_err(|_| ProofError::Mismatch {
            key: keys::shorten(key.as_str()),
        })?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_signature_verifies_only_for_its_key_subject_body_and_time() {
        let alice = nkeys::KeyPair::new_user();
        let proof = sign(
            &alice,
            "zester.admin.key.change",
            NOW,
            b"n1",
            b"{\"id\":\"a\"}",
        )
        .unwrap();
        let twice = sign(
            &alice,
            "zester.admin.key.change",
            NOW,
            b"n2",
            b"{\"id\":\"a\"}",
        )
        .unwrap();
        assert_ne!(
            proof.signature, twice.signature,
            "the nonce makes each signature unique"
        );
        let key = proof
            .verify("zester.admin.key.change", b"{\"id\":\"a\"}", NOW + 5)
            .unwrap();
        assert_eq!(key.as_str(), alice.public_key());

        let mismatch =
            |r: Result<UserKey, ProofError>| matches!(r, Err(ProofError::Mismatch { .. }));
        assert!(mismatch(proof.verify(
            "zester.admin.key.delete",
            b"{\"id\":\"a\"}",
            NOW
        )));
        assert!(mismatch(proof.verify(
            "zester.admin.key.change",
            b"{\"id\":\"b\"}",
            NOW
        )));
        let mut renonced = proof.clone();
        renonced.nonce = twice.nonce.clone();
        assert!(mismatch(renonced.verify(
            "zester.admin.key.change",
            b"{\"id\":\"a\"}",
            NOW
        )));
        let mut moved = proof.clone();
        moved.time += 1;
        assert!(mismatch(moved.verify(
            "zester.admin.key.change",
            b"{\"id\":\"a\"}",
            NOW
        )));
        let mut other = proof.clone();
        other.key = nkeys::KeyPair::new_user().public_key();
        assert!(mismatch(other.verify(
            "zester.admin.key.change",
            b"{\"id\":\"a\"}",
            NOW
        )));
        assert!(matches!(
            proof.verify("zester.admin.key.change", b"{\"id\":\"a\"}", NOW + 61),
            Err(ProofError::Stale { .. })
        ));
        let mut account = proof.clone();
        account.key = nkeys::KeyPair::new_account().public_key();
        assert!(matches!(
            account.verify("zester.admin.key.change", b"{\"id\":\"a\"}", NOW),
            Err(ProofError::Key(_))
        ));
    }

    #[test]
    fn headers_are_all_or_nothing() {
        assert_eq!(AdminProof::from_headers(None, None, None, None), Ok(None));
        assert!(AdminProof::from_headers(Some("U"), None, Some("n"), Some("s")).is_err());
        assert!(AdminProof::from_headers(Some("U"), Some("12"), None, Some("s")).is_err());
        assert!(AdminProof::from_headers(Some("U"), Some("soon"), Some("n"), Some("s")).is_err());
        let proof = AdminProof::from_headers(Some("UK"), Some("12"), Some("n"), Some("sig"))
            .unwrap()
            .unwrap();
        assert_eq!(proof.time, 12);
        let headers = proof.headers();
        assert_eq!(headers[2], (NONCE_HEADER, "n".to_string()));
    }
}
