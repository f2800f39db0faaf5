//! Distributed tracing: each HTTP request through a sidecar continues the caller's W3C or
//! B3 context, and a sampled one becomes a span (client span on the outbound side, server
//! span on the inbound side) exported over OTLP by a task of its own.
//!
//! The request path calls four small hooks: `start` (in `forward::handle`: read the
//! context, decide, write the next hop's context), `on_route` and `retried` (the route and
//! each retry, sampled requests only), and `finish` (attributes, status, and a `try_send`
//! into the exporter's bounded queue). A request that is not sampled costs a few header
//! look-ups: no allocation, no lock. A full queue drops the span and counts it, so a slow
//! or dead collector never delays or fails a request.

pub mod collect;
pub mod context;
pub mod export;
pub mod span;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use http::header::{HeaderMap, HeaderName};
use tokio::sync::{mpsc, Notify};

use crate::config::{Config, Direction, Route, Tracing};
use crate::metrics::Metrics;
use crate::proxy::http::forward::{ConnCtx, Info};
use context::Format;
pub use span::Span;

/// `x-spoke-trace: force` samples a request, when a meshed (mTLS-verified) peer sends it.
pub const FORCE: HeaderName = HeaderName::from_static("x-spoke-trace");

/// Finished spans waiting for the exporter; beyond this they are dropped.
pub const QUEUE: usize = 2048;

/// A finished span, encoded (see `wire`).
pub type Encoded = Vec<u8>;

/// The tracer every listener shares (it lives in `proxy::Shared`).
pub struct Tracer {
    enabled: AtomicBool,
    /// The sampling ratio for new traces, as `f64` bits.
    ratio: AtomicU64,
    settings: ArcSwapOption<Tracing>,
    tx: mpsc::Sender<Encoded>,
    rx: Mutex<Option<mpsc::Receiver<Encoded>>>,
    /// Wakes the exporter when a whole batch waits; otherwise it wakes once per flush
    /// interval, not once per span.
    full: Notify,
    metrics: Arc<Metrics>,
}

// === impl Tracer ===

impl Tracer {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let t = Tracer {
            enabled: AtomicBool::new(false),
            ratio: AtomicU64::new(0f64.to_bits()),
            settings: ArcSwapOption::empty(),
            tx,
            rx: Mutex::new(Some(rx)),
            full: Notify::new(),
            metrics,
        };
        t.configure(cfg);
        t
    }

    /// Takes the settings of a new snapshot (called on every swap).
    pub fn configure(&self, cfg: &Config) {
        match &cfg.tracing {
            Some(t) => {
                self.metrics.show_tracing();
                self.ratio.store(t.sampling.to_bits(), Ordering::Relaxed);
                self.settings.store(Some(Arc::new(t.clone())));
                self.enabled.store(true, Ordering::Release);
            }
            None => {
                self.enabled.store(false, Ordering::Release);
                self.settings.store(None);
            }
        }
    }

    /// The current `tracing:` settings (the exporter reads them for each batch).
    pub fn settings(&self) -> Option<Arc<Tracing>> {
        self.settings.load_full()
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Whether a new trace (no decision from the caller) is sampled.
    fn sample_new(&self, listener: Option<f64>) -> bool {
        let r = listener.unwrap_or_else(|| f64::from_bits(self.ratio.load(Ordering::Relaxed)));
        r >= 1.0 || (r > 0.0 && fastrand::f64() < r)
    }

    /// Queues a finished span; never waits. A full queue drops it and counts it.
    pub fn send(&self, span: Encoded) {
        if self.tx.try_send(span).is_err() {
            self.metrics.trace_spans_dropped.inc();
        } else if QUEUE - self.tx.capacity() >= export::BATCH {
            self.full.notify_one();
        }
    }

    /// The exporter's end of the queue (once).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Encoded>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }

    /// Resolves when a whole batch is queued (or was, since the last call).
    pub async fn batch_ready(&self) {
        self.full.notified().await
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("enabled", &self.enabled())
            .finish()
    }
}

fn random_trace() -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    t[8..].copy_from_slice(&fastrand::u64(1..).to_be_bytes());
    t
}

/// Reads the caller's context, decides whether the request is sampled and, if it is,
/// writes the next hop's context into `headers` and returns its span. `x-spoke-trace` is
/// always removed (tracing on or off); it counts only from a meshed peer.
pub fn start(conn: &ConnCtx, headers: &mut HeaderMap) -> Option<Box<Span>> {
    // Removed even with tracing off, so an app cannot force sampling at the next hop by
    // sending it through a sidecar that does not trace.
    let force = headers
        .remove(FORCE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"force"))
        && conn.tls
        && conn.peer_id.is_some();
    let tracer = &conn.listener.shared.tracer;
    if !tracer.enabled() {
        return None;
    }
    let meshed = conn.tls && conn.peer_id.is_some();
    let incoming = context::extract(headers);
    let sampled = force
        || match incoming.and_then(|c| c.sampled) {
            Some(s) => s,
            // A meshed caller is a sidecar that already decided: a sampled request would
            // carry its context, so this hop starts no trace of its own (no orphan spans).
            None if meshed => false,
            None => tracer.sample_new(conn.listener.cfg.trace_sampling),
        };
    if !sampled {
        return None;
    }
    let (format, ids) = incoming
        .map(|c| (c.format, c.ids))
        .unwrap_or((Format::W3c, None));
    let trace = ids.map(|i| i.trace).unwrap_or_else(random_trace);
    let short = ids.is_some_and(|i| i.short);
    let parent = ids.map(|i| i.span);
    let id = fastrand::u64(1..).to_be_bytes();
    context::inject(headers, format, &trace, short, &id, parent.as_ref());
    let state = match format {
        Format::W3c => headers
            .get(context::TRACESTATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    };
    Some(Box::new(Span {
        trace,
        id,
        parent,
        format,
        short,
        state,
        server: conn.listener.cfg.direction() == Direction::Inbound,
        start_ns: span::now_ns(),
        route: None,
        events: Vec::new(),
    }))
}

/// Names the route a sampled request took (`routes[2]`, or `default` for the listener's
/// own cluster).
pub fn on_route(info: &mut Info, routes: &[Route], route: Option<&Route>) {
    let Some(span) = info.trace.as_mut() else {
        return;
    };
    span.route = Some(
        match route.and_then(|r| routes.iter().position(|x| std::ptr::eq(x, r))) {
            Some(i) => span::RouteName::Index(i),
            None => span::RouteName::Default,
        },
    );
}

/// Records a retry as an event: the try that failed, why, and its endpoint.
pub fn retried(info: &mut Info, reason: &'static str) {
    let (retries, endpoint) = (info.retries, info.endpoint);
    if let Some(span) = info.trace.as_mut() {
        span.retry(retries, reason, endpoint);
    }
}

/// Ends a sampled request's span and queues it for export.
pub fn finish(conn: &ConnCtx, info: &mut Info, status: u16, error: Option<&'static str>) {
    let Some(span) = info.trace.take() else {
        return;
    };
    let peer_id = if span.server {
        conn.peer_id.as_ref()
    } else {
        info.upstream_id.as_ref()
    };
    let outcome = span::Outcome {
        method: info.method.as_str(),
        path: info.path.as_ref().map(|p| p.path()).unwrap_or("/"),
        authority: &info.authority,
        status,
        peer: conn.peer,
        cluster: info.cluster_label(),
        endpoint: info.endpoint,
        peer_id: peer_id.map(|i| i.as_str()),
        retries: info.retries,
        error,
    };
    conn.listener.shared.tracer.send(span.finish(&outcome));
}

#[cfg(test)]
mod tests;
