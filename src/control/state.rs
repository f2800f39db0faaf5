//! The control plane's state: the sources of the mesh (the config directory and, with
//! `--kubernetes`, the cluster's Services), the one `publish()` that merges them into the
//! versioned mesh every stream pushes, the connected sidecars and the `/status` document.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::cache::{self, ClusterCache};
use super::mesh::{self, MeshConfig};
use super::resources::Resources;
use super::review::TokenReviewer;
use super::token::TokenKey;
use crate::ca::Ca;
use crate::config::{self, raw, ConfigError};
use crate::metrics::ControlMetrics;

/// One valid mesh config, numbered from 1. Version 0 is "nothing loaded yet": a control
/// plane started without a complete view (no mesh file, Kubernetes not listed yet) holds
/// every stream until it has one, so no sidecar is ever sent a placeholder it would have
/// to refuse.
pub struct Mesh {
    pub version: u64,
    pub config: MeshConfig,
    /// The incremental stream's resources of this version.
    pub resources: Resources,
}

impl Mesh {
    pub fn is_loaded(&self) -> bool {
        self.version > 0
    }
}

/// What `/status` shows for one connected sidecar.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SidecarStatus {
    pub node_id: String,
    pub identity: String,
    pub acked_version: Option<String>,
    pub sent_version: Option<String>,
    pub last_nack: Option<String>,
    pub connected_since: u64,
}

/// The inputs `publish()` merges, each as last seen good.
#[derive(Default)]
struct Sources {
    /// The directory's merged files; `None` while it has none.
    dir: Option<MeshConfig>,
    /// `Some(None)` with Kubernetes on but not listed yet; `None` with it off.
    kube: Option<Option<MeshConfig>>,
    dir_error: Option<Vec<String>>,
    merge_error: Option<Vec<String>>,
    /// The clusters of the merged mesh as last validated (the directory's alone are
    /// validated as they are loaded).
    merged_clusters: ClusterCache,
}

/// The control plane's shared state.
pub struct State {
    pub mesh: watch::Sender<Arc<Mesh>>,
    pub ca: Ca,
    pub tokens: TokenKey,
    /// With `--kubernetes`: checks projected ServiceAccount tokens.
    pub reviewer: Option<TokenReviewer>,
    pub cert_ttl: Duration,
    pub sidecars: Mutex<HashMap<u64, SidecarStatus>>,
    pub metrics: ControlMetrics,
    pub(super) next_stream: AtomicU64,
    sources: Mutex<Sources>,
    /// The directory's files as last parsed.
    parsed: Mutex<cache::ParseCache>,
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// === impl State ===

impl State {
    /// `initial` is the directory's mesh, `None` when it holds no mesh file yet. With
    /// `kubernetes`, streams also wait for the first complete listing of the cluster.
    pub fn new(
        initial: Option<raw::File>,
        kubernetes: bool,
        ca: Ca,
        tokens: TokenKey,
        reviewer: Option<TokenReviewer>,
        cert_ttl: Duration,
    ) -> Arc<Self> {
        let (tx, _) = watch::channel(Arc::new(Mesh {
            version: 0,
            config: MeshConfig::default(),
            resources: Resources::default(),
        }));
        let state = Arc::new(State {
            mesh: tx,
            ca,
            tokens,
            reviewer,
            cert_ttl,
            sidecars: Mutex::new(HashMap::new()),
            metrics: ControlMetrics::with_kubernetes(kubernetes),
            next_stream: AtomicU64::new(1),
            sources: Mutex::new(Sources {
                dir: initial.map(MeshConfig::from_raw),
                kube: kubernetes.then_some(None),
                ..Sources::default()
            }),
            parsed: Mutex::default(),
        });
        state.publish();
        state
    }

    /// Re-reads the directory; a valid change is published. An invalid one is refused and
    /// the directory's last good files stay in the mesh.
    pub fn reload(&self, dir: &std::path::Path) {
        let had = lock(&self.sources).dir.is_some();
        if !had && mesh::files(dir).is_ok_and(|f| f.is_empty()) {
            return;
        }
        let loaded = cache::load_dir_cached(dir, &mut lock(&self.parsed));
        match loaded {
            Ok(loaded) => {
                let mut s = lock(&self.sources);
                s.dir_error = None;
                let same = s.dir.as_ref().is_some_and(|d| d.same(&loaded));
                // Kept even when the same: the cache's shared clusters make the next
                // comparison a pointer comparison.
                s.dir = Some(loaded);
                if same {
                    return;
                }
            }
            Err(errors) => {
                self.metrics
                    .config_loads
                    .with_label_values(&["rejected"])
                    .inc();
                for e in &errors {
                    tracing::warn!(error = %e, "mesh config refused; keeping the last good version");
                }
                lock(&self.sources).dir_error =
                    Some(errors.iter().map(|e| e.to_string()).collect());
                return;
            }
        }
        self.publish();
    }

    /// Replaces the Kubernetes view (clusters and services built from the cluster's
    /// Services and EndpointSlices) and publishes.
    pub fn set_kube(&self, view: raw::File) {
        let view = MeshConfig::from_raw(view);
        {
            let mut s = lock(&self.sources);
            if matches!(&s.kube, Some(Some(v)) if v.same(&view)) {
                return;
            }
            s.kube = Some(Some(view));
        }
        self.publish();
    }

    /// Merges every source into one mesh and, when it is complete, valid and different
    /// from the current one, makes it the next version. Directory entries win over
    /// Kubernetes ones of the same cluster name or VIP: an operator's file is the override.
    pub fn publish(&self) {
        let mut guard = lock(&self.sources);
        let s = &mut *guard;
        let merged = match (&s.dir, &s.kube) {
            (_, Some(None)) | (None, None) => return,
            // The directory alone was validated as it was loaded.
            (Some(d), None) => Ok(d.clone()),
            (d, Some(Some(k))) => {
                let merged = merge(d.as_ref(), k);
                check_merged(&mut s.merged_clusters, &merged).map(|()| merged)
            }
        };
        let merged = match merged {
            Ok(m) => m,
            Err(errors) => {
                self.metrics
                    .config_loads
                    .with_label_values(&["rejected"])
                    .inc();
                let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                for e in &errors {
                    tracing::warn!(error = %e, "merged mesh refused; keeping the last good version");
                }
                s.merge_error = Some(errors);
                return;
            }
        };
        s.merge_error = None;
        // `s` stays locked to the end: two publishes at once must not make two meshes of
        // the same version (a stream at that version would never get the second).
        let current = self.mesh.borrow().clone();
        if current.is_loaded() && current.config.same(&merged) {
            return;
        }
        let version = current.version + 1;
        self.metrics.mesh_version.set(version as i64);
        self.metrics
            .config_loads
            .with_label_values(&["applied"])
            .inc();
        if version == 1 {
            tracing::info!(version, "mesh config loaded; serving");
        } else {
            tracing::info!(version, "mesh config changed; pushing");
        }
        let prev = current
            .is_loaded()
            .then_some((&current.config, &current.resources));
        let resources = Resources::build(&merged, prev, version);
        self.mesh.send_replace(Arc::new(Mesh {
            version,
            config: merged,
            resources,
        }));
    }

    /// The `/status` document.
    pub fn status_json(&self) -> String {
        let mut sidecars: Vec<SidecarStatus> = lock(&self.sidecars).values().cloned().collect();
        sidecars.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let mesh = self.mesh.borrow().clone();
        let errors = {
            let s = lock(&self.sources);
            let all: Vec<String> = s
                .dir_error
                .iter()
                .chain(s.merge_error.iter())
                .flatten()
                .cloned()
                .collect();
            (!all.is_empty()).then_some(all)
        };
        let doc = serde_json::json!({
            "version": mesh.is_loaded().then(|| mesh.version.to_string()),
            "config_error": errors,
            "sidecars": sidecars,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
    }
}

/// The directory's mesh with the Kubernetes clusters and services added, skipping those a
/// file already defines. Clusters are shared, not copied.
fn merge(dir: Option<&MeshConfig>, kube: &MeshConfig) -> MeshConfig {
    let empty = MeshConfig::default();
    let dir = dir.unwrap_or(&empty);
    let names: HashSet<&str> = dir.clusters.iter().map(|c| c.name.as_str()).collect();
    let mut clusters = dir.clusters.clone();
    for c in &kube.clusters {
        if names.contains(c.name.as_str()) {
            tracing::debug!(cluster = %c.name, "a mesh file defines this cluster; its Kubernetes one is ignored");
        } else {
            clusters.push(c.clone());
        }
    }
    let mut rest = (*dir.rest).clone();
    let vips: HashSet<&str> = dir.rest.services.iter().map(|s| s.vip.as_str()).collect();
    for s in &kube.rest.services {
        if !vips.contains(s.vip.as_str()) {
            rest.services.push(s.clone());
        }
    }
    merge_protocols(&mut rest, &kube.rest);
    MeshConfig {
        clusters,
        rest: Arc::new(rest),
    }
}

/// Validates a merged mesh: each cluster once per content (`valid` remembers them), the
/// names unique, everything else against those names. Paths are those of the merged list.
fn check_merged(valid: &mut ClusterCache, m: &MeshConfig) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut names = HashSet::with_capacity(m.clusters.len());
    for (i, c) in m.clusters.iter().enumerate() {
        let at = |e: ConfigError| ConfigError {
            path: e.path.replacen("clusters[0]", &format!("clusters[{i}]"), 1),
            ..e
        };
        if let Err(es) = valid.check_shared(c) {
            errors.extend(es.into_iter().map(at));
        }
        if !names.insert(c.name.as_str()) {
            errors.push(ConfigError {
                path: format!("clusters[{i}].name"),
                message: format!("{:?} is defined twice", c.name),
            });
        }
    }
    if let Err(es) = config::validate_without_clusters(&m.rest, &names) {
        errors.extend(es);
    }
    valid.retain(&names);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The inbound protocols Kubernetes declares (opaque ports, see `discovery::view`): a file's
/// entry for that port without a protocol of its own takes it (when nothing in the entry
/// is HTTP-only); a port without an entry gets one with just the protocol when the mesh's
/// `default_policy` is `allow`, since such an entry (strict mTLS, anyone allowed) is then
/// what the port had anyway. Under `deny` the port stays denied until a file allows it.
fn merge_protocols(dir: &mut raw::File, kube: &raw::File) {
    let allow = dir.default_policy.unwrap_or_default() == raw::DefaultPolicy::Allow;
    for kw in &kube.workloads {
        let i = match dir.workloads.iter().position(|w| w.identity == kw.identity) {
            Some(i) => i,
            None if allow => {
                dir.workloads.push(raw::Workload {
                    identity: kw.identity.clone(),
                    inbound: Vec::new(),
                });
                dir.workloads.len() - 1
            }
            None => continue,
        };
        let w = &mut dir.workloads[i];
        for kp in &kw.inbound {
            match w.inbound.iter_mut().find(|p| p.port == kp.port) {
                Some(p) if p.protocol.is_none() && !http_only(p) => p.protocol = kp.protocol,
                Some(_) => {}
                None if allow => w.inbound.push(kp.clone()),
                None => {}
            }
        }
    }
}

/// Whether an inbound entry says something that only HTTP can mean.
fn http_only(p: &raw::InboundPort) -> bool {
    p.app_protocol.is_some()
        || p.rules
            .iter()
            .any(|r| !r.methods.is_empty() || !r.paths.is_empty() || !r.headers.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, addr: &str) -> Arc<raw::Cluster> {
        Arc::new(raw::Cluster {
            name: name.into(),
            endpoints: vec![raw::Endpoint {
                address: addr.into(),
                weight: None,
                priority: None,
            }],
            ..Default::default()
        })
    }

    fn state(dir: Option<raw::File>, kubernetes: bool) -> Arc<State> {
        let ca = Ca::new("cluster.local", Duration::from_secs(3600)).unwrap();
        let tokens = TokenKey::from_bytes(&[1u8; 32]);
        State::new(dir, kubernetes, ca, tokens, None, Duration::from_secs(60))
    }

    #[test]
    fn kubernetes_holds_the_mesh_until_listed_and_files_win_on_a_name() {
        let dir = raw::File {
            clusters: vec![cluster("b.default.svc:80", "10.0.0.1:80")],
            ..Default::default()
        };
        let s = state(Some(dir), true);
        assert!(!s.mesh.borrow().is_loaded(), "waits for the first listing");
        let kube = raw::File {
            clusters: vec![
                cluster("b.default.svc:80", "10.9.9.9:80"),
                cluster("a.default.svc:80", "10.0.0.2:80"),
            ],
            ..Default::default()
        };
        s.set_kube(kube.clone());
        let m = s.mesh.borrow().clone();
        assert_eq!(m.version, 1);
        let addrs: Vec<_> = m
            .config
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.endpoints[0].address.as_str()))
            .collect();
        assert_eq!(
            addrs,
            [
                ("b.default.svc:80", "10.0.0.1:80"),
                ("a.default.svc:80", "10.0.0.2:80")
            ]
        );
        // The same view again is no new version.
        s.set_kube(kube);
        assert_eq!(s.mesh.borrow().version, 1);
    }

    #[test]
    fn an_invalid_merge_keeps_the_last_good_mesh() {
        let s = state(None, true);
        s.set_kube(raw::File {
            clusters: vec![cluster("a", "10.0.0.2:80")],
            ..Default::default()
        });
        assert_eq!(s.mesh.borrow().version, 1);
        s.set_kube(raw::File {
            clusters: vec![cluster("a", "not an address")],
            ..Default::default()
        });
        assert_eq!(s.mesh.borrow().version, 1);
        assert!(
            s.status_json().contains("not an address"),
            "{}",
            s.status_json()
        );
    }

    fn port(port: u16, yaml: &str) -> raw::InboundPort {
        let mut p: raw::InboundPort = serde_json::from_str(yaml).unwrap();
        p.port = port;
        p
    }

    fn workload(id: &str, inbound: Vec<raw::InboundPort>) -> raw::Workload {
        raw::Workload {
            identity: id.into(),
            inbound,
        }
    }

    #[test]
    fn opaque_ports_from_kubernetes_reach_the_callees_inbound_only_where_they_change_nothing_else()
    {
        let opaque = port(3306, r#"{"port":0,"protocol":"opaque"}"#);
        let kube = raw::File {
            workloads: vec![
                workload(
                    "spiffe://td/a",
                    vec![
                        opaque.clone(),
                        port(5432, r#"{"port":0,"protocol":"opaque"}"#),
                    ],
                ),
                workload("spiffe://td/b", vec![opaque.clone()]),
                workload("spiffe://td/c", vec![opaque.clone()]),
            ],
            ..Default::default()
        };
        let allow_a = port(3306, r#"{"port":0,"allow":["spiffe://td/web"]}"#);
        let http_b = port(3306, r#"{"port":0,"app_protocol":"http1"}"#);
        let dir = raw::File {
            workloads: vec![
                workload("spiffe://td/a", vec![allow_a.clone()]),
                workload("spiffe://td/b", vec![http_b.clone()]),
            ],
            ..Default::default()
        };
        let merged = |dir: raw::File| {
            merge(
                Some(&MeshConfig::from_raw(dir)),
                &MeshConfig::from_raw(kube.clone()),
            )
            .to_raw()
        };
        let m = merged(dir.clone());
        // A file's entry without a protocol takes it; one saying HTTP keeps its meaning.
        let a = &m.workloads[0].inbound;
        assert_eq!(a[0].protocol, Some(raw::Protocol::Opaque));
        assert_eq!(a[0].allow, allow_a.allow);
        assert_eq!(m.workloads[1].inbound, vec![http_b]);
        // Under `default_policy: allow` a port without an entry gets one with the protocol.
        assert_eq!(a[1], port(5432, r#"{"port":0,"protocol":"opaque"}"#));
        assert_eq!(m.workloads[2], workload("spiffe://td/c", vec![opaque]));
        config::validate(&m).unwrap();
        // Under `deny` no entry is added: it would allow anyone.
        let deny = raw::File {
            default_policy: Some(raw::DefaultPolicy::Deny),
            ..dir
        };
        let m = merged(deny);
        assert_eq!(m.workloads.len(), 2);
        assert_eq!(m.workloads[0].inbound.len(), 1);
        assert_eq!(
            m.workloads[0].inbound[0].protocol,
            Some(raw::Protocol::Opaque)
        );
    }
}
