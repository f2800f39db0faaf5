//! The data plane's side of inbound authorization: each HTTP request is checked against
//! the snapshot current when it arrives, each TCP connection at accept, and open TCP
//! connections and upgrade tunnels are checked again whenever a new snapshot is stored
//! (and closed when it no longer allows them). Every denial and revocation is counted
//! (`spoke_authz_denied_total{port}`, `spoke_authz_revoked_connections_total{port}`) and
//! logged with the peer's identity; the policies themselves live in `crate::authz`.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::HeaderMap;
use tokio::sync::watch;

use super::{AuthzEvent, Shared};
use crate::authz::{self, path::PathError, port_label};
use crate::config::{AppProtocol, Identity};

/// Who is calling on one inbound connection.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub addr: SocketAddr,
    /// The connection is mTLS (the peer proved `id`).
    pub tls: bool,
    pub id: Option<&'a Identity>,
    /// The inbound port whose policy applies (the app's port).
    pub port: u16,
}

/// Why a request may not go on.
#[derive(Debug)]
pub enum Refused {
    Denied,
    BadPath(PathError),
}

/// A request's attributes kept for an upgrade tunnel, so a later policy can be checked
/// against them; the path is normalised.
pub struct Held {
    method: http::Method,
    path: String,
    headers: HeaderMap,
}

impl Held {
    pub fn new(parts: &http::request::Parts) -> Self {
        let raw = parts.uri.path();
        Held {
            method: parts.method.clone(),
            path: authz::path::normalize(raw)
                .map(Cow::into_owned)
                .unwrap_or_else(|_| raw.to_string()),
            headers: parts.headers.clone(),
        }
    }

    fn request(&self) -> authz::Request<'_> {
        authz::Request {
            method: self.method.as_str(),
            path: &self.path,
            headers: &self.headers,
        }
    }
}

/// Checks one inbound HTTP request. When the port's rules match on paths, the request's
/// path is normalised first and the app receives the normalised path (what was checked).
/// Allowed: how the port's app speaks HTTP, from the same snapshot as the decision.
pub fn request(
    shared: &Shared,
    caller: Caller<'_>,
    parts: &mut http::request::Parts,
) -> Result<AppProtocol, Refused> {
    let snapshot = shared.snapshot.load();
    let policy = snapshot.inbound_policy(caller.port, shared.tls.is_some());
    let raw = parts.uri.path();
    let path = if policy.matches_paths() {
        authz::path::normalize(raw).map_err(Refused::BadPath)?
    } else {
        Cow::Borrowed(raw)
    };
    let req = authz::Request {
        method: parts.method.as_str(),
        path: &path,
        headers: &parts.headers,
    };
    let decision = policy.check(caller.tls, caller.id, Some(&req));
    observe(shared, caller, decision.is_ok());
    if let Err(d) = decision {
        denied(shared, caller);
        tracing::warn!(
            peer = %caller.addr,
            peer.id = caller.id.map(|i| i.as_str()).unwrap_or("(plaintext)"),
            port = caller.port,
            method = %parts.method,
            path = %path,
            reason = d.as_str(),
            rule = d.rule(),
            "authz: request denied"
        );
        return Err(Refused::Denied);
    }
    if let Cow::Owned(normal) = path {
        set_path(parts, &normal);
    }
    Ok(policy.app_protocol)
}

/// Checks a TCP (opaque) connection at accept.
pub fn connection(shared: &Shared, caller: Caller<'_>) -> bool {
    let snapshot = shared.snapshot.load();
    let policy = snapshot.inbound_policy(caller.port, shared.tls.is_some());
    let decision = policy.check(caller.tls, caller.id, None);
    observe(shared, caller, decision.is_ok());
    if let Err(d) = decision {
        denied(shared, caller);
        tracing::warn!(
            peer = %caller.addr,
            peer.id = caller.id.map(|i| i.as_str()).unwrap_or("(plaintext)"),
            port = caller.port,
            reason = d.as_str(),
            rule = d.rule(),
            "authz: connection denied"
        );
        return false;
    }
    true
}

/// Resolves when a snapshot stored after `changes` was subscribed no longer allows this
/// connection (or, with `held`, the request that opened this tunnel); counts and logs the
/// revocation. Never resolves while the connection stays allowed.
pub async fn revoked(
    shared: &Shared,
    mut changes: watch::Receiver<()>,
    caller: Caller<'_>,
    held: Option<&Held>,
) {
    loop {
        if changes.changed().await.is_err() {
            // The proxy is gone; the connection ends with it.
            return std::future::pending().await;
        }
        let snapshot = shared.snapshot.load();
        let policy = snapshot.inbound_policy(caller.port, shared.tls.is_some());
        let req = held.map(Held::request);
        let Err(d) = policy.check(caller.tls, caller.id, req.as_ref()) else {
            continue;
        };
        let mut b = [0u8; 5];
        shared
            .metrics
            .authz_revoked
            .with_label_values(&[port_label(caller.port, &mut b)])
            .inc();
        tracing::warn!(
            peer = %caller.addr,
            peer.id = caller.id.map(|i| i.as_str()).unwrap_or("(plaintext)"),
            port = caller.port,
            version = %snapshot.version,
            reason = d.as_str(),
            rule = d.rule(),
            "authz: open connection revoked by the new policy"
        );
        return;
    }
}

fn denied(shared: &Shared, caller: Caller<'_>) {
    let mut b = [0u8; 5];
    shared
        .metrics
        .authz_denied
        .with_label_values(&[port_label(caller.port, &mut b)])
        .inc();
}

fn observe(shared: &Shared, caller: Caller<'_>, allowed: bool) {
    if let Some(o) = &shared.observer {
        let _ = o.send(AuthzEvent {
            port: caller.port,
            peer_id: caller.id.map(|i| i.to_string()),
            allowed,
        });
    }
}

/// Replaces the path of `parts.uri`, keeping its query.
fn set_path(parts: &mut http::request::Parts, path: &str) {
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut up = std::mem::take(&mut parts.uri).into_parts();
    match pq.parse() {
        Ok(pq) => up.path_and_query = Some(pq),
        Err(e) => tracing::debug!(error = %e, "normalised path is not a valid URI path"),
    }
    parts.uri = http::Uri::from_parts(up).unwrap_or_default();
}
