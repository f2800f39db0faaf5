//! Logs as an operator reads them, from the real binary: no colour codes in a pipe, each
//! start-up error once, access events only when `access_log` asks for them (whatever the
//! level) and without empty fields, and one event per failed request with its tries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use support::pki::TempDir;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_spoke");

/// Runs a proxy from `yaml` with `args`, lets `drive` send traffic, stops it with SIGTERM
/// and returns everything it wrote to stderr.
fn logs_of(yaml: &str, args: &[&str], drive: impl FnOnce(u16)) -> String {
    logs_with_admin(yaml, args, |lp, _| drive(lp))
}

/// The same, with the admin port for `drive` too (listener port, admin port).
fn logs_with_admin(yaml: &str, args: &[&str], drive: impl FnOnce(u16, u16)) -> String {
    let dir = TempDir::new("logs");
    let (lp, sp, ap) = (free_port(), free_port(), free_port());
    let cfg = dir.0.join("proxy.yaml");
    std::fs::write(
        &cfg,
        format!(
            "admin: {{ address: 127.0.0.1:{ap} }}\nstats: {{ address: 127.0.0.1:{sp} }}\n{}",
            yaml.replace("{port}", &lp.to_string())
        ),
    )
    .unwrap();
    let mut all = vec!["proxy", "--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut p = spawn_spoke(&all, true);
    wait_ready(sp);
    drive(lp, ap);
    Command::new("kill")
        .args(["-TERM", &p.0.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(p.0.wait().unwrap().code(), Some(0));
    let mut logs = String::new();
    p.0.stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    logs
}

fn get(port: u16) -> u16 {
    http_blocking(port, "GET", "/x").map(|r| r.0).unwrap_or(0)
}

#[test]
fn logs_to_a_pipe_have_no_escape_codes_and_access_is_off_by_default() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(echo());
    let yaml = format!(
        "listeners: [ {{ name: l, address: 127.0.0.1:{{port}}, protocol: tcp, cluster: c }} ]\n\
         clusters: [ {{ name: c, endpoints: [ {{ address: \"{up}\" }} ] }} ]\n"
    );
    let logs = logs_of(&yaml, &["--log-level", "debug"], |lp| {
        assert_eq!(
            rt.block_on(within(roundtrip(([127, 0, 0, 1], lp).into(), b"hi")))
                .unwrap(),
            b"hi"
        );
    });
    assert!(logs.contains("spoke proxy ready"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "escape codes in a pipe:\n{logs}");
    // At debug, but access_log is off: no access event.
    assert!(!logs.contains(" access:"), "{logs}");
}

#[test]
fn access_events_follow_the_switch_not_the_level_and_have_no_empty_fields() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(echo());
    let yaml = format!(
        "access_log: true\n\
         listeners: [ {{ name: l, address: 127.0.0.1:{{port}}, protocol: tcp, cluster: c }} ]\n\
         clusters: [ {{ name: c, endpoints: [ {{ address: \"{up}\" }} ] }} ]\n"
    );
    let logs = logs_of(
        &yaml,
        &["--log-level", "warn", "--log-format", "json"],
        |lp| {
            assert_eq!(
                rt.block_on(within(roundtrip(([127, 0, 0, 1], lp).into(), b"hi")))
                    .unwrap(),
                b"hi"
            );
        },
    );
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.contains("\"target\":\"access\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(access.len(), 1, "{logs}");
    let a = &access[0];
    assert!(a["duration_us"].is_u64(), "{a}");
    assert!(a.get("duration_ms").is_none(), "{a}");
    // Plaintext, outbound: there is no peer or upstream identity, so no such field.
    assert!(
        a.get("peer_id").is_none() && a.get("upstream_id").is_none(),
        "{a}"
    );
    for (k, v) in a.as_object().unwrap() {
        assert_ne!(v, "", "empty field {k}: {a}");
    }

    // A listener may turn it off under a top-level `true`.
    let yaml = yaml.replace("protocol: tcp,", "protocol: tcp, access_log: false,");
    let logs = logs_of(&yaml, &["--log-format", "json"], |lp| {
        rt.block_on(within(roundtrip(([127, 0, 0, 1], lp).into(), b"hi")))
            .unwrap();
    });
    assert!(!logs.contains("\"target\":\"access\""), "{logs}");
}

#[test]
fn a_failed_request_is_one_event_with_its_tries() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = rt.block_on(async { (refused().await, refused().await) });
    let yaml = format!(
        "access_log: true\n\
         listeners: [ {{ name: web, address: 127.0.0.1:{{port}}, protocol: http, cluster: c }} ]\n\
         clusters: [ {{ name: c, endpoints: [ {{ address: \"{a}\" }}, {{ address: \"{b}\" }} ] }} ]\n\
         routes: [ {{ match: {{ path_prefix: / }}, cluster: c, retry: {{ attempts: 2, on: [ connect-failure ], backoff: 1ms }} }} ]\n"
    );
    let logs = logs_of(&yaml, &[], |lp| assert_eq!(get(lp), 502));
    let failed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{logs}");
    assert!(failed[0].contains("tries=3"), "{}", failed[0]);
    assert!(
        failed[0].contains("kind=\"connect_refused\""),
        "{}",
        failed[0]
    );
    assert!(
        !logs.contains("WARN spoke::proxy::connect"),
        "per-try warnings:\n{logs}"
    );
    // The access line: integer microseconds, no empty values.
    let access = logs
        .lines()
        .find(|l| l.contains(" access: http"))
        .expect(&logs);
    assert!(!access.contains("=\"\""), "{access}");
    assert!(access.contains("duration_us="), "{access}");
    assert!(!access.contains("duration_ms"), "{access}");
}

#[test]
fn each_start_up_error_is_printed_once() {
    let dir = TempDir::new("logs-start");
    let cfg = dir.0.join("bad.yaml");
    std::fs::write(
        &cfg,
        "admin: { address: 127.0.0.1:0 }\nstats: { address: 127.0.0.1:0 }\nclusters: [ { name: c, endpoints: [ { address: nope } ] } ]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["proxy", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("clusters[0].endpoints[0].address").count(),
        1,
        "{err}"
    );
    // A port already in use: exit 1, said once.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    std::fs::write(
        &cfg,
        format!("admin: {{ address: 127.0.0.1:{port} }}\nstats: {{ address: 127.0.0.1:0 }}\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["proxy", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("cannot bind").count(), 1, "{err}");
}

/// Log lines are written by a thread of their own: a stderr pipe that nobody reads (a
/// stuck log collector) fills up, and traffic still flows; lines beyond the queue are
/// dropped instead of blocking a worker.
#[test]
fn a_stuck_log_pipe_never_stalls_traffic() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(echo());
    let dir = TempDir::new("logs-stuck");
    let (lp, sp) = (free_port(), free_port());
    let cfg = dir.0.join("proxy.yaml");
    std::fs::write(
        &cfg,
        format!(
            "admin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:{sp} }}\naccess_log: true\n\
             listeners: [ {{ name: l, address: 127.0.0.1:{lp}, protocol: tcp, cluster: c }} ]\n\
             clusters: [ {{ name: c, endpoints: [ {{ address: \"{up}\" }} ] }} ]\n"
        ),
    )
    .unwrap();
    // Piped and never read: the pipe (64 KiB) is full after a few hundred access lines.
    let p = spawn_spoke(
        &[
            "proxy",
            "--config",
            cfg.to_str().unwrap(),
            "--log-level",
            "debug",
        ],
        true,
    );
    wait_ready(sp);
    let addr = ([127, 0, 0, 1], lp).into();
    rt.block_on(async {
        for i in 0..3000 {
            let got = tokio::time::timeout(Duration::from_secs(5), roundtrip(addr, b"hi"))
                .await
                .unwrap_or_else(|_| panic!("connection {i} stalled behind the log pipe"))
                .unwrap();
            assert_eq!(got, b"hi");
        }
    });
    drop(p);
}

#[test]
fn http_access_lines_follow_the_filter_and_keep_their_fields_in_order() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (up, _) = rt.block_on(support::http::start_app("app"));
    let yaml = format!(
        "access_log: true\n\
         listeners: [ {{ name: web, address: 127.0.0.1:{{port}}, protocol: http, cluster: c }} ]\n\
         clusters: [ {{ name: c, endpoints: [ {{ address: \"{up}\" }} ] }} ]\n"
    );

    // JSON at warn: the line is written whatever the level, fields in the event's order.
    let logs = logs_of(
        &yaml,
        &["--log-level", "warn", "--log-format", "json"],
        |lp| assert_eq!(get(lp), 200),
    );
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"target\":\"access\""))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["message"], "http", "{v}");
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["listener"], "web", "{v}");
    assert_eq!(v["direction"], "outbound", "{v}");
    assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["authority"], "x", "{v}");
    assert_eq!(v["path"], "/x", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["duration_us"].is_u64(), "{v}");
    assert_eq!(v["cluster"], "c", "{v}");
    assert_eq!(v["endpoint"], up.to_string(), "{v}");
    assert_eq!(v["retries"], 0, "{v}");
    for absent in ["peer_id", "upstream_id", "error", "trace_id", "span_id"] {
        assert!(v.get(absent).is_none(), "{absent}: {v}");
    }
    let order = [
        "timestamp",
        "level",
        "message",
        "listener",
        "direction",
        "peer",
        "method",
        "authority",
        "path",
        "status",
        "duration_us",
        "cluster",
        "endpoint",
        "retries",
        "target",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|k| lines[0].find(&format!("\"{k}\":")).expect(k))
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{}", lines[0]);

    // Plain: bare and quoted values as the fmt layer wrote them.
    let logs = logs_of(&yaml, &["--log-level", "warn"], |lp| {
        assert_eq!(get(lp), 200)
    });
    let line = logs
        .lines()
        .find(|l| l.contains(" access: http"))
        .expect(&logs);
    assert!(
        line.contains(" INFO access: http listener=web direction=\"outbound\" peer=127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains(" method=GET authority=\"x\" path=\"/x\" status=200 duration_us="),
        "{line}"
    );
    assert!(
        line.ends_with(&format!(" cluster=\"c\" endpoint={up} retries=0")),
        "{line}"
    );

    // A filter that names `access` turns the lines off, as it does the events.
    let logs = logs_of(&yaml, &["--log-level", "info,access=off"], |lp| {
        assert_eq!(get(lp), 200)
    });
    assert!(!logs.contains(" access: "), "{logs}");

    // And a filter set at run time through the admin endpoint turns them on and off again
    // (the writer keeps the filter's answer until the filter changes).
    let post = |ap: u16, level: &str| {
        let r = http_blocking(ap, "POST", &format!("/logging?level={level}"));
        assert_eq!(r.map(|r| r.0), Some(200), "{level}");
    };
    let at = |lp: u16, path: &str| {
        let r = http_blocking(lp, "GET", path).map(|r| r.0);
        assert_eq!(r, Some(200), "{path}");
    };
    let logs = logs_with_admin(&yaml, &["--log-level", "info,access=off"], |lp, ap| {
        at(lp, "/first-off");
        post(ap, "info");
        at(lp, "/then-on");
        post(ap, "info,access%3Doff");
        at(lp, "/off-again");
    });
    let paths: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" access: http"))
        .filter_map(|l| l.split(" path=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(paths, ["/then-on"], "{logs}");
}
