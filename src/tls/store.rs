//! The workload's current TLS configs and their rotation. Files are watched with the shared
//! watcher (`crate::watch`: their directories, so Kubernetes' `..data` symlink swap is seen,
//! and a poll underneath). A new valid set is swapped in for new connections;
//! open connections keep theirs; an invalid set is refused with a warning.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::{build_configs, load_material, TlsConfigs, TlsError};
use crate::config::{TlsFiles, TlsVersion};
use crate::metrics::Metrics;
use crate::watch::{dir_of, Watch};

/// How often files are re-read when no change notification arrived.
pub use crate::watch::POLL_INTERVAL;

pub struct CertStore {
    /// Empty until the first certificate arrives (from the control plane).
    current: ArcSwapOption<TlsConfigs>,
    files: Option<TlsFiles>,
    min_version: TlsVersion,
    /// The cert, key and roots the current configs were built from, to skip no-op reloads.
    source: std::sync::Mutex<Files>,
    metrics: Arc<Metrics>,
}

/// The bytes of the cert, key and roots files.
type Files = [Vec<u8>; 3];

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl CertStore {
    /// Loads the files once; start-up fails if they are not a valid set.
    pub fn from_files(files: &TlsFiles, metrics: Arc<Metrics>) -> Result<Self, TlsError> {
        let (bytes, configs) = Self::read_and_build(files)?;
        metrics.set_cert_expiry(configs.not_after);
        Ok(CertStore {
            current: ArcSwapOption::from_pointee(configs),
            files: Some(files.clone()),
            min_version: files.min_version,
            source: std::sync::Mutex::new(bytes),
            metrics,
        })
    }

    /// Reads and checks the files as start-up does (`spoke check` runs this too).
    pub fn check_files(files: &TlsFiles) -> Result<(), TlsError> {
        Self::read_and_build(files).map(|_| ())
    }

    fn read_and_build(files: &TlsFiles) -> Result<(Files, TlsConfigs), TlsError> {
        Self::build(files, Self::read_files(files)?)
    }

    fn read_files(files: &TlsFiles) -> Result<Files, TlsError> {
        Ok([read(&files.cert)?, read(&files.key)?, read(&files.roots)?])
    }

    fn build(files: &TlsFiles, read: Files) -> Result<(Files, TlsConfigs), TlsError> {
        let [cert, key, roots] = &read;
        let material = load_material(cert, key, roots)?;
        let configs = build_configs(&material, files.min_version)?;
        Ok((read, configs))
    }

    /// A store whose certificates come from elsewhere (`store`), empty until then.
    pub fn empty(min_version: TlsVersion, metrics: Arc<Metrics>) -> Self {
        CertStore {
            current: ArcSwapOption::empty(),
            files: None,
            min_version,
            source: std::sync::Mutex::default(),
            metrics,
        }
    }

    /// The configs for a new connection; `None` before the first certificate.
    pub fn current(&self) -> Option<Arc<TlsConfigs>> {
        self.current.load_full()
    }

    pub fn min_version(&self) -> TlsVersion {
        self.min_version
    }

    /// Swaps in configs built elsewhere (certificates from the control plane).
    pub fn store(&self, configs: TlsConfigs) {
        self.metrics.set_cert_expiry(configs.not_after);
        self.current.store(Some(Arc::new(configs)));
    }

    /// Re-reads the files; swaps in a changed valid set. `Ok(true)` when it swapped.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let mut source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        // The poll runs this every 2 s: files that did not change are compared, not parsed
        // and built into configs again (a key check and a few hundred allocations).
        let result = Self::read_files(files).and_then(|r| {
            if r == *source {
                Ok(None)
            } else {
                Self::build(files, r).map(Some)
            }
        });
        match result {
            Ok(None) => Ok(false),
            Ok(Some((bytes, configs))) => {
                tracing::info!(identity = %configs.identity, not_after = configs.not_after, "workload certificate rotated");
                *source = bytes;
                drop(source);
                self.metrics
                    .cert_reloads
                    .with_label_values(&["applied"])
                    .inc();
                self.store(configs);
                Ok(true)
            }
            Err(e) => {
                // A half-written rotation (new cert, old key) lands here too; the next
                // change notification or poll picks up the finished set.
                self.metrics
                    .cert_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::warn!(error = %e, "new certificate files refused; keeping the current ones");
                Err(e)
            }
        }
    }

    /// Watches the files' directories until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let Some(files) = self.files.clone() else {
            return;
        };
        let watch = Watch {
            dirs: [&files.cert, &files.key, &files.roots]
                .iter()
                .map(|p| dir_of(p))
                .collect(),
            poll: POLL_INTERVAL,
            // Let a writer finish the set (cert, key and roots are separate files).
            settle: Duration::from_millis(50),
            what: "certificate files",
        };
        watch
            .run(move || {
                let _ = self.reload();
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Identity;

    #[test]
    fn a_reload_builds_a_changed_set_and_only_compares_an_unchanged_one() {
        let dir = std::env::temp_dir().join(format!("spoke-store-{}", fastrand::u64(..)));
        let ok = |r: Result<(), crate::ca::CaError>| r.unwrap_or_else(|e| panic!("{e}"));
        let ca = crate::ca::Ca::new("cluster.local", Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("{e}"));
        let issue = |sa: &str| {
            let id = Identity::parse(&format!("spiffe://cluster.local/ns/default/sa/{sa}"))
                .unwrap_or_else(|e| panic!("{e}"));
            ok(crate::ca::issue_to_dir(
                &ca,
                &id,
                Duration::from_secs(3600),
                &[],
                &dir,
                true,
            ));
        };
        issue("web");
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            roots: dir.join("root.pem"),
            min_version: TlsVersion::Tls13,
            handshake_timeout: Duration::from_secs(5),
        };
        let store = CertStore::from_files(&files, Arc::new(Metrics::new()))
            .unwrap_or_else(|e| panic!("{e}"));
        let identity = || store.current().map(|c| c.identity.to_string());
        assert!(!store.reload().unwrap_or_else(|e| panic!("{e}")));
        // A broken key is built (and refused), so a changed set is never only compared.
        let key = std::fs::read(&files.key).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&files.key, b"not a key").unwrap_or_else(|e| panic!("{e}"));
        assert!(store.reload().is_err());
        std::fs::write(&files.key, &key).unwrap_or_else(|e| panic!("{e}"));
        assert!(!store.reload().unwrap_or_else(|e| panic!("{e}")));
        issue("backend");
        assert!(store.reload().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            identity().as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/backend")
        );
        assert!(!store.reload().unwrap_or_else(|e| panic!("{e}")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
