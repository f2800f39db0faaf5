//! Malformed HTTP against an HTTP listener, end to end on 127.0.0.1: bad request lines,
//! request smuggling shapes (Content-Length / Transfer-Encoding confusion, bad chunk sizes),
//! control bytes in headers, oversized heads, slowloris, pipelining past a bad request,
//! upstreams that hang, reset mid-response or refuse, and HTTP/2 rapid reset and
//! CONTINUATION floods. Every refused request must be answered by the proxy itself and
//! must not put a single byte on the upstream; the proxy keeps serving afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------
// The upstream: a raw TCP listener that records every byte it receives.
// ---------------------------------------------------------------------------------------

/// How the upstream behaves on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// HTTP/1.1 or HTTP/2 (prior knowledge): every request is read whole and answered
    /// `200 ok`.
    Serve,
    /// Accepts, reads, never answers.
    Hang,
    /// Reads one request head, answers `content-length: 1000` with 100 body bytes, then
    /// closes (with `SO_LINGER 0`, a reset, when `linger0`).
    ResetMid { linger0: bool },
}

/// One request the upstream read in full.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Record {
    /// Every byte received, all connections together.
    bytes: Arc<Mutex<Vec<u8>>>,
    conns: Arc<AtomicUsize>,
    /// Request heads seen (counted before the body is read).
    heads: Arc<AtomicUsize>,
    reqs: Arc<Mutex<Vec<Seen>>>,
}

struct Upstream {
    addr: SocketAddr,
    rec: Record,
}

impl Upstream {
    fn n_bytes(&self) -> usize {
        self.rec.bytes.lock().unwrap().len()
    }
    fn bytes(&self) -> Vec<u8> {
        self.rec.bytes.lock().unwrap().clone()
    }
    fn conns(&self) -> usize {
        self.rec.conns.load(Ordering::SeqCst)
    }
    fn heads(&self) -> usize {
        self.rec.heads.load(Ordering::SeqCst)
    }
    fn reqs(&self) -> Vec<Seen> {
        self.rec.reqs.lock().unwrap().clone()
    }
}

/// A TCP stream that appends what it reads to a shared buffer.
struct Rec {
    inner: TcpStream,
    sink: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Rec {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            this.sink
                .lock()
                .unwrap()
                .extend_from_slice(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for Rec {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

async fn upstream(mode: Mode) -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let rec = Record::default();
    let r = rec.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            r.conns.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let mut io = Rec {
                    inner: s,
                    sink: r.bytes.clone(),
                };
                match mode {
                    Mode::Serve => serve_ok(io, r).await,
                    Mode::Hang => {
                        let mut buf = [0u8; 4096];
                        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
                    }
                    Mode::ResetMid { linger0 } => {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match io.read(&mut buf).await {
                                Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                                _ => return,
                            }
                        }
                        r.heads.fetch_add(1, Ordering::SeqCst);
                        let mut resp = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec();
                        resp.extend_from_slice(&[b'x'; 100]);
                        let _ = io.write_all(&resp).await;
                        let _ = io.flush().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if linger0 {
                            let _ =
                                socket2::SockRef::from(&io.inner).set_linger(Some(Duration::ZERO));
                        }
                        drop(io);
                    }
                }
            });
        }
    });
    Upstream { addr, rec }
}

async fn serve_ok(io: Rec, r: Record) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let r = r.clone();
        async move {
            r.heads.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = req.into_parts();
            let (body, trailers) = match body.collect().await {
                Ok(c) => {
                    let t = c
                        .trailers()
                        .map(|t| {
                            t.iter()
                                .map(|(k, v)| {
                                    (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (c.to_bytes().to_vec(), t)
                }
                Err(_) => (Vec::new(), Vec::new()),
            };
            r.reqs.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                body,
                trailers,
            });
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

// ---------------------------------------------------------------------------------------
// The proxy config.
// ---------------------------------------------------------------------------------------

/// One HTTP listener `web` (header_read_timeout 500ms) whose default cluster `app` is
/// `app`, plus `more` clusters and `routes` (each a YAML flow mapping).
fn config(app: SocketAddr, more: &[(&str, SocketAddr)], routes: &[&str]) -> String {
    let mut y = format!(
        "admin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:0 }}\n\
         listeners:\n  - {{ name: web, address: 127.0.0.1:0, protocol: http, cluster: app, header_read_timeout: 500ms }}\n\
         clusters:\n  - {{ name: app, endpoints: [ {{ address: \"{app}\" }} ] }}\n"
    );
    for (name, addr) in more {
        y += &format!("  - {{ name: {name}, endpoints: [ {{ address: \"{addr}\" }} ] }}\n");
    }
    if !routes.is_empty() {
        y += "routes:\n";
        for r in routes {
            y += &format!("  - {r}\n");
        }
    }
    y
}

// ---------------------------------------------------------------------------------------
// A raw HTTP/1 client.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Whether a chunked body holds its terminating zero-size chunk.
fn chunked_complete(mut b: &[u8]) -> bool {
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let line = std::str::from_utf8(&b[..nl]).unwrap_or("");
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(n) = usize::from_str_radix(size, 16) else {
            return false;
        };
        b = &b[nl + 2..];
        if n == 0 {
            return true;
        }
        if b.len() < n + 2 {
            return false;
        }
        b = &b[n + 2..];
    }
}

/// Parses the response at the front of `buf`; returns it and its length, or `None` when
/// it is incomplete (a body without framing is complete only at `eof`).
fn parse_response(buf: &[u8], eof: bool) -> Option<(Resp, usize)> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let status = r.code.unwrap_or(0);
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let rest = &buf[head..];
    let body_len = if let Some(cl) = get("content-length") {
        let cl: usize = cl.trim().parse().ok()?;
        if rest.len() < cl {
            return None;
        }
        cl
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        if !chunked_complete(rest) {
            return None;
        }
        // Not needed precisely by these tests: take everything up to the end marker.
        rest.windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .map(|i| i + 5)
            .unwrap_or(rest.len())
    } else if (100..200).contains(&status) || status == 204 || status == 304 {
        0
    } else if eof {
        rest.len()
    } else {
        return None;
    };
    Some((
        Resp {
            status,
            headers,
            body: rest[..body_len].to_vec(),
        },
        head + body_len,
    ))
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = within(TcpStream::connect(addr)).await.unwrap();
        Client {
            s,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes `b`; a write error (the proxy already closed) is not a failure here.
    async fn send(&mut self, b: &[u8]) {
        let _ = within(self.s.write_all(b)).await;
    }

    async fn fill(&mut self) {
        let mut tmp = [0u8; 16 * 1024];
        match self.s.read(&mut tmp).await {
            Ok(0) | Err(_) => self.eof = true,
            Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
        }
    }

    /// The next response, or `None` when the connection closed first (`within` bounds it).
    async fn response(&mut self) -> Option<Resp> {
        within(async {
            loop {
                if let Some((r, n)) = parse_response(&self.buf, self.eof) {
                    self.buf.drain(..n);
                    return Some(r);
                }
                if self.eof {
                    return None;
                }
                self.fill().await;
            }
        })
        .await
    }

    /// Reads until the peer closes (or resets) within `wait`; returns whether it did, and
    /// what arrived meanwhile (with anything still buffered).
    async fn until_closed(&mut self, wait: Duration) -> (bool, Vec<u8>) {
        let closed = tokio::time::timeout(wait, async {
            while !self.eof {
                self.fill().await;
            }
        })
        .await
        .is_ok();
        (closed, std::mem::take(&mut self.buf))
    }
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.chars().count() > 300 {
        format!(
            "{}...({} bytes)",
            s.chars().take(300).collect::<String>(),
            b.len()
        )
    } else {
        s.into_owned()
    }
}

/// The proxy still answers a plain GET on a new connection with the upstream's `ok`.
async fn assert_serves(addr: SocketAddr) {
    let (code, body) = within(http(addr, "GET", "/")).await;
    assert_eq!((code, body.as_str()), (200, "ok"), "proxy stopped serving");
}

/// Sends `req` alone on a new connection and checks the refusal: `status`, the
/// `x-spoke-error` kind, `connection: close`, the connection closed, and not one byte on
/// the upstream. Returns a description of what went wrong.
async fn refused_check(
    addr: SocketAddr,
    up: &Upstream,
    req: &[u8],
    status: u16,
    kind: Option<&str>,
) -> Result<(), String> {
    let before = up.n_bytes();
    let mut c = Client::connect(addr).await;
    c.send(req).await;
    let (closed, raw) = c.until_closed(Duration::from_secs(3)).await;
    // Anything the proxy forwarded would have landed by now.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let leaked = up.bytes()[before..].to_vec();
    let mut errs = Vec::new();
    if !leaked.is_empty() {
        errs.push(format!(
            "{} bytes reached the upstream: {:?}",
            leaked.len(),
            show(&leaked)
        ));
    }
    if !closed {
        errs.push("connection not closed within 3s".to_string());
    }
    match parse_response(&raw, true) {
        None => errs.push(format!("no response, got {:?}", show(&raw))),
        Some((r, _)) => {
            if r.status != status {
                errs.push(format!("status {} (want {status})", r.status));
            }
            if let Some(k) = kind {
                if r.header("x-spoke-error") != Some(k) {
                    errs.push(format!(
                        "x-spoke-error {:?} (want {k:?})",
                        r.header("x-spoke-error")
                    ));
                }
            }
            if r.header("connection") != Some("close") {
                errs.push(format!(
                    "connection header {:?} (want close)",
                    r.header("connection")
                ));
            }
            if r.body.is_empty() || r.body.iter().filter(|&&b| b == b'\n').count() > 1 {
                errs.push(format!("body is not one line: {:?}", show(&r.body)));
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("{:?}: {}", show(req), errs.join("; ")))
    }
}

/// Runs `refused_check` on every case, then checks the proxy still serves, then fails
/// with every case that went wrong.
async fn all_refused(addr: SocketAddr, up: &Upstream, cases: &[(Vec<u8>, u16, Option<&str>)]) {
    let mut failures = Vec::new();
    for (req, status, kind) in cases {
        if let Err(e) = refused_check(addr, up, req, *status, *kind).await {
            failures.push(e);
        }
    }
    assert_serves(addr).await;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

async fn setup() -> (Upstream, spoke::app::Running, SocketAddr) {
    let up = upstream(Mode::Serve).await;
    let p = proxy(&config(up.addr, &[], &[])).await;
    let addr = p.listener("web").unwrap();
    (up, p, addr)
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

// ---------------------------------------------------------------------------------------
// HTTP/1 framing.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_request_lines_are_400() {
    let (up, _p, addr) = setup().await;
    let bad = Some("bad_request");
    all_refused(
        addr,
        &up,
        &[
            (b("G@T / HTTP/1.1\r\nhost: a\r\n\r\n"), 400, bad),
            (b("GET / HTTP/9.9\r\nhost: a\r\n\r\n"), 400, bad),
            (b("GET / HTTP/1.1 extra\r\nhost: a\r\n\r\n"), 400, bad),
            (b("GET /\0x HTTP/1.1\r\nhost: a\r\n\r\n"), 400, bad),
            (b("GET  / HTTP/1.1\r\nhost: a\r\n\r\n"), 400, bad),
            (b("GET / FTP/1.1\r\nhost: a\r\n\r\n"), 400, bad),
            (b("\x16\x03\x01\x00\x05hello\r\n\r\n"), 400, bad),
        ],
    )
    .await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400() {
    let (up, _p, addr) = setup().await;
    let bad = Some("bad_request");
    all_refused(
        addr,
        &up,
        &[
            (
                b("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
                400,
                bad,
            ),
            (
                b("POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n"),
                400,
                bad,
            ),
            // The classic CL.TE smuggling shape.
            (
                b("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 44\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n"),
                400,
                bad,
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn bad_content_length_is_400() {
    let (up, _p, addr) = setup().await;
    let bad = Some("bad_request");
    let with = |cl: &str| {
        format!("POST / HTTP/1.1\r\nhost: a\r\n{cl}\r\n\r\nhello")
            .as_bytes()
            .to_vec()
    };
    all_refused(
        addr,
        &up,
        &[
            (with("content-length: 5\r\ncontent-length: 5"), 400, bad),
            (with("content-length: 5\r\ncontent-length: 6"), 400, bad),
            (with("Content-Length: 5\r\ncontent-length: 0"), 400, bad),
            (with("content-length: +5"), 400, bad),
            (with("content-length: 5, 5"), 400, bad),
            (with("content-length: abc"), 400, bad),
            (with("content-length: -1"), 400, bad),
            (with("content-length: 0x5"), 400, bad),
            (with("content-length: 5 5"), 400, bad),
            (with("content-length:"), 400, bad),
            (with("content-length: 99999999999999999999"), 400, bad),
        ],
    )
    .await;
}

#[tokio::test]
async fn obfuscated_transfer_encoding_is_400() {
    let (up, _p, addr) = setup().await;
    let bad = Some("bad_request");
    let body = "5\r\nhello\r\n0\r\n\r\n";
    let with = |v: &str, te: &str| {
        format!("POST / HTTP/{v}\r\nhost: a\r\n{te}\r\n\r\n{body}")
            .as_bytes()
            .to_vec()
    };
    all_refused(
        addr,
        &up,
        &[
            (with("1.1", "transfer-encoding: xchunked"), 400, bad),
            (with("1.1", "transfer-encoding: chunkedx"), 400, bad),
            (
                with("1.1", "transfer-encoding: chunked, identity"),
                400,
                bad,
            ),
            (
                with("1.1", "transfer-encoding: identity, chunked"),
                400,
                bad,
            ),
            (with("1.1", "transfer-encoding: identity"), 400, bad),
            (with("1.1", "transfer-encoding: \"chunked\""), 400, bad),
            (with("1.1", "transfer-encoding: chunked\x0b"), 400, bad),
            (with("1.1", "transfer-encoding: chunked\x0c"), 400, bad),
            (with("1.1", "transfer-encoding: chun ked"), 400, bad),
            (with("1.1", "transfer-encoding : chunked"), 400, bad),
            // Not the framing header by RFC, but servers that fold `_` into `-` take it
            // for one.
            (
                with("1.1", "transfer_encoding: chunked\r\ncontent-length: 3"),
                400,
                bad,
            ),
            (
                with("1.1", "transfer-encoding: chunked\r\n , identity"),
                400,
                bad,
            ),
            (
                with(
                    "1.1",
                    "transfer-encoding: chunked\r\ntransfer-encoding: chunked",
                ),
                400,
                bad,
            ),
            (
                with(
                    "1.1",
                    "transfer-encoding: chunked\r\ntransfer-encoding: identity",
                ),
                400,
                bad,
            ),
            (with("1.0", "transfer-encoding: chunked"), 400, bad),
        ],
    )
    .await;
}

/// `chunked` with trailing (or leading) whitespace is `chunked` by RFC 9110 5.5 (OWS is not
/// part of the value), so accepting it is correct as long as the request is then framed
/// as chunked all the way to the upstream. Refusing it (400, nothing upstream) is fine too.
/// What must never happen is a different framing upstream (a smuggled request).
#[tokio::test]
async fn transfer_encoding_with_whitespace_is_chunked_or_refused() {
    let (up, _p, addr) = setup().await;
    let mut failures = Vec::new();
    for te in [
        "transfer-encoding: chunked ",
        "transfer-encoding: chunked\t",
        "transfer-encoding:  chunked",
        "transfer-encoding:\tchunked",
    ] {
        // If the proxy used anything but chunked framing, the body would carry a second
        // request `GET /smuggled`.
        let req = format!(
            "POST /ws HTTP/1.1\r\nhost: a\r\n{te}\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        );
        let heads = up.heads();
        let before = up.n_bytes();
        let mut c = Client::connect(addr).await;
        c.send(req.as_bytes()).await;
        let (_, raw) = c.until_closed(Duration::from_millis(1500)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let first = parse_response(&raw, true).map(|(r, _)| r);
        let reqs: Vec<Seen> = up.reqs().into_iter().skip(heads).collect();
        match first.as_ref().map(|r| r.status) {
            Some(400) => {
                if up.n_bytes() != before {
                    failures.push(format!("{te:?}: refused but bytes reached the upstream"));
                }
            }
            Some(200) => {
                // Chunked: POST /ws with body `hello`, then the pipelined GET /smuggled
                // as a request of its own (it came from the client as one).
                let ok = reqs
                    .first()
                    .is_some_and(|r| r.method == "POST" && r.path == "/ws" && r.body == b"hello")
                    && reqs.iter().skip(1).all(|r| r.body.is_empty());
                if !ok {
                    failures.push(format!("{te:?}: upstream saw {reqs:?}"));
                }
            }
            other => failures.push(format!("{te:?}: got {other:?}: {:?}", show(&raw))),
        }
    }
    assert_serves(addr).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn bad_chunk_sizes_are_400_and_nothing_reaches_upstream() {
    let (up, _p, addr) = setup().await;
    let bad = Some("bad_request");
    // A realistic head (longer than the proxy's 64-byte protocol sniff).
    let head = "POST /upload HTTP/1.1\r\nhost: backend.example\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
    let with = |chunks: &str| format!("{head}{chunks}").as_bytes().to_vec();
    all_refused(
        addr,
        &up,
        &[
            (with("zz\r\nhi\r\n0\r\n\r\n"), 400, bad),
            (with("-1\r\nhi\r\n0\r\n\r\n"), 400, bad),
            (with("5\r\nhelloXX0\r\n\r\n"), 400, bad),
            (with("5\r\nhello0\r\n\r\n"), 400, bad),
            (with("0x5\r\nhello\r\n0\r\n\r\n"), 400, bad),
            (with("5\nhello\r\n0\r\n\r\n"), 400, bad),
            (with("fffffffffffffffff\r\nhello\r\n0\r\n\r\n"), 400, bad),
            (with("\r\nhello\r\n0\r\n\r\n"), 400, bad),
            (with("5\r\nhello\r\n0\r\nbad trailer\r\n\r\n"), 400, bad),
        ],
    )
    .await;
}

/// The same, with a head shorter than 64 bytes: all of it arrives in one write, but the
/// bad chunk lies past byte 64.
#[tokio::test]
async fn bad_chunk_after_a_short_head_in_one_write_never_reaches_upstream() {
    let (up, _p, addr) = setup().await;
    let head = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
    assert_eq!(head.len(), 47);
    // 47 + 4 + 16 = 67: the data is followed by `XX` instead of CRLF at bytes 67-68.
    let req = format!("{head}10\r\n0123456789abcdefXX0\r\n\r\n");
    all_refused(addr, &up, &[(b(&req), 400, Some("bad_request"))]).await;
}

#[tokio::test]
async fn control_bytes_in_header_values_are_400() {
    let (up, _p, addr) = setup().await;
    let bad = Some("bad_request");
    all_refused(
        addr,
        &up,
        &[
            (
                b("GET / HTTP/1.1\r\nhost: a\r\nx-h: a\0b\r\n\r\n"),
                400,
                bad,
            ),
            (
                b("GET / HTTP/1.1\r\nhost: a\r\nx-h: a\rb\r\n\r\n"),
                400,
                bad,
            ),
            (
                b("GET / HTTP/1.1\r\nhost: a\r\nx-h: a\nb\r\n\r\n"),
                400,
                bad,
            ),
            (b("GET / HTTP/1.1\r\nhost: a\0b\r\n\r\n"), 400, bad),
            (b("GET / HTTP/1.1\r\nx-\0h: v\r\nhost: a\r\n\r\n"), 400, bad),
            (
                b("GET / HTTP/1.1\r\nhost: a\r\nx-h: a\x7fb\x01\r\n\r\n"),
                400,
                bad,
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn oversized_heads_are_431_or_414() {
    let (up, _p, addr) = setup().await;
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(65 * 1024)
    );
    let spread: String = (0..80)
        .map(|i| format!("x-h{i}: {}\r\n", "b".repeat(900)))
        .collect();
    all_refused(
        addr,
        &up,
        &[
            (
                b(&format!("GET / HTTP/1.1\r\nhost: a\r\n{many}\r\n")),
                431,
                Some("too_many_headers"),
            ),
            (b(&huge), 431, Some("headers_too_large")),
            (
                b(&format!("GET / HTTP/1.1\r\nhost: a\r\n{spread}\r\n")),
                431,
                Some("headers_too_large"),
            ),
            (
                b(&format!(
                    "GET /{} HTTP/1.1\r\nhost: a\r\n\r\n",
                    "a".repeat(8 * 1024 + 1)
                )),
                414,
                Some("uri_too_long"),
            ),
        ],
    )
    .await;
    // Just under the limits is fine: 100 headers, a 7 KiB request line.
    let ok: String = (0..99).map(|i| format!("x-h{i}: v\r\n")).collect();
    let mut c = Client::connect(addr).await;
    c.send(
        format!(
            "GET /{} HTTP/1.1\r\nhost: a\r\n{ok}\r\n",
            "a".repeat(7 * 1024)
        )
        .as_bytes(),
    )
    .await;
    let r = c.response().await.expect("no response");
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn slowloris_head_gets_408() {
    let (up, _p, addr) = setup().await;
    let mut c = Client::connect(addr).await;
    let start = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n").await;
    let (closed, raw) = c.until_closed(Duration::from_secs(3)).await;
    let took = start.elapsed();
    assert!(closed, "not closed after 3s");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "closed after {took:?}, want ~500ms"
    );
    assert_eq!(up.n_bytes(), 0, "bytes reached the upstream");
    let (r, _) = parse_response(&raw, true)
        .unwrap_or_else(|| panic!("no response before close: {:?}", show(&raw)));
    assert_eq!(r.status, 408);
    assert_eq!(r.header("x-spoke-error"), Some("header_timeout"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_serves(addr).await;
}

/// A head trickled byte by byte still has to finish within `header_read_timeout`.
#[tokio::test]
async fn trickled_head_gets_408() {
    let (up, _p, addr) = setup().await;
    let mut c = Client::connect(addr).await;
    let start = Instant::now();
    let head = b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for &byte in head.iter() {
        if start.elapsed() > Duration::from_secs(2) {
            break;
        }
        if c.s.write_all(&[byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (closed, raw) = c.until_closed(Duration::from_secs(2)).await;
    assert!(closed);
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(up.n_bytes(), 0, "bytes reached the upstream");
    let r = parse_response(&raw, true).map(|(r, _)| r);
    assert_eq!(r.map(|r| r.status), Some(408), "{:?}", show(&raw));
    assert_serves(addr).await;
}

#[tokio::test]
async fn pipelined_bad_request_after_good_one() {
    let (up, _p, addr) = setup().await;
    let good = "GET /good HTTP/1.1\r\nhost: a\r\n\r\n";
    let bad = "POST /bad HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    let mut c = Client::connect(addr).await;
    c.send(format!("{good}{bad}").as_bytes()).await;
    let first = c.response().await;
    let second = c.response().await;
    let (closed, rest) = c.until_closed(Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The upstream saw exactly the good request, once.
    let seen = up.bytes();
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(up.heads(), 1, "upstream saw {text:?}");
    assert!(text.starts_with("GET /good HTTP/1.1\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text:?}");
    assert!(!text.contains("/bad"), "{text:?}");
    let first = first.expect("the good request got no response");
    assert_eq!((first.status, first.body.as_slice()), (200, &b"ok"[..]));
    let second = second.expect("the bad request got no response");
    assert_eq!(second.status, 400);
    assert_eq!(second.header("x-spoke-error"), Some("bad_request"));
    assert_eq!(second.header("connection"), Some("close"));
    assert!(closed, "connection not closed");
    assert!(rest.is_empty(), "extra bytes {:?}", show(&rest));
    assert_serves(addr).await;
}

/// Several good requests pipelined in one write are all answered, in order.
#[tokio::test]
async fn pipelined_good_requests_are_all_answered() {
    let (up, _p, addr) = setup().await;
    let mut c = Client::connect(addr).await;
    let reqs: String = (0..5)
        .map(|i| format!("GET /p{i} HTTP/1.1\r\nhost: a\r\n\r\n"))
        .collect();
    c.send(reqs.as_bytes()).await;
    for i in 0..5 {
        let r = c
            .response()
            .await
            .unwrap_or_else(|| panic!("no response {i}"));
        assert_eq!(r.status, 200);
    }
    let paths: Vec<String> = up.reqs().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/p0", "/p1", "/p2", "/p3", "/p4"]);
}

#[tokio::test]
async fn good_bodies_pass_through_intact() {
    let (up, _p, addr) = setup().await;
    let mut c = Client::connect(addr).await;
    c.send(b"POST /cl HTTP/1.1\r\nhost: a\r\ncontent-length: 11\r\n\r\nhello world")
        .await;
    let r = c.response().await.expect("no response to the CL POST");
    assert_eq!(r.status, 200);
    let raw_cl = up.bytes();
    assert!(
        raw_cl.ends_with(b"\r\n\r\nhello world"),
        "{:?}",
        show(&raw_cl)
    );
    let before = raw_cl.len();
    c.send(
        b"POST /chunked HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n",
    )
    .await;
    let r = c.response().await.expect("no response to the chunked POST");
    assert_eq!(r.status, 200);
    // A larger body in several writes.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    c.send(
        format!(
            "PUT /big HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .await;
    for part in big.chunks(30_000) {
        c.send(part).await;
    }
    let r = c.response().await.expect("no response to the big PUT");
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let reqs = up.reqs();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(
        (
            reqs[0].method.as_str(),
            reqs[0].path.as_str(),
            reqs[0].body.as_slice()
        ),
        ("POST", "/cl", &b"hello world"[..])
    );
    assert_eq!(
        (reqs[1].path.as_str(), reqs[1].body.as_slice()),
        ("/chunked", &b"hello world"[..])
    );
    assert_eq!(
        reqs[1].trailers,
        vec![("x-checksum".to_string(), "abc123".to_string())],
        "trailers lost; upstream got {:?}",
        show(&up.bytes()[before..])
    );
    assert_eq!(reqs[2].path, "/big");
    assert!(reqs[2].body == big, "big body differs");
    // The chunked body arrived chunked, not reframed into something else.
    let raw = up.bytes()[before..].to_vec();
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(text.contains("transfer-encoding: chunked"), "{text:?}");
    assert!(!text[..text.find("\r\n\r\n").unwrap()].contains("content-length"));
}

// ---------------------------------------------------------------------------------------
// Upstream failures.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn hung_upstream_gets_504_after_route_timeout() {
    let up = upstream(Mode::Serve).await;
    let hang = upstream(Mode::Hang).await;
    let p = proxy(&config(
        up.addr,
        &[("slow", hang.addr)],
        &["{ match: { path_prefix: /slow }, cluster: slow, timeout: 300ms }"],
    ))
    .await;
    let addr = p.listener("web").unwrap();
    let mut c = Client::connect(addr).await;
    let start = Instant::now();
    c.send(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let r = c.response().await.expect("no response");
    let took = start.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-spoke-error"), Some("timeout"));
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    assert_eq!(hang.conns(), 1);
    // The connection stays usable after a proxy-made 504.
    c.send(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let r = c.response().await.expect("no response after the 504");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    assert_serves(addr).await;
}

async fn reset_mid_response(linger0: bool) {
    let up = upstream(Mode::Serve).await;
    let bad = upstream(Mode::ResetMid { linger0 }).await;
    let p = proxy(&config(
        up.addr,
        &[("flaky", bad.addr)],
        &["{ match: { path_prefix: /reset }, cluster: flaky, retry: { attempts: 2, on: [reset, 5xx] } }"],
    ))
    .await;
    let addr = p.listener("web").unwrap();
    let mut c = Client::connect(addr).await;
    c.send(b"GET /reset HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (closed, raw) = c.until_closed(Duration::from_secs(3)).await;
    assert!(closed, "connection not closed: {:?}", show(&raw));
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    if let Ok(httparse::Status::Complete(n)) = resp.parse(&raw) {
        let body = &raw[n..];
        let cl = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            });
        let chunked = resp.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("transfer-encoding")
                && String::from_utf8_lossy(h.value).contains("chunked")
        });
        match (cl, chunked) {
            (Some(cl), false) => assert!(
                body.len() < cl,
                "complete-looking response: content-length {cl}, {} body bytes",
                body.len()
            ),
            (None, true) => assert!(
                !chunked_complete(body),
                "chunked response has its final chunk: {:?}",
                show(&raw)
            ),
            // Neither: delimited by close, which looks complete to the client.
            _ => panic!("response without length framing: {:?}", show(&raw)),
        }
        assert_eq!(resp.code, Some(200), "{:?}", show(&raw));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bad.conns(), 1, "the request was retried");
    assert_eq!(bad.heads(), 1, "the request was retried");
    assert_serves(addr).await;
}

#[tokio::test]
async fn upstream_close_mid_response_is_not_complete_and_not_retried() {
    reset_mid_response(false).await;
}

#[tokio::test]
async fn upstream_reset_mid_response_is_not_complete_and_not_retried() {
    reset_mid_response(true).await;
}

#[tokio::test]
async fn refused_upstream_is_502() {
    let up = upstream(Mode::Serve).await;
    let dead = refused().await;
    let p = proxy(&config(
        up.addr,
        &[("dead", dead)],
        &["{ match: { path_prefix: /dead }, cluster: dead }"],
    ))
    .await;
    let addr = p.listener("web").unwrap();
    let mut c = Client::connect(addr).await;
    c.send(b"GET /dead HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let r = c.response().await.expect("no response");
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-spoke-error"), Some("connect_refused"));
    assert!(!r.body.is_empty() && r.body.iter().filter(|&&b| b == b'\n').count() <= 1);
    assert_serves(addr).await;
}

// ---------------------------------------------------------------------------------------
// HTTP/2.
// ---------------------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// `:method GET`, `:scheme http`, `:path /`, `:authority a`.
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x01, b'a'];

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24);
    let mut f = Vec::with_capacity(9 + len);
    f.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[derive(Debug, PartialEq, Eq)]
enum H2End {
    /// GOAWAY with this error code.
    GoAway(u32),
    Closed,
}

/// The next frame: type, flags, stream id, payload; `None` at the end of the connection.
async fn next_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    r.read_exact(&mut h).await.ok()?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    Some((h[3], h[4], stream, payload))
}

/// Reads frames until a GOAWAY or the end of the connection.
async fn read_until_goaway<R: AsyncRead + Unpin>(mut r: R) -> H2End {
    loop {
        match next_frame(&mut r).await {
            None => return H2End::Closed,
            Some((GOAWAY, _, _, payload)) => {
                let code = payload
                    .get(4..8)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(u32::MAX);
                return H2End::GoAway(code);
            }
            Some(_) => {}
        }
    }
}

/// A GET made with the hand-written encoder (its header block split over HEADERS and
/// CONTINUATION when `split`) is answered: the frames below are well formed, so a GOAWAY
/// there is the flood defence and not a framing mistake of this file.
async fn raw_h2_get_is_answered(addr: SocketAddr, split: bool) {
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    if split {
        out.extend(frame(HEADERS, END_STREAM, 1, &GET_BLOCK[..3]));
        out.extend(frame(CONTINUATION, END_HEADERS, 1, &GET_BLOCK[3..]));
    } else {
        out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, GET_BLOCK));
    }
    within(s.write_all(&out)).await.unwrap();
    assert_eq!(
        within(answered_200(&mut s, 1)).await,
        Ok(true),
        "raw h2 GET (split: {split}) not answered 200"
    );
}

/// Reads frames until the response head of `stream`: whether it is `:status 200`, or what
/// ended the connection first (a GOAWAY, or the close).
async fn answered_200<R: AsyncRead + Unpin>(r: &mut R, stream: u32) -> Result<bool, String> {
    loop {
        match next_frame(r).await {
            // `:status 200` is index 8 of the static table.
            Some((HEADERS, _, id, block)) if id == stream => {
                return Ok(block.first() == Some(&0x88))
            }
            Some((GOAWAY, _, _, p)) => return Err(format!("GOAWAY {p:?}")),
            Some(_) => {}
            None => return Err("closed".to_string()),
        }
    }
}

/// The proxy still serves HTTP/2 and HTTP/1 after an attack.
async fn assert_serves_h2(addr: SocketAddr) {
    let s = within(TcpStream::connect(addr)).await.unwrap();
    let (mut send, conn) = within(hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(s),
    ))
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://a/")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = within(send.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = within(resp.into_body().collect()).await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    assert_serves(addr).await;
}

/// `spoke_http2_goaway_sent_total` of listener `web`, summed over reasons, or for one.
async fn goaways_sent(p: &spoke::app::Running, reason: Option<&str>) -> f64 {
    let (_, text) = within(http(p.stats, "GET", "/metrics")).await;
    let want = reason.map(|r| format!("reason=\"{r}\""));
    text.lines()
        .filter(|l| l.starts_with("spoke_http2_goaway_sent_total{"))
        .filter(|l| l.contains("listener=\"web\""))
        .filter(|l| want.as_ref().is_none_or(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `goaways_sent` once it reads `want` (the connection's task counts it when it ends, a
/// moment after the GOAWAY went out), or what it reads after 3 s.
async fn goaways_reach(p: &spoke::app::Running, reason: Option<&str>, want: f64) -> f64 {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let n = goaways_sent(p, reason).await;
        if n == want || Instant::now() > until {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection's opening frames, then `n` GET streams each followed by its RST_STREAM
/// (CANCEL), all in one buffer.
fn opened_and_reset(n: u32) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..n {
        let id = 2 * i + 1;
        out.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, GET_BLOCK));
        out.extend(frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
    }
    out
}

/// Streams opened and reset in one write by the flood test: beyond the 1,000 a peer may
/// have reset before they are accepted.
const FLOOD: u32 = 5000;

#[tokio::test]
async fn h2_rapid_reset_is_cut_off() {
    let (up, p, addr) = setup().await;
    assert_serves_h2(addr).await;
    raw_h2_get_is_answered(addr, false).await;
    assert_eq!(goaways_sent(&p, None).await, 0.0);
    let heads_before = up.heads();
    let s = within(TcpStream::connect(addr)).await.unwrap();
    let (r, mut w) = s.into_split();
    let reader = tokio::spawn(read_until_goaway(r));
    let out = opened_and_reset(FLOOD);
    let start = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(2), w.write_all(&out)).await;
    let end = tokio::time::timeout(Duration::from_secs(3), reader)
        .await
        .expect("no GOAWAY or close within 3s of a rapid reset flood")
        .unwrap();
    println!("rapid reset: {end:?} after {:?}", start.elapsed());
    assert!(matches!(end, H2End::GoAway(_) | H2End::Closed), "{end:?}");
    // Let anything in flight land upstream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reached = up.heads() - heads_before;
    println!("rapid reset: {reached} of {FLOOD} reset requests reached the upstream");
    assert!(
        reached < FLOOD as usize,
        "{reached} requests reached the upstream"
    );
    drop(w);
    assert_serves_h2(addr).await;
    // The defence is a decision the proxy made about the peer: counted, by error code.
    if let H2End::GoAway(code) = end {
        let n = goaways_reach(&p, Some("enhance_your_calm"), 1.0).await;
        assert_eq!(n, 1.0, "GOAWAY {code} not counted");
    }
}

/// A peer that cancels every stream it has open (as a sidecar does when its client goes
/// away) is not a rapid-reset flood: the connection, shared with other clients' requests,
/// keeps serving.
#[tokio::test]
async fn h2_cancelling_all_open_streams_keeps_the_connection() {
    let (_up, p, addr) = setup().await;
    // The flood defence's series exists from start, at 0, for alerts to watch.
    let (_, text) = within(http(p.stats, "GET", "/metrics")).await;
    let labels = ["listener=\"web\"", "reason=\"enhance_your_calm\""];
    assert_eq!(
        metric(&text, "spoke_http2_goaway_sent_total", &labels),
        Some(0.0)
    );
    let s = within(TcpStream::connect(addr)).await.unwrap();
    let (mut r, mut w) = s.into_split();
    // A sidecar's h2 client when its downstream client goes away: 300 streams (its 100 in
    // flight and the ones it had queued for a free slot) opened and cancelled in one write,
    // every reset arriving before the stream is accepted.
    let mut out = opened_and_reset(300);
    // Then one request that is not cancelled, on the same connection.
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 601, GET_BLOCK));
    within(w.write_all(&out)).await.unwrap();
    let answer = within(answered_200(&mut r, 601)).await;
    assert_eq!(answer, Ok(true), "the request after 300 cancelled ones");
    drop(w);
    assert_eq!(goaways_sent(&p, None).await, 0.0);
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let (up, p, addr) = setup().await;
    raw_h2_get_is_answered(addr, true).await;
    let heads_before = up.heads();
    let rss_before = vm_rss_kib();
    let s = within(TcpStream::connect(addr)).await.unwrap();
    let (r, mut w) = s.into_split();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let reader = tokio::spawn(async move {
        let end = read_until_goaway(r).await;
        d.store(true, Ordering::SeqCst);
        end
    });
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // HEADERS without END_HEADERS: the block goes on in CONTINUATION frames.
    out.extend(frame(HEADERS, END_STREAM, 1, GET_BLOCK));
    within(w.write_all(&out)).await.unwrap();
    // Literal header fields with incremental indexing, new names (0x40, name, value),
    // whole fields only, so every frame is a well-formed fragment (~16 KiB).
    let mut hpack = Vec::with_capacity(16 * 1024);
    for i in 0u32.. {
        let name = format!("x-flood-{i:06}");
        if hpack.len() + 3 + name.len() + 100 > 16 * 1024 {
            break;
        }
        hpack.push(0x40);
        hpack.push(name.len() as u8);
        hpack.extend_from_slice(name.as_bytes());
        hpack.push(100);
        hpack.extend_from_slice(&[b'v'; 100]);
    }
    let cont = frame(CONTINUATION, 0, 1, &hpack);
    const CAP: usize = 8 * 1024 * 1024;
    let start = Instant::now();
    let mut sent = 0usize;
    let mut stopped_by = "cap";
    while sent < CAP {
        if done.load(Ordering::SeqCst) {
            stopped_by = "goaway/close";
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), w.write_all(&cont)).await {
            Ok(Ok(())) => sent += cont.len(),
            Ok(Err(_)) => {
                stopped_by = "write error";
                break;
            }
            Err(_) => {
                stopped_by = "write stalled";
                break;
            }
        }
    }
    let end = tokio::time::timeout(Duration::from_secs(3), reader)
        .await
        .expect("no GOAWAY or close within 3s of a CONTINUATION flood")
        .unwrap();
    let rss_after = vm_rss_kib();
    println!(
        "continuation flood: {end:?}, stopped by {stopped_by} after {} KiB in {:?}; RSS {} -> {} KiB",
        sent / 1024,
        start.elapsed(),
        rss_before,
        rss_after
    );
    assert!(matches!(end, H2End::GoAway(_) | H2End::Closed), "{end:?}");
    assert_ne!(
        end,
        H2End::GoAway(1),
        "PROTOCOL_ERROR: the flood's frames are malformed (a bug in this test)"
    );
    assert!(
        stopped_by != "cap" && stopped_by != "write stalled",
        "the proxy kept the flood going: stopped by {stopped_by} after {} KiB",
        sent / 1024
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(
        up.heads(),
        heads_before,
        "the flooded request reached the upstream"
    );
    if let H2End::GoAway(code) = end {
        assert_eq!(
            goaways_reach(&p, None, 1.0).await,
            1.0,
            "GOAWAY {code} not counted"
        );
    }
    drop(w);
    assert_serves_h2(addr).await;
}
