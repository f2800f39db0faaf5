//! Start-up of `spoke control`: `run` loads the CA and token key, binds, and calls `start`,
//! which takes bound listeners (so tests start it on port 0), loads the first mesh, issues
//! the control plane's own serving certificate, and starts the tasks: the directory watch,
//! the TLS accept loop feeding the gRPC server (discovery + certificates), and `/status`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ads::Ads;
use super::certify::Certify;
use super::mesh;
use super::pb::ads::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use super::pb::identity::identity_server::IdentityServer;
use super::state::State;
use super::token::TokenKey;
use crate::ca::Ca;
use crate::config::{raw, Identity};
use crate::proxy::io::Io;
use crate::watch::{Watch, POLL_INTERVAL};

/// What `spoke control` is started with, before anything is read or bound.
pub struct Options {
    /// The mesh config directory (watched).
    pub config_dir: Option<PathBuf>,
    /// The CA directory (`root.pem`, `root.key`; `token.key` is kept there).
    pub ca_dir: PathBuf,
    pub listen: SocketAddr,
    pub stats: SocketAddr,
    pub cert_ttl: Duration,
    /// Discover Services from Kubernetes and review ServiceAccount tokens: `Some(None)`
    /// for the in-cluster config (or `KUBECONFIG`), `Some(Some(file))` for a kubeconfig.
    pub kubernetes: Option<Option<PathBuf>>,
    /// With Kubernetes: the audience ServiceAccount tokens must carry (TokenReview
    /// `spec.audiences`); `None` takes the API server's own.
    pub token_audience: Option<String>,
}

/// Why `spoke control` could not start: bad settings (exit 2) or a runtime failure such as
/// a port in use (exit 1). Each message is one line for the operator.
#[derive(Debug)]
pub struct StartError {
    pub messages: Vec<String>,
    pub exit_code: u8,
}

impl StartError {
    fn usage(m: impl std::fmt::Display) -> Self {
        StartError {
            messages: vec![format!("error: {m}")],
            exit_code: 2,
        }
    }
}

/// Start-up settings once the CA and token key are loaded.
pub struct Settings {
    pub config_dir: Option<PathBuf>,
    pub ca: Ca,
    pub tokens: TokenKey,
    pub cert_ttl: Duration,
    /// With Kubernetes on: the API server's client and the token audience.
    pub kubernetes: Option<Kubernetes>,
}

/// What Kubernetes discovery and TokenReview need.
pub struct Kubernetes {
    pub client: kube::Client,
    pub token_audience: Option<String>,
}

/// A running control plane; dropping it stops every task.
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

/// The control plane's entry: reads the CA and token key, binds both ports, starts.
pub async fn run(opts: Options) -> Result<Running, StartError> {
    if opts.config_dir.is_none() && opts.kubernetes.is_none() {
        return Err(StartError::usage(
            "spoke control needs --config-dir DIR (or --kubernetes) and --ca DIR",
        ));
    }
    let ca = Ca::load(&opts.ca_dir).map_err(StartError::usage)?;
    let tokens = TokenKey::load_or_create(&opts.ca_dir).map_err(StartError::usage)?;
    let kubernetes = match &opts.kubernetes {
        None => None,
        Some(file) => Some(Kubernetes {
            client: kube_client(file.as_deref())
                .await
                .map_err(StartError::usage)?,
            token_audience: opts.token_audience,
        }),
    };
    let settings = Settings {
        config_dir: opts.config_dir,
        ca,
        tokens,
        cert_ttl: opts.cert_ttl,
        kubernetes,
    };
    let bind = |a: SocketAddr| async move {
        TcpListener::bind(a).await.map_err(|e| StartError {
            messages: vec![format!("error: cannot bind {a}: {e}")],
            exit_code: 1,
        })
    };
    let listen = bind(opts.listen).await?;
    let stats = bind(opts.stats).await?;
    start(settings, listen, stats)
        .await
        .map_err(|messages| StartError {
            messages,
            exit_code: 2,
        })
}

/// A client of the API server: from `kubeconfig` when given, else from `KUBECONFIG` when
/// set, else the in-cluster config (the pod's ServiceAccount token and CA).
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    use kube::config::{Config, KubeConfigOptions, Kubeconfig};
    let opts = KubeConfigOptions::default();
    let config = match kubeconfig {
        Some(f) => {
            let kc = Kubeconfig::read_from(f).map_err(|e| format!("--kubeconfig {}: {e}", f.display()))?;
            Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", f.display()))?
        }
        None if std::env::var_os("KUBECONFIG").is_some() => Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| format!("KUBECONFIG: {e}"))?,
        None => Config::incluster().map_err(|e| {
            format!("--kubernetes: not in a pod ({e}); give --kubeconfig FILE to run outside the cluster")
        })?,
    };
    kube::Client::try_from(config).map_err(|e| format!("kubernetes client: {e}"))
}

/// The directory's first mesh; `None` (not an error) when it has no mesh file yet.
fn initial_mesh(dir: Option<&PathBuf>) -> Result<Option<raw::File>, Vec<String>> {
    let Some(dir) = dir else { return Ok(None) };
    if mesh::files(dir).map_err(|e| vec![e])?.is_empty() {
        tracing::info!(dir = %dir.display(), "no mesh config file yet; streams wait for the first one");
        return Ok(None);
    }
    mesh::load_dir(dir)
        .map(Some)
        .map_err(|e| e.iter().map(|d| d.to_string()).collect())
}

/// Loads the mesh config (it must be valid to start), and serves on the bound listeners.
pub async fn start(
    settings: Settings,
    listen: TcpListener,
    stats: TcpListener,
) -> Result<Running, Vec<String>> {
    let initial = initial_mesh(settings.config_dir.as_ref())?;
    let server_cfg = server_tls(&settings.ca)?;
    let td = settings.ca.trust_domain().to_string();
    let reviewer = settings.kubernetes.as_ref().map(|k| {
        super::review::TokenReviewer::new(k.client.clone(), &td, k.token_audience.clone())
    });
    let state = State::new(
        initial,
        settings.kubernetes.is_some(),
        settings.ca,
        settings.tokens,
        reviewer,
        settings.cert_ttl,
    );
    let listen_addr = listen.local_addr().map_err(|e| vec![e.to_string()])?;
    let stats_addr = stats.local_addr().map_err(|e| vec![e.to_string()])?;

    let mut tasks = Vec::new();
    if let Some(dir) = settings.config_dir {
        let state = state.clone();
        let watch = Watch {
            dirs: [dir.clone()].into(),
            poll: POLL_INTERVAL,
            settle: Duration::from_millis(20),
            what: "mesh config directory",
        };
        tasks.push(tokio::spawn(watch.run(move || state.reload(&dir))));
    }
    if let Some(Kubernetes { client, .. }) = settings.kubernetes {
        tracing::info!("watching Kubernetes Services, EndpointSlices and Pods");
        tasks.extend(super::discovery::spawn(client, td, state.clone()));
    }
    // The gRPC server on TLS connections accepted here.
    let (conn_tx, conn_rx) = mpsc::channel::<Result<Io, std::io::Error>>(64);
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

/// The serving TLS config: the control plane's own identity, from its own CA.
fn server_tls(ca: &Ca) -> Result<Arc<rustls::ServerConfig>, Vec<String>> {
    let server_id =
        Identity::parse(&super::control_identity(ca.trust_domain())).map_err(|e| vec![e])?;
    let issued = ca
        .issue(&server_id, Duration::from_secs(365 * 24 * 3600))
        .map_err(|e| vec![e.to_string()])?;
    let m = crate::tls::load_material(
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        ca.root_pem().as_bytes(),
    )
    .map_err(|e| vec![e.to_string()])?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| vec![e.to_string()])?
        .with_no_client_auth()
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| vec![e.to_string()])?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts TCP, completes TLS off the accept loop, and hands finished connections to the
/// gRPC server; a failed or slow handshake is logged and never ends the loop.
async fn accept_tls(
    listener: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    tx: mpsc::Sender<Result<Io, std::io::Error>>,
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
                    let _ = tx.send(Ok(Io::Server(Box::new(tls)))).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "control TLS handshake failed")
                }
                Err(_) => tracing::debug!(peer = %peer, "control TLS handshake timed out"),
            }
        });
    }
}
