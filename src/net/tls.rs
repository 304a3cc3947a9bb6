//! Client-side TLS for peels that know the master only by the SPKI pin `zester init` printed
//! (`zester peel enrol --pin sha256:…`), with no CA file to start from.
//!
//! The server sends its certificate chain with the CA in it (`nats/server-chain.pem`); the
//! verifier picks the certificate in that chain whose SPKI pin is the one given, and verifies
//! the server certificate against it as the only trust anchor, name included, exactly as with
//! a CA file. A chain without the pinned CA is refused.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
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
