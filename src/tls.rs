//! TLS for the mesh: loading and checking workload certificates, building the rustls
//! server and client configs that carry the SPIFFE verifiers, and classifying handshake
//! failures into the fixed `reason` labels of `spoke_tls_handshake_errors_total`. This
//! module builds configs and verifies identities; it never forwards bytes.

pub mod store;
pub mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{Identity, TlsVersion};

pub use store::CertStore;

/// ALPN protocols the inbound side offers.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Why TLS material was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("certificate: {0}")]
    Identity(#[from] verify::SpiffeError),
    #[error("private key does not match the certificate")]
    KeyMismatch,
    #[error("certificate expired at unix time {0}")]
    Expired(i64),
    #[error("certificate is not valid before unix time {0}")]
    NotYetValid(i64),
    #[error("certificate is not signed by the trust bundle: {0}")]
    Untrusted(String),
    #[error("cannot build TLS config: {0}")]
    Build(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The crypto provider used everywhere (aws-lc-rs, post-quantum X25519MLKEM768 key
/// exchange first), so one is compiled. AES-128-GCM is preferred over AES-256-GCM: both are
/// strong, and 128 is markedly cheaper per byte on the mesh's bulk hops.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    });
    Arc::new(p)
}

/// A checked certificate chain, key and trust bundle.
pub struct Material {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Arc<RootCertStore>,
    /// The trust bundle as read, for `/certs`.
    pub roots_der: Vec<CertificateDer<'static>>,
    pub identity: Identity,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Parses and checks PEM material: a chain whose leaf has one SPIFFE ID, a key that
/// matches it, a non-empty bundle that the chain verifies against, and dates that hold now.
pub fn load_material(
    cert_pem: &[u8],
    key_pem: &[u8],
    roots_pem: &[u8],
) -> Result<Material, TlsError> {
    let pem = |what: &'static str| {
        move |e: rustls::pki_types::pem::Error| TlsError::Pem {
            what,
            reason: e.to_string(),
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(pem("cert"))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Pem {
            what: "cert",
            reason: "no certificate found".into(),
        });
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem("key"))?;
    let mut roots = RootCertStore::empty();
    let mut roots_der = Vec::new();
    for r in CertificateDer::pem_slice_iter(roots_pem) {
        let r = r.map_err(pem("roots"))?;
        roots_der.push(r.clone());
        roots.add(r).map_err(|e| TlsError::Pem {
            what: "roots",
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem {
            what: "roots",
            reason: "no certificate found".into(),
        });
    }
    let identity = verify::spiffe_id(leaf)?;
    let (not_before, not_after) = validity(leaf)?;
    let now = UnixTime::now().as_secs() as i64;
    if now > not_after {
        return Err(TlsError::Expired(not_after));
    }
    if now < not_before {
        return Err(TlsError::NotYetValid(not_before));
    }
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::Pem {
            what: "key",
            reason: e.to_string(),
        })?;
    if CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .is_err()
    {
        return Err(TlsError::KeyMismatch);
    }
    let parsed =
        ParsedCertificate::try_from(leaf).map_err(|e| TlsError::Untrusted(e.to_string()))?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &chain[1..],
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| TlsError::Untrusted(e.to_string()))?;
    Ok(Material {
        chain,
        key,
        roots: Arc::new(roots),
        roots_der,
        identity,
        not_before,
        not_after,
    })
}

fn validity(der: &CertificateDer<'_>) -> Result<(i64, i64), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| verify::SpiffeError::Parse(e.to_string()))?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// Prebuilt rustls configs for one set of material; swapped whole on rotation.
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    /// Outbound, no ALPN: opaque TCP.
    pub client: Arc<ClientConfig>,
    /// Outbound HTTP/2 between sidecars (ALPN `h2`).
    pub client_h2: Arc<ClientConfig>,
    /// Outbound HTTP/1.1 (ALPN `http/1.1`), for upgrades such as WebSocket.
    pub client_h1: Arc<ClientConfig>,
    pub identity: Identity,
    pub not_after: i64,
    /// The chain (leaf first) and trust bundle these configs use, for `/certs`.
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_UP: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        TlsVersion::Tls13 => TLS13_ONLY,
        TlsVersion::Tls12 => TLS12_UP,
    }
}

/// Builds the inbound (server) and outbound (client) configs for `m`.
pub fn build_configs(m: &Material, min: TlsVersion) -> Result<TlsConfigs, TlsError> {
    let provider = provider();
    let td = m.identity.trust_domain().to_string();
    let build = |e: rustls::Error| TlsError::Build(e.to_string());
    let client_verifier =
        verify::SpiffeClientVerifier::new(m.roots.clone(), td.clone(), provider.clone())
            .map_err(TlsError::Build)?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(min))
        .map_err(build)?
        .with_client_cert_verifier(Arc::new(client_verifier))
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(build)?;
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    let server_verifier = verify::SpiffeServerVerifier::new(
        m.roots.clone(),
        td,
        provider.signature_verification_algorithms,
    );
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(min))
        .map_err(build)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(server_verifier))
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
        .map_err(build)?;
    // The server name is a placeholder (identities are URIs), so do not send it.
    client.enable_sni = false;
    let with_alpn = |p: &[u8]| {
        let mut c = client.clone();
        c.alpn_protocols = vec![p.to_vec()];
        Arc::new(c)
    };
    Ok(TlsConfigs {
        server: Arc::new(server),
        client_h2: with_alpn(b"h2"),
        client_h1: with_alpn(b"http/1.1"),
        client: Arc::new(client),
        identity: m.identity.clone(),
        not_after: m.not_after,
        chain: m.chain.clone(),
        roots: m.roots_der.clone(),
    })
}

/// The server name given to rustls for outbound handshakes; never sent (SNI is off) and
/// never checked (the SPIFFE verifier ignores it).
pub fn placeholder_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::DnsName(
        rustls::pki_types::DnsName::try_from("spoke.mesh")
            .unwrap_or_else(|_| unreachable!("constant name is valid")),
    )
}

/// Classifies a failed handshake into a fixed reason label.
pub fn handshake_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "handshake_timeout",
            std::io::ErrorKind::ConnectionReset => "reset",
            _ => "io",
        };
    };
    match err {
        E::NoCertificatesPresented => "no_client_cert",
        E::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::UnknownIssuer => "unknown_ca",
            C::BadSignature => "bad_signature",
            C::Other(o) => {
                if let Some(s) = o.0.downcast_ref::<verify::SpiffeError>() {
                    s.reason()
                } else if format!("{o:?}").contains("CaUsedAsEndEntity") {
                    "ca_leaf"
                } else {
                    "bad_certificate"
                }
            }
            _ => "bad_certificate",
        },
        E::AlertReceived(_) => "peer_alert",
        E::PeerIncompatible(_) => "incompatible",
        E::NoApplicationProtocol => "alpn",
        _ => "protocol",
    }
}

/// Whether `first` looks like the start of a TLS handshake record.
pub fn looks_like_tls(first: &[u8]) -> bool {
    matches!(first, [0x16, 0x03, ..] | [0x16])
}
