//! Transparent capture end to end, as root: network namespaces as pods on one bridge, the
//! capture rules installed by the real `spoke redirect` inside each pod, and the sidecar
//! running there as uid 1337 (`setpriv`), so its own connections are not captured. The
//! apps are small Python programs run with `ip netns exec`, as an app container would be.
//!
//! Every namespace and process is removed when a test ends, failed or not (`Lab`'s drop);
//! as another user, or without `ip`/`iptables`/`python3`/`setpriv`, the tests say that
//! they were skipped and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use support::pki::{Pki, TempDir, BACKEND, WEB};

const BIN: &str = env!("CARGO_BIN_EXE_spoke");
const PROXY_UID: &str = "1337";
/// The Service VIPs: on no interface anywhere.
const VIP_HTTP: &str = "10.96.0.20";
const VIP_DB: &str = "10.96.0.30";

/// The app side of a test: a client that speaks HTTP/1.1, plain TCP, or waits for the
/// server to speak first; prints what came back (`[closed]` for nothing at all).
const CLIENT: &str = r#"
import socket, sys
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
arg = sys.argv[4] if len(sys.argv) > 4 else ''
try:
    s = socket.create_connection((host, port), timeout=5)
except Exception as e:
    print('[connect-error %s]' % e); sys.exit(0)
s.settimeout(5)
out = b''
try:
    if mode == 'http':
        s.sendall(('GET %s HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n' % (arg or '/')).encode())
    elif mode == 'tcp':
        s.sendall(arg.encode()); s.shutdown(socket.SHUT_WR)
    elif mode == 'banner':
        out += s.recv(4096)
        s.sendall(arg.encode()); s.shutdown(socket.SHUT_WR)
    while True:
        c = s.recv(65536)
        if not c: break
        out += c
except Exception as e:
    out += ('[%s]' % type(e).__name__).encode()
sys.stdout.write(out.decode(errors='replace') if out else '[closed]')
"#;

/// The apps (dual-stack where the namespace has IPv6): `http:PORT` answers `peer=<x-spoke-peer-id>`; `banner:PORT:NAME` speaks
/// first (`HELLO from NAME`), then echoes in upper case. Prints `listening` when bound.
const SERVER: &str = r#"
import socket, sys, threading
def http(c):
    data = b''
    while b'\r\n\r\n' not in data:
        x = c.recv(4096)
        if not x: return
        data += x
    peer = ''
    for line in data.split(b'\r\n\r\n')[0].decode().split('\r\n')[1:]:
        k, _, v = line.partition(':')
        if k.strip().lower() == 'x-spoke-peer-id': peer = v.strip()
    body = ('peer=%s' % peer).encode()
    c.sendall(b'HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n' % len(body) + body)
    c.close()
def banner(c, name):
    c.sendall(('HELLO from %s\n' % name).encode())
    while True:
        x = c.recv(4096)
        if not x: break
        c.sendall(x.upper())
    c.close()
def serve(l, fn, extra):
    while True:
        c, _ = l.accept()
        threading.Thread(target=fn, args=(c,) + extra, daemon=True).start()
for spec in sys.argv[1:]:
    kind, port, *rest = spec.split(':')
    try:
        l = socket.socket(socket.AF_INET6); l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('::', int(port)))
    except OSError:
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind(('0.0.0.0', int(port)))
    l.listen(64)
    threading.Thread(target=serve, args=(l, http if kind == 'http' else banner, tuple(rest)), daemon=True).start()
print('listening', flush=True)
threading.Event().wait()
"#;

/// The system's python when there is one: it starts faster than a version manager's shim,
/// and the proxy uid can run it (a per-user install under /root it cannot).
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    current_uid() == 0
}

fn current_uid() -> u32 {
    String::from_utf8_lossy(&run(&["id", "-u"]).stdout)
        .trim()
        .parse()
        .unwrap_or(u32::MAX)
}

/// Whether this machine can run these tests; prints why not.
fn can_run(test: &str) -> bool {
    support::need(test, "root (network namespaces, iptables)", is_root())
        && support::need(test, "ip (apt-get install iproute2)", support::have("ip"))
        && support::need(
            test,
            "iptables-restore (apt-get install iptables)",
            support::have("iptables-restore"),
        )
        && support::need(test, "python3", support::have("python3"))
        && support::need(test, "setpriv (util-linux)", support::have("setpriv"))
}

/// One test's pods: namespaces on a bridge in a namespace of its own, `10.252.0.<n>/24`.
/// Dropping it kills every process it started, then deletes the namespaces.
struct Lab {
    tag: String,
    switch: String,
    pods: Vec<String>,
    procs: Vec<(String, support::Proc)>,
    dir: TempDir,
}

impl Lab {
    fn new() -> Lab {
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id() % 10000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("spkc{tag}-sw");
        let lab = Lab {
            switch: switch.clone(),
            tag,
            pods: Vec::new(),
            procs: Vec::new(),
            dir: TempDir::new("capture"),
        };
        must(&["ip", "netns", "add", &switch]);
        let sw = |a: &[&str]| must(&[&["ip", "netns", "exec", &switch][..], a].concat());
        sw(&["ip", "link", "add", "br0", "type", "bridge"]);
        sw(&["ip", "link", "set", "br0", "up"]);
        lab
    }

    /// A pod at `10.252.0.<n>`; returns its namespace name.
    fn pod(&mut self, name: &str, n: u8) -> String {
        let ns = format!("spkc{}-{name}", self.tag);
        let (inner, outer) = (format!("c{}{n}p", self.tag), format!("c{}{n}s", self.tag));
        must(&["ip", "netns", "add", &ns]);
        self.pods.push(ns.clone());
        must(&[
            "ip",
            "link",
            "add",
            "name",
            &inner,
            "netns",
            &ns,
            "type",
            "veth",
            "peer",
            "name",
            &outer,
            "netns",
            &self.switch,
        ]);
        let at = |ns: &str, a: &[&str]| must(&[&["ip", "netns", "exec", ns][..], a].concat());
        at(
            &self.switch,
            &["ip", "link", "set", &outer, "master", "br0", "up"],
        );
        at(
            &ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.252.0.{n}/24"),
                "dev",
                &inner,
            ],
        );
        at(&ns, &["ip", "link", "set", &inner, "up"]);
        at(&ns, &["ip", "link", "set", "lo", "up"]);
        // Service VIPs are routed like any remote address, until iptables rewrites them.
        at(&ns, &["ip", "route", "add", "default", "dev", &inner]);
        ns
    }

    /// Gives pod `ns` (made as pod `n`) the address `fd00:252::<n>/64` too.
    fn ipv6(&self, ns: &str, n: u8) {
        let inner = format!("c{}{n}p", self.tag);
        let at = |a: &[&str]| must(&[&["ip", "netns", "exec", ns][..], a].concat());
        // No duplicate address detection: the address is usable at once.
        at(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("fd00:252::{n}/64"),
            "dev",
            &inner,
            "nodad",
        ]);
        at(&["ip", "-6", "route", "add", "default", "dev", &inner]);
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Starts the apps in `ns` and waits until they listen.
    fn apps(&mut self, ns: &str, specs: &[&str]) {
        let script = self.file("server.py", SERVER);
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, python(), script.to_str().unwrap()])
            .args(specs)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "listening", "apps in {ns} did not start");
        self.procs
            .push((format!("{ns} apps"), support::Proc(child)));
    }

    /// `spoke redirect` in `ns`, as root (the init step).
    fn redirect(&self, ns: &str, extra: &[&str]) -> Output {
        run(&[&["ip", "netns", "exec", ns, BIN, "redirect"][..], extra].concat())
    }

    /// Starts a sidecar in `ns` as the proxy uid and waits until it is ready.
    fn sidecar(&mut self, ns: &str, yaml: &str) {
        let cfg = self.file(&format!("{ns}.yaml"), yaml);
        let log = std::fs::File::create(self.dir.0.join(format!("{ns}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "setpriv", "--reuid", PROXY_UID])
            .args(["--regid", PROXY_UID, "--clear-groups", BIN])
            .args(["--log-level", "debug", "proxy", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs
            .push((format!("{ns} sidecar"), support::Proc(child)));
        let start = Instant::now();
        while !self
            .client(ns, "http", "127.0.0.1", 15020, "/ready")
            .contains("200 OK")
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sidecar in {ns} not ready:\n{}",
                self.log(ns)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the client as the app (root, so captured) in `ns`; what came back.
    fn client(&self, ns: &str, mode: &str, host: &str, port: u16, arg: &str) -> String {
        let script = self.dir.0.join("client.py");
        if !script.exists() {
            std::fs::write(&script, CLIENT).unwrap();
        }
        let port = port.to_string();
        let out = run(&[
            "ip",
            "netns",
            "exec",
            ns,
            python(),
            script.to_str().unwrap(),
            mode,
            host,
            &port,
            arg,
        ]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// The sidecar's metrics in `ns`.
    fn metrics(&self, ns: &str) -> String {
        self.client(ns, "http", "127.0.0.1", 15020, "/metrics")
    }

    fn log(&self, ns: &str) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("{ns}.log"))).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for ns in &self.pods {
                eprintln!("--- sidecar log of {ns}:\n{}", self.log(ns));
            }
        }
        // Processes first: a namespace goes away only with its last process.
        self.procs.clear();
        for ns in self.pods.iter().chain([&self.switch]) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

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
