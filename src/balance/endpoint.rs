//! The runtime state of one endpoint, kept beside the snapshots so it survives config
//! pushes: requests in flight, a peak-EWMA of latency, consecutive failures, ejection
//! (outlier detection) and active health. All atomics: read on every pick, written on
//! every outcome, never locked.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::config::{EndpointAddr, OutlierDetection};

/// How fast the latency estimate forgets: the weight of a sample decays with this time
/// constant (linkerd uses the same 10 s).
const EWMA_DECAY_MS: f64 = 10_000.0;

/// What one attempt did, for the balancer and the outlier detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, with a status below 500 (or a completed TCP connect).
    Success,
    /// Answered 5xx other than 502/503/504.
    Error5xx,
    /// 502/503/504, a connect failure, a reset or a timeout: the endpoint itself failed.
    GatewayError,
}

#[derive(Debug)]
pub struct EndpointState {
    pub address: EndpointAddr,
    active: AtomicU32,
    ewma_ns: AtomicU64,
    ewma_at_ms: AtomicU64,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Milliseconds (see `now_ms`) until which the endpoint is ejected; 0: in service.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    /// Returned from an ejection and not yet proven: the next failure ejects again.
    probation: AtomicBool,
    /// Failed its active health checks.
    unhealthy: AtomicBool,
    /// Active health check streak: successes (> 0) or failures (< 0) in a row.
    hc_streak: std::sync::atomic::AtomicI32,
    hc_next_ms: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
}

/// A request in flight to an endpoint; counts for `least_request` until dropped.
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// What `EndpointState::record` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Over a threshold: eject (if the cluster's ejection limit allows) for this long.
    Eject(Duration),
}

impl EndpointState {
    pub fn new(address: EndpointAddr) -> Self {
        EndpointState {
            address,
            active: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(0),
            ewma_at_ms: AtomicU64::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            probation: AtomicBool::new(false),
            unhealthy: AtomicBool::new(false),
            hc_streak: Default::default(),
            hc_next_ms: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    pub fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    /// The latency estimate in nanoseconds (0 before the first sample).
    pub fn ewma_ns(&self) -> u64 {
        self.ewma_ns.load(Relaxed)
    }

    /// `least_request`'s cost at `now`: the latency estimate, decayed for the time since
    /// its last sample (so an endpoint that got no traffic because it was slow is tried
    /// again), times requests in flight plus one.
    pub fn cost(&self, now: u64) -> u64 {
        let ewma = self.ewma_ns();
        let idle = now.saturating_sub(self.ewma_at_ms.load(Relaxed)) as f64;
        let decayed = if ewma == 0 || idle <= 0.0 {
            ewma
        } else {
            (ewma as f64 * (-idle / EWMA_DECAY_MS).exp()) as u64
        };
        (decayed + 1).saturating_mul(u64::from(self.active()) + 1)
    }

    /// Whether it may take traffic at `now` (not ejected, not failing health checks).
    pub fn in_service(&self, now: u64) -> bool {
        !self.unhealthy.load(Relaxed) && self.ejected_until.load(Relaxed) <= now
    }

    pub fn is_unhealthy(&self) -> bool {
        self.unhealthy.load(Relaxed)
    }

    /// Ejected at `now`: the milliseconds left.
    pub fn ejected_for(&self, now: u64) -> Option<u64> {
        let until = self.ejected_until.load(Relaxed);
        (until > now).then(|| until - now)
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Relaxed)
    }

    pub fn counts(&self) -> (u64, u64) {
        (self.successes.load(Relaxed), self.failures.load(Relaxed))
    }

    /// Folds in one response latency: a slower sample is taken at once (peak), a faster
    /// one blends in by how long ago the last sample was.
    pub fn observe_latency(&self, latency: Duration, now: u64) {
        let sample = latency.as_nanos().min(u128::from(u64::MAX)) as u64;
        let prev = self.ewma_ns.load(Relaxed);
        let last = self.ewma_at_ms.swap(now, Relaxed);
        let next = if prev == 0 || sample >= prev {
            sample
        } else {
            let elapsed = now.saturating_sub(last) as f64;
            let w = (-elapsed / EWMA_DECAY_MS).exp();
            (prev as f64 * w + sample as f64 * (1.0 - w)) as u64
        };
        // Racing updates may lose one sample, which an estimate can afford.
        self.ewma_ns.store(next.max(1), Relaxed);
    }

    /// Records an outcome and decides, by `od`'s thresholds, whether to eject.
    pub fn record(&self, outcome: Outcome, od: &OutlierDetection) -> Verdict {
        if outcome == Outcome::Success {
            self.successes.fetch_add(1, Relaxed);
            self.consecutive_5xx.store(0, Relaxed);
            self.consecutive_gateway.store(0, Relaxed);
            if self.probation.swap(false, Relaxed) {
                // Proven again: the next ejection starts from the base time again.
                self.times_ejected.store(0, Relaxed);
            }
            return Verdict::Keep;
        }
        self.failures.fetch_add(1, Relaxed);
        let any = self.consecutive_5xx.fetch_add(1, Relaxed) + 1;
        let gw = if outcome == Outcome::GatewayError {
            self.consecutive_gateway.fetch_add(1, Relaxed) + 1
        } else {
            0
        };
        let over = |n: u32, limit: u32| limit > 0 && n >= limit;
        let on_probation = self.probation.load(Relaxed)
            && (od.consecutive_5xx > 0 || outcome == Outcome::GatewayError);
        if on_probation || over(any, od.consecutive_5xx) || over(gw, od.consecutive_gateway_errors)
        {
            let times = self.times_ejected.load(Relaxed) + 1;
            let d = od.base_ejection.saturating_mul(times).min(od.max_ejection);
            return Verdict::Eject(d);
        }
        Verdict::Keep
    }

    /// Takes the endpoint out of service until `now + d`. `false` if it already was.
    pub fn eject(&self, now: u64, d: Duration) -> bool {
        let until = now + d.as_millis() as u64;
        let prev = self.ejected_until.load(Relaxed);
        if prev > now {
            return false;
        }
        if self
            .ejected_until
            .compare_exchange(prev, until, Relaxed, Relaxed)
            .is_err()
        {
            return false;
        }
        self.times_ejected.fetch_add(1, Relaxed);
        self.consecutive_5xx.store(0, Relaxed);
        self.consecutive_gateway.store(0, Relaxed);
        self.probation.store(true, Relaxed);
        true
    }

    /// Claims the health check due at `now` (one prober wins) and schedules the next one
    /// `every_ms` later.
    pub fn claim_check(&self, now: u64, every_ms: u64) -> bool {
        let next = self.hc_next_ms.load(Relaxed);
        next <= now
            && self
                .hc_next_ms
                .compare_exchange(next, now + every_ms, Relaxed, Relaxed)
                .is_ok()
    }

    /// Folds in one health check; returns the new state (`true`: healthy) when the
    /// thresholds changed it.
    pub fn check_result(
        &self,
        passed: bool,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Option<bool> {
        let step = |s: i32| {
            Some(match (passed, s) {
                (true, s) if s > 0 => s.saturating_add(1),
                (true, _) => 1,
                (false, s) if s < 0 => s.saturating_sub(1),
                (false, _) => -1,
            })
        };
        let prev = self
            .hc_streak
            .fetch_update(Relaxed, Relaxed, step)
            .unwrap_or(0);
        let streak = step(prev).unwrap_or(0);
        let unhealthy = self.unhealthy.load(Relaxed);
        if passed && unhealthy && streak >= healthy_after as i32 {
            self.unhealthy.store(false, Relaxed);
            return Some(true);
        }
        if !passed && !unhealthy && -streak >= unhealthy_after as i32 {
            self.unhealthy.store(true, Relaxed);
            return Some(false);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> EndpointState {
        EndpointState::new(EndpointAddr::Ip(([127, 0, 0, 1], 1).into()))
    }

    #[test]
    fn gateway_errors_eject_and_backoff_grows() {
        let od = OutlierDetection::default();
        let e = ep();
        for _ in 0..4 {
            assert_eq!(e.record(Outcome::GatewayError, &od), Verdict::Keep);
        }
        // 5xx other than gateway errors do not count by default.
        assert_eq!(e.record(Outcome::Error5xx, &od), Verdict::Keep);
        let Verdict::Eject(d) = e.record(Outcome::GatewayError, &od) else {
            panic!("not ejected")
        };
        assert_eq!(d, od.base_ejection);
        assert!(e.eject(1000, d));
        assert!(!e.in_service(1000 + 29_999));
        assert!(e.in_service(1000 + 30_000));
        // Back on probation: one more failure ejects again, for twice as long.
        assert_eq!(
            e.record(Outcome::GatewayError, &od),
            Verdict::Eject(od.base_ejection * 2)
        );
        // A success clears the probation and the count.
        let e = ep();
        assert!(e.eject(0, Duration::from_millis(1)));
        e.record(Outcome::Success, &od);
        assert_eq!(e.times_ejected(), 0);
        assert_eq!(e.record(Outcome::GatewayError, &od), Verdict::Keep);
    }

    #[test]
    fn consecutive_5xx_counts_every_failure_when_set() {
        let od = OutlierDetection {
            consecutive_5xx: 3,
            ..Default::default()
        };
        let e = ep();
        e.record(Outcome::Error5xx, &od);
        e.record(Outcome::GatewayError, &od);
        assert!(matches!(
            e.record(Outcome::Error5xx, &od),
            Verdict::Eject(_)
        ));
        let capped = OutlierDetection {
            max_ejection: Duration::from_secs(45),
            ..od
        };
        let e = ep();
        for _ in 0..3 {
            assert!(e.eject(0, Duration::ZERO));
        }
        assert_eq!(
            e.record(Outcome::GatewayError, &capped),
            Verdict::Eject(Duration::from_secs(45))
        );
    }

    #[test]
    fn peak_ewma() {
        let e = ep();
        e.observe_latency(Duration::from_millis(10), 0);
        assert_eq!(e.ewma_ns(), 10_000_000);
        // A slow sample is taken at once.
        e.observe_latency(Duration::from_millis(50), 10);
        assert_eq!(e.ewma_ns(), 50_000_000);
        // Fast ones pull it down over time.
        e.observe_latency(Duration::from_millis(10), 10_010);
        let v = e.ewma_ns();
        assert!(v < 30_000_000 && v > 10_000_000, "{v}");
        let _g = std::sync::Arc::new(ep()).start();
    }

    #[test]
    fn health_thresholds() {
        let e = ep();
        assert_eq!(e.check_result(false, 2, 3), None);
        assert_eq!(e.check_result(false, 2, 3), None);
        assert_eq!(e.check_result(false, 2, 3), Some(false));
        assert!(!e.in_service(1));
        assert_eq!(e.check_result(false, 2, 3), None);
        assert_eq!(e.check_result(true, 2, 3), None);
        assert_eq!(e.check_result(true, 2, 3), Some(true));
        assert!(e.in_service(1));
        assert!(e.claim_check(10, 100));
        assert!(!e.claim_check(50, 100));
        assert!(e.claim_check(110, 100));
    }
}
