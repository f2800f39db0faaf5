//! Balancers with seeded randomness: weights honoured, smooth round robin, least-request
//! steering away from load, bounded ring-hash remapping, failover between priority levels
//! and panic mode.

use super::*;
use crate::config::{EndpointAddr, OutlierDetection};
use std::time::Duration;

struct Fixture {
    plan: Plan,
    eps: Vec<Arc<EndpointState>>,
    rt: ClusterRuntime,
}

fn endpoints(spec: &[(u32, u32)]) -> Vec<Endpoint> {
    spec.iter()
        .enumerate()
        .map(|(i, (w, p))| Endpoint {
            address: EndpointAddr::Ip(([10, 0, 0, 1], 1000 + i as u16).into()),
            weight: *w,
            priority: *p,
        })
        .collect()
}

fn fixture(lb: Lb, spec: &[(u32, u32)]) -> Fixture {
    let cfg = endpoints(spec);
    Fixture {
        plan: Plan::new(lb, &cfg),
        eps: cfg
            .iter()
            .map(|e| Arc::new(EndpointState::new(e.address.clone())))
            .collect(),
        rt: ClusterRuntime::default(),
    }
}

impl Fixture {
    fn pick(&self, rng: &mut fastrand::Rng, key: Option<u64>, tried: &[usize]) -> Option<Picked> {
        self.plan.pick(&self.eps, &self.rt, key, tried, 1_000, rng)
    }

    fn counts(&self, n: usize, seed: u64) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut c = vec![0; self.eps.len()];
        for _ in 0..n {
            c[self.pick(&mut rng, None, &[]).unwrap().index] += 1;
        }
        c
    }

    fn eject(&self, i: usize) {
        assert!(self.eps[i].eject(1_000, Duration::from_secs(30)));
    }
}

fn near(got: usize, want: f64, tolerance: f64) -> bool {
    (got as f64 - want).abs() <= want * tolerance
}

#[test]
fn round_robin_is_smooth_and_exact() {
    let f = fixture(Lb::RoundRobin, &[(5, 0), (1, 0), (1, 0)]);
    let mut rng = fastrand::Rng::with_seed(1);
    let seq: Vec<usize> = (0..7)
        .map(|_| f.pick(&mut rng, None, &[]).unwrap().index)
        .collect();
    assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    assert_eq!(f.counts(700, 1), [500, 100, 100]);
    // A retry skips what was tried and does not move the cursor.
    let a = f.pick(&mut rng, None, &[]).unwrap().index;
    let b = f.pick(&mut rng, None, &[a]).unwrap().index;
    assert_ne!(a, b);
    assert_eq!(f.pick(&mut rng, None, &[0, 1, 2]), None);
}

#[test]
fn random_follows_weights() {
    let f = fixture(Lb::Random, &[(1, 0), (3, 0)]);
    let c = f.counts(40_000, 7);
    assert!(
        near(c[0], 10_000.0, 0.05) && near(c[1], 30_000.0, 0.05),
        "{c:?}"
    );
}

#[test]
fn least_request_follows_weights_when_idle_and_avoids_load() {
    let f = fixture(Lb::LeastRequest, &[(1, 0), (1, 0), (2, 0)]);
    let c = f.counts(40_000, 3);
    assert!(
        near(c[0], 10_000.0, 0.1) && near(c[2], 20_000.0, 0.1),
        "{c:?}"
    );
    // Endpoint 0 is slow and busy: it wins only when drawn against itself... never.
    for e in &f.eps {
        e.observe_latency(Duration::from_millis(1), 1);
    }
    f.eps[0].observe_latency(Duration::from_millis(50), 2);
    let _busy: Vec<_> = (0..10).map(|_| f.eps[0].start()).collect();
    let c = f.counts(10_000, 4);
    assert!(c[0] < 1_000, "{c:?}");
}

#[test]
fn ring_hash_is_sticky_and_remaps_little() {
    let spec: Vec<(u32, u32)> = (0..10).map(|_| (1, 0)).collect();
    let f = fixture(Lb::RingHash, &spec);
    let mut rng = fastrand::Rng::with_seed(9);
    let keys: Vec<u64> = (0..10_000u64)
        .map(|k| hash_parts(&[&k.to_le_bytes()]))
        .collect();
    let before: Vec<usize> = keys
        .iter()
        .map(|k| f.pick(&mut rng, Some(*k), &[]).unwrap().index)
        .collect();
    // Same key, same endpoint.
    for (k, b) in keys.iter().zip(&before).take(100) {
        assert_eq!(f.pick(&mut rng, Some(*k), &[]).unwrap().index, *b);
    }
    // Every endpoint gets a fair share.
    let mut per = [0usize; 10];
    for b in &before {
        per[*b] += 1;
    }
    assert!(per.iter().all(|n| near(*n, 1_000.0, 0.35)), "{per:?}");
    // Remove endpoint 3 (its addresses stay; the others' ring points do not move).
    let mut cfg = endpoints(&spec);
    cfg.remove(3);
    let eps: Vec<_> = f
        .eps
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, e)| e.clone())
        .collect();
    let plan = Plan::new(Lb::RingHash, &cfg);
    let moved = keys
        .iter()
        .zip(&before)
        .filter(|(k, b)| {
            let now = plan
                .pick(&eps, &f.rt, Some(**k), &[], 1_000, &mut rng)
                .unwrap()
                .index;
            // Indices after 3 shifted down by one.
            let was = if **b > 3 { **b - 1 } else { **b };
            **b == 3 || now != was
        })
        .count();
    let on_removed = before.iter().filter(|b| **b == 3).count();
    assert_eq!(moved, on_removed, "only the removed endpoint's keys move");
    // An ejected endpoint's keys go to the next point on the ring, and come back.
    f.eject(before[0]);
    let other = f.pick(&mut rng, Some(keys[0]), &[]).unwrap().index;
    assert_ne!(other, before[0]);
}

#[test]
fn failover_by_priority_and_panic() {
    let f = fixture(Lb::RoundRobin, &[(1, 0), (1, 0), (1, 1), (1, 1)]);
    assert_eq!(f.counts(1_000, 5), [500, 500, 0, 0]);
    // Half of level 0 out: it keeps 1.4 x 50% = 70%, level 1 takes the rest.
    f.eject(0);
    let c = f.counts(10_000, 5);
    assert_eq!(c[0], 0);
    assert!(near(c[1], 7_000.0, 0.05), "{c:?}");
    assert!(near(c[2] + c[3], 3_000.0, 0.1), "{c:?}");
    // All of level 0 out: everything fails over.
    f.eject(1);
    assert_eq!(f.counts(1_000, 5), [0, 0, 500, 500]);
    // Nothing in service anywhere: panic mode uses them all rather than none.
    f.eject(2);
    f.eject(3);
    let mut rng = fastrand::Rng::with_seed(1);
    let p = f.pick(&mut rng, None, &[]).unwrap();
    assert!(p.panic);
    // Time passes: the ejections end and level 0 takes everything back.
    let later = 1_000 + 31_000;
    let mut c = [0; 4];
    for _ in 0..1_000 {
        c[f.plan
            .pick(&f.eps, &f.rt, None, &[], later, &mut rng)
            .unwrap()
            .index] += 1;
    }
    assert_eq!(c, [500, 500, 0, 0]);
}

#[test]
fn outlier_detection_ejects_through_the_endpoint_state() {
    let f = fixture(Lb::RoundRobin, &[(1, 0), (1, 0), (1, 0)]);
    let od = OutlierDetection::default();
    let mut verdict = endpoint::Verdict::Keep;
    for _ in 0..5 {
        verdict = f.eps[1].record(Outcome::GatewayError, &od);
    }
    let endpoint::Verdict::Eject(d) = verdict else {
        panic!("not ejected")
    };
    assert!(f.eps[1].eject(1_000, d));
    let c = f.counts(900, 2);
    assert_eq!(c[1], 0, "{c:?}");
}

#[test]
fn smooth_sequences_scale_large_weights() {
    let seq = smooth_sequence(&[10_000, 1]);
    assert!(seq.len() as u64 <= SEQ_MAX);
    assert!(seq.contains(&1));
    assert_eq!(smooth_sequence(&[2, 2]), [0, 1]);
}
