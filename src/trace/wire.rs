//! OTLP's protobuf wire form, written straight into one buffer per span. Building the
//! generated structs first cost a dozen small allocations per span (every attribute key
//! and value a `String`) and a second pass to encode them; a span is written here once,
//! and an export request is the spans' bytes framed as repeated fields, so a batch is a
//! concatenation. The field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`
//! and `common/v1/common.proto`; the unit tests decode the output with the published
//! OTLP types (`opentelemetry-proto`) to hold them to it.
//!
//! On the request path (a span per sampled request) the constant part of each attribute,
//! its key's bytes and the tags around it, is built at compile time (`key!`), and a
//! message whose size is only known once written (the span, a retry event) gets a
//! placeholder for its length that is filled in afterwards (`open` / `close`): one pass,
//! no size summed field by field beforehand.

use std::fmt::Write as _;

use bytes::BufMut;

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// The encoded size of a length-delimited field of `len` bytes (tag below 16).
pub fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

pub fn put_varint(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

pub fn put_tag(buf: &mut impl BufMut, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

/// A length-delimited field's tag and length; its `len` bytes follow.
pub fn put_len(buf: &mut impl BufMut, field: u32, len: usize) {
    put_tag(buf, field, LEN);
    put_varint(buf, len as u64);
}

pub fn put_bytes(buf: &mut impl BufMut, field: u32, b: &[u8]) {
    put_len(buf, field, b.len());
    buf.put_slice(b);
}

pub fn put_uint(buf: &mut impl BufMut, field: u32, v: u64) {
    put_tag(buf, field, VARINT);
    put_varint(buf, v);
}

pub fn put_fixed64(buf: &mut impl BufMut, field: u32, v: u64) {
    put_tag(buf, field, FIXED64);
    buf.put_slice(&v.to_le_bytes());
}

pub fn put_fixed32(buf: &mut impl BufMut, field: u32, v: u32) {
    put_tag(buf, field, FIXED32);
    buf.put_slice(&v.to_le_bytes());
}

/// An attribute value: text or an integer (`AnyValue.string_value` / `int_value`).
#[derive(Clone, Copy)]
pub enum Val<'a> {
    Str(&'a str),
    /// Text already known to be UTF-8 (a `Small`): not checked again.
    Text(&'a [u8]),
    Int(i64),
}

impl Val<'_> {
    /// The encoded `AnyValue`'s size.
    fn len(self) -> usize {
        match self {
            Val::Str(s) => field_len(s.len()),
            Val::Text(s) => field_len(s.len()),
            Val::Int(i) => 1 + varint_len(i as u64),
        }
    }
}

/// The size of a `KeyValue` message.
pub fn kv_len(key: &str, v: Val<'_>) -> usize {
    field_len(key.len()) + field_len(v.len())
}

/// A `KeyValue` as field `field` of the enclosing message.
pub fn put_kv(buf: &mut impl BufMut, field: u32, key: &str, v: Val<'_>) {
    put_len(buf, field, kv_len(key, v));
    put_bytes(buf, 1, key.as_bytes());
    put_len(buf, 2, v.len());
    match v {
        Val::Str(s) => put_bytes(buf, 1, s.as_bytes()),
        Val::Text(s) => put_bytes(buf, 1, s),
        Val::Int(i) => put_uint(buf, 3, i as u64),
    }
}

/// The constant head of an attribute (`KeyValue`): its key as field 1 and the tag of its
/// value (field 2, an `AnyValue`), so only the value's length and bytes are written per
/// span. Made by `key!` at compile time.
#[derive(Clone, Copy)]
pub struct Key(pub &'static [u8]);

/// `key!("http.request.method")`: that attribute key's `Key`, built at compile time.
macro_rules! key {
    ($k:literal) => {{
        const HEAD: [u8; $k.len() + 3] = $crate::trace::wire::key_head($k);
        $crate::trace::wire::Key(&HEAD)
    }};
}
pub(crate) use key;

/// The bytes of a `Key`: `0x0a <len> <key> 0x12` (keys are shorter than 128 bytes, so
/// their length is one byte; the build fails otherwise).
pub const fn key_head<const N: usize>(key: &str) -> [u8; N] {
    let k = key.as_bytes();
    assert!(k.len() + 3 == N && k.len() < 128);
    let mut out = [0u8; N];
    out[0] = (1 << 3) | LEN;
    out[1] = k.len() as u8;
    let mut i = 0;
    while i < k.len() {
        out[2 + i] = k[i];
        i += 1;
    }
    out[N - 1] = (2 << 3) | LEN;
    out
}

/// The one-byte tag of length-delimited field `field` (below 16).
pub const fn len_tag(field: u8) -> u8 {
    assert!(field < 16);
    (field << 3) | LEN
}

/// An attribute with a text value (`AnyValue.string_value`) as field `tag` (`len_tag`) of
/// the enclosing message. `v` must be UTF-8 (the callers pass `str`s and `Small`s).
pub fn put_str_attr(buf: &mut Vec<u8>, tag: u8, key: Key, v: &[u8]) {
    let any = 1 + varint_len(v.len() as u64) + v.len();
    buf.push(tag);
    put_varint(buf, (key.0.len() + varint_len(any as u64) + any) as u64);
    buf.extend_from_slice(key.0);
    put_varint(buf, any as u64);
    buf.push((1 << 3) | LEN);
    put_varint(buf, v.len() as u64);
    buf.extend_from_slice(v);
}

/// An attribute with an integer value (`AnyValue.int_value`), as `put_str_attr`.
pub fn put_int_attr(buf: &mut Vec<u8>, tag: u8, key: Key, v: i64) {
    let any = 1 + varint_len(v as u64);
    buf.push(tag);
    // `any` is at most 11 bytes: its length is one byte.
    put_varint(buf, (key.0.len() + 1 + any) as u64);
    buf.extend_from_slice(key.0);
    buf.push(any as u8);
    buf.push(3 << 3);
    put_varint(buf, v as u64);
}

/// Starts a length-delimited field whose length is known only once its body is written:
/// the one-byte `tag` and `width` placeholder bytes for the length (the width its length
/// usually takes). Returns where the body starts, for `close`.
pub fn open(buf: &mut Vec<u8>, tag: u8, width: usize) -> usize {
    buf.push(tag);
    buf.resize(buf.len() + width, 0);
    buf.len()
}

/// Ends the field `open` started at `body` with `width` placeholder bytes: writes its
/// length there, moving the body when the length takes another number of bytes (rare: a
/// varint cannot be padded, since a decoder may read a longer one as another value).
pub fn close(buf: &mut Vec<u8>, body: usize, width: usize) {
    let len = buf.len() - body;
    let mut head = [0u8; 10];
    let mut n = 0;
    let mut v = len as u64;
    while v >= 0x80 {
        head[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    head[n] = v as u8;
    n += 1;
    if n == width {
        buf[body - width..body].copy_from_slice(&head[..n]);
    } else {
        buf.splice(body - width..body, head[..n].iter().copied());
    }
}

/// Short text (an address, `routes[3]`) written on the stack. The common values (IPv4
/// addresses, ports, indexes) are written digit by digit: `core::fmt` machinery cost
/// about as much as encoding the rest of a span.
pub struct Small {
    buf: [u8; 64],
    len: usize,
}

impl Small {
    pub fn new() -> Self {
        Small {
            buf: [0; 64],
            len: 0,
        }
    }

    /// Text through `core::fmt` (what has no fast form here, such as IPv6).
    pub fn fmt(args: std::fmt::Arguments<'_>) -> Self {
        let mut s = Small::new();
        // Longer text (never for the values used here) is cut, not a failure.
        let _ = s.write_fmt(args);
        s
    }

    /// An IP address as `Display` writes it.
    pub fn ip(ip: std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(v4) => {
                let mut s = Small::new();
                s.push_ipv4(v4);
                s
            }
            std::net::IpAddr::V6(v6) => Small::fmt(format_args!("{v6}")),
        }
    }

    /// A socket address as `Display` writes it (`1.2.3.4:80`, `[::1]:80`).
    pub fn socket(addr: std::net::SocketAddr) -> Self {
        match addr {
            std::net::SocketAddr::V4(a) => {
                let mut s = Small::new();
                s.push_ipv4(*a.ip());
                s.push_ascii(b":");
                s.push_u64(u64::from(a.port()));
                s
            }
            std::net::SocketAddr::V6(a) => Small::fmt(format_args!("{a}")),
        }
    }

    pub fn push_str(&mut self, s: &str) {
        // Cut at the end of the buffer rather than fail (see `fmt`).
        let _ = std::fmt::Write::write_str(self, s);
    }

    /// ASCII only, so the text stays UTF-8 (all-or-nothing, as `write_str`).
    fn push_ascii(&mut self, s: &[u8]) {
        if s.is_ascii() && s.len() <= self.buf.len() - self.len {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s);
            self.len += s.len();
        }
    }

    /// A number in decimal, its digits written in place (the common values, ports and
    /// octets, are written once per span or more: no scratch copy).
    pub fn push_u64(&mut self, v: u64) {
        let mut n = 1;
        let mut rest = v / 10;
        while rest > 0 {
            n += 1;
            rest /= 10;
        }
        let end = self.len + n;
        if end > self.buf.len() {
            return;
        }
        let mut v = v;
        for d in self.buf[self.len..end].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        self.len = end;
    }

    fn push_ipv4(&mut self, ip: std::net::Ipv4Addr) {
        for (i, o) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.push_ascii(b".");
            }
            self.push_u64(u64::from(o));
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// The text's bytes (always UTF-8: only whole `str`s and ASCII are written), for an
    /// attribute value without checking them again.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Default for Small {
    fn default() -> Self {
        Small::new()
    }
}

impl std::fmt::Write for Small {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        if s.len() > room {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

/// The start of an `ExportTraceServiceRequest` holding one `ResourceSpans` (this sidecar's
/// `service.name`) with one `ScopeSpans` (scope `spoke`), whose spans take `spans_len`
/// bytes (each span framed by `frame_span`). The spans' bytes follow.
pub fn put_request_head(buf: &mut impl BufMut, service: &str, spans_len: usize) {
    let version = env!("CARGO_PKG_VERSION");
    let resource = field_len(kv_len("service.name", Val::Str(service)));
    let scope = field_len(b"spoke".len()) + field_len(version.len());
    let scope_spans = field_len(scope) + spans_len;
    let resource_spans = field_len(resource) + field_len(scope_spans);
    put_len(buf, 1, resource_spans);
    put_len(buf, 1, resource);
    put_kv(buf, 1, "service.name", Val::Str(service));
    put_len(buf, 2, scope_spans);
    put_len(buf, 1, scope);
    put_bytes(buf, 1, b"spoke");
    put_bytes(buf, 2, version.as_bytes());
}

/// The size of one encoded span as an element of `ScopeSpans.spans`.
pub fn framed_span_len(span_len: usize) -> usize {
    field_len(span_len)
}

/// The frame (tag and length) of one encoded span of `span_len` bytes as an element of
/// `ScopeSpans.spans`; the span's bytes follow.
pub fn put_span_frame(buf: &mut impl BufMut, span_len: usize) {
    put_len(buf, 2, span_len);
}

/// The byte length of the first `n` framed spans of `buf` (all of it if it holds fewer).
pub fn framed_spans_len(buf: &[u8], n: usize) -> usize {
    let mut at = 0;
    for _ in 0..n {
        // The tag is one byte; then the length as a varint.
        let mut i = at + 1;
        let mut len = 0u64;
        let mut shift = 0;
        while let Some(b) = buf.get(i) {
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 || shift > 63 {
                break;
            }
        }
        at = i.saturating_add(len as usize);
        if at >= buf.len() {
            return buf.len();
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
    use prost::Message;

    #[test]
    fn varints_as_protobuf_writes_them() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            let mut p = Vec::new();
            prost::encoding::encode_varint(v, &mut p);
            assert_eq!(b, p, "{v}");
        }
    }

    #[test]
    fn a_key_value_decodes_with_the_published_types() {
        let mut b = Vec::new();
        // As field 1 of a message that is a bare KeyValue list: decode the element itself.
        put_kv(&mut b, 1, "http.request.method", Val::Str("GET"));
        // Past the tag and the one-byte length.
        let kv = KeyValue::decode(&b[2..]).unwrap();
        assert_eq!(kv.key, "http.request.method");
        assert_eq!(
            kv.value.unwrap().value,
            Some(any_value::Value::StringValue("GET".into()))
        );
        let mut b = Vec::new();
        put_kv(&mut b, 1, "n", Val::Int(503));
        let kv = KeyValue::decode(&b[2..]).unwrap();
        assert_eq!(
            kv.value.unwrap().value,
            Some(any_value::Value::IntValue(503))
        );
    }

    #[test]
    fn framed_spans_are_counted_off_by_their_lengths() {
        let mut b = Vec::new();
        for len in [3usize, 200, 0, 20_000] {
            put_span_frame(&mut b, len);
            b.extend(std::iter::repeat_n(7u8, len));
        }
        let one = 2 + 3;
        let two = one + 3 + 200;
        assert_eq!(framed_spans_len(&b, 0), 0);
        assert_eq!(framed_spans_len(&b, 1), one);
        assert_eq!(framed_spans_len(&b, 2), two);
        assert_eq!(framed_spans_len(&b, 3), two + 2);
        assert_eq!(framed_spans_len(&b, 4), b.len());
        assert_eq!(framed_spans_len(&b, 9), b.len());
    }

    #[test]
    fn an_empty_request_decodes() {
        let mut b = Vec::new();
        put_request_head(&mut b, "web", 0);
        let r = ExportTraceServiceRequest::decode(&b[..]).unwrap();
        let rs = &r.resource_spans[0];
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs[0].key, "service.name");
        assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, "spoke");
        assert!(rs.scope_spans[0].spans.is_empty());
    }

    #[test]
    fn small_text_is_formatted_on_the_stack() {
        assert_eq!(
            Small::fmt(format_args!("routes[{}]", 12)).as_str(),
            "routes[12]"
        );
        for a in [
            "[2001:db8::1]:8080",
            "10.0.0.7:8080",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::ffff:1.2.3.4]:1",
        ] {
            let sa: std::net::SocketAddr = a.parse().unwrap();
            assert_eq!(Small::socket(sa).as_str(), sa.to_string());
            assert_eq!(Small::ip(sa.ip()).as_str(), sa.ip().to_string());
        }
        let mut s = Small::new();
        s.push_u64(0);
        s.push_str(",");
        s.push_u64(u64::MAX);
        assert_eq!(s.as_str(), format!("0,{}", u64::MAX));
    }
}
