//! Retry decisions: which failures a route's policy retries, the retry budget that keeps a
//! failing service from being hammered, and exponential backoff with jitter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{RetryOn, RetryPolicy};

/// Why an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Never reached the upstream (refused, timed out, TLS failure): the request was not sent.
    Connect,
    /// HTTP/2 REFUSED_STREAM: the upstream did not process it.
    RefusedStream,
    /// The connection broke after the request was sent, before a response.
    Reset,
    /// The per-try timeout passed.
    Timeout,
    Status(u16),
    Grpc(u8),
}

impl Failure {
    /// The `reason` label of `spoke_retries_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Connect => "connect_failure",
            Failure::RefusedStream => "refused_stream",
            Failure::Reset => "reset",
            Failure::Timeout => "per_try_timeout",
            Failure::Status(_) => "status",
            Failure::Grpc(_) => "grpc",
        }
    }

    /// Whether the request may have been processed upstream (so replaying needs care).
    pub fn maybe_processed(&self) -> bool {
        !matches!(self, Failure::Connect | Failure::RefusedStream)
    }
}

/// Whether `policy` covers `failure`.
pub fn covers(policy: &RetryPolicy, failure: Failure) -> bool {
    policy.on.iter().any(|on| match (on, failure) {
        (RetryOn::ConnectFailure, Failure::Connect) => true,
        (RetryOn::RefusedStream, Failure::RefusedStream) => true,
        (RetryOn::Reset, Failure::Reset) => true,
        (RetryOn::Any5xx, Failure::Status(s)) => (500..=599).contains(&s),
        (RetryOn::Any5xx, Failure::Timeout | Failure::Reset | Failure::Connect) => true,
        (RetryOn::Status(want), Failure::Status(s)) => *want == s,
        (RetryOn::Status(504), Failure::Timeout) => true,
        (RetryOn::Grpc(want), Failure::Grpc(c)) => *want == c,
        _ => false,
    })
}

pub fn is_idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// Retries always allowed per second, whatever the ratio says, so a quiet service can
/// still retry its rare failures.
pub const BUDGET_FLOOR_PER_SEC: u64 = 5;
const WINDOW: usize = 10;

/// Requests and retries over the last 10 seconds, in one-second buckets.
#[derive(Debug)]
pub struct Budget {
    start: Instant,
    buckets: [[AtomicU64; 3]; WINDOW],
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            start: Instant::now(),
            buckets: Default::default(),
        }
    }
}

impl Budget {
    fn bucket(&self) -> &[AtomicU64; 3] {
        let sec = self.start.elapsed().as_secs() + 1;
        let b = &self.buckets[(sec as usize) % WINDOW];
        // [0] = which second the bucket holds; a stale bucket is cleared first. Racing
        // resets can lose a count or two, which a budget can afford.
        if b[0].swap(sec, Ordering::Relaxed) != sec {
            b[1].store(0, Ordering::Relaxed);
            b[2].store(0, Ordering::Relaxed);
        }
        b
    }

    pub fn request(&self) {
        self.bucket()[1].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if `percent` of recent requests (plus the floor)
    /// allows it.
    pub fn try_retry(&self, percent: u32) -> bool {
        let now = self.start.elapsed().as_secs() + 1;
        let (mut reqs, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let sec = b[0].load(Ordering::Relaxed);
            if sec + (WINDOW as u64) > now {
                reqs += b[1].load(Ordering::Relaxed);
                retries += b[2].load(Ordering::Relaxed);
            }
        }
        let allowed = reqs * u64::from(percent) / 100 + BUDGET_FLOOR_PER_SEC * WINDOW as u64;
        if retries >= allowed {
            return false;
        }
        self.bucket()[2].fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Backoff before retry `n` (1-based): base * 2^(n-1), jittered to 50-150%, at most 10 s.
pub fn backoff(base: Duration, n: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << (n.saturating_sub(1)).min(10));
    let jitter = 0.5 + fastrand::f64();
    exp.mul_f64(jitter).min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[RetryOn]) -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            on: on.to_vec(),
            budget_percent: 20,
            backoff: Duration::from_millis(25),
            non_idempotent: false,
        }
    }

    #[test]
    fn conditions() {
        let p = policy(&[
            RetryOn::Status(503),
            RetryOn::ConnectFailure,
            RetryOn::Grpc(14),
        ]);
        assert!(covers(&p, Failure::Status(503)));
        assert!(!covers(&p, Failure::Status(500)));
        assert!(covers(&p, Failure::Connect));
        assert!(!covers(&p, Failure::Reset));
        assert!(covers(&p, Failure::Grpc(14)));
        let p = policy(&[RetryOn::Any5xx]);
        assert!(covers(&p, Failure::Status(502)) && covers(&p, Failure::Timeout));
        assert!(!covers(&p, Failure::Status(429)));
    }

    #[test]
    fn budget_limits_retries_to_a_share_of_requests() {
        let b = Budget::default();
        for _ in 0..1000 {
            b.request();
        }
        let granted = (0..1000).filter(|_| b.try_retry(20)).count() as u64;
        assert_eq!(granted, 200 + BUDGET_FLOOR_PER_SEC * 10);
    }

    #[test]
    fn backoff_grows_and_jitters() {
        for n in 1..5 {
            let d = backoff(Duration::from_millis(100), n);
            let base = 100u64 << (n - 1);
            assert!(
                d >= Duration::from_millis(base / 2) && d <= Duration::from_millis(base * 3 / 2),
                "{n}: {d:?}"
            );
        }
    }
}
