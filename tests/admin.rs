//! The admin server's introspection: `/certs`, `/server_info`, `/listeners`, and
//! `/config_dump`: JSON of what the proxy uses, and `?format=yaml`, a file that `spoke
//! proxy` accepts and that starts an identical proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::pki::*;
use support::*;

async fn get_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = within(http(addr, "GET", path)).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[tokio::test]
async fn certs_server_info_and_listeners() {
    let pki = Pki::new("cluster.local");
    let files = pki.issue("web", WEB);
    let p = proxy(&format!(
        "{BASE}node: {{ id: web-0 }}\n{}listeners: [ {{ name: in, address: 127.0.0.1:0, direction: inbound, forward: 127.0.0.1:8080 }} ]\n",
        files.yaml("")
    ))
    .await;
    let certs = get_json(p.admin, "/certs").await;
    let w = &certs["workload"];
    assert_eq!(w["identity"], WEB, "{certs}");
    assert_eq!(w["source"], "files");
    assert!(!w["serial"].as_str().unwrap().is_empty(), "{certs}");
    assert!(w["not_after"].as_i64().unwrap() > w["not_before"].as_i64().unwrap());
    assert_eq!(w["days_left"], 0, "a one-hour certificate: {certs}");
    assert!(
        certs["roots"][0]["subject"]
            .as_str()
            .unwrap()
            .contains("CN="),
        "{certs}"
    );

    let info = get_json(p.admin, "/server_info").await;
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["node_id"], "web-0");
    assert_eq!(info["state"], "ready");
    assert!(info["config_version"]
        .as_str()
        .unwrap()
        .starts_with("static-"));
    assert!(info["workers"].as_u64().unwrap() >= 1, "{info}");
    assert!(info["control"].is_null());

    let listeners = get_json(p.admin, "/listeners").await;
    let l = &listeners[0];
    assert_eq!(l["name"], "in");
    assert_eq!(l["address"], p.listener("in").unwrap().to_string());
    assert_eq!(l["configured_address"], "127.0.0.1:0");
    assert_eq!(
        (l["direction"].as_str(), l["state"].as_str()),
        (Some("inbound"), Some("active"))
    );

    // Without a certificate: no workload, no roots.
    let plain = proxy(BASE).await;
    let certs = get_json(plain.admin, "/certs").await;
    assert!(certs["workload"].is_null(), "{certs}");
}

#[tokio::test]
async fn config_dump_shows_what_is_used_and_its_yaml_starts_an_identical_proxy() {
    let up = echo().await;
    let (lp, ap, sp) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "node: {{ id: dumped }}\nadmin: {{ address: 127.0.0.1:{ap} }}\nstats: {{ address: 127.0.0.1:{sp} }}\n\
         listeners: [ {{ name: web, address: 127.0.0.1:{lp}, protocol: http, cluster: c, upgrades: [] }} ]\n\
         clusters: [ {{ name: c, connect_timeout: 250ms, endpoints: [ {{ address: \"{up}\", weight: 3 }} ] }} ]\n\
         routes:\n  - match: {{ path_prefix: /api, headers: [ {{ name: x-v, exact: \"2\" }} ] }}\n    cluster: c\n    timeout: 2s\n    retry: {{ attempts: 1, on: [ \"503\", reset ] }}\n\
         inbound: [ {{ port: 8080, tls: disabled }} ]\n"
    );
    let p = proxy(&yaml).await;
    let first = get_json(p.admin, "/config_dump").await;
    // Only what the proxy uses: no mesh workloads, no empty services, no hash key for a
    // balancer that does not hash; the breaker and outlier defaults are in force, so shown.
    assert!(first.get("workloads").is_none(), "{first}");
    assert!(first.get("services").is_none(), "{first}");
    assert!(first["clusters"][0].get("hash_on").is_none(), "{first}");
    assert_eq!(
        first["clusters"][0]["circuit_breaker"]["max_requests"],
        1024
    );
    assert_eq!(
        first["clusters"][0]["outlier_detection"]["consecutive_gateway_errors"],
        5
    );
    assert_eq!(first["clusters"][0]["connect_timeout"], "250ms");
    let (status, dump) = within(http(p.admin, "GET", "/config_dump?format=yaml")).await;
    assert_eq!(status, 200);
    within(p.shutdown()).await;
    // The aborted admin and stats tasks drop their sockets when the runtime next runs them.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let dir = TempDir::new("dump");
    let file = dir.0.join("dump.yaml");
    std::fs::write(&file, &dump).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args(["check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}\n{dump}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut again = spawn_spoke(&["proxy", "--config", file.to_str().unwrap()], true);
    let start = Instant::now();
    while http_blocking(sp, "GET", "/ready").map(|r| r.0) != Some(200) {
        if start.elapsed() > Duration::from_secs(10) || again.0.try_wait().unwrap().is_some() {
            let _ = again.0.kill();
            let err = std::io::read_to_string(again.0.stderr.take().unwrap()).unwrap();
            panic!("the dumped config did not start:\n{err}\n{dump}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, body) = http_blocking(ap, "GET", "/config_dump").unwrap();
    let second: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(second, first, "{dump}");
    // And it proxies.
    let (status, _) = within(http(([127, 0, 0, 1], lp).into(), "GET", "/api")).await;
    assert!(status > 0);
}
