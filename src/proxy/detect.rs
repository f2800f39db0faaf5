//! Protocol detection: read the first bytes of a connection (bounded by a detect timeout)
//! and decide HTTP/2 (the client preface), HTTP/1 (a request line), TLS (a ClientHello)
//! or opaque TCP. The bytes read are handed back so the chosen handler sees them first
//! (`Prefixed`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];
/// Enough for the longest signature; detection never buffers more.
const MAX_PEEK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tls,
    Tcp,
    /// Nothing decisive arrived within the detect timeout.
    Timeout,
    /// The peer closed before sending anything.
    Closed,
}

impl Detected {
    pub fn as_str(&self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tls => "tls",
            Detected::Tcp => "tcp",
            Detected::Timeout => "tcp_timeout",
            Detected::Closed => "closed",
        }
    }
}

/// Classifies a prefix; `None` means it could still become more than one thing.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return None;
    }
    if crate::tls::looks_like_tls(buf) && buf.len() >= 2 {
        return Some(Detected::Tls);
    }
    if buf == [0x16] {
        return None;
    }
    for m in METHODS {
        if buf.starts_with(m) {
            return Some(Detected::Http1);
        }
        if buf.len() < m.len() && m.starts_with(buf) {
            return None;
        }
    }
    Some(Detected::Tcp)
}

/// Reads until the protocol is known or `wait` passes. Returns the decision and the bytes
/// read, which the caller must replay.
pub async fn detect<S: AsyncRead + Unpin>(io: &mut S, wait: Duration) -> (Detected, Bytes) {
    // One read takes whatever has arrived (usually a whole request), so what follows the
    // decision is checked together with it.
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Err(_) => return (Detected::Timeout, buf.freeze()),
            Ok(Err(_)) | Ok(Ok(0)) => {
                let d = if buf.is_empty() {
                    Detected::Closed
                } else {
                    classify(&buf).unwrap_or(Detected::Tcp)
                };
                return (d, buf.freeze());
            }
            Ok(Ok(_)) => {
                if let Some(d) = classify(&buf) {
                    return (d, buf.freeze());
                }
                if buf.len() >= MAX_PEEK {
                    return (Detected::Tcp, buf.freeze());
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream whose first reads return `prefix`, then the inner stream's bytes.
    pub struct Prefixed<S> {
        prefix: Bytes,
        #[pin]
        inner: S,
    }
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, out)
    }
}

crate::delegate_async_write!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::Http2)
        );
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"PRIX"), Some(Detected::Tcp));
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Detected::Tls));
        assert_eq!(classify(b"\x00\x01binary"), Some(Detected::Tcp));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Detected::Tcp));
        assert_eq!(classify(b"GETX"), Some(Detected::Tcp));
    }

    #[tokio::test]
    async fn detects_and_replays() {
        let (mut a, b) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(b"PO").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.write_all(b"ST /x HTTP/1.1\r\n\r\n").await.unwrap();
        });
        let mut b = b;
        let (d, prefix) = detect(&mut b, Duration::from_secs(2)).await;
        assert_eq!(d, Detected::Http1);
        let mut p = Prefixed::new(prefix, b);
        let mut all = vec![0u8; 20];
        p.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"POST /x HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        let (_a, mut b) = tokio::io::duplex(64);
        let (d, prefix) = detect(&mut b, Duration::from_millis(30)).await;
        assert_eq!(d, Detected::Timeout);
        assert!(prefix.is_empty());
    }
}
