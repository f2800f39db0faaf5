//! Distributed tracing: each HTTP request through a sidecar continues the caller's W3C or
//! B3 context, and a sampled one becomes a span (client span on the outbound side, server
//! span on the inbound side) exported over OTLP by a task of its own.
//!
//! The request path calls four small hooks: `start` (in `forward::handle`: read the
//! context, decide, write the next hop's context), `on_route` and `retried` (the route and
//! each retry, sampled requests only), and `finish` (attributes and status, encoded straight
//! into this worker thread's batch buffer, which the exporter takes whole). A request that
//! is not sampled costs one pass over its header names: no allocation, no lock. A full
//! buffer drops the span and counts it, so a slow or dead collector never delays or fails a
//! request.

pub mod collect;
pub mod context;
pub mod export;
pub mod span;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use http::header::{HeaderMap, HeaderName};
use tokio::sync::Notify;

use crate::config::{Config, Direction, Route, Tracing};
use crate::metrics::Metrics;
use crate::proxy::http::forward::{ConnCtx, Info};
use context::Format;
pub use span::Span;

/// `x-spoke-trace: force` samples a request, when a meshed (mTLS-verified) peer sends it.
pub const FORCE: HeaderName = HeaderName::from_static("x-spoke-trace");

/// Finished spans one shard holds for the exporter; beyond this they are dropped.
pub const QUEUE: usize = 2048;

/// The most a shard's buffer keeps allocated between batches (a batch's usual size is a
/// few hundred KiB at most).
const KEEP: usize = 1 << 20;

/// Finished spans waiting for the exporter: encoded and framed as elements of
/// `ScopeSpans.spans` (see `wire`), back to back.
#[derive(Debug, Default)]
pub struct Queued {
    pub bytes: Vec<u8>,
    pub spans: usize,
}

/// The tracer every listener shares (it lives in `proxy::Shared`).
pub struct Tracer {
    enabled: AtomicBool,
    /// The sampling ratio for new traces, as `f64` bits.
    ratio: AtomicU64,
    settings: ArcSwapOption<Tracing>,
    /// Finished spans, a shard per worker thread. A span is written into its thread's
    /// shard in place: the lock is one the exporter contends only when it swaps the
    /// buffer out, once per batch. (A `Vec` per span sent through a channel cost an
    /// allocation, a channel send and, on the exporter's thread, a copy and a free per
    /// span.)
    shards: Box<[Mutex<Queued>]>,
    /// Whether an exporter has taken the shards.
    exporting: AtomicBool,
    /// Wakes the exporter when a shard gets its first span.
    queued: Notify,
    /// Wakes the exporter when a shard holds a whole batch; otherwise it waits for the
    /// flush interval, not once per span.
    full: Notify,
    metrics: Arc<Metrics>,
}

// === impl Tracer ===

impl Tracer {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Self {
        // Twice the cores: threads pick a shard round-robin, and threads that are not
        // workers (tests, blocking threads) should rarely land on a worker's shard.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let t = Tracer {
            enabled: AtomicBool::new(false),
            ratio: AtomicU64::new(0f64.to_bits()),
            settings: ArcSwapOption::empty(),
            shards: (0..(2 * cores).clamp(2, 64))
                .map(|_| Mutex::default())
                .collect(),
            exporting: AtomicBool::new(false),
            queued: Notify::new(),
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

    /// Ends `span` and writes it into this thread's shard; never waits for the exporter.
    /// A full shard (the exporter is behind) drops the span and counts it.
    pub fn record(&self, span: &Span, outcome: &span::Outcome<'_>) {
        let end_ns = span::now_ns();
        let shard = &self.shards[shard_index(self.shards.len())];
        let mut q = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if q.spans >= QUEUE {
            drop(q);
            self.metrics.trace_spans_dropped.inc();
            return;
        }
        span.encode(outcome, end_ns, &mut q.bytes);
        q.spans += 1;
        let n = q.spans;
        drop(q);
        if n == 1 {
            self.queued.notify_one();
        } else if n == export::BATCH {
            self.full.notify_one();
        }
    }

    /// Makes the caller the exporter: true once.
    pub fn take_exporter(&self) -> bool {
        !self.exporting.swap(true, Ordering::AcqRel)
    }

    /// The number of shards (the length `take` wants).
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Swaps every shard's spans into `into` (one `Queued` per shard, emptied first, so
    /// both sides keep their buffers' capacity); returns how many spans it took.
    pub fn take(&self, into: &mut [Queued]) -> usize {
        let mut n = 0;
        for (shard, q) in self.shards.iter().zip(into.iter_mut()) {
            q.bytes.clear();
            // A burst of huge spans (long paths) does not pin its memory for good.
            q.bytes.shrink_to(KEEP);
            q.spans = 0;
            std::mem::swap(
                &mut *shard.lock().unwrap_or_else(PoisonError::into_inner),
                q,
            );
            n += q.spans;
        }
        n
    }

    /// Resolves once a span is queued (or was, since the last call).
    pub async fn span_queued(&self) {
        self.queued.notified().await
    }

    /// Resolves when a shard holds a whole batch (or did, since the last call).
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

/// This thread's shard among `n`: threads are numbered as they first finish a span.
fn shard_index(n: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i) % n
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
pub fn start(conn: &ConnCtx, headers: &mut HeaderMap) -> Option<Span> {
    let tracer = &conn.listener.shared.tracer;
    if !tracer.enabled() {
        // Removed even with tracing off, so an app cannot force sampling at the next hop by
        // sending it through a sidecar that does not trace.
        headers.remove(FORCE);
        return None;
    }
    let meshed = conn.tls && conn.peer_id.is_some();
    // Everything this hop reads, in one pass; the pass also says whether `x-spoke-trace`
    // is there to remove (a look-up to remove what is almost never there cost as much as
    // the pass).
    let mut found = context::Found::scan(headers.iter_mut());
    let (had_force, says_force) = found.force();
    let force = says_force && meshed;
    let incoming = found.incoming();
    let sampled = force
        || match incoming.and_then(|c| c.sampled) {
            Some(s) => s,
            // A meshed caller is a sidecar that already decided: a sampled request would
            // carry its context, so this hop starts no trace of its own (no orphan spans).
            None if meshed => false,
            None => tracer.sample_new(conn.listener.cfg.trace_sampling),
        };
    if !sampled {
        if had_force {
            headers.remove(FORCE);
        }
        return None;
    }
    let (format, ids) = incoming
        .map(|c| (c.format, c.ids))
        .unwrap_or((Format::W3c, None));
    let trace = ids.map(|i| i.trace).unwrap_or_else(random_trace);
    let short = ids.is_some_and(|i| i.short);
    let parent = ids.map(|i| i.span);
    let id = fastrand::u64(1..).to_be_bytes();
    let state = match format {
        Format::W3c => found.state().to_string(),
        _ => String::new(),
    };
    // A hop behind another sidecar gets a `traceparent`: its value is replaced where it
    // is (no hashing, no growing the map); the first hop's is inserted.
    let replaced = format == Format::W3c && found.replace_traceparent(&trace, &id);
    if had_force {
        headers.remove(FORCE);
    }
    if !replaced {
        context::inject(headers, format, &trace, short, &id, parent.as_ref());
    }
    Some(Span {
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
    })
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
        peer_attrs: Some(conn.trace_peer.get_or_init(|| span::peer_attrs(conn.peer))),
        cluster: info.cluster_label(),
        endpoint: info.endpoint,
        peer_id: peer_id.map(|i| i.as_str()),
        retries: info.retries,
        error,
    };
    conn.listener.shared.tracer.record(&span, &outcome);
}

#[cfg(test)]
mod tests;
