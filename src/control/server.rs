//! `spoke control`: watches the mesh config directory, versions every valid change and
//! pushes it to each connected sidecar over the discovery stream (ACK/NACK as in xDS), signs
//! workload certificates for token-holders, and reports connected sidecars on `/status`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::certify::Certify;
use super::mesh;
use super::pb::ads::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use super::pb::ads::{Any, DiscoveryRequest, DiscoveryResponse};
use super::pb::identity::identity_server::IdentityServer;
use super::token::TokenKey;
use super::CONFIG_TYPE_URL;
use crate::ca::Ca;
use crate::config::{raw, Identity};
use crate::metrics::ControlMetrics;

/// One valid mesh config, numbered from 1. Version 0 is "nothing loaded yet": a control
/// plane started on a directory without mesh files holds every stream until the first
/// complete load, so no sidecar is ever sent a placeholder it would have to refuse.
pub struct Mesh {
    pub version: u64,
    pub raw: raw::File,
}

impl Mesh {
    pub fn is_loaded(&self) -> bool {
        self.version > 0
    }
}

/// What `/status` shows for one connected sidecar.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SidecarStatus {
    pub node_id: String,
    pub identity: String,
    pub acked_version: Option<String>,
    pub sent_version: Option<String>,
    pub last_nack: Option<String>,
    pub connected_since: u64,
}

/// The control plane's shared state.
pub struct State {
    pub mesh: watch::Sender<Arc<Mesh>>,
    pub ca: Ca,
    pub tokens: TokenKey,
    pub cert_ttl: Duration,
    pub sidecars: Mutex<HashMap<u64, SidecarStatus>>,
    pub last_error: Mutex<Option<Vec<String>>>,
    pub metrics: ControlMetrics,
    next_stream: std::sync::atomic::AtomicU64,
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// `initial` is `None` when the directory holds no mesh file yet: streams wait for one.
    pub fn new(
        initial: Option<raw::File>,
        ca: Ca,
        tokens: TokenKey,
        cert_ttl: Duration,
    ) -> Arc<Self> {
        let version = u64::from(initial.is_some());
        let (tx, _) = watch::channel(Arc::new(Mesh {
            version,
            raw: initial.unwrap_or_default(),
        }));
        let metrics = ControlMetrics::new();
        metrics.mesh_version.set(version as i64);
        Arc::new(State {
            mesh: tx,
            ca,
            tokens,
            cert_ttl,
            sidecars: Mutex::new(HashMap::new()),
            last_error: Mutex::new(None),
            metrics,
            next_stream: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Re-reads the directory; a valid change becomes the next version and is pushed.
    pub fn reload(&self, dir: &std::path::Path) {
        let current = self.mesh.borrow().clone();
        if !current.is_loaded() && mesh::files(dir).is_ok_and(|f| f.is_empty()) {
            return;
        }
        match mesh::load_dir(dir) {
            Ok(raw) => {
                *lock(&self.last_error) = None;
                if current.is_loaded() && current.raw == raw {
                    return;
                }
                let version = current.version + 1;
                self.metrics.mesh_version.set(version as i64);
                self.metrics
                    .config_loads
                    .with_label_values(&["applied"])
                    .inc();
                if version == 1 {
                    tracing::info!(version, "mesh config loaded; serving");
                } else {
                    tracing::info!(version, "mesh config changed; pushing");
                }
                self.mesh.send_replace(Arc::new(Mesh { version, raw }));
            }
            Err(errors) => {
                self.metrics
                    .config_loads
                    .with_label_values(&["rejected"])
                    .inc();
                for e in &errors {
                    tracing::warn!(error = %e, "mesh config refused; keeping the last good version");
                }
                *lock(&self.last_error) = Some(errors.iter().map(|e| e.to_string()).collect());
            }
        }
    }

    /// The `/status` document.
    pub fn status_json(&self) -> String {
        let mut sidecars: Vec<SidecarStatus> = lock(&self.sidecars).values().cloned().collect();
        sidecars.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let mesh = self.mesh.borrow().clone();
        let doc = serde_json::json!({
            "version": mesh.is_loaded().then(|| mesh.version.to_string()),
            "config_error": *lock(&self.last_error),
            "sidecars": sidecars,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
    }
}

fn bearer<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string())
}

fn response(mesh: &Mesh, id: Option<&Identity>) -> DiscoveryResponse {
    let view = mesh::workload_view(&mesh.raw, id);
    DiscoveryResponse {
        version_info: mesh.version.to_string(),
        resources: vec![Any {
            type_url: CONFIG_TYPE_URL.to_string(),
            value: serde_json::to_vec(&view).unwrap_or_default(),
        }],
        canary: false,
        type_url: CONFIG_TYPE_URL.to_string(),
        nonce: format!("{:016x}", fastrand::u64(..)),
    }
}

/// The discovery service.
pub struct Ads(pub Arc<State>);

type ResponseStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let state = self.0.clone();
        let identity = match bearer(&req) {
            Some(t) => Some(state.tokens.verify(&t).map_err(|e| {
                state
                    .metrics
                    .auth_failures
                    .with_label_values(&[e.kind()])
                    .inc();
                Status::unauthenticated(e.to_string())
            })?),
            None => return Err(Status::unauthenticated("a bearer token is required")),
        };
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let id = state
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = serve_stream(&state, id, identity, &mut inbound, tx).await {
                tracing::debug!(error = %e, "discovery stream ended");
            }
            lock(&state.sidecars).remove(&id);
            state.metrics.sidecars.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn serve_stream(
    state: &Arc<State>,
    id: u64,
    identity: Option<Identity>,
    inbound: &mut Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) -> Result<(), Status> {
    state.metrics.sidecars.inc();
    let mut mesh_rx = state.mesh.subscribe();
    // The first request names the node and the type it wants.
    let Some(first) = inbound.message().await? else {
        return Ok(());
    };
    if first.type_url != CONFIG_TYPE_URL {
        let _ = tx
            .send(Err(Status::invalid_argument(format!(
                "unknown type_url {:?}; this server serves {CONFIG_TYPE_URL}",
                first.type_url
            ))))
            .await;
        return Ok(());
    }
    let node_id = first.node.map(|n| n.id).unwrap_or_default();
    lock(&state.sidecars).insert(
        id,
        SidecarStatus {
            node_id: node_id.clone(),
            identity: identity.as_ref().map(|i| i.to_string()).unwrap_or_default(),
            acked_version: None,
            sent_version: None,
            last_nack: None,
            connected_since: unix_now(),
        },
    );
    tracing::info!(node = %node_id, identity = ?identity.as_ref().map(|i| i.as_str()), "sidecar connected");
    // Nothing is sent before the first complete load: a placeholder would only be refused.
    let current = loop {
        let current = mesh_rx.borrow_and_update().clone();
        if current.is_loaded() {
            break current;
        }
        tokio::select! {
            changed = mesh_rx.changed() => if changed.is_err() { return Ok(()) },
            msg = inbound.message() => if msg?.is_none() { return Ok(()) },
        }
    };
    // A new stream always gets the full current state.
    let mut nonce = send(state, id, &current, identity.as_ref(), &tx).await?;
    loop {
        tokio::select! {
            changed = mesh_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let mesh = mesh_rx.borrow_and_update().clone();
                nonce = send(state, id, &mesh, identity.as_ref(), &tx).await?;
            }
            msg = inbound.message() => {
                let Some(req) = msg? else { return Ok(()) };
                if req.response_nonce != nonce {
                    // A stale nonce answers an older push: ignored, as in xDS.
                    tracing::debug!(node = %node_id, "stale nonce ignored");
                    continue;
                }
                let mut sidecars = lock(&state.sidecars);
                let Some(s) = sidecars.get_mut(&id) else { continue };
                match req.error_detail {
                    Some(err) => {
                        state.metrics.nacks.inc();
                        tracing::warn!(node = %node_id, version = %req.version_info, error = %err.message, "sidecar rejected the config (NACK)");
                        s.last_nack = Some(err.message);
                        if !req.version_info.is_empty() {
                            s.acked_version = Some(req.version_info);
                        }
                    }
                    None => {
                        state.metrics.acks.inc();
                        s.acked_version = Some(req.version_info);
                        s.last_nack = None;
                    }
                }
            }
        }
    }
}

async fn send(
    state: &State,
    id: u64,
    mesh: &Mesh,
    identity: Option<&Identity>,
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
) -> Result<String, Status> {
    let resp = response(mesh, identity);
    let nonce = resp.nonce.clone();
    if let Some(s) = lock(&state.sidecars).get_mut(&id) {
        s.sent_version = Some(resp.version_info.clone());
    }
    state.metrics.pushes.inc();
    tx.send(Ok(resp))
        .await
        .map_err(|_| Status::cancelled("stream closed"))?;
    Ok(nonce)
}

/// Start-up settings for `spoke control`.
pub struct Settings {
    pub config_dir: PathBuf,
    pub ca: Ca,
    pub tokens: TokenKey,
    pub cert_ttl: Duration,
}

/// A running control plane.
pub struct Running {
    pub listen: SocketAddr,
    pub stats: SocketAddr,
    pub state: Arc<State>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Loads the mesh config (it must be valid to start), binds, and serves. A directory with no
/// mesh file yet is not an error: the control plane waits for one and holds every stream.
pub async fn start(
    settings: Settings,
    listen: tokio::net::TcpListener,
    stats: tokio::net::TcpListener,
) -> Result<Running, Vec<String>> {
    let initial = if mesh::files(&settings.config_dir)
        .map_err(|e| vec![e])?
        .is_empty()
    {
        tracing::info!(dir = %settings.config_dir.display(), "no mesh config file yet; streams wait for the first one");
        None
    } else {
        Some(
            mesh::load_dir(&settings.config_dir)
                .map_err(|e| e.iter().map(|d| d.to_string()).collect::<Vec<_>>())?,
        )
    };
    let td = settings.ca.trust_domain().to_string();
    // The serving certificate: the control plane's own identity, from its own CA.
    let server_id = Identity::parse(&super::control_identity(&td)).map_err(|e| vec![e])?;
    let issued = settings
        .ca
        .issue(&server_id, Duration::from_secs(365 * 24 * 3600))
        .map_err(|e| vec![e.to_string()])?;
    let material = crate::tls::load_material(
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        settings.ca.root_pem().as_bytes(),
    )
    .map_err(|e| vec![e.to_string()])?;
    let server_cfg = server_tls(&material).map_err(|e| vec![e])?;
    let state = State::new(initial, settings.ca, settings.tokens, settings.cert_ttl);
    let listen_addr = listen.local_addr().map_err(|e| vec![e.to_string()])?;
    let stats_addr = stats.local_addr().map_err(|e| vec![e.to_string()])?;

    let mut tasks = Vec::new();
    // Watch the directory (inotify on the directory, plus a poll).
    {
        let state = state.clone();
        let dir = settings.config_dir.clone();
        tasks.push(tokio::spawn(async move { watch_dir(state, dir).await }));
    }
    // The gRPC server on TLS connections accepted here.
    let (conn_tx, conn_rx) = mpsc::channel::<Result<crate::proxy::io::Io, std::io::Error>>(64);
    tasks.push(tokio::spawn(accept_tls(listen, server_cfg, conn_tx)));
    {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_service(AggregatedDiscoveryServiceServer::new(Ads(state.clone())))
                .add_service(IdentityServer::new(Certify(state)))
                .serve_with_incoming(ReceiverStream::new(conn_rx))
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "control server stopped");
            }
        }));
    }
    tasks.push(tokio::spawn(super::server_stats::serve(
        stats,
        state.clone(),
    )));
    tracing::info!(listen = %listen_addr, stats = %stats_addr, "spoke control ready");
    Ok(Running {
        listen: listen_addr,
        stats: stats_addr,
        state,
        tasks,
    })
}

fn server_tls(m: &crate::tls::Material) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

async fn accept_tls(
    listener: tokio::net::TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    tx: mpsc::Sender<Result<crate::proxy::io::Io, std::io::Error>>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await {
                Ok(Ok(tls)) => {
                    let _ = tx
                        .send(Ok(crate::proxy::io::Io::Server(Box::new(tls))))
                        .await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "control TLS handshake failed")
                }
                Err(_) => tracing::debug!(peer = %peer, "control TLS handshake timed out"),
            }
        });
    }
}

async fn watch_dir(state: Arc<State>, dir: PathBuf) {
    use notify::Watcher;
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
        if r.is_ok() {
            let _ = tx.try_send(());
        }
    })
    .ok();
    if let Some(w) = watcher.as_mut() {
        if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, "cannot watch the config directory; polling");
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
        }
        state.reload(&dir);
    }
}
