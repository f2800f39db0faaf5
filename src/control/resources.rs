//! The incremental stream's resources, built once per mesh version by `publish()` and shared
//! by every stream: one `Cluster` resource per cluster (named `cluster/<name>`) and one
//! `Mesh` resource per workload identity (named `mesh`: routes, services, its inbound
//! policy, the default policy, tracing). Each carries a content hash as its version, so a
//! stream sends a sidecar only the resources whose hash differs from what it holds.
//!
//! A new version reuses the previous version's encodings of every cluster that did not
//! change, and remembers which ones did, so a stream that is in sync with the previous
//! version gets its increment without looking at the other clusters.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::mesh;
use super::state::lock;
use crate::config::{raw, Identity};

/// The type of a cluster resource: one `raw::Cluster` as JSON.
pub const CLUSTER_TYPE_URL: &str = "type.spoke.dev/spoke.v1.Cluster";
/// The type of the mesh resource: a `raw::File` with routes, services, inbound,
/// default_policy and tracing (no clusters) as JSON.
pub const MESH_TYPE_URL: &str = "type.spoke.dev/spoke.v1.Mesh";
/// Cluster resources are named `cluster/<cluster name>`.
pub const CLUSTER_PREFIX: &str = "cluster/";
/// The one mesh resource's name.
pub const MESH_RESOURCE: &str = "mesh";

/// One resource, encoded once and shared by every stream that sends it.
#[derive(Debug)]
pub struct Encoded {
    pub name: String,
    /// Content hash (hex): equal bodies have equal versions.
    pub version: String,
    pub type_url: &'static str,
    pub body: Bytes,
}

/// What changed from the previous mesh version.
struct Change {
    from: u64,
    changed: Vec<Arc<Encoded>>,
    removed: Vec<String>,
}

/// The resources of one mesh version.
#[derive(Default)]
pub struct Resources {
    clusters: HashMap<String, Arc<Encoded>>,
    change: Option<Change>,
    /// Mesh resources by identity (`""` for none), built on first use.
    views: Mutex<HashMap<String, Arc<Encoded>>>,
}

/// What to send one stream: resources to add or replace, and names to remove.
#[derive(Debug, Default)]
pub struct Increment {
    pub resources: Vec<Arc<Encoded>>,
    pub removed: Vec<String>,
}

fn encode<T: serde::Serialize>(name: String, type_url: &'static str, value: &T) -> Arc<Encoded> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut h = DefaultHasher::new();
    body.hash(&mut h);
    Arc::new(Encoded {
        name,
        version: format!("{:016x}", h.finish()),
        type_url,
        body: Bytes::from(body),
    })
}

/// Whether two meshes give every workload the same mesh resource.
fn same_views(a: &raw::File, b: &raw::File) -> bool {
    a.routes == b.routes
        && a.services == b.services
        && a.workloads == b.workloads
        && a.default_policy == b.default_policy
        && a.tracing == b.tracing
}

// === impl Resources ===

impl Resources {
    /// The resources of `raw` (version `version`), reusing `prev`'s (version `version - 1`)
    /// where their input is unchanged.
    pub fn build(raw: &raw::File, prev: Option<(&raw::File, &Resources)>, version: u64) -> Self {
        let Some((prev_raw, prev_res)) = prev else {
            let clusters = raw
                .clusters
                .iter()
                .map(|c| {
                    let name = format!("{CLUSTER_PREFIX}{}", c.name);
                    (name.clone(), encode(name, CLUSTER_TYPE_URL, c))
                })
                .collect();
            return Resources {
                clusters,
                ..Default::default()
            };
        };
        let old: HashMap<&str, &raw::Cluster> = prev_raw
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c))
            .collect();
        let mut clusters = HashMap::with_capacity(raw.clusters.len());
        let mut changed = Vec::new();
        for c in &raw.clusters {
            let name = format!("{CLUSTER_PREFIX}{}", c.name);
            let kept = (old.get(c.name.as_str()) == Some(&c))
                .then(|| prev_res.clusters.get(&name).cloned())
                .flatten();
            let e = match kept {
                Some(e) => e,
                None => {
                    let e = encode(name.clone(), CLUSTER_TYPE_URL, c);
                    changed.push(e.clone());
                    e
                }
            };
            clusters.insert(name, e);
        }
        let removed = prev_res
            .clusters
            .keys()
            .filter(|n| !clusters.contains_key(*n))
            .cloned()
            .collect();
        let views = if same_views(prev_raw, raw) {
            lock(&prev_res.views).clone()
        } else {
            HashMap::new()
        };
        Resources {
            clusters,
            change: Some(Change {
                from: version.saturating_sub(1),
                changed,
                removed,
            }),
            views: Mutex::new(views),
        }
    }

    /// The cluster resources.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Encoded>> {
        self.clusters.values()
    }

    /// The mesh resource of the workload `id`, built once per identity and version.
    pub fn view(&self, raw: &raw::File, id: Option<&Identity>) -> Arc<Encoded> {
        let key = id.map(|i| i.as_str().to_string()).unwrap_or_default();
        if let Some(e) = lock(&self.views).get(&key) {
            return e.clone();
        }
        let view = mesh::workload_rest(raw, id);
        let e = encode(MESH_RESOURCE.to_string(), MESH_TYPE_URL, &view);
        lock(&self.views).insert(key, e.clone());
        e
    }

    /// What a stream holding `known` (name -> version) needs to reach this version.
    /// `known_at` is the mesh version `known` matches exactly, if any: a stream at the
    /// previous version gets the recorded change without a scan of every cluster.
    pub fn increment(
        &self,
        known: &HashMap<String, String>,
        known_at: Option<u64>,
        view: Arc<Encoded>,
    ) -> Increment {
        let mut inc = Increment::default();
        match (&self.change, known_at) {
            (Some(c), Some(at)) if c.from == at => {
                inc.resources.extend(c.changed.iter().cloned());
                inc.removed.extend(c.removed.iter().cloned());
            }
            _ => {
                for e in self.clusters.values() {
                    if known.get(&e.name) != Some(&e.version) {
                        inc.resources.push(e.clone());
                    }
                }
                inc.removed.extend(
                    known
                        .keys()
                        .filter(|n| {
                            n.starts_with(CLUSTER_PREFIX) && !self.clusters.contains_key(*n)
                        })
                        .cloned(),
                );
            }
        }
        if known.get(MESH_RESOURCE) != Some(&view.version) {
            inc.resources.push(view);
        }
        inc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(eps: &[(&str, &str)]) -> raw::File {
        raw::File {
            clusters: eps
                .iter()
                .map(|(n, a)| raw::Cluster {
                    name: n.to_string(),
                    endpoints: vec![raw::Endpoint {
                        address: a.to_string(),
                        weight: None,
                        priority: None,
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn names(inc: &Increment) -> Vec<&str> {
        let mut v: Vec<&str> = inc.resources.iter().map(|e| e.name.as_str()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_change_sends_only_the_changed_cluster_and_removals() {
        let m1 = mesh(&[
            ("a", "10.0.0.1:80"),
            ("b", "10.0.0.2:80"),
            ("c", "10.0.0.3:80"),
        ]);
        let r1 = Resources::build(&m1, None, 1);
        let v1 = r1.view(&m1, None);
        let full = r1.increment(&HashMap::new(), None, v1.clone());
        assert_eq!(
            names(&full),
            ["cluster/a", "cluster/b", "cluster/c", "mesh"]
        );
        let known: HashMap<String, String> = full
            .resources
            .iter()
            .map(|e| (e.name.clone(), e.version.clone()))
            .collect();

        let m2 = mesh(&[("a", "10.0.0.1:80"), ("b", "10.0.0.9:80")]);
        let r2 = Resources::build(&m2, Some((&m1, &r1)), 2);
        let v2 = r2.view(&m2, None);
        assert!(Arc::ptr_eq(&v1, &v2), "an unchanged view is reused");
        for at in [Some(1), None] {
            let inc = r2.increment(&known, at, v2.clone());
            assert_eq!(names(&inc), ["cluster/b"], "known_at {at:?}");
            assert_eq!(inc.removed, ["cluster/c"]);
        }
    }
}
