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
