//! The TLS PKI that `zester init` creates for the bundled nats-server: one ECDSA P-256 CA
//! ("zester CA") and one server certificate ("zester-nats") signed by it, plus the CA's SPKI pin
//! (`sha256:<hex>`) that peels compare out of band at enrolment.
//!
//! Everything here is pure apart from key generation: no files are read or written (the caller
//! writes the PEMs, keys 0600) and the clock is an argument (`now`), so certificates can be
//! produced and checked in tests for any date.
//!
//! rcgen writes certificates but, without `x509-parser`, cannot read them. The little reading
//! zester needs (the SubjectPublicKeyInfo for the pin, the names and validity to decide whether to
//! re-issue, the CA's subject and key identifier to issue under an existing CA) is done by a
//! small, bounds-checked DER walker at the bottom of this file. It rejects anything that is not
//! the certificate shape RFC 5280 describes with [`PkiError::MalformedCertificate`] and never
//! panics on input.

use crate::identity::time::{days_from_civil, rfc3339};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::{BASE64, HEXLOWER};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};

/// Common name of the CA certificate. Issuing under an existing CA relies on it: rcgen can only
/// write an issuer name it can rebuild, so the CA's subject must be exactly this.
pub const CA_COMMON_NAME: &str = "zester CA";

/// Common name of the server certificate. Clients check the SANs, not this.
pub const SERVER_COMMON_NAME: &str = "zester-nats";

/// How long the CA is valid: ten years (3652 days), long enough that nobody has to roll the trust
/// anchor that every peel pins during the life of an installation.
pub const CA_VALIDITY: Duration = Duration::from_secs(3652 * 24 * 60 * 60);

/// How long a server certificate is valid by default (`[server] cert_lifetime`): 825 days, the
/// longest lifetime Apple's TLS stack accepts for certificates from private CAs. Re-issuing is
/// cheap (see [`issue_server_cert`]).
pub const SERVER_VALIDITY: Duration = Duration::from_secs(825 * 24 * 60 * 60);

/// How far before `now` certificates start to be valid, so that a peel whose clock is a little
/// behind the server's does not reject a certificate issued a moment ago.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The latest instant X.509 can express (9999-12-31T23:59:59Z), in Unix seconds.
const MAX_X509_UNIX_SECONDS: i64 = 253_402_300_799;

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A server name is neither an IP literal nor a DNS name a certificate can carry.
    #[error("invalid server name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server certificate would have no names, so no client could ever verify it.
    #[error(
        "no server names given: a server certificate needs at least one DNS name or IP address"
    )]
    NoNames,
    /// `now` (plus the certificate lifetime) is outside what X.509 validity can express.
    #[error(
        "the clock reads Unix time {unix_seconds}, for which no certificate can be issued (the \
         clock must be past 1970 and the certificate must end before the year 10000); check the \
         system clock"
    )]
    ClockOutOfRange {
        /// `now` in seconds since the Unix epoch (negative before 1970).
        unix_seconds: i64,
    },
    /// The system could not produce a fresh key pair.
    #[error("could not generate an ECDSA P-256 key pair: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    /// rcgen refused to build or sign a certificate.
    #[error("could not create the {what} certificate: {source}")]
    Signing {
        /// Which certificate ("CA" or "server").
        what: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// A private key PEM could not be loaded.
    #[error(
        "the private key PEM cannot be used: {reason}; expected an unencrypted PKCS#8 \
         \"PRIVATE KEY\" block such as the ca-key.pem written by `zester init`"
    )]
    InvalidKeyPem {
        /// What the key parser reported.
        reason: String,
    },
    /// A certificate PEM does not hold a well-formed X.509 certificate.
    #[error("malformed certificate: {reason}")]
    MalformedCertificate {
        /// Where the structure went wrong.
        reason: String,
    },
    /// The CA private key is not the key of the CA certificate.
    #[error(
        "the CA private key does not belong to the CA certificate (their public keys differ); \
         use the CA key that was generated together with this ca.pem"
    )]
    CaKeyMismatch,
    /// The CA certificate was not made by zester, so its subject cannot be reproduced as issuer.
    #[error(
        "the CA certificate's subject is not CN={CA_COMMON_NAME:?} as written by zester, so zester \
         cannot issue server certificates under it; use the CA created by `zester init`"
    )]
    ForeignCa,
    /// The CA certificate is no longer valid, so nothing it signs would verify.
    #[error(
        "the CA certificate expired at {at}; create a new PKI and distribute the new ca.pem \
         (and its pin) to every peel"
    )]
    CaExpired {
        /// The CA's notAfter, as an RFC 3339 UTC timestamp.
        at: String,
    },
}

/// The generated PKI, PEM-encoded. The key PEMs are secrets (callers write them 0600).
#[derive(Clone, PartialEq, Eq)]
pub struct Pki {
    /// The self-signed CA certificate: clients' trust anchor (`ca.pem`).
    pub ca_cert_pem: String,
    /// The CA private key (PKCS#8). Secret; needed only to re-issue the server certificate.
    pub ca_key_pem: String,
    /// The server certificate for nats-server's `tls.cert_file`.
    pub server_cert_pem: String,
    /// The server private key (PKCS#8) for nats-server's `tls.key_file`. Secret.
    pub server_key_pem: String,
}

impl Pki {
    /// The CA's SPKI pin (`sha256:<hex>`), the value printed for out-of-band trust at enrolment.
    pub fn ca_pin(&self) -> Result<String, PkiError> {
        spki_pin_from_cert_pem(&self.ca_cert_pem)
    }
}

impl fmt::Debug for Pki {
    /// Shows the certificates but never the private keys, so a `{:?}` in a log cannot leak them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"[secret]")
            .field("server_cert_pem", &self.server_cert_pem)
            .field("server_key_pem", &"[secret]")
            .finish()
    }
}

/// Names the server certificate is valid for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerNames {
    /// DNS names (subjectAltName dNSName), lowercase.
    pub dns: Vec<String>,
    /// IP addresses (subjectAltName iPAddress).
    pub ips: Vec<IpAddr>,
}

impl ServerNames {
    /// localhost, 127.0.0.1, ::1, the given hostname (if non-empty and a valid DNS name), plus
    /// `extra` entries (each either an IP literal or a DNS name; dedupe; reject invalid with
    /// PkiError::InvalidName { name, reason }).
    ///
    /// The hostname comes from the operating system and may be anything, so an unusable one is
    /// skipped rather than failing `zester init`; `extra` comes from the operator's configuration,
    /// so a mistake there is reported. DNS names are lowercased before deduplication.
    pub fn defaults(hostname: &str, extra: &[String]) -> Result<ServerNames, PkiError> {
        let mut names = ServerNames {
            dns: vec!["localhost".to_owned()],
            ips: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        };
        if let Ok(host) = normalize_dns_name(hostname) {
            names.push_dns(host);
        }
        for name in extra {
            names.add(name)?;
        }
        Ok(names)
    }

    /// Adds one name, an IP literal or a DNS name, unless it is already present.
    pub fn add(&mut self, name: &str) -> Result<(), PkiError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            if ip.is_unspecified() {
                return Err(PkiError::InvalidName {
                    name: name.to_owned(),
                    reason: "the unspecified address (0.0.0.0 or ::) is a listen address, not one \
                             clients connect to; list the address clients actually use",
                });
            }
            if !self.ips.contains(&ip) {
                self.ips.push(ip);
            }
            return Ok(());
        }
        let dns = normalize_dns_name(name).map_err(|reason| PkiError::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        self.push_dns(dns);
        Ok(())
    }

    /// Whether every name in `other` is also in `self` (DNS names compared case-insensitively):
    /// if the configured names are covered by the certificate's, no re-issue is needed.
    pub fn covers(&self, other: &ServerNames) -> bool {
        other.ips.iter().all(|ip| self.ips.contains(ip))
            && other
                .dns
                .iter()
                .all(|d| self.dns.iter().any(|s| s.eq_ignore_ascii_case(d)))
    }

    fn push_dns(&mut self, dns: String) {
        if !self.dns.contains(&dns) {
            self.dns.push(dns);
        }
    }

    /// Checks names that may have been built by hand (the fields are public) before they go into
    /// a certificate; rcgen itself only checks that a DNS name is ASCII.
    fn to_sans(&self) -> Result<Vec<SanType>, PkiError> {
        if self.dns.is_empty() && self.ips.is_empty() {
            return Err(PkiError::NoNames);
        }
        let mut sans = Vec::with_capacity(self.dns.len() + self.ips.len());
        for name in &self.dns {
            let invalid = |reason| PkiError::InvalidName {
                name: name.clone(),
                reason,
            };
            normalize_dns_name(name).map_err(invalid)?;
            let ia5 = name.as_str().try_into().map_err(|_| invalid("not ASCII"))?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(self.ips.iter().copied().map(SanType::IpAddress));
        Ok(sans)
    }
}

/// Validates a DNS name for a dNSName SAN and returns it lowercased.
///
/// Strict on purpose (letters, digits, hyphens; no wildcards, no underscores): a name that a TLS
/// client would refuse to match is better rejected at `zester init` than discovered at the first
/// failed connection.
fn normalize_dns_name(name: &str) -> Result<String, &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.len() > 253 {
        return Err("a DNS name is at most 253 characters long");
    }
    if name.ends_with('.') {
        return Err("ends with a dot; write the name without the trailing dot");
    }
    let mut last_label = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label (a leading dot or two dots in a row)");
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 characters");
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(match bad {
                '*' => "wildcard names are not supported; list each name the server is reached by",
                c if !c.is_ascii() => "is not ASCII; use the punycode (xn--) form of the name",
                _ => {
                    "contains a character other than letters, digits, '-' and '.' (an IPv6 \
                      address must be written without brackets or zone)"
                }
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label that starts or ends with '-'");
        }
        last_label = label;
    }
    // "10.0.0.256" or "10.1" is a mistyped IP address, not a host name; top-level domains are
    // never all-numeric, so this cannot reject a real DNS name.
    if last_label.bytes().all(|b| b.is_ascii_digit()) {
        return Err("looks like an IP address but is not a valid one");
    }
    Ok(name.to_ascii_lowercase())
}

/// ECDSA P-256 CA "zester CA" (10 years validity, CA:true, pathlen 0, key usages cert sign + crl
/// sign) and a server certificate signed by it (SANs from `names`, EKU serverAuth, valid until
/// `now + server_lifetime`, CN zester-nats).
///
/// Both certificates start [`CLOCK_SKEW`] before `now`. The server certificate also carries
/// keyUsage digitalSignature, basicConstraints CA:false and an authority key identifier.
pub fn generate(
    names: &ServerNames,
    now: SystemTime,
    server_lifetime: Duration,
) -> Result<Pki, PkiError> {
    let sans = names.to_sans()?;
    let (not_before, not_after) = validity_window(now, CA_VALIDITY)?;

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::KeyGeneration)?;
    let mut ca_params = ca_params(KeyIdMethod::Sha256);
    ca_params.not_before = not_before.into();
    ca_params.not_after = not_after.into();
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| PkiError::Signing { what: "CA", source })?;

    let issuer = Issuer::new(ca_params, &ca_key);
    let (server_cert_pem, server_key_pem) =
        sign_server_cert(&issuer, sans, now, server_lifetime, None)?;
    Ok(Pki {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        server_cert_pem,
        server_key_pem,
    })
}

/// Issues a fresh server certificate with the existing CA, valid until `now + lifetime` (for
/// renewing it, or re-issuing when names change).
///
/// Returns `(certificate PEM, private key PEM)`; the key is new every time. Checks first that the
/// key belongs to the certificate ([`PkiError::CaKeyMismatch`]), that the CA is one zester made
/// ([`PkiError::ForeignCa`]) and that it has not expired ([`PkiError::CaExpired`]). The server
/// certificate never outlives the CA: its notAfter is cut to the CA's if that comes first.
pub fn issue_server_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    names: &ServerNames,
    now: SystemTime,
    lifetime: Duration,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::KeyGeneration)?;
    let public = P256PublicKey::from_point(key.public_key_raw())?;
    let cert_pem = issue_server_cert_for(ca_cert_pem, ca_key_pem, &public, names, now, lifetime)?;
    Ok((cert_pem, key.serialize_pem()))
}

/// `sha256:<lowercase hex>` of the DER SubjectPublicKeyInfo of the CA key (the standard SPKI pin,
/// like HPKP / curl --pinnedpubkey sha256 but in hex). Computed from the key PEM.
pub fn spki_pin_from_key_pem(key_pem: &str) -> Result<String, PkiError> {
    Ok(spki_pin(&load_key(key_pem)?.subject_public_key_info()))
}

/// The same pin computed from a certificate PEM (the first CERTIFICATE block), by extracting the
/// SubjectPublicKeyInfo from the certificate DER with the bounds-checked DER walker in this
/// module. Malformed input gives [`PkiError::MalformedCertificate`], never a panic. Peels that
/// only have ca.pem use this to check a pin.
pub fn spki_pin_from_cert_pem(cert_pem: &str) -> Result<String, PkiError> {
    spki_pin_from_cert_der(&cert_der_from_pem(cert_pem)?)
}

/// The same pin from a DER certificate (as TLS presents it).
pub fn spki_pin_from_cert_der(der: &[u8]) -> Result<String, PkiError> {
    Ok(spki_pin(Cert::parse(der)?.spki))
}

/// What zester reads back from an existing certificate to decide whether to re-issue it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The subjectAltName DNS names and IP addresses (other name forms are ignored).
    pub names: ServerNames,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The SPKI pin of the certified key, as [`spki_pin_from_cert_pem`] computes it.
    pub spki_pin: String,
    /// The serial number, lowercase hex of its DER content bytes (a certificate's name in logs).
    pub serial: String,
    /// Whether the certificate may also authenticate a TLS *client* (no extendedKeyUsage, or
    /// one listing clientAuth): a cluster's routes are mutual TLS, so each node presents its
    /// server certificate as a client too. Certificates from before clusters lack it.
    pub client_auth: bool,
}

/// Reads the names, validity and pin of a certificate PEM (the first CERTIFICATE block), e.g. to
/// re-issue the server certificate when [`CertSummary::names`] no longer
/// [covers](ServerNames::covers) the configured names or `not_after` is near.
pub fn inspect_cert_pem(cert_pem: &str) -> Result<CertSummary, PkiError> {
    let der = cert_der_from_pem(cert_pem)?;
    let cert = Cert::parse(&der)?;
    let (not_before, not_after) = cert.validity()?;
    Ok(CertSummary {
        names: cert.subject_alt_names()?,
        not_before: not_before.time,
        not_after: not_after.time,
        spki_pin: spki_pin(cert.spki),
        serial: HEXLOWER.encode(cert.serial),
        client_auth: cert.allows_client_auth()?,
    })
}

/// The CA template. Also used to rebuild the issuer of an existing CA, so it must produce the
/// same subject name bytes as when the CA was created.
fn ca_params(key_identifier_method: KeyIdMethod) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = key_identifier_method;
    params
}

/// Generates a server key and signs its certificate, valid from [`CLOCK_SKEW`] before `now` to
/// `now + lifetime`; `cap` bounds notAfter (the CA's notAfter).
fn sign_server_cert(
    issuer: &Issuer<'_, &KeyPair>,
    sans: Vec<SanType>,
    now: SystemTime,
    lifetime: Duration,
    cap: Option<SystemTime>,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::KeyGeneration)?;
    let cert = sign_server_cert_for(issuer, &key, sans, now, lifetime, cap)?;
    Ok((cert, key.serialize_pem()))
}

/// Signs a server certificate for `subject` (a key held elsewhere), valid from [`CLOCK_SKEW`]
/// before `now` to `now + lifetime`, never past `cap`. Server and client use: cluster routes
/// are mutual TLS with the same certificate (DESIGN §9).
fn sign_server_cert_for(
    issuer: &Issuer<'_, &KeyPair>,
    subject: &impl PublicKeyData,
    sans: Vec<SanType>,
    now: SystemTime,
    lifetime: Duration,
    cap: Option<SystemTime>,
) -> Result<String, PkiError> {
    let (not_before, mut not_after) = validity_window(now, lifetime)?;
    if let Some(cap) = cap {
        not_after = not_after.min(cap);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_COMMON_NAME);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    // rcgen derives the serial from the public key when none is given: a certificate renewed
    // for the same key (a node of a cluster keeps its key) needs a serial of its own.
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x01;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params
        .signed_by(subject, issuer)
        .map_err(|source| PkiError::Signing {
            what: "server",
            source,
        })?;
    Ok(cert.pem())
}

/// A P-256 public key known only by its point (the uncompressed SEC1 bytes): what a node that
/// joins a cluster sends so that its certificate can be signed where the CA key is, while its
/// TLS key never leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P256PublicKey(Vec<u8>);

impl P256PublicKey {
    /// The key from its uncompressed point (65 bytes, starting with 0x04).
    pub fn from_point(point: &[u8]) -> Result<P256PublicKey, PkiError> {
        if point.len() != 65 || point[0] != 0x04 {
            return Err(malformed(
                "a P-256 public key is the 65-byte uncompressed point",
            ));
        }
        Ok(P256PublicKey(point.to_vec()))
    }

    /// The public key of a PEM private key made by [`generate_server_key`].
    pub fn of_key_pem(key_pem: &str) -> Result<P256PublicKey, PkiError> {
        P256PublicKey::from_point(load_key(key_pem)?.public_key_raw())
    }

    /// The uncompressed point.
    pub fn point(&self) -> &[u8] {
        &self.0
    }

    /// What nats-server's `pinned_certs` lists for a certificate of this key: the lowercase
    /// hex sha256 of its DER SubjectPublicKeyInfo (nats-server hashes the peer certificate's
    /// `RawSubjectPublicKeyInfo`), the hex of [`spki_pin_from_key_pem`].
    pub fn route_pin(&self) -> String {
        HEXLOWER.encode(&Sha256::digest(self.subject_public_key_info()))
    }
}

/// The `pinned_certs` entry of the certificate `cert_pem` (see [`P256PublicKey::route_pin`]).
pub fn route_pin_from_cert_pem(cert_pem: &str) -> Result<String, PkiError> {
    let pin = spki_pin_from_cert_pem(cert_pem)?;
    Ok(pin.trim_start_matches("sha256:").to_string())
}

impl PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// A new server private key (PEM), for a node to keep and have certified elsewhere.
pub fn generate_server_key() -> Result<String, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::KeyGeneration)?;
    Ok(key.serialize_pem())
}

/// Signs with the CA a server certificate for `subject`, a key that stays on another node, for
/// `names`, valid until `now + lifetime` (never past the CA).
pub fn issue_server_cert_for(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    subject: &P256PublicKey,
    names: &ServerNames,
    now: SystemTime,
    lifetime: Duration,
) -> Result<String, PkiError> {
    let sans = names.to_sans()?;
    let ca_der = cert_der_from_pem(ca_cert_pem)?;
    let ca = Cert::parse(&ca_der)?;
    let ca_key = load_key(ca_key_pem)?;
    if ca_key.subject_public_key_info() != ca.spki {
        return Err(PkiError::CaKeyMismatch);
    }
    let ca_not_after = ca.validity()?.1;
    if now >= ca_not_after.time {
        return Err(PkiError::CaExpired {
            at: rfc3339(ca_not_after.unix_seconds),
        });
    }
    let key_id = match ca.subject_key_id()? {
        Some(id) => KeyIdMethod::PreSpecified(id.to_vec()),
        None => KeyIdMethod::Sha256,
    };
    let issuer = Issuer::new(ca_params(key_id), &ca_key);
    let cert_pem = sign_server_cert_for(
        &issuer,
        subject,
        sans,
        now,
        lifetime,
        Some(ca_not_after.time),
    )?;
    let cert_der = cert_der_from_pem(&cert_pem)?;
    if Cert::parse(&cert_der)?.issuer != ca.subject {
        return Err(PkiError::ForeignCa);
    }
    Ok(cert_pem)
}

/// `(now - CLOCK_SKEW, now + lifetime)`, checked to be expressible in a certificate. The check
/// also keeps the `SystemTime` to `OffsetDateTime` conversion inside rcgen from overflowing.
fn validity_window(
    now: SystemTime,
    lifetime: Duration,
) -> Result<(SystemTime, SystemTime), PkiError> {
    let out_of_range = || PkiError::ClockOutOfRange {
        unix_seconds: unix_seconds(now),
    };
    if now < UNIX_EPOCH {
        return Err(out_of_range());
    }
    let not_before = now.checked_sub(CLOCK_SKEW).ok_or_else(out_of_range)?;
    let not_after = now.checked_add(lifetime).ok_or_else(out_of_range)?;
    if unix_seconds(not_after) > MAX_X509_UNIX_SECONDS {
        return Err(out_of_range());
    }
    Ok((not_before, not_after))
}

fn load_key(key_pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidKeyPem {
        reason: e.to_string(),
    })
}

fn spki_pin(spki_der: &[u8]) -> String {
    format!("sha256:{}", HEXLOWER.encode(&Sha256::digest(spki_der)))
}

/// The DER of the first `CERTIFICATE` block of a PEM document.
fn cert_der_from_pem(pem: &str) -> Result<Vec<u8>, PkiError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN).ok_or_else(|| {
        malformed("no -----BEGIN CERTIFICATE----- line found (is this a PEM file?)")
    })?;
    let body = &pem[start + BEGIN.len()..];
    let end = body
        .find(END)
        .ok_or_else(|| malformed("the CERTIFICATE block has no -----END CERTIFICATE----- line"))?;
    let base64: Vec<u8> = body[..end]
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    BASE64
        .decode(&base64)
        .map_err(|e| malformed(format!("the CERTIFICATE block is not valid base64: {e}")))
}

fn malformed(reason: impl Into<String>) -> PkiError {
    PkiError::MalformedCertificate {
        reason: reason.into(),
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// ---------------------------------------------------------------------------------------------
// The DER walker. It reads only what zester needs and checks every length against the bytes
// that are actually there, so truncated or hostile input ends in MalformedCertificate.
// ---------------------------------------------------------------------------------------------

const TAG_BOOLEAN: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_VERSION: u8 = 0xa0; // [0] EXPLICIT, constructed
const TAG_ISSUER_UID: u8 = 0x81; // [1] IMPLICIT BIT STRING
const TAG_SUBJECT_UID: u8 = 0x82; // [2] IMPLICIT BIT STRING
const TAG_EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT, constructed
const TAG_SAN_DNS: u8 = 0x82; // GeneralName dNSName [2] IMPLICIT IA5String
const TAG_SAN_IP: u8 = 0x87; // GeneralName iPAddress [7] IMPLICIT OCTET STRING

/// Content bytes of the OID 2.5.29.14 (subjectKeyIdentifier).
const OID_SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
/// Content bytes of the OID 2.5.29.17 (subjectAltName).
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// Content bytes of the OID 2.5.29.37 (extKeyUsage).
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
/// Content bytes of the OID 1.3.6.1.5.5.7.3.2 (id-kp-clientAuth).
const OID_KP_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// One DER element.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    /// The contents, without tag and length.
    value: &'a [u8],
    /// The whole encoding, tag and length included (what the pin hashes, what names compare).
    raw: &'a [u8],
}

/// A cursor over consecutive DER elements (a document, or the contents of a SEQUENCE).
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn read(&mut self, what: &str) -> Result<Tlv<'a>, PkiError> {
        let input = self.rest;
        let Some((&tag, after_tag)) = input.split_first() else {
            return Err(malformed(format!("{what}: missing (input ends early)")));
        };
        if tag & 0x1f == 0x1f {
            return Err(malformed(format!(
                "{what}: multi-byte tag, which X.509 certificates do not use"
            )));
        }
        let Some((&first, after_first)) = after_tag.split_first() else {
            return Err(malformed(format!(
                "{what}: length missing (input ends early)"
            )));
        };
        let (len, after_len) = if first < 0x80 {
            (usize::from(first), after_first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 {
                return Err(malformed(format!(
                    "{what}: indefinite length, which DER forbids"
                )));
            }
            if count > 4 {
                return Err(malformed(format!(
                    "{what}: length field of {count} bytes is absurd for a certificate"
                )));
            }
            let Some((len_bytes, after_len)) = after_first.split_at_checked(count) else {
                return Err(malformed(format!(
                    "{what}: length cut off (input ends early)"
                )));
            };
            let len = len_bytes
                .iter()
                .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
            if len_bytes.first() == Some(&0) || len < 0x80 {
                return Err(malformed(format!(
                    "{what}: length not minimally encoded, which DER forbids"
                )));
            }
            let len = usize::try_from(len)
                .map_err(|_| malformed(format!("{what}: length {len} too large")))?;
            (len, after_len)
        };
        if after_len.len() < len {
            return Err(malformed(format!(
                "{what}: says it is {len} bytes long but only {} remain (truncated?)",
                after_len.len()
            )));
        }
        let header_len = input.len() - after_len.len();
        let (raw, rest) = input.split_at(header_len + len);
        let (_, value) = raw.split_at(header_len);
        self.rest = rest;
        Ok(Tlv { tag, value, raw })
    }

    fn expect(&mut self, tag: u8, what: &str) -> Result<Tlv<'a>, PkiError> {
        let tlv = self.read(what)?;
        if tlv.tag != tag {
            return Err(malformed(format!(
                "{what}: expected tag 0x{tag:02x}, found 0x{:02x}",
                tlv.tag
            )));
        }
        Ok(tlv)
    }

    /// Reads the next element only if it has `tag` (for OPTIONAL fields).
    fn optional(&mut self, tag: u8, what: &str) -> Result<Option<Tlv<'a>>, PkiError> {
        if self.rest.first() == Some(&tag) {
            self.read(what).map(Some)
        } else {
            Ok(None)
        }
    }

    fn finish(&self, what: &str) -> Result<(), PkiError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{what}: {} unexpected bytes after the last field",
                self.rest.len()
            )))
        }
    }
}

/// An instant read from a certificate's validity.
#[derive(Debug, Clone, Copy)]
struct CertTime {
    unix_seconds: i64,
    time: SystemTime,
}

/// The parts of a certificate zester reads, borrowed from its DER.
struct Cert<'a> {
    /// The serialNumber INTEGER's content bytes.
    serial: &'a [u8],
    /// The issuer Name, whole encoding.
    issuer: &'a [u8],
    /// The validity SEQUENCE's contents.
    validity: &'a [u8],
    /// The subject Name, whole encoding.
    subject: &'a [u8],
    /// The SubjectPublicKeyInfo, whole encoding: exactly what an SPKI pin hashes.
    spki: &'a [u8],
    /// The contents of the `[3]` extensions wrapper, if present.
    extensions: Option<&'a [u8]>,
}

impl<'a> Cert<'a> {
    /// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }, with
    /// tbsCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
    /// validity, subject, subjectPublicKeyInfo, [1] [2] unique IDs OPTIONAL, [3] extensions
    /// OPTIONAL } (RFC 5280 §4.1). Every field is checked for its tag and for fitting in its parent.
    fn parse(der: &'a [u8]) -> Result<Cert<'a>, PkiError> {
        let mut doc = Reader::new(der);
        let cert = doc.expect(TAG_SEQUENCE, "Certificate")?;
        doc.finish("Certificate")?;

        let mut outer = Reader::new(cert.value);
        let tbs = outer.expect(TAG_SEQUENCE, "tbsCertificate")?;
        outer.expect(TAG_SEQUENCE, "signatureAlgorithm")?;
        outer.expect(TAG_BIT_STRING, "signatureValue")?;
        outer.finish("Certificate")?;

        let mut fields = Reader::new(tbs.value);
        if let Some(version) = fields.optional(TAG_VERSION, "version")? {
            let mut inner = Reader::new(version.value);
            let number = inner.expect(TAG_INTEGER, "version")?;
            inner.finish("version")?;
            if !matches!(number.value, [0] | [1] | [2]) {
                return Err(malformed("version: not v1, v2 or v3"));
            }
        }
        let serial = fields.expect(TAG_INTEGER, "serialNumber")?;
        fields.expect(TAG_SEQUENCE, "signature")?;
        let issuer = fields.expect(TAG_SEQUENCE, "issuer")?;
        let validity = fields.expect(TAG_SEQUENCE, "validity")?;
        let subject = fields.expect(TAG_SEQUENCE, "subject")?;
        let spki = fields.expect(TAG_SEQUENCE, "subjectPublicKeyInfo")?;
        fields.optional(TAG_ISSUER_UID, "issuerUniqueID")?;
        fields.optional(TAG_SUBJECT_UID, "subjectUniqueID")?;
        let extensions = fields.optional(TAG_EXTENSIONS, "extensions")?;
        fields.finish("tbsCertificate")?;

        // SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey
        // BIT STRING }: check the shape so a pin is never computed over something else.
        let mut key = Reader::new(spki.value);
        key.expect(TAG_SEQUENCE, "subjectPublicKeyInfo algorithm")?;
        key.expect(TAG_BIT_STRING, "subjectPublicKey")?;
        key.finish("subjectPublicKeyInfo")?;

        Ok(Cert {
            serial: serial.value,
            issuer: issuer.raw,
            validity: validity.value,
            subject: subject.raw,
            spki: spki.raw,
            extensions: extensions.map(|e| e.value),
        })
    }

    /// `(notBefore, notAfter)`.
    fn validity(&self) -> Result<(CertTime, CertTime), PkiError> {
        let mut fields = Reader::new(self.validity);
        let not_before = parse_time(fields.read("notBefore")?, "notBefore")?;
        let not_after = parse_time(fields.read("notAfter")?, "notAfter")?;
        fields.finish("validity")?;
        Ok((not_before, not_after))
    }

    /// The extnValue contents of the extension with OID `oid`, if present (at most once).
    fn extension(&self, oid: &[u8], what: &str) -> Result<Option<&'a [u8]>, PkiError> {
        let Some(wrapper) = self.extensions else {
            return Ok(None);
        };
        let mut outer = Reader::new(wrapper);
        let list = outer.expect(TAG_SEQUENCE, "extensions")?;
        outer.finish("extensions")?;
        let mut list = Reader::new(list.value);
        let mut found = None;
        while !list.is_empty() {
            let ext = list.expect(TAG_SEQUENCE, "extension")?;
            let mut fields = Reader::new(ext.value);
            let id = fields.expect(TAG_OID, "extension id")?;
            fields.optional(TAG_BOOLEAN, "extension critical flag")?;
            let value = fields.expect(TAG_OCTET_STRING, "extension value")?;
            fields.finish("extension")?;
            if id.value == oid {
                if found.is_some() {
                    return Err(malformed(format!("{what} extension appears twice")));
                }
                found = Some(value.value);
            }
        }
        Ok(found)
    }

    /// SubjectKeyIdentifier ::= OCTET STRING.
    fn subject_key_id(&self) -> Result<Option<&'a [u8]>, PkiError> {
        let Some(value) = self.extension(OID_SUBJECT_KEY_ID, "subjectKeyIdentifier")? else {
            return Ok(None);
        };
        let mut r = Reader::new(value);
        let id = r.expect(TAG_OCTET_STRING, "subjectKeyIdentifier")?;
        r.finish("subjectKeyIdentifier")?;
        Ok(Some(id.value))
    }

    /// ExtKeyUsageSyntax ::= SEQUENCE OF KeyPurposeId: true when absent (any use) or listing
    /// clientAuth.
    fn allows_client_auth(&self) -> Result<bool, PkiError> {
        let Some(value) = self.extension(OID_EXT_KEY_USAGE, "extKeyUsage")? else {
            return Ok(true);
        };
        let mut r = Reader::new(value);
        let list = r.expect(TAG_SEQUENCE, "extKeyUsage")?;
        r.finish("extKeyUsage")?;
        let mut list = Reader::new(list.value);
        while !list.is_empty() {
            if list.expect(TAG_OID, "extKeyUsage purpose")?.value == OID_KP_CLIENT_AUTH {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// GeneralNames ::= SEQUENCE OF GeneralName; dNSName and iPAddress are kept, others skipped.
    fn subject_alt_names(&self) -> Result<ServerNames, PkiError> {
        let mut names = ServerNames::default();
        let Some(value) = self.extension(OID_SUBJECT_ALT_NAME, "subjectAltName")? else {
            return Ok(names);
        };
        let mut r = Reader::new(value);
        let list = r.expect(TAG_SEQUENCE, "subjectAltName")?;
        r.finish("subjectAltName")?;
        let mut list = Reader::new(list.value);
        while !list.is_empty() {
            let name = list.read("subjectAltName entry")?;
            match name.tag {
                TAG_SAN_DNS => {
                    let dns = std::str::from_utf8(name.value)
                        .ok()
                        .filter(|s| s.is_ascii())
                        .ok_or_else(|| malformed("subjectAltName: dNSName is not ASCII"))?;
                    names.dns.push(dns.to_owned());
                }
                TAG_SAN_IP => {
                    let ip = if let Ok(v4) = <[u8; 4]>::try_from(name.value) {
                        IpAddr::from(v4)
                    } else if let Ok(v6) = <[u8; 16]>::try_from(name.value) {
                        IpAddr::from(v6)
                    } else {
                        return Err(malformed(
                            "subjectAltName: iPAddress is neither 4 nor 16 bytes",
                        ));
                    };
                    names.ips.push(ip);
                }
                _ => {}
            }
        }
        Ok(names)
    }
}

/// Time ::= UTCTime "YYMMDDHHMMSSZ" | GeneralizedTime "YYYYMMDDHHMMSSZ" (the DER forms RFC 5280
/// §4.1.2.5 allows; UTCTime years 50..99 are 19xx).
fn parse_time(tlv: Tlv<'_>, what: &str) -> Result<CertTime, PkiError> {
    let bad = |why: &str| malformed(format!("{what}: {why}"));
    let text = std::str::from_utf8(tlv.value).map_err(|_| bad("time is not ASCII"))?;
    let (year, rest) = match tlv.tag {
        TAG_UTC_TIME if text.len() == 13 => {
            let (yy, rest) = text.split_at_checked(2).ok_or_else(|| bad("bad UTCTime"))?;
            let yy = digits(yy).ok_or_else(|| bad("bad UTCTime year"))?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, rest)
        }
        TAG_GENERALIZED_TIME if text.len() == 15 => {
            let (yyyy, rest) = text
                .split_at_checked(4)
                .ok_or_else(|| bad("bad GeneralizedTime"))?;
            (
                digits(yyyy).ok_or_else(|| bad("bad GeneralizedTime year"))?,
                rest,
            )
        }
        TAG_UTC_TIME | TAG_GENERALIZED_TIME => {
            return Err(bad(
                "time is not in the YYMMDDHHMMSSZ / YYYYMMDDHHMMSSZ form",
            ))
        }
        _ => return Err(bad("expected UTCTime or GeneralizedTime")),
    };
    let field = |range: std::ops::Range<usize>| rest.get(range).and_then(digits);
    let (Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        field(0..2),
        field(2..4),
        field(4..6),
        field(6..8),
        field(8..10),
    ) else {
        return Err(bad("time has non-digit characters"));
    };
    if rest.get(10..) != Some("Z") {
        return Err(bad("time does not end in Z (UTC)"));
    }
    let year = i64::from(year);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(bad("time is not a real date and time"));
    }
    let unix_seconds =
        days_from_civil(year, month, day) * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let magnitude = Duration::from_secs(unix_seconds.unsigned_abs());
    let time = if unix_seconds >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
    .ok_or_else(|| bad("time is outside what this system's clock can represent"))?;
    Ok(CertTime { unix_seconds, time })
}

/// A run of ASCII digits as a number (no sign, no spaces; at most 4 digits here).
fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-06-15T16:53:20Z: a fixed clock so validity checks are exact.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_006_400)
    }

    fn names() -> ServerNames {
        ServerNames::defaults(
            "Build-Host",
            &[
                "nats.example.com".to_owned(),
                "10.0.0.5".to_owned(),
                "fd00::5".to_owned(),
            ],
        )
        .expect("valid names")
    }

    fn pem_of(der: &[u8]) -> String {
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            BASE64.encode(der)
        )
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn assert_pin_shape(pin: &str) {
        let hex = pin.strip_prefix("sha256:").expect("sha256: prefix");
        assert_eq!(hex.len(), 64, "{pin}");
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{pin}"
        );
    }

    #[test]
    fn ca_pin_from_key_equals_pin_from_cert() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let from_key = spki_pin_from_key_pem(&pki.ca_key_pem).unwrap();
        let from_cert = spki_pin_from_cert_pem(&pki.ca_cert_pem).unwrap();
        assert_pin_shape(&from_key);
        assert_eq!(from_key, from_cert);
        assert_eq!(pki.ca_pin().unwrap(), from_key);
    }

    #[test]
    fn server_pin_differs_from_ca_pin_and_matches_server_key() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let ca = spki_pin_from_cert_pem(&pki.ca_cert_pem).unwrap();
        let server = spki_pin_from_cert_pem(&pki.server_cert_pem).unwrap();
        assert_ne!(server, ca);
        assert_eq!(server, spki_pin_from_key_pem(&pki.server_key_pem).unwrap());
    }

    #[test]
    fn pin_is_sha256_of_the_spki_in_the_certificate() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let key = KeyPair::from_pem(&pki.ca_key_pem).unwrap();
        let spki = key.subject_public_key_info();
        let der = cert_der_from_pem(&pki.ca_cert_pem).unwrap();
        // Independent of the walker: the SPKI bytes are in the certificate verbatim.
        assert!(contains(&der, &spki));
        let expected = format!("sha256:{}", HEXLOWER.encode(&Sha256::digest(&spki)));
        assert_eq!(spki_pin_from_cert_pem(&pki.ca_cert_pem).unwrap(), expected);
    }

    #[test]
    fn server_certificate_carries_all_names() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let der = cert_der_from_pem(&pki.server_cert_pem).unwrap();
        // Raw bytes first (GeneralName tag, length, value), so this does not trust the walker.
        for (tag, value) in [
            (TAG_SAN_DNS, b"localhost".as_slice()),
            (TAG_SAN_DNS, b"build-host"),
            (TAG_SAN_DNS, b"nats.example.com"),
            (TAG_SAN_IP, &[127, 0, 0, 1]),
            (TAG_SAN_IP, &Ipv6Addr::LOCALHOST.octets()),
            (TAG_SAN_IP, &[10, 0, 0, 5]),
            (TAG_SAN_IP, &"fd00::5".parse::<Ipv6Addr>().unwrap().octets()),
        ] {
            let mut needle = vec![tag, u8::try_from(value.len()).unwrap()];
            needle.extend_from_slice(value);
            assert!(contains(&der, &needle), "SAN {value:?} missing");
        }
        let summary = inspect_cert_pem(&pki.server_cert_pem).unwrap();
        assert_eq!(summary.names, names());
        assert!(summary.names.covers(&names()));
        // serverAuth EKU OID 1.3.6.1.5.5.7.3.1, and clientAuth for cluster routes.
        assert!(contains(
            &der,
            &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01]
        ));
        assert!(summary.client_auth);
        // The CA has no SANs.
        assert_eq!(
            inspect_cert_pem(&pki.ca_cert_pem).unwrap().names,
            ServerNames::default()
        );
    }

    #[test]
    fn a_key_held_elsewhere_is_certified_by_the_ca() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let key_pem = generate_server_key().unwrap();
        let public = P256PublicKey::of_key_pem(&key_pem).unwrap();
        let cert = issue_server_cert_for(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            &P256PublicKey::from_point(public.point()).unwrap(),
            &names(),
            now(),
            SERVER_VALIDITY,
        )
        .unwrap();
        let summary = inspect_cert_pem(&cert).unwrap();
        assert_eq!(summary.spki_pin, spki_pin_from_key_pem(&key_pem).unwrap());
        assert!(summary.client_auth);
        assert_eq!(summary.names, names());
        assert!(P256PublicKey::from_point(&[4; 64]).is_err());
        assert!(P256PublicKey::from_point(&[3; 65]).is_err());
    }

    #[test]
    fn a_certificate_for_servers_only_is_told_apart() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = |usages: Vec<ExtendedKeyUsagePurpose>| {
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.extended_key_usages = usages;
            params.self_signed(&key).unwrap().pem()
        };
        let server_only = pem(vec![ExtendedKeyUsagePurpose::ServerAuth]);
        assert!(!inspect_cert_pem(&server_only).unwrap().client_auth);
        let both = pem(vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]);
        assert!(inspect_cert_pem(&both).unwrap().client_auth);
        assert!(inspect_cert_pem(&pem(Vec::new())).unwrap().client_auth);
    }

    #[test]
    fn validity_periods() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let ca = inspect_cert_pem(&pki.ca_cert_pem).unwrap();
        let server = inspect_cert_pem(&pki.server_cert_pem).unwrap();
        assert_eq!(ca.not_before, now() - CLOCK_SKEW);
        assert_eq!(ca.not_after, now() + CA_VALIDITY);
        assert_eq!(server.not_before, now() - CLOCK_SKEW);
        assert_eq!(server.not_after, now() + SERVER_VALIDITY);
    }

    #[test]
    fn a_short_lifetime_ends_that_long_after_now_despite_the_backdated_start() {
        let twenty = Duration::from_secs(20);
        let pki = generate(&names(), now(), twenty).unwrap();
        let first = inspect_cert_pem(&pki.server_cert_pem).unwrap();
        assert_eq!(first.not_before, now() - CLOCK_SKEW);
        assert_eq!(first.not_after, now() + twenty);
        let later = now() + Duration::from_secs(13);
        let (cert, _) = issue_server_cert(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            &first.names,
            later,
            twenty,
        )
        .unwrap();
        let renewed = inspect_cert_pem(&cert).unwrap();
        assert_eq!(renewed.not_after, later + twenty);
        assert_eq!(renewed.names, first.names);
        assert!(!renewed.serial.is_empty());
        assert_ne!(renewed.serial, first.serial, "a new key, a new serial");
    }

    #[test]
    fn defaults_include_loopback_and_valid_hostname_and_dedupe() {
        let n = ServerNames::defaults(
            "Node7",
            &[
                "LOCALHOST".to_owned(),
                "127.0.0.1".to_owned(),
                "node7".to_owned(),
                "a.example".to_owned(),
                "A.Example".to_owned(),
                "::1".to_owned(),
                "192.0.2.1".to_owned(),
                "192.0.2.1".to_owned(),
            ],
        )
        .unwrap();
        assert_eq!(n.dns, ["localhost", "node7", "a.example"]);
        assert_eq!(
            n.ips,
            [
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                "192.0.2.1".parse::<IpAddr>().unwrap()
            ]
        );
    }

    #[test]
    fn unusable_hostname_is_skipped() {
        for host in ["", "my_host", "-bad", "host.", "ex\u{e9}"] {
            let n = ServerNames::defaults(host, &[]).unwrap();
            assert_eq!(n.dns, ["localhost"], "hostname {host:?}");
        }
    }

    #[test]
    fn invalid_extra_names_are_rejected_with_the_name() {
        let long_label = "a".repeat(64);
        let long_name = ["abcdefghi"; 26].join(".");
        for bad in [
            "",
            "bad_name",
            "-lead.example",
            "trail-.example",
            "a..b",
            ".a",
            "a.",
            "*.example.com",
            "10.0.0.256",
            "10.1",
            "0.0.0.0",
            "::",
            "fe80::1%eth0",
            "[::1]",
            "host name",
            "caf\u{e9}.example",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            match ServerNames::defaults("host", &[bad.to_owned()]) {
                Err(PkiError::InvalidName { name, reason }) => {
                    assert_eq!(name, bad);
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?} should be InvalidName, got {other:?}"),
            }
        }
    }

    #[test]
    fn generate_rejects_hand_built_bad_names_and_empty_names() {
        let bad = ServerNames {
            dns: vec!["bad name".to_owned()],
            ips: vec![],
        };
        assert!(matches!(
            generate(&bad, now(), SERVER_VALIDITY),
            Err(PkiError::InvalidName { .. })
        ));
        assert!(matches!(
            generate(&ServerNames::default(), now(), SERVER_VALIDITY),
            Err(PkiError::NoNames)
        ));
    }

    #[test]
    fn clock_out_of_range_is_an_error() {
        let before_epoch = UNIX_EPOCH - Duration::from_secs(86_400);
        assert!(matches!(
            generate(&names(), before_epoch, SERVER_VALIDITY),
            Err(PkiError::ClockOutOfRange {
                unix_seconds: -86_400
            })
        ));
        // In 9995 the CA's ten years run past 9999-12-31.
        let far = UNIX_EPOCH + Duration::from_secs(253_300_000_000);
        assert!(matches!(
            generate(&names(), far, SERVER_VALIDITY),
            Err(PkiError::ClockOutOfRange { .. })
        ));
    }

    #[test]
    fn truncated_or_garbage_certificates_are_malformed() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let der = cert_der_from_pem(&pki.ca_cert_pem).unwrap();
        for len in 0..der.len() {
            let result = spki_pin_from_cert_pem(&pem_of(&der[..len]));
            assert!(
                matches!(result, Err(PkiError::MalformedCertificate { .. })),
                "truncated to {len}: {result:?}"
            );
            assert!(inspect_cert_pem(&pem_of(&der[..len])).is_err());
        }
        let mut trailing = der.clone();
        trailing.push(0);
        for garbage in [
            String::new(),
            "not a certificate".to_owned(),
            "-----BEGIN CERTIFICATE-----\nAAAA".to_owned(),
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_owned(),
            pem_of(b"garbage bytes that are no DER at all"),
            pem_of(&trailing),
            pem_of(&[0x30, 0x00]),
            pem_of(&[0x30, 0x80, 0x00, 0x00]), // indefinite length
            pem_of(&[0x30, 0x81, 0x05, 1, 2, 3, 4, 5]), // non-minimal length
            pem_of(&[0x30, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff]), // absurd length
            pem_of(&[0x1f, 0x01, 0x00]),       // multi-byte tag
            pki.ca_key_pem.clone(),            // a key is not a certificate
        ] {
            let result = spki_pin_from_cert_pem(&garbage);
            assert!(
                matches!(result, Err(PkiError::MalformedCertificate { .. })),
                "{garbage:?}: {result:?}"
            );
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let der = cert_der_from_pem(&pki.server_cert_pem).unwrap();
        for i in 0..der.len() {
            for flip in [0xff, 0x80, 0x01] {
                let mut bad = der.clone();
                bad[i] ^= flip;
                // Any outcome but a panic is acceptable: a flipped byte inside a value is still
                // a well-formed certificate to a walker that does not check signatures.
                let _ = inspect_cert_pem(&pem_of(&bad));
            }
        }
    }

    #[test]
    fn a_route_pin_is_the_same_from_the_point_the_key_and_the_certificate() {
        let key = generate_server_key().unwrap();
        let point = P256PublicKey::of_key_pem(&key).unwrap();
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let cert = issue_server_cert_for(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            &point,
            &names(),
            now(),
            SERVER_VALIDITY,
        )
        .unwrap();
        let pin = point.route_pin();
        assert_eq!(pin.len(), 64);
        assert_eq!(route_pin_from_cert_pem(&cert).unwrap(), pin);
        assert_eq!(
            spki_pin_from_key_pem(&key).unwrap(),
            format!("sha256:{pin}")
        );
    }

    #[test]
    fn reissue_with_same_ca_gives_new_key_under_same_ca() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let mut more = names();
        more.add("new.example.com").unwrap();
        let later = now() + Duration::from_secs(86_400);
        let (cert, key) = issue_server_cert(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            &more,
            later,
            SERVER_VALIDITY,
        )
        .unwrap();
        assert_ne!(key, pki.server_key_pem);
        let pin = spki_pin_from_cert_pem(&cert).unwrap();
        assert_ne!(pin, pki.ca_pin().unwrap());
        assert_ne!(pin, spki_pin_from_cert_pem(&pki.server_cert_pem).unwrap());
        assert_eq!(pin, spki_pin_from_key_pem(&key).unwrap());

        let summary = inspect_cert_pem(&cert).unwrap();
        assert_eq!(summary.names, more);
        assert!(!inspect_cert_pem(&pki.server_cert_pem)
            .unwrap()
            .names
            .covers(&more));
        assert_eq!(summary.not_after, later + SERVER_VALIDITY);

        // Same chain as the original server certificate: issuer name and authority key id.
        let ca_der = cert_der_from_pem(&pki.ca_cert_pem).unwrap();
        let ca = Cert::parse(&ca_der).unwrap();
        let new_der = cert_der_from_pem(&cert).unwrap();
        let old_der = cert_der_from_pem(&pki.server_cert_pem).unwrap();
        assert_eq!(Cert::parse(&new_der).unwrap().issuer, ca.subject);
        let ski = ca.subject_key_id().unwrap().expect("CA has an SKI");
        for der in [&new_der, &old_der] {
            let mut aki = vec![0x80, u8::try_from(ski.len()).unwrap()];
            aki.extend_from_slice(ski);
            assert!(contains(der, &aki), "AKI does not match the CA's SKI");
        }
    }

    #[test]
    fn reissue_checks_the_ca() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let other = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        assert!(matches!(
            issue_server_cert(
                &pki.ca_cert_pem,
                &other.ca_key_pem,
                &names(),
                now(),
                SERVER_VALIDITY
            ),
            Err(PkiError::CaKeyMismatch)
        ));
        // The server certificate and its key match each other but are not a zester CA.
        assert!(matches!(
            issue_server_cert(
                &pki.server_cert_pem,
                &pki.server_key_pem,
                &names(),
                now(),
                SERVER_VALIDITY
            ),
            Err(PkiError::ForeignCa)
        ));
        assert!(matches!(
            issue_server_cert(
                &pki.ca_cert_pem,
                "not a key",
                &names(),
                now(),
                SERVER_VALIDITY
            ),
            Err(PkiError::InvalidKeyPem { .. })
        ));
        assert!(matches!(
            issue_server_cert("", &pki.ca_key_pem, &names(), now(), SERVER_VALIDITY),
            Err(PkiError::MalformedCertificate { .. })
        ));
        let after_ca = now() + CA_VALIDITY + Duration::from_secs(1);
        match issue_server_cert(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            &names(),
            after_ca,
            SERVER_VALIDITY,
        ) {
            Err(PkiError::CaExpired { at }) => assert_eq!(at, "2035-06-15T16:53:20Z"),
            other => panic!("expected CaExpired, got {other:?}"),
        }
    }

    #[test]
    fn reissued_cert_never_outlives_the_ca() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let near_end = now() + CA_VALIDITY - Duration::from_secs(100 * 86_400);
        let (cert, _) = issue_server_cert(
            &pki.ca_cert_pem,
            &pki.ca_key_pem,
            &names(),
            near_end,
            SERVER_VALIDITY,
        )
        .unwrap();
        assert_eq!(
            inspect_cert_pem(&cert).unwrap().not_after,
            now() + CA_VALIDITY
        );
    }

    #[test]
    fn key_pem_errors() {
        assert!(matches!(
            spki_pin_from_key_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(PkiError::InvalidKeyPem { .. })
        ));
    }

    #[test]
    fn debug_hides_private_keys() {
        let pki = generate(&names(), now(), SERVER_VALIDITY).unwrap();
        let shown = format!("{pki:?}");
        assert!(!shown.contains("PRIVATE KEY"));
        assert!(shown.contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn time_forms() {
        let t = |tag: u8, s: &'static str| {
            parse_time(
                Tlv {
                    tag,
                    value: s.as_bytes(),
                    raw: s.as_bytes(),
                },
                "t",
            )
        };
        assert_eq!(
            t(TAG_UTC_TIME, "500101000000Z").unwrap().unix_seconds,
            -631_152_000
        );
        assert_eq!(
            t(TAG_UTC_TIME, "491231235959Z").unwrap().unix_seconds,
            2_524_607_999
        );
        assert_eq!(
            t(TAG_GENERALIZED_TIME, "20500101000000Z")
                .unwrap()
                .unix_seconds,
            2_524_608_000
        );
        for (tag, bad) in [
            (TAG_UTC_TIME, "250230000000Z"), // 30 February
            (TAG_UTC_TIME, "250101000000+0100"),
            (TAG_UTC_TIME, "2501010000Z"),
            (TAG_UTC_TIME, "25010100000-Z"),
            (TAG_GENERALIZED_TIME, "20250101000060Z"),
            (TAG_GENERALIZED_TIME, "20250101000000.5Z"),
            (TAG_OCTET_STRING, "250101000000Z"),
        ] {
            assert!(
                matches!(t(tag, bad), Err(PkiError::MalformedCertificate { .. })),
                "{bad}"
            );
        }
    }
}
