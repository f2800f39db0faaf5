//! Pods as network namespaces, for the root-only tests (`tests/capture.rs`, `tests/e2e.rs`):
//! each pod has its own address on one bridge, runs small Python apps with
//! `ip netns exec` as an app container would, gets its capture rules from the real
//! `spoke redirect`, and runs its sidecar as uid 1337 (`setpriv`), so the sidecar's own
//! connections are not captured. The bridge lives in a namespace of its own (so the host's
//! firewall never sees the pods' traffic to each other); with `Lab::on_host` the host is
//! on it too, as `<subnet>.1`, so that processes on the host (a control plane, Prometheus)
//! reach the pods.
//!
//! Every process and namespace (and the host's link) is removed when the `Lab` is dropped,
//! after a failed test too.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::pki::TempDir;
use super::Proc;

pub const BIN: &str = env!("CARGO_BIN_EXE_spoke");
pub const PROXY_UID: &str = "1337";

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

/// The apps (dual-stack where the namespace has IPv6): `http:PORT[:NAME]` answers
/// `[pod=NAME ]peer=<x-spoke-peer-id>`; `banner:PORT:NAME` speaks first (`HELLO from
/// NAME`), then echoes in upper case. Prints `listening` when bound.
const SERVER: &str = r#"
import socket, sys, threading
def http(c, *name):
    data = b''
    while b'\r\n\r\n' not in data:
        x = c.recv(4096)
        if not x: return
        data += x
    peer = ''
    for line in data.split(b'\r\n\r\n')[0].decode().split('\r\n')[1:]:
        k, _, v = line.partition(':')
        if k.strip().lower() == 'x-spoke-peer-id': peer = v.strip()
    body = (''.join('pod=%s ' % n for n in name) + 'peer=%s' % peer).encode()
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
pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

pub fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn is_root() -> bool {
    String::from_utf8_lossy(&run(&["id", "-u"]).stdout).trim() == "0"
}

/// Whether this machine can run the pod tests; prints why not.
pub fn can_run(test: &str) -> bool {
    super::need(test, "root (network namespaces, iptables)", is_root())
        && super::need(test, "ip (apt-get install iproute2)", super::have("ip"))
        && super::need(
            test,
            "iptables-restore (apt-get install iptables)",
            super::have("iptables-restore"),
        )
        && super::need(test, "python3", super::have("python3"))
        && super::need(test, "setpriv (util-linux)", super::have("setpriv"))
}

/// One test's pods: namespaces on a bridge, `<subnet>.<n>/24`. Dropping it kills every
/// process it started, then deletes the namespaces and the host's link.
pub struct Lab {
    pub tag: String,
    /// The pods' /24, as `a.b.c`.
    pub subnet: String,
    /// The namespace holding the bridge `br0` and the pods' ports on it.
    pub switch: String,
    /// `Lab::on_host`: the host's end of its link to the bridge.
    host_link: Option<String>,
    pods: Vec<String>,
    procs: Vec<(String, Proc)>,
    pub dir: TempDir,
}

fn unique_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}",
        std::process::id() % 10000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Lab {
    /// Pods at `10.252.0.<n>`; nothing on the host sees them.
    pub fn new() -> Lab {
        Lab::with_subnet("10.252.0", "capture")
    }

    fn with_subnet(subnet: &str, dir: &str) -> Lab {
        let tag = unique_tag();
        let switch = format!("spkc{tag}-sw");
        let lab = Lab {
            switch: switch.clone(),
            subnet: subnet.into(),
            tag,
            host_link: None,
            pods: Vec::new(),
            procs: Vec::new(),
            dir: TempDir::new(dir),
        };
        must(&["ip", "netns", "add", &switch]);
        lab.in_switch(&["ip", "link", "add", "br0", "type", "bridge"]);
        lab.in_switch(&["ip", "link", "set", "br0", "up"]);
        lab
    }

    /// Pods at `<subnet>.<n>`, and the host on their bridge as `<subnet>.1`.
    pub fn on_host(subnet: &str) -> Lab {
        let mut lab = Lab::with_subnet(subnet, "pods");
        let (host, port) = (format!("spkh{}", lab.tag), format!("c{}1s", lab.tag));
        let _ = run(&["ip", "link", "del", &host]);
        must(&[
            "ip",
            "link",
            "add",
            "name",
            &host,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &lab.switch,
        ]);
        lab.host_link = Some(host.clone());
        lab.in_switch(&["ip", "link", "set", &port, "master", "br0", "up"]);
        must(&["ip", "addr", "add", &format!("{subnet}.1/24"), "dev", &host]);
        must(&["ip", "link", "set", &host, "up"]);
        lab
    }

    fn in_switch(&self, args: &[&str]) {
        must(&[&["ip", "netns", "exec", &self.switch][..], args].concat());
    }

    /// The bridge port of pod `n` (its veth's other end, in `switch`). Unicast between pods
    /// crosses the ports, not the bridge's own interface, so this is where a capture sees a
    /// pod's traffic.
    pub fn port(&self, n: u8) -> String {
        format!("c{}{n}s", self.tag)
    }

    /// A pod at `<subnet>.<n>`; returns its namespace name.
    pub fn pod(&mut self, name: &str, n: u8) -> String {
        let ns = format!("spkc{}-{name}", self.tag);
        let (inner, outer) = (format!("c{}{n}p", self.tag), self.port(n));
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
        self.in_switch(&["ip", "link", "set", &outer, "master", "br0", "up"]);
        let at = |a: &[&str]| must(&[&["ip", "netns", "exec", &ns][..], a].concat());
        let addr = format!("{}.{n}/24", self.subnet);
        at(&["ip", "addr", "add", &addr, "dev", &inner]);
        at(&["ip", "link", "set", &inner, "up"]);
        at(&["ip", "link", "set", "lo", "up"]);
        // Service VIPs are routed like any remote address, until iptables rewrites them.
        at(&["ip", "route", "add", "default", "dev", &inner]);
        ns
    }

    /// Gives pod `ns` (made as pod `n`) the address `fd00:252::<n>/64` too.
    pub fn ipv6(&self, ns: &str, n: u8) {
        let inner = format!("c{}{n}p", self.tag);
        let at = |a: &[&str]| must(&[&["ip", "netns", "exec", ns][..], a].concat());
        // No duplicate address detection: the address is usable at once.
        let addr = format!("fd00:252::{n}/64");
        at(&["ip", "-6", "addr", "add", &addr, "dev", &inner, "nodad"]);
        at(&["ip", "-6", "route", "add", "default", "dev", &inner]);
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Keeps `child` until the lab is dropped (then killed and reaped).
    pub fn keep(&mut self, what: &str, child: std::process::Child) {
        self.procs.push((what.to_string(), Proc(child)));
    }

    /// Starts the apps in `ns` and waits until they listen.
    pub fn apps(&mut self, ns: &str, specs: &[&str]) {
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
        self.keep(&format!("{ns} apps"), child);
    }

    /// `spoke redirect` in `ns`, as root (the init step).
    pub fn redirect(&self, ns: &str, extra: &[&str]) -> Output {
        run(&[&["ip", "netns", "exec", ns, BIN, "redirect"][..], extra].concat())
    }

    /// Starts a sidecar in `ns` as the proxy uid and waits until it is ready.
    pub fn sidecar(&mut self, ns: &str, yaml: &str) {
        self.sidecar_with(ns, yaml, &[], Duration::from_secs(10));
    }

    /// The same with more `spoke proxy` arguments, waiting up to `ready`.
    pub fn sidecar_with(&mut self, ns: &str, yaml: &str, extra: &[&str], ready: Duration) {
        let cfg = self.file(&format!("{ns}.yaml"), yaml);
        let log = std::fs::File::create(self.dir.0.join(format!("{ns}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "setpriv", "--reuid", PROXY_UID])
            .args(["--regid", PROXY_UID, "--clear-groups", BIN])
            .args(["--log-level", "debug", "proxy", "--config"])
            .arg(&cfg)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.keep(&format!("{ns} sidecar"), child);
        let start = Instant::now();
        while !self
            .client(ns, "http", "127.0.0.1", 15020, "/ready")
            .contains("200 OK")
        {
            assert!(
                start.elapsed() < ready,
                "sidecar in {ns} not ready:\n{}",
                self.log(ns)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the client as the app (root, so captured) in `ns`; what came back.
    pub fn client(&self, ns: &str, mode: &str, host: &str, port: u16, arg: &str) -> String {
        let script = self.dir.0.join("client.py");
        if !script.exists() {
            std::fs::write(&script, CLIENT).unwrap();
        }
        let (script, port) = (script.to_str().unwrap(), port.to_string());
        let out = run(&[
            "ip",
            "netns",
            "exec",
            ns,
            python(),
            script,
            mode,
            host,
            &port,
            arg,
        ]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// The sidecar's metrics in `ns`.
    pub fn metrics(&self, ns: &str) -> String {
        self.client(ns, "http", "127.0.0.1", 15020, "/metrics")
    }

    pub fn log(&self, ns: &str) -> String {
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
        // Gone with the switch's end already; this is for a switch that could not be made.
        if let Some(link) = &self.host_link {
            let _ = run(&["ip", "link", "del", link]);
        }
    }
}
