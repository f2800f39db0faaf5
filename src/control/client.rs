//! The sidecar's side of the control plane: fetch a workload certificate (a key made here,
//! a CSR and the bootstrap token; renewed at 70% of its lifetime, the old one kept while
//! renewal fails), and follow the incremental discovery stream: stage each push onto the
//! held resources (`held`), validate the result against the local file, apply it with one
//! snapshot swap and ACK, or NACK it and keep serving the last good one. Reconnects with jittered backoff; `/ready` waits for the first good snapshot.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::held::Held;
use super::mesh;
use super::pb::ads::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use super::pb::ads::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status as PbStatus};
use super::pb::identity::identity_client::IdentityClient;
use super::pb::identity::CertifyRequest;
use super::CONFIG_TYPE_URL;
use crate::config::{self, raw, Control, Identity, TlsVersion};
use crate::proxy::Shared;
use crate::snapshot::Snapshot;
use crate::tls::{self, CertStore};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// `config::validate_owned` for a push: a cluster the push left as it was is not checked
/// again but shares the config `prev` holds for it, so a push of one endpoint costs one
/// cluster's validation and allocates nothing for the rest. Errors name the same fields.
fn validate_push(
    merged: raw::File,
    prev: &Snapshot,
    unchanged: impl Fn(&str) -> bool,
) -> Result<config::Config, Vec<config::ConfigError>> {
    let mut names = HashSet::with_capacity(merged.clusters.len());
    let mut errors = Vec::new();
    let mut clusters = Vec::with_capacity(merged.clusters.len());
    for (i, c) in merged.clusters.iter().enumerate() {
        if !names.insert(c.name.as_str()) {
            errors.push(config::ConfigError {
                path: format!("clusters[{i}].name"),
                message: format!("{:?} is defined twice", c.name),
            });
            continue;
        }
        let kept = unchanged(&c.name)
            .then(|| prev.cluster(&c.name))
            .flatten()
            .map(|s| s.config.clone());
        match kept.map(Ok).unwrap_or_else(|| config::validate_cluster(c)) {
            Ok(c) => clusters.push(c),
            // Checked alone, the cluster is `clusters[0]`: put its own index back.
            Err(errs) => errors.extend(errs.into_iter().map(|mut e| {
                if let Some(rest) = e.path.strip_prefix("clusters[0]") {
                    e.path = format!("clusters[{i}]{rest}");
                }
                e
            })),
        }
    }
    let rest = config::validate_without_clusters(&merged, &names);
    drop(names);
    match rest {
        Ok(mut cfg) if errors.is_empty() => {
            cfg.clusters = clusters;
            cfg.raw = merged;
            Ok(cfg)
        }
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            Err(errors)
        }
    }
}

/// Everything the client needs, fixed at start-up.
pub struct Client {
    pub shared: Arc<Shared>,
    /// The proxy's own file (node, admin, stats, listeners...).
    pub local: raw::File,
    pub control: Control,
    pub node_id: String,
    /// Where certificates go; `None` when the file names static certificate files.
    pub certs: Option<Arc<CertStore>>,
    /// The trust bundle PEM that verifies the control plane (and the mesh, without `tls:`).
    pub roots_pem: Vec<u8>,
    /// Set once a pushed config has been applied.
    pub have_config: std::sync::atomic::AtomicBool,
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64())
}

impl Client {
    fn token(&self) -> Result<String, String> {
        let Some(path) = &self.control.token_file else {
            return Err("control.token_file is not set".into());
        };
        std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    async fn channel(&self) -> Result<tonic::transport::Channel, String> {
        connect(
            &self.control.address,
            &self.control.identity,
            &self.roots_pem,
        )
        .await
    }

    /// Gets a certificate for a fresh key; returns its (not_before, not_after).
    async fn certify(&self, store: &CertStore) -> Result<(i64, i64), String> {
        let channel = self.channel().await?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| e.to_string())?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| e.to_string())?;
        let resp = IdentityClient::new(channel)
            .certify(CertifyRequest {
                csr_pem: csr,
                token: self.token()?,
            })
            .await
            .map_err(|s| format!("certificate refused: {}", s.message()))?
            .into_inner();
        // The chain must verify against our own trust bundle, not just the one it came with.
        let material = tls::load_material(
            resp.cert_chain_pem.as_bytes(),
            key.serialize_pem().as_bytes(),
            &self.roots_pem,
        )
        .map_err(|e| e.to_string())?;
        let window = (material.not_before, material.not_after);
        let configs =
            tls::build_configs(&material, store.min_version()).map_err(|e| e.to_string())?;
        tracing::info!(identity = %configs.identity, not_after = configs.not_after, "workload certificate from the control plane");
        store.store(configs);
        Ok(window)
    }

    /// Keeps a valid certificate: first one now, then renewal at 70% of its lifetime.
    async fn certificates(self: Arc<Self>, store: Arc<CertStore>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.certify(&store).await {
                Ok((nb, na)) => {
                    backoff = BACKOFF_MIN;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0);
                    let renew_at = nb + (na - nb) * 7 / 10;
                    let wait = Duration::from_secs((renew_at - now).max(1) as u64);
                    tracing::debug!(?wait, "certificate renewal scheduled");
                    self.update_readiness();
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    // The current certificate (if any) stays in use meanwhile.
                    tracing::warn!(error = %e, retry_in = ?backoff, "certificate request failed");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn update_readiness(&self) {
        let have_cert = self.certs.as_ref().is_none_or(|s| s.current().is_some());
        let have_config = self.have_config.load(std::sync::atomic::Ordering::Acquire);
        if have_cert && have_config {
            self.shared.readiness.set_config_loaded();
        }
    }

    /// Validates the remote config (everything the stream defines) against the local
    /// file; `Ok` holds the snapshot to swap in.
    fn build(
        &self,
        remote: raw::File,
        version: &str,
        unchanged: impl Fn(&str) -> bool,
    ) -> Result<Snapshot, String> {
        let merged = mesh::merge_local(&self.local, remote);
        let prev = self.shared.snapshot.load();
        let cfg = validate_push(merged, &prev, &unchanged).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        // The file's listeners may name clusters only the stream defines; a push must.
        for (i, l) in cfg.listeners.iter().enumerate() {
            if let config::ListenerTarget::Cluster(c) = &l.target {
                if cfg.cluster(c).is_none() {
                    return Err(format!(
                        "listeners[{i}].cluster: cluster {c:?} is not defined in the pushed config"
                    ));
                }
            }
        }
        let unsupported = crate::app::unsupported(&cfg);
        if !unsupported.is_empty() {
            return Err(unsupported
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "));
        }
        Ok(Snapshot::reusing(
            cfg,
            version.to_string(),
            Some(&prev),
            unchanged,
        ))
    }

    /// Stages an incremental push onto `held`, validates the result and swaps it in; the
    /// error is the NACK's message.
    fn apply(&self, held: &mut Held, resp: &DeltaDiscoveryResponse) -> Result<usize, String> {
        if resp.type_url != CONFIG_TYPE_URL {
            return Err(format!("unexpected type_url {:?}", resp.type_url));
        }
        let staged = held.stage(resp)?;
        let snapshot = self.build(held.remote(&staged), &resp.system_version_info, |c| {
            held.unchanged(&staged, c)
        })?;
        self.shared.store(snapshot);
        let n = staged.len();
        held.commit(staged);
        Ok(n)
    }

    /// One incremental discovery stream, until it breaks. It opens with the resources
    /// `held` already has, so the control plane sends only what differs.
    async fn stream(&self, held: &mut Held) -> Result<(), String> {
        let channel = self.channel().await?;
        let (tx, rx) = mpsc::channel(4);
        let node = Some(Node {
            id: self.node_id.clone(),
            cluster: String::new(),
        });
        let first = DeltaDiscoveryRequest {
            node: node.clone(),
            type_url: CONFIG_TYPE_URL.into(),
            initial_resource_versions: held.versions(),
            ..Default::default()
        };
        tx.send(first).await.map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        let bearer = format!("Bearer {}", self.token()?);
        req.metadata_mut().insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| "token is not a valid header value".to_string())?,
        );
        let mut stream = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(req)
            .await
            .map_err(|s| format!("stream refused: {}", s.message()))?
            .into_inner();
        self.shared.metrics.control_connected.set(1);
        tracing::info!(address = %self.control.address, held = held.cluster_count(), "control stream connected");
        let metrics = &self.shared.metrics;
        while let Some(resp) = stream
            .message()
            .await
            .map_err(|s| s.message().to_string())?
        {
            let version = &resp.system_version_info;
            let error_detail = match self.apply(held, &resp) {
                Ok(n) => {
                    tracing::info!(version = %version, resources = n, "config applied");
                    self.shared.record_update("applied", version, None);
                    metrics.config_updates.with_label_values(&["applied"]).inc();
                    self.have_config
                        .store(true, std::sync::atomic::Ordering::Release);
                    self.update_readiness();
                    None
                }
                Err(e) => {
                    tracing::warn!(version = %version, error = %e, "config rejected (NACK); keeping the last good one");
                    self.shared
                        .record_update("rejected", version, Some(e.clone()));
                    metrics
                        .config_updates
                        .with_label_values(&["rejected"])
                        .inc();
                    Some(PbStatus {
                        code: 3,
                        message: e,
                    })
                }
            };
            let reply = DeltaDiscoveryRequest {
                node: node.clone(),
                type_url: CONFIG_TYPE_URL.into(),
                response_nonce: resp.nonce.clone(),
                error_detail,
                ..Default::default()
            };
            if tx.send(reply).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    async fn discovery(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        let mut held = Held::default();
        loop {
            let started = std::time::Instant::now();
            let r = self.stream(&mut held).await;
            self.shared.metrics.control_connected.set(0);
            if started.elapsed() > Duration::from_secs(10) {
                backoff = BACKOFF_MIN;
            }
            match r {
                Ok(()) => {
                    tracing::warn!(retry_in = ?backoff, "control stream closed; serving the last good config")
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "control stream failed; serving the last good config")
                }
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Starts the client's tasks; they run until aborted.
pub fn spawn(client: Client) -> Vec<tokio::task::JoinHandle<()>> {
    let client = Arc::new(client);
    let mut tasks = vec![tokio::spawn(client.clone().discovery())];
    if let Some(store) = client.certs.clone() {
        tasks.push(tokio::spawn(client.certificates(store)));
    }
    tasks
}

/// The TLS minimum version a control-fed certificate store uses.
pub fn default_min_version() -> TlsVersion {
    TlsVersion::Tls13
}

/// A gRPC channel to `spoke control` at `address` over TLS, verified against `roots_pem`
/// and the expected control identity.
pub async fn connect(
    address: &str,
    want: &Identity,
    roots_pem: &[u8],
) -> Result<tonic::transport::Channel, String> {
    let cfg = tls_config(want, roots_pem)?;
    let addr = address.to_string();
    let want = want.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        let cfg = cfg.clone();
        let addr = addr.clone();
        let want = want.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr.as_str()).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(tls::placeholder_name(), tcp)
                .await?;
            let got = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| tls::verify::spiffe_id(leaf).ok());
            if got.as_ref() != Some(&want) {
                return Err(std::io::Error::other(format!(
                    "control plane is {:?}, expected {want}",
                    got.map(|g| g.to_string())
                )));
            }
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_static("http://spoke-control")
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("cannot reach the control plane at {address}: {e}"))
}

fn tls_config(want: &Identity, roots_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(roots_pem) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = tls::provider();
    let verifier = tls::verify::SpiffeServerVerifier::new(
        Arc::new(roots),
        want.trust_domain().to_string(),
        provider.signature_verification_algorithms,
    );
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.enable_sni = false;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(yaml: &str) -> raw::File {
        config::parse_yaml(yaml).unwrap()
    }

    const MESH: &str = "routes: [ { match: { host: b.example }, cluster: b } ]\n\
        clusters:\n\
        - { name: a, endpoints: [ { address: \"10.0.0.1:80\" } ] }\n\
        - { name: b, endpoints: [ { address: \"10.0.0.2:80\" } ] }\n";

    #[test]
    fn a_push_validates_only_what_it_changed() {
        let prev = Snapshot::new(config::validate(&file(MESH)).unwrap(), "1".into());
        let next = MESH.replace("10.0.0.2:80", "10.0.0.3:80");
        let cfg = validate_push(file(&next), &prev, |c| c == "a").unwrap();
        // `a` is the config the last snapshot holds; `b` is the pushed one.
        let a = cfg.cluster("a").unwrap();
        assert!(Arc::ptr_eq(a, &prev.cluster("a").unwrap().config));
        let b = cfg.cluster("b").unwrap();
        assert!(!Arc::ptr_eq(b, &prev.cluster("b").unwrap().config));
        assert_eq!(b.endpoints[0].address.to_string(), "10.0.0.3:80");
        // Even a broken `a` would not be looked at: the push did not carry it.
        let broken = next.replace("10.0.0.1:80", "not an address");
        assert!(validate_push(file(&broken), &prev, |c| c == "a").is_ok());
    }

    #[test]
    fn errors_name_the_pushed_clusters_place() {
        let prev = Snapshot::new(config::validate(&file(MESH)).unwrap(), "1".into());
        let bad = MESH
            .replace("10.0.0.2:80", "10.0.0.2")
            .replace("cluster: b", "cluster: c");
        let errs: Vec<String> = validate_push(file(&bad), &prev, |c| c == "a")
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        // The same messages a whole validation gives, in the same order.
        let whole: Vec<String> = config::validate(&file(&bad))
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs, whole);
        assert!(
            errs[0].starts_with("clusters[1].endpoints[0].address"),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("routes[0]")), "{errs:?}");
    }
}
