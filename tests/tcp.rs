//! TCP proxying end to end on 127.0.0.1: echo upstreams, weighted round robin, refused and
//! black-holed endpoints, half-close, idle timeout, connection limit, and drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn one_cluster(endpoints: &[String], extra_cluster: &str, extra_listener: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{{ address: \"{e}\" }}"))
        .collect();
    format!(
        "admin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:0 }}\n\
         listeners:\n  - {{ name: l, address: 127.0.0.1:0, protocol: tcp, cluster: c{extra_listener} }}\n\
         clusters:\n  - {{ name: c, lb: round_robin, endpoints: [ {} ]{extra_cluster} }}\n",
        eps.join(", ")
    )
}

#[tokio::test]
async fn echoes_and_counts_bytes() {
    let up = echo().await;
    let p = proxy(&one_cluster(&[up.to_string()], "", "")).await;
    let l = p.listener("l").unwrap();
    for i in 0..10 {
        let msg = format!("hello {i}");
        assert_eq!(
            within(roundtrip(l, msg.as_bytes())).await.unwrap(),
            msg.as_bytes()
        );
    }
    // A large transfer crosses many reads and grows the buffers.
    let big = vec![7u8; 3 * 1024 * 1024 + 17];
    assert_eq!(within(roundtrip(l, &big)).await.unwrap().len(), big.len());
    let (code, text) = within(http(p.stats, "GET", "/metrics")).await;
    assert_eq!(code, 200);
    let want_bytes = (10 * 7 + big.len()) as f64;
    assert_eq!(
        metric(
            &text,
            "spoke_tcp_connections_opened_total",
            &["cluster=\"c\"", "direction=\"outbound\""]
        ),
        Some(11.0)
    );
    assert_eq!(
        metric(&text, "spoke_tcp_bytes_total", &["flow=\"rx\""]),
        Some(want_bytes)
    );
    assert_eq!(
        metric(&text, "spoke_tcp_bytes_total", &["flow=\"tx\""]),
        Some(want_bytes)
    );
    assert_eq!(
        metric(&text, "spoke_tcp_connections_active", &["cluster=\"c\""]),
        Some(0.0)
    );
    assert!(text.contains("process_resident_memory_bytes"));
    assert!(text.contains("process_cpu_seconds_total"));
    assert!(text.contains("process_open_fds"));
    assert!(text.contains("spoke_config_version{version=\"static-"));
}

#[tokio::test]
async fn weighted_round_robin() {
    let a = named("a").await;
    let b = named("b").await;
    let yaml = format!(
        "admin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:0 }}\n\
         listeners: [ {{ name: l, address: 127.0.0.1:0, protocol: tcp, cluster: c }} ]\n\
         clusters: [ {{ name: c, lb: round_robin, endpoints: [ {{ address: \"{a}\" }}, {{ address: \"{b}\", weight: 3 }} ] }} ]\n"
    );
    let p = proxy(&yaml).await;
    let l = p.listener("l").unwrap();
    let (mut na, mut nb) = (0, 0);
    for _ in 0..40 {
        match within(roundtrip(l, b"")).await.unwrap().as_slice() {
            b"a" => na += 1,
            b"b" => nb += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((na, nb), (10, 30));
}

#[tokio::test]
async fn refused_endpoint_is_skipped_and_counted() {
    let dead = refused().await;
    let up = echo().await;
    let p = proxy(&one_cluster(&[dead.to_string(), up.to_string()], "", "")).await;
    let l = p.listener("l").unwrap();
    for i in 0..6 {
        let msg = format!("m{i}");
        assert_eq!(
            within(roundtrip(l, msg.as_bytes())).await.unwrap(),
            msg.as_bytes()
        );
    }
    let (_, text) = within(http(p.stats, "GET", "/metrics")).await;
    let refused = metric(
        &text,
        "spoke_upstream_connect_errors_total",
        &["kind=\"connect_refused\""],
    );
    assert_eq!(refused, Some(3.0), "{text}");
}

#[tokio::test]
async fn black_holed_endpoint_times_out_then_next() {
    let hole = black_hole();
    // Sanity: the hole really stalls a connect.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(hole.addr))
            .await
            .is_err()
    );
    let up = echo().await;
    let p = proxy(&one_cluster(
        &[hole.addr.to_string(), up.to_string()],
        ", connect_timeout: 200ms",
        "",
    ))
    .await;
    let l = p.listener("l").unwrap();
    let start = Instant::now();
    for _ in 0..2 {
        assert_eq!(within(roundtrip(l, b"x")).await.unwrap(), b"x");
    }
    // One of the two picks hit the hole and waited out one connect timeout.
    assert!(start.elapsed() >= Duration::from_millis(190));
    let (_, text) = within(http(p.stats, "GET", "/metrics")).await;
    assert_eq!(
        metric(
            &text,
            "spoke_upstream_connect_errors_total",
            &["kind=\"connect_timeout\""]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn all_endpoints_down_closes_client_and_keeps_serving() {
    let d1 = refused().await;
    let d2 = refused().await;
    let yaml = format!(
        "admin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:0 }}\n\
         listeners:\n  - {{ name: dead, address: 127.0.0.1:0, protocol: tcp, cluster: dead }}\n  - {{ name: ok, address: 127.0.0.1:0, protocol: tcp, cluster: ok }}\n\
         clusters:\n  - {{ name: dead, endpoints: [ {{ address: \"{d1}\" }}, {{ address: \"{d2}\" }} ] }}\n  - {{ name: ok, endpoints: [ {{ address: \"{}\" }} ] }}\n  - {{ name: empty, endpoints: [] }}\n",
        echo().await
    );
    let p = proxy(&yaml).await;
    let mut s = within(TcpStream::connect(p.listener("dead").unwrap()))
        .await
        .unwrap();
    let _ = s.write_all(b"anyone?").await;
    assert!(within(read_all(&mut s)).await.is_empty());
    assert_eq!(
        within(roundtrip(p.listener("ok").unwrap(), b"still"))
            .await
            .unwrap(),
        b"still"
    );
    let (_, text) = within(http(p.stats, "GET", "/metrics")).await;
    assert_eq!(
        metric(
            &text,
            "spoke_upstream_connect_errors_total",
            &["cluster=\"dead\"", "kind=\"connect_refused\""]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn half_close_keeps_the_other_direction() {
    // The upstream reads until EOF, waits, then answers: the answer must still arrive
    // after the client half-closed.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let p = proxy(&one_cluster(&[up.to_string()], "", "")).await;
    let back = within(roundtrip(p.listener("l").unwrap(), b"0123456789"))
        .await
        .unwrap();
    assert_eq!(back, b"got 10 bytes");
}

#[tokio::test]
async fn upstream_half_close_keeps_client_direction() {
    // The upstream says hello and half-closes at once, then reads what the client sends.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let _ = tx.send(got);
    });
    let p = proxy(&one_cluster(&[up.to_string()], "", "")).await;
    let mut c = within(TcpStream::connect(p.listener("l").unwrap()))
        .await
        .unwrap();
    let mut hello = Vec::new();
    within(c.read_to_end(&mut hello)).await.unwrap();
    assert_eq!(hello, b"hello");
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.write_all(b"late data").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(within(rx).await.unwrap(), b"late data");
}

#[tokio::test]
async fn idle_connection_is_closed_at_idle_timeout() {
    let up = echo().await;
    let p = proxy(&one_cluster(&[up.to_string()], "", ", idle_timeout: 300ms")).await;
    let l = p.listener("l").unwrap();
    // Silent client: closed at the idle timeout.
    let start = Instant::now();
    let mut s = within(TcpStream::connect(l)).await.unwrap();
    assert!(within(read_all(&mut s)).await.is_empty());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Activity resets the timer: 5 exchanges 150 ms apart outlive one timeout.
    let mut s = within(TcpStream::connect(l)).await.unwrap();
    for _ in 0..5 {
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        within(s.read_exact(&mut b)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test]
async fn connection_limit_refuses_excess_cleanly() {
    let up = echo().await;
    let p = proxy(&one_cluster(&[up.to_string()], "", ", max_connections: 2")).await;
    let l = p.listener("l").unwrap();
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = within(TcpStream::connect(l)).await.unwrap();
        s.write_all(b"hi").await.unwrap();
        let mut b = [0u8; 2];
        within(s.read_exact(&mut b)).await.unwrap();
        open.push(s);
    }
    let mut third = within(TcpStream::connect(l)).await.unwrap();
    let _ = third.write_all(b"hi").await;
    assert!(within(read_all(&mut third)).await.is_empty());
    let (_, text) = within(http(p.stats, "GET", "/metrics")).await;
    assert_eq!(
        metric(&text, "spoke_listener_overflow_total", &["listener=\"l\""]),
        Some(1.0)
    );
    // Closing one frees a slot.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(within(roundtrip(l, b"again")).await.unwrap(), b"again");
}

#[tokio::test]
async fn drain_lets_live_connection_finish() {
    let up = echo().await;
    let yaml = one_cluster(&[up.to_string()], "", "") + "drain_timeout: 5s\n";
    let p = proxy(&yaml).await;
    let l = p.listener("l").unwrap();
    assert_eq!(within(http(p.stats, "GET", "/ready")).await.0, 200);
    let mut live = within(TcpStream::connect(l)).await.unwrap();
    live.write_all(b"before").await.unwrap();
    let mut b = [0u8; 6];
    within(live.read_exact(&mut b)).await.unwrap();

    let (code, _) = within(http(p.admin, "POST", "/drain")).await;
    assert_eq!(code, 200);
    let stats = p.stats;
    let shutdown = tokio::spawn(p.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(within(http(stats, "GET", "/ready")).await.0, 503);
    // New connections are refused...
    assert!(TcpStream::connect(l).await.is_err());
    // ...while the live one keeps working until it closes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    live.write_all(b"during").await.unwrap();
    within(live.read_exact(&mut b)).await.unwrap();
    assert_eq!(&b, b"during");
    assert!(!shutdown.is_finished());
    live.shutdown().await.unwrap();
    assert!(within(read_all(&mut live)).await.is_empty());
    assert!(within(shutdown).await.unwrap(), "drain should be clean");
}

#[tokio::test]
async fn drain_deadline_cuts_what_is_left() {
    let up = echo().await;
    let yaml = one_cluster(&[up.to_string()], "", "") + "drain_timeout: 300ms\n";
    let p = proxy(&yaml).await;
    let mut live = within(TcpStream::connect(p.listener("l").unwrap()))
        .await
        .unwrap();
    live.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    within(live.read_exact(&mut b)).await.unwrap();
    let start = Instant::now();
    let clean = within(p.shutdown()).await;
    assert!(!clean);
    assert!(start.elapsed() >= Duration::from_millis(290));
    assert!(within(read_all(&mut live)).await.is_empty());
}

#[tokio::test]
async fn idle_timeout_also_bounds_protocol_detection() {
    // A listener without `protocol: tcp` detects the protocol first; a silent client is
    // still closed at the idle timeout, not after the (longer) detect timeout.
    let up = echo().await;
    let yaml = format!(
        "admin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:0 }}\n\
         listeners: [ {{ name: l, address: 127.0.0.1:0, cluster: c, idle_timeout: 300ms }} ]\n\
         clusters: [ {{ name: c, endpoints: [ {{ address: \"{up}\" }} ] }} ]\n"
    );
    let p = proxy(&yaml).await;
    let start = Instant::now();
    let mut s = within(TcpStream::connect(p.listener("l").unwrap()))
        .await
        .unwrap();
    assert!(within(read_all(&mut s)).await.is_empty());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // A client that speaks is proxied as before.
    assert_eq!(
        within(roundtrip(p.listener("l").unwrap(), b"hi"))
            .await
            .unwrap(),
        b"hi"
    );
}
