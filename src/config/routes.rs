//! Validation of `routes:` (HTTP match rules, splits, timeouts, retry policies).

use super::model::*;
use super::raw;
use super::validate::Errors;

const GRPC_CODES: &[(&str, u8)] = &[
    ("cancelled", 1),
    ("unknown", 2),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("aborted", 10),
    ("internal", 13),
    ("unavailable", 14),
];

/// Parses one `retry.on` condition.
pub fn retry_on(s: &str) -> Result<RetryOn, String> {
    let norm = s.trim().to_ascii_lowercase().replace('_', "-");
    match norm.as_str() {
        "connect-failure" => return Ok(RetryOn::ConnectFailure),
        "refused-stream" => return Ok(RetryOn::RefusedStream),
        "reset" => return Ok(RetryOn::Reset),
        "5xx" => return Ok(RetryOn::Any5xx),
        _ => {}
    }
    if let Ok(code) = norm.parse::<u16>() {
        if (500..=599).contains(&code) || code == 429 || code == 409 || code == 408 {
            return Ok(RetryOn::Status(code));
        }
        return Err(format!(
            "{s:?} is not a retryable status (408, 409, 429 or 5xx)"
        ));
    }
    let grpc = norm.strip_prefix("grpc-").unwrap_or(&norm);
    if let Some((_, c)) = GRPC_CODES.iter().find(|(n, _)| *n == grpc) {
        return Ok(RetryOn::Grpc(*c));
    }
    Err(format!(
        "{s:?} is not a retry condition (connect-failure, refused-stream, reset, 5xx, a status code, or a gRPC code such as unavailable)"
    ))
}

pub(super) fn routes(
    e: &mut Errors,
    raw: &[raw::Route],
    check_ref: &dyn Fn(&mut Errors, String, &str),
) -> Vec<Route> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let p = format!("routes[{i}]");
        let m = &r.matches;
        let path = match (&m.path, &m.path_prefix) {
            (Some(_), Some(_)) => {
                e.push(format!("{p}.match"), "takes path or path_prefix, not both");
                None
            }
            (Some(x), None) => Some(PathMatch::Exact(x.clone())),
            (None, Some(x)) => Some(PathMatch::Prefix(x.clone())),
            (None, None) => None,
        };
        if let Some(PathMatch::Exact(x) | PathMatch::Prefix(x)) = &path {
            if !x.starts_with('/') {
                e.push(
                    format!("{p}.match"),
                    format!("path {x:?} must start with /"),
                );
            }
        }
        if let Some(meth) = &m.method {
            if http::Method::from_bytes(meth.as_bytes()).is_err() {
                e.push(
                    format!("{p}.match.method"),
                    format!("{meth:?} is not a method"),
                );
            }
        }
        let headers = header_matches(e, &format!("{p}.match.headers"), &m.headers);
        let action = match (&r.cluster, r.split.is_empty()) {
            (Some(c), true) => {
                check_ref(e, format!("{p}.cluster"), c);
                Some(RouteAction::Cluster(c.clone()))
            }
            (None, false) => {
                let mut total = 0u64;
                for (j, w) in r.split.iter().enumerate() {
                    check_ref(e, format!("{p}.split[{j}].cluster"), &w.cluster);
                    if w.weight > 10_000 {
                        e.push(
                            format!("{p}.split[{j}].weight"),
                            format!("{} is more than 10000", w.weight),
                        );
                    }
                    total += u64::from(w.weight);
                }
                if total == 0 {
                    e.push(format!("{p}.split"), "weights add up to 0");
                }
                Some(RouteAction::Split(
                    r.split
                        .iter()
                        .map(|w| (w.cluster.clone(), w.weight))
                        .collect(),
                ))
            }
            (Some(_), false) => {
                e.push(p.clone(), "takes cluster or split, not both");
                None
            }
            (None, true) => {
                e.push(p.clone(), "needs a cluster or a split");
                None
            }
        };
        let opt_dur = |e: &mut Errors, field: &str, v: &Option<String>| {
            v.as_ref()
                .map(|_| e.duration(&format!("{p}.{field}"), v, std::time::Duration::ZERO))
        };
        let timeout = opt_dur(e, "timeout", &r.timeout);
        let per_try_timeout = opt_dur(e, "per_try_timeout", &r.per_try_timeout);
        let idle_timeout = e.duration(
            &format!("{p}.idle_timeout"),
            &r.idle_timeout,
            DEFAULT_STREAM_IDLE_TIMEOUT,
        );
        let retry = r.retry.as_ref().map(|rt| {
            let attempts = rt.attempts.unwrap_or(2);
            if attempts > 10 {
                e.push(
                    format!("{p}.retry.attempts"),
                    format!("{attempts} is more than 10"),
                );
            }
            let on = rt
                .on
                .iter()
                .enumerate()
                .filter_map(|(j, s)| {
                    retry_on(s)
                        .map_err(|m| e.push(format!("{p}.retry.on[{j}]"), m))
                        .ok()
                })
                .collect::<Vec<_>>();
            let budget_percent = rt.budget_percent.unwrap_or(20);
            if budget_percent > 100 {
                e.push(
                    format!("{p}.retry.budget_percent"),
                    format!("{budget_percent} is more than 100"),
                );
            }
            RetryPolicy {
                attempts,
                on: if rt.on.is_empty() {
                    vec![RetryOn::ConnectFailure, RetryOn::RefusedStream]
                } else {
                    on
                },
                budget_percent,
                backoff: e.duration(
                    &format!("{p}.retry.backoff"),
                    &rt.backoff,
                    std::time::Duration::from_millis(25),
                ),
                non_idempotent: rt.non_idempotent.unwrap_or(false),
            }
        });
        if let Some(action) = action {
            out.push(Route {
                matches: RouteMatch {
                    host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    path,
                    method: m.method.as_ref().map(|x| x.to_ascii_uppercase()),
                    headers,
                },
                action,
                timeout,
                per_try_timeout,
                idle_timeout,
                retry,
                upgrades: upgrades(e, &format!("{p}.upgrades"), &r.upgrades),
            });
        }
    }
    out
}

/// Validates header conditions (`name` plus one of exact, prefix, present); names are
/// kept lowercase.
pub(super) fn header_matches(
    e: &mut Errors,
    base: &str,
    raw: &[raw::HeaderMatch],
) -> Vec<HeaderMatch> {
    let mut out = Vec::with_capacity(raw.len());
    for (j, h) in raw.iter().enumerate() {
        let hp = format!("{base}[{j}]");
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            e.push(
                format!("{hp}.name"),
                format!("{:?} is not a header name", h.name),
            );
        }
        let rule = match (&h.exact, &h.prefix, h.present) {
            (Some(x), None, None) => HeaderRule::Exact(x.clone()),
            (None, Some(x), None) => HeaderRule::Prefix(x.clone()),
            (None, None, Some(b)) => HeaderRule::Present(b),
            (None, None, None) => HeaderRule::Present(true),
            _ => {
                e.push(hp.clone(), "takes one of exact, prefix or present");
                continue;
            }
        };
        out.push(HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            rule,
        });
    }
    out
}

/// Validates an `upgrades` list: protocol tokens, lowercased; `h2c` is refused because a
/// tunnelled HTTP/2 connection would escape routing and per-request policy.
pub(super) fn upgrades(
    e: &mut Errors,
    path: &str,
    raw: &Option<Vec<String>>,
) -> Option<Vec<String>> {
    let list = raw.as_ref()?;
    let mut out = Vec::with_capacity(list.len());
    for (i, u) in list.iter().enumerate() {
        let name = u.trim().to_ascii_lowercase();
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            e.push(
                format!("{path}[{i}]"),
                format!("{u:?} is not a protocol name"),
            );
        } else if name == "h2c" {
            e.push(
                format!("{path}[{i}]"),
                "h2c is never tunnelled: it would carry HTTP/2 past routing and per-request policy",
            );
        } else {
            out.push(name);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions() {
        assert_eq!(retry_on("503"), Ok(RetryOn::Status(503)));
        assert_eq!(retry_on("5xx"), Ok(RetryOn::Any5xx));
        assert_eq!(retry_on("unavailable"), Ok(RetryOn::Grpc(14)));
        assert_eq!(retry_on("connect-failure"), Ok(RetryOn::ConnectFailure));
        assert!(retry_on("200").is_err());
        assert!(retry_on("sometimes").is_err());
    }
}
