//! Scale load for `spoke control`'s incremental stream: a mesh of N Services x E endpoints
//! (`gen`), many incremental discovery streams that ACK every push and count its bytes, one
//! endpoint of one cluster flapping (its own small mesh file, rewritten HZ times a second),
//! and change-to-ACK per stream, control plane CPU per change (/proc utime+stime), bytes per
//! stream per change, and the RSS of the control plane and of one real sidecar, whose own
//! change-to-apply is read from its admin `/server_info`. Used by `bench/run.sh control-scale`.
//!
//! ```text
//! control_scale gen MESH_DIR [SERVICES=1000] [ENDPOINTS=10]
//! control_scale run ADDRESS ROOTS_PEM TOKEN_FILE MESH_DIR CONTROL_PID \
//!     [CLIENTS=100] [SECONDS=30] [HZ=2] [SIDECAR_PID SIDECAR_ADMIN]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use spoke::control::pb::ads::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use spoke::control::pb::ads::{DeltaDiscoveryRequest, Node};
use spoke::control::CONFIG_TYPE_URL;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Per stream: (version, when ACKed, encoded bytes) of every push.
type Log = Arc<Mutex<Vec<(u64, Instant, usize)>>>;

const FLAP_FILE: &str = "10-flap.yaml";

fn endpoints(svc: usize, n: usize) -> String {
    (0..n)
        .map(|e| {
            format!(
                "{{ address: \"10.{}.{}.{}:8080\" }}",
                1 + svc / 250,
                svc % 250,
                1 + e
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn flap_text(eps: usize) -> String {
    format!(
        "clusters:\n  - {{ name: svc-0, endpoints: [ {} ] }}\n",
        endpoints(0, eps)
    )
}

/// Service 0 in its own file (the one that flaps), the others, their routes and VIPs in one.
fn generate(dir: &Path, services: usize, eps: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut s = String::from("clusters:\n");
    for i in 1..services {
        s += &format!(
            "  - {{ name: svc-{i}, endpoints: [ {} ] }}\n",
            endpoints(i, eps)
        );
    }
    s += "routes:\n";
    for i in 0..services {
        s += &format!("  - {{ match: {{ host: svc-{i}.default.svc }}, cluster: svc-{i} }}\n");
    }
    s += "services:\n";
    for i in 0..services {
        s += &format!(
            "  - {{ vip: \"10.96.{}.{}:80\", cluster: svc-{i} }}\n",
            i / 250,
            1 + i % 250
        );
    }
    std::fs::write(dir.join("00-services.yaml"), s).unwrap();
    std::fs::write(dir.join(FLAP_FILE), flap_text(eps)).unwrap();
}

async fn client(i: usize, address: String, roots: Vec<u8>, token: String, log: Log) {
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
        id: format!("scale-{i}"),
        cluster: String::new(),
    });
    let hello = DeltaDiscoveryRequest {
        node: node.clone(),
        type_url: CONFIG_TYPE_URL.into(),
        ..Default::default()
    };
    tx.send(hello).await.unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut s = AggregatedDiscoveryServiceClient::new(ch)
        .delta_aggregated_resources(req)
        .await
        .unwrap()
        .into_inner();
    while let Ok(Some(resp)) = s.message().await {
        let bytes = resp.encoded_len();
        let v: u64 = resp.system_version_info.parse().unwrap_or(0);
        let ack = DeltaDiscoveryRequest {
            node: node.clone(),
            type_url: CONFIG_TYPE_URL.into(),
            response_nonce: resp.nonce,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            break;
        }
        log.lock().unwrap().push((v, Instant::now(), bytes));
    }
}

fn proc_cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The sidecar's applied config version, from its admin `/server_info`.
async fn sidecar_version(admin: &str) -> Option<u64> {
    let mut c = tokio::net::TcpStream::connect(admin).await.ok()?;
    c.write_all(b"GET /server_info HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).await.ok()?;
    let at = body.find("\"config_version\"")?;
    let rest = body[at + 16..].trim_start_matches([':', ' ', '"']);
    rest.split('"').next()?.parse().ok()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn arg<T: std::str::FromStr>(a: &[String], i: usize, default: T) -> T {
    a.get(i).and_then(|x| x.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.get(1).map(String::as_str) == Some("gen") && a.len() >= 3 {
        generate(Path::new(&a[2]), arg(&a, 3, 1000), arg(&a, 4, 10));
        return;
    }
    if a.get(1).map(String::as_str) != Some("run") || a.len() < 7 {
        eprintln!("usage: control_scale gen MESH_DIR [SERVICES] [ENDPOINTS] | run ADDRESS ROOTS_PEM TOKEN_FILE MESH_DIR CONTROL_PID [CLIENTS] [SECONDS] [HZ] [SIDECAR_PID SIDECAR_ADMIN]");
        std::process::exit(2);
    }
    let (address, roots, token, mesh) = (
        a[2].clone(),
        std::fs::read(&a[3]).unwrap(),
        std::fs::read_to_string(&a[4]).unwrap().trim().to_string(),
        std::path::PathBuf::from(&a[5]),
    );
    let control_pid: u32 = arg(&a, 6, 0);
    let (n, seconds, hz): (usize, u64, u64) = (arg(&a, 7, 100), arg(&a, 8, 30), arg(&a, 9, 2));
    let sidecar: Option<(u32, String)> = a.get(11).map(|adm| (arg(&a, 10, 0), adm.clone()));
    let logs: Vec<Log> = (0..n).map(|_| Log::default()).collect();
    let start = Instant::now();
    for (i, log) in logs.iter().enumerate() {
        tokio::spawn(client(
            i,
            address.clone(),
            roots.clone(),
            token.clone(),
            log.clone(),
        ));
    }
    // Every stream has its first (whole) push.
    while logs.iter().any(|l| l.lock().unwrap().is_empty()) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "streams did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected_ms = start.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v0 = logs
        .iter()
        .map(|l| l.lock().unwrap().last().unwrap().0)
        .max()
        .unwrap();
    let initial_bytes: usize = logs.iter().map(|l| l.lock().unwrap()[0].2).sum::<usize>() / n;
    let sidecar_rss_start = sidecar.as_ref().map(|(p, _)| rss_kib(*p));
    let eps: usize = std::fs::read_to_string(mesh.join(FLAP_FILE))
        .map(|t| t.matches("address").count())
        .unwrap_or(10);
    let cpu0 = proc_cpu_s(control_pid);
    let mut changes: Vec<Instant> = Vec::new();
    let mut side_lat = Vec::new();
    let total = (seconds * hz) as usize;
    let period = Duration::from_micros(1_000_000 / hz.max(1));
    for k in 1..=total {
        let due = start + Duration::from_secs(0) + period * k as u32;
        let due = due.max(Instant::now());
        tokio::time::sleep_until(due.into()).await;
        let tmp = mesh.join(".10-flap.tmp");
        std::fs::write(&tmp, flap_text(if k % 2 == 1 { eps - 1 } else { eps })).unwrap();
        let t0 = Instant::now();
        std::fs::rename(&tmp, mesh.join(FLAP_FILE)).unwrap();
        changes.push(t0);
        if let Some((_, admin)) = &sidecar {
            let want = v0 + k as u64;
            while t0.elapsed() < period.mul_f64(0.9) {
                if sidecar_version(admin).await.is_some_and(|v| v >= want) {
                    side_lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = proc_cpu_s(control_pid) - cpu0 - 0.0;
    let mut lat = Vec::new();
    let (mut bytes, mut missed) = (0usize, 0usize);
    for l in &logs {
        let l = l.lock().unwrap();
        for (k, t0) in changes.iter().enumerate() {
            match l
                .iter()
                .find(|(v, at, _)| *v >= v0 + 1 + k as u64 && at >= t0)
            {
                Some((_, at, _)) => lat.push(at.duration_since(*t0).as_secs_f64() * 1000.0),
                None => missed += 1,
            }
        }
        bytes += l
            .iter()
            .filter(|(v, _, _)| *v > v0)
            .map(|(_, _, b)| b)
            .sum::<usize>();
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    side_lat.sort_by(|a, b| a.total_cmp(b));
    let c = changes.len().max(1);
    let doc = serde_json::json!({
        "clients": n, "changes": changes.len(), "hz": hz, "connected_ms": connected_ms.round(),
        "initial_bytes_per_client": initial_bytes,
        "ack_ms": { "p50": pct(&lat, 0.5), "p99": pct(&lat, 0.99), "max": lat.last().copied().unwrap_or(0.0) },
        "missed": missed,
        "bytes_per_client_per_change": bytes as f64 / (n * c) as f64,
        "control_cpu_ms_per_change": cpu * 1000.0 / c as f64,
        "control_rss_kib": rss_kib(control_pid),
        "sidecar_apply_ms": sidecar.as_ref().map(|_| serde_json::json!({
            "p50": pct(&side_lat, 0.5), "p99": pct(&side_lat, 0.99), "seen": side_lat.len() })),
        "sidecar_rss_kib_start": sidecar_rss_start,
        "sidecar_rss_kib_end": sidecar.as_ref().map(|(p, _)| rss_kib(*p)),
    });
    println!("{doc}");
}
