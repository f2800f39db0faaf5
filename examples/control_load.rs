//! Load for `spoke control`: many lightweight discovery-stream clients (each its own TLS
//! connection, ACKing every push), mesh config changes written to a file in the watched directory, and the
//! push latency from file change to each client receiving the new version. Used by
//! `bench/run.sh control`.
//!
//! ```text
//! cargo run --release --example control_load -- ADDRESS ROOTS_PEM TOKEN_FILE MESH_DIR \
//!     [CLIENTS=100] [CHANGES=20] [HOLD_SECS=0]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spoke::control::pb::ads::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use spoke::control::pb::ads::{DiscoveryRequest, Node};
use spoke::control::CONFIG_TYPE_URL;

type Seen = Arc<Mutex<HashMap<usize, (u64, Instant)>>>;

async fn client(i: usize, address: String, roots: Vec<u8>, token: String, seen: Seen) {
    let id =
        spoke::config::Identity::parse(&spoke::control::control_identity("cluster.local")).unwrap();
    let ch = loop {
        match spoke::control::client::connect(&address, &id, &roots).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let node = Some(Node {
        id: format!("load-{i}"),
        cluster: String::new(),
    });
    tx.send(DiscoveryRequest {
        node: node.clone(),
        type_url: CONFIG_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut s = AggregatedDiscoveryServiceClient::new(ch)
        .stream_aggregated_resources(req)
        .await
        .unwrap()
        .into_inner();
    while let Ok(Some(resp)) = s.message().await {
        let v: u64 = resp.version_info.parse().unwrap_or(0);
        seen.lock().unwrap().insert(i, (v, Instant::now()));
        let _ = tx
            .send(DiscoveryRequest {
                version_info: resp.version_info,
                node: node.clone(),
                type_url: CONFIG_TYPE_URL.into(),
                response_nonce: resp.nonce,
                ..Default::default()
            })
            .await;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: control_load ADDRESS ROOTS_PEM TOKEN_FILE MESH_DIR [CLIENTS] [CHANGES] [HOLD_SECS]");
        std::process::exit(2);
    }
    let (address, roots, token, mesh) = (
        a[1].clone(),
        std::fs::read(&a[2]).unwrap(),
        std::fs::read_to_string(&a[3]).unwrap().trim().to_string(),
        a[4].clone(),
    );
    let n: usize = a.get(5).and_then(|x| x.parse().ok()).unwrap_or(100);
    let changes: usize = a.get(6).and_then(|x| x.parse().ok()).unwrap_or(20);
    let hold: u64 = a.get(7).and_then(|x| x.parse().ok()).unwrap_or(0);
    let file = std::path::Path::new(&mesh).join("zz-bench-load.yaml");
    let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
    let start = Instant::now();
    for i in 0..n {
        tokio::spawn(client(
            i,
            address.clone(),
            roots.clone(),
            token.clone(),
            seen.clone(),
        ));
    }
    let all_at = |v: u64| {
        let s = seen.lock().unwrap();
        s.len() == n && s.values().all(|(got, _)| *got >= v)
    };
    while !all_at(1) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "clients did not connect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v0 = seen
        .lock()
        .unwrap()
        .values()
        .map(|(v, _)| *v)
        .max()
        .unwrap();
    println!(
        "clients={n} connected_in_ms={:.0}",
        start.elapsed().as_secs_f64() * 1000.0
    );
    let mut lat = Vec::new();
    let mut all = Vec::new();
    for c in 1..=changes {
        let text = format!("clusters: [ {{ name: bench-load-{c}, endpoints: [] }} ]\n");
        let tmp = std::path::Path::new(&mesh).join(".zz-bench-load.tmp");
        let t0 = Instant::now();
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let want = v0 + c as u64;
        while !all_at(want) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "push {c} did not arrive"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        all.push(t0.elapsed().as_secs_f64() * 1000.0);
        for (_, at) in seen.lock().unwrap().values() {
            lat.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    all.sort_by(|a, b| a.total_cmp(b));
    println!(
        "push_latency_ms p50={:.1} p99={:.1} max={:.1} all_clients_p50={:.1} all_clients_p99={:.1}",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
        pct(&all, 0.5),
        pct(&all, 0.99)
    );
    let _ = std::fs::remove_file(&file);
    if hold > 0 {
        println!("holding {n} streams for {hold}s");
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
}
