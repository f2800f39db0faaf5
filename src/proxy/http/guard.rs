//! The framing check as an I/O wrapper in front of hyper (see `framer` for the rules). It
//! sees every byte before hyper does: a request head is withheld until it is complete and
//! valid, and a request's head is not released until the bytes of its body that have
//! arrived are valid too, so a refused request never reaches hyper, let alone the upstream.
//! On a violation the guard hands hyper, after the good requests before it, one synthetic
//! request for a secret per-connection path, then EOF; the server answers that request
//! with the refusal (`Verdict`), so the error response is framed and ordered by hyper like
//! any other.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

pub use super::framer::{Framer, Limits, Verdict};

pin_project_lite::pin_project! {
    /// The framing check as an I/O wrapper for hyper.
    pub struct Guard<S> {
        #[pin]
        inner: S,
        framer: Framer,
        refusal: Arc<Refusal>,
        deadline: Option<Pin<Box<Sleep>>>,
        // The synthetic request was queued; after it, only EOF.
        injected: bool,
    }
}

/// A connection's refusal: the verdict, and the secret path of the synthetic request that
/// carries it to the server.
#[derive(Debug)]
pub struct Refusal {
    verdict: Mutex<Option<Verdict>>,
    pub path: String,
    /// The server's answer to an upgrade request the guard holds the connection for.
    upgrade: Mutex<UpgradeWait>,
}

#[derive(Debug, Default)]
struct UpgradeWait {
    switched: Option<bool>,
    waker: Option<Waker>,
}

impl Refusal {
    pub fn verdict(&self) -> Option<Verdict> {
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, v: Verdict) {
        let mut g = self.verdict.lock().unwrap_or_else(|p| p.into_inner());
        g.get_or_insert(v);
    }

    /// Tells the guard how the server answered an upgrade (or CONNECT) request: whether
    /// the connection switched protocols.
    pub fn decide_upgrade(&self, switched: bool) {
        let waker = {
            let mut w = self.upgrade.lock().unwrap_or_else(|p| p.into_inner());
            w.switched = Some(switched);
            w.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The answer, or `None` after registering to be woken when it comes.
    fn upgrade_answer(&self, cx: &Context<'_>) -> Option<bool> {
        let mut w = self.upgrade.lock().unwrap_or_else(|p| p.into_inner());
        let answer = w.switched.take();
        if answer.is_none() {
            w.waker = Some(cx.waker().clone());
        }
        answer
    }

    /// Whether `path` is this connection's synthetic request.
    pub fn is_synthetic(&self, path: &str) -> bool {
        path == self.path && self.verdict().is_some_and(|v| v.clean)
    }
}

impl<S> Guard<S> {
    pub fn new(inner: S, limits: Limits) -> (Self, Arc<Refusal>) {
        let refusal = Arc::new(Refusal {
            verdict: Mutex::new(None),
            path: format!(
                "/.spoke-refused/{:016x}{:016x}",
                fastrand::u64(..),
                fastrand::u64(..)
            ),
            upgrade: Mutex::default(),
        });
        (
            Guard {
                inner,
                framer: Framer::new(limits),
                refusal: refusal.clone(),
                deadline: None,
                injected: false,
            },
            refusal,
        )
    }
}

impl<S: AsyncRead> AsyncRead for Guard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        loop {
            if this.framer.has_ready() {
                let b = this.framer.take(out.remaining());
                out.put_slice(&b);
                return Poll::Ready(Ok(()));
            }
            if let Some(v) = this.refusal.verdict() {
                if v.clean && !*this.injected {
                    *this.injected = true;
                    let req = format!("GET {} HTTP/1.1\r\nhost: spoke\r\n\r\n", this.refusal.path);
                    this.framer.ready.extend_from_slice(req.as_bytes());
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            // After an upgrade request, nothing more is read until the server answered it.
            if this.framer.awaiting_upgrade() {
                match this.refusal.upgrade_answer(cx) {
                    None => return Poll::Pending,
                    Some(switched) => {
                        if let Err(v) = this.framer.resolve_upgrade(switched) {
                            this.refusal.set(v);
                        }
                        continue;
                    }
                }
            }
            // Slowloris: a head that started but did not finish in time.
            if this.framer.in_partial_head() {
                let timeout = this.framer.limits.header_timeout;
                let d = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if d.as_mut().poll(cx).is_ready() {
                    this.refusal.set(Verdict {
                        kind: crate::proxy::ErrorKind::HeaderTimeout,
                        detail: "request head not received in time",
                        clean: true,
                    });
                    continue;
                }
            } else {
                *this.deadline = None;
            }
            // Read everything the socket already holds (up to 64 KiB) before releasing
            // any of it, so a request is checked whole when it arrived whole. The scratch
            // buffer is not zeroed first: that was 16 KiB of memset on every poll,
            // including the one per keep-alive request that finds nothing to read.
            let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
            let mut got_any = false;
            for _ in 0..4 {
                let mut rb = ReadBuf::uninit(&mut tmp);
                match this.inner.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending if got_any => break,
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) if got_any => {
                        tracing::debug!(error = %e, "read failed after data");
                        break;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        if rb.filled().is_empty() {
                            if got_any {
                                break;
                            }
                            return Poll::Ready(Ok(()));
                        }
                        got_any = true;
                        if let Err(v) = this.framer.push(rb.filled()) {
                            this.refusal.set(v);
                            break;
                        }
                    }
                }
            }
        }
    }
}

crate::delegate_async_write!(Guard);
