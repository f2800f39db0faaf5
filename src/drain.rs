//! Graceful shutdown. A drain moves through three phases: running, draining (stop
//! accepting; `/ready` says 503; open connections go on) and closing (the drain deadline
//! passed; connections still open are cut). Every connection holds a `Guard`, so the
//! drainer knows when the last one has finished.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Draining,
    Closing,
}

/// Owns the drain: starts it and waits for it.
pub struct Drain {
    phase: watch::Sender<Phase>,
    guards: Option<mpsc::Sender<()>>,
    done: mpsc::Receiver<()>,
}

/// Observes the drain from listeners and connections; holds the connection guard source.
#[derive(Clone)]
pub struct Watch {
    phase: watch::Receiver<Phase>,
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
        let (tx, done) = mpsc::channel(1);
        let watch = Watch {
            phase: rx,
            guards: tx.clone(),
        };
        (
            Drain {
                phase,
                guards: Some(tx),
                done,
            },
            watch,
        )
    }

    /// A handle that can start the drain from elsewhere (admin `POST /drain`, signals).
    pub fn trigger(&self) -> Trigger {
        Trigger {
            phase: self.phase.clone(),
        }
    }

    /// Waits until something starts the drain.
    pub async fn requested(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p >= Phase::Draining).await;
    }

    /// Runs the drain to its end: stop accepting, wait up to `timeout` for connections to
    /// finish, then cut the rest. Returns how many were still open at the deadline
    /// (0 means a clean drain).
    pub async fn run(mut self, timeout: Duration) -> bool {
        self.phase.send_if_modified(|p| {
            let changed = *p == Phase::Running;
            if changed {
                *p = Phase::Draining;
            }
            changed
        });
        drop(self.guards.take());
        // recv() yields None once every Guard and Watch is gone: all connections closed
        // and all accept loops stopped.
        let clean = tokio::time::timeout(timeout, self.done.recv())
            .await
            .is_ok();
        if !clean {
            self.phase.send_replace(Phase::Closing);
            // Connections see Closing and end; give them a moment to unwind.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.done.recv()).await;
        }
        clean
    }
}

/// Starts a drain; cheap to clone.
#[derive(Clone)]
pub struct Trigger {
    phase: watch::Sender<Phase>,
}

impl Trigger {
    pub fn start(&self) {
        self.phase.send_if_modified(|p| {
            let changed = *p == Phase::Running;
            if changed {
                *p = Phase::Draining;
            }
            changed
        });
    }

    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining
    }
}

// === impl Watch ===

impl Watch {
    /// Resolves when the drain starts (listeners stop accepting).
    pub async fn draining(&mut self) {
        let _ = self.phase.wait_for(|p| *p >= Phase::Draining).await;
    }

    /// Resolves when the drain deadline passes (open connections must close now).
    pub async fn closing(&mut self) {
        let _ = self.phase.wait_for(|p| *p >= Phase::Closing).await;
    }

    pub fn guard(&self) -> Guard {
        Guard {
            _tx: self.guards.clone(),
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
    async fn clean_when_nothing_open() {
        let (drain, watch) = Drain::new();
        drop(watch);
        assert!(drain.run(Duration::from_secs(5)).await);
    }
}
