//! Validation of `listeners:`: names and addresses unique, exactly one target (cluster,
//! forward, capture, or routes alone), the timeouts and limits, and what a capture
//! listener takes (no protocol of its own; `unknown_destination` on an outbound one).

use std::collections::HashSet;

use super::model::*;
use super::raw;
use super::validate::Errors;

pub(super) fn listeners(
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
        let address = match (l.address.is_empty(), l.capture) {
            (false, _) => e.socket(&format!("{p}.address"), &l.address),
            (true, Some(Capture::Outbound)) => e.socket(&p, DEFAULT_OUTBOUND_CAPTURE),
            (true, Some(Capture::Inbound)) => e.socket(&p, DEFAULT_INBOUND_CAPTURE),
            (true, None) => {
                e.push(p.clone(), "missing field `address`");
                None
            }
        };
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
        let unknown_destination = capture_fields(e, &p, l);
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
                unknown_destination,
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

/// The fields a capture listener takes or refuses: its protocol comes from `services:`
/// (outbound) or `inbound:` (inbound), its direction from `capture`, and only an outbound
/// capture has unknown destinations. Returns `unknown_destination` for the model.
fn capture_fields(e: &mut Errors, p: &str, l: &raw::Listener) -> Option<UnknownDestination> {
    let Some(capture) = l.capture else {
        if let Some(u) = l.unknown_destination {
            e.push(
                format!("{p}.unknown_destination"),
                format!(
                    "{:?} applies only to a capture: outbound listener",
                    lower(&u)
                ),
            );
        }
        return None;
    };
    if let Some(proto) = l.protocol {
        let from = match capture {
            Capture::Outbound => "each services: entry's protocol",
            Capture::Inbound => "each inbound: port's protocol",
        };
        e.push(
            format!("{p}.protocol"),
            format!(
                "{:?} on a capture listener: the protocol comes from {from}",
                lower(&proto)
            ),
        );
    }
    let implied = match capture {
        Capture::Outbound => Direction::Outbound,
        Capture::Inbound => Direction::Inbound,
    };
    if let Some(d) = l.direction.filter(|d| *d != implied) {
        e.push(
            format!("{p}.direction"),
            format!("{:?} contradicts capture: {}", lower(&d), lower(&capture)),
        );
    }
    match capture {
        Capture::Outbound => Some(l.unknown_destination.unwrap_or_default()),
        Capture::Inbound => {
            if let Some(u) = l.unknown_destination {
                e.push(
                    format!("{p}.unknown_destination"),
                    format!(
                        "{:?} applies only to a capture: outbound listener (an inbound capture forwards to the app's port)",
                        lower(&u)
                    ),
                );
            }
            None
        }
    }
}

/// A config enum as it is written in YAML (`pass`, `http`, `inbound`).
fn lower<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
