//! The control plane's mesh config: every `*.yaml` in a directory, merged into one
//! `raw::File` of clusters, routes, services, workloads and the default policy, validated
//! with the same code as a proxy config; and the per-workload view a sidecar receives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{self, raw, ConfigError, Diagnostic, Identity, Located, Positions};

/// The mesh config files of `dir`: every `*.yaml`/`*.yml` that is not a dotfile (editors and
/// atomic writers keep their temporary files as dotfiles), in name order.
pub fn files(dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let mut names: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect(),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    names.sort();
    Ok(names)
}

/// Where each entry of the merged lists came from, to place errors found on the merge.
#[derive(Default)]
struct Origins {
    /// (file name, where its paths are)
    files: Vec<(String, Positions)>,
    /// list name -> for each merged entry, (file index, index in that file)
    lists: HashMap<&'static str, Vec<(usize, usize)>>,
    default_policy: Option<usize>,
    tracing: Option<usize>,
}

impl Origins {
    fn add(&mut self, list: &'static str, file: usize, n: usize) {
        self.lists
            .entry(list)
            .or_default()
            .extend((0..n).map(|i| (file, i)));
    }

    /// `clusters[3].name` of the merge is `clusters[1].name` of the second file.
    fn place(&self, dir: &Path, e: ConfigError) -> Diagnostic {
        for (list, from) in &self.lists {
            let Some(rest) = e.path.strip_prefix(list).and_then(|r| r.strip_prefix('[')) else {
                continue;
            };
            let Some((n, rest)) = rest.split_once(']') else {
                continue;
            };
            if let Some(&(file, i)) = n.parse::<usize>().ok().and_then(|n| from.get(n)) {
                let (name, pos) = &self.files[file];
                let path = format!("{list}[{i}]{rest}");
                return Diagnostic::new(name, pos.locate(ConfigError { path, ..e }));
            }
        }
        if let (Some(file), true) = (self.tracing, e.path.starts_with("tracing")) {
            let (name, pos) = &self.files[file];
            return Diagnostic::new(name, pos.locate(e));
        }
        match self.default_policy.or(self.files.len().checked_sub(1)) {
            Some(file) if e.path.starts_with("default_policy") || self.files.len() == 1 => {
                let (name, pos) = &self.files[file];
                Diagnostic::new(name, pos.locate(e))
            }
            _ => Diagnostic::new(
                &dir.display().to_string(),
                Located {
                    line: 1,
                    col: 1,
                    error: e,
                },
            ),
        }
    }
}

/// Reads and merges `dir/*.yaml` (in name order), as `spoke control` serves it and
/// `spoke check --mesh` checks it. Every problem is placed in its file:
/// `FILE:LINE:COL: path: message`.
pub fn load_dir(dir: &Path) -> Result<raw::File, Vec<Diagnostic>> {
    let names = files(dir).map_err(|e| vec![Diagnostic::whole(&dir.display().to_string(), e)])?;
    let mut merged = raw::File::default();
    let mut errors = Vec::new();
    let mut origins = Origins::default();
    for p in &names {
        let name = p.display().to_string();
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                errors.push(Diagnostic::whole(&name, format!("cannot read: {e}")));
                continue;
            }
        };
        match config::parse_located(&text) {
            Ok((f, pos)) => {
                for e in check_mesh_only(&f) {
                    errors.push(Diagnostic::new(&name, pos.locate(e)));
                }
                let k = origins.files.len();
                origins.add("clusters", k, f.clusters.len());
                origins.add("routes", k, f.routes.len());
                origins.add("services", k, f.services.len());
                origins.add("workloads", k, f.workloads.len());
                origins.files.push((name, pos));
                merged.clusters.extend(f.clusters);
                merged.routes.extend(f.routes);
                merged.services.extend(f.services);
                merged.workloads.extend(f.workloads);
                if f.default_policy.is_some() {
                    merged.default_policy = f.default_policy;
                    origins.default_policy = Some(k);
                }
                if f.tracing.is_some() {
                    merged.tracing = f.tracing;
                    origins.tracing = Some(k);
                }
            }
            Err(es) => errors.extend(es.into_iter().map(|l| Diagnostic::new(&name, l))),
        }
    }
    if let Err(errs) = config::validate(&merged) {
        errors.extend(errs.into_iter().map(|e| origins.place(dir, e)));
    }
    if errors.is_empty() {
        Ok(merged)
    } else {
        Err(errors)
    }
}

/// A mesh config holds only what the control plane distributes.
pub(super) fn check_mesh_only(f: &raw::File) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut no = |field: &str, present: bool| {
        if present {
            out.push(ConfigError {
                path: field.to_string(),
                message: "belongs in a proxy config, not the mesh config (which takes clusters, routes, services, workloads, default_policy, tracing)".into(),
            });
        }
    };
    no("node", f.node.is_some());
    no("admin", f.admin.is_some());
    no("stats", f.stats.is_some());
    no("tls", f.tls.is_some());
    no("control", f.control.is_some());
    no("listeners", !f.listeners.is_empty());
    no("inbound", !f.inbound.is_empty());
    no("drain_timeout", f.drain_timeout.is_some());
    no("access_log", f.access_log.is_some());
    out
}

/// The merged mesh as the control plane holds it: each cluster shared by `Arc` (an
/// unchanged cluster is the same pointer from one version to the next, so nothing about it
/// is copied, compared or encoded again) and the rest of the mesh in one shared file.
#[derive(Debug, Clone, Default)]
pub struct MeshConfig {
    /// In the order of the files (name order), Kubernetes' after them.
    pub clusters: Vec<Arc<raw::Cluster>>,
    /// Routes, services, workloads, default policy and tracing; its `clusters` is empty.
    pub rest: Arc<raw::File>,
}

// === impl MeshConfig ===

impl MeshConfig {
    /// Splits a whole mesh file.
    pub fn from_raw(mut f: raw::File) -> Self {
        MeshConfig {
            clusters: std::mem::take(&mut f.clusters),
            rest: Arc::new(f),
        }
    }

    /// The mesh as one file (clusters shared).
    pub fn to_raw(&self) -> raw::File {
        raw::File {
            clusters: self.clusters.clone(),
            ..(*self.rest).clone()
        }
    }

    /// `workload_view` of this mesh.
    pub fn workload_view(&self, id: Option<&Identity>) -> raw::File {
        raw::File {
            clusters: self.clusters.clone(),
            ..workload_rest(&self.rest, id)
        }
    }

    /// Whether both hold the same mesh; shared parts compare by pointer before content.
    pub fn same(&self, other: &MeshConfig) -> bool {
        self.clusters.len() == other.clusters.len()
            && self
                .clusters
                .iter()
                .zip(&other.clusters)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
            && (Arc::ptr_eq(&self.rest, &other.rest) || self.rest == other.rest)
    }
}

/// What one workload receives: the shared clusters, routes and services, plus its own
/// inbound policy.
pub fn workload_view(mesh: &raw::File, id: Option<&Identity>) -> raw::File {
    raw::File {
        clusters: mesh.clusters.clone(),
        ..workload_rest(mesh, id)
    }
}

/// A workload's view without the clusters: the body of its `mesh` resource (`mesh` is the
/// mesh's rest; its clusters are not looked at).
pub fn workload_rest(mesh: &raw::File, id: Option<&Identity>) -> raw::File {
    let inbound = id
        .and_then(|id| mesh.workloads.iter().find(|w| w.identity == id.as_str()))
        .map(|w| w.inbound.clone())
        .unwrap_or_default();
    raw::File {
        routes: mesh.routes.clone(),
        services: mesh.services.clone(),
        inbound,
        default_policy: mesh.default_policy,
        tracing: mesh.tracing.clone(),
        ..Default::default()
    }
}

/// A sidecar's effective config: its own file's node, admin, stats, TLS, control and
/// listeners, with everything else from the control plane.
pub fn merge_local(local: &raw::File, remote: raw::File) -> raw::File {
    raw::File {
        node: local.node.clone(),
        admin: local.admin.clone(),
        stats: local.stats.clone(),
        tls: local.tls.clone(),
        control: local.control.clone(),
        drain_timeout: local.drain_timeout.clone(),
        listeners: local.listeners.clone(),
        clusters: remote.clusters,
        routes: remote.routes,
        services: remote.services,
        inbound: remote.inbound,
        default_policy: remote.default_policy,
        workloads: Vec::new(),
        // The mesh's tracing settings, else the sidecar's own.
        tracing: remote.tracing.or_else(|| local.tracing.clone()),
        access_log: local.access_log,
    }
}
