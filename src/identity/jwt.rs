//! The NATS JWT v2 codec: encode with an nkey, decode and verify.
//!
//! A token is `base64url(header).base64url(claims).base64url(ed25519 signature)`, signed over the
//! first two parts by the key named in `iss`. Decoding checks, in order: size, shape, header,
//! claim type and version, the signature against `iss`, the issuer's and subject's key roles
//! for the claim type and, unless asked not to, `exp`/`nbf` against the `now` the caller passes.
//! A [`Jwt`] value can only come out of [`encode`] or a successful decode, so holding one means
//! its signature was checked.

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha512_256};

use super::claims::{
    AccountNats, AuthRequestNats, AuthResponseNats, ClaimBody, Claims, OperatorNats, UserNats,
    JWT_VERSION,
};
use super::keys::{self, KeyError};

/// The signature algorithm of NATS JWT v2.
pub const ALGORITHM: &str = "ed25519-nkey";
/// Tokens larger than this are refused before any parsing (nats-io/jwt `MaxTokenSize`).
pub const MAX_TOKEN_SIZE: usize = 1024 * 1024;
/// The header every token we write carries.
const HEADER_JSON: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Which of the three parts of a token a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The first part.
    Header,
    /// The second part.
    Claims,
    /// The third part.
    Signature,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Claims => "claims",
            Part::Signature => "signature",
        })
    }
}

/// Why a token was refused (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Larger than [`MAX_TOKEN_SIZE`].
    #[error("token is {size} bytes, more than the {max} a NATS JWT may have")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not `header.claims.signature`.
    #[error("not a JWT: expected 3 dot-separated parts, found {found}")]
    NotThreeParts {
        /// How many parts there were.
        found: usize,
    },
    /// A part is not base64url without padding.
    #[error("the JWT {part} is not valid base64url")]
    BadBase64 {
        /// Which part.
        part: Part,
    },
    /// A part is not the JSON it should be.
    #[error("the JWT {part} is not valid JSON for this token: {reason}")]
    BadJson {
        /// Which part.
        part: Part,
        /// The parser's complaint.
        reason: String,
    },
    /// Header `typ` is not JWT.
    #[error("header typ is {typ:?}, not \"JWT\"")]
    NotJwtType {
        /// The `typ` found.
        typ: String,
    },
    /// Header `alg` is not `ed25519-nkey`.
    #[error("header alg is {alg:?}; only \"ed25519-nkey\" (NATS JWT v2) is accepted")]
    UnsupportedAlgorithm {
        /// The `alg` found.
        alg: String,
    },
    /// A token of another claim type than the one expected here.
    #[error("this is a {found:?} JWT, but a {expected:?} JWT is needed here")]
    WrongClaimType {
        /// The type needed.
        expected: &'static str,
        /// The type found.
        found: String,
    },
    /// Not a version 2 token.
    #[error(
        "JWT version {found} is not supported (only version 2; re-issue it with a current tool)"
    )]
    UnsupportedVersion {
        /// The version found (0 when absent, as in v1 tokens).
        found: u32,
    },
    /// `iss` is not a usable key, or of a role that may not sign this claim type.
    #[error("issuer: {0}")]
    Issuer(KeyError),
    /// `sub` is missing or of the wrong role for this claim type.
    #[error("subject: {0}")]
    Subject(KeyError),
    /// The signature does not verify with `iss`.
    #[error("signature does not verify with issuer {issuer}: the token was altered or not signed by that key")]
    SignatureMismatch {
        /// The issuer named in the token.
        issuer: String,
    },
    /// Past `exp`.
    #[error("token expired at {} (unix {at})", crate::identity::time::rfc3339(*at))]
    Expired {
        /// The `exp`.
        at: i64,
    },
    /// Before `nbf`.
    #[error("token is not valid before {} (unix {at})", crate::identity::time::rfc3339(*at))]
    NotYetValid {
        /// The `nbf`.
        at: i64,
    },
    /// Encoding refused: the signer's role cannot sign this claim type.
    #[error("cannot sign a {claim_type} JWT: {source}")]
    SignerRole {
        /// The claim type.
        claim_type: &'static str,
        /// What is wrong with the signer.
        source: KeyError,
    },
}

/// A token whose signature, shape and roles have been verified, with its decoded claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt<N> {
    claims: Claims<N>,
    token: String,
}

impl<N> Jwt<N> {
    /// The decoded claims.
    pub fn claims(&self) -> &Claims<N> {
        &self.claims
    }

    /// The encoded token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The public key the token describes (`sub`).
    pub fn subject(&self) -> &str {
        &self.claims.sub
    }

    /// The public key that signed it (`iss`).
    pub fn issuer(&self) -> &str {
        &self.claims.iss
    }

    /// Checks `exp` and `nbf` against `now` (unix seconds), as nats-io/jwt does.
    pub fn check_times(&self, now: i64) -> Result<(), JwtError> {
        if self.claims.exp > 0 && now > self.claims.exp {
            return Err(JwtError::Expired {
                at: self.claims.exp,
            });
        }
        if self.claims.nbf > 0 && self.claims.nbf > now {
            return Err(JwtError::NotYetValid {
                at: self.claims.nbf,
            });
        }
        Ok(())
    }
}

/// Operator JWT.
pub type OperatorJwt = Jwt<OperatorNats>;
/// Account JWT.
pub type AccountJwt = Jwt<AccountNats>;
/// User JWT.
pub type UserJwt = Jwt<UserNats>;
/// Authorization request JWT.
pub type AuthRequestJwt = Jwt<AuthRequestNats>;
/// Authorization response JWT.
pub type AuthResponseJwt = Jwt<AuthResponseNats>;

/// The registered claims in Go's field order; their hash is the `jti`.
#[derive(Serialize)]
struct Registered<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    aud: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    exp: i64,
    #[serde(skip_serializing_if = "is_zero")]
    iat: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    iss: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    nbf: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    sub: &'a str,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn token_id<N>(claims: &Claims<N>) -> String {
    let registered = Registered {
        aud: &claims.aud,
        exp: claims.exp,
        iat: claims.iat,
        iss: &claims.iss,
        name: &claims.name,
        nbf: claims.nbf,
        sub: &claims.sub,
    };
    // Serialising plain strings and integers cannot fail.
    let json = serde_json::to_vec(&registered).unwrap_or_default();
    BASE32_NOPAD.encode(&Sha512_256::digest(&json))
}

/// Signs `claims` with `signer`, filling in `iss`, `jti`, `nats.type` and `nats.version`.
///
/// The caller sets `iat` (and `exp`, `nbf`, `aud`) so that this stays free of clock reads.
pub fn encode<N: ClaimBody>(mut claims: Claims<N>, signer: &KeyPair) -> Result<Jwt<N>, JwtError> {
    let issuer = signer.public_key();
    keys::expect_role(&issuer, N::ISSUER_ROLES).map_err(|source| JwtError::SignerRole {
        claim_type: N::TYPE,
        source,
    })?;
    keys::expect_role(&claims.sub, N::SUBJECT_ROLES).map_err(JwtError::Subject)?;
    claims.iss = issuer.clone();
    claims.jti = String::new();
    claims.jti = token_id(&claims);
    claims.nats.stamp();
    let payload = serde_json::to_vec(&claims).map_err(|e| JwtError::BadJson {
        part: Part::Claims,
        reason: e.to_string(),
    })?;
    let mut token = BASE64URL_NOPAD.encode(HEADER_JSON.as_bytes());
    token.push('.');
    token.push_str(&BASE64URL_NOPAD.encode(&payload));
    let signature = signer
        .sign(token.as_bytes())
        .map_err(|_| JwtError::SignerRole {
            claim_type: N::TYPE,
            source: KeyError::InvalidSeed,
        })?;
    token.push('.');
    token.push_str(&BASE64URL_NOPAD.encode(&signature));
    Ok(Jwt { claims, token })
}

/// The `sub` a JWT claims, read without any verification: only for naming who presented it
/// (audit lines) or for finding connections the server already verified.
pub fn unverified_subject(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(payload.as_bytes())
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["sub"].as_str().map(str::to_string)
}

/// Whether a JWT says it is a bearer JWT tagged `tag`, read without any verification: a cheap
/// look before the full check, for a question most tokens answer "no" to.
pub fn unverified_bearer_tagged(token: &str, tag: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Nats {
        #[serde(default)]
        bearer_token: bool,
        #[serde(default)]
        tags: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        nats: Nats,
    }
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    let Ok(bytes) = data_encoding::BASE64URL_NOPAD.decode(payload.as_bytes()) else {
        return false;
    };
    serde_json::from_slice::<Body>(&bytes)
        .is_ok_and(|body| body.nats.bearer_token && body.nats.tags.iter().any(|t| t == tag))
}

/// Decodes and fully verifies a token of claim type `N`, including `exp`/`nbf` at `now`.
pub fn decode<N: ClaimBody>(token: &str, now: i64) -> Result<Jwt<N>, JwtError> {
    let jwt = decode_ignoring_time::<N>(token)?;
    jwt.check_times(now)?;
    Ok(jwt)
}

/// Decodes and verifies everything but `exp`/`nbf` (for inspecting an expired token).
pub fn decode_ignoring_time<N: ClaimBody>(token: &str) -> Result<Jwt<N>, JwtError> {
    let parts = split(token)?;
    let claims: Claims<N> = parse_json(&parts.claims, Part::Claims)?;
    if claims.nats.claim_type() != N::TYPE {
        return Err(JwtError::WrongClaimType {
            expected: N::TYPE,
            found: claims.nats.claim_type().to_string(),
        });
    }
    if claims.nats.version() != JWT_VERSION {
        return Err(JwtError::UnsupportedVersion {
            found: claims.nats.version(),
        });
    }
    verify_signature(&claims.iss, parts.signed, &parts.signature)?;
    keys::expect_role(&claims.iss, N::ISSUER_ROLES).map_err(JwtError::Issuer)?;
    keys::expect_role(&claims.sub, N::SUBJECT_ROLES).map_err(JwtError::Subject)?;
    Ok(Jwt {
        claims,
        token: token.to_string(),
    })
}

/// A verified token of any claim type, for tools that are handed "some JWT".
#[derive(Debug, Clone, PartialEq)]
pub enum AnyJwt {
    /// Operator.
    Operator(OperatorJwt),
    /// Account.
    Account(AccountJwt),
    /// User.
    User(UserJwt),
    /// Authorization request.
    AuthRequest(AuthRequestJwt),
    /// Authorization response.
    AuthResponse(AuthResponseJwt),
}

/// Decodes a token of whatever claim type it declares, verifying all but `exp`/`nbf`.
pub fn decode_any(token: &str) -> Result<AnyJwt, JwtError> {
    let parts = split(token)?;
    let peek: Claims<Value> = parse_json(&parts.claims, Part::Claims)?;
    let claim_type = peek
        .nats
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Ok(match claim_type {
        OperatorNats::TYPE => AnyJwt::Operator(decode_ignoring_time(token)?),
        AccountNats::TYPE => AnyJwt::Account(decode_ignoring_time(token)?),
        UserNats::TYPE => AnyJwt::User(decode_ignoring_time(token)?),
        AuthRequestNats::TYPE => AnyJwt::AuthRequest(decode_ignoring_time(token)?),
        AuthResponseNats::TYPE => AnyJwt::AuthResponse(decode_ignoring_time(token)?),
        other => {
            return Err(JwtError::WrongClaimType {
                expected: "operator, account, user or authorization",
                found: other.to_string(),
            })
        }
    })
}

struct Parts<'a> {
    signed: &'a [u8],
    claims: Vec<u8>,
    signature: Vec<u8>,
}

fn split(token: &str) -> Result<Parts<'_>, JwtError> {
    if token.len() > MAX_TOKEN_SIZE {
        return Err(JwtError::TooLarge {
            size: token.len(),
            max: MAX_TOKEN_SIZE,
        });
    }
    let pieces: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = pieces[..] else {
        return Err(JwtError::NotThreeParts {
            found: pieces.len(),
        });
    };
    check_header(&base64(header, Part::Header)?)?;
    Ok(Parts {
        signed: &token.as_bytes()[..header.len() + 1 + claims.len()],
        claims: base64(claims, Part::Claims)?,
        signature: base64(signature, Part::Signature)?,
    })
}

fn base64(text: &str, part: Part) -> Result<Vec<u8>, JwtError> {
    BASE64URL_NOPAD
        .decode(text.as_bytes())
        .map_err(|_| JwtError::BadBase64 { part })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], part: Part) -> Result<T, JwtError> {
    serde_json::from_slice(bytes).map_err(|e| JwtError::BadJson {
        part,
        reason: e.to_string(),
    })
}

fn check_header(bytes: &[u8]) -> Result<(), JwtError> {
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(default)]
        typ: String,
        #[serde(default)]
        alg: String,
    }
    let header: Header = parse_json(bytes, Part::Header)?;
    if !header.typ.eq_ignore_ascii_case("JWT") {
        return Err(JwtError::NotJwtType { typ: header.typ });
    }
    let alg = header.alg.to_ascii_lowercase();
    if alg != ALGORITHM {
        return Err(JwtError::UnsupportedAlgorithm { alg: header.alg });
    }
    Ok(())
}

fn verify_signature(issuer: &str, signed: &[u8], signature: &[u8]) -> Result<(), JwtError> {
    match keys::verify(issuer, signed, signature) {
        Ok(()) => Ok(()),
        Err(KeyError::BadSignature { .. }) => Err(JwtError::SignatureMismatch {
            issuer: issuer.to_string(),
        }),
        Err(other) => Err(JwtError::Issuer(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::claims::{Permission, Permissions};

    const NOW: i64 = 1_800_000_000;

    fn user_claims(sub: &str) -> Claims<UserNats> {
        Claims {
            sub: sub.to_string(),
            name: "peel1".into(),
            iat: NOW,
            exp: NOW + 3600,
            nats: UserNats::with_permissions(Permissions {
                publish: Permission {
                    allow: vec!["zester.event.peel1.>".into()],
                    deny: vec![],
                },
                ..Permissions::default()
            }),
            ..Claims::default()
        }
    }

    fn signed_user() -> (KeyPair, Jwt<UserNats>) {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let jwt = encode(user_claims(&user.public_key()), &account).unwrap();
        (account, jwt)
    }

    #[test]
    fn round_trip_keeps_every_claim() {
        let (account, jwt) = signed_user();
        let back = decode::<UserNats>(jwt.token(), NOW).unwrap();
        assert_eq!(back.claims(), jwt.claims());
        assert_eq!(back.issuer(), account.public_key());
        assert_eq!(back.claims().nats.claim_type, "user");
        assert_eq!(back.claims().nats.version, 2);
        assert!(!back.claims().jti.is_empty());
    }

    #[test]
    fn header_is_the_nats_v2_header() {
        let (_, jwt) = signed_user();
        let header = jwt.token().split('.').next().unwrap();
        assert_eq!(
            BASE64URL_NOPAD.decode(header.as_bytes()).unwrap(),
            HEADER_JSON.as_bytes()
        );
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused() {
        let (_, jwt) = signed_user();
        let token = jwt.token().as_bytes();
        let dots: Vec<usize> = (0..token.len()).filter(|&i| token[i] == b'.').collect();
        // One position inside each part, then every position in the claims part.
        let mut positions = vec![2, dots[0] + 5, dots[1] + 5, token.len() - 2];
        positions.extend(dots[0] + 1..dots[1]);
        for at in positions {
            let mut tampered = token.to_vec();
            tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(tampered).unwrap();
            if tampered == jwt.token() {
                continue;
            }
            assert!(
                decode::<UserNats>(&tampered, NOW).is_err(),
                "tampering at byte {at} was not detected"
            );
        }
    }

    #[test]
    fn a_changed_claim_with_valid_encoding_fails_the_signature() {
        let (_, jwt) = signed_user();
        let parts: Vec<&str> = jwt.token().split('.').collect();
        let mut claims: Value =
            serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
        claims["nats"]["pub"]["allow"] = serde_json::json!([">"]);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            BASE64URL_NOPAD.encode(&serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert!(matches!(
            decode::<UserNats>(&forged, NOW),
            Err(JwtError::SignatureMismatch { .. })
        ));
    }

    #[test]
    fn wrong_signer_role_is_refused_both_ways() {
        let operator = KeyPair::new_operator();
        let user = KeyPair::new_user();
        let err = encode(user_claims(&user.public_key()), &operator).unwrap_err();
        assert!(matches!(err, JwtError::SignerRole { .. }), "{err}");

        // A token signed by a user key (forged by hand) is refused on decode.
        let rogue = KeyPair::new_user();
        let mut claims = user_claims(&user.public_key());
        claims.iss = rogue.public_key();
        claims.nats.claim_type = "user".into();
        claims.nats.version = 2;
        let forged = sign_raw(&claims, &rogue);
        let err = decode::<UserNats>(&forged, NOW).unwrap_err();
        assert!(
            matches!(err, JwtError::Issuer(KeyError::WrongRole { .. })),
            "{err}"
        );
    }

    fn sign_raw<T: Serialize>(claims: &T, key: &KeyPair) -> String {
        let mut token = BASE64URL_NOPAD.encode(HEADER_JSON.as_bytes());
        token.push('.');
        token.push_str(&BASE64URL_NOPAD.encode(&serde_json::to_vec(claims).unwrap()));
        let sig = key.sign(token.as_bytes()).unwrap();
        format!("{token}.{}", BASE64URL_NOPAD.encode(&sig))
    }

    #[test]
    fn expiry_and_not_before_are_enforced() {
        let (_, jwt) = signed_user();
        assert_eq!(
            decode::<UserNats>(jwt.token(), NOW + 3601).unwrap_err(),
            JwtError::Expired { at: NOW + 3600 }
        );
        assert!(decode::<UserNats>(jwt.token(), NOW + 3600).is_ok());
        assert!(decode_ignoring_time::<UserNats>(jwt.token()).is_ok());

        let account = KeyPair::new_account();
        let mut claims = user_claims(&KeyPair::new_user().public_key());
        claims.nbf = NOW + 10;
        let jwt = encode(claims, &account).unwrap();
        assert_eq!(
            decode::<UserNats>(jwt.token(), NOW).unwrap_err(),
            JwtError::NotYetValid { at: NOW + 10 }
        );
    }

    #[test]
    fn wrong_claim_type_and_version_are_named() {
        let (_, jwt) = signed_user();
        assert!(matches!(
            decode::<AccountNats>(jwt.token(), NOW),
            Err(JwtError::WrongClaimType {
                expected: "account",
                ..
            })
        ));
        let account = KeyPair::new_account();
        let mut claims = user_claims(&KeyPair::new_user().public_key());
        claims.iss = account.public_key();
        claims.nats.claim_type = "user".into();
        claims.nats.version = 1;
        let old = sign_raw(&claims, &account);
        assert_eq!(
            decode::<UserNats>(&old, NOW).unwrap_err(),
            JwtError::UnsupportedVersion { found: 1 }
        );
    }

    #[test]
    fn other_algorithms_and_shapes_are_refused() {
        let (_, jwt) = signed_user();
        let rest = jwt.token().split_once('.').unwrap().1;
        for header in [
            r#"{"typ":"JWT","alg":"none"}"#,
            r#"{"typ":"JWT","alg":"HS256"}"#,
            r#"{"typ":"JWT","alg":"ed25519"}"#,
        ] {
            let token = format!("{}.{rest}", BASE64URL_NOPAD.encode(header.as_bytes()));
            assert!(matches!(
                decode::<UserNats>(&token, NOW),
                Err(JwtError::UnsupportedAlgorithm { .. })
            ));
        }
        assert_eq!(
            decode::<UserNats>("a.b", NOW).unwrap_err(),
            JwtError::NotThreeParts { found: 2 }
        );
        let no_sig = format!("{}.", jwt.token().rsplit_once('.').unwrap().0);
        assert!(decode::<UserNats>(&no_sig, NOW).is_err());
        let huge = "a".repeat(MAX_TOKEN_SIZE + 1);
        assert!(matches!(
            decode::<UserNats>(&huge, NOW),
            Err(JwtError::TooLarge { .. })
        ));
    }

    #[test]
    fn decode_any_dispatches_on_type() {
        let (_, jwt) = signed_user();
        assert!(matches!(decode_any(jwt.token()), Ok(AnyJwt::User(_))));
    }
}
