//! `spoke demo`: a small mesh on loopback from one command, from the embedded configs in
//! `demo/`. It makes a throw-away PKI with `spoke ca`'s code, starts a demo HTTP app in two
//! versions (v1 flaky), a sidecar beside them (mTLS in, allow list: sa/web) and two client
//! sidecars (sa/web and sa/intruder). The web sidecar splits 90/10 between the versions and
//! retries 503s; the demo sends requests, prints what the app saw (the verified caller
//! identity), the retries, the intruder's 403 and the request metrics, and keeps serving
//! until Ctrl-C or `--duration`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::app::{self, Running};
use std::collections::{BTreeMap, BTreeSet};

use crate::ca::Ca;
use crate::config::{self, Identity};
use crate::control::{self, token::TokenKey};
use crate::proxy::AuthzEvent;

const BACKEND_CONFIG: &str = include_str!("demo/backend.yaml");
const MESH_CONFIG: &str = include_str!("demo/mesh.yaml");
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

/// Makes the demo's PKI under `dir/ca` and a bootstrap token per workload.
fn make_pki(dir: &Path) -> anyhow::Result<()> {
    let ca_dir = dir.join("ca");
    Ca::new(TRUST_DOMAIN, Duration::from_secs(24 * 3600))?.save(&ca_dir, true)?;
    let tokens = TokenKey::load_or_create(&ca_dir).map_err(anyhow::Error::msg)?;
    for name in ["backend", "web", "intruder"] {
        let id = Identity::parse(&format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{name}"))
            .map_err(anyhow::Error::msg)?;
        std::fs::write(
            dir.join(format!("{name}.token")),
            tokens.issue(&id, Duration::from_secs(3600)),
        )?;
    }
    Ok(())
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

async fn start(
    template: &str,
    vars: &[(&str, String)],
    observer: Option<mpsc::UnboundedSender<AuthzEvent>>,
) -> anyhow::Result<Running> {
    let cfg = config::from_yaml(&fill(template, vars))?;
    Ok(app::start(
        cfg,
        app::Options {
            observer,
            ..Default::default()
        },
    )
    .await?)
}

type Counts = (BTreeMap<String, u32>, BTreeMap<u16, u32>, BTreeSet<String>);

/// Sends `n` requests and counts answers by backend version (or error kind) and status.
async fn burst(
    c: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    n: u32,
) -> anyhow::Result<Counts> {
    let (mut by_version, mut by_status, mut callers) =
        (BTreeMap::new(), BTreeMap::new(), BTreeSet::new());
    for _ in 0..n {
        let (status, version, caller) = get(c).await?;
        *by_status.entry(status).or_insert(0) += 1;
        *by_version.entry(version).or_insert(0) += 1;
        callers.insert(caller);
    }
    Ok((by_version, by_status, callers))
}

/// The demo's HTTP app: answers with its version and the caller identity its sidecar
/// passed in `x-spoke-peer-id`; v1 fails one request in `fail_every` with a 503.
async fn demo_app(listener: TcpListener, version: &'static str, fail_every: u64) {
    use http_body_util::Full;
    use std::sync::atomic::{AtomicU64, Ordering};
    let count = std::sync::Arc::new(AtomicU64::new(0));
    while let Ok((sock, _)) = listener.accept().await {
        let count = count.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                    let peer = req
                        .headers()
                        .get("x-spoke-peer-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("(none)")
                        .to_string();
                    async move {
                        let mut r = http::Response::new(Full::new(bytes::Bytes::from(format!(
                            "hello from backend {version}; you are {peer}\n"
                        ))));
                        r.headers_mut()
                            .insert("x-version", http::HeaderValue::from_static(version));
                        if let Ok(v) = http::HeaderValue::from_str(&peer) {
                            r.headers_mut().insert("x-caller", v);
                        }
                        if fail_every > 0 && n.is_multiple_of(fail_every) {
                            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                .await;
        });
    }
}

/// A plain HTTP/1.1 client connection, as an app would open to its sidecar.
async fn client(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>> {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await?);
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends `n` requests to the catalog; how many did not get a 200.
async fn error_count(
    c: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    n: u32,
) -> anyhow::Result<u32> {
    let mut errors = 0;
    for _ in 0..n {
        if get_path(c, "/catalog/items").await?.0 != 200 {
            errors += 1;
        }
    }
    Ok(errors)
}

async fn get(
    c: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) -> anyhow::Result<(u16, String, String)> {
    get_path(c, "/hello").await
}

async fn get_path(
    c: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    path: &str,
) -> anyhow::Result<(u16, String, String)> {
    let req = http::Request::get(path)
        .header("host", "backend")
        .body(http_body_util::Empty::new())?;
    c.ready().await?;
    let resp = c.send_request(req).await?;
    let status = resp.status().as_u16();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (version, caller) = (h("x-version"), h("x-caller"));
    let kind = h("x-spoke-error");
    use http_body_util::BodyExt;
    let _ = resp.into_body().collect().await;
    Ok((
        status,
        if version.is_empty() { kind } else { version },
        caller,
    ))
}

async fn demo(dir: &Path, stop_after: Option<Duration>) -> anyhow::Result<()> {
    make_pki(dir)?;
    let dir_s = dir.display().to_string();
    let v1 = TcpListener::bind("127.0.0.1:0").await?;
    let v2 = TcpListener::bind("127.0.0.1:0").await?;
    let (v1_addr, v2_addr) = (v1.local_addr()?, v2.local_addr()?);
    // v1 is flaky: every 7th request fails with 503; retries hide it.
    tokio::spawn(demo_app(v1, "v1", 7));
    tokio::spawn(demo_app(v2, "v2", 0));
    // The catalog: three replicas, the third broken (every answer a 503).
    let mut catalog = Vec::new();
    for (name, fail_every) in [("catalog-1", 0), ("catalog-2", 0), ("catalog-3", 1)] {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        catalog.push(l.local_addr()?);
        tokio::spawn(demo_app(l, name, fail_every));
    }

    // The control plane, in this process, serving dir/mesh and signing certificates. The
    // mesh file needs the backend sidecar's addresses, so it is written once that sidecar
    // runs; until then the control plane holds the sidecars' streams (no placeholder push).
    let mesh_dir = dir.join("mesh");
    std::fs::create_dir_all(&mesh_dir)?;
    let ca_dir = dir.join("ca");
    let control = control::start(
        control::Settings {
            config_dir: Some(mesh_dir.clone()),
            ca: Ca::load(&ca_dir)?,
            tokens: TokenKey::load_or_create(&ca_dir).map_err(anyhow::Error::msg)?,
            cert_ttl: Duration::from_secs(3600),
            kubernetes: None,
        },
        TcpListener::bind("127.0.0.1:0").await?,
        TcpListener::bind("127.0.0.1:0").await?,
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    // Spans go to an OTLP receiver in this process; only a request that asks is sampled.
    let collector = TcpListener::bind("127.0.0.1:0").await?;
    let base = vec![
        ("control", control.listen.to_string()),
        ("dir", dir_s.clone()),
        ("collector", collector.local_addr()?.to_string()),
    ];
    let collected = crate::trace::collect::start(collector);

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut vars = base.clone();
    vars.extend([
        ("app_v1", v1_addr.to_string()),
        ("app_v2", v2_addr.to_string()),
    ]);
    let backend = start(BACKEND_CONFIG, &vars, Some(events_tx)).await?;
    let listener = |name: &str| {
        backend
            .listener(name)
            .ok_or_else(|| anyhow::anyhow!("listener {name} missing"))
    };
    let (b1, b2) = (listener("from-mesh-v1")?, listener("from-mesh-v2")?);
    let mesh = |w1: u32, w2: u32| {
        fill(
            MESH_CONFIG,
            &[
                ("backend_v1", b1.to_string()),
                ("backend_v2", b2.to_string()),
                ("app_v1_port", v1_addr.port().to_string()),
                ("app_v2_port", v2_addr.port().to_string()),
                ("w1", w1.to_string()),
                ("w2", w2.to_string()),
                ("catalog_1", catalog[0].to_string()),
                ("catalog_2", catalog[1].to_string()),
                ("catalog_3", catalog[2].to_string()),
            ],
        )
    };
    write_atomic(&mesh_dir.join("mesh.yaml"), &mesh(90, 10))?;
    let client_vars = |name: &str| {
        let mut v = base.clone();
        v.push(("name", name.to_string()));
        v
    };
    let web = start(CLIENT_CONFIG, &client_vars("web"), None).await?;
    let intruder = start(CLIENT_CONFIG, &client_vars("intruder"), None).await?;
    let out = |r: &Running| {
        r.listener("to-backend")
            .ok_or_else(|| anyhow::anyhow!("listener to-backend missing"))
    };
    let (web_out, intruder_out) = (out(&web)?, out(&intruder)?);
    let started = Instant::now();
    while ![&backend, &web, &intruder]
        .iter()
        .all(|r| r.shared.readiness.is_ready())
    {
        if started.elapsed() > Duration::from_secs(15) {
            anyhow::bail!("sidecars did not get certificates and config from the control plane");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    println!(
        "spoke demo: a control plane and three sidecars on loopback, trust domain {TRUST_DOMAIN}"
    );
    println!(
        "  control plane                {} (status: http://{}/status)",
        control.listen, control.stats
    );
    println!("  backend app v1 (flaky, 1 in 7 fails) {v1_addr}, v2 {v2_addr}");
    println!("  backend sidecar (mTLS in)    {b1} -> v1, {b2} -> v2; allows spiffe://{TRUST_DOMAIN}/ns/default/sa/web");
    println!("  web sidecar (app dials)      {web_out}");
    println!("  intruder sidecar (app dials) {intruder_out}");
    println!(
        "all three got certificates and config from the control plane in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    println!();

    const N: u32 = 100;
    let mut c = client(web_out).await?;
    let t = Instant::now();
    let (by_version, by_status, callers) = burst(&mut c, N).await?;
    println!(
        "web: {N} HTTP/1.1 requests -> web sidecar -> HTTP/2 + mTLS -> backend sidecar -> app, in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    println!("  route split 90/10:  statuses: {by_status:?}   versions: {by_version:?}");
    for id in &callers {
        println!("  verified peer identity the backend app saw (x-spoke-peer-id): {id}");
    }
    let wm = &web.shared.metrics;
    let retries: u64 = ["status", "reset", "connect_failure"]
        .iter()
        .map(|r| wm.retries.with_label_values(&["backend", r]).get())
        .sum();
    println!(
        "  retries that hid v1's 503s: {retries} (spoke_retries_total{{cluster=\"backend\"}})"
    );

    let traced = crate::trace::collect::show_one(&mut c, &collected).await?;

    let mut ic = client(intruder_out).await?;
    let (istatus, ikind, _) = get(&mut ic).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let denied: Vec<String> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e: &AuthzEvent| !e.allowed)
        .filter_map(|e| e.peer_id)
        .collect();
    println!(
        "intruder: HTTP {istatus} ({ikind}); the backend sidecar denied {}",
        denied.first().map(String::as_str).unwrap_or("(nobody)")
    );

    // Change the split in the mesh config while the client's connection stays open.
    let before = web.shared.snapshot.load().version.clone();
    let t = Instant::now();
    write_atomic(&mesh_dir.join("mesh.yaml"), &mesh(50, 50))?;
    while web.shared.snapshot.load().version == before {
        if t.elapsed() > Duration::from_secs(10) {
            anyhow::bail!("the new split did not arrive");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let push_ms = t.elapsed().as_secs_f64() * 1000.0;
    let (by_version2, by_status2, _) = burst(&mut c, N).await?;
    println!();
    println!(
        "mesh config changed to a 50/50 split: version {} reached the web sidecar {push_ms:.0} ms after the file changed",
        web.shared.snapshot.load().version
    );
    println!("  route split 50/50:  statuses: {by_status2:?}   versions: {by_version2:?}");

    // A broken replica: outlier detection takes it out and the errors stop.
    let (first, rest) = (
        error_count(&mut c, 20).await?,
        error_count(&mut c, 40).await?,
    );
    let ejected = wm.outlier_ejections.with_label_values(&["catalog"]).get();
    let snap = web.shared.snapshot.load_full();
    let states: Vec<String> = snap
        .cluster("catalog")
        .map(|cl| {
            let now = crate::balance::now_ms();
            cl.endpoints()
                .iter()
                .map(|e| {
                    let st = match e.ejected_for(now) {
                        Some(ms) => format!("ejected for {}s", ms / 1000),
                        None => "healthy".into(),
                    };
                    format!("{} {st}", e.address)
                })
                .collect()
        })
        .unwrap_or_default();
    println!();
    println!("catalog: 3 replicas, catalog-3 answers every request with 503");
    println!("  first 20 requests: {first} errors; it was ejected (spoke_outlier_ejections_total{{cluster=\"catalog\"}} = {ejected})");
    println!("  next 40 requests:  {rest} errors");
    println!("  endpoints: {}", states.join(", "));

    println!();
    println!("request metrics (web sidecar, outbound):");
    for cluster in ["backend", "backend-v2"] {
        let h = wm
            .request_duration
            .with_label_values(&["outbound", cluster, "to-backend"]);
        let n = h.get_sample_count();
        let mean_ms = if n > 0 {
            h.get_sample_sum() / n as f64 * 1000.0
        } else {
            0.0
        };
        println!(
            "  spoke_requests_total{{cluster=\"{cluster}\",code=\"200\"}} = {:>3}   mean latency {mean_ms:.2} ms",
            wm.requests
                .with_label_values(&["outbound", cluster, "200", "to-backend"])
                .get()
        );
    }
    println!("where to look:");
    println!("  control plane: curl http://{}/status", control.stats);
    println!(
        "  metrics:       curl http://{}/metrics   (backend: http://{}/metrics)",
        web.stats, backend.stats
    );
    println!("  config dump:   curl http://{}/config_dump", web.admin);
    println!("  try it:        curl -s http://{web_out}/hello");
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
    drop(c);
    drop(ic);
    for r in [web, intruder, backend] {
        r.shutdown().await;
    }
    drop(control);
    println!("demo stopped");
    let ok = by_status.get(&200).copied().unwrap_or(0) + by_status2.get(&200).copied().unwrap_or(0);
    let v2_after = by_version2.get("v2").copied().unwrap_or(0);
    if ok != 2 * N
        || istatus != 403
        || callers.len() != 1
        || v2_after < 20
        || rest != 0
        || traced < 2
    {
        anyhow::bail!(
            "the demo did not behave: {ok}/{} ok, intruder got {istatus}, v2 after the change {v2_after}, catalog errors after the ejection {rest}, {traced} spans of the traced request",
            2 * N
        );
    }
    Ok(())
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
