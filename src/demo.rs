//! `spoke demo`: a whole setup on loopback from one command. Starts a demo echo service and
//! a proxy from the embedded default config (`demo.yaml`), sends traffic through it, prints
//! what happened and where to look, and keeps serving until Ctrl-C or `--duration`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app;
use crate::config;

const DEFAULT_CONFIG: &str = include_str!("demo.yaml");

/// A TCP echo service: what the demo's traffic reaches.
pub async fn echo_server(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// One request through the proxy: send a line, read it back.
async fn echo_once(addr: SocketAddr, msg: &[u8]) -> std::io::Result<usize> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut back = Vec::with_capacity(msg.len());
    s.read_to_end(&mut back).await?;
    if back != msg {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(back.len())
}

pub async fn run(duration: Option<String>) -> ExitCode {
    let stop_after = match duration.as_deref().map(config::duration::parse) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            eprintln!("error: --duration: {e}");
            return ExitCode::from(2);
        }
    };
    match demo(stop_after).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn demo(stop_after: Option<Duration>) -> anyhow::Result<()> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(echo_server(echo));

    let yaml = DEFAULT_CONFIG.replace("{echo}", &echo_addr.to_string());
    let cfg = config::from_yaml(&yaml)?;
    let running = app::start(cfg, app::Options::default()).await?;
    let proxy = running
        .listener("to-echo")
        .ok_or_else(|| anyhow::anyhow!("demo listener missing"))?;

    println!("spoke demo: echo service on {echo_addr}, proxy listener on {proxy}");
    let started = Instant::now();
    let (mut ok, mut failed, mut bytes) = (0u32, 0u32, 0usize);
    for i in 0..20 {
        let msg = format!("hello from demo client, request {i}\n");
        match echo_once(proxy, msg.as_bytes()).await {
            Ok(n) => {
                ok += 1;
                bytes += n;
            }
            Err(e) => {
                failed += 1;
                eprintln!("  request {i} failed: {e}");
            }
        }
    }
    let took = started.elapsed();
    println!(
        "sent 20 requests through the proxy: {ok} ok, {failed} failed, {bytes} bytes echoed each way, in {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    let m = &running.shared.metrics;
    println!(
        "  spoke_tcp_connections_opened_total{{direction=\"outbound\",cluster=\"echo\"}} = {}",
        m.tcp_connections_opened
            .with_label_values(&["outbound", "echo"])
            .get()
    );
    println!(
        "  spoke_tcp_bytes_total{{flow=\"rx\"}} = {}, {{flow=\"tx\"}} = {}",
        m.tcp_bytes
            .with_label_values(&["outbound", "echo", "rx"])
            .get(),
        m.tcp_bytes
            .with_label_values(&["outbound", "echo", "tx"])
            .get()
    );
    println!("where to look:");
    println!("  metrics:     curl http://{}/metrics", running.stats);
    println!("  readiness:   curl http://{}/ready", running.stats);
    println!("  config dump: curl http://{}/config_dump", running.admin);
    println!(
        "  try it:      echo hi | nc -q1 {} {}",
        proxy.ip(),
        proxy.port()
    );
    match stop_after {
        Some(d) => {
            println!("running for {d:?} (--duration); Ctrl-C stops earlier");
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            println!("running until Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    running.shutdown().await;
    println!("demo stopped");
    if failed > 0 {
        anyhow::bail!("{failed} demo requests failed");
    }
    Ok(())
}
