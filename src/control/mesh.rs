//! The control plane's mesh config: every `*.yaml` in a directory, merged into one
//! `raw::File` of clusters, routes, services, workloads and the default policy, validated
//! with the same code as a proxy config; and the per-workload view a sidecar receives.

use std::path::Path;

use crate::config::{self, raw, ConfigError, Identity};

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

/// Reads and merges `dir/*.yaml` (in name order). Every problem is reported with its file.
pub fn load_dir(dir: &Path) -> Result<raw::File, Vec<String>> {
    let names = files(dir).map_err(|e| vec![e])?;
    let mut merged = raw::File::default();
    let mut errors = Vec::new();
    for p in &names {
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: {e}", p.display()));
                continue;
            }
        };
        match config::parse_yaml(&text) {
            Ok(f) => {
                for e in check_mesh_only(&f) {
                    errors.push(format!("{}: {e}", p.display()));
                }
                merged.clusters.extend(f.clusters);
                merged.routes.extend(f.routes);
                merged.services.extend(f.services);
                merged.workloads.extend(f.workloads);
                if f.default_policy.is_some() {
                    merged.default_policy = f.default_policy;
                }
            }
            Err(e) => errors.push(format!("{}: {e}", p.display())),
        }
    }
    if let Err(errs) = config::validate(&merged) {
        errors.extend(errs.iter().map(|e| e.to_string()));
    }
    if errors.is_empty() {
        Ok(merged)
    } else {
        Err(errors)
    }
}

/// A mesh config holds only what the control plane distributes.
fn check_mesh_only(f: &raw::File) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut no = |field: &str, present: bool| {
        if present {
            out.push(ConfigError {
                path: field.to_string(),
                message: "belongs in a proxy config, not the mesh config (which takes clusters, routes, services, workloads, default_policy)".into(),
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

/// What one workload receives: the shared clusters, routes and services, plus its own
/// inbound policy.
pub fn workload_view(mesh: &raw::File, id: Option<&Identity>) -> raw::File {
    let inbound = id
        .and_then(|id| mesh.workloads.iter().find(|w| w.identity == id.as_str()))
        .map(|w| w.inbound.clone())
        .unwrap_or_default();
    raw::File {
        clusters: mesh.clusters.clone(),
        routes: mesh.routes.clone(),
        services: mesh.services.clone(),
        inbound,
        default_policy: mesh.default_policy,
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
        access_log: local.access_log,
    }
}
