//! Inbound authorization: the per-port policies a snapshot precomputes from `inbound:`,
//! and their evaluation for one connection (TCP) or one request (HTTP). Pure logic: the
//! data plane calls it per request (`proxy::authorize`), it allocates nothing.
//!
//! Order: the port's TLS mode first (plaintext on a strict port, TLS on a disabled one),
//! then deny rules (any match denies), then allow rules (a match allows; none denies).
//! A port without rules allows anyone its TLS mode admits; the `allow:` short form is one
//! allow rule on identity alone.

pub mod path;

use http::HeaderMap;

use crate::config::{
    AppProtocol, AuthzAction, AuthzRule, DefaultPolicy, HeaderMatch, HeaderRule, Identity,
    InboundPort, PathMatch, Principal, Protocol, TlsMode,
};

/// The precomputed policy of one inbound port.
#[derive(Debug)]
pub struct PortPolicy {
    pub tls: TlsMode,
    pub protocol: Protocol,
    /// How requests reach the app on this port (HTTP/1.1, HTTP/2 or the client's own).
    pub app_protocol: AppProtocol,
    authz: Authz,
    /// Some rule matches on paths: requests must be normalised first.
    matches_paths: bool,
}

#[derive(Debug)]
enum Authz {
    Any,
    Deny,
    Rules(Vec<AuthzRule>),
}

/// What a rule can see of an HTTP request. `path` is normalised (see `path::normalize`)
/// when the policy matches on paths.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// Why a peer or request was denied, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Plaintext on a strict port, or TLS on a plaintext one.
    Transport,
    /// `default_policy: deny` and no `inbound:` entry for the port.
    DefaultPolicy,
    /// The deny rule at this index matched.
    DenyRule(usize),
    /// No allow rule matched.
    NoAllowMatch,
}

impl Denial {
    pub fn as_str(&self) -> &'static str {
        match self {
            Denial::Transport => "transport",
            Denial::DefaultPolicy => "default_policy",
            Denial::DenyRule(_) => "deny_rule",
            Denial::NoAllowMatch => "no_allow_match",
        }
    }

    /// The index of the deciding rule, if one decided.
    pub fn rule(&self) -> Option<usize> {
        match self {
            Denial::DenyRule(i) => Some(*i),
            _ => None,
        }
    }
}

// === impl PortPolicy ===

impl PortPolicy {
    pub fn new(p: &InboundPort) -> Self {
        let authz = if !p.rules.is_empty() {
            Authz::Rules(p.rules.clone())
        } else if !p.allow.is_empty() {
            Authz::Rules(vec![AuthzRule {
                action: AuthzAction::Allow,
                from: p.allow.iter().cloned().map(Principal::Id).collect(),
                methods: Vec::new(),
                paths: Vec::new(),
                headers: Vec::new(),
            }])
        } else {
            Authz::Any
        };
        PortPolicy {
            tls: p.tls,
            protocol: p.protocol,
            app_protocol: p.app_protocol,
            matches_paths: p.rules.iter().any(|r| !r.paths.is_empty()),
            authz,
        }
    }

    /// The policy of a port without an `inbound:` entry: strict mTLS when the proxy has a
    /// certificate (plaintext otherwise), and `default_policy` decides who may in.
    pub fn default_for(have_cert: bool, default: DefaultPolicy) -> Self {
        PortPolicy {
            tls: if have_cert {
                TlsMode::Strict
            } else {
                TlsMode::Disabled
            },
            protocol: Protocol::Auto,
            app_protocol: AppProtocol::Auto,
            authz: match default {
                DefaultPolicy::Allow => Authz::Any,
                DefaultPolicy::Deny => Authz::Deny,
            },
            matches_paths: false,
        }
    }

    /// Whether the port's TLS mode admits a connection that is (or is not) mTLS.
    pub fn admits(&self, tls: bool) -> bool {
        match self.tls {
            TlsMode::Strict => tls,
            TlsMode::Permissive => true,
            TlsMode::Disabled => !tls,
        }
    }

    pub fn matches_paths(&self) -> bool {
        self.matches_paths
    }

    /// Decides for a peer (`None`: plaintext) and, for HTTP, one of its requests. For a
    /// TCP connection (`req` is `None`) rules with request conditions never match.
    pub fn check(
        &self,
        tls: bool,
        peer: Option<&Identity>,
        req: Option<&Request<'_>>,
    ) -> Result<(), Denial> {
        if !self.admits(tls) {
            return Err(Denial::Transport);
        }
        let rules = match &self.authz {
            Authz::Any => return Ok(()),
            Authz::Deny => return Err(Denial::DefaultPolicy),
            Authz::Rules(r) => r,
        };
        let hit = |r: &AuthzRule| rule_matches(r, peer, req);
        if let Some(i) = rules
            .iter()
            .position(|r| r.action == AuthzAction::Deny && hit(r))
        {
            return Err(Denial::DenyRule(i));
        }
        if rules
            .iter()
            .any(|r| r.action == AuthzAction::Allow && hit(r))
        {
            Ok(())
        } else {
            Err(Denial::NoAllowMatch)
        }
    }
}

fn rule_matches(r: &AuthzRule, peer: Option<&Identity>, req: Option<&Request<'_>>) -> bool {
    if !r.from.is_empty() && !r.from.iter().any(|f| f.matches(peer)) {
        return false;
    }
    let Some(req) = req else {
        return !r.has_request_conditions();
    };
    (r.methods.is_empty() || r.methods.iter().any(|m| m == req.method))
        && (r.paths.is_empty() || r.paths.iter().any(|p| path_matches(p, req.path)))
        && r.headers.iter().all(|h| header_matches(h, req.headers))
}

/// Exact, or a prefix of whole segments (`/api` matches `/api` and `/api/x`, not `/apix`).
pub fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(x) => path == x,
        // `/` is every path, but not `*` (OPTIONS) or an authority (CONNECT).
        PathMatch::Prefix(p) if p == "/" => path.starts_with('/'),
        PathMatch::Prefix(p) => {
            path.starts_with(p.as_str())
                && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
        }
    }
}

/// A header condition holds if any of the header's values satisfies it.
pub fn header_matches(m: &HeaderMatch, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(m.name.as_str()).iter();
    match &m.rule {
        HeaderRule::Present(want) => values.next().is_some() == *want,
        HeaderRule::Exact(x) => values.any(|v| v.as_bytes() == x.as_bytes()),
        HeaderRule::Prefix(x) => values.any(|v| v.as_bytes().starts_with(x.as_bytes())),
    }
}

/// Formats a port number on the stack (for the `{port}` metric label: no allocation).
pub fn port_label(port: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = port;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests;
