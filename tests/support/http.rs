//! HTTP test parts: an upstream app (hyper, HTTP/1.1 and HTTP/2 on one port) whose paths
//! script its behaviour, and a client that speaks HTTP/1.1 or HTTP/2 prior knowledge.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// What the app saw, shared with the test.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    pub flaky_left: AtomicUsize,
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> AppBody {
    Full::new(s.into()).boxed()
}

async fn app(
    id: &'static str,
    seen: Arc<Seen>,
    mut req: Request<Incoming>,
) -> Result<Response<AppBody>, Infallible> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let mut resp = if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        let mut r = Response::new(full(format!("status {code} from {id}\n")));
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        r
    } else if path.starts_with("/flaky") {
        let left = seen.flaky_left.load(Ordering::SeqCst);
        if left > 0 {
            seen.flaky_left.fetch_sub(1, Ordering::SeqCst);
            let mut r = Response::new(full("flaky failure\n"));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        } else {
            Response::new(full(format!("ok from {id}\n")))
        }
    } else if path == "/stall" {
        // One chunk, then silence: the stream never ends.
        Response::new(Stall(Some(Bytes::from_static(b"first chunk"))).boxed())
    } else if path == "/hang" {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Response::new(full(""))
    } else if path == "/grpc" {
        // A gRPC-shaped response: data, then trailers with grpc-status.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "fine".parse().unwrap());
        let frames = Frames(
            vec![
                Frame::data(Bytes::from_static(b"\x00\x00\x00\x00\x02hi")),
                Frame::trailers(trailers),
            ]
            .into(),
        );
        let mut r = Response::new(frames.boxed());
        r.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        r
    } else if path == "/grpc-unavailable" {
        let left = seen.flaky_left.load(Ordering::SeqCst);
        let mut r = Response::new(full(""));
        r.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        if left > 0 {
            seen.flaky_left.fetch_sub(1, Ordering::SeqCst);
            r.headers_mut().insert("grpc-status", "14".parse().unwrap());
        } else {
            r.headers_mut().insert("grpc-status", "0".parse().unwrap());
        }
        r
    } else if path == "/ws" {
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(u) = up.await {
                let mut io = TokioIo::new(u);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r
    } else {
        let version = format!("{:?}", req.version());
        let method = req.method().to_string();
        let host = h("host");
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or("-".into());
        let peer = h("x-spoke-peer-id");
        let orig = h("x-spoke-orig-proto");
        let te = h("te");
        let conn = h("connection");
        let custom = h("x-custom");
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Response::new(full(format!(
            "server: {id}\nversion: {version}\nmethod: {method}\npath: {path}\nhost: {host}\nauthority: {authority}\npeer-id: {peer}\norig-proto: {orig}\nte: {te}\nconnection: {conn}\nx-custom: {custom}\nbody-len: {}\n",
            body.len()
        )))
    };
    resp.headers_mut().insert("x-server", id.parse().unwrap());
    Ok(resp)
}

/// A body that yields one chunk and then never another.
pub struct Stall(pub Option<Bytes>);

impl hyper::body::Body for Stall {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// A body made of the given frames (data and trailers), for gRPC-shaped responses.
pub struct Frames(pub std::collections::VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// Which HTTP versions a scripted app speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    Both,
    /// An HTTP/1-only app: it answers the HTTP/2 preface with an HTTP/1 error.
    Http1,
    /// An h2c-only app (HTTP/2 prior knowledge, as gRPC servers are).
    Http2,
}

/// Starts the scripted app on 127.0.0.1:0; it speaks HTTP/1.1 and HTTP/2 (prior knowledge).
pub async fn start_app(id: &'static str) -> (SocketAddr, Arc<Seen>) {
    start_app_speaking(id, Speaks::Both).await
}

/// Starts the scripted app on 127.0.0.1:0 speaking only what `speaks` says.
pub async fn start_app_speaking(id: &'static str, speaks: Speaks) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| app(id, seen.clone(), req));
                let io = TokioIo::new(sock);
                let _ = match speaks {
                    Speaks::Both => {
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(io, svc)
                            .await
                    }
                    Speaks::Http1 => hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await
                        .map_err(Into::into),
                    Speaks::Http2 => hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await
                        .map_err(Into::into),
                };
            });
        }
    });
    (addr, seen)
}

/// A collected response: status, headers, body and trailers.
pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub trailers: Option<HeaderMap>,
}

impl Got {
    /// A `key: value` line of the app's echo body.
    pub fn field(&self, key: &str) -> String {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or("")
            .to_string()
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

type ReqBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A client connection to `addr`, HTTP/1.1 or HTTP/2 (prior knowledge).
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

impl Client {
    pub async fn connect(addr: SocketAddr, h2: bool) -> Client {
        Client::over(TcpStream::connect(addr).await.unwrap(), h2).await
    }

    /// A client on an already open stream (a TLS stream, say).
    pub async fn over<S>(io: S, h2: bool) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if h2 {
            let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(c);
            Client::H2(s)
        } else {
            let (s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(c.with_upgrades());
            Client::H1(s)
        }
    }

    /// Sends a request; `Err` when the exchange broke (including mid-body).
    pub async fn send(&mut self, req: Request<ReqBody>) -> Result<Got, String> {
        let resp = match self {
            Client::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Client::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.map_err(|e| format!("body: {e}"))?;
        let trailers = collected.trailers().cloned();
        Ok(Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&collected.to_bytes()).to_string(),
            trailers,
        })
    }

    pub async fn get(&mut self, uri: &str) -> Result<Got, String> {
        self.send(req("GET", uri, &[], "")).await
    }
}

/// Builds a request; for HTTP/2 give an absolute URI (`http://host/path`).
pub fn req(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<ReqBody> {
    let mut b = Request::builder().method(method).uri(uri);
    let absolute = uri.starts_with("http://");
    if !absolute {
        b = b.header("host", "backend");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

/// Reads one response head from a raw stream, lowercased.
pub async fn read_head(s: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        super::within(s.read_exact(&mut b)).await.unwrap();
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

/// Opens a raw connection to `addr` and asks for a WebSocket upgrade of `/ws`; returns the
/// stream and the response head.
pub async fn websocket(addr: SocketAddr, host: &str) -> (TcpStream, String) {
    use tokio::io::AsyncWriteExt;
    let mut s = super::within(TcpStream::connect(addr)).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nhost: {host}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}
