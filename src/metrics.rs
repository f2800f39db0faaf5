//! Every metric Spoke exports, defined in one place. The registry belongs to a `Metrics`
//! value (never the global one), so each test and each in-process proxy gets its own.
//!
//! Label values come only from small closed sets (cluster and listener names from config,
//! error kinds from `kind()` functions); peer identities and addresses go to logs instead.
//!
//! A metric exists only when its subject does: the certificate expiry gauge appears with the
//! first certificate, the control gauge only on a proxy with `control:`. Counters alerts
//! divide or `rate()` over (TLS failures, denials, config updates) are created at 0 for
//! every label set the config makes known (`init_for`), so a query has a series before the
//! first event. Retries per cluster are created at 0 by the cluster's first request
//! (`first_request`), not per cluster up front: with a thousand pushed clusters that would
//! be thousands of series (and megabytes) for clusters this workload never calls.

use std::sync::Once;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::{Capture, Config, ListenerTarget, UnknownDestination::Deny};

/// `spoke_endpoints{cluster,state}`: not a registered series but written at scrape time
/// from the snapshot (`admin::clusters::render_endpoints`).
pub const ENDPOINTS_HELP: &str = "endpoints by state: healthy, ejected, unhealthy, draining";

/// `spoke_retries_total` reasons (see `proxy::http::retry::Failure::reason`).
pub const RETRY_REASONS: &[&str] = &[
    "status",
    "grpc",
    "connect_failure",
    "refused_stream",
    "reset",
    "per_try_timeout",
    "budget_exhausted",
];

/// `spoke_capture_refused_total` reasons (see `proxy::capture::Refusal::label`).
pub const CAPTURE_REFUSALS: &[&str] = &[
    "no_original_dst",
    "not_redirected",
    "loop",
    "unknown_destination",
];

/// The `spoke_tls_handshake_errors_total` reasons created at 0: the ones an alert is likely
/// to watch (the full list is in `tls::handshake_reason` and the docs).
pub const TLS_REASONS: &[&str] = &[
    "no_client_cert",
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "bad_identity",
    "foreign_trust_domain",
    "wrong_identity",
    "plaintext",
    "handshake_timeout",
];

/// All of Spoke's metrics and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    /// `{direction, cluster}`
    pub tcp_connections_opened: IntCounterVec,
    /// `{direction, cluster}`
    pub tcp_connections_active: IntGaugeVec,
    /// `{direction, cluster, flow}`; flow `rx` is bytes received from the downstream client,
    /// `tx` bytes sent back to it.
    pub tcp_bytes: IntCounterVec,
    /// `{cluster, kind}`: each failed connect try, kind from `ProxyError::kind`.
    pub upstream_connect_errors: IntCounterVec,
    /// `{listener}`: connections closed at accept because the listener was full.
    pub listener_overflow: IntCounterVec,
    /// `{listener, direction}`: connections accepted by each listener, whatever its protocol.
    pub listener_connections_opened: IntCounterVec,
    /// `{listener, direction}`
    pub listener_connections_active: IntGaugeVec,
    /// `{listener, direction, flow}`: bytes of every connection of a listener (after TLS);
    /// flow rx from the downstream client, tx to it.
    pub listener_bytes: IntCounterVec,
    /// `{version}` = 1 for the config version being served.
    pub config_version: IntGaugeVec,
    /// `{result}` applied | rejected.
    pub config_updates: IntCounterVec,
    pub control_connected: IntGauge,
    /// `{direction, reason}`
    pub tls_handshake_errors: IntCounterVec,
    /// `{port}`
    pub authz_denied: IntCounterVec,
    /// `{port}`: open connections closed because a new policy no longer allows them.
    pub authz_revoked: IntCounterVec,
    /// `{port}`: local apps found not to speak HTTP/2 (`app_protocol: auto`).
    pub app_http1_fallbacks: IntCounterVec,
    /// `{cluster}`
    pub outlier_ejections: IntCounterVec,
    /// `{cluster, limit}`
    pub breaker_overflow: IntCounterVec,
    /// `{cluster}`: picks made with no endpoint in service.
    pub lb_panic: IntCounterVec,
    /// Unix time the workload certificate expires.
    pub cert_expiry: IntGauge,
    /// `{result}` applied | rejected: certificate file reloads.
    pub cert_reloads: IntCounterVec,
    /// `{direction, cluster, code, listener}`
    pub requests: IntCounterVec,
    /// `{direction, cluster, listener}`
    pub request_duration: HistogramVec,
    /// `{cluster, reason}`
    pub retries: IntCounterVec,
    /// `{cluster, kind}`
    pub upstream_rq_errors: IntCounterVec,
    /// `{listener, protocol}`: what protocol detection decided.
    pub protocol_detected: IntCounterVec,
    /// `{listener, reason}`: captured connections closed before anything was proxied
    /// (`proxy::capture::Refusal`).
    pub capture_refused: IntCounterVec,
    /// `{listener, reason}`: downstream HTTP/2 connections the proxy ended with a GOAWAY of
    /// its own, by HTTP/2 error code (`enhance_your_calm` for a flood, `protocol_error`, ...).
    pub http2_goaway_sent: IntCounterVec,
    /// Quiet spells after traffic in which the proxy gave memory back (`rest`).
    pub memory_trims: prometheus::IntCounter,
    /// Resident code pages of the binary unmapped by those trims, in bytes.
    pub memory_code_released: prometheus::IntCounter,
    /// Spans the collector accepted (registered once tracing is configured).
    pub trace_spans_exported: prometheus::IntCounter,
    /// Spans lost: the export queue was full, or the collector failed or was too slow.
    pub trace_spans_dropped: prometheus::IntCounter,
    registered_trace: std::sync::Once,
    registered_cert: Once,
    registered_control: Once,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is malformed: {e}"));
    register(r, Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is malformed: {e}"));
    register(r, Box::new(g.clone()));
    g
}

fn register(r: &Registry, c: Box<dyn prometheus::core::Collector>) {
    // Names are constants defined once below, so a clash is a programming error caught by
    // the unit test, not something input can cause.
    if let Err(e) = r.register(c) {
        unreachable!("metric registered twice: {e}");
    }
}

/// Request-duration buckets: 0.5 ms to 10 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        register(
            &r,
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        );
        // Registered only once their subject exists (`show_control`, `set_cert_expiry`).
        let control_connected = IntGauge::new(
            "spoke_control_connected",
            "1 while the control stream is connected",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let cert_expiry = IntGauge::new(
            "spoke_cert_expiry_timestamp_seconds",
            "unix time when the workload certificate expires",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "spoke_request_duration_seconds",
                "HTTP request duration as seen by the proxy",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["direction", "cluster", "listener"],
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        register(&r, Box::new(request_duration.clone()));
        Metrics {
            tcp_connections_opened: counter(
                &r,
                "spoke_tcp_connections_opened_total",
                "TCP connections accepted and proxied",
                &["direction", "cluster"],
            ),
            tcp_connections_active: gauge(
                &r,
                "spoke_tcp_connections_active",
                "TCP connections open now",
                &["direction", "cluster"],
            ),
            tcp_bytes: counter(
                &r,
                "spoke_tcp_bytes_total",
                "bytes proxied; flow rx = from the downstream client, tx = to it",
                &["direction", "cluster", "flow"],
            ),
            upstream_connect_errors: counter(
                &r,
                "spoke_upstream_connect_errors_total",
                "failed connect tries to upstream endpoints",
                &["cluster", "kind"],
            ),
            listener_overflow: counter(
                &r,
                "spoke_listener_overflow_total",
                "connections refused because the listener was at max_connections",
                &["listener"],
            ),
            listener_connections_opened: counter(
                &r,
                "spoke_listener_connections_opened_total",
                "connections accepted by each listener, whatever its protocol",
                &["listener", "direction"],
            ),
            listener_connections_active: gauge(
                &r,
                "spoke_listener_connections_active",
                "connections open now on each listener",
                &["listener", "direction"],
            ),
            listener_bytes: counter(
                &r,
                "spoke_listener_bytes_total",
                "bytes on each listener's connections; flow rx = from the downstream client, tx = to it",
                &["listener", "direction", "flow"],
            ),
            config_version: gauge(
                &r,
                "spoke_config_version",
                "the config version being served (info)",
                &["version"],
            ),
            config_updates: counter(
                &r,
                "spoke_config_updates_total",
                "config updates by result",
                &["result"],
            ),
            control_connected,
            tls_handshake_errors: counter(
                &r,
                "spoke_tls_handshake_errors_total",
                "failed TLS handshakes by reason",
                &["direction", "reason"],
            ),
            authz_denied: counter(
                &r,
                "spoke_authz_denied_total",
                "inbound connections or requests denied by policy",
                &["port"],
            ),
            outlier_ejections: counter(
                &r,
                "spoke_outlier_ejections_total",
                "endpoints ejected by outlier detection",
                &["cluster"],
            ),
            breaker_overflow: counter(
                &r,
                "spoke_circuit_breaker_overflow_total",
                "requests and connections refused because a circuit breaker limit was reached",
                &["cluster", "limit"],
            ),
            lb_panic: counter(
                &r,
                "spoke_lb_panic_total",
                "endpoint picks made while no endpoint was in service (health ignored)",
                &["cluster"],
            ),
            authz_revoked: counter(
                &r,
                "spoke_authz_revoked_connections_total",
                "open inbound connections closed because a new policy no longer allows them",
                &["port"],
            ),
            app_http1_fallbacks: counter(
                &r,
                "spoke_app_http1_fallbacks_total",
                "local apps that refused HTTP/2 and are now called with HTTP/1.1 (app_protocol: auto)",
                &["port"],
            ),
            cert_expiry,
            cert_reloads: counter(
                &r,
                "spoke_cert_reloads_total",
                "certificate rotations by result",
                &["result"],
            ),
            requests: counter(
                &r,
                "spoke_requests_total",
                "HTTP requests by response code",
                &["direction", "cluster", "code", "listener"],
            ),
            request_duration,
            retries: counter(
                &r,
                "spoke_retries_total",
                "HTTP request retries",
                &["cluster", "reason"],
            ),
            upstream_rq_errors: counter(
                &r,
                "spoke_upstream_rq_errors_total",
                "HTTP requests that failed upstream, by error kind",
                &["cluster", "kind"],
            ),
            protocol_detected: counter(
                &r,
                "spoke_protocol_detected_total",
                "protocol detection results",
                &["listener", "protocol"],
            ),
            capture_refused: counter(
                &r,
                "spoke_capture_refused_total",
                "captured connections closed unproxied: no_original_dst, not_redirected, loop, unknown_destination",
                &["listener", "reason"],
            ),
            http2_goaway_sent: counter(
                &r,
                "spoke_http2_goaway_sent_total",
                "downstream HTTP/2 connections the proxy closed with a GOAWAY of its own (floods, protocol errors), by error code",
                &["listener", "reason"],
            ),
            memory_trims: plain_counter(
                &r,
                "spoke_memory_trims_total",
                "quiet spells after traffic in which the proxy gave memory back",
            ),
            memory_code_released: plain_counter(
                &r,
                "spoke_memory_code_released_bytes_total",
                "resident code pages of the binary unmapped when the proxy turned quiet",
            ),
            trace_spans_exported: prometheus::IntCounter::new(
                "spoke_trace_spans_exported_total",
                "spans accepted by the trace collector",
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
            trace_spans_dropped: prometheus::IntCounter::new(
                "spoke_trace_spans_dropped_total",
                "spans dropped: export queue full, or the collector failed or was too slow",
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
            registered_trace: std::sync::Once::new(),
            registered_cert: Once::new(),
            registered_control: Once::new(),
            registry: r,
        }
    }

    /// Exports the span counters: only a proxy with `tracing:` has them.
    pub fn show_tracing(&self) {
        self.registered_trace.call_once(|| {
            register(&self.registry, Box::new(self.trace_spans_exported.clone()));
            register(&self.registry, Box::new(self.trace_spans_dropped.clone()));
        });
    }

    /// Sets the certificate expiry gauge, exporting it from the first certificate on.
    pub fn set_cert_expiry(&self, unix: i64) {
        self.registered_cert
            .call_once(|| register(&self.registry, Box::new(self.cert_expiry.clone())));
        self.cert_expiry.set(unix);
    }

    /// Exports `spoke_control_connected` (at 0 until the stream connects): only a proxy
    /// with `control:` has one.
    pub fn show_control(&self) {
        self.registered_control
            .call_once(|| register(&self.registry, Box::new(self.control_connected.clone())));
    }

    /// Creates at 0 the counters a config makes known, so `rate()` and alerts have a series
    /// before the first event: denials per inbound port, TLS handshake failures when the
    /// proxy has (or will get) a certificate.
    pub fn init_for(&self, cfg: &Config) {
        for result in ["applied", "rejected"] {
            self.config_updates.with_label_values(&[result]);
        }
        let mut ports: Vec<u16> = cfg.inbound.iter().map(|p| p.port).collect();
        ports.extend(cfg.listeners.iter().filter_map(|l| match l.target {
            ListenerTarget::Forward(app) => Some(app.port()),
            _ => None,
        }));
        for port in ports {
            self.authz_denied.with_label_values(&[&port.to_string()]);
            self.authz_revoked.with_label_values(&[&port.to_string()]);
            self.app_http1_fallbacks
                .with_label_values(&[&port.to_string()]);
        }
        for l in &cfg.listeners {
            // A flood defence's GOAWAY is what an alert on this metric watches for.
            if !l.protocol.never_http() {
                self.http2_goaway_sent
                    .with_label_values(&[l.name.as_str(), "enhance_your_calm"]);
            }
            let ListenerTarget::Capture(c) = l.target else {
                continue;
            };
            // Only an outbound capture that denies has unknown destinations to refuse.
            let denies = c == Capture::Outbound && l.unknown_destination == Some(Deny);
            for reason in CAPTURE_REFUSALS {
                if denies || *reason != "unknown_destination" {
                    self.capture_refused
                        .with_label_values(&[l.name.as_str(), reason]);
                }
            }
        }
        if cfg.tls.is_some() || cfg.control.is_some() {
            let inbound = cfg
                .listeners
                .iter()
                .any(|l| l.direction() == crate::config::Direction::Inbound);
            for reason in TLS_REASONS {
                if inbound {
                    self.tls_handshake_errors
                        .with_label_values(&["inbound", reason]);
                }
                if cfg.clusters.iter().any(|c| c.tls.is_some()) {
                    self.tls_handshake_errors
                        .with_label_values(&["outbound", reason]);
                }
            }
        }
        if cfg.tls.is_some() {
            for result in ["applied", "rejected"] {
                self.cert_reloads.with_label_values(&[result]);
            }
        }
    }

    /// Creates at 0 the retry series of a cluster, once per cluster (its runtime state
    /// outlives snapshots): called for each request, a load and a branch after the first.
    pub fn first_request(&self, cluster: &str, runtime: &crate::balance::ClusterRuntime) {
        runtime.series.get_or_init(|| {
            for reason in RETRY_REASONS {
                self.retries.with_label_values(&[cluster, reason]);
            }
        });
    }

    /// Marks `version` as the one being served (an info metric: one series set to 1).
    pub fn set_config_version(&self, version: &str) {
        self.config_version.reset();
        self.config_version.with_label_values(&[version]).set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The control plane's metrics (`spoke control`), in a registry of their own.
pub struct ControlMetrics {
    registry: Registry,
    /// Sidecars with an open discovery stream.
    pub sidecars: IntGauge,
    /// The mesh config version being served.
    pub mesh_version: IntGauge,
    pub pushes: prometheus::IntCounter,
    /// Encoded size of every push (protobuf message, before gRPC framing and TLS).
    pub push_bytes: prometheus::IntCounter,
    /// Resources sent or removed by pushes (a whole-config push counts one).
    pub resources_sent: prometheus::IntCounter,
    pub acks: prometheus::IntCounter,
    pub nacks: prometheus::IntCounter,
    /// `{result}` applied | rejected: mesh config directory loads.
    pub config_loads: IntCounterVec,
    /// `{result}` issued | bad_token | bad_csr | wrong_identity.
    pub certificates: IntCounterVec,
    /// `{kind}` malformed | bad_signature | expired | bad_identity.
    pub auth_failures: IntCounterVec,
    /// Only with `--kubernetes` (a metric exists only when its subject does).
    pub kube: Option<KubeMetrics>,
}

/// `spoke control --kubernetes`: the watches of the cluster and the TokenReviews.
pub struct KubeMetrics {
    /// `{resource}` services | endpointslices | pods: fresh lists after a failed watch.
    pub relists: IntCounterVec,
    /// `{resource}`: watches (or lists) that failed.
    pub watch_errors: IntCounterVec,
    /// `{result}` authenticated | rejected | error: TokenReviews asked of the API server.
    pub token_reviews: IntCounterVec,
}

fn plain_counter(r: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    let c = prometheus::IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("{e}"));
    register(r, Box::new(c.clone()));
    c
}

fn plain_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("{e}"));
    register(r, Box::new(g.clone()));
    g
}

impl ControlMetrics {
    pub fn new() -> Self {
        Self::with_kubernetes(false)
    }

    /// The control plane's metrics; with `kubernetes`, the watch and review ones too.
    pub fn with_kubernetes(kubernetes: bool) -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        register(
            &r,
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        );
        ControlMetrics {
            sidecars: plain_gauge(
                &r,
                "spoke_control_sidecars",
                "sidecars with an open discovery stream",
            ),
            mesh_version: plain_gauge(
                &r,
                "spoke_control_config_version",
                "the mesh config version being served",
            ),
            pushes: plain_counter(
                &r,
                "spoke_control_pushes_total",
                "config pushes sent to sidecars",
            ),
            push_bytes: plain_counter(
                &r,
                "spoke_control_push_bytes_total",
                "bytes of config pushes sent to sidecars (encoded messages)",
            ),
            resources_sent: plain_counter(
                &r,
                "spoke_control_resources_sent_total",
                "resources sent or removed by config pushes",
            ),
            acks: plain_counter(&r, "spoke_control_acks_total", "pushes sidecars accepted"),
            nacks: plain_counter(&r, "spoke_control_nacks_total", "pushes sidecars rejected"),
            config_loads: counter(
                &r,
                "spoke_control_config_loads_total",
                "mesh config directory loads by result",
                &["result"],
            ),
            certificates: counter(
                &r,
                "spoke_control_certificates_total",
                "certificate requests by result",
                &["result"],
            ),
            auth_failures: counter(
                &r,
                "spoke_control_auth_failures_total",
                "discovery streams refused for a bad token",
                &["kind"],
            ),
            kube: kubernetes.then(|| KubeMetrics {
                relists: counter(
                    &r,
                    "spoke_control_kube_relists_total",
                    "fresh Kubernetes lists after a failed watch, by resource",
                    &["resource"],
                ),
                watch_errors: counter(
                    &r,
                    "spoke_control_kube_watch_errors_total",
                    "Kubernetes watches or lists that failed, by resource",
                    &["resource"],
                ),
                token_reviews: counter(
                    &r,
                    "spoke_control_token_reviews_total",
                    "ServiceAccount tokens checked with a TokenReview, by result",
                    &["result"],
                ),
            }),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_and_process_metrics() {
        let m = Metrics::new();
        m.tcp_connections_opened
            .with_label_values(&["outbound", "backend"])
            .inc();
        m.set_config_version("v1");
        m.set_config_version("v2");
        let text = m.render();
        assert!(text.contains(
            "spoke_tcp_connections_opened_total{cluster=\"backend\",direction=\"outbound\"} 1"
        ));
        assert!(text.contains("spoke_config_version{version=\"v2\"} 1"));
        assert!(!text.contains("version=\"v1\""));
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(text.contains("process_open_fds"));
    }
}
