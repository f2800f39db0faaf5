//! A tiny HTTP/1.1 + h2c upstream for benchmarks: answers `ok\n` after a fixed delay.
//! Used by `bench/run.sh lb` to play a slow replica.
//!
//! ```text
//! cargo run --release --example delay_server -- PORT [DELAY_MS=0]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|a| a.parse().ok()).expect("PORT");
    let delay = Duration::from_millis(args.next().and_then(|a| a.parse().ok()).unwrap_or(0));
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    loop {
        let Ok((sock, _)) = l.accept().await else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok\n"))))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        });
    }
}
