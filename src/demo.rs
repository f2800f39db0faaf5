//! `spoke demo`: a small mesh on loopback from one command, from the embedded configs in
//! `demo/`. It makes a throw-away PKI with `spoke ca`'s code, starts a demo echo service,
//! a sidecar beside it (mTLS in, allow list: sa/web) and two client sidecars (sa/web and
//! sa/intruder), sends traffic, prints the verified identities, the denied call and the
//! metrics, and keeps serving until Ctrl-C or `--duration`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::app::{self, Running};
use crate::ca::{self, Ca};
use crate::config::{self, Identity};
use crate::proxy::AuthzEvent;

const BACKEND_CONFIG: &str = include_str!("demo/backend.yaml");
const CLIENT_CONFIG: &str = include_str!("demo/client.yaml");
const TRUST_DOMAIN: &str = "cluster.local";

/// A TCP echo service: what the demo's traffic reaches.
pub async fn echo_server(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// One request through a sidecar: send a line, read it back.
async fn echo_once(addr: SocketAddr, msg: &[u8]) -> std::io::Result<usize> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut back = Vec::with_capacity(msg.len());
    s.read_to_end(&mut back).await?;
    if back != msg {
        return Err(std::io::Error::other(if back.is_empty() {
            "connection closed without a reply".to_string()
        } else {
            "echo mismatch".to_string()
        }));
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
    let dir = std::env::temp_dir().join(format!("spoke-demo-{}", std::process::id()));
    let result = demo(&dir, stop_after).await;
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Makes the demo's PKI under `dir`: a root and one certificate per workload.
fn make_pki(dir: &Path) -> anyhow::Result<()> {
    let ca = Ca::new(TRUST_DOMAIN, Duration::from_secs(24 * 3600))?;
    for name in ["backend", "web", "intruder"] {
        let id = Identity::parse(&format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{name}"))
            .map_err(anyhow::Error::msg)?;
        ca::issue_to_dir(&ca, &id, Duration::from_secs(3600), &dir.join(name), true)?;
    }
    Ok(())
}

async fn start(
    template: &str,
    vars: &[(&str, String)],
    observer: Option<mpsc::UnboundedSender<AuthzEvent>>,
) -> anyhow::Result<Running> {
    let mut yaml = template.to_string();
    for (k, v) in vars {
        yaml = yaml.replace(&format!("{{{k}}}"), v);
    }
    let cfg = config::from_yaml(&yaml)?;
    Ok(app::start(
        cfg,
        app::Options {
            observer,
            ..Default::default()
        },
    )
    .await?)
}

async fn demo(dir: &Path, stop_after: Option<Duration>) -> anyhow::Result<()> {
    make_pki(dir)?;
    let certs: PathBuf = dir.to_path_buf();
    let certs = certs.display().to_string();
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(echo_server(echo));

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let backend = start(
        BACKEND_CONFIG,
        &[
            ("certs", certs.clone()),
            ("echo", echo_addr.to_string()),
            ("echo_port", echo_addr.port().to_string()),
        ],
        Some(events_tx),
    )
    .await?;
    let backend_addr = backend
        .listener("from-mesh")
        .ok_or_else(|| anyhow::anyhow!("backend listener missing"))?;
    let client = |name: &str| {
        vec![
            ("certs", certs.clone()),
            ("name", name.to_string()),
            ("backend", backend_addr.to_string()),
        ]
    };
    let web = start(CLIENT_CONFIG, &client("web"), None).await?;
    let intruder = start(CLIENT_CONFIG, &client("intruder"), None).await?;
    let web_out = web
        .listener("to-backend")
        .ok_or_else(|| anyhow::anyhow!("web listener missing"))?;
    let intruder_out = intruder
        .listener("to-backend")
        .ok_or_else(|| anyhow::anyhow!("intruder listener missing"))?;

    println!("spoke demo: a mesh of three sidecars on loopback, trust domain {TRUST_DOMAIN}");
    println!("  demo echo service            {echo_addr}");
    println!("  backend sidecar (mTLS in)    {backend_addr}   allows spiffe://{TRUST_DOMAIN}/ns/default/sa/web");
    println!("  web sidecar (app dials)      {web_out}");
    println!("  intruder sidecar (app dials) {intruder_out}");
    println!();

    let started = Instant::now();
    let (mut ok, mut failed, mut bytes) = (0u32, 0u32, 0usize);
    for i in 0..20 {
        let msg = format!("hello from web, request {i}\n");
        match echo_once(web_out, msg.as_bytes()).await {
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
    println!(
        "web -> web sidecar -> mTLS -> backend sidecar -> echo: {ok} ok, {failed} failed, {bytes} bytes echoed, {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let intruder_result = echo_once(intruder_out, b"let me in\n").await;
    // Decisions arrive from the backend sidecar's connection tasks.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut allowed_ids = std::collections::BTreeMap::<String, u32>::new();
    let mut denied = Vec::new();
    while let Ok(ev) = events.try_recv() {
        let id = ev.peer_id.unwrap_or_else(|| "(plaintext)".into());
        if ev.allowed {
            *allowed_ids.entry(id).or_default() += 1;
        } else {
            denied.push(id);
        }
    }
    for (id, n) in &allowed_ids {
        println!(
            "  verified peer identity at the backend sidecar: {id} ({n} connections, allowed)"
        );
    }
    match (&intruder_result, denied.first()) {
        (Err(_), Some(id)) => println!("intruder -> backend: denied, peer identity {id} is not on the allow list (connection closed before reaching the app)"),
        (Ok(_), _) => println!("intruder -> backend: unexpectedly allowed"),
        (Err(e), None) => println!("intruder -> backend: failed ({e})"),
    }
    let m = &backend.shared.metrics;
    println!();
    println!("backend sidecar metrics:");
    println!(
        "  spoke_tcp_connections_opened_total{{direction=\"inbound\"}} = {}",
        m.tcp_connections_opened
            .with_label_values(&["inbound", &format!("inbound:{}", echo_addr.port())])
            .get()
    );
    println!(
        "  spoke_authz_denied_total{{port=\"{}\"}} = {}",
        echo_addr.port(),
        m.authz_denied
            .with_label_values(&[&echo_addr.port().to_string()])
            .get()
    );
    println!("where to look:");
    println!(
        "  metrics:     curl http://{}/metrics   (web: http://{}/metrics)",
        backend.stats, web.stats
    );
    println!("  readiness:   curl http://{}/ready", backend.stats);
    println!("  config dump: curl http://{}/config_dump", backend.admin);
    println!(
        "  try it:      echo hi | nc -q1 {} {}",
        web_out.ip(),
        web_out.port()
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
    for r in [web, intruder, backend] {
        r.shutdown().await;
    }
    println!("demo stopped");
    if failed > 0 || intruder_result.is_ok() || allowed_ids.is_empty() {
        anyhow::bail!(
            "the demo did not behave: {failed} failed requests, intruder allowed: {}",
            intruder_result.is_ok()
        );
    }
    Ok(())
}
