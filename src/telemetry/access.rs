//! The access log's formatter: one line per request or connection, formatted on the worker
//! that handled it straight into that thread's log buffer (see [`super::lines`]).
//!
//! Why not the `fmt` layer like every other event: measured on the two-hop HTTP bench at a
//! fixed rate, formatting through it was most of what the access log cost on the workers
//! (its generic visitor formats every field through `Debug`, its timestamp per line). Here
//! fields are written as they come, numbers with `itoa`, and the timestamp's date and time
//! are formatted once per second per thread.
//!
//! The per-request HTTP line does not go through `tracing` at all: [`write`] formats it
//! straight from the request's values, checking only that the log filter lets `access`
//! through. Measured with callgrind on the two-hop HTTP/1.1 bench, the event took 6.6k
//! instructions per request on each proxy, most of it dispatching sixteen fields one by one
//! through `dyn Visit`, wrapping the absent ones, and `Display` of socket addresses.
//! Per-connection (TCP) and refused-request lines stay events of this layer, and so does the
//! HTTP line when spoke's logger is not installed (an embedding program's own subscriber).
//!
//! The format is the one the `fmt` layer wrote (plain: `TIMESTAMP  INFO access: MESSAGE
//! field=value ...`, string values quoted; JSON: one flat object with `timestamp`, `level`,
//! `message`, the fields in order, then `target`), so log pipelines keep parsing it. Plain
//! access lines are never coloured.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use super::lines::Lines;

/// The events this layer takes; the `fmt` layer is filtered to leave them alone.
pub const TARGET: &str = "access";

/// Formats access events into `lines`.
#[derive(Clone)]
pub struct AccessLayer {
    lines: Lines,
    json: bool,
}

impl AccessLayer {
    pub fn new(lines: Lines, json: bool) -> Self {
        AccessLayer { lines, json }
    }

    /// Makes this layer's sink the one [`write`] uses (the first installed stays). Call it
    /// once the subscriber is the global one: it reads the filter (see [`refresh`]).
    pub fn install(&self) {
        let _ = DIRECT.set(self.clone());
        refresh();
    }

    /// The line [`write`] writes, whatever the filter.
    fn direct(&self, message: &str, fields: impl FnOnce(&mut Fields<'_>)) {
        self.line(&Level::INFO, |f| {
            f.bare("message", message);
            fields(f);
        });
    }

    /// Appends one line: timestamp, level and target around the fields `body` writes.
    fn line(&self, level: &Level, body: impl FnOnce(&mut Fields<'_>)) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        STAMP.with(|stamp| {
            let mut stamp = stamp.borrow_mut();
            stamp_for(&mut stamp, now.as_secs());
            let stamp = &stamp.1;
            let micros = now.subsec_micros();
            self.lines.append(|buf| {
                if self.json {
                    buf.extend_from_slice(b"{\"timestamp\":\"");
                    timestamp(buf, stamp, micros);
                    buf.extend_from_slice(b"\",\"level\":\"");
                    buf.extend_from_slice(level.as_str().as_bytes());
                    buf.push(b'"');
                    body(&mut Fields { buf, json: true });
                    buf.extend_from_slice(b",\"target\":");
                    json_str(buf, TARGET);
                    buf.extend_from_slice(b"}\n");
                } else {
                    timestamp(buf, stamp, micros);
                    let level = level.as_str();
                    buf.extend_from_slice(&b"      "[..6 - level.len()]);
                    buf.extend_from_slice(level.as_bytes());
                    buf.push(b' ');
                    buf.extend_from_slice(TARGET.as_bytes());
                    buf.push(b':');
                    body(&mut Fields { buf, json: false });
                    buf.push(b'\n');
                }
            });
        });
    }
}

/// The sink of [`write`]: the layer `telemetry::init` installed. Absent when spoke's logger
/// is not the one in use (a program embedding the proxy with its own subscriber, in-process
/// tests): callers then emit the access event instead, see [`direct`].
static DIRECT: OnceLock<AccessLayer> = OnceLock::new();

/// Whether [`write`] has a sink: spoke's own logger is installed. Without it, access lines
/// must be `tracing` events for whatever subscriber is in use to see them.
pub fn direct() -> bool {
    DIRECT.get().is_some()
}

/// Writes one `INFO access` line with `message` and the fields `fields` adds, in the format
/// of the events, if the log filter lets access lines through.
pub fn write(message: &str, fields: impl FnOnce(&mut Fields<'_>)) {
    let Some(layer) = DIRECT.get() else { return };
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    layer.direct(message, fields);
}

/// The decimal text of every byte value (digits, then how many of them are used).
static OCTETS: [([u8; 3], u8); 256] = {
    let mut t = [([0u8; 3], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let (h, d, u) = ((i / 100) as u8, (i / 10 % 10) as u8, (i % 10) as u8);
        t[i] = if i >= 100 {
            ([b'0' + h, b'0' + d, b'0' + u], 3)
        } else if i >= 10 {
            ([b'0' + d, b'0' + u, 0], 2)
        } else {
            ([b'0' + u, 0, 0], 1)
        };
        i += 1;
    }
    t
};

/// Whether the log filter lets `INFO access` through, as [`refresh`] last found it. Asked
/// of the subscriber on every request (`tracing::enabled!` through the reloadable
/// `EnvFilter`), it was about 600 instructions a request, a fifth of what the access line
/// cost; the filter changes only at start and through `LogHandle::set_filter`.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Reads the filter again; called when it is installed and after every change.
pub fn refresh() {
    ENABLED.store(
        tracing::enabled!(target: "access", Level::INFO),
        Ordering::Relaxed,
    );
}

thread_local! {
    /// This thread's formatted current second, which every line of that second shares.
    static STAMP: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != TARGET {
            return;
        }
        self.line(meta.level(), |f| event.record(f));
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` (UTC) in `stamp.1`, reformatted only when the second changed.
fn stamp_for(stamp: &mut (u64, String), secs: u64) {
    if stamp.0 == secs && !stamp.1.is_empty() {
        return;
    }
    stamp.0 = secs;
    stamp.1.clear();
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let _ = write!(
        stamp.1,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
}

fn timestamp(buf: &mut Vec<u8>, stamp: &str, micros: u32) {
    buf.extend_from_slice(stamp.as_bytes());
    buf.push(b'.');
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend_from_slice(&digits);
    buf.push(b'Z');
}

/// `fmt::Write` onto the byte buffer, for values only `Display`/`Debug` can give.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The event's fields as the `fmt` layer writes them. Plain: ` field=value` pairs, strings
/// quoted and escaped (Rust `Debug`), `Display`ed values and numbers bare, the message first
/// without its name. JSON: `,"field":value` members of the flat object. The typed methods
/// are what [`write`]'s callers use; the `Visit` impl is the same for events.
pub struct Fields<'a> {
    buf: &'a mut Vec<u8>,
    json: bool,
}

impl Fields<'_> {
    /// Writes the field's name; false for plain's message, which is written bare.
    fn name(&mut self, name: &str) -> bool {
        if self.json {
            self.buf.push(b',');
            json_str(self.buf, name);
            self.buf.push(b':');
        } else {
            self.buf.push(b' ');
            if name == "message" {
                return false;
            }
            self.buf.extend_from_slice(name.as_bytes());
            self.buf.push(b'=');
        }
        true
    }

    /// A string field (`field = "value"`): quoted.
    pub fn str(&mut self, name: &str, value: &str) {
        if !self.name(name) {
            self.buf.extend_from_slice(value.as_bytes());
        } else if self.json {
            json_str(self.buf, value);
        } else if !needs_escape(value.as_bytes()) {
            self.buf.push(b'"');
            self.buf.extend_from_slice(value.as_bytes());
            self.buf.push(b'"');
        } else {
            let _ = write!(Bytes(self.buf), "{value:?}");
        }
    }

    /// A string field if present; nothing when absent.
    pub fn opt_str(&mut self, name: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(name, v);
        }
    }

    /// A `Display`ed field whose text is `value` (`field = %value`): bare in plain lines.
    pub fn bare(&mut self, name: &str, value: &str) {
        self.name(name);
        if self.json {
            json_str(self.buf, value);
        } else {
            self.buf.extend_from_slice(value.as_bytes());
        }
    }

    /// A number field.
    pub fn int(&mut self, name: &str, value: impl itoa::Integer) {
        self.name(name);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// A socket address field, as `%addr` writes it (`127.0.0.1:80`, `[::1]:80`), without
    /// going through `fmt` for IPv4.
    pub fn addr(&mut self, name: &str, addr: SocketAddr) {
        self.name(name);
        if self.json {
            self.buf.push(b'"');
        }
        match addr {
            SocketAddr::V4(a) => {
                // `255.255.255.255:` at most, built on the stack and appended once; the octets
                // from a table (two addresses a line took 730 instructions through `itoa` per
                // octet).
                let mut out = [0u8; 16];
                let mut len = 0;
                for (i, o) in a.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        out[len] = b'.';
                        len += 1;
                    }
                    let (digits, n) = OCTETS[o as usize];
                    out[len..len + 3].copy_from_slice(&digits);
                    len += n as usize;
                }
                out[len] = b':';
                len += 1;
                self.buf.extend_from_slice(&out[..len]);
                self.buf
                    .extend_from_slice(itoa::Buffer::new().format(a.port()).as_bytes());
            }
            SocketAddr::V6(a) => {
                let _ = write!(Bytes(self.buf), "{a}");
            }
        }
        if self.json {
            self.buf.push(b'"');
        }
    }

    /// Any `Display`ed field (`field = %value`), through `fmt`.
    pub fn display(&mut self, name: &str, value: &dyn std::fmt::Display) {
        self.debug(name, &tracing::field::display(value));
    }

    fn debug(&mut self, name: &str, value: &dyn std::fmt::Debug) {
        self.name(name);
        let start = self.buf.len();
        let _ = write!(Bytes(self.buf), "{value:?}");
        if !self.json {
            return;
        }
        // Formatted first, then escaped: Display output may hold any character.
        if self.buf[start..]
            .iter()
            .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
        {
            let raw = String::from_utf8_lossy(&self.buf[start..]).into_owned();
            self.buf.truncate(start);
            json_str(self.buf, &raw);
        } else {
            self.buf.insert(start, b'"');
            self.buf.push(b'"');
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.str(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.int(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.int(field.name(), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field.name());
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field.name());
        if !self.json {
            let _ = write!(Bytes(self.buf), "{value:?}");
        } else if value.is_finite() {
            let _ = write!(Bytes(self.buf), "{value}");
        } else {
            self.buf.extend_from_slice(b"null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.debug(field.name(), value);
    }
}

/// Whether `s` holds a byte a plain line escapes: a control byte, DEL or non-ASCII, `"`
/// or `\` (JSON escapes fewer; its slow path sorts them out). No early exit, so the
/// compiler compares whole vectors of bytes at a time: most values (paths, names,
/// identities) need nothing.
fn needs_escape(s: &[u8]) -> bool {
    s.iter()
        .map(|&b| u8::from(!(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\'))
        .fold(0, |a, x| a | x)
        != 0
}

/// `s` as a JSON string, quoted and escaped.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    if !needs_escape(s.as_bytes()) {
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
        return;
    }
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&s.as_bytes()[from..i]);
        if esc.is_empty() {
            let _ = write!(Bytes(buf), "\\u{b:04x}");
        } else {
            buf.extend_from_slice(esc);
        }
        from = i + 1;
    }
    buf.extend_from_slice(&s.as_bytes()[from..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::prelude::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(json: bool, emit: impl FnOnce()) -> String {
        let sink = Sink::default();
        let (lines, guard) = Lines::new(sink.clone());
        let subscriber = tracing_subscriber::registry().with(AccessLayer::new(lines, json));
        tracing::subscriber::with_default(subscriber, emit);
        drop(guard);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        out
    }

    fn event() {
        let peer: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let none: Option<&str> = None;
        tracing::info!(
            target: "access",
            listener = "out",
            peer = %peer,
            peer_id = none,
            path = "/a \"b\"\n",
            status = 200u16,
            delta = -3i64,
            ok = true,
            "http"
        );
        tracing::info!(target: "spoke::other", "not an access line");
    }

    /// An HTTP-like access event with each kind of field the direct writer has: `%` values
    /// (a name, addresses, a trace id), quoted strings, an absent one, numbers.
    fn http_event() {
        let peer: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let v6: std::net::SocketAddr = "[::1]:8080".parse().unwrap();
        let none: Option<&str> = None;
        tracing::info!(
            target: "access",
            listener = %"out",
            direction = "outbound",
            peer = %peer,
            peer_id = none,
            path = "/a \"b\"\n",
            status = 200u16,
            endpoint = %v6,
            retries = 0u32,
            trace_id = %"4bf92f3577b34da6a3ce929d0e0e4736",
            "http"
        );
    }

    /// The same line through `Fields`' typed methods, as `forward.rs` writes it.
    fn http_direct(json: bool) -> String {
        let sink = Sink::default();
        let (lines, guard) = Lines::new(sink.clone());
        let peer: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let v6: std::net::SocketAddr = "[::1]:8080".parse().unwrap();
        AccessLayer::new(lines, json).direct("http", |f| {
            f.bare("listener", "out");
            f.str("direction", "outbound");
            f.addr("peer", peer);
            f.opt_str("peer_id", None);
            f.str("path", "/a \"b\"\n");
            f.int("status", 200u16);
            f.addr("endpoint", v6);
            f.int("retries", 0u32);
            f.display("trace_id", &"4bf92f3577b34da6a3ce929d0e0e4736");
        });
        drop(guard);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        out
    }

    /// The line after its timestamp (which differs by the microsecond).
    fn after_stamp(line: &str) -> &str {
        let at = line.find(if line.starts_with('{') {
            "\"level\""
        } else {
            "  INFO "
        });
        &line[at.unwrap_or_else(|| panic!("{line}"))..]
    }

    #[test]
    fn direct_lines_are_the_events_lines() {
        for json in [false, true] {
            let direct = http_direct(json);
            let event = lines(json, http_event);
            assert_eq!(direct.lines().count(), 1, "{direct}");
            assert_eq!(event.lines().count(), 1, "{event}");
            assert_eq!(after_stamp(&direct), after_stamp(&event), "json={json}");
        }
        let plain = http_direct(false);
        assert!(
            plain.contains(" peer=127.0.0.1:4000 ") && plain.contains(" endpoint=[::1]:8080 "),
            "{plain}"
        );
    }

    #[test]
    fn ipv4_addresses_are_written_as_display_writes_them() {
        let mut addrs: Vec<SocketAddr> = ["0.0.0.0:0", "255.255.255.255:65535", "10.0.9.100:8080"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        for o in 0..=255u8 {
            let ip = std::net::Ipv4Addr::new(o, o.wrapping_mul(7), 255 - o, o / 3);
            addrs.push(SocketAddr::from((ip, u16::from(o) * 257)));
        }
        for json in [false, true] {
            for a in &addrs {
                let mut buf = Vec::new();
                Fields {
                    buf: &mut buf,
                    json,
                }
                .addr("peer", *a);
                let want = if json {
                    format!(",\"peer\":\"{a}\"")
                } else {
                    format!(" peer={a}")
                };
                assert_eq!(String::from_utf8_lossy(&buf), want);
            }
        }
    }

    #[test]
    fn escaping_is_found_anywhere_in_a_value() {
        assert!(!needs_escape(b""));
        assert!(!needs_escape(
            b"spiffe://cluster.local/ns/default/sa/web ~!"
        ));
        let long = "/a".repeat(40);
        for bad in ["\"", "\\", "\n", "\u{7f}", "é"] {
            for at in [0, 1, 17, long.len()] {
                let mut v = long.clone();
                v.insert_str(at, bad);
                assert!(needs_escape(v.as_bytes()), "{v:?}");
            }
        }
        let mut buf = Vec::new();
        json_str(&mut buf, "/é\"x");
        assert_eq!(buf, "\"/é\\\"x\"".as_bytes());
    }

    #[test]
    fn plain_lines_read_like_the_fmt_layer_wrote_them() {
        let out = lines(false, event);
        assert_eq!(out.lines().count(), 1, "{out}");
        let (stamp, rest) = out.split_once("  INFO ").unwrap();
        assert_eq!(stamp.len(), "2026-11-30T21:26:02.651683Z".len(), "{stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
        assert_eq!(
            rest,
            "access: http listener=\"out\" peer=127.0.0.1:4000 path=\"/a \\\"b\\\"\\n\" \
             status=200 delta=-3 ok=true\n"
        );
    }

    #[test]
    fn json_lines_are_one_flat_object_each() {
        let out = lines(true, event);
        assert_eq!(out.lines().count(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "http");
        assert_eq!(v["target"], "access");
        assert_eq!(v["listener"], "out");
        assert_eq!(v["peer"], "127.0.0.1:4000");
        assert_eq!(v["path"], "/a \"b\"\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["delta"], -3);
        assert_eq!(v["ok"], true);
        assert!(v.get("peer_id").is_none(), "{v}");
        let stamp = v["timestamp"].as_str().unwrap();
        let parsed =
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        assert!((now - parsed).abs() < time::Duration::seconds(5), "{stamp}");
    }
}
