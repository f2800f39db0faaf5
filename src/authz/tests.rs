//! Rule evaluation: identity x method x path x header, deny before allow, the short form,
//! TCP connections against HTTP-only rules, and the TLS mode gate.

use super::*;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const DEV: &str = "spiffe://cluster.local/ns/dev/sa/web";
const OTHER: &str = "spiffe://cluster.local/ns/default/sa/other";

fn policy(yaml: &str) -> PortPolicy {
    let cfg = crate::config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    PortPolicy::new(&cfg.inbound[0])
}

fn id(s: &str) -> Identity {
    Identity::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn req<'a>(method: &'a str, path: &'a str, headers: &'a HeaderMap) -> Request<'a> {
    Request {
        method,
        path,
        headers,
    }
}

const RULES: &str = r#"
inbound:
  - port: 8080
    tls: permissive
    rules:
      - { action: deny,  from: [ "spiffe://cluster.local/ns/dev/*" ] }
      - { action: deny,  paths: [ { prefix: /api/admin } ] }
      - { action: allow, from: [ "spiffe://cluster.local/ns/default/sa/web" ], methods: [ GET, HEAD ], paths: [ { prefix: /api/ } ] }
      - { action: allow, from: [ authenticated ], headers: [ { name: x-debug, exact: "1" } ] }
      - { action: allow, from: [ unauthenticated ], paths: [ { exact: /healthz } ] }
"#;

/// (peer, method, path, headers, decision)
type Case<'a> = (
    Option<&'a Identity>,
    &'a str,
    &'a str,
    &'a HeaderMap,
    Result<(), Denial>,
);

#[test]
fn rules_matrix() {
    let p = policy(RULES);
    assert!(p.matches_paths());
    let none = HeaderMap::new();
    let mut debug = HeaderMap::new();
    debug.insert("x-debug", http::HeaderValue::from_static("1"));
    let (web, dev, other) = (id(WEB), id(DEV), id(OTHER));
    let cases: &[Case] = &[
        (Some(&web), "GET", "/api/x", &none, Ok(())),
        (Some(&web), "HEAD", "/api", &none, Ok(())),
        (
            Some(&web),
            "POST",
            "/api/x",
            &none,
            Err(Denial::NoAllowMatch),
        ),
        (Some(&web), "GET", "/apix", &none, Err(Denial::NoAllowMatch)),
        (
            Some(&web),
            "GET",
            "/other",
            &none,
            Err(Denial::NoAllowMatch),
        ),
        (
            Some(&web),
            "GET",
            "/api/admin/users",
            &none,
            Err(Denial::DenyRule(1)),
        ),
        (
            Some(&web),
            "GET",
            "/healthz",
            &none,
            Err(Denial::NoAllowMatch),
        ),
        (Some(&web), "POST", "/other", &debug, Ok(())),
        (
            Some(&other),
            "GET",
            "/api/x",
            &none,
            Err(Denial::NoAllowMatch),
        ),
        (Some(&other), "GET", "/api/x", &debug, Ok(())),
        // Deny before allow: dev is refused even with the header that allows others.
        (
            Some(&dev),
            "GET",
            "/api/x",
            &debug,
            Err(Denial::DenyRule(0)),
        ),
        (None, "GET", "/healthz", &none, Ok(())),
        (None, "GET", "/healthz/x", &none, Err(Denial::NoAllowMatch)),
        (None, "GET", "/api/x", &debug, Err(Denial::NoAllowMatch)),
    ];
    for (peer, m, path, h, want) in cases {
        let tls = peer.is_some();
        let got = p.check(tls, *peer, Some(&req(m, path, h)));
        assert_eq!(got, *want, "{peer:?} {m} {path} {h:?}");
    }
    // A TCP connection: only rules without request conditions can match.
    assert_eq!(p.check(true, Some(&web), None), Err(Denial::NoAllowMatch));
    assert_eq!(p.check(true, Some(&dev), None), Err(Denial::DenyRule(0)));
}

#[test]
fn short_form_and_defaults() {
    let p = policy(&format!(
        "inbound: [ {{ port: 80, allow: [ \"{WEB}\" ] }} ]"
    ));
    assert!(!p.matches_paths());
    assert_eq!(p.check(true, Some(&id(WEB)), None), Ok(()));
    assert_eq!(
        p.check(true, Some(&id(OTHER)), None),
        Err(Denial::NoAllowMatch)
    );
    // Strict by default: plaintext never gets to the rules.
    assert_eq!(p.check(false, None, None), Err(Denial::Transport));
    let open = policy("inbound: [ { port: 80, tls: permissive } ]");
    assert_eq!(open.check(false, None, None), Ok(()));
    assert_eq!(open.check(true, Some(&id(OTHER)), None), Ok(()));
    let plain = policy("inbound: [ { port: 80, tls: disabled } ]");
    assert_eq!(
        plain.check(true, Some(&id(WEB)), None),
        Err(Denial::Transport)
    );
    let d = PortPolicy::default_for(true, DefaultPolicy::Deny);
    assert_eq!(
        d.check(true, Some(&id(WEB)), None),
        Err(Denial::DefaultPolicy)
    );
    let a = PortPolicy::default_for(false, DefaultPolicy::Allow);
    assert_eq!(a.check(false, None, None), Ok(()));
}

#[test]
fn only_deny_rules_deny_everything_else() {
    let p = policy(
        "inbound: [ { port: 80, rules: [ { action: deny, from: [ \"spiffe://cluster.local/ns/dev/*\" ] } ] } ]",
    );
    assert_eq!(
        p.check(true, Some(&id(WEB)), None),
        Err(Denial::NoAllowMatch)
    );
}

#[test]
fn header_conditions() {
    let mut h = HeaderMap::new();
    h.append("x-a", http::HeaderValue::from_static("one"));
    h.append("x-a", http::HeaderValue::from_static("two-2"));
    let m = |name: &str, rule| HeaderMatch {
        name: name.into(),
        rule,
    };
    assert!(header_matches(
        &m("x-a", HeaderRule::Exact("two-2".into())),
        &h
    ));
    assert!(header_matches(
        &m("x-a", HeaderRule::Prefix("tw".into())),
        &h
    ));
    assert!(!header_matches(
        &m("x-a", HeaderRule::Exact("two".into())),
        &h
    ));
    assert!(header_matches(&m("x-a", HeaderRule::Present(true)), &h));
    assert!(header_matches(&m("x-b", HeaderRule::Present(false)), &h));
    assert!(!header_matches(
        &m("x-b", HeaderRule::Prefix("".into())),
        &h
    ));
}

#[test]
fn segment_prefixes() {
    let p = PathMatch::Prefix("/api".into());
    assert!(path_matches(&p, "/api"));
    assert!(path_matches(&p, "/api/"));
    assert!(path_matches(&p, "/api/v1"));
    assert!(!path_matches(&p, "/apiv1"));
    assert!(path_matches(&PathMatch::Prefix("/".into()), "/x"));
    assert!(!path_matches(&PathMatch::Prefix("/".into()), "*"));
    assert!(!path_matches(&PathMatch::Exact("/a".into()), "/a/"));
}

#[test]
fn port_labels() {
    let mut b = [0u8; 5];
    assert_eq!(port_label(0, &mut b), "0");
    assert_eq!(port_label(8080, &mut b), "8080");
    assert_eq!(port_label(65535, &mut b), "65535");
}

#[test]
fn rule_validation_names_the_rule() {
    let errs = |y: &str| match crate::config::from_yaml(y) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    let e = errs("inbound: [ { port: 5432, protocol: tcp, rules: [ { action: allow, from: [ authenticated ] }, { action: allow, paths: [ { prefix: /x } ] } ] } ]");
    assert!(
        e.starts_with("inbound[0].rules[1]: matches on methods, paths or headers"),
        "{e}"
    );
    assert!(!e.contains("rules[0]"), "{e}");
    let e = errs("inbound: [ { port: 80, protocol: opaque, rules: [ { action: deny, methods: [ GET ] } ] } ]");
    assert!(
        e.contains("inbound[0].rules[0]:") && e.contains("opaque"),
        "{e}"
    );
    let e = errs(
        "inbound: [ { port: 80, rules: [ { action: allow, paths: [ { prefix: /a/../b } ] } ] } ]",
    );
    assert!(
        e.contains("inbound[0].rules[0].paths[0]: \"/a/../b\" is not a normalised path"),
        "{e}"
    );
    let e =
        errs("inbound: [ { port: 80, rules: [ { action: allow, paths: [ { exact: x } ] } ] } ]");
    assert!(e.contains("paths[0]: \"x\" must start with /"), "{e}");
    let e = errs("inbound: [ { port: 80, rules: [ { action: allow, from: [ \"spiffe://td/ns/a/sa/*\" ] } ] } ]");
    assert!(e.contains("inbound[0].rules[0].from[0]"), "{e}");
    let e =
        errs("inbound: [ { port: 80, rules: [ { action: allow, from: [ unauthenticated ] } ] } ]");
    assert!(
        e.contains("inbound[0].rules[0].from: unauthenticated on a port with tls: strict"),
        "{e}"
    );
    let e = errs("inbound: [ { port: 80, tls: disabled, rules: [ { action: allow, from: [ authenticated ] } ] } ]");
    assert!(
        e.contains("inbound[0].rules[0].from: names identities"),
        "{e}"
    );
    let e = errs("inbound: [ { port: 80, allow: [ \"spiffe://td/ns/a/sa/b\" ], rules: [ { action: allow } ] } ]");
    assert!(e.contains("inbound[0].allow: takes allow"), "{e}");
    let e = errs("inbound: [ { port: 80, rules: [ { action: maybe } ] } ]");
    assert!(!e.is_empty(), "unknown action accepted");
    let e = errs("listeners: [ { name: a, address: 127.0.0.1:0, cluster: c, upgrades: [ websocket, h2c ] } ]\nclusters: [ { name: c, endpoints: [] } ]");
    assert!(
        e.contains("listeners[0].upgrades[1]: h2c is never tunnelled"),
        "{e}"
    );
}
