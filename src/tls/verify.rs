//! SPIFFE certificate verification. rustls' WebPKI code checks the chain, validity dates,
//! key usage and CA:TRUE leaves; on top of that a peer's leaf must carry exactly one
//! `spiffe://` URI SAN, in our trust domain. rustls' own server verifier wants a DNS or IP
//! name, and SPIFFE certificates carry only a URI, hence these two verifiers.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::config::Identity;

/// Why a peer's leaf is not an acceptable SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    #[error("certificate has {0} URI SANs; a SPIFFE leaf has exactly one")]
    SeveralUris(usize),
    #[error("{0}")]
    BadId(String),
    #[error("peer {peer} is in trust domain {got}, not {want}")]
    ForeignTrustDomain {
        peer: String,
        got: String,
        want: String,
    },
    #[error("leaf certificate is a CA (CA:TRUE)")]
    CaLeaf,
}

impl SpiffeError {
    pub fn reason(&self) -> &'static str {
        match self {
            SpiffeError::Parse(_) => "bad_certificate",
            SpiffeError::NoSpiffeId | SpiffeError::SeveralUris(_) | SpiffeError::BadId(_) => {
                "bad_identity"
            }
            SpiffeError::ForeignTrustDomain { .. } => "foreign_trust_domain",
            SpiffeError::CaLeaf => "ca_leaf",
        }
    }
}

/// Every URI SAN of a certificate.
pub fn uri_sans(der: &CertificateDer<'_>) -> Result<Vec<String>, SpiffeError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| SpiffeError::Parse(e.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name {
                uris.push((*u).to_string());
            }
        }
    }
    Ok(uris)
}

/// The SPIFFE ID of a leaf: exactly one URI SAN, a valid `spiffe://` ID, not a CA.
pub fn spiffe_id(der: &CertificateDer<'_>) -> Result<Identity, SpiffeError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| SpiffeError::Parse(e.to_string()))?;
    if cert.is_ca() {
        return Err(SpiffeError::CaLeaf);
    }
    let uris = uri_sans(der)?;
    match uris.as_slice() {
        [] => Err(SpiffeError::NoSpiffeId),
        [one] => Identity::parse(one).map_err(SpiffeError::BadId),
        many => Err(SpiffeError::SeveralUris(many.len())),
    }
}

/// `spiffe_id` plus the trust-domain check.
pub fn peer_identity(
    der: &CertificateDer<'_>,
    trust_domain: &str,
) -> Result<Identity, SpiffeError> {
    let id = spiffe_id(der)?;
    if id.trust_domain() != trust_domain {
        return Err(SpiffeError::ForeignTrustDomain {
            peer: id.to_string(),
            got: id.trust_domain().to_string(),
            want: trust_domain.to_string(),
        });
    }
    Ok(id)
}

fn spiffe_failure(e: SpiffeError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Verifies client certificates: WebPKI chain checks, then the SPIFFE checks.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl SpiffeClientVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: String,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, String> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(SpiffeClientVerifier {
            inner,
            trust_domain,
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        peer_identity(end_entity, &self.trust_domain).map_err(spiffe_failure)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies server certificates: WebPKI chain checks (no name check: the "server name" is
/// a placeholder), then the SPIFFE checks. Which identity the server must have is checked
/// by the caller after the handshake, so one client config serves every cluster and they
/// share one session cache.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    trust_domain: String,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: String,
        algs: WebPkiSupportedAlgorithms,
    ) -> Self {
        SpiffeServerVerifier {
            roots,
            trust_domain,
            algs,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        peer_identity(end_entity, &self.trust_domain).map_err(spiffe_failure)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
