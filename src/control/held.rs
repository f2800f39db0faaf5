//! The sidecar's copy of the control plane's resources (see `resources`): the clusters and
//! the mesh resource it last applied, each with its version. An incremental push is staged
//! against it (parsed, nothing changed yet), turned into the whole remote config for
//! validation, and committed only once the snapshot built from it is in place; a refused
//! push leaves it as it was, which is what the sidecar then reports on a reconnect.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::pb::ads::DeltaDiscoveryResponse;
use super::resources::{CLUSTER_PREFIX, CLUSTER_TYPE_URL, MESH_RESOURCE, MESH_TYPE_URL};
use crate::config::raw;

/// The resources last applied.
#[derive(Default)]
pub struct Held {
    /// Cluster name -> (version, cluster).
    clusters: BTreeMap<String, (String, Arc<raw::Cluster>)>,
    mesh: Option<(String, raw::File)>,
}

/// One parsed push, not applied yet.
#[derive(Default)]
pub struct Staged {
    clusters: BTreeMap<String, (String, Arc<raw::Cluster>)>,
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
                        .insert(name.to_string(), (r.version.clone(), Arc::new(c)));
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
        let mut clusters: Vec<&(String, Arc<raw::Cluster>)> = kept.map(|(_, c)| c).collect();
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

    /// Whether cluster `name` is held and `staged` leaves it as it is: its snapshot state
    /// can be kept.
    pub fn unchanged(&self, staged: &Staged, name: &str) -> bool {
        self.clusters.contains_key(name)
            && !staged.clusters.contains_key(name)
            && !staged.removed.iter().any(|r| r == name)
    }

    /// Held clusters.
    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::pb::ads::{Any, Resource};

    fn cluster(name: &str, addr: &str) -> Resource {
        let c = raw::Cluster {
            name: name.into(),
            endpoints: vec![raw::Endpoint {
                address: addr.into(),
                weight: None,
                priority: None,
            }],
            ..Default::default()
        };
        Resource {
            version: addr.into(),
            resource: Some(Any {
                type_url: CLUSTER_TYPE_URL.into(),
                value: serde_json::to_vec(&c).unwrap(),
            }),
            name: format!("{CLUSTER_PREFIX}{name}"),
            aliases: vec![],
        }
    }

    fn mesh() -> Resource {
        Resource {
            version: "m".into(),
            resource: Some(Any {
                type_url: MESH_TYPE_URL.into(),
                value: b"{}".to_vec(),
            }),
            name: MESH_RESOURCE.into(),
            aliases: vec![],
        }
    }

    fn push(resources: Vec<Resource>, removed: &[&str]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            resources,
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn names(f: &raw::File) -> Vec<(&str, &str)> {
        f.clusters
            .iter()
            .map(|c| (c.name.as_str(), c.endpoints[0].address.as_str()))
            .collect()
    }

    #[test]
    fn pushes_stage_onto_what_is_held_and_commit_only_when_told() {
        let mut held = Held::default();
        let first = push(vec![cluster("a", "1"), cluster("b", "2")], &[]);
        assert!(
            held.stage(&first).is_err(),
            "a first push needs the mesh resource"
        );
        let first = push(vec![cluster("a", "1"), cluster("b", "2"), mesh()], &[]);
        let staged = held.stage(&first).unwrap();
        held.commit(staged);
        assert_eq!(held.versions().len(), 3);

        let next = push(vec![cluster("b", "3"), cluster("c", "4")], &["cluster/a"]);
        let staged = held.stage(&next).unwrap();
        assert_eq!(names(&held.remote(&staged)), [("b", "3"), ("c", "4")]);
        // Not committed: a refused push leaves the held set as it was.
        assert_eq!(
            names(&held.remote(&Staged::default())),
            [("a", "1"), ("b", "2")]
        );
        held.commit(staged);
        assert_eq!(
            names(&held.remote(&Staged::default())),
            [("b", "3"), ("c", "4")]
        );
        assert_eq!(held.versions()["cluster/b"], "3");
    }

    #[test]
    fn resources_that_are_not_understood_refuse_the_push() {
        let held = Held::default();
        let mut wrong = cluster("a", "1");
        wrong.name = "cluster/b".into();
        assert!(held.stage(&push(vec![wrong, mesh()], &[])).is_err());
        let mut odd = mesh();
        odd.name = "other".into();
        assert!(held.stage(&push(vec![odd], &[])).is_err());
        assert!(held.stage(&push(vec![mesh()], &["mesh"])).is_err());
    }
}
