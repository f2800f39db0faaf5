//! One sampled request's span while it is in flight (ids, start time, retry events, the
//! route) and its OTLP form once the response head is known, written straight into the
//! exporter's batch (see `wire`). Built only for sampled requests: an unsampled one never
//! gets here.

use std::time::{SystemTime, UNIX_EPOCH};

use super::context::{Format, Hex};
use super::wire::{self, Small};

/// OTLP `Span.SpanKind`.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
/// OTLP `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;

/// The route a request took: `routes[i]`, or the listener's own cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteName {
    Index(usize),
    Default,
}

/// A retry, as a span event.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub time_ns: u64,
    pub attempt: u32,
    pub reason: &'static str,
    pub endpoint: Option<std::net::SocketAddr>,
}

/// A sampled request's span.
#[derive(Debug)]
pub struct Span {
    pub trace: [u8; 16],
    pub id: [u8; 8],
    /// The caller's span (remote), when a context came in.
    pub parent: Option<[u8; 8]>,
    pub format: Format,
    pub short: bool,
    /// W3C `tracestate` as it came.
    pub state: String,
    pub server: bool,
    pub start_ns: u64,
    pub route: Option<RouteName>,
    pub events: Vec<Retry>,
}

/// What the finished request came to, for the span's attributes and status.
pub struct Outcome<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub status: u16,
    pub peer: std::net::SocketAddr,
    /// `peer`'s attributes already encoded (`peer_attrs`): a connection's are made once,
    /// at its first sampled request, not per span.
    pub peer_attrs: Option<&'a [u8]>,
    pub cluster: &'a str,
    pub endpoint: Option<std::net::SocketAddr>,
    pub peer_id: Option<&'a str>,
    pub retries: u32,
    /// The error kind of a response the proxy made itself.
    pub error: Option<&'static str>,
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The constant heads of the attributes (`wire::key!`).
mod keys {
    use super::wire::{key, Key};

    pub const METHOD: Key = key!("http.request.method");
    pub const PATH: Key = key!("url.path");
    pub const STATUS: Key = key!("http.response.status_code");
    pub const PEER_ADDRESS: Key = key!("network.peer.address");
    pub const PEER_PORT: Key = key!("network.peer.port");
    pub const CLUSTER: Key = key!("spoke.cluster");
    pub const RETRIES: Key = key!("spoke.retries");
    pub const SERVER_ADDRESS: Key = key!("server.address");
    pub const ROUTE: Key = key!("spoke.route");
    pub const ENDPOINT: Key = key!("spoke.endpoint");
    pub const PEER_ID: Key = key!("spoke.peer_id");
    pub const ERROR: Key = key!("spoke.error");
    pub const TRY: Key = key!("spoke.try");
    pub const RETRY_REASON: Key = key!("spoke.retry.reason");
}

/// Tags of the length-delimited fields written here: `ScopeSpans.spans`, and of `Span`.
const SCOPE_SPANS_SPANS: u8 = wire::len_tag(2);
const SPAN_ATTRIBUTES: u8 = wire::len_tag(9);
const SPAN_EVENTS: u8 = wire::len_tag(11);
const SPAN_STATUS: u8 = wire::len_tag(15);
/// Of `Span.Event`.
const EVENT_ATTRIBUTES: u8 = wire::len_tag(3);

/// The first fields of every span, `trace_id` and `span_id`, with their tags and lengths.
const IDS_HEAD: [u8; 28] = {
    let mut h = [0u8; 28];
    h[0] = wire::len_tag(1);
    h[1] = 16;
    h[18] = wire::len_tag(2);
    h[19] = 8;
    h
};

// === impl Span ===

impl Span {
    pub fn trace_id(&self) -> Hex<'_> {
        Hex(&self.trace)
    }

    pub fn span_id(&self) -> Hex<'_> {
        Hex(&self.id)
    }

    /// Records one retry: the try that failed, why, and where it went.
    pub fn retry(
        &mut self,
        attempt: u32,
        reason: &'static str,
        endpoint: Option<std::net::SocketAddr>,
    ) {
        self.events.push(Retry {
            time_ns: now_ns(),
            attempt,
            reason,
            endpoint,
        });
    }

    /// Appends the OTLP span, framed as an element of `ScopeSpans.spans`, to `buf`:
    /// attributes from the OpenTelemetry HTTP conventions and Spoke's own, in one pass
    /// (the frame's length is filled in at the end, see `wire::close`).
    pub fn encode(&self, o: &Outcome<'_>, end_ns: u64, buf: &mut Vec<u8>) {
        let failed = o.status >= 500 || o.error.is_some();
        let error = o.error.unwrap_or("server error");
        // Room for the whole span at once: the constant part (tags, ids, times, keys,
        // numbers) is under 512 bytes, events under 200 each; the rest is the text.
        buf.reserve(
            512 + 200 * self.events.len()
                + self.state.len()
                + 2 * (o.method.len() + o.cluster.len())
                + o.path.len()
                + o.authority.len()
                + o.peer_id.map_or(0, str::len)
                + 2 * error.len(),
        );
        // Spans are 128 bytes to 16 KiB long: a two-byte length.
        let body = wire::open(buf, SCOPE_SPANS_SPANS, 2);

        let mut ids = IDS_HEAD;
        ids[2..18].copy_from_slice(&self.trace);
        ids[20..28].copy_from_slice(&self.id);
        buf.extend_from_slice(&ids);
        if !self.state.is_empty() {
            wire::put_bytes(buf, 3, self.state.as_bytes());
        }
        if let Some(p) = &self.parent {
            wire::put_bytes(buf, 4, p);
        }
        // The name, `GET backend`.
        wire::put_len(buf, 5, o.method.len() + 1 + o.cluster.len());
        buf.extend_from_slice(o.method.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(o.cluster.as_bytes());
        wire::put_uint(
            buf,
            6,
            if self.server {
                KIND_SERVER
            } else {
                KIND_CLIENT
            },
        );
        wire::put_fixed64(buf, 7, self.start_ns);
        wire::put_fixed64(buf, 8, end_ns.max(self.start_ns));

        let a = SPAN_ATTRIBUTES;
        wire::put_str_attr(buf, a, keys::METHOD, o.method.as_bytes());
        wire::put_str_attr(buf, a, keys::PATH, o.path.as_bytes());
        wire::put_int_attr(buf, a, keys::STATUS, i64::from(o.status));
        match o.peer_attrs {
            Some(b) => buf.extend_from_slice(b),
            None => put_peer(buf, o.peer),
        }
        wire::put_str_attr(buf, a, keys::CLUSTER, o.cluster.as_bytes());
        wire::put_int_attr(buf, a, keys::RETRIES, i64::from(o.retries));
        let host = host_of(o.authority);
        if !host.is_empty() {
            wire::put_str_attr(buf, a, keys::SERVER_ADDRESS, host.as_bytes());
        }
        if let Some(r) = self.route {
            let mut s = Small::new();
            match r {
                RouteName::Index(i) => {
                    s.push_str("routes[");
                    s.push_u64(i as u64);
                    s.push_str("]");
                }
                RouteName::Default => s.push_str("default"),
            }
            wire::put_str_attr(buf, a, keys::ROUTE, s.as_bytes());
        }
        if let Some(e) = o.endpoint {
            wire::put_str_attr(buf, a, keys::ENDPOINT, Small::socket(e).as_bytes());
        }
        if let Some(id) = o.peer_id {
            wire::put_str_attr(buf, a, keys::PEER_ID, id.as_bytes());
        }
        if let Some(k) = o.error {
            wire::put_str_attr(buf, a, keys::ERROR, k.as_bytes());
        }

        for ev in &self.events {
            event(ev, buf);
        }
        // `Status`: a message and code 2 (error), or empty (`STATUS_CODE_UNSET`).
        if failed {
            wire::put_len(buf, 15, wire::field_len(error.len()) + 2);
            wire::put_bytes(buf, 2, error.as_bytes());
            wire::put_uint(buf, 3, STATUS_ERROR);
        } else {
            buf.extend_from_slice(&[SPAN_STATUS, 0]);
        }
        // Trace flags (sampled) and, bits 8 and 9, "the parent is known to be remote".
        let flags = 1 | 0x100 | if self.parent.is_some() { 0x200 } else { 0 };
        wire::put_fixed32(buf, 16, flags);
        wire::close(buf, body, 2);
    }
}

/// `network.peer.address` and `network.peer.port` as span attributes, for
/// `Outcome::peer_attrs`.
pub fn peer_attrs(peer: std::net::SocketAddr) -> Box<[u8]> {
    let mut buf = Vec::with_capacity(96);
    put_peer(&mut buf, peer);
    buf.into_boxed_slice()
}

fn put_peer(buf: &mut Vec<u8>, peer: std::net::SocketAddr) {
    let ip = Small::ip(peer.ip());
    wire::put_str_attr(buf, SPAN_ATTRIBUTES, keys::PEER_ADDRESS, ip.as_bytes());
    wire::put_int_attr(
        buf,
        SPAN_ATTRIBUTES,
        keys::PEER_PORT,
        i64::from(peer.port()),
    );
}

/// A retry as an `Event` (field 11 of `Span`): time, name, attributes.
fn event(ev: &Retry, buf: &mut Vec<u8>) {
    // Under 128 bytes but with a long IPv6 endpoint: a one-byte length.
    let body = wire::open(buf, SPAN_EVENTS, 1);
    wire::put_fixed64(buf, 1, ev.time_ns);
    wire::put_bytes(buf, 2, b"retry");
    let a = EVENT_ATTRIBUTES;
    wire::put_int_attr(buf, a, keys::TRY, i64::from(ev.attempt));
    wire::put_str_attr(buf, a, keys::RETRY_REASON, ev.reason.as_bytes());
    if let Some(e) = ev.endpoint {
        wire::put_str_attr(buf, a, keys::ENDPOINT, Small::socket(e).as_bytes());
    }
    wire::close(buf, body, 1);
}

/// The host of an authority (`host`, `host:port`, `[v6]:port`).
pub(super) fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.bytes().rposition(|b| b == b':') {
        Some(i) if authority.as_bytes()[i + 1..].iter().all(u8::is_ascii_digit) => &authority[..i],
        _ => authority,
    }
}
