//! Runtime state that lives beside the snapshots, keyed by cluster name and endpoint
//! address: a new snapshot adopts the entries of clusters and endpoints it keeps, adds
//! new ones and lets removed ones go (a request still holding one keeps it alive until it
//! ends). Also the circuit breaker's counters, per cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::endpoint::EndpointState;
use crate::config::{CircuitBreaker, EndpointAddr, MAX_PRIORITY};
use crate::proxy::http::retry::Budget;

/// The per-cluster state that outlives snapshots.
#[derive(Debug, Default)]
pub struct ClusterRuntime {
    pub budget: Budget,
    pub breaker: Breaker,
    /// Round-robin cursors, one per priority level.
    pub(super) cursors: [AtomicU64; MAX_PRIORITY as usize + 1],
    endpoints: Mutex<HashMap<EndpointAddr, Arc<EndpointState>>>,
    /// Endpoints a push removed, kept while requests to them may still be in flight.
    draining: Mutex<Vec<Arc<EndpointState>>>,
    /// Whether the cluster's per-reason retry series exist (see `Metrics::first_request`).
    pub series: std::sync::OnceLock<()>,
}

/// Which circuit breaker limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connections,
    Pending,
    Requests,
    Retries,
}

impl Limit {
    /// The `limit` label of `spoke_circuit_breaker_overflow_total`.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Pending => "pending",
            Limit::Requests => "requests",
            Limit::Retries => "retries",
        }
    }

    fn of(self, cb: &CircuitBreaker) -> u32 {
        match self {
            Limit::Connections => cb.max_connections,
            Limit::Pending => cb.max_pending,
            Limit::Requests => cb.max_requests,
            Limit::Retries => cb.max_retries,
        }
    }
}

/// Counters of what a cluster has in use, checked against the current config's limits
/// (so a push that changes a limit applies at once).
#[derive(Debug, Default)]
pub struct Breaker {
    counts: [AtomicU32; 4],
    /// Woken when a connection slot frees up, for requests waiting in the queue.
    freed: Notify,
}

/// One unit of a breaker limit in use; given back on drop.
#[derive(Debug)]
pub struct Slot {
    runtime: Arc<ClusterRuntime>,
    limit: Limit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let b = &self.runtime.breaker;
        b.counts[self.limit as usize].fetch_sub(1, Relaxed);
        if self.limit == Limit::Connections {
            b.freed.notify_one();
        }
    }
}

impl ClusterRuntime {
    /// Takes a slot of `limit` if the cluster is under it.
    pub fn take(self: &Arc<Self>, limit: Limit, cb: &CircuitBreaker) -> Option<Slot> {
        let max = limit.of(cb);
        let c = &self.breaker.counts[limit as usize];
        c.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()?;
        Some(Slot {
            runtime: self.clone(),
            limit,
        })
    }

    /// A connection slot, waiting in the bounded queue (at most `max_pending` waiters, at
    /// most `wait`) when none is free. `Err` names the limit that refused.
    pub async fn take_connection(
        self: &Arc<Self>,
        cb: &CircuitBreaker,
        wait: Duration,
    ) -> Result<Slot, Limit> {
        if let Some(s) = self.take(Limit::Connections, cb) {
            return Ok(s);
        }
        let Some(_pending) = self.take(Limit::Pending, cb) else {
            return Err(Limit::Pending);
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.breaker.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a slot freed in between wakes us.
            freed.as_mut().enable();
            if let Some(s) = self.take(Limit::Connections, cb) {
                return Ok(s);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Limit::Connections);
            }
        }
    }

    /// Removed endpoints with requests still in flight.
    pub fn draining(&self) -> Vec<Arc<EndpointState>> {
        lock(&self.draining)
            .iter()
            .filter(|e| e.active() > 0)
            .cloned()
            .collect()
    }

    pub fn in_use(&self, limit: Limit) -> u32 {
        self.breaker.counts[limit as usize].load(Relaxed)
    }
}

/// Every cluster's runtime state, by name.
#[derive(Debug, Default)]
pub struct Registry {
    clusters: Mutex<HashMap<String, Arc<ClusterRuntime>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// The runtime of `cluster` with the endpoint states for `addrs` (in that order):
    /// existing entries are reused and missing ones made. With `reconcile` (the snapshot
    /// being stored, the one the registry follows), entries for addresses no longer listed
    /// are dropped and drain; without it (a cluster made live at first use, maybe in a
    /// snapshot older than that, loaded by a request before a push) nothing is dropped.
    pub fn adopt(
        &self,
        cluster: &str,
        addrs: &[&EndpointAddr],
        reconcile: bool,
    ) -> (Arc<ClusterRuntime>, Vec<Arc<EndpointState>>) {
        let rt = lock(&self.clusters)
            .entry(cluster.to_string())
            .or_default()
            .clone();
        let eps = {
            let mut map = lock(&rt.endpoints);
            let eps: Vec<_> = addrs
                .iter()
                .map(|a| {
                    map.entry((*a).clone())
                        .or_insert_with(|| Arc::new(EndpointState::new((*a).clone())))
                        .clone()
                })
                .collect();
            if !reconcile {
                return (rt.clone(), eps);
            }
            let mut draining = lock(&rt.draining);
            map.retain(|a, ep| {
                let keep = addrs.contains(&a);
                if !keep {
                    draining.push(ep.clone());
                }
                keep
            });
            // Held by nobody but this list (and the snapshot being replaced): gone.
            draining.retain(|ep| Arc::strong_count(ep) > 2 || ep.active() > 0);
            eps
        };
        (rt, eps)
    }

    /// Whether `cluster` has runtime state: it has been used.
    pub fn has(&self, cluster: &str) -> bool {
        lock(&self.clusters).contains_key(cluster)
    }

    /// Forgets clusters no longer configured.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.clusters).retain(|name, _| keep(name));
    }
}
