//! A control plane and its sidecars as real processes: a mesh directory with a CA made by
//! `spoke ca init`, join tokens from `spoke control token`, and proxy configs that take
//! everything but their listeners from the control stream.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::pki::{TempDir, WEB};
use super::{http_blocking, spawn_spoke, Proc};

/// Runs the `spoke` binary to completion and returns its trimmed stdout.
pub fn spoke_ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spoke {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http_blocking(port, "GET", path)
}

/// Polls `f` every 10 ms until it holds; panics after `limit`. Returns how long it took.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// The control plane's `/status` document.
pub fn status(port: u16) -> serde_json::Value {
    serde_json::from_str(&get(port, "/status").unwrap().1).unwrap()
}

/// The ACKed version of the sidecar whose identity is `id`, from `/status`.
pub fn acked(control_stats: u16, id: &str) -> String {
    status(control_stats)["sidecars"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["identity"] == id)
        .and_then(|s| s["acked_version"].as_str())
        .unwrap_or("")
        .to_string()
}

pub struct Mesh {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub mesh: PathBuf,
    /// The token of `sa/web` (the identity `proxy` runs as).
    pub token: PathBuf,
}

impl Mesh {
    pub fn new() -> Self {
        let dir = TempDir::new("control");
        let ca = dir.0.join("ca");
        let mesh = dir.0.join("mesh");
        std::fs::create_dir_all(&mesh).unwrap();
        spoke_ok(&["ca", "init", "--out", ca.to_str().unwrap()]);
        let mut m = Mesh {
            dir,
            ca,
            mesh,
            token: PathBuf::new(),
        };
        m.token = m.token_for(WEB);
        m
    }

    /// Writes a join token for `id` and returns its path.
    pub fn token_for(&self, id: &str) -> PathBuf {
        let t = spoke_ok(&[
            "control",
            "token",
            "--ca",
            self.ca.to_str().unwrap(),
            "--id",
            id,
            "--ttl",
            "1h",
        ]);
        let path = self
            .dir
            .0
            .join(format!("{}.token", id.rsplit('/').next().unwrap_or("x")));
        std::fs::write(&path, t).unwrap();
        path
    }

    /// Writes the mesh config atomically (temp file + rename).
    pub fn write(&self, yaml: &str) {
        let tmp = self.mesh.join(".mesh.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.mesh.join("mesh.yaml")).unwrap();
    }

    pub fn control(&self, port: u16, stats: u16) -> Proc {
        self.control_with(port, stats, &[])
    }

    /// `spoke control` on this mesh directory and CA, with `extra` flags.
    pub fn control_with(&self, port: u16, stats: u16, extra: &[&str]) -> Proc {
        self.control_on(&format!("127.0.0.1:{port}"), stats, extra)
    }

    /// The same, serving sidecars on `listen` (`host:port`); stats on 127.0.0.1.
    pub fn control_on(&self, listen: &str, stats: u16, extra: &[&str]) -> Proc {
        let stats = format!("127.0.0.1:{stats}");
        let mut args = vec![
            "control",
            "--config-dir",
            self.mesh.to_str().unwrap(),
            "--ca",
            self.ca.to_str().unwrap(),
            "--listen",
            listen,
            "--stats",
            &stats,
        ];
        args.extend_from_slice(extra);
        spawn_spoke(&args, false)
    }

    /// A `sa/web` sidecar with one TCP listener on `listen` to the cluster `backend`.
    pub fn proxy(&self, control: u16, listen: u16, stats: u16) -> Proc {
        self.sidecar(
            "web-0",
            WEB,
            control,
            stats,
            &format!(
                "[ {{ name: out, address: 127.0.0.1:{listen}, protocol: tcp, cluster: backend }} ]"
            ),
        )
    }

    /// A sidecar running as `id` (with a token of its own) with the given `listeners:`.
    pub fn sidecar(&self, node: &str, id: &str, control: u16, stats: u16, listeners: &str) -> Proc {
        let token = if id == WEB {
            self.token.clone()
        } else {
            self.token_for(id)
        };
        let cfg = self.dir.0.join(format!("proxy-{node}-{stats}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "node: {{ id: {node} }}\nadmin: {{ address: 127.0.0.1:0 }}\nstats: {{ address: 127.0.0.1:{stats} }}\n\
                 control: {{ address: 127.0.0.1:{control}, token_file: \"{}\", roots: \"{}\" }}\n\
                 listeners: {listeners}\n",
                token.display(),
                self.ca.join("root.pem").display()
            ),
        )
        .unwrap();
        spawn_spoke(&["proxy", "--config", cfg.to_str().unwrap()], false)
    }
}

/// One TCP round trip through a proxy listening on `port`; the upstream answers with its
/// name (see `named`).
pub fn who(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.shutdown(std::net::Shutdown::Write).ok()?;
    let mut b = String::new();
    std::io::Read::read_to_string(&mut s, &mut b).ok()?;
    Some(b)
}
