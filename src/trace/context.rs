//! Trace context on the wire: W3C `traceparent` (with `tracestate` left as it came) and
//! B3, single `b3` header or the `x-b3-*` set. Parsing reads the request's headers without
//! allocating; a malformed header counts as absent (never an error). Injection rewrites
//! the same format with this hop's span id as the parent, only for sampled requests.

use std::fmt;

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// How the caller sent its context (and so how this hop passes it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// Trace and span ids of the caller's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub trace: [u8; 16],
    pub span: [u8; 8],
    /// A 64-bit B3 trace id (sent on as 16 hex digits; the upper half is zero).
    pub short: bool,
}

/// What a request's headers say about its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub format: Format,
    /// `None` for a B3 sampling-only header (`b3: 1`).
    pub ids: Option<Ids>,
    /// The caller's decision; `None` defers to this hop's ratio.
    pub sampled: Option<bool>,
}

/// Lowercase hex of a byte array, formatted without allocating.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        // W3C wants lowercase; B3 implementations differ, so uppercase is read too.
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes exactly `2 * N` hex digits; all-zero ids are invalid.
fn decode<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    (out != [0u8; N]).then_some(out)
}

/// A header value being built on the stack: the longest is a single `b3` header
/// (32 + 1 + 16 + 2 + 1 + 16 bytes). Only the finished value is copied to the heap.
struct Text {
    buf: [u8; 72],
    len: usize,
}

impl Text {
    fn new() -> Self {
        Text {
            buf: [0; 72],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        let end = (self.len + s.len()).min(self.buf.len());
        self.buf[self.len..end].copy_from_slice(&s[..end - self.len]);
        self.len = end;
    }

    fn hex(&mut self, bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in bytes {
            self.push(&[DIGITS[(b >> 4) as usize], DIGITS[(b & 15) as usize]]);
        }
    }

    /// The header value, marked never-indexed for HTTP/2: a span id is new on every request,
    /// so in the HPACK dynamic table it would only evict the headers that do repeat (and
    /// cost both sides a table insert per request).
    fn value(&self) -> Option<HeaderValue> {
        let mut v = HeaderValue::from_bytes(&self.buf[..self.len]).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

/// `00-<trace>-<span>-<flags>`; a later version may add fields after a `-`.
fn parse_traceparent(v: &[u8]) -> Option<Incoming> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = decode_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace = decode::<16>(&v[3..35])?;
    let span = decode::<8>(&v[36..52])?;
    let flags = decode_byte(&v[53..55])?;
    Some(Incoming {
        format: Format::W3c,
        ids: Some(Ids {
            trace,
            span,
            short: false,
        }),
        sampled: Some(flags & 1 == 1),
    })
}

fn decode_byte(s: &[u8]) -> Option<u8> {
    match s {
        [a, b] => Some((hex_val(*a)? << 4) | hex_val(*b)?),
        _ => None,
    }
}

fn trace_id(s: &[u8]) -> Option<([u8; 16], bool)> {
    match s.len() {
        32 => decode::<16>(s).map(|t| (t, false)),
        16 => decode::<8>(s).map(|t| {
            let mut full = [0u8; 16];
            full[8..].copy_from_slice(&t);
            (full, true)
        }),
        _ => None,
    }
}

fn b3_sampled(s: &[u8]) -> Option<bool> {
    match s {
        b"1" | b"d" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]` or a decision alone (`0`, `1`, `d`).
fn parse_b3_single(v: &[u8]) -> Option<Incoming> {
    if v.len() == 1 {
        return Some(Incoming {
            format: Format::B3Single,
            ids: None,
            sampled: Some(b3_sampled(v)?),
        });
    }
    let mut parts = v.split(|b| *b == b'-');
    let (trace, short) = trace_id(parts.next()?)?;
    let span = decode::<8>(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(s) => Some(b3_sampled(s)?),
    };
    if let Some(parent) = parts.next() {
        decode::<8>(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Incoming {
        format: Format::B3Single,
        ids: Some(Ids { trace, span, short }),
        sampled,
    })
}

fn parse_b3_multi(h: &HeaderMap) -> Option<Incoming> {
    let debug = h.get(B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let sampled = match h.get(B3_SAMPLED) {
        Some(v) => b3_sampled(v.as_bytes()),
        None => None,
    };
    let sampled = if debug { Some(true) } else { sampled };
    let ids = match (h.get(B3_TRACE_ID), h.get(B3_SPAN_ID)) {
        (Some(t), Some(s)) => {
            let (trace, short) = trace_id(t.as_bytes())?;
            Some(Ids {
                trace,
                span: decode::<8>(s.as_bytes())?,
                short,
            })
        }
        _ => None,
    };
    if ids.is_none() && sampled.is_none() {
        return None;
    }
    Some(Incoming {
        format: Format::B3Multi,
        ids,
        sampled,
    })
}

/// Reads the caller's context: `traceparent` first, then `b3`, then `x-b3-*`. A
/// malformed header is passed over as if it were absent.
pub fn extract(h: &HeaderMap) -> Option<Incoming> {
    // One pass over the names the request has: most requests carry no context, and a
    // look-up per possible name (five of them) would hash each name only to miss.
    let (mut w3c, mut single, mut multi) = (false, false, false);
    for name in h.keys() {
        match name.as_str() {
            "traceparent" => w3c = true,
            "b3" => single = true,
            "x-b3-traceid" | "x-b3-sampled" | "x-b3-flags" => multi = true,
            _ => {}
        }
    }
    if w3c {
        if let Some(c) = h
            .get(TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()))
        {
            return Some(c);
        }
    }
    if single {
        if let Some(c) = h.get(B3).and_then(|v| parse_b3_single(v.as_bytes())) {
            return Some(c);
        }
    }
    if multi {
        return parse_b3_multi(h);
    }
    None
}

fn trace_hex(trace: &[u8; 16], short: bool, out: &mut Text) {
    out.hex(if short { &trace[8..] } else { trace });
}

/// Writes the sampled context for the next hop in `format`: this hop's span as parent.
pub fn inject(
    h: &mut HeaderMap,
    format: Format,
    trace: &[u8; 16],
    short: bool,
    span: &[u8; 8],
    parent: Option<&[u8; 8]>,
) {
    match format {
        Format::W3c => {
            let mut v = Text::new();
            v.push(b"00-");
            v.hex(trace);
            v.push(b"-");
            v.hex(span);
            v.push(b"-01");
            if let Some(v) = v.value() {
                h.insert(TRACEPARENT, v);
            }
        }
        Format::B3Single => {
            let mut v = Text::new();
            trace_hex(trace, short, &mut v);
            v.push(b"-");
            v.hex(span);
            v.push(b"-1");
            if let Some(p) = parent {
                v.push(b"-");
                v.hex(p);
            }
            if let Some(v) = v.value() {
                h.insert(B3, v);
            }
        }
        Format::B3Multi => {
            let mut t = Text::new();
            trace_hex(trace, short, &mut t);
            let mut s = Text::new();
            s.hex(span);
            if let (Some(t), Some(s)) = (t.value(), s.value()) {
                h.insert(B3_TRACE_ID, t);
                h.insert(B3_SPAN_ID, s);
            }
            match parent {
                Some(p) => {
                    let mut v = Text::new();
                    v.hex(p);
                    if let Some(v) = v.value() {
                        h.insert(B3_PARENT, v);
                    }
                }
                None => {
                    h.remove(B3_PARENT);
                }
            }
            if !h.contains_key(B3_FLAGS) {
                h.insert(B3_SAMPLED, HeaderValue::from_static("1"));
            }
        }
    }
}

#[cfg(test)]
mod tests;
