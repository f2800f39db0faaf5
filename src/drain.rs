//! Graceful shutdown. A drain moves through three phases: running, draining (stop
//! accepting; `/ready` says 503; open connections go on) and closing (the drain deadline
//! passed; connections still open are cut). Every connection holds a `Guard`, so the
//! drainer knows when the last one has finished.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Draining,
    Closing,
}

/// `level` once every sender is gone: the watch is closed and every wait ends.
const CLOSED: u8 = u8::MAX;

/// The sending side, shared by the drain and its triggers. `level` mirrors the phase so that
/// a connection can see "not yet" with one atomic load (see [`Reached`]).
struct Tx {
    phase: watch::Sender<Phase>,
    level: Arc<AtomicU8>,
}

impl Tx {
    /// Moves the drain on to `to` unless it is there already.
    fn advance(&self, to: Phase) {
        // Before the send: a connection woken by it must find the level raised.
        self.level.fetch_max(to as u8, Ordering::Release);
        self.phase.send_if_modified(|p| {
            let changed = *p < to;
            if changed {
                *p = to;
            }
            changed
        });
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // Runs before the sender closes the watch and wakes the waiters.
        self.level.store(CLOSED, Ordering::Release);
    }
}

/// Owns the drain: starts it and waits for it.
pub struct Drain {
    tx: Arc<Tx>,
    guards: Option<mpsc::Sender<()>>,
    done: mpsc::Receiver<()>,
}

/// Observes the drain from listeners and connections; holds the connection guard source.
#[derive(Clone)]
pub struct Watch {
    phase: watch::Receiver<Phase>,
    level: Arc<AtomicU8>,
    guards: mpsc::Sender<()>,
}

/// Held by each open connection; the drain is complete when none is left.
#[derive(Clone)]
pub struct Guard {
    _tx: mpsc::Sender<()>,
}

// === impl Drain ===

impl Drain {
    pub fn new() -> (Drain, Watch) {
        let (phase, rx) = watch::channel(Phase::Running);
        let level = Arc::new(AtomicU8::new(Phase::Running as u8));
        let (tx, done) = mpsc::channel(1);
        let watch = Watch {
            phase: rx,
            level: level.clone(),
            guards: tx.clone(),
        };
        (
            Drain {
                tx: Arc::new(Tx { phase, level }),
                guards: Some(tx),
                done,
            },
            watch,
        )
    }

    /// A handle that can start the drain from elsewhere (admin `POST /drain`, signals).
    pub fn trigger(&self) -> Trigger {
        Trigger {
            tx: self.tx.clone(),
        }
    }

    /// Waits until something starts the drain.
    pub async fn requested(&self) {
        let mut rx = self.tx.phase.subscribe();
        let _ = rx.wait_for(|p| *p >= Phase::Draining).await;
    }

    /// Runs the drain to its end: stop accepting, wait up to `timeout` for connections to
    /// finish, then cut the rest. Returns how many were still open at the deadline
    /// (0 means a clean drain).
    pub async fn run(mut self, timeout: Duration) -> bool {
        self.tx.advance(Phase::Draining);
        drop(self.guards.take());
        // recv() yields None once every Guard and Watch is gone: all connections closed
        // and all accept loops stopped.
        let clean = tokio::time::timeout(timeout, self.done.recv())
            .await
            .is_ok();
        if !clean {
            self.tx.advance(Phase::Closing);
            // Connections see Closing and end; give them a moment to unwind.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.done.recv()).await;
        }
        clean
    }
}

/// Starts a drain; cheap to clone.
#[derive(Clone)]
pub struct Trigger {
    tx: Arc<Tx>,
}

impl Trigger {
    pub fn start(&self) {
        self.tx.advance(Phase::Draining);
    }

    pub fn is_draining(&self) -> bool {
        *self.tx.phase.borrow() >= Phase::Draining
    }
}

// === impl Watch ===

impl Watch {
    /// Resolves when the drain starts (listeners stop accepting).
    pub fn draining(&mut self) -> Reached<'_, impl Future<Output = ()> + '_> {
        self.reached(Phase::Draining)
    }

    /// Resolves when the drain deadline passes (open connections must close now).
    pub fn closing(&mut self) -> Reached<'_, impl Future<Output = ()> + '_> {
        self.reached(Phase::Closing)
    }

    fn reached(&mut self, at: Phase) -> Reached<'_, impl Future<Output = ()> + '_> {
        let Watch { phase, level, .. } = self;
        Reached {
            inner: async move {
                let _ = phase.wait_for(|p| *p >= at).await;
            },
            level,
            at,
            registered: None,
        }
    }

    pub fn guard(&self) -> Guard {
        Guard {
            _tx: self.guards.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Resolves when the drain reaches `at` (or the drain is gone). It is polled beside a
    /// connection on every wake-up of that connection's task, twice a request: once this
    /// task's waker is registered with the watch, a poll that finds `level` where it was
    /// at the last look at the watch only loads it (polling the watch took about 600
    /// instructions a request: its lock, version check and `Notified` bookkeeping). Any
    /// change of level is looked at, so the watch is re-armed after each phase it passes.
    pub struct Reached<'a, F> {
        #[pin]
        inner: F,
        level: &'a AtomicU8,
        at: Phase,
        registered: Option<(Waker, u8)>,
    }
}

impl<F: Future<Output = ()>> Future for Reached<'_, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // Read before the watch is: a change after this read is looked at next time.
        let level = this.level.load(Ordering::Acquire);
        if this
            .registered
            .as_ref()
            .is_some_and(|(w, seen)| *seen == level && w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        match this.inner.poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                *this.registered = Some((cx.waker().clone(), level));
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_guards_then_cuts_at_deadline() {
        let (drain, watch) = Drain::new();
        let g = watch.guard();
        let mut w2 = watch.clone();
        drop(watch);
        let held = tokio::spawn(async move {
            w2.closing().await;
            drop(g);
        });
        let clean = drain.run(Duration::from_millis(50)).await;
        assert!(!clean);
        held.await.unwrap();
    }

    #[tokio::test]
    async fn waiters_see_each_phase_and_the_end_of_the_drain() {
        let (drain, watch) = Drain::new();
        let trigger = drain.trigger();
        let mut w = watch.clone();
        let waiting = tokio::spawn(async move {
            w.draining().await;
            w.closing().await;
        });
        // Polled and parked on the watch, then woken by the start.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        trigger.start();
        assert!(trigger.is_draining());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "closing resolved while only draining"
        );
        // The drain's deadline passes with the guard of `watch` still held: Closing.
        let g = watch.guard();
        let run = tokio::spawn(drain.run(Duration::from_millis(30)));
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("closing seen")
            .unwrap();
        drop((g, watch));
        assert!(!run.await.unwrap());
        // A drain dropped without running ends every wait too.
        let (drain, watch) = Drain::new();
        let mut w = watch.clone();
        let waiting = tokio::spawn(async move { w.draining().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(drain);
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("a closed watch ends the wait")
            .unwrap();
    }

    #[tokio::test]
    async fn a_wait_for_closing_outlives_the_draining_phase() {
        // One future across both changes (a TCP copy waits like this): the wake-up for
        // Draining must re-arm the watch, or Closing is never seen.
        let (drain, watch) = Drain::new();
        let mut w = watch.clone();
        let waiting = tokio::spawn(async move { w.closing().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drain.trigger().start();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        let g = watch.guard();
        let run = tokio::spawn(drain.run(Duration::from_millis(30)));
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("closing seen after draining")
            .unwrap();
        drop((g, watch));
        assert!(!run.await.unwrap());
    }

    #[tokio::test]
    async fn clean_when_nothing_open() {
        let (drain, watch) = Drain::new();
        drop(watch);
        assert!(drain.run(Duration::from_secs(5)).await);
    }
}
