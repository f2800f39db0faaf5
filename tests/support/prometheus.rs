//! A real Prometheus for the root-only end-to-end test: found on this machine, started on
//! a config made from `deploy/prometheus/prometheus.yml`, and asked through its HTTP API
//! which targets it scrapes and whether they are up.
//!
//! Kubernetes service discovery is compiled into upstream Prometheus builds but left out of
//! Debian's package; `find` says which kind it found, and the test uses Kubernetes SD when
//! it can.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{free_port, http_blocking, Proc};

/// A Prometheus binary, and whether it has `kubernetes_sd_configs`.
pub struct Found {
    pub bin: PathBuf,
    pub kubernetes_sd: bool,
}

/// The first Prometheus of `SPOKE_PROMETHEUS`, `~/.cache/spoke-tools/bin/prometheus` and
/// `prometheus` on the PATH that has Kubernetes SD, else the first one found at all.
pub fn find(dir: &Path) -> Option<Found> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("SPOKE_PROMETHEUS") {
        candidates.push(p.into());
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cache/spoke-tools/bin/prometheus"));
    }
    candidates.push("prometheus".into());
    let mut first = None;
    for bin in candidates {
        let Some(kubernetes_sd) = has_kubernetes_sd(&bin, dir) else {
            continue;
        };
        if kubernetes_sd {
            return Some(Found { bin, kubernetes_sd });
        }
        first.get_or_insert(Found { bin, kubernetes_sd });
    }
    first
}

/// Prometheus on `cfg`, serving on 127.0.0.1:`port`, its data in `data`; stderr is the
/// caller's to set.
fn command(bin: &Path, cfg: &Path, port: u16, data: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .stdout(Stdio::null());
    c
}

/// Whether `bin` loads a config with a `kubernetes_sd_configs` block (`None`: no such
/// program). Prometheus has no check mode of its own, so it is started on such a config
/// with nothing to reach and asked to stop at once.
fn has_kubernetes_sd(bin: &Path, dir: &Path) -> Option<bool> {
    let cfg = dir.join("prometheus-probe.yml");
    std::fs::write(
        &cfg,
        "scrape_configs:\n  - job_name: probe\n    kubernetes_sd_configs:\n      - { role: pod, api_server: \"http://127.0.0.1:1\" }\n",
    )
    .ok()?;
    let port = free_port();
    let child = command(bin, &cfg, port, &dir.join("prometheus-probe-data"))
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut child = Proc(child);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.0.try_wait() {
            // It refused the config (Debian's build: "field kubernetes_sd_configs not found").
            return Some(false);
        }
        if http_blocking(port, "GET", "/-/ready").is_some_and(|r| r.0 == 200) {
            return Some(true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(false)
}

/// The body of an HTTP/1.0 GET to 127.0.0.1:`port`: Go answers a 1.0 client without chunked
/// encoding, so the body is the bytes after the head.
fn get_http10(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nhost: prometheus\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|x| x.1.to_string())
}

/// A running Prometheus (killed on drop) with its HTTP API on 127.0.0.1.
pub struct Prometheus {
    pub port: u16,
    pub log: PathBuf,
    _proc: Proc,
}

impl Prometheus {
    /// Starts `bin` on `config` (YAML or JSON), its data and log in `dir`; waits until ready.
    pub fn start(bin: &Path, config: &str, dir: &Path) -> Prometheus {
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join("prometheus.log");
        let port = free_port();
        let child = command(bin, &cfg, port, &dir.join("prometheus-data"))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let p = Prometheus {
            port,
            log,
            _proc: Proc(child),
        };
        let start = Instant::now();
        while http_blocking(port, "GET", "/-/ready").is_none_or(|r| r.0 != 200) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "prometheus not ready:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The active targets of `job` (`/api/v1/targets`).
    pub fn targets(&self, job: &str) -> Vec<Value> {
        get_http10(self.port, "/api/v1/targets?state=active")
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .and_then(|v| v["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t["labels"]["job"] == job)
            .collect()
    }

    /// The `__meta_kubernetes_pod_name` of each target of `job` the relabelling dropped.
    pub fn dropped_pods(&self, job: &str) -> Vec<String> {
        get_http10(self.port, "/api/v1/targets?state=dropped")
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .and_then(|v| v["data"]["droppedTargets"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|t| &t["discoveredLabels"])
            .filter(|l| l["job"] == job)
            .filter_map(|l| l["__meta_kubernetes_pod_name"].as_str().map(String::from))
            .collect()
    }

    /// The value of the PromQL instant query `q` (its first series), if it has one.
    pub fn value(&self, q: &str) -> Option<f64> {
        let q: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => char::from(b).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = get_http10(self.port, &format!("/api/v1/query?query={q}"))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits up to `limit` until `job` has exactly `n` targets and every one is up; returns
    /// them. Panics with the targets last seen otherwise.
    pub fn wait_up(&self, job: &str, n: usize, limit: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let t = self.targets(job);
            if t.len() == n && t.iter().all(|t| t["health"] == "up") {
                return t;
            }
            assert!(
                start.elapsed() < limit,
                "prometheus: {job} not {n} targets up: {}\n{}",
                Value::Array(t),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
