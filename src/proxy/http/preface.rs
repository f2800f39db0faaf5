//! Whether a local app speaks HTTP/2, learnt before any request is sent to it: an HTTP/2
//! server opens with a SETTINGS frame as soon as it has the client's preface, while an
//! HTTP/1-only app answers the preface with an HTTP/1 error (or closes). Watching the first
//! bytes the app sends tells the two apart without risking a request, so a refusal can be
//! answered by sending the request over HTTP/1.1 instead (`app_protocol: auto`) or by a
//! clear `upstream_protocol` error (`app_protocol: http2`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// The type of an HTTP/2 SETTINGS frame (RFC 9113, 6.5).
const SETTINGS: u8 = 0x4;
/// A frame header's length (24 bits) and type come first.
const HEAD: usize = 4;

/// An I/O stream that reports once whether the peer's first bytes open an HTTP/2
/// connection (`true`) or not (`false`, also when the peer closes or fails first).
pub struct PrefaceWatch<T> {
    inner: T,
    tell: Option<oneshot::Sender<bool>>,
    head: [u8; HEAD],
    seen: usize,
}

/// Wraps `io`; the receiver learns the verdict (dropped unanswered if the connection
/// ends before the peer sent anything).
pub fn watch<T>(io: T) -> (PrefaceWatch<T>, oneshot::Receiver<bool>) {
    let (tx, rx) = oneshot::channel();
    let w = PrefaceWatch {
        inner: io,
        tell: Some(tx),
        head: [0; HEAD],
        seen: 0,
    };
    (w, rx)
}

impl<T> PrefaceWatch<T> {
    fn verdict(&mut self, h2: bool) {
        if let Some(tx) = self.tell.take() {
            let _ = tx.send(h2);
        }
    }

    fn observe(&mut self, bytes: &[u8]) {
        if self.tell.is_none() {
            return;
        }
        if bytes.is_empty() {
            return self.verdict(false);
        }
        let take = (HEAD - self.seen).min(bytes.len());
        self.head[self.seen..self.seen + take].copy_from_slice(&bytes[..take]);
        self.seen += take;
        if self.seen == HEAD {
            let h2 = self.head[3] == SETTINGS;
            self.verdict(h2);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefaceWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = ready!(Pin::new(&mut this.inner).poll_read(cx, buf));
        match &r {
            Ok(()) => this.observe(&buf.filled()[before..]),
            Err(_) => this.verdict(false),
        }
        Poll::Ready(r)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefaceWatch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn verdict_for(peer_sends: &'static [&'static [u8]]) -> Option<bool> {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut w, rx) = watch(a);
        tokio::spawn(async move {
            for chunk in peer_sends {
                b.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut buf = [0u8; 64];
        while let Ok(n) = w.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        rx.await.ok()
    }

    #[tokio::test]
    async fn settings_first_is_http2() {
        // An empty SETTINGS frame, split across reads.
        assert_eq!(
            verdict_for(&[b"\0\0", b"\0\x04\0\0\0\0\0"]).await,
            Some(true)
        );
    }

    #[tokio::test]
    async fn an_http1_answer_is_not() {
        assert_eq!(
            verdict_for(&[b"HTTP/1.1 400 Bad Request\r\n\r\n"]).await,
            Some(false)
        );
    }

    #[tokio::test]
    async fn closing_first_is_not() {
        assert_eq!(verdict_for(&[]).await, Some(false));
    }
}
