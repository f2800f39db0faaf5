//! Where every log line goes: a buffer per thread, written to stderr in batches by one
//! flusher thread.
//!
//! A thread that logs appends the line to a buffer of its own (one uncontended lock: only
//! the flusher's swap ever competes for it). The flusher wakes when a buffer goes from empty
//! to non-empty, gathers for `FLUSH`, swaps every buffer out and writes them, so under load
//! there is one `write(2)` per batch and no thread wake-up per line, and a quiet proxy still
//! shows a line within `FLUSH`. Measured on the two-hop HTTP bench with the access log on,
//! this replaced `tracing-appender` (a `Vec` and a channel send per line, a writer thread
//! that woke per line and spun on its channel): about 10% of the proxies' CPU.
//!
//! A stderr that stops being read never stalls a worker: the flusher blocks in its write,
//! buffers fill to `MAX_WAITING`, and further lines are dropped and counted (a `warn` event
//! says how many once stderr moves again). Lines within one batch are grouped by thread,
//! each thread's in order.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the flusher gathers lines after the first one before writing them: the delay a
/// line may see, and at high rates the interval between writes.
const FLUSH: Duration = Duration::from_millis(20);
/// Bytes one thread may have waiting; beyond that (stderr not keeping up) lines are dropped
/// and counted rather than memory growing.
const MAX_WAITING: usize = 4 << 20;
/// A flushed buffer grown past this is shrunk back, so a burst does not pin memory.
const KEEP: usize = 256 << 10;
/// How long a clean exit waits for the last lines to be written.
const LAST_WRITE: Duration = Duration::from_secs(1);

/// Appends lines; cheap to clone. Also a `MakeWriter` for the `fmt` layer.
#[derive(Clone)]
pub struct Lines {
    shared: Arc<Shared>,
}

/// Writes what is waiting and stops the flusher when dropped (waiting at most `LAST_WRITE`).
pub struct LinesGuard {
    shared: Arc<Shared>,
}

type Out = Box<dyn Write + Send>;

struct Shared {
    slots: Mutex<Vec<Arc<Slot>>>,
    state: Mutex<State>,
    /// The flusher waits on it for lines; the guard waits on it for the last write.
    wake: Condvar,
    dropped: AtomicU64,
    /// The flusher starts with the first line: a proxy that logs nothing never has the
    /// thread (nor its stack and malloc arena).
    flusher: Mutex<Flusher>,
}

enum Flusher {
    NotStarted(Out),
    Running,
    /// Could not start, or stopped: lines are dropped and counted.
    Gone,
}

#[derive(Default)]
struct State {
    dirty: bool,
    stop: bool,
    stopped: bool,
}

/// One thread's waiting lines.
#[derive(Default)]
struct Slot {
    buf: Mutex<Vec<u8>>,
}

thread_local! {
    /// This thread's slot, for the writer it was registered with.
    static SLOT: RefCell<Option<(Weak<Shared>, Arc<Slot>)>> = const { RefCell::new(None) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves a byte buffer, never a broken invariant.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lines {
    /// Lines for `out` (normally stderr) and the guard that writes the last ones.
    pub fn new(out: impl Write + Send + 'static) -> (Lines, LinesGuard) {
        let shared = Arc::new(Shared {
            slots: Mutex::new(Vec::new()),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            flusher: Mutex::new(Flusher::NotStarted(Box::new(out))),
        });
        (
            Lines {
                shared: shared.clone(),
            },
            LinesGuard { shared },
        )
    }

    /// Lets `write` append one or more whole lines to this thread's buffer.
    pub fn append(&self, write: impl FnOnce(&mut Vec<u8>)) {
        SLOT.with(|s| {
            let mut s = s.borrow_mut();
            let mine = matches!(&*s, Some((owner, _)) if std::ptr::eq(owner.as_ptr(), Arc::as_ptr(&self.shared)));
            if !mine {
                let slot = Arc::new(Slot::default());
                lock(&self.shared.slots).push(slot.clone());
                *s = Some((Arc::downgrade(&self.shared), slot));
            }
            if let Some((_, slot)) = &*s {
                self.append_to(slot, write);
            }
        });
    }

    fn append_to(&self, slot: &Slot, write: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = lock(&slot.buf);
        if buf.len() >= MAX_WAITING {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = buf.is_empty();
        write(&mut buf);
        drop(buf);
        if was_empty {
            if !self.shared.ensure_flusher() {
                // Nobody will write it: take it back.
                lock(&slot.buf).clear();
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            lock(&self.shared.state).dirty = true;
            self.shared.wake.notify_all();
        }
    }
}

/// The `fmt` layer's writer: it formats an event into a buffer of its own and writes it
/// with one `write_all`, which becomes one append.
pub struct LineWriter<'a> {
    lines: &'a Lines,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.lines.append(|buf| buf.extend_from_slice(b));
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter { lines: self }
    }
}

impl Shared {
    /// Starts the flusher if it is not running yet; false if it cannot run.
    fn ensure_flusher(self: &Arc<Self>) -> bool {
        let mut f = lock(&self.flusher);
        if let Flusher::NotStarted(_) = &*f {
            let Flusher::NotStarted(out) = std::mem::replace(&mut *f, Flusher::Gone) else {
                unreachable!()
            };
            let s = self.clone();
            if let Err(e) = std::thread::Builder::new()
                .name("spoke-log".into())
                .spawn(move || flusher(&s, out))
            {
                // No logger to tell: say it where the logs would have gone.
                eprintln!("spoke: cannot start the log writer thread: {e}");
            } else {
                *f = Flusher::Running;
            }
        }
        matches!(*f, Flusher::Running)
    }
}

impl Drop for LinesGuard {
    fn drop(&mut self) {
        let running = matches!(
            std::mem::replace(&mut *lock(&self.shared.flusher), Flusher::Gone),
            Flusher::Running
        );
        let mut state = lock(&self.shared.state);
        state.stop = true;
        self.shared.wake.notify_all();
        if !running {
            return;
        }
        // Bounded: a stderr nobody reads must not keep the process from exiting.
        let _ = self
            .shared
            .wake
            .wait_timeout_while(state, LAST_WRITE, |s| !s.stopped);
    }
}

fn flusher(shared: &Shared, mut out: Out) {
    let mut spare = Vec::new();
    let mut state = lock(&shared.state);
    loop {
        state = shared
            .wake
            .wait_while(state, |s| !s.dirty && !s.stop)
            .unwrap_or_else(|e| e.into_inner());
        // Gather: lines of the next FLUSH go out in the same write.
        state = shared
            .wake
            .wait_timeout_while(state, FLUSH, |s| !s.stop)
            .unwrap_or_else(|e| e.into_inner())
            .0;
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
                let _ = out.write_all(&spare);
            }
            spare.clear();
            if spare.capacity() > KEEP {
                spare.shrink_to(KEEP);
            }
        }
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 && !stop {
            tracing::warn!(
                dropped,
                "log lines dropped: stderr is not keeping up with the log"
            );
        }
        if stop {
            let _ = out.flush();
            let mut state = lock(&shared.state);
            state.stopped = true;
            shared.wake.notify_all();
            return;
        }
        state = lock(&shared.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A writer the test can read back, or block (a stuck pipe).
    #[derive(Clone, Default)]
    pub struct Sink(pub Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Stuck;

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_of_ended_threads_and_of_many_threads_all_arrive_in_order() {
        let sink = Sink::default();
        let (lines, guard) = Lines::new(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let lines = lines.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        lines.append(|b| b.extend_from_slice(format!("{t} {i}\n").as_bytes()));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let out = String::from_utf8(lock(&sink.0).clone()).unwrap();
        assert_eq!(out.lines().count(), 2000);
        for t in 0..4 {
            let mine: Vec<u32> = out
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..500).collect::<Vec<_>>());
        }
        // Every ended thread's slot is gone after the last flush.
        assert!(lock(&lines.shared.slots).is_empty());
    }

    #[test]
    fn a_line_arrives_without_waiting_for_more() {
        let sink = Sink::default();
        let (lines, _guard) = Lines::new(sink.clone());
        lines.append(|b| b.extend_from_slice(b"one\n"));
        let t = Instant::now();
        while lock(&sink.0).is_empty() {
            assert!(t.elapsed() < Duration::from_secs(2), "line never flushed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_stuck_writer_costs_lines_never_a_wait() {
        let (lines, guard) = Lines::new(Stuck);
        let t = Instant::now();
        let line = [b'x'; 1023];
        // 16 MiB of lines: far past what may wait.
        for _ in 0..16 * 1024 {
            lines.append(|b| {
                b.extend_from_slice(&line);
                b.push(b'\n')
            });
        }
        assert!(lines.shared.dropped.load(Ordering::Relaxed) > 8 * 1024);
        // And exiting does not hang on it.
        drop(guard);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn nothing_logged_no_thread() {
        let (lines, guard) = Lines::new(Sink::default());
        assert!(matches!(
            *lock(&lines.shared.flusher),
            Flusher::NotStarted(_)
        ));
        drop(guard);
    }
}
