//! Client-side TLS for peels that know the master only by the SPKI pin `zester init` printed
//! (`zester peel enrol --pin sha256:…`), with no CA file to start from; and
//! [`served_certificate`], which asks a NATS server which certificate it presents now (the
//! certificate renewal checks that nats-server took the new one).
//!
//! The server sends its certificate chain with the CA in it (`nats/server-chain.pem`); the
//! verifier picks the certificate in that chain whose SPKI pin is the one given, and verifies
//! the server certificate against it as the only trust anchor, name included, exactly as with
//! a CA file. A chain without the pinned CA is refused.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// Trusts exactly the CA with a given SPKI pin.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// A verifier for the CA pinned as `sha256:<hex>`.
    pub fn new(pin: &str) -> PinnedCaVerifier {
        PinnedCaVerifier {
            pin: pin.trim().to_ascii_lowercase(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let pinned = intermediates.iter().find(|cert| {
            crate::pki::spki_pin_from_cert_der(cert.as_ref()).is_ok_and(|pin| pin == self.pin)
        });
        let Some(ca) = pinned else {
            return Err(Error::General(format!(
                "no certificate the server sent has the pin {}: this is not the master you pinned",
                self.pin
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| Error::General(format!("the pinned CA is unusable: {e}")))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client configuration trusting only the CA with `pin`.
pub fn pinned_client_config(pin: &str) -> Result<rustls::ClientConfig, Error> {
    let verifier = Arc::new(PinnedCaVerifier::new(pin));
    Ok(
        rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// Why [`served_certificate`] could not tell which certificate a server presents.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The CA file's text holds no usable certificate.
    #[error("the CA certificate cannot be used as a trust anchor: {0}")]
    Ca(#[source] Error),
    /// A certificate in the CA text is not PEM.
    #[error("the CA certificate is not PEM: {0}")]
    CaPem(#[source] rustls::pki_types::pem::Error),
    /// The TCP connection, or reading the server's INFO line, failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The server did not start with an INFO line.
    #[error("{addr} did not greet like a NATS server (no INFO line)")]
    NotNats {
        /// The server.
        addr: SocketAddr,
    },
    /// The TLS handshake failed (a certificate that does not verify against the CA included).
    #[error("TLS handshake with {addr}: {source}")]
    Handshake {
        /// The server.
        addr: SocketAddr,
        /// What failed (a rustls error inside an I/O error for verification failures).
        source: io::Error,
    },
    /// The handshake finished without a server certificate.
    #[error("{addr} presented no certificate")]
    NoCertificate {
        /// The server.
        addr: SocketAddr,
    },
}

/// The longest INFO line read before the TLS handshake.
const MAX_INFO_LINE: usize = 64 * 1024;

/// Connects to the NATS server at `addr`, reads its INFO line, completes a TLS 1.3 handshake
/// that verifies the server against `ca_pem` for the name `addr`'s IP address, and returns the
/// certificate it presented (DER), then closes. Blocking, each step bounded by `timeout`; no
/// CONNECT is sent, so the server sees a client that left before authenticating.
pub fn served_certificate(
    addr: SocketAddr,
    ca_pem: &str,
    timeout: Duration,
) -> Result<CertificateDer<'static>, ProbeError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(ProbeError::CaPem)?)
            .map_err(ProbeError::Ca)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ProbeError::Ca)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connect = |source| ProbeError::Connect { addr, source };
    let mut tcp = TcpStream::connect_timeout(&addr, timeout).map_err(connect)?;
    tcp.set_read_timeout(Some(timeout)).map_err(connect)?;
    tcp.set_write_timeout(Some(timeout)).map_err(connect)?;
    // NATS greets in clear text first; TLS starts after the INFO line. Read it byte by byte so
    // that nothing of the handshake is read into a buffer here.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        if line.len() >= MAX_INFO_LINE || tcp.read(&mut byte).map_err(connect)? == 0 {
            return Err(ProbeError::NotNats { addr });
        }
        line.push(byte[0]);
    }
    if !line.starts_with(b"INFO ") {
        return Err(ProbeError::NotNats { addr });
    }
    let handshake = |source| ProbeError::Handshake { addr, source };
    let mut tls = rustls::ClientConnection::new(Arc::new(config), ServerName::from(addr.ip()))
        .map_err(|e| handshake(io::Error::other(e)))?;
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).map_err(handshake)?;
    }
    let leaf = tls
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.clone().into_owned())
        .ok_or(ProbeError::NoCertificate { addr })?;
    tls.send_close_notify();
    let _ = tls.complete_io(&mut tcp);
    Ok(leaf)
}
