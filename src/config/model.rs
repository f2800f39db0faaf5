//! The validated config: what the proxy acts on. Built from `raw::File` by `validate`;
//! every value here is typed (`SocketAddr`, `Duration`, `Identity`) and every default filled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

pub use super::identity::{AllowRule, Identity};
pub use super::raw::{
    AppProtocol, AuthzAction, Capture, CollectorProtocol, DefaultPolicy, Direction, Lb, Protocol,
    TlsMode,
};
pub use super::trace::{Collector, Tracing};

pub use super::raw::UnknownDestination;

pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";
pub const DEFAULT_STATS: &str = "0.0.0.0:15020";
/// Where a `capture: outbound` listener without an address binds.
pub const DEFAULT_OUTBOUND_CAPTURE: &str = "127.0.0.1:15001";
/// Where a `capture: inbound` listener without an address binds.
pub const DEFAULT_INBOUND_CAPTURE: &str = "0.0.0.0:15006";
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// Priority levels an endpoint may name (0..=MAX_PRIORITY).
pub const MAX_PRIORITY: u32 = 7;
pub const DEFAULT_CONTROL_IDENTITY: &str =
    "spiffe://cluster.local/ns/spoke-system/sa/spoke-control";

/// A whole validated config. `raw` is kept for `/config_dump`.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub node: Node,
    pub admin: SocketAddr,
    pub stats: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub control: Option<Control>,
    #[serde(serialize_with = "ser_dur")]
    pub drain_timeout: Duration,
    pub listeners: Vec<Listener>,
    /// Shared with the snapshot's cluster states, and from one snapshot to the next for
    /// clusters a push leaves as they are.
    pub clusters: Vec<Arc<Cluster>>,
    pub services: Vec<Service>,
    pub routes: Vec<Route>,
    pub inbound: Vec<InboundPort>,
    pub default_policy: DefaultPolicy,
    pub workloads: Vec<Workload>,
    pub tracing: Option<Tracing>,
    /// The top-level default for listeners' access events.
    pub access_log: bool,
    #[serde(skip)]
    pub raw: super::raw::File,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Node {
    pub id: String,
    pub identity: Option<Identity>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub roots: PathBuf,
    pub min_version: TlsVersion,
    #[serde(serialize_with = "ser_dur")]
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Control {
    /// `host:port` of `spoke control`.
    pub address: String,
    pub token_file: Option<PathBuf>,
    pub roots: Option<PathBuf>,
    pub identity: Identity,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: Protocol,
    #[serde(flatten)]
    pub target: ListenerTarget,
    /// `capture: outbound` listeners only (`None` on every other listener).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_destination: Option<UnknownDestination>,
    pub max_connections: u32,
    #[serde(serialize_with = "ser_dur")]
    pub idle_timeout: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub detect_timeout: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub header_read_timeout: Duration,
    pub max_request_bytes: Option<u64>,
    /// Upgrade protocols tunnelled (lowercase names).
    pub upgrades: Vec<String>,
    /// Overrides `tracing.sampling` for this listener's requests.
    pub trace_sampling: Option<f64>,
    /// One `access` event per request or connection.
    pub access_log: bool,
}

/// Where a listener's connections go.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerTarget {
    /// Explicit outbound: everything goes to this cluster (or through routes for HTTP).
    Cluster(String),
    /// Explicit inbound: mTLS is terminated and traffic goes to the app at this address,
    /// under the `inbound:` policy of its port.
    Forward(SocketAddr),
    /// Transparent capture via iptables; destination from SO_ORIGINAL_DST.
    Capture(Capture),
    /// Explicit outbound HTTP with no default cluster: `routes:` alone decide (no match
    /// is a 404).
    Routes,
}

impl Listener {
    /// How long protocol detection waits: the detect timeout, but never past the idle
    /// timeout (a client silent that long is idle, not slow to speak).
    pub fn detect_wait(&self) -> Duration {
        self.detect_timeout.min(self.idle_timeout)
    }

    /// Whether a detection timeout means the idle timeout has passed.
    pub fn idle_before_detect(&self) -> bool {
        self.idle_timeout <= self.detect_timeout
    }

    /// `outbound` or `inbound`, the `direction` metric label.
    pub fn direction_str(&self) -> &'static str {
        match self.direction() {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    pub fn direction(&self) -> Direction {
        match self.target {
            ListenerTarget::Cluster(_)
            | ListenerTarget::Routes
            | ListenerTarget::Capture(Capture::Outbound) => Direction::Outbound,
            ListenerTarget::Forward(_) | ListenerTarget::Capture(Capture::Inbound) => {
                Direction::Inbound
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub name: String,
    pub lb: Lb,
    /// The SPIFFE ID the endpoints must present; `None` means plaintext.
    pub tls: Option<Identity>,
    #[serde(serialize_with = "ser_dur")]
    pub connect_timeout: Duration,
    pub connect_attempts: u32,
    pub endpoints: Vec<Endpoint>,
    pub circuit_breaker: CircuitBreaker,
    pub outlier_detection: OutlierDetection,
    /// `lb: ring_hash`: what the hash is taken of.
    pub hash_on: HashOn,
    pub health_check: Option<HealthCheck>,
    #[serde(serialize_with = "ser_dur")]
    pub queue_timeout: Duration,
}

/// The key of `ring_hash` balancing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    Header(String),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthCheck {
    /// `None`: a TCP connect (and mTLS handshake for meshed clusters) is the check.
    pub http: Option<String>,
    /// Inclusive status ranges counted healthy.
    pub expected: Vec<(u16, u16)>,
    #[serde(serialize_with = "ser_dur")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    pub address: EndpointAddr,
    pub weight: u32,
    pub priority: u32,
}

/// An endpoint address: an IP literal, or a host name resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddr {
    Ip(SocketAddr),
    Host(String, u16),
}

impl std::fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddr::Ip(a) => a.fmt(f),
            EndpointAddr::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CircuitBreaker {
    pub max_connections: u32,
    pub max_pending: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
            max_retries: 64,
        }
    }
}

/// Passive health: consecutive failures eject an endpoint for a while. Always on; a
/// threshold of 0 turns that counter off.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    #[serde(serialize_with = "ser_dur")]
    pub base_ejection: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 0,
            consecutive_gateway_errors: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub vip: SocketAddr,
    pub cluster: String,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Serialize)]
pub struct Route {
    pub matches: RouteMatch,
    pub action: RouteAction,
    #[serde(serialize_with = "ser_opt_dur")]
    pub timeout: Option<Duration>,
    #[serde(serialize_with = "ser_opt_dur")]
    pub per_try_timeout: Option<Duration>,
    #[serde(serialize_with = "ser_dur")]
    pub idle_timeout: Duration,
    pub retry: Option<RetryPolicy>,
    /// Overrides the listener's `upgrades` for this route.
    pub upgrades: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteMatch {
    pub host: Option<String>,
    pub path: Option<PathMatch>,
    pub method: Option<String>,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    pub name: String,
    pub rule: HeaderRule,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderRule {
    Exact(String),
    Prefix(String),
    Present(bool),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    Cluster(String),
    Split(Vec<(String, u32)>),
}

#[derive(Debug, Clone, Serialize)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    pub budget_percent: u32,
    #[serde(serialize_with = "ser_dur")]
    pub backoff: Duration,
    pub non_idempotent: bool,
}

/// One retry condition from a route's `retry.on` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    ConnectFailure,
    RefusedStream,
    Reset,
    Any5xx,
    Status(u16),
    /// A gRPC status code (e.g. 14 for `unavailable`).
    Grpc(u8),
}

#[derive(Debug, Clone, Serialize)]
pub struct InboundPort {
    pub port: u16,
    pub protocol: Protocol,
    pub tls: TlsMode,
    pub app_protocol: AppProtocol,
    pub allow: Vec<AllowRule>,
    pub rules: Vec<AuthzRule>,
}

/// One per-request authorization rule (see `crate::authz` for how they are evaluated).
#[derive(Debug, Clone, Serialize)]
pub struct AuthzRule {
    pub action: AuthzAction,
    /// Empty: any peer, authenticated or not.
    pub from: Vec<Principal>,
    /// Upper-case method names; empty: any.
    pub methods: Vec<String>,
    /// Prefixes are stored without a trailing `/` (segment-wise match); empty: any.
    pub paths: Vec<PathMatch>,
    pub headers: Vec<HeaderMatch>,
}

impl AuthzRule {
    /// Whether the rule looks at the request (and so can only match HTTP).
    pub fn has_request_conditions(&self) -> bool {
        !self.methods.is_empty() || !self.paths.is_empty() || !self.headers.is_empty()
    }
}

/// Who a rule's `from` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A plaintext peer (a permissive or plaintext port).
    Unauthenticated,
    /// Any peer with a verified identity.
    Authenticated,
    Id(AllowRule),
}

impl Principal {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "unauthenticated" => Ok(Principal::Unauthenticated),
            "authenticated" => Ok(Principal::Authenticated),
            _ => AllowRule::parse(s).map(Principal::Id),
        }
    }

    pub fn matches(&self, peer: Option<&Identity>) -> bool {
        match (self, peer) {
            (Principal::Unauthenticated, None) => true,
            (Principal::Authenticated, Some(_)) => true,
            (Principal::Id(rule), Some(id)) => rule.matches(id),
            _ => false,
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Unauthenticated => f.write_str("unauthenticated"),
            Principal::Authenticated => f.write_str("authenticated"),
            Principal::Id(r) => r.fmt(f),
        }
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub identity: Identity,
    pub inbound: Vec<InboundPort>,
}

impl Config {
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

fn ser_dur<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::duration::format(*d))
}

fn ser_opt_dur<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_dur(d, s),
        None => s.serialize_none(),
    }
}

impl Serialize for EndpointAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for RetryOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetryOn::ConnectFailure => f.write_str("connect-failure"),
            RetryOn::RefusedStream => f.write_str("refused-stream"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::Any5xx => f.write_str("5xx"),
            RetryOn::Status(c) => write!(f, "{c}"),
            RetryOn::Grpc(c) => write!(f, "grpc-{c}"),
        }
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
