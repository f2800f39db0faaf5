//! Copying bytes both ways between two connections: each direction half-closes on its own
//! (EOF one way never cuts the other), an idle timer closes connections with no traffic,
//! and the drain deadline cuts what is still open. Nothing is allocated per read.
//!
//! Buffers start at 1 KiB and double (up to 1 MiB) only when a read fills them, so idle
//! connections stay cheap while bulk transfers move large chunks per system call. (splice(2)
//! through a pipe was measured too: less CPU, but lower loopback throughput here.)

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::drain;

const INITIAL_BUF: usize = 1024;
const MAX_BUF: usize = 1024 * 1024;

/// Which side to blame for a (read, write) failure in each direction.
const DOWN_TO_UP: (Outcome, Outcome) = (Outcome::DownstreamError, Outcome::UpstreamError);
const UP_TO_DOWN: (Outcome, Outcome) = (Outcome::UpstreamError, Outcome::DownstreamError);

/// How a proxied connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides closed cleanly.
    Closed,
    IdleTimeout,
    /// Still open at the drain deadline.
    DrainDeadline,
    /// Closed because a new policy no longer allows it.
    Revoked,
    DownstreamError,
    UpstreamError,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::DrainDeadline => "drain_deadline",
            Outcome::Revoked => "revoked",
            Outcome::DownstreamError => "downstream_error",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}

/// Byte counts of a finished copy; `rx` came from downstream, `tx` went to it.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    pub rx: u64,
    pub tx: u64,
    pub outcome: Outcome,
}

/// Counters the copy feeds, fetched once per connection: the cluster's
/// (`spoke_tcp_bytes_total`) and the listener's (`spoke_listener_bytes_total`).
pub struct Counters {
    pub rx: IntCounter,
    pub tx: IntCounter,
    pub listener_rx: IntCounter,
    pub listener_tx: IntCounter,
}

impl Counters {
    /// Counts bytes from the client that went upstream outside the copy (a replayed prefix).
    pub fn add_rx(&self, n: u64) {
        self.rx.inc_by(n);
        self.listener_rx.inc_by(n);
    }
}

/// The bookkeeping of one direction: its counter and total, and the shared last-activity
/// clock the idle timer reads.
struct Flow<'a> {
    counter: &'a IntCounter,
    listener: &'a IntCounter,
    total: &'a AtomicU64,
    last: &'a AtomicU64,
    start: Instant,
    /// Outcomes for a failed read and a failed write.
    pub fail: (Outcome, Outcome),
}

impl Flow<'_> {
    /// Records activity; one relaxed store.
    pub fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn moved(&self, n: usize) {
        self.counter.inc_by(n as u64);
        self.listener.inc_by(n as u64);
        self.total.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The shared state of one proxied connection's two directions.
struct Tracker {
    start: Instant,
    /// Milliseconds since `start` of the last byte either way.
    last: AtomicU64,
    rx: AtomicU64,
    tx: AtomicU64,
}

impl Tracker {
    pub fn new() -> Self {
        Tracker {
            start: Instant::now(),
            last: AtomicU64::new(0),
            rx: AtomicU64::new(0),
            tx: AtomicU64::new(0),
        }
    }

    /// The bookkeeping for the downstream->upstream and upstream->downstream directions.
    pub fn flows<'a>(&'a self, counters: &'a Counters) -> (Flow<'a>, Flow<'a>) {
        let flow = |counter, listener, total, fail| Flow {
            counter,
            listener,
            total,
            last: &self.last,
            start: self.start,
            fail,
        };
        (
            flow(&counters.rx, &counters.listener_rx, &self.rx, DOWN_TO_UP),
            flow(&counters.tx, &counters.listener_tx, &self.tx, UP_TO_DOWN),
        )
    }

    /// Runs both directions until both end, one fails, the idle timeout, the drain
    /// deadline, or `revoked` resolves.
    pub async fn run<U, D>(&self, up: U, down: D, idle: Duration, ends: Ends<'_>) -> Copied
    where
        U: Future<Output = Result<(), Outcome>>,
        D: Future<Output = Result<(), Outcome>>,
    {
        let Ends { mut drain, revoked } = ends;
        let both = async { tokio::try_join!(up, down) };
        let outcome = tokio::select! {
            r = both => match r {
                Ok(_) => Outcome::Closed,
                Err(side) => side,
            },
            _ = idle_timer(self.start, &self.last, idle) => Outcome::IdleTimeout,
            _ = drain.closing() => Outcome::DrainDeadline,
            _ = revoked => Outcome::Revoked,
        };
        Copied {
            rx: self.rx.load(Ordering::Relaxed),
            tx: self.tx.load(Ordering::Relaxed),
            outcome,
        }
    }
}

/// What ends a copy from outside: the drain deadline, and a revocation (a future that
/// resolves when a new policy no longer allows the connection).
pub struct Ends<'a> {
    pub drain: drain::Watch,
    pub revoked: std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
}

impl Ends<'_> {
    /// Only the drain ends the copy (outbound connections: no inbound policy applies).
    pub fn drain(drain: drain::Watch) -> Self {
        Ends {
            drain,
            revoked: Box::pin(std::future::pending()),
        }
    }
}

/// Copies downstream <-> upstream for any pair of streams.
pub async fn bidirectional<DR, DW, UR, UW>(
    down_r: DR,
    down_w: DW,
    up_r: UR,
    up_w: UW,
    idle: Duration,
    counters: &Counters,
    ends: Ends<'_>,
) -> Copied
where
    DR: AsyncRead + Unpin,
    DW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let t = Tracker::new();
    let (rx, tx) = t.flows(counters);
    t.run(
        one_way(down_r, up_w, rx),
        one_way(up_r, down_w, tx),
        idle,
        ends,
    )
    .await
}

/// Reads from `r` and writes to `w` until EOF, then half-closes `w`. A read error blames
/// the side read from, a write error the side written to.
async fn one_way<R, W>(mut r: R, mut w: W, flow: Flow<'_>) -> Result<(), Outcome>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (read_fail, write_fail) = flow.fail;
    let mut buf = vec![0u8; INITIAL_BUF];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return Err(read_fail),
        };
        flow.touch();
        // TLS writers buffer records until flushed; for TCP flush is free.
        if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
            return Err(write_fail);
        }
        flow.moved(n);
        if n == buf.len() && buf.len() < MAX_BUF {
            buf.resize(buf.len() * 2, 0);
        }
    }
    let _ = w.shutdown().await;
    Ok(())
}

async fn idle_timer(start: Instant, last: &AtomicU64, idle: Duration) {
    let mut seen = u64::MAX;
    loop {
        let now = last.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
        tokio::time::sleep_until(start + Duration::from_millis(now) + idle).await;
    }
}
