use super::*;
use std::time::Duration;

struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(format!("spoke-cache-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }

    /// Dates the file's modification `ago` back, as a file written long before the read.
    fn age(&self, name: &str, ago: std::time::Duration) {
        let f = std::fs::File::options()
            .write(true)
            .open(self.0.join(name))
            .unwrap();
        f.set_modified(SystemTime::now() - ago).unwrap();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const BIG: &str = "clusters:\n\
    - { name: a, endpoints: [ { address: 10.0.0.1:80 } ] }\n\
    - { name: b, endpoints: [ { address: 10.0.0.2:80 } ] }\n\
    routes: [ { match: { host: a.svc }, cluster: a }, { match: { host: f.svc }, cluster: f } ]\n\
    services: [ { vip: 10.96.0.1:80, cluster: a } ]\n";

fn flap(addr: &str) -> String {
    format!("clusters: [ {{ name: f, endpoints: [ {{ address: \"{addr}\" }} ] }} ]\n")
}

fn names(m: &MeshConfig) -> Vec<&str> {
    m.clusters.iter().map(|c| c.name.as_str()).collect()
}

#[test]
fn a_change_parses_its_file_and_validates_its_cluster_only() {
    let dir = Dir::new();
    dir.write("00-big.yaml", BIG);
    dir.write("10-flap.yaml", &flap("10.0.1.1:80"));
    let mut cache = ParseCache::default();
    let m1 = load_dir_cached(&dir.0, &mut cache).unwrap();
    assert_eq!(names(&m1), ["a", "b", "f"]);
    assert_eq!((cache.parses(), cache.clusters.validations()), (2, 3));

    // Nothing changed: nothing parsed or validated, everything the same pointers.
    let m2 = load_dir_cached(&dir.0, &mut cache).unwrap();
    assert_eq!((cache.parses(), cache.clusters.validations()), (2, 3));
    assert!(m1
        .clusters
        .iter()
        .zip(&m2.clusters)
        .all(|(a, b)| Arc::ptr_eq(a, b)));
    assert!(Arc::ptr_eq(&m1.rest, &m2.rest));

    // One endpoint of the small file: that file parsed, that cluster validated.
    dir.write("10-flap.yaml", &flap("10.0.1.2:80"));
    let m3 = load_dir_cached(&dir.0, &mut cache).unwrap();
    assert_eq!((cache.parses(), cache.clusters.validations()), (3, 4));
    assert!(Arc::ptr_eq(&m1.clusters[0], &m3.clusters[0]));
    assert!(Arc::ptr_eq(&m1.clusters[1], &m3.clusters[1]));
    assert_eq!(m3.clusters[2].endpoints[0].address, "10.0.1.2:80");
    assert!(Arc::ptr_eq(&m1.rest, &m3.rest), "the merged rest is reused");
    assert!(!m1.same(&m3));

    // The big file re-parsed (a comment added): its clusters are equal, so not validated
    // again and shared as before.
    dir.write("00-big.yaml", &format!("# edited\n{BIG}"));
    let m4 = load_dir_cached(&dir.0, &mut cache).unwrap();
    assert_eq!((cache.parses(), cache.clusters.validations()), (4, 4));
    assert!(Arc::ptr_eq(&m3.clusters[0], &m4.clusters[0]));
    assert!(Arc::ptr_eq(&m3.rest, &m4.rest));
    assert!(m3.same(&m4));
}

#[test]
fn broken_changes_are_refused_with_placed_errors_and_the_cache_recovers() {
    let dir = Dir::new();
    dir.write("00-big.yaml", BIG);
    dir.write("10-flap.yaml", &flap("10.0.1.1:80"));
    let mut cache = ParseCache::default();
    load_dir_cached(&dir.0, &mut cache).unwrap();

    // An invalid endpoint: the error names the file and the line.
    dir.write("10-flap.yaml", &flap("not an address"));
    let text = refused(&dir, &mut cache);
    assert!(text.contains("10-flap.yaml:1:"), "{text}");
    assert!(text.contains("is not host:port"), "{text}");

    // A route to a cluster that is gone: the rest is checked again when names change.
    dir.write("10-flap.yaml", "clusters: []\n");
    let text = refused(&dir, &mut cache);
    assert!(text.contains("cluster \"f\" is not defined"), "{text}");

    // The same name in two files.
    dir.write("10-flap.yaml", "clusters: [ { name: a }, { name: f } ]\n");
    let text = refused(&dir, &mut cache);
    assert!(text.contains("defined twice"), "{text}");

    dir.write("10-flap.yaml", &flap("10.0.1.3:80"));
    let m = load_dir_cached(&dir.0, &mut cache).unwrap();
    assert_eq!(m.clusters[2].endpoints[0].address, "10.0.1.3:80");
}

#[test]
fn a_file_known_unchanged_from_its_metadata_is_not_read() {
    let dir = Dir::new();
    dir.write("00-big.yaml", BIG);
    dir.write("10-flap.yaml", &flap("10.0.1.1:80"));
    dir.age("00-big.yaml", Duration::from_secs(60));
    let mut cache = ParseCache::default();
    load_dir_cached(&dir.0, &mut cache).unwrap();
    assert_eq!(cache.reads(), 2);
    // The big file is old: not read again. The small one was written just now, so it might
    // change again without its time moving: read again (and not parsed, its text is the same).
    load_dir_cached(&dir.0, &mut cache).unwrap();
    assert_eq!((cache.reads(), cache.parses()), (3, 2));
    // A rewrite of the same size (a new time) and a replacement (a new inode) are read.
    dir.write("00-big.yaml", &BIG.replace("10.0.0.2", "10.0.0.3"));
    dir.age("00-big.yaml", Duration::from_secs(30));
    let m = load_dir_cached(&dir.0, &mut cache).unwrap();
    assert_eq!(cache.parses(), 3);
    assert_eq!(m.clusters[1].endpoints[0].address, "10.0.0.3:80");
    let tmp = dir.0.join(".tmp");
    std::fs::write(&tmp, BIG).unwrap();
    std::fs::rename(&tmp, dir.0.join("00-big.yaml")).unwrap();
    dir.age("00-big.yaml", Duration::from_secs(30));
    let m = load_dir_cached(&dir.0, &mut cache).unwrap();
    assert_eq!(m.clusters[1].endpoints[0].address, "10.0.0.2:80");
}

/// The errors a load of `dir` is refused with, one per line.
fn refused(dir: &Dir, cache: &mut ParseCache) -> String {
    load_dir_cached(&dir.0, cache)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}
