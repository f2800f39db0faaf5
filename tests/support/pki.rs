//! Per-test PKI made with `spoke::ca` (the same code as `spoke ca`), written to a temp dir
//! that is removed on drop, plus raw TLS clients that present any certificate, good or bad.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use spoke::ca::{Ca, IssueOptions};
use tokio::net::TcpStream;

pub const TD: &str = "cluster.local";
pub const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
pub const BACKEND: &str = "spiffe://cluster.local/ns/default/sa/backend";
pub const INTRUDER: &str = "spiffe://cluster.local/ns/other/sa/intruder";

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "spoke-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate set on disk.
#[derive(Clone, Debug)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub roots: PathBuf,
}

impl Files {
    /// The `tls:` section of a proxy config for these files.
    pub fn yaml(&self, extra: &str) -> String {
        format!(
            "tls: {{ cert: \"{}\", key: \"{}\", roots: \"{}\"{extra} }}\n",
            self.cert.display(),
            self.key.display(),
            self.roots.display()
        )
    }
}

pub struct Pki {
    pub ca: Ca,
    pub dir: TempDir,
}

impl Pki {
    pub fn new(td: &str) -> Self {
        Pki {
            ca: Ca::new(td, Duration::from_secs(3600)).unwrap(),
            dir: TempDir::new("pki"),
        }
    }

    pub fn root_pem(&self) -> &str {
        self.ca.root_pem()
    }

    /// A workload certificate for `id`, written under `name/`.
    pub fn issue(&self, name: &str, id: &str) -> Files {
        self.issue_custom(name, &IssueOptions::workload(id, Duration::from_secs(3600)))
    }

    pub fn issue_custom(&self, name: &str, opts: &IssueOptions) -> Files {
        let issued = self.ca.issue_custom(opts).unwrap();
        self.write(name, &issued.cert_pem, &issued.key_pem, self.ca.root_pem())
    }

    pub fn write(&self, name: &str, cert: &str, key: &str, roots: &str) -> Files {
        let d = self.dir.0.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let f = Files {
            cert: d.join("cert.pem"),
            key: d.join("key.pem"),
            roots: d.join("root.pem"),
        };
        std::fs::write(&f.cert, cert).unwrap();
        std::fs::write(&f.key, key).unwrap();
        std::fs::write(&f.roots, roots).unwrap();
        f
    }
}

/// A TLS client config presenting `files` (no checks on them, so bad certificates can be
/// sent) and verifying the server against `roots_pem` with Spoke's SPIFFE verifier.
pub fn client_config(files: Option<&Files>, roots_pem: &str) -> Arc<rustls::ClientConfig> {
    let provider = spoke::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = spoke::tls::verify::SpiffeServerVerifier::new(
        Arc::new(roots),
        TD.to_string(),
        provider.signature_verification_algorithms,
    );
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let cfg = match files {
        None => builder.with_no_client_auth(),
        Some(f) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&f.cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(&f.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(cfg)
}

/// Connects with TLS, sends `msg`, half-closes, and reads the reply. Any failure (the
/// handshake, or the server's alert after it) is an `Err`.
pub async fn tls_roundtrip(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    msg: &[u8],
) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(addr).await?;
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(spoke::tls::placeholder_name(), tcp)
        .await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).await?;
    Ok(back)
}

/// The DER of the leaf certificate a TLS server presents.
pub async fn presented_cert(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let s = tokio_rustls::TlsConnector::from(cfg)
        .connect(spoke::tls::placeholder_name(), tcp)
        .await
        .unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

pub fn leaf_der(files: &Files) -> Vec<u8> {
    CertificateDer::from_pem_file(&files.cert)
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A client sidecar (sa/web, listener `out`) meshed to a server sidecar (sa/backend,
/// inbound listener `in` forwarding to `app` under an `inbound:` policy that a test may
/// replace while connections are open).
pub struct Pair {
    pub server: spoke::app::Running,
    pub client: spoke::app::Running,
    server_files: Files,
    app: SocketAddr,
}

impl Pair {
    /// `inbound` holds the policy fields of the app's port (`allow: [...]`, `rules: ...`);
    /// `protocol` is the client listener's.
    pub async fn start(pki: &Pki, app: SocketAddr, inbound: &str, protocol: &str) -> Pair {
        let server_files = pki.issue("backend", BACKEND);
        let server = super::proxy(&Self::server_yaml(&server_files, app, inbound)).await;
        let client = super::proxy(&format!(
            "{}{}listeners: [ {{ name: out, address: 127.0.0.1:0, protocol: {protocol}, cluster: backend }} ]\n\
             clusters: [ {{ name: backend, tls: {{ identity: \"{BACKEND}\" }}, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
            super::BASE,
            pki.issue("web", WEB).yaml(""),
            server.listener("in").unwrap()
        ))
        .await;
        Pair {
            server,
            client,
            server_files,
            app,
        }
    }

    fn server_yaml(files: &Files, app: SocketAddr, inbound: &str) -> String {
        format!(
            "{}{}listeners: [ {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: \"{app}\" }} ]\n\
             inbound: [ {{ port: {}, {inbound} }} ]\n",
            super::BASE,
            files.yaml(""),
            app.port()
        )
    }

    /// Swaps a new policy into the server sidecar, as a control-plane push would.
    pub fn set_policy(&self, inbound: &str) {
        let yaml = Self::server_yaml(&self.server_files, self.app, inbound);
        let cfg = spoke::config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
        self.server
            .shared
            .store(spoke::snapshot::Snapshot::from_static(cfg));
    }
}
