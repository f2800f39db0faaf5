//! The sidecar's copy of the control plane's resources (see `resources`): the clusters and
//! the mesh resource it last applied, each with its version. An incremental push is staged
//! against it (parsed, nothing changed yet), turned into the whole remote config for
//! validation, and committed only once the snapshot built from it is in place; a refused
//! push leaves it as it was, which is what the sidecar then reports on a reconnect.

use std::collections::{BTreeMap, HashMap};

use super::pb::ads::DeltaDiscoveryResponse;
use super::resources::{CLUSTER_PREFIX, CLUSTER_TYPE_URL, MESH_RESOURCE, MESH_TYPE_URL};
use crate::config::raw;

/// The resources last applied.
#[derive(Default)]
pub struct Held {
    /// Cluster name -> (version, cluster).
    clusters: BTreeMap<String, (String, raw::Cluster)>,
    mesh: Option<(String, raw::File)>,
}

/// One parsed push, not applied yet.
#[derive(Default)]
pub struct Staged {
    clusters: BTreeMap<String, (String, raw::Cluster)>,
    mesh: Option<(String, raw::File)>,
    /// Cluster names to drop.
    removed: Vec<String>,
}

impl Staged {
    /// Resources the push carried (added, replaced or removed).
    pub fn len(&self) -> usize {
        self.clusters.len() + self.mesh.iter().count() + self.removed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl Held ===

impl Held {
    /// name -> version of every held resource: the `initial_resource_versions` of a new stream.
    pub fn versions(&self) -> HashMap<String, String> {
        let mut v: HashMap<String, String> = self
            .clusters
            .iter()
            .map(|(n, (ver, _))| (format!("{CLUSTER_PREFIX}{n}"), ver.clone()))
            .collect();
        if let Some((ver, _)) = &self.mesh {
            v.insert(MESH_RESOURCE.to_string(), ver.clone());
        }
        v
    }

    /// Parses a push. Any resource that is not understood refuses the whole push.
    pub fn stage(&self, resp: &DeltaDiscoveryResponse) -> Result<Staged, String> {
        let mut staged = Staged::default();
        for r in &resp.resources {
            let any = r
                .resource
                .as_ref()
                .ok_or_else(|| format!("resource {:?} has no body", r.name))?;
            match (r.name.strip_prefix(CLUSTER_PREFIX), any.type_url.as_str()) {
                (Some(name), CLUSTER_TYPE_URL) => {
                    let c: raw::Cluster = serde_json::from_slice(&any.value)
                        .map_err(|e| format!("resource {:?} does not parse: {e}", r.name))?;
                    if c.name != name {
                        return Err(format!("resource {:?} holds cluster {:?}", r.name, c.name));
                    }
                    staged
                        .clusters
                        .insert(name.to_string(), (r.version.clone(), c));
                }
                (None, MESH_TYPE_URL) if r.name == MESH_RESOURCE => {
                    let m: raw::File = serde_json::from_slice(&any.value)
                        .map_err(|e| format!("resource {:?} does not parse: {e}", r.name))?;
                    staged.mesh = Some((r.version.clone(), m));
                }
                _ => {
                    return Err(format!(
                        "unexpected resource {:?} of type {:?}",
                        r.name, any.type_url
                    ))
                }
            }
        }
        for n in &resp.removed_resources {
            match n.strip_prefix(CLUSTER_PREFIX) {
                Some(name) => staged.removed.push(name.to_string()),
                None => return Err(format!("resource {n:?} cannot be removed")),
            }
        }
        if staged.mesh.is_none() && self.mesh.is_none() {
            return Err(format!(
                "the first push lacks the {MESH_RESOURCE:?} resource"
            ));
        }
        Ok(staged)
    }

    /// The whole remote config with `staged` applied.
    pub fn remote(&self, staged: &Staged) -> raw::File {
        let base = staged
            .mesh
            .as_ref()
            .or(self.mesh.as_ref())
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let kept = self.clusters.iter().filter(|(n, _)| {
            !staged.clusters.contains_key(*n) && !staged.removed.iter().any(|r| r == *n)
        });
        let mut clusters: Vec<&(String, raw::Cluster)> = kept.map(|(_, c)| c).collect();
        clusters.extend(staged.clusters.values());
        raw::File {
            clusters: clusters.into_iter().map(|(_, c)| c.clone()).collect(),
            ..base
        }
    }

    /// Makes `staged` the held state (after its snapshot is in place).
    pub fn commit(&mut self, staged: Staged) {
        for n in &staged.removed {
            self.clusters.remove(n);
        }
        self.clusters.extend(staged.clusters);
        if staged.mesh.is_some() {
            self.mesh = staged.mesh;
        }
    }

    /// Held clusters.
    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
    }
}
