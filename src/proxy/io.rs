//! The connection types the proxy copies between (plain TCP, or TLS either side) and the
//! splice that joins two of them. Plain-to-plain uses the direct, lock-free halves; any
//! TLS side goes through boxed halves (one allocation per connection, none per read).

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::copy::{self, Copied, Counters, Ends};

pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;
pub type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// One side of a proxied connection.
pub enum Io {
    Plain(TcpStream),
    Client(Box<ClientTls>),
    Server(Box<ServerTls>),
}

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

fn boxed_halves(io: Io) -> (ReadHalf, WriteHalf) {
    match io {
        Io::Plain(s) => {
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
        Io::Client(s) => {
            let (r, w) = tokio::io::split(*s);
            (Box::new(r), Box::new(w))
        }
        Io::Server(s) => {
            let (r, w) = tokio::io::split(*s);
            (Box::new(r), Box::new(w))
        }
    }
}

/// Copies both ways between `down` and `up` (see `copy::bidirectional`).
pub async fn splice(
    down: Io,
    up: Io,
    idle: std::time::Duration,
    counters: &Counters,
    ends: Ends<'_>,
) -> Copied {
    match (down, up) {
        (Io::Plain(mut d), Io::Plain(mut u)) => {
            let (dr, dw) = d.split();
            let (ur, uw) = u.split();
            copy::bidirectional(dr, dw, ur, uw, idle, counters, ends).await
        }
        (down, up) => {
            let (dr, dw) = boxed_halves(down);
            let (ur, uw) = boxed_halves(up);
            copy::bidirectional(dr, dw, ur, uw, idle, counters, ends).await
        }
    }
}

/// Implements `AsyncWrite` for a pin-projected wrapper by passing every call to its
/// `inner` field (the readers differ; the writers never do).
#[macro_export]
macro_rules! delegate_async_write {
    ($ty:ident) => {
        impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for $ty<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.project().inner.poll_write(cx, buf)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.project().inner.poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.project().inner.poll_shutdown(cx)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.project().inner.poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            Io::Client($s) => {
                let $s = std::pin::Pin::new($s.as_mut());
                $e
            }
            Io::Server($s) => {
                let $s = std::pin::Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Client(s) => s.is_write_vectored(),
            Io::Server(s) => s.is_write_vectored(),
        }
    }
}

impl Io {
    /// The ALPN protocol the TLS handshake settled on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Io::Plain(_) => None,
            Io::Client(s) => s.get_ref().1.alpn_protocol(),
            Io::Server(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}
