use std::sync::Arc;

use super::*;

fn tracer(yaml: &str) -> Tracer {
    let cfg = crate::config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    Tracer::new(&cfg, Arc::new(Metrics::new()))
}

const COLLECTOR: &str = "collector: { address: 127.0.0.1:4317 }";

#[test]
fn off_without_a_tracing_block() {
    let t = tracer("");
    assert!(!t.enabled());
    assert!(!t.metrics().render().contains("spoke_trace_spans"));
}

#[test]
fn ratio_zero_and_one() {
    let t = tracer(&format!("tracing: {{ sampling: 0, {COLLECTOR} }}\n"));
    assert!(t.enabled());
    assert!((0..1000).all(|_| !t.sample_new(None)));
    assert!((0..1000).all(|_| t.sample_new(Some(1.0))));
    let t = tracer(&format!("tracing: {{ sampling: 1.0, {COLLECTOR} }}\n"));
    assert!((0..1000).all(|_| t.sample_new(None)));
    assert!((0..1000).all(|_| !t.sample_new(Some(0.0))));
    let text = t.metrics().render();
    assert!(text.contains("spoke_trace_spans_dropped_total 0"));
    assert!(text.contains("spoke_trace_spans_exported_total 0"));
}

#[test]
fn a_full_queue_drops_and_counts() {
    let t = tracer(&format!("tracing: {{ sampling: 1.0, {COLLECTOR} }}\n"));
    for _ in 0..QUEUE + 10 {
        t.send(Default::default());
    }
    assert_eq!(t.metrics().trace_spans_dropped.get(), 10);
}

#[test]
fn the_mesh_block_reaches_the_sidecar_and_wins_over_its_own() {
    use crate::control::mesh::{merge_local, workload_view};
    let parse = |y: &str| crate::config::parse_yaml(y).unwrap_or_else(|e| panic!("{e}"));
    let local = parse("tracing: { sampling: 0.5, collector: { address: 10.0.0.1:4317 } }\n");
    let mesh =
        parse("tracing: { sampling: 1, collector: { address: 10.0.0.2:4318, protocol: http } }\n");
    let merged = merge_local(&local, workload_view(&mesh, None));
    assert_eq!(merged.tracing, mesh.tracing);
    let merged = merge_local(&local, workload_view(&parse(""), None));
    assert_eq!(merged.tracing, local.tracing);
}

#[test]
fn a_new_snapshot_turns_tracing_on_and_off() {
    let t = tracer("");
    let on = crate::config::from_yaml(&format!("tracing: {{ sampling: 1, {COLLECTOR} }}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    t.configure(&on);
    assert!(t.enabled() && t.sample_new(None));
    assert_eq!(
        t.settings().map(|s| s.collector.address.clone()).as_deref(),
        Some("127.0.0.1:4317")
    );
    t.configure(&crate::config::from_yaml("").unwrap_or_else(|e| panic!("{e}")));
    assert!(!t.enabled() && t.settings().is_none());
}
