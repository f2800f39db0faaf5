//! Micro-benchmark of a config swap at scale: a proxy config with CLUSTERS clusters of
//! ENDPOINTS endpoints each and one host route per cluster (default 1,000 x 10 = 10,000
//! endpoints, 1,000 routes), timed through the stages a new config goes through before the
//! swap (YAML parse + validation, snapshot build with the route index, adopting the runtime
//! state of the last snapshot with every cluster made live, as if all were in use) and the
//! swap itself (one `ArcSwap::swap`), and freeing the old snapshot. Memory is the growth of
//! the process's RSS while one such snapshot is held. Prints one JSON object.
//! Used by `bench/run.sh routes`.
//!
//! ```text
//! cargo run --release --example snapshot_build -- [CLUSTERS=1000] [ENDPOINTS=10] [ROUNDS=20]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use spoke::balance::Registry;
use spoke::snapshot::Snapshot;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// The config: one HTTP listener, `clusters` host routes, `clusters` x `endpoints` endpoints.
fn yaml(clusters: usize, endpoints: usize) -> String {
    let mut y = String::from(
        "listeners: [ { name: out, address: 127.0.0.1:15001, protocol: http, cluster: c0 } ]\nroutes:\n",
    );
    for c in 0..clusters {
        writeln!(
            y,
            "  - {{ match: {{ host: svc-{c}.example }}, cluster: c{c} }}"
        )
        .unwrap();
    }
    y.push_str("clusters:\n");
    for c in 0..clusters {
        writeln!(y, "  - name: c{c}\n    endpoints:").unwrap();
        for e in 0..endpoints {
            let n = c * endpoints + e;
            writeln!(
                y,
                "      - {{ address: \"10.{}.{}.{}:8080\" }}",
                n / 65536,
                (n / 256) % 256,
                n % 256
            )
            .unwrap();
        }
    }
    y
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let (clusters, endpoints, rounds) = (arg(1, 1000), arg(2, 10), arg(3, 20).max(1));
    let text = yaml(clusters, endpoints);
    let registry = Arc::new(Registry::default());
    let current = ArcSwap::from_pointee(Snapshot::from_static(
        spoke::config::from_yaml("listeners: []\n").unwrap(),
    ));
    let (mut parse, mut build, mut adopt, mut swap, mut free) =
        (vec![], vec![], vec![], vec![], vec![]);
    let rss_before = rss_kib();
    let mut rss_held = 0;
    for round in 0..rounds {
        let t = Instant::now();
        let cfg = spoke::config::from_yaml(&text).unwrap();
        parse.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let mut snap = Snapshot::new(cfg, format!("v{round}"));
        build.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        snap.adopt(&registry);
        // Every cluster in use (a sidecar makes a cluster live at its first request): the
        // worst case, so each round adopts the last one's runtime state.
        for c in snap.clusters() {
            c.live();
        }
        adopt.push(t.elapsed().as_secs_f64() * 1e3);
        let snap = Arc::new(snap);
        let t = Instant::now();
        let old = current.swap(snap);
        swap.push(t.elapsed().as_secs_f64() * 1e6);
        // The old snapshot is freed by whoever lets go of it last (in the proxy, often a
        // request that started before the swap), not by the swap itself.
        let t = Instant::now();
        drop(old);
        free.push(t.elapsed().as_secs_f64() * 1e3);
        if round == 0 {
            rss_held = rss_kib();
        }
    }
    println!(
        "{{\"clusters\":{clusters},\"endpoints\":{},\"routes\":{clusters},\"yaml_bytes\":{},\
         \"parse_validate_ms\":{:.2},\"snapshot_build_ms\":{:.2},\"adopt_ms\":{:.2},\"swap_us\":{:.2},\"free_old_ms\":{:.2},\
         \"rounds\":{rounds},\"rss_before_kib\":{rss_before},\"rss_one_snapshot_kib\":{rss_held},\"rss_after_swaps_kib\":{}}}",
        clusters * endpoints,
        text.len(),
        median(parse),
        median(build),
        median(adopt),
        median(swap),
        median(free),
        rss_kib()
    );
}
