//! The data plane: accept loops and per-connection handling. Each connection loads one
//! config snapshot when it starts and keeps it to its end.

pub mod authorize;
pub mod capture;
pub mod connect;
pub mod copy;
pub mod counted;
pub mod detect;
pub mod error;
pub mod health;
pub mod http;
pub mod inbound;
pub mod io;
pub mod listener;
pub mod tcp;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::snapshot::Snapshot;
use crate::tls::CertStore;

pub use error::{ErrorKind, ProxyError};

/// What every listener and connection shares: the current snapshot (the one bridge from
/// the control side to the data plane), the runtime state beside it, metrics and
/// readiness.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    /// The workload's TLS configs, when it has a certificate.
    pub tls: Option<Arc<CertStore>>,
    /// Upstream HTTP connections; outlives snapshots so swaps keep warm connections.
    pub pool: http::pool::Pool,
    /// Endpoint and cluster runtime state; outlives snapshots like the pool.
    pub registry: Arc<crate::balance::Registry>,
    /// Receives every inbound authorization decision (the demo prints them).
    pub observer: Option<tokio::sync::mpsc::UnboundedSender<AuthzEvent>>,
    /// Trace sampling and the span queue to the OTLP exporter.
    pub tracer: crate::trace::Tracer,
    /// Ticks after every `store`, so open connections re-check their authorization.
    changes: tokio::sync::watch::Sender<()>,
    /// The last config update from the control plane (`/server_info`, `spoke diagnose`).
    pub last_update: std::sync::Mutex<Option<LastUpdate>>,
    /// The bound ports of this proxy's capture listeners: a captured connection to one of
    /// them on this host would loop, and is refused.
    pub capture_ports: Vec<u16>,
    /// Local app ports that refused HTTP/2 (`app_protocol: auto`): called with HTTP/1.1.
    pub app_http1: http::app_ports::PortSet,
}

/// What became of the last pushed config.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastUpdate {
    /// `applied` or `rejected`.
    pub result: &'static str,
    pub version: String,
    pub error: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

/// One inbound authorization decision.
#[derive(Debug, Clone)]
pub struct AuthzEvent {
    pub port: u16,
    /// The verified SPIFFE ID, or `None` for a plaintext peer.
    pub peer_id: Option<String>,
    pub allowed: bool,
}

impl Shared {
    pub fn new(mut snapshot: Snapshot, metrics: Arc<Metrics>, tls: Option<Arc<CertStore>>) -> Self {
        let registry = Arc::new(crate::balance::Registry::default());
        snapshot.adopt(&registry);
        let tracer = crate::trace::Tracer::new(&snapshot.config, metrics.clone());
        metrics.init_for(&snapshot.config);
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            readiness: Readiness::default(),
            tls,
            pool: Default::default(),
            registry,
            observer: None,
            tracer,
            changes: tokio::sync::watch::Sender::new(()),
            last_update: std::sync::Mutex::new(None),
            capture_ports: Vec::new(),
            app_http1: Default::default(),
        }
    }

    /// Swaps in a new snapshot; connections already open keep the one they loaded, and
    /// those that must re-check their authorization are told.
    pub fn store(&self, mut snapshot: Snapshot) {
        snapshot.adopt(&self.registry);
        self.metrics.set_config_version(&snapshot.version);
        self.tracer.configure(&snapshot.config);
        self.metrics.init_for(&snapshot.config);
        self.snapshot.store(Arc::new(snapshot));
        self.changes.send_replace(());
    }

    /// Records what became of a pushed config.
    pub fn record_update(&self, result: &'static str, version: &str, error: Option<String>) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        *self.last_update.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastUpdate {
            result,
            version: version.to_string(),
            error,
            at,
        });
    }

    /// Ticks after each snapshot stored from now on. Subscribe before loading the snapshot
    /// a decision is made on, so no store between the two goes unseen.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.changes.subscribe()
    }
}
