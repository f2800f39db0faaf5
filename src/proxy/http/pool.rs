//! Upstream HTTP connections, pooled per endpoint: one multiplexed HTTP/2 connection per
//! (endpoint, identity), or a set of HTTP/1.1 keep-alive connections. Between two sidecars
//! the connection is HTTP/2 over mTLS (ALPN `h2`), so many requests share one handshake.
//! The pool lives beside the snapshots, so a config swap does not drop warm connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;

use super::preface;
use crate::config::{EndpointAddr, Identity};
use crate::metrics::Metrics;
use crate::proxy::connect::{self, Alpn, DialCtx};
use crate::proxy::io::Io;
use crate::proxy::ProxyError;
use crate::tls::CertStore;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the proxy builds.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_H1: usize = 64;

/// What a pooled connection is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub addr: SocketAddr,
    /// Meshed: mTLS, and the server must be this identity.
    pub tls: Option<Identity>,
    pub h2: bool,
    /// A local app that may not speak HTTP/2: a new HTTP/2 connection is used only after
    /// the app answered the preface with SETTINGS (see `preface`).
    pub probe: bool,
}

/// Why a request did not get a response.
#[derive(Debug)]
pub enum SendError {
    /// No connection: the request was never sent (always safe to retry) and comes back.
    Connect(ProxyError, Box<Request<Body>>),
    /// The connection failed; `unsent` holds the request when hyper never wrote it.
    /// `reused`: the connection had carried requests before (a keep-alive connection the
    /// server may have closed just as this one was written).
    Http {
        error: hyper::Error,
        unsent: Option<Box<Request<Body>>>,
        reused: bool,
        /// The HTTP/2 connection it failed on (0 for HTTP/1.1), for `evict`.
        conn: u64,
    },
}

/// Looked up twice a request: foldhash, not SipHash (keys are endpoints and identities from
/// the config, so there is no flooding to resist), about 450 instructions a lookup less.
type PoolMap<V> = HashMap<Key, V, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Pool {
    /// One HTTP/2 connection per key, with an id so that a request failing on an old
    /// connection never evicts the fresh one that replaced it.
    h2: Mutex<PoolMap<(u64, http2::SendRequest<Body>)>>,
    /// Keys an HTTP/2 connection is being dialed for; the watch closes when that dial ends
    /// (made, failed or given up), which wakes the requests waiting for it.
    h2_dialing: Mutex<PoolMap<watch::Receiver<()>>>,
    next_id: std::sync::atomic::AtomicU64,
    h1: Mutex<PoolMap<Vec<http1::SendRequest<Body>>>>,
}

/// The dial in flight for a key: ending it (done, failed or its request gone) takes the
/// key out of `h2_dialing` and closes the watch its waiters hold.
struct Dialing<'a> {
    pool: &'a Pool,
    key: &'a Key,
    _tx: watch::Sender<()>,
}

impl Drop for Dialing<'_> {
    fn drop(&mut self) {
        lock(&self.pool.h2_dialing).remove(self.key);
    }
}

/// A failed `try_send_request`, keeping the request when hyper never wrote it.
fn send_error(
    mut e: hyper::client::conn::TrySendError<Request<Body>>,
    reused: bool,
    conn: u64,
) -> SendError {
    let unsent = e.take_message().map(Box::new);
    SendError::Http {
        error: e.into_error(),
        unsent,
        reused,
        conn,
    }
}

/// A failed HTTP handshake on a fresh connection: a connect failure of that endpoint.
fn handshake_error(key: &Key, e: hyper::Error) -> ProxyError {
    ProxyError::ConnectFailed {
        endpoint: key.addr.to_string(),
        source: std::io::Error::other(e),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Settings for one connect.
pub struct Dial<'a> {
    pub timeout: Duration,
    pub tls: Option<&'a CertStore>,
    pub metrics: &'a Metrics,
}

impl Pool {
    /// Sends `req` over a pooled (or new) connection for `key`. Returns the response and,
    /// for meshed connections, the server's verified identity.
    pub async fn send(
        &self,
        key: &Key,
        req: Request<Body>,
        dial: &Dial<'_>,
    ) -> Result<Response<Incoming>, SendError> {
        if key.h2 {
            self.send_h2(key, req, dial).await
        } else {
            self.send_h1(key, req, dial).await
        }
    }

    // A new connection's dial and handshake are boxed where they are awaited: inline,
    // their state (about 1.7 KiB, TLS included) would be part of every request's future,
    // which the runtime moves a few times per request, though almost every request finds
    // a pooled connection.
    async fn send_h2(
        &self,
        key: &Key,
        req: Request<Body>,
        dial: &Dial<'_>,
    ) -> Result<Response<Incoming>, SendError> {
        let (id, mut sender) = match self.pooled_h2(key) {
            Some(p) => p,
            None => match Box::pin(self.dial_h2(key, dial)).await {
                Ok(p) => p,
                Err(e) => return Err(SendError::Connect(e, Box::new(req))),
            },
        };
        if let Err(error) = sender.ready().await {
            self.evict(key, id);
            return Err(SendError::Http {
                error,
                unsent: Some(Box::new(req)),
                reused: true,
                conn: id,
            });
        }
        let result = sender.try_send_request(req).await;
        if result.is_err() && sender.is_closed() {
            self.evict(key, id);
        }
        result.map_err(|e| send_error(e, true, id))
    }

    fn pooled_h2(&self, key: &Key) -> Option<(u64, http2::SendRequest<Body>)> {
        lock(&self.h2)
            .get(key)
            .filter(|(_, s)| !s.is_closed())
            .cloned()
    }

    /// A new HTTP/2 connection for `key`, dialed once however many requests need it at the
    /// same moment: the first dials, the others wait for that dial and share what it made.
    /// Without this, a burst of requests finding no connection (the first ones, or the
    /// first after a quiet spell let the pooled one go) made one mTLS handshake each, of
    /// which all but one connection carried a single request. If the dial they waited for
    /// failed or was given up, each waiter dials on its own, as before.
    async fn dial_h2(
        &self,
        key: &Key,
        dial: &Dial<'_>,
    ) -> Result<(u64, http2::SendRequest<Body>), ProxyError> {
        let joined = {
            let mut dialing = lock(&self.h2_dialing);
            match dialing.get(key) {
                Some(rx) => Ok(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(());
                    dialing.insert(key.clone(), rx);
                    Err(tx)
                }
            }
        };
        match joined {
            Ok(mut rx) => {
                // Ends when the leader's dial does (its sender is dropped).
                let _ = rx.changed().await;
                if let Some(p) = self.pooled_h2(key) {
                    return Ok(p);
                }
                self.connect_and_pool_h2(key, dial).await
            }
            Err(tx) => {
                let _leader = Dialing {
                    pool: self,
                    key,
                    _tx: tx,
                };
                self.connect_and_pool_h2(key, dial).await
            }
        }
    }

    async fn connect_and_pool_h2(
        &self,
        key: &Key,
        dial: &Dial<'_>,
    ) -> Result<(u64, http2::SendRequest<Body>), ProxyError> {
        let s = connect_h2(key, dial).await?;
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        lock(&self.h2).insert(key.clone(), (id, s.clone()));
        Ok((id, s))
    }

    async fn send_h1(
        &self,
        key: &Key,
        req: Request<Body>,
        dial: &Dial<'_>,
    ) -> Result<Response<Incoming>, SendError> {
        let pooled = {
            let mut map = lock(&self.h1);
            // Looked up by reference: the key is cloned (and hashed twice) only for a new entry.
            map.get_mut(key).and_then(|list| {
                list.retain(|s| !s.is_closed());
                list.iter()
                    .position(|s| s.is_ready())
                    .map(|i| list.swap_remove(i))
            })
        };
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(s) => s,
            None => match Box::pin(connect_h1(key, dial)).await {
                Ok(s) => s,
                Err(e) => return Err(SendError::Connect(e, Box::new(req))),
            },
        };
        let result = sender.try_send_request(req).await;
        // Busy until its response body is read; `is_ready` tells when it can be reused.
        if !sender.is_closed() {
            let mut map = lock(&self.h1);
            match map.get_mut(key) {
                Some(list) if list.len() < MAX_IDLE_H1 => list.push(sender),
                Some(_) => {}
                None => {
                    map.insert(key.clone(), vec![sender]);
                }
            }
        }
        result.map_err(|e| send_error(e, reused, 0))
    }

    /// Stops new requests from using HTTP/2 connection `conn` for `key` (it sent GOAWAY
    /// or refused a stream): the next one dials afresh. A connection that already
    /// replaced it stays.
    pub fn evict(&self, key: &Key, conn: u64) {
        let mut map = lock(&self.h2);
        if map.get(key).is_some_and(|(id, _)| *id == conn) {
            map.remove(key);
        }
    }

    /// Lets go of every pooled connection (when the proxy has turned quiet, `rest`): idle
    /// HTTP/1.1 connections close now, HTTP/2 connections once their open streams end. An
    /// HTTP/2 connection keeps the stream table it grew to at its busiest, on both sides,
    /// for as long as it lives; the next request dials afresh. Returns how many were let go
    /// (HTTP/2, HTTP/1.1).
    pub fn release(&self) -> (usize, usize) {
        let h2 = std::mem::take(&mut *lock(&self.h2)).len();
        let h1 = std::mem::take(&mut *lock(&self.h1))
            .into_values()
            .map(|l| l.len())
            .sum();
        (h2, h1)
    }

    /// A fresh HTTP/1.1 connection for one upgraded request (WebSocket and the like).
    pub async fn send_upgrade(
        &self,
        key: &Key,
        req: Request<Body>,
        dial: &Dial<'_>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = match Box::pin(connect_h1(key, dial)).await {
            Ok(s) => s,
            Err(e) => return Err(SendError::Connect(e, Box::new(req))),
        };
        sender
            .try_send_request(req)
            .await
            .map_err(|e| send_error(e, false, 0))
    }
}

/// TCP (and mTLS for meshed keys) through the one dial path.
async fn dial_io(key: &Key, dial: &Dial<'_>, h2: bool) -> Result<Io, ProxyError> {
    let ctx = DialCtx {
        timeout: dial.timeout,
        identity: key.tls.as_ref(),
        alpn: if h2 { Alpn::Http2 } else { Alpn::Http1 },
        certs: dial.tls,
        metrics: dial.metrics,
    };
    Ok(connect::dial(&EndpointAddr::Ip(key.addr), &ctx).await?.io)
}

async fn connect_h2(key: &Key, dial: &Dial<'_>) -> Result<http2::SendRequest<Body>, ProxyError> {
    let io = dial_io(key, dial, true).await?;
    if !key.probe {
        return handshake_h2(key, io).await;
    }
    let (io, seen) = preface::watch(io);
    let sender = handshake_h2(key, io).await?;
    let reason = match tokio::time::timeout(dial.timeout, seen).await {
        Ok(Ok(true)) => return Ok(sender),
        Ok(Ok(false)) => "answered the HTTP/2 preface with something else",
        Ok(Err(_)) => "closed the connection on the HTTP/2 preface",
        Err(_) => "did not answer the HTTP/2 preface within the connect timeout",
    };
    Err(ProxyError::Http2Refused {
        endpoint: key.addr.to_string(),
        reason,
    })
}

async fn handshake_h2<T>(key: &Key, io: T) -> Result<http2::SendRequest<Body>, ProxyError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024)
        .adaptive_window(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| handshake_error(key, e))?;
    let addr = key.addr;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(endpoint = %addr, error = %e, "upstream h2 connection ended");
        }
    });
    Ok(sender)
}

async fn connect_h1(key: &Key, dial: &Dial<'_>) -> Result<http1::SendRequest<Body>, ProxyError> {
    let io = dial_io(key, dial, false).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| handshake_error(key, e))?;
    let addr = key.addr;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(endpoint = %addr, error = %e, "upstream h1 connection ended");
        }
    });
    Ok(sender)
}
