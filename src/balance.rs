//! Load balancing: which endpoint of a cluster takes the next request or connection. A
//! balancer picks; it never dials. The `Plan` (priority levels, the smooth round-robin
//! sequence, the hash ring) is built from config with each snapshot; what changes with
//! traffic (in-flight counts, latency, ejections, health, cursors) lives in the runtime
//! state beside the snapshots (`registry`, `endpoint`).
//!
//! Each pick first chooses a priority level: level 0 takes all traffic while it is
//! healthy; as its endpoints are ejected or fail health checks, its share shrinks (its
//! healthy fraction times 1.4, as Envoy's overprovisioning factor) and the rest spills to
//! the next level. With no endpoint in service anywhere, the pick ignores health (panic
//! mode) rather than fail every request. Then the level's algorithm:
//! - `least_request` (default): power of two choices (the next in weighted round-robin
//!   order against a weighted random draw); the lower peak-EWMA latency × (in-flight + 1)
//!   wins when clearly lower (a failure counts as a slow answer);
//! - `round_robin`: smooth weighted round robin (no bursts to heavy endpoints);
//! - `random`: weighted random;
//! - `ring_hash`: a consistent hash ring (128 points per unit of weight), so removing one
//!   of N endpoints remaps only about 1/N of the keys.

pub mod endpoint;
pub mod registry;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::config::{Endpoint, Lb};
pub use endpoint::{EndpointState, InFlight, Outcome};
pub use registry::{ClusterRuntime, Limit, Registry, Slot};

/// Ring points per unit of endpoint weight, and the most a ring holds.
const RING_POINTS: u64 = 128;
const RING_MAX: u64 = 1 << 17;
/// Longest smooth round-robin sequence; larger weight sums are scaled down.
const SEQ_MAX: u64 = 4096;

/// Milliseconds since the process started: the clock of ejections and health checks.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Offset by one so that 0 can mean "never" in the endpoint state.
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// A source of randomness: the thread's RNG in the proxy, a seeded one in tests.
pub trait Draw {
    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64;
}

/// The thread-local RNG.
pub struct ThreadRng;

impl Draw for ThreadRng {
    fn below(&mut self, n: u64) -> u64 {
        fastrand::u64(..n)
    }
}

impl Draw for fastrand::Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.u64(..n)
    }
}

/// One priority level: its endpoints and the precomputed structures of the algorithm.
#[derive(Debug, Default)]
struct Level {
    members: Vec<u32>,
    /// Running sum of member weights.
    cum: Vec<u64>,
    /// Smooth weighted round-robin order, as positions in `members`.
    seq: Vec<u32>,
    /// (point, position in `members`), sorted by point.
    ring: Vec<(u64, u32)>,
}

/// How a cluster balances, built from its config once per snapshot.
#[derive(Debug)]
pub struct Plan {
    lb: Lb,
    levels: Vec<Level>,
}

/// The chosen endpoint's index in the cluster's endpoint list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    pub index: usize,
    /// Chosen in panic mode: nothing was in service.
    pub panic: bool,
}

// === impl Plan ===

impl Plan {
    pub fn new(lb: Lb, endpoints: &[Endpoint]) -> Self {
        let mut prios: Vec<u32> = endpoints.iter().map(|e| e.priority).collect();
        prios.sort_unstable();
        prios.dedup();
        let levels = prios
            .iter()
            .map(|p| {
                let members: Vec<u32> = (0..endpoints.len() as u32)
                    .filter(|&i| endpoints[i as usize].priority == *p)
                    .collect();
                let weights: Vec<u64> = members
                    .iter()
                    .map(|&i| u64::from(endpoints[i as usize].weight.max(1)))
                    .collect();
                let mut total = 0;
                let cum = weights
                    .iter()
                    .map(|w| {
                        total += w;
                        total
                    })
                    .collect();
                Level {
                    seq: if matches!(lb, Lb::RoundRobin | Lb::LeastRequest) {
                        smooth_sequence(&weights)
                    } else {
                        Vec::new()
                    },
                    ring: if lb == Lb::RingHash {
                        ring(&members, &weights, endpoints)
                    } else {
                        Vec::new()
                    },
                    members,
                    cum,
                }
            })
            .collect();
        Plan { lb, levels }
    }

    /// Picks an endpoint not in `tried` (a retry goes elsewhere when it can); `key` is the
    /// request's hash for `ring_hash`. `None` only when every endpoint was tried.
    pub fn pick(
        &self,
        eps: &[Arc<EndpointState>],
        rt: &ClusterRuntime,
        key: Option<u64>,
        tried: &[usize],
        now: u64,
        rng: &mut impl Draw,
    ) -> Option<Picked> {
        let first_try = tried.is_empty();
        if self.levels.len() == 1 {
            // One level (the common case): no health scan unless the pick finds nothing.
            let ok = |i: u32| eps[i as usize].in_service(now) && !tried.contains(&(i as usize));
            if let Some(index) = self.in_level(0, now, eps, rt, key, first_try, &ok, rng) {
                return Some(Picked {
                    index,
                    panic: false,
                });
            }
            if eps.iter().any(|e| e.in_service(now)) {
                return None; // every endpoint in service was tried
            }
            let any = |i: u32| !tried.contains(&(i as usize));
            return self
                .in_level(0, now, eps, rt, key, first_try, &any, rng)
                .map(|index| Picked { index, panic: true });
        }
        let (first, panic) = self.choose_level(eps, now, rng)?;
        let ok = |i: u32| {
            let i = i as usize;
            (panic || eps[i].in_service(now)) && !tried.contains(&i)
        };
        let n = self.levels.len();
        (0..n)
            .map(|k| (first + k) % n)
            .find_map(|l| self.in_level(l, now, eps, rt, key, first_try, &ok, rng))
            .map(|index| Picked { index, panic })
    }

    /// The level this pick draws from, by the levels' health; panic when none is healthy.
    fn choose_level(
        &self,
        eps: &[Arc<EndpointState>],
        now: u64,
        rng: &mut impl Draw,
    ) -> Option<(usize, bool)> {
        let healthy = |l: &Level| {
            l.members
                .iter()
                .filter(|&&i| eps[i as usize].in_service(now))
                .count() as u64
        };
        // Each level's share: its healthy fraction × 1.4, capped by what is left.
        let mut loads = [0u64; crate::config::MAX_PRIORITY as usize + 1];
        let mut left = 100u64;
        for (l, level) in self.levels.iter().enumerate() {
            let total = level.members.len() as u64;
            let health = (140 * healthy(level) / total.max(1)).min(100);
            loads[l] = health.min(left);
            left -= loads[l];
        }
        let sum = 100 - left;
        if sum == 0 {
            return (!self.levels.is_empty()).then_some((0, true));
        }
        let mut r = rng.below(sum);
        for (l, load) in loads.iter().enumerate().take(self.levels.len()) {
            if r < *load {
                return Some((l, false));
            }
            r -= load;
        }
        Some((0, false))
    }

    #[allow(clippy::too_many_arguments)]
    fn in_level(
        &self,
        l: usize,
        now: u64,
        eps: &[Arc<EndpointState>],
        rt: &ClusterRuntime,
        key: Option<u64>,
        first_try: bool,
        ok: &impl Fn(u32) -> bool,
        rng: &mut impl Draw,
    ) -> Option<usize> {
        let level = &self.levels[l];
        let m = &level.members;
        if m.is_empty() {
            return None;
        }
        let found = match (self.lb, key) {
            (Lb::RoundRobin, _) => Self::next_in_sequence(level, &rt.cursors[l], first_try, ok),
            (Lb::RingHash, Some(h)) => {
                let ring = &level.ring;
                let start = ring.partition_point(|(p, _)| *p < h);
                (0..ring.len())
                    .map(|k| m[ring[(start + k) % ring.len()].1 as usize])
                    .find(|&i| ok(i))
            }
            (Lb::LeastRequest, _) => {
                // The first choice walks the weighted round-robin order, the second is a
                // weighted draw; the second wins only when clearly cheaper (20%), so
                // equal, idle endpoints share exactly by weight and noise in the
                // latency estimate does not reorder them.
                let a = Self::next_in_sequence(level, &rt.cursors[l], first_try, ok);
                let b = match a {
                    Some(a) => draw_ok(level, &|i| i != a && ok(i), rng),
                    None => draw_ok(level, ok, rng),
                };
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let (ca, cb) = (eps[a as usize].cost(now), eps[b as usize].cost(now));
                        Some(if cb.saturating_mul(5) < ca.saturating_mul(4) {
                            b
                        } else {
                            a
                        })
                    }
                    (a, b) => a.or(b),
                }
            }
            (Lb::Random | Lb::RingHash, _) => draw_ok(level, ok, rng),
        };
        found
            .or_else(|| m.iter().copied().find(|&i| ok(i)))
            .map(|i| i as usize)
    }
}

impl Plan {
    /// The next member in the smooth weighted round-robin order that `ok` accepts. A
    /// retry reads the cursor without moving it: it lands where the next request would,
    /// so a dead endpoint does not steal every first pick.
    fn next_in_sequence(
        level: &Level,
        cursor: &std::sync::atomic::AtomicU64,
        first_try: bool,
        ok: &impl Fn(u32) -> bool,
    ) -> Option<u32> {
        let ticket = if first_try {
            cursor.fetch_add(1, Relaxed)
        } else {
            cursor.load(Relaxed)
        } as usize;
        let seq = &level.seq;
        (0..seq.len())
            .map(|k| level.members[seq[(ticket + k) % seq.len()] as usize])
            .find(|&i| ok(i))
    }
}

/// A weighted random member that `ok` accepts: a few draws, then the next one along.
fn draw_ok(level: &Level, ok: &impl Fn(u32) -> bool, rng: &mut impl Draw) -> Option<u32> {
    let total = *level.cum.last()?;
    let n = level.members.len();
    for _ in 0..3 {
        let r = rng.below(total);
        let pos = level.cum.partition_point(|&c| c <= r);
        let i = level.members[pos.min(n - 1)];
        if ok(i) {
            return Some(i);
        }
    }
    let start = rng.below(n as u64) as usize;
    (0..n)
        .map(|k| level.members[(start + k) % n])
        .find(|&i| ok(i))
}

/// Smooth weighted round robin (as nginx): each step every member gains its weight and the
/// richest is chosen and pays the total, so weights 5,1,1 give a,a,b,a,c,a,a.
fn smooth_sequence(weights: &[u64]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|x| x / g).collect();
    let mut total: u64 = w.iter().sum();
    if total > SEQ_MAX {
        // Proportions kept, each at least 1.
        w = w.iter().map(|x| (x * SEQ_MAX / total).max(1)).collect();
        total = w.iter().sum();
    }
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, x) in current.iter_mut().zip(&w) {
            *c += *x as i64;
        }
        let best = (0..w.len()).max_by_key(|&i| (current[i], -(i as i64)));
        let Some(best) = best else { break };
        current[best] -= total as i64;
        seq.push(best as u32);
    }
    seq
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn ring(members: &[u32], weights: &[u64], endpoints: &[Endpoint]) -> Vec<(u64, u32)> {
    let total: u64 = weights.iter().map(|w| w * RING_POINTS).sum();
    let scale = |w: u64| {
        if total > RING_MAX {
            (w * RING_POINTS * RING_MAX / total).max(1)
        } else {
            w * RING_POINTS
        }
    };
    let mut ring = Vec::with_capacity(total.min(RING_MAX) as usize);
    for (pos, (&i, &w)) in members.iter().zip(weights).enumerate() {
        let name = endpoints[i as usize].address.to_string();
        // Points depend only on the endpoint's own address and weight, so adding or
        // removing another endpoint leaves them in place.
        for k in 0..scale(w) {
            ring.push((hash_parts(&[name.as_bytes(), &k.to_le_bytes()]), pos as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// The hash of a client address, for `ring_hash` on the source IP.
pub fn hash_ip(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(a) => hash_parts(&[&a.octets()]),
        std::net::IpAddr::V6(a) => hash_parts(&[&a.octets()]),
    }
}

/// A stable 64-bit hash (FNV-1a with a final mix), the same in every process and release.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser spreads FNV's weak low bits over the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests;
