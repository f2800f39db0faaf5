//! What makes a mesh change cost what it touches: the directory's files parsed once per
//! text (`ParseCache`), every cluster validated once per content and then shared by `Arc`
//! (`ClusterCache`), and the merged rest of the mesh (routes, services, workloads) rebuilt
//! and re-checked only when a file's rest or the set of cluster names changed. One endpoint
//! flapping in a small file then re-parses that file and validates that one cluster; the
//! large file beside it is compared byte for byte and nothing else.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::mesh::{self, MeshConfig};
use crate::config::{self, raw, ConfigError, Diagnostic};

/// Clusters that passed `config::validate_cluster`, by name. A cluster equal to the one
/// held here is not validated again and is replaced by the held `Arc`, so later stages
/// (the resources' encodings) see an unchanged cluster as the same pointer.
#[derive(Default)]
pub struct ClusterCache {
    valid: HashMap<String, Arc<raw::Cluster>>,
    /// How many clusters have been validated: what tests watch.
    validations: u64,
}

// === impl ClusterCache ===

impl ClusterCache {
    /// `c` as a shared, validated cluster.
    pub fn check(&mut self, c: Arc<raw::Cluster>) -> Result<Arc<raw::Cluster>, Vec<ConfigError>> {
        if let Some(held) = self.valid.get(&c.name).filter(|h| ***h == *c) {
            return Ok(held.clone());
        }
        self.validations += 1;
        config::validate_cluster(&c)?;
        self.valid.insert(c.name.clone(), c.clone());
        Ok(c)
    }

    /// An already shared cluster: the same pointer as the held one is known valid.
    pub fn check_shared(
        &mut self,
        c: &Arc<raw::Cluster>,
    ) -> Result<Arc<raw::Cluster>, Vec<ConfigError>> {
        match self.valid.get(&c.name) {
            Some(held) if Arc::ptr_eq(held, c) || **held == **c => Ok(held.clone()),
            _ => {
                self.validations += 1;
                config::validate_cluster(c)?;
                self.valid.insert(c.name.clone(), c.clone());
                Ok(c.clone())
            }
        }
    }

    /// Forgets clusters no longer in use, so the cache does not grow with churn.
    pub fn retain(&mut self, keep: &HashSet<&str>) {
        self.valid.retain(|n, _| keep.contains(n.as_str()));
    }

    pub fn validations(&self) -> u64 {
        self.validations
    }
}

/// One file as last parsed: its text, its clusters (validated) and the rest of it.
struct Parsed {
    text: String,
    /// What the file's metadata said when `text` was read, and when that was.
    stamp: Option<Stamp>,
    read_at: SystemTime,
    clusters: Vec<Arc<raw::Cluster>>,
    rest: Arc<raw::File>,
}

/// What tells a file's content changed without reading it: a rewrite changes its size or
/// modification time, a replacement (rename over it) its inode.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    len: u64,
    mtime: SystemTime,
    dev: u64,
    ino: u64,
}

/// A file modified this close to when it was read might be written again within the
/// file system's timestamp granularity without its modification time moving; such a file
/// is read again, as git does with "racily clean" entries.
const RACY: Duration = Duration::from_secs(2);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        mtime: m.modified().ok()?,
        dev: m.dev(),
        ino: m.ino(),
    })
}

// === impl Parsed ===

impl Parsed {
    /// Whether the file is known unchanged from its metadata alone.
    fn fresh(&self, now: Option<Stamp>) -> bool {
        match (self.stamp, now) {
            (Some(was), Some(now)) => {
                was == now
                    && was
                        .mtime
                        .checked_add(RACY)
                        .is_some_and(|t| t < self.read_at)
            }
            _ => false,
        }
    }
}

/// The merged rest of the files, as last checked.
struct MergedRest {
    /// What it was merged from: each file's rest, in order.
    from: Vec<Arc<raw::File>>,
    merged: Arc<raw::File>,
    /// The cluster names it was checked against, in order.
    names: Vec<String>,
}

/// The directory's files as last parsed, the cluster cache, and the last merged rest with
/// what it was merged from.
#[derive(Default)]
pub struct ParseCache {
    files: HashMap<PathBuf, Parsed>,
    pub clusters: ClusterCache,
    merged: Option<MergedRest>,
    /// The last mesh returned, with the files it was made of: when none changed it is
    /// returned as it is.
    last: Option<(Vec<PathBuf>, MeshConfig)>,
    /// Files parsed (their text changed): what tests watch.
    parses: u64,
    /// Files read (their metadata did not show them unchanged): what tests watch.
    reads: u64,
}

impl ParseCache {
    pub fn parses(&self) -> u64 {
        self.parses
    }

    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// The file's parse, read (and parsed) again only when it may have changed; `changed`
    /// is set when it was parsed. `None` when it cannot be read or is refused (see `file`).
    fn current(
        &mut self,
        path: &Path,
        changed: &mut bool,
    ) -> Option<(Vec<Arc<raw::Cluster>>, Arc<raw::File>)> {
        let now = stamp(path);
        if let Some(p) = self.files.get(path).filter(|p| p.fresh(now)) {
            return Some((p.clusters.clone(), p.rest.clone()));
        }
        let read_at = SystemTime::now();
        self.reads += 1;
        let text = std::fs::read_to_string(path).ok()?;
        let parses = self.parses;
        let out = self.file(path, text)?;
        *changed |= self.parses != parses;
        if let Some(p) = self.files.get_mut(path) {
            // The metadata seen before the read: a write during it shows as a change next time.
            p.stamp = now;
            p.read_at = read_at;
        }
        Some(out)
    }

    /// Parses `text` unless it is the text `path` had; `None` when it does not parse, is
    /// not a mesh file or holds an invalid cluster.
    fn file(
        &mut self,
        path: &Path,
        text: String,
    ) -> Option<(Vec<Arc<raw::Cluster>>, Arc<raw::File>)> {
        if let Some(p) = self.files.get(path).filter(|p| p.text == text) {
            return Some((p.clusters.clone(), p.rest.clone()));
        }
        self.parses += 1;
        let (mut f, _) = config::parse_located(&text).ok()?;
        if !mesh::check_mesh_only(&f).is_empty() {
            return None;
        }
        let clusters = std::mem::take(&mut f.clusters)
            .into_iter()
            .map(|c| self.clusters.check(c).ok())
            .collect::<Option<Vec<_>>>()?;
        let rest = match self.files.get(path) {
            Some(p) if *p.rest == f => p.rest.clone(),
            _ => Arc::new(f),
        };
        self.files.insert(
            path.to_path_buf(),
            Parsed {
                text,
                stamp: None,
                read_at: SystemTime::UNIX_EPOCH,
                clusters: clusters.clone(),
                rest: rest.clone(),
            },
        );
        Some((clusters, rest))
    }

    /// The merged rest of `rests` (in file order), checked against `names`; reused when
    /// neither changed since the last call.
    fn rest(
        &mut self,
        rests: Vec<Arc<raw::File>>,
        names: &HashSet<&str>,
        order: &[&str],
    ) -> Option<Arc<raw::File>> {
        if let Some(last) = &self.merged {
            let same_rests = last.from.len() == rests.len()
                && last.from.iter().zip(&rests).all(|(a, b)| Arc::ptr_eq(a, b));
            let same_names = last.names.len() == order.len()
                && last.names.iter().zip(order).all(|(a, b)| a == b);
            if same_rests && same_names {
                return Some(last.merged.clone());
            }
        }
        let mut merged = raw::File::default();
        for f in &rests {
            merged.routes.extend(f.routes.iter().cloned());
            merged.services.extend(f.services.iter().cloned());
            merged.workloads.extend(f.workloads.iter().cloned());
            if f.default_policy.is_some() {
                merged.default_policy = f.default_policy;
            }
            if f.tracing.is_some() {
                merged.tracing = f.tracing.clone();
            }
        }
        config::validate_without_clusters(&merged, names).ok()?;
        let merged = Arc::new(merged);
        self.merged = Some(MergedRest {
            from: rests,
            merged: merged.clone(),
            names: order.iter().map(|n| n.to_string()).collect(),
        });
        Some(merged)
    }
}

/// `mesh::load_dir`, parsing only the files whose text changed since the last call with
/// `cache`, validating only clusters that changed, and re-checking routes, services and
/// workloads only when they or the cluster names changed. Errors are placed by a full
/// `load_dir` (the slow path runs only on a broken config).
pub fn load_dir_cached(dir: &Path, cache: &mut ParseCache) -> Result<MeshConfig, Vec<Diagnostic>> {
    let names =
        mesh::files(dir).map_err(|e| vec![Diagnostic::whole(&dir.display().to_string(), e)])?;
    cache.files.retain(|p, _| names.contains(p));
    let mut clusters = Vec::new();
    let mut rests = Vec::with_capacity(names.len());
    let mut changed = false;
    for p in &names {
        let Some((c, rest)) = cache.current(p, &mut changed) else {
            return slow(dir);
        };
        clusters.extend(c);
        rests.push(rest);
    }
    match &cache.last {
        Some((files, last)) if !changed && *files == names => return Ok(last.clone()),
        _ => cache.last = None,
    }
    let order: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    let unique: HashSet<&str> = order.iter().copied().collect();
    if unique.len() != order.len() {
        return slow(dir);
    }
    let Some(rest) = cache.rest(rests, &unique, &order) else {
        return slow(dir);
    };
    cache.clusters.retain(&unique);
    let mesh = MeshConfig { clusters, rest };
    cache.last = Some((names, mesh.clone()));
    Ok(mesh)
}

fn slow(dir: &Path) -> Result<MeshConfig, Vec<Diagnostic>> {
    mesh::load_dir(dir).map(MeshConfig::from_raw)
}

#[cfg(test)]
mod tests;
