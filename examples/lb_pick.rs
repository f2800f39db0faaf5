//! Micro-benchmark of one balancer pick: each algorithm over 100 endpoints (one priority
//! level, all in service, and again with 10 of them ejected). Prints nanoseconds per pick.
//! Used by `bench/run.sh lb`.
//!
//! ```text
//! cargo run --release --example lb_pick -- [PICKS=2000000]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use spoke::balance::{now_ms, ClusterRuntime, EndpointState, Plan, ThreadRng};
use spoke::config::{Endpoint, EndpointAddr, Lb};

fn main() {
    let picks: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let cfg: Vec<Endpoint> = (0..100u16)
        .map(|i| Endpoint {
            address: EndpointAddr::Ip(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080).into()),
            weight: 1 + u32::from(i % 3),
            priority: 0,
        })
        .collect();
    let eps: Vec<Arc<EndpointState>> = cfg
        .iter()
        .map(|e| Arc::new(EndpointState::new(e.address.clone())))
        .collect();
    for (i, e) in eps.iter().enumerate() {
        e.observe_latency(Duration::from_micros(200 + i as u64 * 7), now_ms());
    }
    let rt = ClusterRuntime::default();
    let mut out = Vec::new();
    for ejected in [0, 10] {
        for e in eps.iter().take(ejected) {
            e.eject(now_ms(), Duration::from_secs(600));
        }
        for lb in [Lb::LeastRequest, Lb::RoundRobin, Lb::Random, Lb::RingHash] {
            let plan = Plan::new(lb, &cfg);
            let now = now_ms();
            let start = Instant::now();
            let mut sum = 0usize;
            for k in 0..picks {
                let key = Some(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let p = plan.pick(&eps, &rt, key, &[], now, &mut ThreadRng).unwrap();
                sum = sum.wrapping_add(p.index);
            }
            let ns = start.elapsed().as_nanos() as f64 / picks as f64;
            out.push(format!(
                "{{\"lb\":\"{lb:?}\",\"endpoints\":100,\"ejected\":{ejected},\"ns_per_pick\":{ns:.1},\"check\":{}}}",
                sum % 7
            ));
        }
    }
    println!("[{}]", out.join(","));
}
