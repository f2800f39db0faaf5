//! Starting and stopping a whole proxy from a validated config: bind every socket, build
//! the first snapshot, spawn the accept loops and the admin/stats servers, and later drain.
//! Nothing here knows the CLI, so tests start proxies in-process on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::drain::{self, Drain};
use crate::metrics::Metrics;
use crate::proxy::listener::{self, ListenerCtx};
use crate::proxy::Shared;
use crate::snapshot::Snapshot;
use crate::telemetry::LogHandle;
use crate::tls::CertStore;

/// Start-up choices that are not part of the config file.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Allow the admin server on a non-loopback address.
    pub unsafe_admin: bool,
    /// Lets `POST /logging` change the live filter.
    pub log: Option<LogHandle>,
    /// Receives every inbound authorization decision.
    pub observer: Option<tokio::sync::mpsc::UnboundedSender<crate::proxy::AuthzEvent>>,
    /// Give memory back when the proxy turns quiet (`rest`). `spoke proxy` sets it unless
    /// `--idle-trim false`; off by default for proxies started in-process.
    pub idle_trim: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// Exit code for the CLI: 2 for config problems, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) | StartError::Tls(_) => 2,
            StartError::Bind { .. } => 1,
        }
    }
}

/// A started proxy.
pub struct Running {
    /// Each listener's name and bound address, in config order.
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    pub stats: SocketAddr,
    pub shared: Arc<Shared>,
    drain: Drain,
    drain_timeout: Duration,
    servers: Vec<JoinHandle<()>>,
    accept_loops: Vec<JoinHandle<()>>,
}

/// Parts of the config this version cannot act on yet. Starting with any of them set is
/// an error, so nothing is silently ignored.
pub fn unsupported(cfg: &Config) -> Vec<ConfigError> {
    let mut out = Vec::new();
    if !cfg.workloads.is_empty() {
        out.push(ConfigError {
            path: "workloads".into(),
            message: "belongs in the control plane's mesh config, not a proxy config".into(),
        });
        return out;
    }
    // Parts that need a workload certificate (from files, or from the control plane).
    if cfg.tls.is_none() && cfg.control.is_none() {
        let need = "needs a workload certificate: set tls (cert, key, roots)";
        for (i, c) in cfg.clusters.iter().enumerate() {
            if c.tls.is_some() {
                out.push(ConfigError {
                    path: format!("clusters[{i}].tls"),
                    message: need.into(),
                });
            }
        }
        for (i, p) in cfg.inbound.iter().enumerate() {
            if p.tls != crate::config::TlsMode::Disabled {
                out.push(ConfigError {
                    path: format!("inbound[{i}].tls"),
                    message: format!("{:?} {need}", p.tls).to_lowercase(),
                });
            }
        }
    }
    out
}

/// Everything `spoke proxy` checks before it binds, beyond the schema: parts it cannot act
/// on, the admin address, the certificate files, the control plane's trust bundle.
/// `spoke check` runs exactly this, so the two always agree.
pub fn preflight(cfg: &Config, unsafe_admin: bool) -> Vec<ConfigError> {
    let mut out = unsupported(cfg);
    let err = |path: &str, message: String| ConfigError {
        path: path.into(),
        message,
    };
    if !unsafe_admin && !cfg.admin.ip().is_loopback() {
        out.push(err(
            "admin.address",
            format!(
                "{} is not a loopback address; the admin server can drain the proxy and change logging, so it stays on loopback unless --unsafe-admin is given",
                cfg.admin
            ),
        ));
    }
    if let Some(files) = &cfg.tls {
        if let Err(e) = CertStore::check_files(files) {
            out.push(err(tls_error_path(files, &e), e.to_string()));
        }
    }
    if let Some(c) = &cfg.control {
        if let Some(path) = c.roots.as_ref() {
            if let Err(e) = std::fs::read(path) {
                out.push(err(
                    "control.roots",
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        }
    }
    out
}

/// The `tls.*` field a certificate problem belongs to.
fn tls_error_path(files: &crate::config::TlsFiles, e: &crate::tls::TlsError) -> &'static str {
    use crate::tls::TlsError;
    match e {
        TlsError::Read { path, .. } if *path == files.key.display().to_string() => "tls.key",
        TlsError::Read { path, .. } if *path == files.roots.display().to_string() => "tls.roots",
        TlsError::Pem { what: "key", .. } | TlsError::KeyMismatch => "tls.key",
        TlsError::Pem { what: "roots", .. } => "tls.roots",
        _ => "tls.cert",
    }
}

/// The bound ports of the capture listeners (port 0 in a config becomes the real one).
fn capture_ports(cfgs: &[crate::config::Listener], bound: &[TcpListener]) -> Vec<u16> {
    cfgs.iter()
        .zip(bound)
        .filter(|(l, _)| matches!(l.target, crate::config::ListenerTarget::Capture(_)))
        .filter_map(|(_, s)| s.local_addr().ok().map(|a| a.port()))
        .collect()
}

async fn bind(what: String, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Binds everything and starts serving. Returns once the proxy is ready.
pub async fn start(cfg: Config, opts: Options) -> Result<Running, StartError> {
    let started = std::time::Instant::now();
    let refused = preflight(&cfg, opts.unsafe_admin);
    if !refused.is_empty() {
        return Err(StartError::Config(ConfigErrors(refused)));
    }

    // Bind every socket first, so a port clash fails start-up before anything serves.
    let mut bound = Vec::with_capacity(cfg.listeners.len());
    for l in &cfg.listeners {
        bound.push(bind(format!("listener {}", l.name), l.address).await?);
    }
    let admin_l = bind("admin".into(), cfg.admin).await?;
    let stats_l = bind("stats".into(), cfg.stats).await?;
    let admin_addr = admin_l.local_addr().map_err(|source| StartError::Bind {
        what: "admin".into(),
        addr: cfg.admin,
        source,
    })?;
    let stats_addr = stats_l.local_addr().map_err(|source| StartError::Bind {
        what: "stats".into(),
        addr: cfg.stats,
        source,
    })?;

    let metrics = Arc::new(Metrics::new());
    let tls = match (&cfg.tls, &cfg.control) {
        (Some(files), _) => Some(Arc::new(CertStore::from_files(files, metrics.clone())?)),
        // Certificates come from the control plane.
        (None, Some(_)) => Some(Arc::new(CertStore::empty(
            crate::control::client::default_min_version(),
            metrics.clone(),
        ))),
        (None, None) => None,
    };
    let control_roots = match &cfg.control {
        Some(c) => {
            let path = c
                .roots
                .as_ref()
                .or(cfg.tls.as_ref().map(|t| &t.roots))
                .cloned()
                .unwrap_or_default();
            Some(std::fs::read(&path).map_err(|e| {
                StartError::Config(ConfigErrors(vec![ConfigError {
                    path: "control.roots".into(),
                    message: format!("cannot read {}: {e}", path.display()),
                }]))
            })?)
        }
        None => None,
    };
    let control_cfg = cfg
        .control
        .clone()
        .map(|c| (c, cfg.raw.clone(), cfg.node.id.clone(), cfg.tls.is_none()));
    let drain_timeout = cfg.drain_timeout;
    let listener_cfgs = cfg.listeners.clone();
    let dynamic = cfg.control.is_some();
    let snapshot = if dynamic {
        // Until the first push: the local file alone, and not ready.
        Snapshot::new(cfg, String::new())
    } else {
        Snapshot::from_static(cfg)
    };
    if !dynamic {
        metrics.set_config_version(&snapshot.version);
        metrics.config_updates.with_label_values(&["applied"]).inc();
    }
    let mut shared = Shared::new(snapshot, metrics, tls.clone());
    shared.observer = opts.observer;
    shared.capture_ports = capture_ports(&listener_cfgs, &bound);
    let shared = Arc::new(shared);
    if !dynamic {
        shared.readiness.set_config_loaded();
    }

    let (drain, watch) = Drain::new();
    let mut bound_listeners = Vec::with_capacity(bound.len());
    for (l, sock) in listener_cfgs.iter().zip(&bound) {
        let addr = sock.local_addr().map_err(|source| StartError::Bind {
            what: format!("listener {}", l.name),
            addr: l.address,
            source,
        })?;
        bound_listeners.push((l.clone(), addr));
    }
    let state = Arc::new(AdminState {
        shared: shared.clone(),
        drain: drain.trigger(),
        log: opts.log,
        started,
        listeners: bound_listeners,
    });
    let mut servers = vec![
        tokio::spawn(admin::serve_admin(admin_l, state.clone())),
        tokio::spawn(admin::serve_stats(stats_l, state)),
        tokio::spawn(crate::proxy::health::run(shared.clone())),
        crate::trace::export::spawn(shared.clone()),
    ];
    if opts.idle_trim {
        servers.push(tokio::spawn(crate::rest::run(shared.clone())));
    }
    if let Some((control, local, node_id, certs_from_control)) = control_cfg {
        shared.metrics.show_control();
        let node_id = if node_id.is_empty() {
            format!("spoke-{}", std::process::id())
        } else {
            node_id
        };
        servers.extend(crate::control::client::spawn(
            crate::control::client::Client {
                shared: shared.clone(),
                local,
                control,
                node_id,
                certs: if certs_from_control {
                    tls.clone()
                } else {
                    None
                },
                roots_pem: control_roots.unwrap_or_default(),
                have_config: Default::default(),
            },
        ));
    }
    if let Some(store) = tls {
        if let Some(c) = store.current() {
            tracing::info!(identity = %c.identity, "workload certificate loaded");
        }
        servers.push(tokio::spawn(store.watch()));
    }

    let mut listeners = Vec::with_capacity(bound.len());
    let mut accept_loops = Vec::with_capacity(bound.len());
    for (l, sock) in listener_cfgs.into_iter().zip(bound) {
        let addr = sock.local_addr().map_err(|source| StartError::Bind {
            what: format!("listener {}", l.name),
            addr: l.address,
            source,
        })?;
        tracing::info!(listener = %l.name, address = %addr, "listening");
        listeners.push((l.name.clone(), addr));
        let ctx = Arc::new(ListenerCtx::new(l, shared.clone(), watch.clone()));
        accept_loops.push(tokio::spawn(listener::run(sock, ctx)));
    }
    drop(watch);
    shared.readiness.set_listeners_bound();
    tracing::info!(admin = %admin_addr, stats = %stats_addr, "spoke proxy ready");

    Ok(Running {
        listeners,
        admin: admin_addr,
        stats: stats_addr,
        shared,
        drain,
        drain_timeout,
        servers,
        accept_loops,
    })
}

// === impl Running ===

impl Running {
    /// The bound address of the listener called `name`.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Starts a drain from outside (tests, signal handlers).
    pub fn trigger(&self) -> drain::Trigger {
        self.drain.trigger()
    }

    /// Resolves when something (a signal handler, `POST /drain`) starts a drain.
    pub async fn drain_requested(&self) {
        self.drain.requested().await
    }

    /// Drains: stop accepting, let open connections finish up to the drain timeout, cut
    /// the rest, stop the admin servers. Returns true when nothing had to be cut.
    pub async fn shutdown(self) -> bool {
        self.shared.readiness.set_draining();
        tracing::info!(timeout = ?self.drain_timeout, "draining");
        let clean = self.drain.run(self.drain_timeout).await;
        for t in self.accept_loops {
            let _ = t.await;
        }
        if clean {
            tracing::info!("drained: every connection finished");
        } else {
            tracing::warn!("drain deadline passed: open connections were closed");
        }
        for s in self.servers {
            s.abort();
        }
        clean
    }
}
