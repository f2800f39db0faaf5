//! One sampled request's span while it is in flight (ids, start time, retry events, the
//! route) and its OTLP form once the response head is known. Built only for sampled
//! requests: an unsampled one never gets here.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{status, Span as OtlpSpan, Status};

use super::context::{Format, Hex};

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
    pub route: Option<String>,
    pub events: Vec<Event>,
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

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

pub fn str_kv(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

pub fn int_kv(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
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
    pub fn retry(&mut self, attempt: u32, reason: &str, endpoint: Option<std::net::SocketAddr>) {
        let mut attributes = vec![
            int_kv("spoke.try", i64::from(attempt)),
            str_kv("spoke.retry.reason", reason),
        ];
        if let Some(e) = endpoint {
            attributes.push(str_kv("spoke.endpoint", e.to_string()));
        }
        self.events.push(Event {
            time_unix_nano: now_ns(),
            name: "retry".to_string(),
            attributes,
            dropped_attributes_count: 0,
        });
    }

    /// The OTLP span: attributes from the OpenTelemetry HTTP conventions and Spoke's own.
    pub fn finish(self, o: &Outcome<'_>) -> OtlpSpan {
        let mut attributes = vec![
            str_kv("http.request.method", o.method),
            str_kv("url.path", o.path),
            int_kv("http.response.status_code", i64::from(o.status)),
            str_kv("network.peer.address", o.peer.ip().to_string()),
            int_kv("network.peer.port", i64::from(o.peer.port())),
            str_kv("spoke.cluster", o.cluster),
            int_kv("spoke.retries", i64::from(o.retries)),
        ];
        let host = host_of(o.authority);
        if !host.is_empty() {
            attributes.push(str_kv("server.address", host));
        }
        if let Some(r) = &self.route {
            attributes.push(str_kv("spoke.route", r.as_str()));
        }
        if let Some(e) = o.endpoint {
            attributes.push(str_kv("spoke.endpoint", e.to_string()));
        }
        if let Some(id) = o.peer_id {
            attributes.push(str_kv("spoke.peer_id", id));
        }
        if let Some(k) = o.error {
            attributes.push(str_kv("spoke.error", k));
        }
        let failed = o.status >= 500 || o.error.is_some();
        let status = Status {
            message: if failed {
                o.error.unwrap_or("server error").to_string()
            } else {
                String::new()
            },
            code: if failed {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
        };
        let kind = if self.server {
            SpanKind::Server
        } else {
            SpanKind::Client
        };
        // Trace flags (sampled) and, bits 8 and 9, "the parent is known to be remote".
        let flags = 1 | 0x100 | if self.parent.is_some() { 0x200 } else { 0 };
        OtlpSpan {
            trace_id: self.trace.to_vec(),
            span_id: self.id.to_vec(),
            trace_state: self.state,
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags,
            name: format!("{} {}", o.method, o.cluster),
            kind: kind as i32,
            start_time_unix_nano: self.start_ns,
            end_time_unix_nano: now_ns().max(self.start_ns),
            attributes,
            dropped_attributes_count: 0,
            events: self.events,
            dropped_events_count: 0,
            links: Vec::new(),
            dropped_links_count: 0,
            status: Some(status),
        }
    }
}

/// The host of an authority (`host`, `host:port`, `[v6]:port`).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}
