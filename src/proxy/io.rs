//! The connection types the proxy copies between (plain TCP, or TLS either side) and the
//! splice that joins two of them. Plain-to-plain uses the direct, lock-free halves; any
//! TLS side goes through boxed halves (one allocation per connection, none per read).

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::copy::{self, Copied, Counters};
use crate::drain;

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
    drain: drain::Watch,
) -> Copied {
    match (down, up) {
        (Io::Plain(mut d), Io::Plain(mut u)) => {
            let (dr, dw) = d.split();
            let (ur, uw) = u.split();
            copy::bidirectional(dr, dw, ur, uw, idle, counters, drain).await
        }
        (down, up) => {
            let (dr, dw) = boxed_halves(down);
            let (ur, uw) = boxed_halves(up);
            copy::bidirectional(dr, dw, ur, uw, idle, counters, drain).await
        }
    }
}
