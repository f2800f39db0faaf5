//! Tests for parsing and validation: every error names its path and value.

use super::*;

fn errors(yaml: &str) -> Vec<String> {
    match from_yaml(yaml) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn design_example_is_valid() {
    let yaml = r#"
node: { id: web-0, identity: spiffe://cluster.local/ns/default/sa/web }
admin: { address: 127.0.0.1:15000 }
stats: { address: 0.0.0.0:15020 }
tls:
  cert: certs/web.pem
  key: certs/web.key
  roots: certs/root.pem
control:
  address: 127.0.0.1:15010
  token_file: /var/run/secrets/spoke/token
  roots: /etc/spoke/root.pem
  identity: spiffe://cluster.local/ns/spoke-system/sa/spoke-control
listeners:
  - { name: to-backend, address: 127.0.0.1:9000, protocol: http, cluster: backend }
  - { name: from-mesh, address: 0.0.0.0:16001, direction: inbound, forward: 127.0.0.1:8080 }
  - { name: outbound, address: 127.0.0.1:15001, capture: outbound }
  - { name: inbound,  address: 0.0.0.0:15006,  capture: inbound }
clusters:
  - name: backend
    lb: least_request
    tls: { identity: spiffe://cluster.local/ns/default/sa/backend }
    connect_timeout: 1s
    endpoints: [ { address: 10.1.0.7:8080 }, { address: 10.1.0.8:8080, weight: 2 } ]
    circuit_breaker: { max_connections: 1024, max_pending: 1024, max_requests: 1024 }
    outlier_detection: { consecutive_5xx: 5, base_ejection: 30s, max_ejection_percent: 50 }
  - { name: backend-v2, endpoints: [ { address: 10.1.0.9:8080 } ] }
services:
  - { vip: 10.96.0.20:8080, cluster: backend, protocol: auto }
routes:
  - { match: { path_prefix: /healthz }, cluster: backend }
  - match: { host: backend, path_prefix: /api }
    split: [ { cluster: backend-v2, weight: 10 }, { cluster: backend, weight: 90 } ]
    timeout: 2s
    retry: { attempts: 2, on: [connect-failure, reset, "503"], budget_percent: 20, backoff: 25ms }
inbound:
  - { port: 8080, protocol: auto, tls: strict, allow: [spiffe://cluster.local/ns/default/sa/frontend] }
"#;
    let cfg = from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.listeners.len(), 4);
    assert_eq!(cfg.clusters[0].endpoints[1].weight, 2);
    assert_eq!(
        cfg.routes[1].timeout,
        Some(std::time::Duration::from_secs(2))
    );
}

#[test]
fn collects_every_error_with_path_and_value() {
    let errs = errors(
        r#"
listeners:
  - { name: a, address: 127.0.0.1:9000, cluster: nope }
  - { name: a, address: 127.0.0.1:9000, cluster: c1, idle_timeout: 5 }
clusters:
  - { name: c1, connect_timeout: soon, endpoints: [ { address: 10.0.0.1:80 }, { address: "10.0.0.1" } ] }
  - { name: c1, endpoints: [] }
"#,
    );
    let want = [
        r#"listeners[0].cluster: cluster "nope" is not defined in clusters"#,
        r#"listeners[1].name: "a" is defined twice"#,
        "listeners[1].address: 127.0.0.1:9000 is used by another listener",
        r#"listeners[1].idle_timeout: "5" has no unit (use 250ms, 2s, 1m, 1h)"#,
        r#"clusters[0].connect_timeout: "soon" is not a duration (use 250ms, 2s, 1m, 1h)"#,
        r#"clusters[0].endpoints[1].address: "10.0.0.1" is not host:port"#,
        r#"clusters[1].name: "c1" is defined twice"#,
    ];
    for w in want {
        assert!(errs.iter().any(|e| e == w), "missing {w:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
}

#[test]
fn unknown_fields_and_wrong_types_name_a_line() {
    let placed = |y: &str| match super::from_yaml_located(y) {
        Ok(_) => vec![],
        Err(e) => e
            .iter()
            .map(|l| format!("{}:{}: {}", l.line, l.col, l.error))
            .collect::<Vec<_>>(),
    };
    let e = placed("listeners:\n  - { name: a, address: 127.0.0.1:1, cluster: c, colour: red }\n");
    assert_eq!(
        e,
        vec!["2:50: listeners[0].colour: unknown field `colour`; expected one of `name`, `address`, `protocol`, `cluster`, `direction`, `forward`, `capture`, `unknown_destination`, `max_connections`, `idle_timeout`, `detect_timeout`, `header_read_timeout`, `max_request_bytes`, `upgrades`, `access_log`, `tracing`"]
    );
    let e = errors(
        "clusters:\n  - { name: c, endpoints: [ { address: 10.0.0.1:80, weight: heavy } ] }\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    let e = errors("listeners: [ { name: a\n");
    assert_eq!(e.len(), 1, "{e:?}");
}

#[test]
fn dangling_references_everywhere() {
    let errs = errors(
        r#"
clusters: [ { name: b, endpoints: [] } ]
services: [ { vip: 10.96.0.1:80, cluster: x } ]
routes:
  - { match: { path_prefix: / }, cluster: y }
  - { match: { path_prefix: /a }, split: [ { cluster: b, weight: 1 }, { cluster: z, weight: 1 } ] }
"#,
    );
    assert!(
        errs.iter().any(|e| e.starts_with("services[0].cluster")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("routes[0].cluster")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("routes[1].split[1].cluster")),
        "{errs:?}"
    );
}

#[test]
fn listener_needs_exactly_one_target() {
    let errs = errors("listeners: [ { name: a, address: 127.0.0.1:1 } ]\nclusters: []\n");
    assert!(
        errs[0].starts_with("listeners[0]: needs one of"),
        "{errs:?}"
    );
    let errs = errors("listeners: [ { name: a, address: 127.0.0.1:1, forward: 127.0.0.1:2 } ]\n");
    assert!(errs[0].starts_with("listeners[0].direction"), "{errs:?}");
}

#[test]
fn identities_and_allow_lists() {
    let errs = errors(
        r#"
node: { identity: "http://x" }
inbound:
  - { port: 8080, allow: [ "spiffe://td/ns/a/*", "spiffe://td/ns/a/sa/*", "bogus" ] }
  - { port: 8080 }
"#,
    );
    assert!(
        errs.iter().any(|e| e.starts_with("node.identity")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("inbound[0].allow[1]")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("inbound[0].allow[2]")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("inbound[1].port")),
        "{errs:?}"
    );
}

#[test]
fn host_names_are_endpoints() {
    assert_eq!(
        endpoint_addr("backend.default.svc:8080"),
        Some(EndpointAddr::Host("backend.default.svc".into(), 8080))
    );
    assert_eq!(endpoint_addr("10.0.0.1"), None);
    assert_eq!(endpoint_addr("10.0.0:80"), None);
    assert_eq!(
        endpoint_addr("[::1]:80"),
        Some(EndpointAddr::Ip("[::1]:80".parse().unwrap()))
    );
}

#[test]
fn empty_file_gets_defaults() {
    let cfg = from_yaml("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.admin.to_string(), DEFAULT_ADMIN);
    assert_eq!(cfg.stats.to_string(), DEFAULT_STATS);
    assert_eq!(cfg.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
}

#[test]
fn capture_listener_fields() {
    let cfg = from_yaml(
        "listeners:\n\
         - { name: out, address: 127.0.0.1:15001, capture: outbound }\n\
         - { name: out6, address: \"[::1]:15001\", capture: outbound, unknown_destination: deny }\n\
         - { name: in, address: 0.0.0.0:15006, capture: inbound }\n",
    )
    .unwrap();
    let unknown: Vec<_> = cfg
        .listeners
        .iter()
        .map(|l| l.unknown_destination)
        .collect();
    assert_eq!(
        unknown,
        [
            Some(UnknownDestination::Pass),
            Some(UnknownDestination::Deny),
            None
        ]
    );
    assert_eq!(cfg.listeners[2].direction(), Direction::Inbound);
    // Capture listeners may leave the address to its default; others may not.
    let cfg =
        from_yaml("listeners: [ { name: o, capture: outbound }, { name: i, capture: inbound } ]\n")
            .unwrap();
    let addrs: Vec<String> = cfg
        .listeners
        .iter()
        .map(|l| l.address.to_string())
        .collect();
    assert_eq!(addrs, ["127.0.0.1:15001", "0.0.0.0:15006"]);
    assert_eq!(
        errors("clusters: [ { name: c } ]\nlisteners: [ { name: o, cluster: c } ]\n"),
        ["listeners[0]: missing field `address`"]
    );

    let errs = errors(
        "clusters: [ { name: c } ]\n\
         listeners:\n\
         - { name: a, address: 127.0.0.1:1, cluster: c, unknown_destination: deny }\n\
         - { name: b, address: 127.0.0.1:2, capture: inbound, unknown_destination: pass }\n\
         - { name: c, address: 127.0.0.1:3, capture: outbound, protocol: http }\n\
         - { name: d, address: 127.0.0.1:4, capture: outbound, direction: inbound }\n",
    );
    assert_eq!(
        errs,
        [
            "listeners[0].unknown_destination: \"deny\" applies only to a capture: outbound listener",
            "listeners[1].unknown_destination: \"pass\" applies only to a capture: outbound listener (an inbound capture forwards to the app's port)",
            "listeners[2].protocol: \"http\" on a capture listener: the protocol comes from each services: entry's protocol",
            "listeners[3].direction: \"inbound\" contradicts capture: outbound",
        ]
    );
    let errs = errors("listeners: [ { name: a, address: 127.0.0.1:1, capture: outbound, unknown_destination: drop } ]\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("listeners[0].unknown_destination: unknown value `drop`"),
        "{errs:?}"
    );
}
