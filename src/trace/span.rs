//! One sampled request's span while it is in flight (ids, start time, retry events, the
//! route) and its OTLP form once the response head is known, written straight into the
//! exporter's batch (see `wire`). Built only for sampled requests: an unsampled one never
//! gets here.

use std::time::{SystemTime, UNIX_EPOCH};

use super::context::{Format, Hex};
use super::wire::{self, Small, Val};

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

/// Attributes of a span or event, written in one pass after their sizes are summed.
struct Attrs<'a, const N: usize> {
    list: [(&'a str, Val<'a>); N],
    n: usize,
}

impl<'a, const N: usize> Attrs<'a, N> {
    fn new() -> Self {
        Attrs {
            list: [("", Val::Int(0)); N],
            n: 0,
        }
    }

    fn push(&mut self, key: &'a str, v: Val<'a>) {
        if self.n < N {
            self.list[self.n] = (key, v);
            self.n += 1;
        }
    }

    fn items(&self) -> &[(&'a str, Val<'a>)] {
        &self.list[..self.n]
    }

    fn len(&self, field_overhead: bool) -> usize {
        self.items()
            .iter()
            .map(|(k, v)| {
                let l = wire::kv_len(k, *v);
                if field_overhead {
                    wire::field_len(l)
                } else {
                    l
                }
            })
            .sum()
    }

    fn put(&self, buf: &mut Vec<u8>, field: u32) {
        for (k, v) in self.items() {
            wire::put_kv(buf, field, k, *v);
        }
    }
}

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
    /// attributes from the OpenTelemetry HTTP conventions and Spoke's own. The span's
    /// size is summed first so it is written once, in place, into the batch.
    pub fn encode(&self, o: &Outcome<'_>, end_ns: u64, buf: &mut Vec<u8>) {
        let peer_ip = Small::ip(o.peer.ip());
        let endpoint = o.endpoint.map(Small::socket);
        let route = self.route.map(|r| match r {
            RouteName::Index(i) => {
                let mut s = Small::new();
                s.push_str("routes[");
                s.push_u64(i as u64);
                s.push_str("]");
                s
            }
            RouteName::Default => {
                let mut s = Small::new();
                s.push_str("default");
                s
            }
        });
        let mut attrs = Attrs::<12>::new();
        attrs.push("http.request.method", Val::Str(o.method));
        attrs.push("url.path", Val::Str(o.path));
        attrs.push("http.response.status_code", Val::Int(i64::from(o.status)));
        attrs.push("network.peer.address", Val::Text(peer_ip.as_bytes()));
        attrs.push("network.peer.port", Val::Int(i64::from(o.peer.port())));
        attrs.push("spoke.cluster", Val::Str(o.cluster));
        attrs.push("spoke.retries", Val::Int(i64::from(o.retries)));
        let host = host_of(o.authority);
        if !host.is_empty() {
            attrs.push("server.address", Val::Str(host));
        }
        if let Some(r) = &route {
            attrs.push("spoke.route", Val::Text(r.as_bytes()));
        }
        if let Some(e) = &endpoint {
            attrs.push("spoke.endpoint", Val::Text(e.as_bytes()));
        }
        if let Some(id) = o.peer_id {
            attrs.push("spoke.peer_id", Val::Str(id));
        }
        if let Some(k) = o.error {
            attrs.push("spoke.error", Val::Str(k));
        }
        let kind = if self.server {
            KIND_SERVER
        } else {
            KIND_CLIENT
        };
        let failed = o.status >= 500 || o.error.is_some();
        let error = o.error.unwrap_or("server error");
        // `Status`: a message and code 2 (error), or empty (`STATUS_CODE_UNSET`).
        let status_len = if failed {
            wire::field_len(error.len()) + 2
        } else {
            0
        };
        let name_len = o.method.len() + 1 + o.cluster.len();
        let len = wire::field_len(self.trace.len())
            + wire::field_len(self.id.len())
            + if self.state.is_empty() {
                0
            } else {
                wire::field_len(self.state.len())
            }
            + self.parent.map_or(0, |p| wire::field_len(p.len()))
            + wire::field_len(name_len)
            + 1
            + wire::varint_len(kind)
            + 2 * 9
            + attrs.len(true)
            + self
                .events
                .iter()
                .map(|ev| wire::field_len(event(ev, None)))
                .sum::<usize>()
            + wire::field_len(status_len)
            // Field 16 has a two-byte tag.
            + 6;

        buf.reserve(wire::framed_span_len(len));
        wire::put_span_frame(buf, len);
        let at = buf.len();
        wire::put_bytes(buf, 1, &self.trace);
        wire::put_bytes(buf, 2, &self.id);
        if !self.state.is_empty() {
            wire::put_bytes(buf, 3, self.state.as_bytes());
        }
        if let Some(p) = &self.parent {
            wire::put_bytes(buf, 4, p);
        }
        // The name, `GET backend`, written in place.
        wire::put_len(buf, 5, name_len);
        buf.extend_from_slice(o.method.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(o.cluster.as_bytes());
        wire::put_uint(buf, 6, kind);
        wire::put_fixed64(buf, 7, self.start_ns);
        wire::put_fixed64(buf, 8, end_ns.max(self.start_ns));
        attrs.put(buf, 9);
        for ev in &self.events {
            event(ev, Some(buf));
        }
        wire::put_len(buf, 15, status_len);
        if failed {
            wire::put_bytes(buf, 2, error.as_bytes());
            wire::put_uint(buf, 3, STATUS_ERROR);
        }
        // Trace flags (sampled) and, bits 8 and 9, "the parent is known to be remote".
        let flags = 1 | 0x100 | if self.parent.is_some() { 0x200 } else { 0 };
        wire::put_fixed32(buf, 16, flags);
        debug_assert_eq!(buf.len() - at, len, "the span's summed size");
    }
}

/// A retry as an `Event` (field 11 of `Span`): time, name, attributes. Returns the
/// event's size; writes it too when given `buf`.
fn event(ev: &Retry, buf: Option<&mut Vec<u8>>) -> usize {
    let endpoint = ev.endpoint.map(Small::socket);
    let mut attrs = Attrs::<3>::new();
    attrs.push("spoke.try", Val::Int(i64::from(ev.attempt)));
    attrs.push("spoke.retry.reason", Val::Str(ev.reason));
    if let Some(e) = &endpoint {
        attrs.push("spoke.endpoint", Val::Text(e.as_bytes()));
    }
    let len = 9 + wire::field_len(b"retry".len()) + attrs.len(true);
    if let Some(buf) = buf {
        wire::put_len(buf, 11, len);
        wire::put_fixed64(buf, 1, ev.time_ns);
        wire::put_bytes(buf, 2, b"retry");
        attrs.put(buf, 3);
    }
    len
}

/// The host of an authority (`host`, `host:port`, `[v6]:port`).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.bytes().rposition(|b| b == b':') {
        Some(i) if authority.as_bytes()[i + 1..].iter().all(u8::is_ascii_digit) => &authority[..i],
        _ => authority,
    }
}
