//! Memory at rest: when the proxy turns quiet after start-up or after traffic, it gives back
//! what an idle sidecar does not need, so its RSS returns to where it was before the load.
//!
//! Three things stay resident after work that nothing frees by itself:
//! - Code pages. The kernel maps a binary's code in 64 KiB windows or more (fault-around,
//!   large page-cache folios) around every page touched, so start-up (config parsing, CLI,
//!   TLS set-up) and a burst's rarer paths leave megabytes of the 15 MiB of text mapped, and
//!   the C library and libm (shared with every process, so often in large folios) another
//!   two. The proxy unmaps its read-only file pages, the binary's and the shared libraries'
//!   (`MADV_DONTNEED`); what it runs next faults back in from the page cache, as on any
//!   first use.
//! - Pooled upstream connections. An HTTP/2 connection keeps the stream table it grew to at
//!   its busiest (about 1.7 KiB per concurrent stream, on each side) for as long as it
//!   lives, and up to 64 idle HTTP/1.1 connections per endpoint keep their buffers. The pool
//!   lets them go; the next request dials afresh (the mTLS session resumes).
//! - The allocator's thread caches. jemalloc purges free pages in the background, but each
//!   worker's cache of freed objects (and the slabs they pin) is trimmed only as that thread
//!   allocates, which an idle worker never does: after 1,000 connections closed, 2 MiB stayed.
//!   Each worker flushes its own cache the next time it parks.
//!
//! "Quiet" is read from the runtime's own busy time: a tick (1 s) in which the workers were
//! busy less than 1% of it. The first quiet tick after work (or after start-up) releases code
//! and pooled connections, once per quiet spell; every quiet tick flushes the allocator, which
//! costs next to nothing when nothing was freed. `spoke proxy --idle-trim false`
//! (`SPOKE_IDLE_TRIM=0`) turns it all off, e.g. while uprobes are attached to the binary: a
//! release drops their breakpoints with the pages.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::proxy::Shared;

/// How often the runtime's busy time is read.
const TICK: Duration = Duration::from_secs(1);
/// A tick with less busy time than this (summed over the workers) is quiet: 1% of a tick.
const QUIET_BUSY: Duration = Duration::from_millis(10);

/// Bumped by each trim; a worker that parks and has not yet flushed for this generation does.
static TRIM_GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static FLUSHED: Cell<u64> = const { Cell::new(0) };
}

/// Runtime hook (`on_thread_park`): after a trim, each worker flushes its own allocator
/// cache once, on its next park. Costs one atomic load per park otherwise.
pub fn on_worker_park() {
    let generation = TRIM_GENERATION.load(Ordering::Relaxed);
    FLUSHED.with(|f| {
        if f.get() != generation {
            f.set(generation);
            flush_thread_cache();
        }
    });
}

/// Watches the runtime's busy time and trims when it turns quiet. Runs until aborted.
pub async fn run(shared: Arc<Shared>) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let busy = || -> Duration {
        (0..metrics.num_workers())
            .map(|w| metrics.worker_total_busy_duration(w))
            .sum()
    };
    let mut last = busy();
    // Start-up counts as work: the first quiet tick after it trims.
    let mut worked = true;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = busy();
        let spent = now.saturating_sub(last);
        last = now;
        if spent >= QUIET_BUSY {
            worked = true;
            continue;
        }
        if worked {
            worked = false;
            trim(&shared, spent);
        }
        // Every quiet tick hands back what was freed since the last one (connections that
        // closed after the trim, on this side or the peer's): each worker flushes its cache
        // on its next park, and the arenas purge. Next to nothing to do when nothing was freed.
        TRIM_GENERATION.fetch_add(1, Ordering::Relaxed);
        purge_allocator();
    }
}

/// The first quiet tick after work: pooled upstream connections let go, code pages unmapped.
fn trim(shared: &Shared, busy: Duration) {
    let (h2, h1) = shared.pool.release();
    let code = release_code();
    shared.metrics.memory_trims.inc();
    match code {
        Ok(bytes) => {
            shared.metrics.memory_code_released.inc_by(bytes);
            tracing::debug!(
                code_bytes = bytes,
                h2_connections = h2,
                h1_connections = h1,
                busy_us = busy.as_micros() as u64,
                "quiet: memory trimmed"
            );
        }
        Err(e) => tracing::debug!(
            error = %e,
            h2_connections = h2,
            h1_connections = h1,
            "quiet: pools trimmed; code pages not released"
        ),
    }
}

/// Unmaps the resident pages of the read-only, private file mappings (the binary's and the
/// shared libraries') that hold no private (copy-on-write) pages: code, read-only data and
/// the relocation tables used only at load. Returns the resident bytes unmapped.
pub fn release_code() -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for m in code_mappings(&smaps) {
        madvise_dontneed(m.start, m.end - m.start)?;
        released += m.rss_kib * 1024;
    }
    Ok(released)
}

/// A mapping `release_code` may unmap.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// The file mappings in `smaps` text that are private, not writable and have no anonymous
/// (copied-on-write) pages: their contents are the file's, so unmapped pages come back
/// unchanged. A relocated read-only segment (RELRO) has anonymous pages and is left alone;
/// so is a code page a debugger patched, and so are the kernel's own (vdso, vvar).
fn code_mappings(smaps: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut cur: Option<Mapping> = None;
    let mut rss = 0;
    for line in smaps.lines() {
        if let Some(m) = header(line) {
            cur = m;
            continue;
        }
        let mut f = line.split_whitespace();
        match (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) {
            (Some("Rss:"), Some(kib)) => rss = kib,
            (Some("Anonymous:"), Some(kib)) => {
                if let Some(mut m) = cur.take() {
                    if kib == 0 {
                        m.rss_kib = rss;
                        out.push(m);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Parses an smaps mapping header (`start-end perms offset major:minor inode path`).
/// `None` if `line` is not a header; `Some(None)` for a header of a mapping not to release.
fn header(line: &str) -> Option<Option<Mapping>> {
    let mut f = line.split_whitespace();
    let (range, perms, _off, devno, inode) =
        (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    if perms.len() != 4 || !devno.contains(':') {
        return None;
    }
    let p = perms.as_bytes();
    let file = inode.parse::<u64>().is_ok_and(|i| i != 0)
        && f.next()
            .is_some_and(|path| path.starts_with('/') && !path.starts_with("/dev/"));
    let read_only_private = p[1] == b'-' && p[3] == b'p';
    Some(
        (file && read_only_private && end > start).then_some(Mapping {
            start,
            end,
            rss_kib: 0,
        }),
    )
}

#[allow(unsafe_code)]
fn madvise_dontneed(start: usize, len: usize) -> std::io::Result<()> {
    // SAFETY: the range is one whole file mapping, private, not writable and without
    // copied-on-write pages (checked by `code_mappings` from smaps just before), so every
    // resident page of it is the page cache's page of that file. MADV_DONTNEED only drops
    // the page table entries; the next access maps the same page cache page again. (A file
    // changed in place would show through unmodified private pages with or without this;
    // the kernel refuses to open a running executable for writing, and package managers
    // replace libraries by renaming, which leaves the mapped inode as it was.)
    unsafe {
        rustix::mm::madvise(
            start as *mut std::ffi::c_void,
            len,
            rustix::mm::Advice::LinuxDontNeed,
        )
    }
    .map_err(std::io::Error::from)
}

/// Returns the calling thread's jemalloc cache to its arena.
fn flush_thread_cache() {
    mallctl_action(c"thread.tcache.flush");
}

/// Flushes this thread's cache and gives every arena's free pages back now, rather than
/// after the background thread's decay delay (4096 is `MALLCTL_ARENAS_ALL`).
fn purge_allocator() {
    flush_thread_cache();
    mallctl_action(c"arena.4096.purge");
}

/// Runs a jemalloc control that takes and returns nothing. A process that allocates with
/// another allocator only initialises an unused jemalloc.
#[allow(unsafe_code)]
fn mallctl_action(name: &std::ffi::CStr) {
    // SAFETY: the controls used here are actions: no old value is read (null pointers, as
    // mallctl allows) and no new value written (null, length 0); `name` is NUL-terminated.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55f6d4db9000-55f6d5f5b000 r-xp 00000000 fe:00 10149984                   /x/spoke
Size:              18056 kB
Rss:                6464 kB
Anonymous:             0 kB
55f6d5f5b000-55f6d5fe0000 r--p 011a1000 fe:00 10149984                   /x/spoke
Rss:                 532 kB
Anonymous:           528 kB
55f6d5fe0000-55f6d5fe5000 rw-p 01226000 fe:00 10149984                   /x/spoke
Rss:                  20 kB
Anonymous:             0 kB
7fd29dd33000-7fd29dd37000 r--p 001cf000 fe:00 326279                     /lib/libc.so.6
Rss:                  16 kB
Anonymous:             0 kB
7fd29dd37000-7fd29dd39000 r--p 001d3000 fe:00 326279                     /lib/libc.so.6
Rss:                   8 kB
Anonymous:             8 kB
7fd29ca00000-7fd29d200000 rw-p 00000000 00:00 0
Rss:                 556 kB
Anonymous:           556 kB
7ffd1d5f2000-7ffd1d5f4000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
7fd29d300000-7fd29d301000 r--p 00000000 00:05 1026                       /dev/zero (deleted)
Rss:                   4 kB
Anonymous:             0 kB
";

    #[test]
    fn only_unmodified_read_only_file_mappings_are_released() {
        // The binary's code and libc's read-only data: the binary's RELRO segment and libc's
        // have copied pages, the data segment is writable, the heap is anonymous, the vdso is
        // the kernel's and /dev/zero is no file to fault back from.
        assert_eq!(
            code_mappings(SMAPS),
            vec![
                Mapping {
                    start: 0x55f6d4db9000,
                    end: 0x55f6d5f5b000,
                    rss_kib: 6464
                },
                Mapping {
                    start: 0x7fd29dd33000,
                    end: 0x7fd29dd37000,
                    rss_kib: 16
                }
            ]
        );
    }

    #[test]
    fn releasing_code_keeps_the_process_running_and_lowers_its_resident_code() {
        fn mapped_file_rss_kib() -> u64 {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            code_mappings(&smaps).iter().map(|m| m.rss_kib).sum()
        }
        let before = mapped_file_rss_kib();
        assert!(before > 0, "the test binary's code is resident");
        // Other tests' threads keep faulting pages in meanwhile: the sizes differ a little.
        let released = release_code().unwrap();
        assert!(
            released >= before * 1024 / 2,
            "{released} B of {before} KiB"
        );
        let after = mapped_file_rss_kib();
        assert!(after < before, "resident code {before} KiB -> {after} KiB");
        // Code runs again after the release: the pages fault back in.
        let v: Vec<u64> = (0..1000).map(|i| i * 3).collect();
        assert_eq!(v.iter().sum::<u64>(), 1_498_500);
        assert!(release_code().is_ok());
    }

    #[test]
    fn a_worker_flushes_once_per_trim_generation() {
        TRIM_GENERATION.fetch_add(1, Ordering::Relaxed);
        on_worker_park();
        assert_eq!(
            FLUSHED.with(|f| f.get()),
            TRIM_GENERATION.load(Ordering::Relaxed)
        );
        purge_allocator();
    }
}
