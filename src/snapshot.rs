//! The config snapshot the data plane reads: a validated config plus everything built from
//! it (endpoint sets now; routes and TLS configs as they arrive). A new snapshot is built
//! whole and swapped in with one `ArcSwap::store`; each connection loads one and keeps it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::balance::EndpointSet;
use crate::config::{Cluster, Config};

/// One cluster as the data plane sees it.
#[derive(Debug)]
pub struct ClusterState {
    pub config: Cluster,
    pub endpoints: EndpointSet,
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: String,
    pub config: Arc<Config>,
    clusters: HashMap<String, Arc<ClusterState>>,
}

impl Snapshot {
    pub fn new(config: Config, version: String) -> Self {
        let clusters = config
            .clusters
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(ClusterState {
                        config: c.clone(),
                        endpoints: EndpointSet::new(c.endpoints.clone()),
                    }),
                )
            })
            .collect();
        Snapshot {
            version,
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

/// `static-<hash>`: stable for the same config content, different when it changes.
pub fn content_version(config: &Config) -> String {
    let text = serde_json::to_string(&config.raw).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    format!("static-{:016x}", h.finish())
}
