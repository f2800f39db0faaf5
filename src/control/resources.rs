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

use super::mesh::{self, MeshConfig};
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

/// One cluster's resource and the cluster it was encoded from.
struct Entry {
    source: Arc<raw::Cluster>,
    encoded: Arc<Encoded>,
}

/// The resources of one mesh version.
#[derive(Default)]
pub struct Resources {
    /// By cluster name (shared with the previous version's map: no string is copied).
    clusters: HashMap<Arc<str>, Entry>,
    change: Option<Change>,
    /// Clusters encoded for this version (the others were taken from the previous one).
    encoded: usize,
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
fn same_views(a: &Arc<raw::File>, b: &Arc<raw::File>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.routes == b.routes
            && a.services == b.services
            && a.workloads == b.workloads
            && a.default_policy == b.default_policy
            && a.tracing == b.tracing)
}

fn encode_cluster(c: &raw::Cluster) -> Arc<Encoded> {
    encode(format!("{CLUSTER_PREFIX}{}", c.name), CLUSTER_TYPE_URL, c)
}

// === impl Resources ===

impl Resources {
    /// The resources of `mesh` (version `version`), reusing `prev`'s (version
    /// `version - 1`) where their input is unchanged: a cluster that is the same `Arc` (or
    /// equal) keeps its encoding, and only the others are encoded.
    pub fn build(mesh: &MeshConfig, prev: Option<(&MeshConfig, &Resources)>, version: u64) -> Self {
        let empty = HashMap::new();
        let old = prev.map_or(&empty, |(_, r)| &r.clusters);
        let mut clusters = HashMap::with_capacity(mesh.clusters.len());
        let mut changed = Vec::new();
        // Clusters of `old` that this version has too: when all are, nothing was removed.
        let mut kept = 0;
        for c in &mesh.clusters {
            let (key, encoded) = match old.get_key_value(c.name.as_str()) {
                Some((k, e)) if Arc::ptr_eq(&e.source, c) || e.source == *c => {
                    kept += 1;
                    (k.clone(), e.encoded.clone())
                }
                found => {
                    kept += usize::from(found.is_some());
                    let e = encode_cluster(c);
                    changed.push(e.clone());
                    (Arc::from(c.name.as_str()), e)
                }
            };
            let entry = Entry {
                source: c.clone(),
                encoded,
            };
            clusters.insert(key, entry);
        }
        let encoded = changed.len();
        let Some((prev_mesh, prev_res)) = prev else {
            return Resources {
                clusters,
                encoded,
                ..Default::default()
            };
        };
        let removed = if kept == old.len() {
            Vec::new()
        } else {
            old.iter()
                .filter(|(n, _)| !clusters.contains_key(*n))
                .map(|(_, e)| e.encoded.name.clone())
                .collect()
        };
        let views = if same_views(&prev_mesh.rest, &mesh.rest) {
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
            encoded,
            views: Mutex::new(views),
        }
    }

    /// How many clusters this version encoded (the rest it shares with the previous one).
    pub fn encoded(&self) -> usize {
        self.encoded
    }

    /// The cluster resources.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Encoded>> {
        self.clusters.values().map(|e| &e.encoded)
    }

    /// The mesh resource of the workload `id`, built once per identity and version from
    /// the mesh's rest.
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
                for e in self.clusters() {
                    if known.get(&e.name) != Some(&e.version) {
                        inc.resources.push(e.clone());
                    }
                }
                inc.removed.extend(
                    known
                        .keys()
                        .filter(|n| {
                            n.strip_prefix(CLUSTER_PREFIX)
                                .is_some_and(|c| !self.clusters.contains_key(c))
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

    fn cluster(name: &str, addr: &str) -> raw::Cluster {
        raw::Cluster {
            name: name.to_string(),
            endpoints: vec![raw::Endpoint {
                address: addr.to_string(),
                weight: None,
                priority: None,
            }],
            ..Default::default()
        }
    }

    fn mesh(eps: &[(&str, &str)]) -> MeshConfig {
        MeshConfig::from_raw(raw::File {
            clusters: eps.iter().map(|(n, a)| Arc::new(cluster(n, a))).collect(),
            ..Default::default()
        })
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
        let v1 = r1.view(&m1.rest, None);
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
        let v2 = r2.view(&m2.rest, None);
        assert!(Arc::ptr_eq(&v1, &v2), "an unchanged view is reused");
        for at in [Some(1), None] {
            let inc = r2.increment(&known, at, v2.clone());
            assert_eq!(names(&inc), ["cluster/b"], "known_at {at:?}");
            assert_eq!(inc.removed, ["cluster/c"]);
        }
    }

    #[test]
    fn only_a_changed_cluster_is_encoded_again() {
        let m1 = mesh(&[("a", "10.0.0.1:80"), ("b", "10.0.0.2:80")]);
        let r1 = Resources::build(&m1, None, 1);
        assert_eq!(r1.encoded(), 2);
        // The next version shares `a` (the same Arc) and has a new `b`.
        let m2 = MeshConfig {
            clusters: vec![
                m1.clusters[0].clone(),
                Arc::new(cluster("b", "10.0.0.9:80")),
            ],
            rest: m1.rest.clone(),
        };
        let r2 = Resources::build(&m2, Some((&m1, &r1)), 2);
        assert_eq!(r2.encoded(), 1, "only b");
        let enc = |r: &Resources, n: &str| r.clusters[n].encoded.clone();
        assert!(Arc::ptr_eq(&enc(&r1, "a"), &enc(&r2, "a")));
        assert_ne!(enc(&r1, "b").version, enc(&r2, "b").version);
        // An equal cluster that is another Arc (a file re-parsed) is not encoded either.
        let m3 = mesh(&[("a", "10.0.0.1:80"), ("b", "10.0.0.9:80")]);
        let r3 = Resources::build(&m3, Some((&m2, &r2)), 3);
        assert_eq!(r3.encoded(), 0);
    }
}
