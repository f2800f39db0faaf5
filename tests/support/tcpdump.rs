//! tcpdump on one interface, for the root-only tests that check what crosses the wire.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::mesh::wait_for;

/// tcpdump on an interface, writing every packet at once to a file.
pub struct Dump {
    file: PathBuf,
    child: std::process::Child,
}

impl Dump {
    /// tcpdump on `interface` in the network namespace `netns`.
    pub fn start(netns: &str, interface: &str, file: PathBuf, filter: &str) -> Dump {
        let log = file.with_extension("log");
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "tcpdump"])
            .args([
                "-i",
                interface,
                "-n",
                "-U",
                "--immediate-mode",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let dump = Dump { file, child };
        wait_for("tcpdump listening", Duration::from_secs(10), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on"))
        });
        dump
    }

    /// Stops the capture; every byte captured, and what tcpdump said.
    pub fn stop(mut self) -> (Vec<u8>, String) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(self.file.with_extension("log")).unwrap_or_default();
        (std::fs::read(&self.file).unwrap(), log)
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
