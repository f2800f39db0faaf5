//! Memory at rest, from the real binary: once the proxy turns quiet after start-up or after
//! traffic it unmaps its start-up code and lets pooled upstream connections go (counted in
//! `spoke_memory_*`), keeps serving afterwards, and does none of it with `SPOKE_IDLE_TRIM=0`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::pki::TempDir;
use support::*;

/// An HTTP/1.1 keep-alive app answering `ok` to every request; counts the connections it
/// accepted.
fn app() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || serve(s));
        }
    });
    (port, accepted)
}

fn serve(s: TcpStream) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        // Request line and headers (GETs without a body) up to the blank line.
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// `n` GETs over one keep-alive connection to the proxy; all must be answered `ok`.
fn requests(port: u16, n: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        s.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n").unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\nok") {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "proxy closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..k]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
}

fn counter(stats: u16, name: &str) -> f64 {
    let (_, body) = http_blocking(stats, "GET", "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not exported"))
}

fn wait_counter(stats: u16, name: &str, at_least: f64) -> f64 {
    let start = Instant::now();
    loop {
        let v = counter(stats, name);
        if v >= at_least {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} still {v}, want >= {at_least}"
        );
        // Scrapes are work too (a debug build's more than 1% of a second if frequent): a
        // slow poll leaves whole quiet ticks between them.
        std::thread::sleep(Duration::from_millis(2500));
    }
}

/// Starts `spoke proxy` with an HTTP listener in front of a fresh `app()`.
fn start(trim: Option<&str>) -> (Proc, TempDir, u16, u16, Arc<AtomicUsize>) {
    let (app_port, accepted) = app();
    let dir = TempDir::new("rest");
    let (lp, sp) = (free_port(), free_port());
    let cfg = dir.0.join("proxy.yaml");
    std::fs::write(
        &cfg,
        format!(
            "admin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:{sp} }}\n\
             listeners: [ {{ name: web, address: 127.0.0.1:{lp}, protocol: http, cluster: app }} ]\n\
             clusters: [ {{ name: app, endpoints: [ {{ address: \"127.0.0.1:{app_port}\" }} ] }} ]\n"
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_spoke"));
    cmd.args([
        "proxy",
        "--config",
        cfg.to_str().unwrap(),
        "--log-level",
        "warn",
    ])
    .env("TOKIO_WORKER_THREADS", "1")
    .stderr(std::process::Stdio::null());
    match trim {
        Some(v) => cmd.env("SPOKE_IDLE_TRIM", v),
        None => cmd.env_remove("SPOKE_IDLE_TRIM"),
    };
    let p = Proc(cmd.spawn().expect("cannot start spoke"));
    wait_ready(sp);
    (p, dir, lp, sp, accepted)
}

#[test]
fn a_quiet_proxy_releases_start_up_code_and_pooled_connections_and_serves_on() {
    let (_p, _dir, lp, sp, accepted) = start(None);
    // The first quiet second after start-up: start-up code (CLI, config parsing, set-up)
    // unmapped, megabytes of it in any build.
    wait_counter(sp, "spoke_memory_trims_total", 1.0);
    let released = counter(sp, "spoke_memory_code_released_bytes_total");
    assert!(released >= 1024.0 * 1024.0, "released {released} B");

    // Traffic over one pooled upstream connection, then quiet: the pool lets it go.
    let trims = counter(sp, "spoke_memory_trims_total");
    requests(lp, 2000);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    wait_counter(sp, "spoke_memory_trims_total", trims + 1.0);
    assert!(counter(sp, "spoke_memory_code_released_bytes_total") > released);

    // Still serving: the code faults back in, and the next request dials afresh.
    requests(lp, 3);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn spoke_idle_trim_0_keeps_code_and_connections() {
    let (_p, _dir, lp, sp, accepted) = start(Some("0"));
    requests(lp, 2000);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(counter(sp, "spoke_memory_trims_total"), 0.0);
    assert_eq!(counter(sp, "spoke_memory_code_released_bytes_total"), 0.0);
    requests(lp, 3);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the pooled connection stayed"
    );
}

#[test]
fn idle_trim_takes_a_boolean_and_refuses_anything_else() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args([
            "proxy",
            "--config",
            "/nonexistent.yaml",
            "--idle-trim",
            "maybe",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--idle-trim") && err.contains("maybe"),
        "{err}"
    );
}
