//! Secrets for one peel (DESIGN §7): `ENC[<recipient xkey>,<base64>]` envelopes.
//!
//! The payload is the nkeys xkey format — `xkv1` ‖ 24-byte nonce ‖ NaCl box (X25519,
//! XSalsa20-Poly1305) — sealed from the master's curve key (`auth/master.xk`) to the peel's
//! curve key (the `xkey` of its key record), so nkeys in Go, nkeys.js and this module open each
//! other's payloads. The base64 is the standard alphabet with padding.
//!
//! DESIGN writes `ENC[nkey,…]`; the first field holds the *recipient's curve public key*
//! (`X…`), not its signing nkey: that is the key the box is sealed to, so a peel can tell at a
//! glance (and without trying to decrypt) whether an envelope is addressed to it, and the
//! master can tell which envelopes need rewrapping after a peel rotated its curve key.
//!
//! The module is pure (`parse`, `seal`, `open`, `rewrap`); the file and network reads the CLI
//! needs around it are in `cli::secret`. No error ever carries plaintext, and a failed open returns no
//! partial output (the box is authenticated before anything is decrypted).

use crypto_box::aead::{Aead, AeadCore};
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use data_encoding::BASE64;
use nkeys::XKey;

/// What an envelope starts with.
pub const ENVELOPE_PREFIX: &str = "ENC[";
/// What an envelope ends with.
pub const ENVELOPE_SUFFIX: &str = "]";
/// The version tag of nkeys xkey payloads.
pub const XKEY_V1: &[u8] = b"xkv1";
/// NaCl box nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length: the smallest ciphertext (of an empty plaintext).
const TAG_LEN: usize = 16;

/// Why an envelope could not be read, opened, sealed or rewrapped. No variant holds plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The text is not of the form `ENC[<xkey>,<base64>]`.
    #[error("not a secret envelope: expected ENC[<recipient xkey>,<base64>]")]
    NotEnvelope,
    /// The first field is not a curve public key.
    #[error("the envelope's recipient {found:?} is not a curve public key (X…)")]
    BadRecipient {
        /// The field found (a public key, never secret).
        found: String,
    },
    /// The payload is not standard padded base64 (truncated or damaged).
    #[error("the envelope's payload is not valid base64 (truncated or damaged?)")]
    BadBase64,
    /// The payload does not start with `xkv1`.
    #[error("unknown envelope payload version (expected xkv1)")]
    UnknownVersion,
    /// Too short to hold the version, a nonce and an authentication tag.
    #[error("the envelope's payload is too short ({len} bytes; at least {min} needed)")]
    PayloadTooShort {
        /// Payload length in bytes.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// Addressed to another curve key than the one trying to open it.
    #[error("wrong peel: the envelope is addressed to {addressed_to}, this key is {ours}")]
    WrongPeel {
        /// The envelope's recipient.
        addressed_to: String,
        /// Our curve public key.
        ours: String,
    },
    /// The box does not authenticate: changed in transit, or sealed by another sender.
    #[error("the envelope does not authenticate: it was tampered with, or not sealed by {sender}")]
    Tampered {
        /// The sender key that was tried.
        sender: String,
    },
    /// A key given by the caller is unusable.
    #[error("{what} is not a valid curve key")]
    BadKey {
        /// Which key.
        what: &'static str,
    },
    /// Sealing failed (the cipher refused the input).
    #[error("could not seal the secret")]
    Seal,
}

/// A parsed envelope: who it is for, and the sealed payload (`xkv1` ‖ nonce ‖ box).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The recipient's curve public key (`X…`), checked to be one.
    pub recipient: String,
    /// The nkeys xkey payload.
    pub payload: Vec<u8>,
}

impl Envelope {
    /// The envelope's text form.
    pub fn to_text(&self) -> String {
        format!(
            "{ENVELOPE_PREFIX}{},{}{ENVELOPE_SUFFIX}",
            self.recipient,
            BASE64.encode(&self.payload)
        )
    }
}

/// Parses `ENC[<xkey>,<base64>]` (surrounding whitespace ignored). Checks the form, the
/// recipient key and the base64; the payload itself is checked when opened.
///
/// The base64 must be canonical: `data_encoding` also decodes concatenated padded blocks
/// (`eHk=eHk=`), which Go's `base64.StdEncoding` refuses; accepting them would give one payload
/// many texts.
pub fn parse(text: &str) -> Result<Envelope, SecretError> {
    let inner = text
        .trim()
        .strip_prefix(ENVELOPE_PREFIX)
        .and_then(|t| t.strip_suffix(ENVELOPE_SUFFIX))
        .ok_or(SecretError::NotEnvelope)?;
    let (recipient, body) = inner.split_once(',').ok_or(SecretError::NotEnvelope)?;
    if XKey::from_public_key(recipient).is_err() {
        return Err(SecretError::BadRecipient {
            found: recipient.chars().take(64).collect(),
        });
    }
    let payload = BASE64
        .decode(body.as_bytes())
        .map_err(|_| SecretError::BadBase64)?;
    if BASE64.encode(&payload) != body {
        return Err(SecretError::BadBase64);
    }
    Ok(Envelope {
        recipient: recipient.to_string(),
        payload,
    })
}

/// Seals `plaintext` from `sender` to the curve key `recipient_xkey` into an envelope.
pub fn seal(plaintext: &[u8], sender: &XKey, recipient_xkey: &str) -> Result<String, SecretError> {
    let payload = seal_payload(plaintext, sender, recipient_xkey)?;
    Ok(Envelope {
        recipient: recipient_xkey.to_string(),
        payload,
    }
    .to_text())
}

/// Opens an envelope addressed to `recipient` and sealed by `sender_xkey`.
pub fn open(envelope: &str, recipient: &XKey, sender_xkey: &str) -> Result<Vec<u8>, SecretError> {
    let envelope = parse(envelope)?;
    let ours = recipient.public_key();
    if envelope.recipient != ours {
        return Err(SecretError::WrongPeel {
            addressed_to: envelope.recipient,
            ours,
        });
    }
    open_payload(&envelope.payload, recipient, sender_xkey)
}

/// On the master, after a peel rotated its curve key: opens an envelope the master sealed to
/// the peel's old key and seals it again to `new_recipient_xkey`. A NaCl box is the same key
/// for both parties (X25519 of one secret and the other's public key), so the sender can open
/// what it sealed without the peel's secret.
pub fn rewrap(
    envelope: &str,
    master: &XKey,
    new_recipient_xkey: &str,
) -> Result<String, SecretError> {
    let parsed = parse(envelope)?;
    let plaintext = open_payload(&parsed.payload, master, &parsed.recipient)?;
    seal(&plaintext, master, new_recipient_xkey)
}

/// The raw nkeys xkey payload of `plaintext` from `sender` to `recipient_xkey` (what nkeys'
/// `seal` returns), with a fresh random nonce.
pub fn seal_payload(
    plaintext: &[u8],
    sender: &XKey,
    recipient_xkey: &str,
) -> Result<Vec<u8>, SecretError> {
    let salsa = shared_box(sender, recipient_xkey, "the recipient key")?;
    let nonce = SalsaBox::generate_nonce(&mut rand::rngs::OsRng);
    let ciphertext = salsa
        .encrypt(&nonce, plaintext)
        .map_err(|_| SecretError::Seal)?;
    let mut out = Vec::with_capacity(XKEY_V1.len() + NONCE_LEN + ciphertext.len());
    out.extend_from_slice(XKEY_V1);
    out.extend_from_slice(nonce.as_slice());
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Opens a raw nkeys xkey payload with `ours` (secret) from `other_xkey` (public).
pub fn open_payload(payload: &[u8], ours: &XKey, other_xkey: &str) -> Result<Vec<u8>, SecretError> {
    let min = XKEY_V1.len() + NONCE_LEN + TAG_LEN;
    if payload.len() >= XKEY_V1.len() && !payload.starts_with(XKEY_V1) {
        return Err(SecretError::UnknownVersion);
    }
    if payload.len() < min {
        return Err(SecretError::PayloadTooShort {
            len: payload.len(),
            min,
        });
    }
    let salsa = shared_box(ours, other_xkey, "the sender key")?;
    let (nonce, ciphertext) = payload[XKEY_V1.len()..].split_at(NONCE_LEN);
    salsa
        .decrypt(nonce.into(), ciphertext)
        .map_err(|_| SecretError::Tampered {
            sender: other_xkey.to_string(),
        })
}

/// The box between `ours` (with its secret) and the public curve key `other`.
fn shared_box(ours: &XKey, other: &str, what: &'static str) -> Result<SalsaBox, SecretError> {
    XKey::from_public_key(other).map_err(|_| SecretError::BadKey { what })?;
    let (_, public) = nkeys::from_public_key(other).map_err(|_| SecretError::BadKey { what })?;
    let seed = ours.seed().map_err(|_| SecretError::BadKey {
        what: "our key (public only, no seed)",
    })?;
    let (_, secret) = nkeys::decode_seed(&seed).map_err(|_| SecretError::BadKey {
        what: "our key seed",
    })?;
    Ok(SalsaBox::new(
        &PublicKey::from(public),
        &SecretKey::from(secret),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (XKey, XKey, XKey) {
        (XKey::new(), XKey::new(), XKey::new())
    }

    #[test]
    fn round_trip() {
        let (master, a, _) = keys();
        let sealed = seal(b"db password", &master, &a.public_key()).unwrap();
        assert!(sealed.starts_with(&format!("ENC[{},", a.public_key())));
        assert!(sealed.ends_with(']'));
        assert_eq!(
            open(&sealed, &a, &master.public_key()).unwrap(),
            b"db password"
        );
        let empty = seal(b"", &master, &a.public_key()).unwrap();
        assert_eq!(open(&empty, &a, &master.public_key()).unwrap(), b"");
        let parsed = parse(&format!("  {sealed}\n")).unwrap();
        assert_eq!(parsed.recipient, a.public_key());
        assert_eq!(&parsed.payload[..4], b"xkv1");
        assert_eq!(parsed.to_text(), sealed);
    }

    #[test]
    fn nkeys_crate_opens_ours_and_we_open_its() {
        let (master, a, _) = keys();
        let payload = seal_payload(b"x", &master, &a.public_key()).unwrap();
        let master_public = XKey::from_public_key(&master.public_key()).unwrap();
        assert_eq!(a.open(&payload, &master_public).unwrap(), b"x");
        let a_public = XKey::from_public_key(&a.public_key()).unwrap();
        let theirs = master.seal(b"y", &a_public).unwrap();
        assert_eq!(
            open_payload(&theirs, &a, &master.public_key()).unwrap(),
            b"y"
        );
    }

    #[test]
    fn peel_b_cannot_open_peel_a_envelope() {
        let (master, a, b) = keys();
        let sealed = seal(b"for a", &master, &a.public_key()).unwrap();
        let err = open(&sealed, &b, &master.public_key()).unwrap_err();
        assert_eq!(
            err,
            SecretError::WrongPeel {
                addressed_to: a.public_key(),
                ours: b.public_key()
            }
        );
        // Even with the address forged to b, the box does not open with b's key.
        let forged = sealed.replacen(&a.public_key(), &b.public_key(), 1);
        assert!(matches!(
            open(&forged, &b, &master.public_key()),
            Err(SecretError::Tampered { .. })
        ));
    }

    #[test]
    fn not_an_envelope() {
        let (master, a, _) = keys();
        for text in [
            "",
            "hello",
            "ENC[",
            "ENC[]",
            "ENC[abc]",
            "enc[X,AAAA]",
            "ENC[X,AAAA",
        ] {
            let err = open(text, &a, &master.public_key()).unwrap_err();
            assert!(
                matches!(
                    err,
                    SecretError::NotEnvelope | SecretError::BadRecipient { .. }
                ),
                "{text:?}: {err:?}"
            );
        }
        assert_eq!(parse("ENC[no comma]"), Err(SecretError::NotEnvelope));
        assert!(matches!(
            parse("ENC[UABC,AAAA]"),
            Err(SecretError::BadRecipient { .. })
        ));
    }

    #[test]
    fn truncated_or_bad_base64() {
        let (master, a, _) = keys();
        let sealed = seal(b"secret", &master, &a.public_key()).unwrap();
        let truncated = format!("{}]", &sealed[..sealed.len() - 4]);
        assert_eq!(
            open(&truncated, &a, &master.public_key()),
            Err(SecretError::BadBase64)
        );
        let bad = format!("ENC[{},!!!!]", a.public_key());
        assert_eq!(parse(&bad), Err(SecretError::BadBase64));
        // Unpadded base64 is refused: the format is standard base64 with padding.
        let unpadded = format!("ENC[{},eHk]", a.public_key());
        assert_eq!(parse(&unpadded), Err(SecretError::BadBase64));
    }

    #[test]
    fn unknown_version() {
        let (master, a, _) = keys();
        let mut env = parse(&seal(b"secret", &master, &a.public_key()).unwrap()).unwrap();
        env.payload[3] = b'2';
        assert_eq!(
            open(&env.to_text(), &a, &master.public_key()),
            Err(SecretError::UnknownVersion)
        );
    }

    #[test]
    fn payload_too_short() {
        let (master, a, _) = keys();
        for len in [0usize, 3, 4, 28, 43] {
            let mut payload = b"xkv1".to_vec();
            payload.resize(len, 0);
            payload.truncate(len);
            let env = Envelope {
                recipient: a.public_key(),
                payload,
            };
            assert_eq!(
                open(&env.to_text(), &a, &master.public_key()),
                Err(SecretError::PayloadTooShort { len, min: 44 }),
                "{len}"
            );
        }
    }

    #[test]
    fn tampered_ciphertext_nonce_or_sender() {
        let (master, a, other) = keys();
        let env = parse(&seal(b"secret", &master, &a.public_key()).unwrap()).unwrap();
        for at in [5, 4 + NONCE_LEN + 1, env.payload.len() - 1] {
            let mut bad = env.clone();
            bad.payload[at] ^= 1;
            let err = open(&bad.to_text(), &a, &master.public_key()).unwrap_err();
            assert_eq!(
                err,
                SecretError::Tampered {
                    sender: master.public_key()
                }
            );
            assert!(!err.to_string().contains("secret\""));
        }
        assert!(matches!(
            open(&env.to_text(), &a, &other.public_key()),
            Err(SecretError::Tampered { .. })
        ));
    }

    #[test]
    fn bad_keys_are_errors_not_panics() {
        let (master, a, _) = keys();
        assert_eq!(
            seal(b"x", &master, "XNOTAKEY"),
            Err(SecretError::BadKey {
                what: "the recipient key"
            })
        );
        let sealed = seal(b"x", &master, &a.public_key()).unwrap();
        assert_eq!(
            open(&sealed, &a, "nope"),
            Err(SecretError::BadKey {
                what: "the sender key"
            })
        );
        let public_only = XKey::from_public_key(&a.public_key()).unwrap();
        assert!(matches!(
            open(&sealed, &public_only, &master.public_key()),
            Err(SecretError::BadKey { .. })
        ));
    }

    #[test]
    fn rewrap_moves_a_secret_to_the_rotated_key() {
        let (master, old, new) = keys();
        let sealed = seal(b"kept", &master, &old.public_key()).unwrap();
        let rewrapped = rewrap(&sealed, &master, &new.public_key()).unwrap();
        assert_eq!(parse(&rewrapped).unwrap().recipient, new.public_key());
        assert_eq!(
            open(&rewrapped, &new, &master.public_key()).unwrap(),
            b"kept"
        );
        assert!(matches!(
            open(&rewrapped, &old, &master.public_key()),
            Err(SecretError::WrongPeel { .. })
        ));
        // Another master cannot rewrap.
        let (stranger, _, _) = keys();
        assert!(matches!(
            rewrap(&sealed, &stranger, &new.public_key()),
            Err(SecretError::Tampered { .. })
        ));
    }
}
