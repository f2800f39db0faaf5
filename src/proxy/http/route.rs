//! Picking a route for an HTTP request: `routes:` in order, first match wins (host with or
//! without port, exact or prefix path, method, headers), then the listener's own cluster as
//! the default route. A weighted `split` picks its cluster per request. Only the routes the
//! snapshot's `RouteIndex` names for the request's host are looked at.

mod index;

use std::borrow::Cow;

use http::request::Parts;

pub use index::RouteIndex;

use crate::config::{HeaderRule, PathMatch, Route, RouteAction};

/// Where one request goes.
pub struct Decision<'a> {
    pub cluster: &'a str,
    /// The matched route (timeouts, retry policy); `None` for the listener's default.
    pub route: Option<&'a Route>,
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the Host header.
pub fn authority(parts: &Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// `got` is lower-case.
fn host_matches(want: &str, got: &str) -> bool {
    // A route host without a port matches the host on any port (`[::1]` has colons and
    // no port).
    let got_host = if strip_port(want).len() != want.len() {
        got
    } else {
        strip_port(got)
    };
    match want.strip_prefix("*.") {
        Some(suffix) => {
            got_host.len() > suffix.len() + 1
                && got_host.ends_with(suffix)
                && got_host.as_bytes()[got_host.len() - suffix.len() - 1] == b'.'
        }
        None => got_host == want,
    }
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.find(']').map(|i| &h[..=i]).unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

/// Whether `route` takes the request; `host` is the request's lower-case authority, or
/// `None` when the index already matched the route's host.
fn matches(route: &Route, parts: &Parts, host: Option<Option<&str>>) -> bool {
    let m = &route.matches;
    if let (Some(want), Some(got)) = (&m.host, host) {
        match got {
            Some(got) if host_matches(want, got) => {}
            _ => return false,
        }
    }
    if let Some(p) = &m.path {
        let path = parts.uri.path();
        let ok = match p {
            PathMatch::Exact(x) => path == x,
            PathMatch::Prefix(x) => {
                path.starts_with(x.as_str())
                    && (x.ends_with('/')
                        || path.len() == x.len()
                        || path.as_bytes()[x.len()] == b'/')
            }
        };
        if !ok {
            return false;
        }
    }
    if let Some(method) = &m.method {
        if parts.method.as_str() != method {
            return false;
        }
    }
    m.headers.iter().all(|h| {
        let got = parts.headers.get_all(h.name.as_str());
        match &h.rule {
            HeaderRule::Present(want) => got.iter().next().is_some() == *want,
            HeaderRule::Exact(x) => got.iter().any(|v| v.as_bytes() == x.as_bytes()),
            HeaderRule::Prefix(x) => got.iter().any(|v| v.as_bytes().starts_with(x.as_bytes())),
        }
    })
}

fn pick_split(split: &[(String, u32)]) -> Option<&str> {
    let total: u64 = split.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut x = fastrand::u64(0..total);
    for (c, w) in split {
        if x < u64::from(*w) {
            return Some(c);
        }
        x -= u64::from(*w);
    }
    None
}

/// Routes a request over `routes` as indexed by `index`; `None` means no route (404).
pub fn route<'a>(
    routes: &'a [Route],
    index: &RouteIndex,
    default: Option<&'a str>,
    parts: &Parts,
) -> Option<Decision<'a>> {
    let decide = |r: &'a Route| {
        let cluster = match &r.action {
            RouteAction::Cluster(c) => c.as_str(),
            RouteAction::Split(s) => pick_split(s)?,
        };
        Some(Decision {
            cluster,
            route: Some(r),
        })
    };
    if !routes.is_empty() {
        let raw = authority(parts);
        // Route hosts are lower-case (config validation); most requests' hosts are too.
        let lower = raw.map(|a| {
            if a.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(a.to_ascii_lowercase())
            } else {
                Cow::Borrowed(a)
            }
        });
        let authority = lower.as_deref();
        let mut c = index.candidates(parts.uri.path(), authority.map(|a| (a, strip_port(a))));
        if c.overflow {
            return routes
                .iter()
                .find(|r| matches(r, parts, Some(authority)))
                .map_or_else(|| default_route(default), decide);
        }
        while let Some(i) = c.next() {
            let Some(r) = routes.get(i as usize) else {
                continue;
            };
            let placed = r.matches.host.as_deref().is_none_or(index::places);
            let host = (!placed).then_some(authority);
            if matches(r, parts, host) {
                return decide(r);
            }
        }
    }
    default_route(default)
}

fn default_route(default: Option<&str>) -> Option<Decision<'_>> {
    default.map(|cluster| Decision {
        cluster,
        route: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, host: Option<&str>, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn routes(yaml: &str) -> Vec<Route> {
        let cfg = crate::config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
        cfg.routes
    }

    #[test]
    fn first_match_wins_with_host_path_method_headers() {
        let r = routes(
            r#"
clusters: [ { name: a, endpoints: [] }, { name: b, endpoints: [] }, { name: c, endpoints: [] }, { name: d, endpoints: [] } ]
routes:
  - { match: { host: api.example, path_prefix: /v1, method: POST }, cluster: a }
  - { match: { path: /exact }, cluster: b }
  - { match: { headers: [ { name: x-canary, exact: "yes" } ] }, cluster: c }
  - { match: { host: "*.example", path_prefix: / }, cluster: d }
"#,
        );
        let ix = RouteIndex::new(&r);
        let go = |p: Parts| route(&r, &ix, Some("default"), &p).map(|d| d.cluster.to_string());
        assert_eq!(
            go(parts("POST", "/v1/x", Some("api.example:8080"), &[])),
            Some("a".into())
        );
        assert_eq!(
            go(parts("GET", "/v1/x", Some("api.example"), &[])),
            Some("d".into())
        );
        assert_eq!(
            go(parts("POST", "/v10", Some("api.example"), &[])),
            Some("d".into())
        );
        assert_eq!(go(parts("GET", "/exact", Some("x"), &[])), Some("b".into()));
        assert_eq!(
            go(parts("GET", "/exact/more", Some("x"), &[])),
            Some("default".into())
        );
        assert_eq!(
            go(parts("GET", "/", Some("x"), &[("x-canary", "yes")])),
            Some("c".into())
        );
        assert_eq!(
            go(parts("GET", "http://web.example/z", None, &[])),
            Some("d".into())
        );
        assert_eq!(
            go(parts("GET", "/", Some("example"), &[])),
            Some("default".into())
        );
        assert!(route(&r, &ix, None, &parts("GET", "/", Some("x"), &[])).is_none());
    }

    #[test]
    fn split_follows_weights() {
        let r = routes(
            r#"
clusters: [ { name: a, endpoints: [] }, { name: b, endpoints: [] } ]
routes: [ { match: { path_prefix: / }, split: [ { cluster: a, weight: 90 }, { cluster: b, weight: 10 } ] } ]
"#,
        );
        fastrand::seed(7);
        let ix = RouteIndex::new(&r);
        let p = parts("GET", "/", Some("x"), &[]);
        let b = (0..10_000)
            .filter(|_| route(&r, &ix, None, &p).map(|d| d.cluster) == Some("b"))
            .count();
        assert!((800..1200).contains(&b), "{b}");
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    #[test]
    fn an_ipv6_route_host_without_a_port_matches_any_port() {
        assert!(host_matches("[::1]", "[::1]:80"));
        assert!(host_matches("[::1]", "[::1]"));
        assert!(host_matches("[::1]:80", "[::1]:80"));
        assert!(!host_matches("[::1]:81", "[::1]:80"));
        assert!(!host_matches("[::2]", "[::1]:80"));
    }

    /// The routes a plain scan of the whole list picks.
    fn scan<'a>(routes: &'a [Route], parts: &Parts) -> Option<&'a str> {
        let host = authority(parts).map(|a| a.to_ascii_lowercase());
        routes
            .iter()
            .find(|r| matches(r, parts, Some(host.as_deref())))
            .map(|r| match &r.action {
                RouteAction::Cluster(c) => c.as_str(),
                RouteAction::Split(_) => "split",
            })
    }

    #[test]
    fn the_index_picks_what_a_scan_picks() {
        let hosts = [
            "a.example",
            "b.example",
            "*.example",
            "a.example:8080",
            "*.b.example",
            "[::1]",
            "[::1]:80",
            "*.example:8080",
            "x.y.z.example",
        ];
        let paths = ["/", "/api", "/api/v1"];
        let mut yaml = String::from("clusters: [ { name: c, endpoints: [] } ]\nroutes:\n");
        fastrand::seed(11);
        for i in 0..200 {
            let host = if fastrand::u8(0..4) == 0 {
                String::new()
            } else {
                format!("host: \"{}\", ", hosts[fastrand::usize(0..hosts.len())])
            };
            let kind = if fastrand::bool() {
                "path"
            } else {
                "path_prefix"
            };
            let path = format!("{kind}: {}", paths[fastrand::usize(0..paths.len())]);
            let _ = i;
            yaml.push_str(&format!(
                "  - {{ match: {{ {host}{path} }}, cluster: c }}\n"
            ));
        }
        let cfg = crate::config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
        // Name each route by its index so the picks can be compared.
        let mut routes = cfg.routes.clone();
        for (i, r) in routes.iter_mut().enumerate() {
            r.action = RouteAction::Cluster(format!("r{i}"));
        }
        let ix = RouteIndex::new(&routes);
        let asked = [
            "a.example",
            "A.Example:8080",
            "b.example:9",
            "q.b.example",
            "deep.q.b.example",
            "example",
            "[::1]:80",
            "[::1]",
            "x.y.z.example",
            "z.example:8080",
            "other",
        ];
        for h in asked {
            for p in ["/", "/api", "/api/v1", "/api/v1/x", "/apix"] {
                let req = http::Request::builder()
                    .uri(p)
                    .header("host", h)
                    .body(())
                    .unwrap_or_else(|e| panic!("{e}"))
                    .into_parts()
                    .0;
                let got = route(&routes, &ix, None, &req).map(|d| d.cluster);
                assert_eq!(got, scan(&routes, &req), "{h}{p}");
            }
        }
    }
}
