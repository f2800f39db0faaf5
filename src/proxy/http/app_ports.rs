//! The app ports found to refuse HTTP/2 (`app_protocol: auto`), remembered for the life of
//! the proxy. Kept beside the snapshots (a push must not make every app refuse the preface
//! again) and keyed by port, since inbound capture makes its local targets per snapshot.
//! One bit per port: a lock-free look-up on every inbound request.

use std::sync::atomic::{AtomicU64, Ordering};

/// A set of TCP ports.
pub struct PortSet(Box<[AtomicU64]>);

impl Default for PortSet {
    fn default() -> Self {
        PortSet((0..1024).map(|_| AtomicU64::new(0)).collect())
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PortSet")
    }
}

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        let (word, bit) = (usize::from(port) / 64, port % 64);
        self.0[word].load(Ordering::Relaxed) & (1 << bit) != 0
    }

    /// Adds `port`; true if it was not there yet.
    pub fn insert(&self, port: u16) -> bool {
        let (word, bit) = (usize::from(port) / 64, port % 64);
        self.0[word].fetch_or(1 << bit, Ordering::Relaxed) & (1 << bit) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_in_and_out() {
        let s = PortSet::default();
        assert!(!s.contains(8080));
        assert!(s.insert(8080));
        assert!(!s.insert(8080), "the second insert is not new");
        assert!(s.contains(8080) && !s.contains(8081) && !s.contains(8079));
        assert!(s.insert(65535) && s.insert(0));
        assert!(s.contains(65535) && s.contains(0));
    }
}
