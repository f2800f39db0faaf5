//! Endpoint sets and balancers. A balancer picks an endpoint; it never dials. The set is
//! rebuilt with each config snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Endpoint;

/// A cluster's endpoints with a weighted round-robin picker.
#[derive(Debug)]
pub struct EndpointSet {
    endpoints: Vec<Endpoint>,
    /// Running sum of weights: endpoint i owns positions `[cum[i-1], cum[i])`.
    cum: Vec<u64>,
    next: AtomicU64,
}

impl EndpointSet {
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        let mut total = 0u64;
        let cum = endpoints
            .iter()
            .map(|e| {
                total += u64::from(e.weight.max(1));
                total
            })
            .collect();
        EndpointSet {
            endpoints,
            cum,
            next: AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn get(&self, i: usize) -> Option<&Endpoint> {
        self.endpoints.get(i)
    }

    /// Picks the next endpoint in weighted round-robin order, skipping those in `tried`
    /// (so a retry lands elsewhere when it can). `None` only when there is none left.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let total = *self.cum.last()?;
        // A retry reads the cursor without moving it, so it lands on the endpoint the next
        // connection would get, and a dead endpoint does not steal every first pick.
        let ticket = if tried.is_empty() {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed)
        };
        let pos = ticket % total;
        let first = self.cum.partition_point(|&c| c <= pos);
        let n = self.endpoints.len();
        (0..n).map(|k| (first + k) % n).find(|i| !tried.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointAddr;

    fn set(weights: &[u32]) -> EndpointSet {
        EndpointSet::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| Endpoint {
                    address: EndpointAddr::Ip(format!("127.0.0.1:{}", 1000 + i).parse().unwrap()),
                    weight: *w,
                })
                .collect(),
        )
    }

    #[test]
    fn honours_weights() {
        let s = set(&[1, 2, 3]);
        let mut counts = [0; 3];
        for _ in 0..600 {
            counts[s.pick(&[]).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
    }

    #[test]
    fn skips_tried_endpoints() {
        let s = set(&[1, 1, 1]);
        for _ in 0..10 {
            let a = s.pick(&[]).unwrap();
            let b = s.pick(&[a]).unwrap();
            assert_ne!(a, b);
            let c = s.pick(&[a, b]).unwrap();
            assert!(c != a && c != b);
            assert_eq!(s.pick(&[0, 1, 2]), None);
        }
        assert_eq!(set(&[]).pick(&[]), None);
    }
}
