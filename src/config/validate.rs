//! Turns a `raw::File` into a validated `Config`, collecting every error with its path
//! (`clusters[1].endpoints[0].address: "10.0.0.1" is not host:port`) instead of stopping at
//! the first.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
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

    fn socket(&mut self, path: &str, v: &str) -> Option<SocketAddr> {
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
    let mut e = Errors::default();

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

    let clusters = super::cluster::clusters(&mut e, &f.clusters);
    let cluster_names: HashSet<&str> = f.clusters.iter().map(|c| c.name.as_str()).collect();
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
    let listeners = listeners(&mut e, &f.listeners, access_log, &check_ref);

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
            raw: f.clone(),
        }),
        _ => Err(e.0),
    }
}

fn listeners(
    e: &mut Errors,
    raw: &[raw::Listener],
    access_log: bool,
    check_ref: &dyn Fn(&mut Errors, String, &str),
) -> Vec<Listener> {
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, l) in raw.iter().enumerate() {
        let p = format!("listeners[{i}]");
        e.name(&format!("{p}.name"), &l.name);
        if !names.insert(l.name.as_str()) {
            e.push(
                format!("{p}.name"),
                format!("{:?} is defined twice", l.name),
            );
        }
        let address = e.socket(&format!("{p}.address"), &l.address);
        if let Some(a) = address {
            // Port 0 asks the kernel for a free port, so two of them never clash.
            if a.port() != 0 && !addrs.insert(a) {
                e.push(
                    format!("{p}.address"),
                    format!("{a} is used by another listener"),
                );
            }
        }
        let direction = l.direction.unwrap_or_default();
        let target = match (&l.cluster, &l.forward, l.capture) {
            (Some(c), None, None) => {
                if direction == Direction::Inbound {
                    e.push(
                        format!("{p}.cluster"),
                        "an inbound listener forwards to the app: use forward, not cluster",
                    );
                }
                check_ref(e, format!("{p}.cluster"), c);
                Some(ListenerTarget::Cluster(c.clone()))
            }
            (None, Some(f), None) => {
                if l.direction != Some(Direction::Inbound) {
                    e.push(format!("{p}.direction"), "forward needs direction: inbound");
                }
                e.socket(&format!("{p}.forward"), f)
                    .map(ListenerTarget::Forward)
            }
            (None, None, Some(c)) => Some(ListenerTarget::Capture(c)),
            (None, None, None) if l.protocol == Some(Protocol::Http) => {
                Some(ListenerTarget::Routes)
            }
            (None, None, None) => {
                e.push(
                    p.clone(),
                    "needs one of cluster (outbound), forward (inbound) or capture (or protocol: http to route by routes: alone)",
                );
                None
            }
            _ => {
                e.push(p.clone(), "takes only one of cluster, forward and capture");
                None
            }
        };
        let max_connections = l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            e.push(format!("{p}.max_connections"), "must be more than 0");
        }
        let idle_timeout = e.duration(
            &format!("{p}.idle_timeout"),
            &l.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
        );
        let detect_timeout = e.duration(
            &format!("{p}.detect_timeout"),
            &l.detect_timeout,
            DEFAULT_DETECT_TIMEOUT,
        );
        let header_read_timeout = e.duration(
            &format!("{p}.header_read_timeout"),
            &l.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT,
        );
        if let (Some(address), Some(target)) = (address, target) {
            out.push(Listener {
                name: l.name.clone(),
                address,
                protocol: l.protocol.unwrap_or_default(),
                target,
                max_connections,
                idle_timeout,
                detect_timeout,
                header_read_timeout,
                max_request_bytes: l.max_request_bytes,
                upgrades: super::routes::upgrades(e, &format!("{p}.upgrades"), &l.upgrades)
                    .unwrap_or_else(|| vec!["websocket".to_string()]),
                trace_sampling: super::trace::listener(e, &p, &l.tracing),
                access_log: l.access_log.unwrap_or(access_log),
            });
        }
    }
    out
}
