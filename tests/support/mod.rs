//! Shared helpers for integration tests: echo and scripted upstreams, black-holed addresses,
//! in-process proxies from YAML, a tiny HTTP/1.1 client for the admin servers, and a
//! timeout around every await so a hang fails fast.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod http;
pub mod lab;
pub mod mesh;
pub mod pki;
pub mod prometheus;
pub mod tcpdump;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use std::io::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const T: Duration = Duration::from_secs(10);

/// Admin and stats on port 0, for in-process proxies.
pub const BASE: &str = "admin: { address: 127.0.0.1:0 }\nstats: { address: 127.0.0.1:0 }\n";

/// Awaits `f`, failing the test if it takes longer than 10 s.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

/// An echo server on 127.0.0.1:0.
pub async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(spoke::demo::echo_server(l));
    a
}

/// A server that answers every connection with `id` and closes.
pub async fn named(id: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(id.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    a
}

/// An address where nothing listens (connects are refused).
pub async fn refused() -> SocketAddr {
    // Bound but never listening: a SYN gets a RST, and the port stays taken for the rest
    // of the test binary. A port bound and released could be handed to the next bind(0)
    // (another test's echo server), and the "dead" endpoint would then answer.
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = s.local_addr().unwrap();
    std::mem::forget(s);
    a
}

/// An address whose connects hang: a listener with a full accept queue never answers a
/// new SYN. The returned value keeps it alive.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: std::net::TcpListener,
    _fill: Vec<std::net::TcpStream>,
}

pub fn black_hole() -> BlackHole {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let listener: std::net::TcpListener = sock.into();
    let addr = listener.local_addr().unwrap();
    let mut fill = Vec::new();
    // Fill the accept queue; once it is full, further connects stall.
    for _ in 0..8 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        match s.connect_timeout(&addr.into(), Duration::from_millis(100)) {
            Ok(()) => fill.push(s.into()),
            Err(_) => break,
        }
    }
    BlackHole {
        addr,
        _listener: listener,
        _fill: fill,
    }
}

/// Starts a proxy in-process from YAML.
pub async fn proxy(yaml: &str) -> spoke::app::Running {
    let cfg = spoke::config::from_yaml(yaml).unwrap_or_else(|e| panic!("bad test config: {e}"));
    spoke::app::start(cfg, spoke::app::Options::default())
        .await
        .unwrap_or_else(|e| panic!("start failed: {e}"))
}

/// Sends `msg`, half-closes, and reads everything back.
pub async fn roundtrip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).await?;
    Ok(back)
}

/// Reads what the peer sends until EOF; an error (reset) also counts as closed.
pub async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back).await;
    back
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the first series of `name` whose labels contain all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Whether a test's outside requirement (root, a tool) is met. When it is not, the test
/// says that it is skipped and why, and returns early; with `SPOKE_REQUIRE_ALL=1` (CI, as
/// root, with every tool installed) a missing requirement fails the test instead, so
/// nothing is skipped silently where everything should run.
pub fn need(test: &str, what: &str, met: bool) -> bool {
    if met {
        return true;
    }
    let msg = format!("{test}: skipped: needs {what}");
    if std::env::var("SPOKE_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{msg} (SPOKE_REQUIRE_ALL=1)");
    }
    // Straight to the stderr handle: the test harness captures `eprintln!` of passing
    // tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "{msg}");
    false
}

/// Whether `tool` can be run (`tool --version` starts).
pub fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// A free port on 127.0.0.1 (bound and released; fine for tests that start processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) on drop, so a failing test leaves nothing running.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the `spoke` binary with `args`; stderr is piped (to read logs) or dropped.
pub fn spawn_spoke(args: &[&str], pipe_stderr: bool) -> Proc {
    let stderr = if pipe_stderr {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    };
    Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_spoke"))
            .args(args)
            .stderr(stderr)
            .spawn()
            .expect("cannot start spoke"),
    )
}

/// Runs the `spoke` binary with `args`, writing `stdin` to it; its whole output.
pub fn spoke_with_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start spoke");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Waits (blocking, up to 10 s) until the proxy whose stats server is on `port` is ready.
pub fn wait_ready(port: u16) {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Some((200, _)) = http_blocking(port, "GET", "/ready") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("proxy not ready on {port}");
}

/// A blocking HTTP/1.1 request to 127.0.0.1:`port`; (status, body), `None` if it failed.
pub fn http_blocking(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    http_blocking_at(SocketAddr::from(([127, 0, 0, 1], port)), method, path)
}

/// The same to any address (a pod's, in the root-only tests).
pub fn http_blocking_at(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split(' ').nth(1)?.parse().ok()?;
    Some((
        code,
        buf.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    ))
}

/// The endpoint addresses of `cluster` in a proxy's `/config_dump` (JSON).
pub fn dump_endpoints(d: &serde_json::Value, cluster: &str) -> Vec<String> {
    d["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == cluster)
        .and_then(|c| c["endpoints"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e["address"].as_str().map(str::to_string))
        .collect()
}
