//! Tests that need root: a network namespace as a second host on a veth pair, so the admin
//! server sees a non-loopback peer. The namespace and links are removed even when the test
//! fails. CI runs as root with `SPOKE_REQUIRE_ALL=1`, so they always run there; as another
//! user they print that they were skipped and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A namespace `ns` with `10.250.<n>.2/30`, linked to the host's `10.250.<n>.1/30`.
struct Netns {
    ns: String,
    host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

impl Netns {
    fn new() -> Netns {
        assert!(
            is_root(),
            "this test needs root (network namespaces); CI runs it as root"
        );
        let n = std::process::id() % 200 + 20;
        let ns = format!("spoke-t{n}");
        let host_if = format!("spk{n}h");
        let ns_if = format!("spk{n}n");
        let net = Netns {
            ns: ns.clone(),
            host_if: host_if.clone(),
            host_ip: format!("10.250.{n}.1"),
            ns_ip: format!("10.250.{n}.2"),
        };
        // Leftovers from an earlier crashed run.
        sh(&["ip", "netns", "del", &ns]);
        sh(&["ip", "link", "del", &host_if]);
        for cmd in [
            vec!["ip", "netns", "add", &ns],
            vec![
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ],
            vec!["ip", "link", "set", &ns_if, "netns", &ns],
            vec![
                "ip",
                "addr",
                "add",
                &format!("{}/30", net.host_ip),
                "dev",
                &host_if,
            ],
            vec!["ip", "link", "set", &host_if, "up"],
            vec![
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{}/30", net.ns_ip),
                "dev",
                &ns_if,
            ],
            vec![
                "ip", "netns", "exec", &ns, "ip", "link", "set", &ns_if, "up",
            ],
            vec!["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
        ] {
            assert!(sh(&cmd), "setup failed: {cmd:?}");
        }
        net
    }

    /// Runs a tiny HTTP client inside the namespace; returns the status code.
    fn http(&self, method: &str, url_host: &str, port: u16, path: &str) -> Option<u16> {
        let script = format!(
            "import socket\ns=socket.create_connection(('{url_host}',{port}),timeout=5)\n\
             s.sendall(b'{method} {path} HTTP/1.1\\r\\nhost: x\\r\\ncontent-length: 0\\r\\nconnection: close\\r\\n\\r\\n')\n\
             d=b''\nwhile True:\n    c=s.recv(4096)\n    if not c: break\n    d+=c\nprint(d.split(b' ')[1].decode())\n"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "python3", "-c", &script])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        sh(&["ip", "link", "del", &self.host_if]);
        sh(&["ip", "netns", "del", &self.ns]);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn admin_mutations_from_another_host_are_forbidden() {
    let test = "admin_mutations_from_another_host_are_forbidden";
    if !support::need(test, "root (network namespaces)", is_root())
        || !support::need(test, "ip (apt-get install iproute2)", support::have("ip"))
    {
        return;
    }
    let net = Netns::new();
    let admin = support::free_port();
    let stats = support::free_port();
    let dir = std::env::temp_dir().join(format!("spoke-netns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("p.yaml");
    std::fs::write(
        &cfg,
        format!("admin: {{ address: 0.0.0.0:{admin} }}\nstats: {{ address: 0.0.0.0:{stats} }}\n"),
    )
    .unwrap();
    let _proxy = support::spawn_spoke(
        &["proxy", "--config", cfg.to_str().unwrap(), "--unsafe-admin"],
        false,
    );
    let start = Instant::now();
    while net.http("GET", &net.host_ip, stats, "/ready") != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "proxy not reachable from the namespace"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // From the other host: mutating endpoints are 403 whatever the method; reads work.
    assert_eq!(net.http("POST", &net.host_ip, admin, "/drain"), Some(403));
    assert_eq!(
        net.http("POST", &net.host_ip, admin, "/logging?level=debug"),
        Some(403)
    );
    assert_eq!(net.http("GET", &net.host_ip, admin, "/drain"), Some(403));
    assert_eq!(
        net.http("GET", &net.host_ip, admin, "/config_dump"),
        Some(200)
    );
    // The proxy did not drain.
    assert_eq!(net.http("GET", &net.host_ip, stats, "/ready"), Some(200));
    let _ = std::fs::remove_dir_all(&dir);
}
