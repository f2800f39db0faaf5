//! Transparent capture end to end, as root: network namespaces as pods on one bridge, the
//! capture rules installed by the real `spoke redirect` inside each pod, and the sidecar
//! running there as uid 1337 (`setpriv`), so its own connections are not captured. The
//! apps are small Python programs run with `ip netns exec`, as an app container would be
//! (`support/lab.rs`).
//!
//! Every namespace and process is removed when a test ends, failed or not (`Lab`'s drop);
//! as another user, or without `ip`/`iptables`/`python3`/`setpriv`, the tests say that
//! they were skipped and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::lab::{can_run, python, run, Lab, BIN, PROXY_UID};
use support::pki::{Pki, BACKEND, WEB};

/// The Service VIPs: on no interface anywhere.
const VIP_HTTP: &str = "10.96.0.20";
const VIP_DB: &str = "10.96.0.30";

/// A sidecar config with both capture listeners.
fn sidecar_yaml(tls: &str, rest: &str) -> String {
    format!(
        "admin: {{ address: 127.0.0.1:15000 }}\nstats: {{ address: 0.0.0.0:15020 }}\n{tls}access_log: true\n\
         listeners:\n  - {{ name: outbound, address: 127.0.0.1:15001, capture: outbound }}\n  \
         - {{ name: inbound, address: 0.0.0.0:15006, capture: inbound }}\n{rest}"
    )
}

/// The connection was accepted, then closed (or reset) without a byte of answer.
fn closed_unanswered(got: &str) -> bool {
    got.starts_with('[') && !got.starts_with("[connect-error")
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    support::metric(text, name, labels).unwrap_or(0.0)
}

#[test]
fn captured_service_traffic_goes_over_mtls_and_the_rest_passes_through() {
    let test = "captured_service_traffic_goes_over_mtls_and_the_rest_passes_through";
    if !can_run(test) {
        return;
    }
    let pki = Pki::new(support::pki::TD);
    let (web, backend) = (pki.issue("web", WEB), pki.issue("backend", BACKEND));
    let mut lab = Lab::new();
    let a = lab.pod("a", 2);
    let b = lab.pod("b", 3);
    let x = lab.pod("x", 4);
    lab.apps(&b, &["http:8080", "banner:3306:db"]);
    lab.apps(&x, &["banner:7000:external"]);
    for ns in [&a, &b] {
        let out = lab.redirect(ns, &["--proxy-uid", PROXY_UID]);
        assert!(out.status.success(), "{out:?}");
    }
    lab.sidecar(
        &a,
        &sidecar_yaml(
            &web.yaml(""),
            &format!(
                "clusters:\n  - {{ name: backend, tls: {{ identity: {BACKEND} }}, endpoints: [ {{ address: 10.252.0.3:8080 }} ] }}\n  \
                 - {{ name: db, tls: {{ identity: {BACKEND} }}, endpoints: [ {{ address: 10.252.0.3:3306 }} ] }}\n\
                 services:\n  - {{ vip: {VIP_HTTP}:80, cluster: backend, protocol: auto }}\n  \
                 - {{ vip: {VIP_DB}:3306, cluster: db, protocol: opaque }}\n"
            ),
        ),
    );
    lab.sidecar(
        &b,
        &sidecar_yaml(
            &backend.yaml(""),
            &format!(
                "inbound:\n  - {{ port: 8080, tls: strict, allow: [ {WEB} ] }}\n  \
                 - {{ port: 3306, protocol: opaque, tls: strict, allow: [ {WEB} ] }}\n"
            ),
        ),
    );

    // Plain HTTP to a VIP: A's sidecar maps it to `backend`, mTLS to B, whose inbound
    // capture hands it to the app with A's identity.
    let got = lab.client(&a, "http", VIP_HTTP, 80, "/hello");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with(&format!("peer={WEB}")), "{got}");

    // Server speaks first through an opaque service: the banner arrives at once (no
    // protocol detection waiting for the client), then bytes flow both ways.
    let start = Instant::now();
    let got = lab.client(&a, "banner", VIP_DB, 3306, "ping");
    assert_eq!(got, "HELLO from db\nPING", "{got}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    // An address no service names passes through unchanged, as plain TCP.
    let got = lab.client(&a, "banner", "10.252.0.4", 7000, "out");
    assert_eq!(got, "HELLO from external\nOUT", "{got}");

    // Loops: the pod's own capture port through the outbound capture, and the capture
    // port dialled directly (loopback is not captured).
    let got = lab.client(&a, "tcp", "10.252.0.2", 15006, "x");
    assert!(closed_unanswered(&got), "{got}");
    let got = lab.client(&a, "tcp", "127.0.0.1", 15001, "x");
    assert!(closed_unanswered(&got), "{got}");

    let am = lab.metrics(&a);
    let out = ["listener=\"outbound\""];
    let passthrough = ["cluster=\"passthrough\"", "direction=\"outbound\""];
    assert_eq!(
        metric(&am, "spoke_tcp_connections_opened_total", &passthrough),
        1.0,
        "{am}"
    );
    let ok = ["cluster=\"backend\"", "code=\"200\"", out[0]];
    assert_eq!(metric(&am, "spoke_requests_total", &ok), 1.0, "{am}");
    let db = ["cluster=\"db\"", "direction=\"outbound\""];
    assert_eq!(
        metric(&am, "spoke_tcp_connections_opened_total", &db),
        1.0,
        "{am}"
    );
    let refused = |why: &str| {
        metric(
            &am,
            "spoke_capture_refused_total",
            &[out[0], &format!("reason=\"{why}\"")],
        )
    };
    assert_eq!(refused("loop"), 1.0, "{am}");
    assert_eq!(
        refused("not_redirected") + refused("no_original_dst"),
        1.0,
        "{am}"
    );
    let bm = lab.metrics(&b);
    let inbound = [
        "cluster=\"inbound:8080\"",
        "listener=\"inbound\"",
        "code=\"200\"",
    ];
    assert_eq!(metric(&bm, "spoke_requests_total", &inbound), 1.0, "{bm}");
    let log = lab.log(&a);
    assert!(log.contains("captured: service"), "{log}");
    assert!(log.contains("loop: the original destination"), "{log}");
}

#[test]
fn unknown_destinations_can_be_denied() {
    if !can_run("unknown_destinations_can_be_denied") {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.pod("a", 2);
    let x = lab.pod("x", 4);
    lab.apps(&x, &["banner:7000:external"]);
    assert!(lab
        .redirect(&a, &["--proxy-uid", PROXY_UID])
        .status
        .success());
    // The capture listeners at their default addresses (127.0.0.1:15001, 0.0.0.0:15006).
    let yaml = "admin: { address: 127.0.0.1:15000 }\nstats: { address: 0.0.0.0:15020 }\n\
                listeners:\n  - { name: outbound, capture: outbound, unknown_destination: deny }\n  \
                - { name: inbound, capture: inbound }\n";
    lab.sidecar(&a, yaml);
    let got = lab.client(&a, "banner", "10.252.0.4", 7000, "x");
    assert!(closed_unanswered(&got), "{got}");
    let m = lab.metrics(&a);
    let denied = ["listener=\"outbound\"", "reason=\"unknown_destination\""];
    assert_eq!(
        metric(&m, "spoke_capture_refused_total", &denied),
        1.0,
        "{m}"
    );
    // The proxy's own connections are not captured: it still reaches the address.
    let python = python();
    let got = run(&[
        "ip", "netns", "exec", &a, "setpriv", "--reuid", PROXY_UID, "--regid", PROXY_UID,
        "--clear-groups", python, "-c",
        "import socket; s=socket.create_connection(('10.252.0.4',7000),timeout=5); print(s.recv(100).decode().strip())",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "HELLO from external",
        "{got:?}"
    );
}

/// The nat (and, with IPv6, ip6 nat) table without iptables-save's comments and counters.
fn tables(ns: &str) -> String {
    let mut all = String::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        let out = run(&["ip", "netns", "exec", ns, tool, "-t", "nat"]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if !line.starts_with('#') {
                all.push_str(line.split(" [").next().unwrap_or(line));
                all.push('\n');
            }
        }
    }
    all
}

#[test]
fn redirect_is_idempotent_removable_and_dry_runs() {
    if !can_run("redirect_is_idempotent_removable_and_dry_runs") {
        return;
    }
    let mut lab = Lab::new();
    let p = lab.pod("p", 2);
    let clean = tables(&p);
    assert!(!clean.contains("SPOKE"), "{clean}");

    let dry = lab.redirect(&p, &["--dry-run"]);
    assert!(dry.status.success(), "{dry:?}");
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        text.contains("# iptables-restore --noflush\n*nat\n"),
        "{text}"
    );
    assert!(
        text.contains("-A OUTPUT -p tcp -j SPOKE_OUTPUT\n"),
        "{text}"
    );
    assert_eq!(tables(&p), clean, "--dry-run changed the tables");

    let first = lab.redirect(&p, &["--exclude-outbound-ports", "5432"]);
    assert!(first.status.success(), "{first:?}");
    let once = tables(&p);
    assert!(once.contains("--dport 5432 -j RETURN"), "{once}");
    assert_eq!(
        once.matches("-A PREROUTING -p tcp -j SPOKE_INBOUND")
            .count(),
        1 + has_v6(&once)
    );
    // The same run again: the same tables, no second jump.
    assert!(lab
        .redirect(&p, &["--exclude-outbound-ports", "5432"])
        .status
        .success());
    assert_eq!(tables(&p), once);
    // Other flags (here from the environment): the rules are replaced, not added to.
    let env = Command::new("ip")
        .args(["netns", "exec", &p, BIN, "redirect"])
        .env("SPOKE_EXCLUDE_OUTBOUND_PORTS", "6379")
        .output()
        .unwrap();
    assert!(env.status.success(), "{env:?}");
    let replaced = tables(&p);
    assert!(replaced.contains("--dport 6379 -j RETURN"), "{replaced}");
    assert!(!replaced.contains("--dport 5432"), "{replaced}");
    // A dry run against installed rules shows no second jump either.
    let dry = String::from_utf8_lossy(&lab.redirect(&p, &["--dry-run"]).stdout).to_string();
    assert!(!dry.contains("-A OUTPUT -p tcp -j SPOKE_OUTPUT"), "{dry}");

    let removed = lab.redirect(&p, &["--remove"]);
    assert!(removed.status.success(), "{removed:?}");
    assert_eq!(tables(&p), clean);
    let again = lab.redirect(&p, &["--remove"]);
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to remove"));
}

fn has_v6(tables: &str) -> usize {
    // ip6tables-save's part repeats the *nat header.
    usize::from(tables.matches("*nat").count() > 1)
}

#[test]
fn redirect_without_permission_is_a_clear_error() {
    if !can_run("redirect_without_permission_is_a_clear_error") {
        return;
    }
    let mut lab = Lab::new();
    let p = lab.pod("p", 2);
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &p,
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        BIN,
        "redirect",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: permission denied"), "{err}");
    assert!(err.contains("NET_ADMIN"), "{err}");
    assert!(!tables(&p).contains("SPOKE"));
}

#[test]
fn ipv6_and_dual_stack_capture() {
    let test = "ipv6_and_dual_stack_capture";
    if !can_run(test)
        || !support::need(
            test,
            "IPv6 and ip6tables-restore",
            std::path::Path::new("/proc/net/if_inet6").exists()
                && support::have("ip6tables-restore"),
        )
    {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.pod("a", 2);
    let x = lab.pod("x", 4);
    lab.ipv6(&a, 2);
    lab.ipv6(&x, 4);
    lab.apps(&a, &["http:8080"]);
    lab.apps(&x, &["banner:7000:external"]);
    let out = lab.redirect(&a, &["--proxy-uid", PROXY_UID, "--ipv6", "on"]);
    assert!(out.status.success(), "{out:?}");
    let yaml = sidecar_yaml(
        "",
        "clusters: [ { name: ext, endpoints: [ { address: \"[fd00:252::4]:7000\" } ] } ]\n\
         services: [ { vip: \"[fd00:96::30]:3306\", cluster: ext, protocol: opaque } ]\n\
         inbound: [ { port: 8080, tls: disabled } ]\n",
    )
    .replace("0.0.0.0:15006", "\"[::]:15006\"")
    .replace(
        "listeners:\n",
        "listeners:\n  - { name: outbound6, address: \"[::1]:15001\", capture: outbound }\n",
    );
    lab.sidecar(&a, &yaml);

    // Outbound over IPv6: a service VIP, and an unknown destination passed through.
    let got = lab.client(&a, "banner", "fd00:96::30", 3306, "v6");
    assert_eq!(got, "HELLO from external\nV6", "{got}");
    let got = lab.client(&a, "banner", "fd00:252::4", 7000, "pass");
    assert_eq!(got, "HELLO from external\nPASS", "{got}");
    // Inbound on the dual-stack listener: IPv6, and IPv4 seen as a mapped address.
    for host in ["fd00:252::2", "10.252.0.2"] {
        let got = lab.client(&x, "http", host, 8080, "/");
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("peer="),
            "{host}: {got}"
        );
    }
    let m = lab.metrics(&a);
    let six = ["listener=\"outbound6\""];
    assert_eq!(
        metric(&m, "spoke_listener_connections_opened_total", &six),
        2.0,
        "{m}"
    );
    let inbound = [
        "cluster=\"inbound:8080\"",
        "listener=\"inbound\"",
        "code=\"200\"",
    ];
    assert_eq!(metric(&m, "spoke_requests_total", &inbound), 2.0, "{m}");
}

/// Needs no root: a capture listener dialled directly (nothing redirected the connection)
/// closes it unanswered and says why, in a metric and a log event.
#[tokio::test]
async fn a_capture_port_dialled_directly_is_refused() {
    use tokio::io::AsyncWriteExt;
    let proxy = support::proxy(&format!(
        "{}listeners:\n  - {{ name: out, address: 127.0.0.1:0, capture: outbound }}\n  \
         - {{ name: in, address: 127.0.0.1:0, capture: inbound }}\n",
        support::BASE
    ))
    .await;
    for name in ["out", "in"] {
        let mut s = tokio::net::TcpStream::connect(proxy.listener(name).unwrap())
            .await
            .unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(support::within(support::read_all(&mut s)).await.is_empty());
    }
    let text = proxy.shared.metrics.render();
    for name in ["out", "in"] {
        let listener = format!("listener=\"{name}\"");
        let why = |r: &str| {
            metric(
                &text,
                "spoke_capture_refused_total",
                &[&listener, &format!("reason=\"{r}\"")],
            )
        };
        // With conntrack the kernel names the listener itself; without, nothing at all.
        assert_eq!(
            why("not_redirected") + why("no_original_dst"),
            1.0,
            "{text}"
        );
    }
}

#[test]
fn redirect_without_iptables_names_it() {
    let test = "redirect_without_iptables_names_it";
    let sbin_only = ["/usr/bin", "/bin"]
        .iter()
        .all(|d| !std::path::Path::new(d).join("iptables-restore").exists());
    if !can_run(test)
        || !support::need(test, "unshare (util-linux)", support::have("unshare"))
        || !support::need(test, "iptables in an sbin directory", sbin_only)
    {
        return;
    }
    // A mount namespace of its own, with empty sbin directories: iptables is not there.
    let mut hide = String::from("mount -t tmpfs none /usr/sbin");
    if !std::fs::symlink_metadata("/sbin").is_ok_and(|m| m.file_type().is_symlink()) {
        hide.push_str(" && mount -t tmpfs none /sbin");
    }
    let script = format!("{hide} && exec env PATH=/usr/bin:/bin {BIN} redirect");
    let out = run(&["unshare", "-m", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: iptables-restore is not installed"),
        "{err}"
    );
    assert!(err.contains("apt-get install iptables"), "{err}");
}
