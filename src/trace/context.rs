//! Trace context on the wire: W3C `traceparent` (with `tracestate` left as it came) and
//! B3, single `b3` header or the `x-b3-*` set. Parsing reads the request's headers without
//! allocating; a malformed header counts as absent (never an error). Injection rewrites
//! the same format with this hop's span id as the parent, only for sampled requests.
//!
//! The request path reads everything it needs in one pass over the headers (`Found`):
//! the context, `tracestate` and `x-spoke-trace`, and keeps the incoming `traceparent`'s
//! slot so the next hop's value replaces it there, without hashing a name per header it
//! looks for.

use std::fmt;
use std::ops::Deref;

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

/// Each byte's value as a hex digit, `0xff` for a byte that is not one. W3C wants
/// lowercase; B3 implementations differ, so uppercase is read too.
const HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Decodes exactly `2 * N` hex digits; all-zero ids are invalid. Every digit is looked
/// up before one check: no branch per digit.
fn decode<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut bad = 0;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0xf0 == 0 && out != [0u8; N]).then_some(out)
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

    /// Lowercase hex, two digits written in place per byte (a slice copy per byte cost
    /// a `memcpy` call each).
    fn hex(&mut self, bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let n = (2 * bytes.len()).min(self.buf.len() - self.len) / 2;
        let out = &mut self.buf[self.len..self.len + 2 * n];
        for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[(b >> 4) as usize];
            pair[1] = DIGITS[(b & 15) as usize];
        }
        self.len += 2 * n;
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
        [a, b] => {
            let (hi, lo) = (HEX[*a as usize], HEX[*b as usize]);
            ((hi | lo) & 0xf0 == 0).then_some((hi << 4) | lo)
        }
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

fn parse_b3_multi(
    trace: Option<&HeaderValue>,
    span: Option<&HeaderValue>,
    sampled: Option<&HeaderValue>,
    flags: Option<&HeaderValue>,
) -> Option<Incoming> {
    let debug = flags.is_some_and(|v| v.as_bytes() == b"1");
    let sampled = match sampled {
        Some(v) => b3_sampled(v.as_bytes()),
        None => None,
    };
    let sampled = if debug { Some(true) } else { sampled };
    let ids = match (trace, span) {
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

/// The trace headers of a request, found in one pass over its headers (the first value
/// of each name, as `HeaderMap::get` gives). `V` is `&HeaderValue`, or `&mut HeaderValue`
/// to replace `traceparent` in place.
pub struct Found<V> {
    traceparent: Option<V>,
    /// More than one `traceparent` value (replacing the first would leave the others).
    traceparents: bool,
    state: Option<V>,
    b3: Option<V>,
    b3_trace: Option<V>,
    b3_span: Option<V>,
    b3_sampled: Option<V>,
    b3_flags: Option<V>,
    force: Option<V>,
}

impl<V: Deref<Target = HeaderValue>> Found<V> {
    /// One pass over a request's headers (`HeaderMap::iter` or `iter_mut`). Most requests
    /// carry no context, and a look-up per possible name would hash each name only to miss.
    pub fn scan<'h>(headers: impl Iterator<Item = (&'h HeaderName, V)>) -> Self {
        let mut f = Found {
            traceparent: None,
            traceparents: false,
            state: None,
            b3: None,
            b3_trace: None,
            b3_span: None,
            b3_sampled: None,
            b3_flags: None,
            force: None,
        };
        for (name, value) in headers {
            let slot = match name.as_str() {
                "traceparent" => {
                    f.traceparents |= f.traceparent.is_some();
                    &mut f.traceparent
                }
                "tracestate" => &mut f.state,
                "b3" => &mut f.b3,
                "x-b3-traceid" => &mut f.b3_trace,
                "x-b3-spanid" => &mut f.b3_span,
                "x-b3-sampled" => &mut f.b3_sampled,
                "x-b3-flags" => &mut f.b3_flags,
                "x-spoke-trace" => &mut f.force,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        f
    }

    /// The caller's context: `traceparent` first, then `b3`, then `x-b3-*`. A malformed
    /// header is passed over as if it were absent.
    pub fn incoming(&self) -> Option<Incoming> {
        if let Some(c) = self
            .traceparent
            .as_deref()
            .and_then(|v| parse_traceparent(v.as_bytes()))
        {
            return Some(c);
        }
        if let Some(c) = self
            .b3
            .as_deref()
            .and_then(|v| parse_b3_single(v.as_bytes()))
        {
            return Some(c);
        }
        // A span id alone is no context (as before: it needs the trace id with it).
        if self.b3_trace.is_some() || self.b3_sampled.is_some() || self.b3_flags.is_some() {
            return parse_b3_multi(
                self.b3_trace.as_deref(),
                self.b3_span.as_deref(),
                self.b3_sampled.as_deref(),
                self.b3_flags.as_deref(),
            );
        }
        None
    }

    /// `tracestate` as it came (empty when absent or not text).
    pub fn state(&self) -> &str {
        self.state
            .as_deref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Whether `x-spoke-trace` came, and whether it says `force`.
    pub fn force(&self) -> (bool, bool) {
        match self.force.as_deref() {
            Some(v) => (true, v.as_bytes().eq_ignore_ascii_case(b"force")),
            None => (false, false),
        }
    }
}

impl Found<&mut HeaderValue> {
    /// Writes the next hop's `traceparent` over the one that came, when exactly one did;
    /// false if it must be inserted (`inject`).
    pub fn replace_traceparent(&mut self, trace: &[u8; 16], span: &[u8; 8]) -> bool {
        match (&mut self.traceparent, self.traceparents) {
            (Some(v), false) => match traceparent(trace, span) {
                Some(new) => {
                    **v = new;
                    true
                }
                None => false,
            },
            _ => false,
        }
    }
}

/// Reads the caller's context (see `Found::incoming`).
pub fn extract(h: &HeaderMap) -> Option<Incoming> {
    Found::scan(h.iter()).incoming()
}

/// `00-<trace>-<span>-01`: this hop's span, sampled.
fn traceparent(trace: &[u8; 16], span: &[u8; 8]) -> Option<HeaderValue> {
    let mut v = Text::new();
    v.push(b"00-");
    v.hex(trace);
    v.push(b"-");
    v.hex(span);
    v.push(b"-01");
    v.value()
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
            if let Some(v) = traceparent(trace, span) {
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
