//! The `spoke` binary as a user runs it: `check`, `proxy` start-up errors, SIGTERM drain of
//! a live connection, admin endpoints, log level changes, and `demo`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_spoke");

fn write_tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spoke-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_reports_every_error_and_exits_2() {
    let bad = write_tmp(
        "bad.yaml",
        "listeners:\n  - { name: l, address: 127.0.0.1:9000, protocol: tcp, cluster: missing }\nclusters:\n  - { name: c, endpoints: [ { address: \"10.0.0.1\" } ], connect_timeout: 3 }\n",
    );
    let (code, out, err) = run(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("listeners[0].cluster: cluster \"missing\" is not defined"),
        "{err}"
    );
    assert!(
        err.contains("clusters[0].endpoints[0].address: \"10.0.0.1\" is not host:port"),
        "{err}"
    );
    assert!(err.contains("clusters[0].connect_timeout"), "{err}");

    let good = write_tmp(
        "good.yaml",
        "listeners:\n  - { name: l, address: 127.0.0.1:9000, protocol: tcp, cluster: c }\nclusters:\n  - { name: c, endpoints: [ { address: 10.0.0.1:80 } ] }\n",
    );
    let (code, out, _) = run(&["check", good.to_str().unwrap()]);
    assert_eq!((code, out.trim()), (0, "ok"));

    let syntax = write_tmp("syntax.yaml", "listeners: [ { name: l\n");
    let unknown = write_tmp("unknown.yaml", "listeners: []\nlisterners: []\n");
    let (code, _, err) = run(&["check", syntax.to_str().unwrap(), unknown.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("syntax.yaml:1:14: syntax:"), "{err}");
    assert!(
        err.contains(
            "unknown.yaml:2:1: listerners: unknown field `listerners`; did you mean `listeners`?"
        ),
        "{err}"
    );

    let (code, _, err) = run(&["check", "/nonexistent/spoke.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(run(&["proxy"]).0, 2);
    assert_eq!(run(&["no-such-command"]).0, 2);
    assert_eq!(run(&["--help"]).0, 0);
}

#[test]
fn proxy_refuses_invalid_or_unsupported_config() {
    let bad = write_tmp(
        "invalid.yaml",
        "clusters: [ { name: c, endpoints: [ { address: nope } ] } ]\n",
    );
    let (code, _, err) = run(&["proxy", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("clusters[0].endpoints[0].address"), "{err}");

    let routes = write_tmp(
        "routes.yaml",
        "admin: { address: 127.0.0.1:0 }\nstats: { address: 127.0.0.1:0 }\nlisteners: [ { name: out, address: 127.0.0.1:0, capture: outbound } ]\n",
    );
    let (code, _, err) = run(&["proxy", "--config", routes.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("listeners[0].capture: transparent outbound capture is not supported"),
        "{err}"
    );

    let admin = write_tmp(
        "admin.yaml",
        "admin: { address: 0.0.0.0:0 }\nstats: { address: 127.0.0.1:0 }\n",
    );
    let (code, _, err) = run(&["proxy", "--config", admin.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("--unsafe-admin"), "{err}");
}

#[test]
fn sigterm_drains_a_live_connection_then_exits_0() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(echo());
    let (lp, ap, sp) = (free_port(), free_port(), free_port());
    let cfg = write_tmp(
        "drain.yaml",
        &format!(
            "admin: {{ address: 127.0.0.1:{ap} }}\nstats: {{ address: 127.0.0.1:{sp} }}\ndrain_timeout: 10s\naccess_log: true\n\
             listeners: [ {{ name: l, address: 127.0.0.1:{lp}, protocol: tcp, cluster: c }} ]\n\
             clusters: [ {{ name: c, endpoints: [ {{ address: \"{up}\" }} ] }} ]\n"
        ),
    );
    let start = Instant::now();
    let mut p = spawn_spoke(
        &[
            "proxy",
            "--config",
            cfg.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        true,
    );
    wait_ready(sp);
    eprintln!("ready after {:?}", start.elapsed());

    let mut live = std::net::TcpStream::connect(("127.0.0.1", lp)).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    live.write_all(b"one").unwrap();
    let mut b = [0u8; 3];
    live.read_exact(&mut b).unwrap();

    Command::new("kill")
        .args(["-TERM", &p.0.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(http_blocking(sp, "GET", "/ready").map(|r| r.0), Some(503));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", lp)).is_err(),
        "still accepting"
    );
    live.write_all(b"two").unwrap();
    live.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"two");
    assert!(
        p.0.try_wait().unwrap().is_none(),
        "exited before the connection closed"
    );
    drop(live);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit after drain");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    p.0.stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    // One JSON access event for the connection, with bytes both ways.
    let access = logs
        .lines()
        .find(|l| l.contains("\"target\":\"access\""))
        .unwrap_or_else(|| panic!("no access log in {logs}"));
    let v: serde_json::Value = serde_json::from_str(access).unwrap();
    assert_eq!(v["bytes_rx"], 6);
    assert_eq!(v["bytes_tx"], 6);
    assert_eq!(v["cluster"], "c");
    assert_eq!(v["outcome"], "closed");
}

#[test]
fn admin_endpoints_methods_and_logging() {
    let (ap, sp) = (free_port(), free_port());
    let cfg = write_tmp(
        "admin-ok.yaml",
        &format!(
            "admin: {{ address: 127.0.0.1:{ap} }}\nstats: {{ address: 127.0.0.1:{sp} }}\n\
             listeners: [ {{ name: l, address: 127.0.0.1:0, protocol: tcp, cluster: c }} ]\n\
             clusters: [ {{ name: c, connect_timeout: 250ms, endpoints: [ {{ address: 127.0.0.1:9, weight: 2 }} ] }} ]\n"
        ),
    );
    let _p = spawn_spoke(&["proxy", "--config", cfg.to_str().unwrap()], false);
    wait_ready(sp);
    assert_eq!(http_blocking(sp, "GET", "/live").unwrap().0, 200);
    assert_eq!(http_blocking(ap, "GET", "/drain").unwrap().0, 405);
    assert_eq!(http_blocking(ap, "GET", "/logging").unwrap().0, 405);
    assert_eq!(http_blocking(sp, "POST", "/metrics").unwrap().0, 405);
    assert_eq!(
        http_blocking(ap, "POST", "/logging?level=debug").unwrap().0,
        200
    );
    assert_eq!(
        http_blocking(ap, "POST", "/logging?level=spoke%3Dloudest")
            .unwrap()
            .0,
        400
    );
    let (code, body) = http_blocking(ap, "GET", "/config_dump").unwrap();
    assert_eq!(code, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["clusters"][0]["name"], "c");
    assert_eq!(dump["clusters"][0]["connect_timeout"], "250ms");
    assert_eq!(dump["clusters"][0]["endpoints"][0]["weight"], 2);
    assert_eq!(dump["listeners"][0]["cluster"], "c");
    assert!(dump["version"].as_str().unwrap().starts_with("static-"));
    let (code, body) = http_blocking(ap, "GET", "/clusters").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("127.0.0.1:9"));
    // The stats server is read-only: no admin endpoints there.
    assert_eq!(http_blocking(sp, "GET", "/config_dump").unwrap().0, 404);
}

#[test]
fn demo_runs_and_stops_by_itself() {
    let out = Command::new(BIN)
        .args(["demo", "--duration", "1s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("statuses: {200: 100}"), "{text}");
    assert!(
        text.contains("verified peer identity the backend app saw (x-spoke-peer-id): spiffe://cluster.local/ns/default/sa/web"),
        "{text}"
    );
    assert!(text.contains("intruder: HTTP 403 (unauthorized)"), "{text}");
    assert!(
        text.contains("route split 50/50:  statuses: {200: 100}"),
        "{text}"
    );
    assert!(
        text.contains("got certificates and config from the control plane"),
        "{text}"
    );
    assert!(
        text.contains("spoke_requests_total{cluster=\"backend-v2\",code=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("/metrics"), "{text}");
    // The broken catalog replica is ejected and its errors stop.
    assert!(text.contains("next 40 requests:  0 errors"), "{text}");
    assert!(text.contains("ejected for"), "{text}");
    // A newcomer's first screen warns only about what it shows (the intruder, the broken
    // replica's ejection): no NACK of a placeholder mesh pushed before the real one.
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("WARN") && !l.contains("authz: request denied"))
        .filter(|l| !(l.contains("outlier: endpoint ejected") && l.contains("cluster=catalog")))
        .collect();
    assert!(warnings.is_empty(), "{err}");
    assert!(!err.contains("NACK") && !err.contains("rejected"), "{err}");
}

#[test]
fn ca_init_and_issue_write_files_with_safe_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("spoke-ca-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = dir.join("ca");
    let web = dir.join("web");
    let (code, out, err) = run(&[
        "ca",
        "init",
        "--out",
        ca.to_str().unwrap(),
        "--trust-domain",
        "example.org",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(ca.join("root.key")), 0o600);
    // Refuses to overwrite without --force.
    let (code, _, err) = run(&[
        "ca",
        "init",
        "--out",
        ca.to_str().unwrap(),
        "--trust-domain",
        "example.org",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--force"), "{err}");
    let id = "spiffe://example.org/ns/default/sa/web";
    let (code, _, err) = run(&[
        "ca",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--id",
        id,
        "--out",
        web.to_str().unwrap(),
        "--validity",
        "2h",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode(web.join("key.pem")), 0o600);
    let (code, _, _) = run(&[
        "ca",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--id",
        id,
        "--out",
        web.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    let (code, _, _) = run(&[
        "ca",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--id",
        id,
        "--out",
        web.to_str().unwrap(),
        "--force",
        "--validity",
        "2h",
    ]);
    assert_eq!(code, 0);
    // The issued set is valid material for the proxy: one URI SAN, CA:FALSE, within dates.
    let m = spoke::tls::load_material(
        &std::fs::read(web.join("cert.pem")).unwrap(),
        &std::fs::read(web.join("key.pem")).unwrap(),
        &std::fs::read(web.join("root.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(m.identity.as_str(), id);
    let lifetime = m.not_after - m.not_before;
    assert!((2 * 3600..2 * 3600 + 600).contains(&lifetime), "{lifetime}");
    // Wrong trust domain and malformed ids are refused.
    let (code, _, err) = run(&[
        "ca",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--id",
        "spiffe://other.org/ns/a/sa/b",
        "--out",
        dir.join("x").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("trust domain"), "{err}");
    let (code, _, _) = run(&[
        "ca",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--id",
        "web",
        "--out",
        dir.join("y").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two proxy processes with certificates from `spoke ca`: the inbound one logs the
/// caller's verified identity in its access event.
#[test]
fn mtls_between_processes_logs_the_peer_identity() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(echo());
    let dir = std::env::temp_dir().join(format!("spoke-mtls-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = dir.join("ca");
    assert_eq!(run(&["ca", "init", "--out", ca.to_str().unwrap()]).0, 0);
    let web_id = "spiffe://cluster.local/ns/default/sa/web";
    let backend_id = "spiffe://cluster.local/ns/default/sa/backend";
    for (name, id) in [("web", web_id), ("backend", backend_id)] {
        let out = dir.join(name);
        assert_eq!(
            run(&[
                "ca",
                "issue",
                "--ca",
                ca.to_str().unwrap(),
                "--id",
                id,
                "--out",
                out.to_str().unwrap()
            ])
            .0,
            0
        );
    }
    let tls = |name: &str| {
        let d = dir.join(name);
        format!(
            "tls: {{ cert: {}, key: {}, roots: {} }}\n",
            d.join("cert.pem").display(),
            d.join("key.pem").display(),
            d.join("root.pem").display()
        )
    };
    let (in_port, in_stats, out_port, out_stats) =
        (free_port(), free_port(), free_port(), free_port());
    let server_cfg = write_tmp(
        "mtls-server.yaml",
        &format!(
            "admin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:{in_stats} }}\n{}\
             listeners: [ {{ name: in, address: 127.0.0.1:{in_port}, direction: inbound, forward: \"{app}\", access_log: true }} ]\n\
             inbound: [ {{ port: {}, tls: strict, allow: [ \"{web_id}\" ] }} ]\n",
            tls("backend"),
            app.port()
        ),
    );
    let client_cfg = write_tmp(
        "mtls-client.yaml",
        &format!(
            "admin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:{out_stats} }}\naccess_log: true\n{}\
             listeners: [ {{ name: out, address: 127.0.0.1:{out_port}, protocol: tcp, cluster: backend }} ]\n\
             clusters: [ {{ name: backend, tls: {{ identity: \"{backend_id}\" }}, endpoints: [ {{ address: \"127.0.0.1:{in_port}\" }} ] }} ]\n",
            tls("web")
        ),
    );
    let spawn = |cfg: &PathBuf| {
        spawn_spoke(
            &[
                "proxy",
                "--config",
                cfg.to_str().unwrap(),
                "--log-format",
                "json",
            ],
            true,
        )
    };
    let mut server = spawn(&server_cfg);
    let mut client = spawn(&client_cfg);
    wait_ready(in_stats);
    wait_ready(out_stats);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", out_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"who am i").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).unwrap();
    assert_eq!(back, "who am i");
    std::thread::sleep(Duration::from_millis(200));
    for p in [&mut server, &mut client] {
        Command::new("kill")
            .args(["-TERM", &p.0.id().to_string()])
            .status()
            .unwrap();
        assert_eq!(p.0.wait().unwrap().code(), Some(0));
    }
    let mut logs = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let access: serde_json::Value = logs
        .lines()
        .filter(|l| l.contains("\"target\":\"access\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .next()
        .unwrap_or_else(|| panic!("no access event in {logs}"));
    assert_eq!(access["peer_id"], web_id, "{access}");
    assert_eq!(access["bytes_rx"], 8);
    let mut logs = String::new();
    client
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(
        logs.contains(&format!("\"upstream_id\":\"{backend_id}\"")),
        "{logs}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
