//! The access log's own writer: one line per request or connection, formatted on the worker
//! that handled it into a buffer of that thread's own, and handed to stderr in chunks by a
//! flusher thread.
//!
//! Why not the `fmt` layer like every other event: measured on the two-hop HTTP bench at a
//! fixed rate, access lines through `fmt` and `tracing-appender` cost about 30% more CPU per
//! request: a `Vec` per line, a thread wake-up (futex) per line, a writer thread spinning on
//! its channel, and the generic field visitor. Here a line costs the worker one uncontended
//! lock of its own buffer and a format into it; the flusher wakes once per `FLUSH` while
//! lines arrive (and once per line only when they trickle in), and passes whole chunks to the
//! same non-blocking stderr writer the other events use, so lines never interleave mid-line
//! and a stuck stderr still never stalls a worker.
//!
//! The format is the one the `fmt` layer wrote (plain: `TIMESTAMP  INFO access: MESSAGE
//! field=value ...`, string values quoted; JSON: one flat object with `timestamp`, `level`,
//! `message`, the fields in order, then `target`), so log pipelines keep parsing it. Plain
//! access lines are never coloured.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// The events this writer takes; the `fmt` layer is filtered to leave them alone.
pub const TARGET: &str = "access";

/// How long the flusher gathers lines after the first one before writing them: the delay a
/// line may see, and at high rates the interval between writes.
const FLUSH: Duration = Duration::from_millis(20);
/// Bytes one thread may have waiting; beyond that (stderr not keeping up) lines are dropped
/// and counted rather than memory growing.
const MAX_WAITING: usize = 4 << 20;
/// A flushed buffer grown past this is shrunk back, so a burst does not pin memory.
const KEEP: usize = 256 << 10;

/// Installs as a `tracing` layer; create with [`AccessLog::start`].
pub struct AccessLayer {
    shared: Arc<Shared>,
    json: bool,
}

/// Stops the flusher after a last flush when dropped.
pub struct AccessLog {
    shared: Arc<Shared>,
}

type Out = Box<dyn Write + Send>;

struct Shared {
    slots: Mutex<Vec<Arc<Slot>>>,
    state: Mutex<State>,
    wake: Condvar,
    dropped: AtomicU64,
    /// The flusher starts with the first line: a proxy without access logging never has
    /// the thread (nor its stack and malloc arena).
    flusher: Mutex<Flusher>,
}

enum Flusher {
    NotStarted(Out),
    Running(std::thread::JoinHandle<()>),
    /// Could not start, or stopped: lines are dropped and counted.
    Gone,
}

#[derive(Default)]
struct State {
    dirty: bool,
    stop: bool,
}

/// One thread's waiting lines. Its lock is only ever contended by the flusher's swap.
#[derive(Default)]
struct Slot {
    buf: Mutex<Vec<u8>>,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// Per thread: its slot (for the writer it was registered with) and the formatted current
/// second, which every line of that second shares.
#[derive(Default)]
struct Local {
    slot: Option<(std::sync::Weak<Shared>, Arc<Slot>)>,
    second: u64,
    stamp: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves a byte buffer, never a broken invariant.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AccessLog {
    /// The guard and the layer to install; lines go to `out` (started on the first line).
    pub fn new(out: impl Write + Send + 'static, json: bool) -> (AccessLog, AccessLayer) {
        let shared = Arc::new(Shared {
            slots: Mutex::new(Vec::new()),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            flusher: Mutex::new(Flusher::NotStarted(Box::new(out))),
        });
        (
            AccessLog {
                shared: shared.clone(),
            },
            AccessLayer { shared, json },
        )
    }
}

impl Shared {
    /// Starts the flusher if it is not running yet; false if it cannot run.
    fn ensure_flusher(self: &Arc<Self>) -> bool {
        let mut f = lock(&self.flusher);
        match std::mem::replace(&mut *f, Flusher::Gone) {
            Flusher::NotStarted(out) => {
                let s = self.clone();
                match std::thread::Builder::new()
                    .name("spoke-access".into())
                    .spawn(move || flusher(&s, out))
                {
                    Ok(t) => *f = Flusher::Running(t),
                    Err(e) => tracing::error!(error = %e, "cannot start the access log writer"),
                }
            }
            other => *f = other,
        }
        matches!(*f, Flusher::Running(_))
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_one();
        let f = std::mem::replace(&mut *lock(&self.shared.flusher), Flusher::Gone);
        if let Flusher::Running(t) = f {
            let _ = t.join();
        }
    }
}

fn flusher(shared: &Shared, mut out: Out) {
    let mut spare = Vec::new();
    let mut state = lock(&shared.state);
    loop {
        while !state.dirty && !state.stop {
            state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        // Gather: lines of the next FLUSH go out in the same write.
        let deadline = Instant::now() + FLUSH;
        while !state.stop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = shared
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.dirty = false;
        let stop = state.stop;
        drop(state);

        let slots: Vec<Arc<Slot>> = {
            let mut list = lock(&shared.slots);
            let slots = list.clone();
            // Held by the list, this copy and its thread while that thread lives: a slot held
            // by two has lost its thread, and after this last flush nothing can fill it.
            list.retain(|s| Arc::strong_count(s) > 2);
            slots
        };
        for slot in &slots {
            std::mem::swap(&mut *lock(&slot.buf), &mut spare);
            if !spare.is_empty() {
                // The writer is non-blocking (a queue to the stderr thread): never waits.
                let _ = out.write_all(&spare);
            }
            spare.clear();
            if spare.capacity() > KEEP {
                spare.shrink_to(KEEP);
            }
        }
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "access lines dropped: stderr is not keeping up with the access log"
            );
        }
        if stop {
            let _ = out.flush();
            return;
        }
        state = lock(&shared.state);
    }
}

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != TARGET {
            return;
        }
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let slot = local.slot_for(&self.shared);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            local.stamp_for(now.as_secs());
            let mut buf = lock(&slot.buf);
            let was_empty = buf.is_empty();
            let start = buf.len();
            if start >= MAX_WAITING {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let micros = now.subsec_micros();
            if self.json {
                buf.extend_from_slice(b"{\"timestamp\":\"");
                timestamp(&mut buf, &local.stamp, micros);
                buf.extend_from_slice(b"\",\"level\":\"");
                buf.extend_from_slice(meta.level().as_str().as_bytes());
                buf.push(b'"');
                event.record(&mut Json { buf: &mut buf });
                buf.extend_from_slice(b",\"target\":");
                json_str(&mut buf, meta.target());
                buf.extend_from_slice(b"}\n");
            } else {
                timestamp(&mut buf, &local.stamp, micros);
                let level = meta.level().as_str();
                buf.extend_from_slice(&b"      "[..6 - level.len()]);
                buf.extend_from_slice(level.as_bytes());
                buf.push(b' ');
                buf.extend_from_slice(meta.target().as_bytes());
                buf.push(b':');
                event.record(&mut Plain { buf: &mut buf });
                buf.push(b'\n');
            }
            drop(buf);
            if was_empty {
                if !self.shared.ensure_flusher() {
                    // Nobody will write it: take the line back.
                    lock(&slot.buf).clear();
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                lock(&self.shared.state).dirty = true;
                self.shared.wake.notify_one();
            }
        });
    }
}

impl Local {
    fn slot_for(&mut self, shared: &Arc<Shared>) -> Arc<Slot> {
        if let Some((owner, slot)) = &self.slot {
            if std::ptr::eq(owner.as_ptr(), Arc::as_ptr(shared)) {
                return slot.clone();
            }
        }
        let slot = Arc::new(Slot::default());
        lock(&shared.slots).push(slot.clone());
        self.slot = Some((Arc::downgrade(shared), slot.clone()));
        slot
    }

    /// `YYYY-MM-DDTHH:MM:SS` of `secs` (UTC), reformatted once per second.
    fn stamp_for(&mut self, secs: u64) {
        if secs == self.second && !self.stamp.is_empty() {
            return;
        }
        self.second = secs;
        self.stamp.clear();
        let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let _ = write!(
            self.stamp,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
    }
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

/// `field=value` pairs as the `fmt` layer writes them: strings quoted and escaped (Rust
/// `Debug`), `Display`ed values and numbers bare, the message first without its name.
struct Plain<'a> {
    buf: &'a mut Vec<u8>,
}

impl Plain<'_> {
    fn name(&mut self, field: &Field) {
        self.buf.push(b' ');
        self.buf.extend_from_slice(field.name().as_bytes());
        self.buf.push(b'=');
    }
}

impl Visit for Plain<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.buf.push(b' ');
            self.buf.extend_from_slice(value.as_bytes());
            return;
        }
        self.name(field);
        if value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.buf.push(b'"');
            self.buf.extend_from_slice(value.as_bytes());
            self.buf.push(b'"');
        } else {
            let _ = write!(Bytes(self.buf), "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.buf.push(b' ');
        } else {
            self.name(field);
        }
        let _ = write!(Bytes(self.buf), "{value:?}");
    }
}

/// `,"field":value` members of the flat JSON object.
struct Json<'a> {
    buf: &'a mut Vec<u8>,
}

impl Json<'_> {
    fn name(&mut self, field: &Field) {
        self.buf.push(b',');
        json_str(self.buf, field.name());
        self.buf.push(b':');
    }
}

impl Visit for Json<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        json_str(self.buf, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field);
        if value.is_finite() {
            let _ = write!(Bytes(self.buf), "{value}");
        } else {
            self.buf.extend_from_slice(b"null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.name(field);
        // Formatted first, then escaped: Display output may hold any character.
        let start = self.buf.len();
        let _ = write!(Bytes(self.buf), "{value:?}");
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

/// `s` as a JSON string, quoted and escaped.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
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
    use tracing_subscriber::prelude::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(json: bool, emit: impl FnOnce()) -> String {
        let sink = Sink::default();
        let (guard, layer) = AccessLog::new(sink.clone(), json);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        drop(guard);
        let out = String::from_utf8(lock(&sink.0).clone()).unwrap();
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

    #[test]
    fn lines_of_ended_threads_and_of_many_threads_all_arrive() {
        let out = lines(false, || {
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let d = dispatch.clone();
                    std::thread::spawn(move || {
                        tracing::dispatcher::with_default(&d, || {
                            for i in 0..500 {
                                tracing::info!(target: "access", t, i, "x");
                            }
                        })
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        });
        assert_eq!(out.lines().count(), 2000);
        assert!(out.lines().all(|l| l.ends_with(char::is_numeric)), "{out}");
    }

    #[test]
    fn a_line_arrives_without_waiting_for_more() {
        let sink = Sink::default();
        let (_guard, layer) = AccessLog::new(sink.clone(), false);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "access", "one");
        });
        let t = Instant::now();
        while lock(&sink.0).is_empty() {
            assert!(t.elapsed() < Duration::from_secs(2), "line never flushed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
