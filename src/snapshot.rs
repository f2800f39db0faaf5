//! The config snapshot the data plane reads: a validated config plus everything built from
//! it (endpoint sets, per-port inbound policies and local app targets, the `services:` VIP
//! map of transparent capture). A new snapshot is built
//! whole and swapped in with one `ArcSwap::store`; each connection loads one and keeps it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use crate::authz::PortPolicy;
use crate::balance::endpoint::Verdict;
use crate::balance::{
    now_ms, ClusterRuntime, EndpointState, Outcome, Picked, Plan, Registry, ThreadRng,
};
use crate::config::{Cluster, Config, Endpoint, EndpointAddr, Service};
use crate::metrics::Metrics;
use crate::proxy::http::route::RouteIndex;

/// The latency a failed attempt counts as for `least_request`.
const FAILURE_PENALTY: std::time::Duration = std::time::Duration::from_millis(250);

/// One cluster as the data plane sees it: its config and, once the cluster is used, its
/// live part: the balancing plan built from the config and the runtime state (endpoint
/// health and load, breaker counters, retry budget) kept in the registry across snapshots.
///
/// The live part is made at first use: a sidecar is pushed every cluster of the mesh but
/// talks to few of them, and a thousand unused clusters would otherwise hold a plan and a
/// state per endpoint each (about 4 MiB for 1,000 clusters of 10 endpoints).
#[derive(Debug)]
pub struct ClusterState {
    pub config: Arc<Cluster>,
    /// Where the live part's runtime state comes from (set when a snapshot adopts the
    /// cluster); `None`: a state of its own.
    registry: Option<Arc<Registry>>,
    live: OnceLock<Live>,
}

/// A cluster's balancing plan and runtime state.
#[derive(Debug)]
pub struct Live {
    /// Runtime state of each endpoint, in the order of `config.endpoints`.
    pub endpoints: Vec<Arc<EndpointState>>,
    pub runtime: Arc<ClusterRuntime>,
    plan: Plan,
}

impl Live {
    /// A fresh state for `config`, shared with nothing: what an unused cluster would
    /// start from (shown by `/clusters` without making the cluster live).
    pub fn fresh(config: &Cluster) -> Self {
        Live {
            endpoints: config
                .endpoints
                .iter()
                .map(|e| Arc::new(EndpointState::new(e.address.clone())))
                .collect(),
            runtime: Arc::default(),
            plan: Plan::new(config.lb, &config.endpoints),
        }
    }

    /// From the registry's state: `reconcile` when the snapshot is the one the registry
    /// follows (being stored), so endpoints it no longer lists drain.
    fn adopted(config: &Cluster, registry: &Registry, reconcile: bool) -> Self {
        let addrs: Vec<&EndpointAddr> = config.endpoints.iter().map(|e| &e.address).collect();
        let (runtime, endpoints) = registry.adopt(&config.name, &addrs, reconcile);
        Live {
            endpoints,
            runtime,
            plan: Plan::new(config.lb, &config.endpoints),
        }
    }
}

impl ClusterState {
    pub fn new(config: Arc<Cluster>) -> Self {
        ClusterState {
            config,
            registry: None,
            live: OnceLock::new(),
        }
    }

    /// The live part, made now if the cluster was not used yet.
    pub fn live(&self) -> &Live {
        self.live.get_or_init(|| match &self.registry {
            Some(r) => Live::adopted(&self.config, r, false),
            None => Live::fresh(&self.config),
        })
    }

    /// The live part if the cluster has been used.
    pub fn peek(&self) -> Option<&Live> {
        self.live.get()
    }

    /// Runtime state of each endpoint, in the order of `config.endpoints`.
    pub fn endpoints(&self) -> &[Arc<EndpointState>] {
        &self.live().endpoints
    }

    pub fn runtime(&self) -> &Arc<ClusterRuntime> {
        &self.live().runtime
    }

    /// The local app behind an inbound listener, as a one-endpoint plaintext cluster.
    pub fn local(name: &str, app: std::net::SocketAddr) -> Self {
        Self::new(Arc::new(Cluster {
            name: name.to_string(),
            lb: crate::config::Lb::RoundRobin,
            tls: None,
            connect_timeout: crate::config::DEFAULT_CONNECT_TIMEOUT,
            connect_attempts: 1,
            endpoints: vec![crate::config::Endpoint {
                address: crate::config::EndpointAddr::Ip(app),
                weight: 1,
                priority: 0,
            }],
            circuit_breaker: Default::default(),
            // The app is the only endpoint: there is nothing to eject it for.
            outlier_detection: crate::config::OutlierDetection {
                consecutive_gateway_errors: 0,
                ..Default::default()
            },
            hash_on: crate::config::HashOn::SourceIp,
            health_check: None,
            queue_timeout: crate::config::DEFAULT_QUEUE_TIMEOUT,
        }))
    }

    /// Takes its runtime state from `registry`: now if the cluster is in use (the registry
    /// has state for it, or it is health checked), else at first use.
    fn adopt(&mut self, registry: &Arc<Registry>) {
        if self.config.health_check.is_some() || registry.has(&self.config.name) {
            let _ = self.live.set(Live::adopted(&self.config, registry, true));
        }
        self.registry = Some(registry.clone());
    }

    /// Picks an endpoint (see `balance`): not one in `tried` while others remain.
    pub fn pick(&self, key: Option<u64>, tried: &[usize]) -> Option<Picked> {
        let live = self.live();
        live.plan.pick(
            &live.endpoints,
            &live.runtime,
            key,
            tried,
            now_ms(),
            &mut ThreadRng,
        )
    }

    pub fn endpoint(&self, i: usize) -> Option<&Endpoint> {
        self.config.endpoints.get(i)
    }

    /// Feeds one attempt's outcome to outlier detection; ejects the endpoint when it is
    /// over a threshold and the cluster under its ejection limit.
    pub fn record(&self, i: usize, outcome: Outcome, metrics: &Metrics) {
        let endpoints = self.endpoints();
        let Some(ep) = endpoints.get(i) else {
            return;
        };
        if outcome == Outcome::GatewayError {
            // A failure is an answer no one wants: it weighs on `least_request` like a
            // slow one, and fades as the latency estimate decays.
            ep.observe_latency(FAILURE_PENALTY, now_ms());
        }
        let od = &self.config.outlier_detection;
        let Verdict::Eject(d) = ep.record(outcome, od) else {
            return;
        };
        let now = now_ms();
        let out = endpoints
            .iter()
            .filter(|e| e.ejected_for(now).is_some())
            .count();
        // As Envoy: the percentage caps ejections, but one may always go (unless 0%).
        let max = match od.max_ejection_percent {
            0 => 0,
            pct => (endpoints.len() * pct as usize / 100).max(1),
        };
        if out >= max {
            tracing::debug!(cluster = %self.config.name, endpoint = %ep.address, ejected = out, "outlier: ejection limit reached; endpoint stays");
            return;
        }
        if ep.eject(now, d) {
            metrics
                .outlier_ejections
                .with_label_values(&[&self.config.name])
                .inc();
            tracing::warn!(
                cluster = %self.config.name,
                endpoint = %ep.address,
                ejected_for_ms = d.as_millis() as u64,
                times = ep.times_ejected(),
                "outlier: endpoint ejected"
            );
        }
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: String,
    pub config: Arc<Config>,
    /// Looked up on every request: foldhash, not SipHash (the names come from the config,
    /// not from traffic, so there is no flooding to resist).
    clusters: HashMap<String, Arc<ClusterState>, foldhash::fast::RandomState>,
    inbound: Vec<(u16, PortPolicy)>,
    default_cert: PortPolicy,
    default_plain: PortPolicy,
    /// `config.routes` by host.
    pub route_index: RouteIndex,
    /// `services:` by VIP: what a captured outbound connection's original destination means.
    services: HashMap<SocketAddr, Service>,
    /// The app behind each `inbound:` port (`127.0.0.1:<port>`), for inbound capture.
    local: HashMap<u16, Arc<ClusterState>>,
    /// The same for ports without an `inbound:` entry, made on first use: which ports the
    /// app serves is known only when traffic arrives.
    local_other: Mutex<HashMap<u16, Arc<ClusterState>>>,
}

impl Snapshot {
    pub fn new(config: Config, version: String) -> Self {
        Self::reusing(config, version, None, |_| false)
    }

    /// A snapshot that shares `prev`'s state of every cluster `unchanged` names (an
    /// incremental push knows which clusters it did not touch): nothing is rebuilt for
    /// them, and their runtime state is the one they already have.
    pub fn reusing(
        config: Config,
        version: String,
        prev: Option<&Snapshot>,
        unchanged: impl Fn(&str) -> bool,
    ) -> Self {
        let clusters = config
            .clusters
            .iter()
            .map(|c| {
                let kept = prev
                    .filter(|_| unchanged(&c.name))
                    .and_then(|p| p.clusters.get(&c.name).cloned());
                let state = kept.unwrap_or_else(|| Arc::new(ClusterState::new(c.clone())));
                (c.name.clone(), state)
            })
            .collect();
        let inbound = config
            .inbound
            .iter()
            .map(|p| (p.port, PortPolicy::new(p)))
            .collect();
        let services = config
            .services
            .iter()
            .map(|s| (unmapped(s.vip), s.clone()))
            .collect();
        let local = config
            .inbound
            .iter()
            .map(|p| (p.port, Arc::new(local_target(p.port))))
            .collect();
        Snapshot {
            version,
            services,
            local,
            local_other: Mutex::default(),
            default_cert: PortPolicy::default_for(true, config.default_policy),
            default_plain: PortPolicy::default_for(false, config.default_policy),
            inbound,
            route_index: RouteIndex::new(&config.routes),
            config: Arc::new(config),
            clusters,
        }
    }

    /// A snapshot whose version is a hash of its content, for static files.
    pub fn from_static(config: Config) -> Self {
        let version = content_version(&config);
        Self::new(config, version)
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterState>> {
        self.clusters.get(name)
    }

    /// Every cluster, for introspection.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<ClusterState>> {
        self.clusters.values()
    }

    /// Carries the registry's runtime state into this (not yet shared) snapshot, and
    /// lets the registry forget clusters it no longer has.
    pub fn adopt(&mut self, registry: &Arc<Registry>) {
        for c in self.clusters.values_mut() {
            if let Some(c) = Arc::get_mut(c) {
                c.adopt(registry);
            }
        }
        registry.retain(|name| self.clusters.contains_key(name));
    }
}

impl Snapshot {
    /// The precomputed policy for `port`: its `inbound:` entry, else the default (strict
    /// mTLS when the proxy has a certificate, plaintext otherwise; `default_policy` decides
    /// who may in). A lookup, no allocation: called for every inbound request.
    pub fn inbound_policy(&self, port: u16, have_cert: bool) -> &PortPolicy {
        if let Some((_, p)) = self.inbound.iter().find(|(p, _)| *p == port) {
            return p;
        }
        if have_cert {
            &self.default_cert
        } else {
            &self.default_plain
        }
    }
}

impl Snapshot {
    /// The service a captured connection's original destination is, if any: one hash
    /// lookup (an IPv4 destination seen through an IPv6 socket is matched as IPv4).
    pub fn service(&self, dst: SocketAddr) -> Option<&Service> {
        self.services.get(&unmapped(dst))
    }

    /// The app's `127.0.0.1:<port>` as a one-endpoint cluster (metric label
    /// `inbound:<port>`), where inbound capture forwards a connection made to `port`.
    pub fn local_target(&self, port: u16) -> Arc<ClusterState> {
        if let Some(t) = self.local.get(&port) {
            return t.clone();
        }
        let mut other = self.local_other.lock().unwrap_or_else(|p| p.into_inner());
        other
            .entry(port)
            .or_insert_with(|| Arc::new(local_target(port)))
            .clone()
    }
}

fn local_target(port: u16) -> ClusterState {
    let app = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    ClusterState::local(&format!("inbound:{port}"), app)
}

/// `::ffff:a.b.c.d` as `a.b.c.d`: the form VIPs are keyed by, and the form a captured
/// connection's original destination is looked up in.
pub(crate) fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// `static-<hash>`: stable for the same config content, different when it changes.
pub fn content_version(config: &Config) -> String {
    let text = serde_json::to_string(&config.raw).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    format!("static-{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str) -> Snapshot {
        Snapshot::from_static(crate::config::from_yaml(yaml).unwrap())
    }

    #[test]
    fn services_map_vips_to_clusters() {
        let s = snapshot(
            "clusters: [ { name: a }, { name: b } ]\n\
             services:\n\
             - { vip: 10.96.0.20:8080, cluster: a, protocol: http }\n\
             - { vip: 10.96.0.20:9090, cluster: b, protocol: opaque }\n\
             - { vip: \"[fd00::20]:8080\", cluster: b }\n",
        );
        let at = |a: &str| {
            s.service(a.parse().unwrap())
                .map(|s| (s.cluster.as_str(), s.protocol))
        };
        use crate::config::Protocol;
        assert_eq!(at("10.96.0.20:8080"), Some(("a", Protocol::Http)));
        assert_eq!(at("10.96.0.20:9090"), Some(("b", Protocol::Opaque)));
        // The same VIP on another port, or another VIP: not a service.
        assert_eq!(at("10.96.0.20:80"), None);
        assert_eq!(at("10.96.0.21:8080"), None);
        // An IPv4 destination read through a dual-stack socket.
        assert_eq!(at("[::ffff:10.96.0.20]:8080"), Some(("a", Protocol::Http)));
        assert_eq!(at("[fd00::20]:8080"), Some(("b", Protocol::Auto)));
    }

    /// A snapshot of `yaml` stored the way the proxy stores one: adopted by `registry`,
    /// reusing `prev`'s state of clusters named in `kept`.
    fn stored(
        yaml: &str,
        registry: &Arc<Registry>,
        prev: Option<&Snapshot>,
        kept: &[&str],
    ) -> Snapshot {
        let cfg = crate::config::from_yaml(yaml).unwrap();
        let mut s = Snapshot::reusing(cfg, "v".into(), prev, |c| kept.contains(&c));
        s.adopt(registry);
        s
    }

    const TWO: &str = "clusters:\n\
        - { name: a, endpoints: [ { address: \"10.0.0.1:80\" }, { address: \"10.0.0.2:80\" } ] }\n\
        - { name: b, endpoints: [ { address: \"10.0.1.1:80\" } ] }\n";

    #[test]
    fn clusters_are_live_from_their_first_use() {
        let registry = Arc::new(Registry::default());
        let s = stored(TWO, &registry, None, &[]);
        let a = s.cluster("a").unwrap();
        assert!(a.peek().is_none() && s.cluster("b").unwrap().peek().is_none());
        assert!(!registry.has("a"), "nothing made before a request");
        assert!(a.pick(None, &[]).is_some());
        assert!(a.peek().is_some() && registry.has("a"));
        assert!(
            s.cluster("b").unwrap().peek().is_none(),
            "b is still unused"
        );
        // `/clusters` and `spoke_endpoints` show an unused cluster without making it live.
        let doc = crate::admin::clusters::document(&s);
        assert_eq!(doc[1]["endpoints"][0]["state"], "healthy");
        a.endpoints()[1].eject(now_ms(), std::time::Duration::from_secs(30));
        let mut text = String::new();
        crate::admin::clusters::render_endpoints(&s, &mut text);
        assert!(s.cluster("b").unwrap().peek().is_none());
        assert_eq!(
            text,
            format!(
                "# HELP spoke_endpoints {}\n# TYPE spoke_endpoints gauge\n\
                 spoke_endpoints{{cluster=\"a\",state=\"healthy\"}} 1\n\
                 spoke_endpoints{{cluster=\"a\",state=\"ejected\"}} 1\n\
                 spoke_endpoints{{cluster=\"a\",state=\"unhealthy\"}} 0\n\
                 spoke_endpoints{{cluster=\"a\",state=\"draining\"}} 0\n\
                 spoke_endpoints{{cluster=\"b\",state=\"healthy\"}} 1\n\
                 spoke_endpoints{{cluster=\"b\",state=\"ejected\"}} 0\n\
                 spoke_endpoints{{cluster=\"b\",state=\"unhealthy\"}} 0\n\
                 spoke_endpoints{{cluster=\"b\",state=\"draining\"}} 0\n",
                crate::metrics::ENDPOINTS_HELP
            )
        );
    }

    #[test]
    fn a_used_cluster_keeps_its_endpoint_state_across_a_push() {
        let registry = Arc::new(Registry::default());
        let s1 = stored(TWO, &registry, None, &[]);
        let a1 = s1.cluster("a").unwrap();
        let now = now_ms();
        assert!(a1.endpoints()[0].eject(now, std::time::Duration::from_secs(30)));
        // `a` changes (one endpoint more): it is live at once, with 10.0.0.1 still ejected.
        let changed = TWO.replace(
            "{ address: \"10.0.0.2:80\" } ]",
            "{ address: \"10.0.0.2:80\" }, { address: \"10.0.0.3:80\" } ]",
        );
        let s2 = stored(&changed, &registry, Some(&s1), &["b"]);
        let a2 = s2.cluster("a").unwrap();
        assert!(a2.peek().is_some(), "a used cluster is adopted when stored");
        assert_eq!(a2.endpoints().len(), 3);
        assert!(a2.endpoints()[0].ejected_for(now).is_some());
        assert!(Arc::ptr_eq(&a1.endpoints()[1], &a2.endpoints()[1]));
        // An unused one stays unused.
        assert!(s2.cluster("b").unwrap().peek().is_none());
    }

    // That a kept cluster's config is shared too is `validate_push`'s doing (tested in
    // `control::client`): the snapshot takes the config it is given.
    #[test]
    fn a_kept_cluster_keeps_its_state() {
        let registry = Arc::new(Registry::default());
        let s1 = stored(TWO, &registry, None, &[]);
        s1.cluster("b").unwrap().live();
        let s2 = stored(TWO, &registry, Some(&s1), &["a", "b"]);
        for name in ["a", "b"] {
            let (c1, c2) = (s1.cluster(name).unwrap(), s2.cluster(name).unwrap());
            assert!(Arc::ptr_eq(c1, c2), "{name}: the same state");
        }
    }

    #[test]
    fn health_checked_clusters_are_live_when_stored() {
        let registry = Arc::new(Registry::default());
        let s = stored(
            "clusters: [ { name: h, endpoints: [ { address: \"10.0.0.1:80\" } ], health_check: { interval: 1s } } ]\n",
            &registry,
            None,
            &[],
        );
        assert!(s.cluster("h").unwrap().peek().is_some());
    }

    #[test]
    fn a_stale_snapshot_made_live_late_does_not_drain_the_current_endpoints() {
        let registry = Arc::new(Registry::default());
        let old = stored(TWO, &registry, None, &[]);
        let moved = TWO.replace("10.0.0.1:80", "10.0.0.9:80");
        let new = stored(&moved, &registry, Some(&old), &["b"]);
        let current = new.cluster("a").unwrap().endpoints().to_vec();
        // A request that loaded the old snapshot before the push uses `a` only now.
        old.cluster("a").unwrap().live();
        let rt = new.cluster("a").unwrap().runtime();
        assert!(
            rt.draining().is_empty(),
            "nothing of the current list drains"
        );
        // The next push that changes `a` still finds the current endpoints' state.
        let again = moved.replace(
            "{ address: \"10.0.0.2:80\" }",
            "{ address: \"10.0.0.2:80\", weight: 2 }",
        );
        let next = stored(&again, &registry, Some(&new), &["b"]);
        let eps = next.cluster("a").unwrap().endpoints();
        assert!(Arc::ptr_eq(&eps[0], &current[0]) && Arc::ptr_eq(&eps[1], &current[1]));
    }

    #[test]
    fn local_targets_are_made_once_per_port() {
        let s = snapshot("inbound: [ { port: 8080, tls: disabled } ]\n");
        let a = s.local_target(8080);
        assert!(Arc::ptr_eq(&a, &s.local_target(8080)));
        assert_eq!(a.config.name, "inbound:8080");
        assert_eq!(
            a.config.endpoints[0].address,
            EndpointAddr::Ip("127.0.0.1:8080".parse().unwrap())
        );
        // A port without an inbound entry: made on first use, then the same one.
        let b = s.local_target(9090);
        assert!(Arc::ptr_eq(&b, &s.local_target(9090)));
        assert_eq!(b.config.name, "inbound:9090");
    }
}
