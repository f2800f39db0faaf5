//! How many worker threads a sidecar runs. A sidecar shares its pod's CPU with the app, so
//! the default is not the machine's core count (a 64-core node would get 64 threads, each
//! with its own buffers, for one pod's traffic) but the pod's CPU limit from its cgroup,
//! rounded up, as Envoy's and linkerd's injectors derive it; with no limit, one worker.
//! `--workers` (`SPOKE_WORKERS`) or Tokio's own `TOKIO_WORKER_THREADS` override it.

use std::path::Path;

/// The worker count for `spoke proxy`: `flag` if given, else Tokio's variable if set, else
/// the cgroup CPU limit (rounded up, at most the cores there are), else 1.
pub fn for_sidecar(flag: Option<usize>) -> usize {
    if let Some(n) = flag.filter(|n| *n > 0) {
        return n;
    }
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    cgroup_limit(Path::new("/sys/fs/cgroup"))
        .map(|l| l.min(cores))
        .unwrap_or(1)
}

/// The CPU limit of the cgroup this process runs in, in whole cores rounded up: cgroup v2
/// `cpu.max` (`QUOTA PERIOD`, or `max`), else cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`.
/// `None` when there is no limit or it cannot be read.
pub fn cgroup_limit(root: &Path) -> Option<usize> {
    if let Ok(text) = std::fs::read_to_string(root.join("cpu.max")) {
        return parse_v2(&text);
    }
    let quota = std::fs::read_to_string(root.join("cpu/cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(root.join("cpu/cpu.cfs_period_us")).ok()?;
    cores(quota.trim().parse().ok()?, period.trim().parse().ok()?)
}

fn parse_v2(text: &str) -> Option<usize> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: i64 = it.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" {
        return None;
    }
    cores(quota.parse().ok()?, period)
}

/// `quota / period` rounded up; a negative quota (v1's "no limit") is `None`.
fn cores(quota: i64, period: i64) -> Option<usize> {
    if quota <= 0 || period <= 0 {
        return None;
    }
    Some(((quota + period - 1) / period).max(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_limits() {
        assert_eq!(parse_v2("max 100000\n"), None);
        assert_eq!(parse_v2("100000 100000\n"), Some(1));
        assert_eq!(
            parse_v2("50000 100000\n"),
            Some(1),
            "half a core is one worker"
        );
        assert_eq!(parse_v2("250000 100000\n"), Some(3), "rounded up");
        assert_eq!(parse_v2("garbage"), None);
    }

    #[test]
    fn cgroup_v1_limits_from_files() {
        let dir = std::env::temp_dir().join(format!("spoke-workers-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cpu")).unwrap_or_else(|e| panic!("{e}"));
        let write = |f: &str, v: &str| {
            std::fs::write(dir.join("cpu").join(f), v).unwrap_or_else(|e| panic!("{e}"))
        };
        write("cpu.cfs_quota_us", "-1\n");
        write("cpu.cfs_period_us", "100000\n");
        assert_eq!(cgroup_limit(&dir), None, "-1 means no limit");
        write("cpu.cfs_quota_us", "200000\n");
        assert_eq!(cgroup_limit(&dir), Some(2));
        std::fs::write(dir.join("cpu.max"), "150000 100000\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cgroup_limit(&dir), Some(2), "v2 first");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_flag_wins() {
        assert_eq!(for_sidecar(Some(3)), 3);
    }
}
