//! Copying bytes both ways between two connections: each direction half-closes on its own
//! (EOF one way never cuts the other), an idle timer closes connections with no traffic,
//! and the drain deadline cuts what is still open. Buffers start small and grow only for
//! busy connections, so idle connections stay cheap; nothing is allocated per read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::drain;

const INITIAL_BUF: usize = 8 * 1024;
const MAX_BUF: usize = 64 * 1024;

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
    DownstreamError,
    UpstreamError,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::DrainDeadline => "drain_deadline",
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

/// Counters the copy feeds, fetched once per connection.
pub struct Counters {
    pub rx: IntCounter,
    pub tx: IntCounter,
}

/// Copies downstream <-> upstream until both directions end, an error, the idle timeout
/// or the drain deadline.
#[allow(clippy::too_many_arguments)]
pub async fn bidirectional<DR, DW, UR, UW>(
    down_r: DR,
    down_w: DW,
    up_r: UR,
    up_w: UW,
    idle: Duration,
    counters: &Counters,
    mut drain: drain::Watch,
) -> Copied
where
    DR: AsyncRead + Unpin,
    DW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds since `start` of the last byte either way; one relaxed store per read.
    let last = AtomicU64::new(0);
    let rx = AtomicU64::new(0);
    let tx = AtomicU64::new(0);
    let up = one_way(down_r, up_w, &counters.rx, &rx, &last, start, DOWN_TO_UP);
    let down = one_way(up_r, down_w, &counters.tx, &tx, &last, start, UP_TO_DOWN);
    let both = async { tokio::try_join!(up, down) };
    let outcome = tokio::select! {
        r = both => match r {
            Ok(_) => Outcome::Closed,
            Err(side) => side,
        },
        _ = idle_timer(start, &last, idle) => Outcome::IdleTimeout,
        _ = drain.closing() => Outcome::DrainDeadline,
    };
    Copied {
        rx: rx.load(Ordering::Relaxed),
        tx: tx.load(Ordering::Relaxed),
        outcome,
    }
}

/// Reads from `r` and writes to `w` until EOF, then half-closes `w`. A read error blames
/// the side read from, a write error the side written to. `total` is shared with the
/// caller so a copy cut short still reports its partial counts.
async fn one_way<R, W>(
    mut r: R,
    mut w: W,
    counter: &IntCounter,
    total: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
    (read_fail, write_fail): (Outcome, Outcome),
) -> Result<(), Outcome>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; INITIAL_BUF];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return Err(read_fail),
        };
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        // TLS writers buffer records until flushed; for TCP flush is free.
        if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
            return Err(write_fail);
        }
        counter.inc_by(n as u64);
        total.fetch_add(n as u64, Ordering::Relaxed);
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
