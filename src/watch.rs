//! The one file watcher, shared by the control plane (its mesh directory) and the
//! certificate store (the directories of its files). It watches directories, not files:
//! Kubernetes updates a mounted ConfigMap or Secret by swapping the `..data` symlink, which
//! a watch on the old file would never see, but the directory sees. `notify` can be missing
//! (no inotify instances left) or miss an event, so a poll runs underneath it; the callback
//! is expected to be cheap when nothing changed (compare the bytes, as both users do).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher;

/// How often the directories are re-read when no change notification arrived.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What to watch and how patiently.
pub struct Watch {
    /// Directories (deduplicated); a file's directory is `dir_of(file)`.
    pub dirs: BTreeSet<PathBuf>,
    /// The fallback re-read.
    pub poll: Duration,
    /// Wait after a notification before calling back: writers replace several files in a
    /// row (certificate, key, roots), and one call should see the finished set.
    pub settle: Duration,
    /// Named in the warning when a directory cannot be watched.
    pub what: &'static str,
}

/// The directory a file lives in (`.` for a bare name), the thing to watch for it.
pub fn dir_of(file: &Path) -> PathBuf {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Whether an event can mean new content. Opening, reading and closing a file unwritten
/// cannot; and the callback reads the files itself, so counting those would call it again
/// and again for ever.
fn changes(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(a) => matches!(a, AccessKind::Close(AccessMode::Write)),
        _ => true,
    }
}

// === impl Watch ===

impl Watch {
    /// Calls `on_change` once at start, after every burst of notifications and on every
    /// poll tick, until the task is dropped.
    pub async fn run(self, mut on_change: impl FnMut() + Send) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        // Kept alive for as long as this task runs; dropping it stops the notifications.
        let mut watcher = match notify::recommended_watcher(
            move |r: notify::Result<notify::Event>| {
                if r.is_ok_and(|e| changes(&e.kind)) {
                    let _ = tx.try_send(());
                }
            },
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(what = self.what, error = %e, "file watching unavailable; polling");
                None
            }
        };
        if let Some(w) = watcher.as_mut() {
            for d in &self.dirs {
                if let Err(e) = w.watch(d, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(what = self.what, dir = %d.display(), error = %e, "cannot watch the directory; polling");
                }
            }
        }
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    tokio::time::sleep(self.settle).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = tick.tick() => {}
            }
            on_change();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn dir_of_a_bare_name_is_the_current_directory() {
        assert_eq!(dir_of(Path::new("cert.pem")), PathBuf::from("."));
        assert_eq!(
            dir_of(Path::new("/etc/spoke/cert.pem")),
            PathBuf::from("/etc/spoke")
        );
    }

    #[tokio::test]
    async fn reading_the_files_does_not_call_back() {
        let dir = std::env::temp_dir().join(format!("spoke-watch-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), "x").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let file = dir.join("a.yaml");
        let watch = Watch {
            dirs: [dir.clone()].into(),
            poll: Duration::from_secs(3600),
            settle: Duration::from_millis(10),
            what: "test",
        };
        // The callback reads the file, as every real one does.
        let task = tokio::spawn(watch.run(move || {
            c.fetch_add(1, Ordering::SeqCst);
            let _ = std::fs::read_to_string(&file);
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = calls.load(Ordering::SeqCst);
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(n, 1, "only the call at start");
    }

    #[tokio::test]
    async fn a_symlink_swap_in_the_directory_is_seen_before_the_poll() {
        let dir = std::env::temp_dir().join(format!("spoke-watch-{}", fastrand::u64(..)));
        std::fs::create_dir_all(dir.join("v1")).unwrap();
        std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let watch = Watch {
            dirs: [dir.clone()].into(),
            poll: Duration::from_secs(3600),
            settle: Duration::from_millis(10),
            what: "test",
        };
        let task = tokio::spawn(watch.run(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = calls.load(Ordering::SeqCst);
        // What the kubelet does: a new target, a new link, renamed over `..data`.
        std::fs::create_dir_all(dir.join("v2")).unwrap();
        std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        let seen = async {
            while calls.load(Ordering::SeqCst) == before {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), seen)
            .await
            .expect("the swap was not seen");
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
