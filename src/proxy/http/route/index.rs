//! An index of the routes by host, built once per snapshot, so that choosing a route costs
//! the same with a thousand host routes as with one: a request is checked only against the
//! routes that could match its host (its exact host, its host and port, the wildcards of
//! each of its parent domains, and the routes without a host), still in config order, so
//! the first match wins exactly as a scan of the whole list would find it. Routes without a
//! host that match one exact path (`/healthz`) are placed by that path the same way.

use std::collections::HashMap;

use crate::config::{PathMatch, Route};

/// Where the routes of one snapshot sit by host.
#[derive(Debug, Default)]
pub struct RouteIndex {
    /// Routes without a host (and without an exact path): a candidate for every request.
    any: Vec<u32>,
    /// Routes without a host matching one exact path, by that path.
    path: HashMap<Box<str>, Vec<u32>>,
    /// `host` (no port) -> routes.
    host: HashMap<Box<str>, Vec<u32>>,
    /// `host:port` -> routes.
    host_port: HashMap<Box<str>, Vec<u32>>,
    /// `*.suffix` (no port) -> routes, by `suffix`.
    wildcard: HashMap<Box<str>, Vec<u32>>,
    /// Host patterns the maps do not cover (a wildcard with a port): checked one by one.
    other: Vec<u32>,
}

/// The candidate lists of one request, each in config order.
pub struct Candidates<'a> {
    lists: [&'a [u32]; 13],
    n: usize,
    /// A host with more parent domains than there is room for lists: scan every route.
    pub overflow: bool,
}

/// Whether the index places a route with this host pattern by its host, so that a
/// candidate it names needs no host check of its own (`*.example:8080` is not placed).
pub fn places(host: &str) -> bool {
    !(host.starts_with("*.") && host.contains(':'))
}

impl RouteIndex {
    pub fn new(routes: &[Route]) -> Self {
        let mut ix = RouteIndex::default();
        for (i, r) in routes.iter().enumerate() {
            let i = i as u32;
            let Some(h) = &r.matches.host else {
                match &r.matches.path {
                    Some(PathMatch::Exact(p)) => {
                        ix.path.entry(p.as_str().into()).or_default().push(i)
                    }
                    _ => ix.any.push(i),
                }
                continue;
            };
            if !places(h) {
                ix.other.push(i);
                continue;
            }
            let list = match h.strip_prefix("*.") {
                Some(suffix) => ix.wildcard.entry(suffix.into()),
                None if h.contains(':') && !h.ends_with(']') => {
                    ix.host_port.entry(h.as_str().into())
                }
                None => ix.host.entry(h.as_str().into()),
            };
            list.or_default().push(i);
        }
        ix
    }

    /// The routes that may match a request for `path` and `authority` (lower-case; `host`
    /// or `host:port`) whose host without the port is `host`.
    pub fn candidates<'a>(&'a self, path: &str, authority: Option<(&str, &str)>) -> Candidates<'a> {
        let mut c = Candidates {
            lists: [&[]; 13],
            n: 0,
            overflow: false,
        };
        c.push(&self.any);
        c.push(&self.other);
        if !self.path.is_empty() {
            if let Some(l) = self.path.get(path) {
                c.push(l);
            }
        }
        if let Some((authority, host)) = authority {
            if let Some(l) = self.host.get(host) {
                c.push(l);
            }
            if authority.len() != host.len() {
                if let Some(l) = self.host_port.get(authority) {
                    c.push(l);
                }
            }
            if !self.wildcard.is_empty() {
                // `*.example.com` matches `a.example.com` and `a.b.example.com`, never
                // `example.com` itself: each suffix after a dot that has a label before it.
                for (i, _) in host.match_indices('.') {
                    if i == 0 {
                        continue;
                    }
                    if let Some(l) = self.wildcard.get(&host[i + 1..]) {
                        c.push(l);
                    }
                }
            }
        }
        c
    }
}

impl<'a> Candidates<'a> {
    fn push(&mut self, l: &'a [u32]) {
        if l.is_empty() {
            return;
        }
        if self.n == self.lists.len() {
            self.overflow = true;
            return;
        }
        self.lists[self.n] = l;
        self.n += 1;
    }

    /// The next candidate in config order (a merge of the sorted lists).
    pub fn next(&mut self) -> Option<u32> {
        let (mut best, mut at) = (u32::MAX, usize::MAX);
        for (k, l) in self.lists[..self.n].iter().enumerate() {
            if let Some(&first) = l.first() {
                if first < best {
                    best = first;
                    at = k;
                }
            }
        }
        let l = self.lists.get_mut(at)?;
        *l = &l[1..];
        Some(best)
    }
}
