//! The config snapshot the data plane reads: a validated config plus everything built from
//! it (endpoint sets, per-port inbound policies). A new snapshot is built
//! whole and swapped in with one `ArcSwap::store`; each connection loads one and keeps it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::authz::PortPolicy;
use crate::balance::EndpointSet;
use crate::config::{Cluster, Config};
use crate::proxy::http::retry::Budget;

/// One cluster as the data plane sees it.
#[derive(Debug)]
pub struct ClusterState {
    pub config: Cluster,
    pub endpoints: EndpointSet,
    pub budget: Budget,
}

impl ClusterState {
    pub fn new(config: Cluster) -> Self {
        ClusterState {
            endpoints: EndpointSet::new(config.endpoints.clone()),
            config,
            budget: Budget::default(),
        }
    }

    /// The local app behind an inbound listener, as a one-endpoint plaintext cluster.
    pub fn local(name: &str, app: std::net::SocketAddr) -> Self {
        Self::new(Cluster {
            name: name.to_string(),
            lb: crate::config::Lb::RoundRobin,
            tls: None,
            connect_timeout: crate::config::DEFAULT_CONNECT_TIMEOUT,
            connect_attempts: 1,
            endpoints: vec![crate::config::Endpoint {
                address: crate::config::EndpointAddr::Ip(app),
                weight: 1,
            }],
            circuit_breaker: Default::default(),
            outlier_detection: None,
        })
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: String,
    pub config: Arc<Config>,
    clusters: HashMap<String, Arc<ClusterState>>,
    inbound: Vec<(u16, PortPolicy)>,
    default_cert: PortPolicy,
    default_plain: PortPolicy,
}

impl Snapshot {
    pub fn new(config: Config, version: String) -> Self {
        let clusters = config
            .clusters
            .iter()
            .map(|c| (c.name.clone(), Arc::new(ClusterState::new(c.clone()))))
            .collect();
        let inbound = config
            .inbound
            .iter()
            .map(|p| (p.port, PortPolicy::new(p)))
            .collect();
        Snapshot {
            version,
            default_cert: PortPolicy::default_for(true, config.default_policy),
            default_plain: PortPolicy::default_for(false, config.default_policy),
            inbound,
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

/// `static-<hash>`: stable for the same config content, different when it changes.
pub fn content_version(config: &Config) -> String {
    let text = serde_json::to_string(&config.raw).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    format!("static-{:016x}", h.finish())
}
