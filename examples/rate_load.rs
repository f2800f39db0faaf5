//! Fixed-rate HTTP/1.1 load with latency measured from each request's scheduled start
//! (so a stall is not hidden by the load pausing with it), for tail-latency benchmarks.
//! Prints one JSON object: requests, errors, p50/p90/p99/max in milliseconds.
//!
//! ```text
//! cargo run --release --example rate_load -- URL RATE SECONDS [CONNECTIONS=64]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: &str) -> Option<Sender> {
    let s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = s.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(send)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url: http::Uri = args[0].parse().expect("URL");
    let rate: f64 = args[1].parse().expect("RATE");
    let secs: f64 = args[2].parse().expect("SECONDS");
    let conns: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(64);
    let addr = url.authority().expect("host:port").to_string();
    let path = url
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or("/".into());
    let (tx, rx) = async_channel(conns);
    for _ in 0..conns {
        if let Some(s) = connect(&addr).await {
            tx.send(s).await.unwrap();
        }
    }
    let lat = Arc::new(Mutex::new(Vec::<f64>::new()));
    let errors = Arc::new(Mutex::new(0u64));
    let start = Instant::now();
    let total = (rate * secs) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (tx, rx, lat, errors, addr, path) = (
            tx.clone(),
            rx.clone(),
            lat.clone(),
            errors.clone(),
            addr.clone(),
            path.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = rx.recv().await.unwrap();
            let req = http::Request::get(path.as_str())
                .header("host", "backend")
                .body(Empty::new())
                .unwrap();
            let ok = match s.send_request(req).await {
                Ok(r) => {
                    let good = r.status() == 200;
                    good && r.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            };
            lat.lock()
                .unwrap()
                .push(due.elapsed().as_secs_f64() * 1000.0);
            if !ok {
                *errors.lock().unwrap() += 1;
            }
            let s = if s.is_closed() {
                connect(&addr).await
            } else {
                Some(s)
            };
            if let Some(s) = s {
                let _ = tx.send(s).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        l.get(((l.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{{\"requests\":{},\"errors\":{},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        l.len(),
        errors.lock().unwrap(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
}

/// A small multi-consumer queue of idle connections.
fn async_channel(cap: usize) -> (Queue, Queue) {
    let q = Queue(Arc::new((
        Mutex::new(std::collections::VecDeque::with_capacity(cap)),
        tokio::sync::Notify::new(),
    )));
    (q.clone(), q)
}

#[derive(Clone)]
struct Queue(
    Arc<(
        Mutex<std::collections::VecDeque<Sender>>,
        tokio::sync::Notify,
    )>,
);

impl Queue {
    async fn send(&self, s: Sender) -> Result<(), ()> {
        self.0 .0.lock().unwrap().push_back(s);
        self.0 .1.notify_one();
        Ok(())
    }

    async fn recv(&self) -> Option<Sender> {
        loop {
            let notified = self.0 .1.notified();
            if let Some(s) = self.0 .0.lock().unwrap().pop_front() {
                return Some(s);
            }
            notified.await;
        }
    }
}
