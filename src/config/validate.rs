//! Turns a `raw::File` into a validated `Config`, collecting every error with its path
//! (`clusters[1].endpoints[0].address: "10.0.0.1" is not host:port`) instead of stopping at
//! the first.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::model::*;
use super::raw;
use super::{duration, ConfigError};

/// Collects errors while a config is walked.
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => duration::parse(s).unwrap_or_else(|e| {
                self.push(path, e);
                default
            }),
        }
    }

    pub(super) fn socket(&mut self, path: &str, v: &str) -> Option<SocketAddr> {
        match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(path, format!("{v:?} is not ip:port"));
                None
            }
        }
    }

    pub(super) fn identity(&mut self, path: &str, v: &str) -> Option<Identity> {
        Identity::parse(v).map_err(|e| self.push(path, e)).ok()
    }

    pub(super) fn name(&mut self, path: &str, v: &str) {
        let ok = !v.is_empty()
            && v.len() <= 128
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:|".contains(&b));
        if !ok {
            self.push(
                path,
                format!("{v:?} is not a valid name (1-128 of a-z A-Z 0-9 - _ . : |)"),
            );
        }
    }
}

/// Parses `host:port` where host is an IP literal or a DNS name.
pub fn endpoint_addr(v: &str) -> Option<EndpointAddr> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Some(EndpointAddr::Ip(a));
    }
    let (host, port) = v.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        // An all-numeric "host" is a mistyped IP address, not a name.
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    host_ok.then(|| EndpointAddr::Host(host.to_ascii_lowercase(), port))
}

/// Validates a whole file. `Err` holds every problem found.
pub fn validate(f: &raw::File) -> Result<Config, Vec<ConfigError>> {
    let mut cfg = validate_parts(f)?;
    cfg.raw = f.clone();
    Ok(cfg)
}

/// `validate`, keeping `f` itself as the config's `raw` rather than a copy of it (a
/// sidecar validating a pushed config of a thousand clusters would otherwise hold two).
pub fn validate_owned(f: raw::File) -> Result<Config, Vec<ConfigError>> {
    let mut cfg = validate_parts(&f)?;
    cfg.raw = f;
    Ok(cfg)
}

fn validate_parts(f: &raw::File) -> Result<Config, Vec<ConfigError>> {
    let mut e = Errors::default();
    let clusters = super::cluster::clusters(&mut e, f.clusters.iter().map(|c| &**c));
    let names: HashSet<&str> = f.clusters.iter().map(|c| c.name.as_str()).collect();
    check(f, e, clusters, &names)
}

/// Validates one cluster on its own, as `validate` checks each entry of `clusters:` (all
/// but the uniqueness of its name, which takes the whole list). Callers that keep clusters
/// apart (the control plane's per-cluster cache) check each one once, when it changes.
pub fn validate_cluster(c: &raw::Cluster) -> Result<Arc<Cluster>, Vec<ConfigError>> {
    let mut e = Errors::default();
    let mut out = super::cluster::clusters(&mut e, std::iter::once(c));
    match (out.pop(), e.0.is_empty()) {
        (Some(c), true) => Ok(c),
        _ => Err(e.0),
    }
}

/// `validate` for a file whose clusters were each checked with `validate_cluster` and whose
/// names are known to be unique: everything else in `f` is checked, its references against
/// `names`; `f.clusters` is not looked at and the `Config` has no clusters.
pub fn validate_without_clusters(
    f: &raw::File,
    names: &HashSet<&str>,
) -> Result<Config, Vec<ConfigError>> {
    check(f, Errors::default(), Vec::new(), names)
}

/// Everything `validate` checks besides the clusters themselves; the `Config`'s `raw` is
/// left empty for the caller.
fn check(
    f: &raw::File,
    mut e: Errors,
    clusters: Vec<Arc<Cluster>>,
    cluster_names: &HashSet<&str>,
) -> Result<Config, Vec<ConfigError>> {
    let node = match &f.node {
        None => Node::default(),
        Some(n) => Node {
            id: n.id.clone().unwrap_or_default(),
            identity: n
                .identity
                .as_ref()
                .and_then(|i| e.identity("node.identity", i)),
        },
    };
    let admin_s = f
        .admin
        .as_ref()
        .and_then(|a| a.address.clone())
        .unwrap_or_else(|| DEFAULT_ADMIN.to_string());
    let admin = e.socket("admin.address", &admin_s);
    let stats_s = f
        .stats
        .as_ref()
        .and_then(|a| a.address.clone())
        .unwrap_or_else(|| DEFAULT_STATS.to_string());
    let stats = e.socket("stats.address", &stats_s);

    let tls = f.tls.as_ref().map(|t| {
        for (field, v) in [("cert", &t.cert), ("key", &t.key), ("roots", &t.roots)] {
            if v.is_empty() {
                e.push(format!("tls.{field}"), "must not be empty");
            }
        }
        let min_version = match t.min_version.as_deref() {
            None | Some("1.3") => TlsVersion::Tls13,
            Some("1.2") => TlsVersion::Tls12,
            Some(v) => {
                e.push("tls.min_version", format!("{v:?} is not 1.2 or 1.3"));
                TlsVersion::Tls13
            }
        };
        TlsFiles {
            cert: PathBuf::from(&t.cert),
            key: PathBuf::from(&t.key),
            roots: PathBuf::from(&t.roots),
            min_version,
            handshake_timeout: e.duration(
                "tls.handshake_timeout",
                &t.handshake_timeout,
                DEFAULT_HANDSHAKE_TIMEOUT,
            ),
        }
    });

    let control = f.control.as_ref().and_then(|c| {
        if endpoint_addr(&c.address).is_none() {
            e.push(
                "control.address",
                format!("{:?} is not host:port", c.address),
            );
        }
        let identity = e.identity(
            "control.identity",
            c.identity.as_deref().unwrap_or(DEFAULT_CONTROL_IDENTITY),
        )?;
        Some(Control {
            address: c.address.clone(),
            token_file: c.token_file.as_ref().map(PathBuf::from),
            roots: c.roots.as_ref().map(PathBuf::from),
            identity,
        })
    });
    if let Some(c) = &f.control {
        if c.roots.is_none() && f.tls.is_none() {
            e.push(
                "control.roots",
                "is required (the trust bundle that verifies the control plane)",
            );
        }
    }

    let drain_timeout = e.duration("drain_timeout", &f.drain_timeout, DEFAULT_DRAIN_TIMEOUT);

    // With a control plane, clusters arrive over the stream: a listener may name one the
    // file does not define (the pushed config is validated whole before it is applied).
    let dynamic = f.control.is_some();
    let check_ref = |e: &mut Errors, path: String, name: &str| {
        let pushed_later = dynamic && path.starts_with("listeners[");
        if !cluster_names.contains(name) && !pushed_later {
            e.push(path, format!("cluster {name:?} is not defined in clusters"));
        }
    };

    let access_log = f.access_log.unwrap_or(false);
    let listeners = super::listeners::listeners(&mut e, &f.listeners, access_log, &check_ref);

    let mut vips = HashSet::new();
    let services = f
        .services
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let p = format!("services[{i}]");
            check_ref(&mut e, format!("{p}.cluster"), &s.cluster);
            let vip = e.socket(&format!("{p}.vip"), &s.vip)?;
            if !vips.insert(vip) {
                e.push(format!("{p}.vip"), format!("{vip} is listed twice"));
            }
            Some(Service {
                vip,
                cluster: s.cluster.clone(),
                protocol: s.protocol.unwrap_or_default(),
            })
        })
        .collect();

    let routes = super::routes::routes(&mut e, &f.routes, &check_ref);

    let inbound = super::inbound::ports(&mut e, "inbound", &f.inbound);
    let mut workload_ids = HashSet::new();
    let workloads = f
        .workloads
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            let p = format!("workloads[{i}]");
            let inbound = super::inbound::ports(&mut e, &format!("{p}.inbound"), &w.inbound);
            let identity = e.identity(&format!("{p}.identity"), &w.identity)?;
            if !workload_ids.insert(identity.clone()) {
                e.push(
                    format!("{p}.identity"),
                    format!("{identity} is listed twice"),
                );
            }
            Some(Workload { identity, inbound })
        })
        .collect();

    let tracing = super::trace::tracing(&mut e, f);

    match (admin, stats, e.0.is_empty()) {
        (Some(admin), Some(stats), true) => Ok(Config {
            node,
            admin,
            stats,
            tls,
            control,
            drain_timeout,
            listeners,
            clusters,
            services,
            routes,
            inbound,
            default_policy: f.default_policy.unwrap_or_default(),
            workloads,
            tracing,
            access_log,
            raw: raw::File::default(),
        }),
        _ => Err(e.0),
    }
}
