//! Validation of `inbound:` ports (in proxy files and in the mesh config's
//! `workloads[].inbound`): TLS mode, protocol, the `allow` short form and per-request
//! `rules` by identity, method, path and headers.

use std::collections::HashSet;

use super::model::*;
use super::raw;
use super::validate::Errors;

pub(super) fn ports(e: &mut Errors, base: &str, raw: &[raw::InboundPort]) -> Vec<InboundPort> {
    let mut seen = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, ip)| {
            let p = format!("{base}[{i}]");
            if ip.port == 0 {
                e.push(format!("{p}.port"), "must not be 0");
            }
            if !seen.insert(ip.port) {
                e.push(format!("{p}.port"), format!("{} is listed twice", ip.port));
            }
            let allow = ip
                .allow
                .iter()
                .enumerate()
                .filter_map(|(j, a)| {
                    AllowRule::parse(a)
                        .map_err(|m| e.push(format!("{p}.allow[{j}]"), m))
                        .ok()
                })
                .collect();
            let tls = ip.tls.unwrap_or_default();
            let protocol = ip.protocol.unwrap_or_default();
            if ip.app_protocol.is_some() && protocol.never_http() {
                e.push(
                    format!("{p}.app_protocol"),
                    format!(
                        "applies to HTTP; port {} is protocol {}",
                        ip.port,
                        if protocol == Protocol::Tcp { "tcp" } else { "opaque" }
                    ),
                );
            }
            if tls == TlsMode::Disabled && !ip.allow.is_empty() {
                e.push(
                    format!("{p}.allow"),
                    "needs tls strict or permissive: plaintext peers have no identity",
                );
            }
            if !ip.allow.is_empty() && !ip.rules.is_empty() {
                e.push(
                    format!("{p}.allow"),
                    "takes allow (the short form) or rules, not both: add the identities as an allow rule",
                );
            }
            let rules = ip
                .rules
                .iter()
                .enumerate()
                .map(|(j, r)| rule(e, &format!("{p}.rules[{j}]"), r, tls, protocol))
                .collect();
            InboundPort {
                port: ip.port,
                protocol,
                tls,
                app_protocol: ip.app_protocol.unwrap_or_default(),
                allow,
                rules,
            }
        })
        .collect()
}

fn rule(e: &mut Errors, p: &str, r: &raw::AuthzRule, tls: TlsMode, proto: Protocol) -> AuthzRule {
    let from: Vec<Principal> = r
        .from
        .iter()
        .enumerate()
        .filter_map(|(k, f)| {
            Principal::parse(f)
                .map_err(|m| {
                    e.push(
                        format!("{p}.from[{k}]"),
                        format!("{m}; or use authenticated / unauthenticated"),
                    )
                })
                .ok()
        })
        .collect();
    if tls == TlsMode::Disabled
        && from
            .iter()
            .any(|f| !matches!(f, Principal::Unauthenticated))
    {
        e.push(
            format!("{p}.from"),
            "names identities on a port with tls: disabled, where peers have none (it could never match)",
        );
    }
    if tls == TlsMode::Strict
        && !from.is_empty()
        && from.iter().all(|f| *f == Principal::Unauthenticated)
    {
        e.push(
            format!("{p}.from"),
            "unauthenticated on a port with tls: strict, where every peer is authenticated (it could never match)",
        );
    }
    let methods = r
        .methods
        .iter()
        .enumerate()
        .filter_map(|(k, m)| {
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                e.push(
                    format!("{p}.methods[{k}]"),
                    format!("{m:?} is not a method"),
                );
                return None;
            }
            Some(m.to_ascii_uppercase())
        })
        .collect();
    let paths = r
        .paths
        .iter()
        .enumerate()
        .filter_map(|(k, pr)| path(e, &format!("{p}.paths[{k}]"), pr))
        .collect();
    let headers = super::routes::header_matches(e, &format!("{p}.headers"), &r.headers);
    let out = AuthzRule {
        action: r.action,
        from,
        methods,
        paths,
        headers,
    };
    if proto.never_http() && out.has_request_conditions() {
        let proto = if proto == Protocol::Tcp {
            "tcp"
        } else {
            "opaque"
        };
        e.push(
            p.to_string(),
            format!("matches on methods, paths or headers, but the port's protocol is {proto}: the rule could never match (use protocol: http or auto)"),
        );
    }
    out
}

fn path(e: &mut Errors, p: &str, r: &raw::PathRule) -> Option<PathMatch> {
    let v = match (&r.exact, &r.prefix) {
        (Some(x), None) | (None, Some(x)) => x,
        _ => {
            e.push(p.to_string(), "takes one of exact or prefix");
            return None;
        }
    };
    if !v.starts_with('/') {
        e.push(p.to_string(), format!("{v:?} must start with /"));
        return None;
    }
    if !crate::authz::path::normalize(v).is_ok_and(|n| n == v.as_str()) {
        e.push(
            p.to_string(),
            format!("{v:?} is not a normalised path (no . or .. segments, //, or percent-escapes of plain characters): requests are matched after normalisation, so it could never match"),
        );
        return None;
    }
    Some(match r.exact {
        Some(_) => PathMatch::Exact(v.clone()),
        // Segment-wise: `/api/` and `/api` both mean "/api and what is below it".
        None => match v.trim_end_matches('/') {
            "" => PathMatch::Prefix("/".into()),
            t => PathMatch::Prefix(t.to_string()),
        },
    })
}
