//! `spoke redirect`: installs the pod's transparent-capture rules (run once by the pod's
//! init step, in the pod's network namespace), or removes them with `--remove`.
//!
//! The rules (see `rules`) are generated whole and applied with one
//! `iptables-restore --noflush` per address family, so they appear atomically and never
//! half-installed; the table is read first (`iptables-save -t nat`) only to learn which of
//! Spoke's chains and jumps already exist, which makes a second run replace rather than
//! duplicate. `--dry-run` prints the exact restore input instead of applying it.

pub mod rules;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use rules::{CidrList, Family, Plan, PortList, Ports};

/// `--ipv6`: whether ip6tables rules are installed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6 {
    /// When the kernel has IPv6 and ip6tables is installed.
    Auto,
    /// Always (an error if ip6tables is missing).
    On,
    /// Never.
    Off,
}

/// One run of `spoke redirect`.
#[derive(Debug, Clone)]
pub struct Options {
    pub plan: Plan,
    pub ipv6: Ipv6,
    pub remove: bool,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("{tool} is not installed (not in PATH, /usr/sbin or /sbin): spoke redirect needs iptables (Debian and Ubuntu: apt-get install iptables)")]
    Missing { tool: &'static str },
    #[error("permission denied{detail}: spoke redirect needs the NET_ADMIN capability in the pod's network namespace (run it as root, or add NET_ADMIN and NET_RAW to the init container's securityContext.capabilities)")]
    Permission { detail: String },
    #[error("{tool} failed (exit {code}): {detail}")]
    Failed {
        tool: &'static str,
        code: i32,
        detail: String,
    },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// CAP_NET_ADMIN's bit in `CapEff`.
const CAP_NET_ADMIN: u32 = 12;

/// Installs (or removes) the rules, or with `dry_run` prints what it would apply. What it
/// did goes to `out`, one line per family.
pub fn run(opts: &Options, out: &mut dyn Write) -> Result<(), RedirectError> {
    if !opts.dry_run && !has_net_admin() {
        return Err(RedirectError::Permission {
            detail: " (the process lacks CAP_NET_ADMIN)".into(),
        });
    }
    for family in families(opts.ipv6, find)? {
        let state = match read_state(family) {
            Ok(s) => s,
            // A dry run may be made anywhere: without the table, it shows a first install.
            Err(e) if opts.dry_run => {
                writeln!(out, "# cannot read the {} nat table ({e}); shown as for a table without Spoke's rules", family.name())?;
                rules::State::default()
            }
            Err(e) => return Err(e),
        };
        let input = if opts.remove {
            rules::remove(&state)
        } else {
            Some(rules::install(&opts.plan, family, &state))
        };
        let Some(input) = input else {
            let name = family.name();
            writeln!(out, "{name}: no Spoke rules installed; nothing to remove")?;
            continue;
        };
        if opts.dry_run {
            writeln!(out, "# {} --noflush", family.restore())?;
            out.write_all(input.as_bytes())?;
            continue;
        }
        restore(family, &input)?;
        let p = &opts.plan;
        if opts.remove {
            writeln!(out, "{}: Spoke's capture rules removed", family.name())?;
        } else {
            writeln!(
                out,
                "{}: capture rules installed (inbound -> {}, outbound -> {}, uid {} and gid {} not captured)",
                family.name(),
                p.inbound_capture_port, p.outbound_capture_port, p.proxy_uid, p.proxy_gid
            )?;
        }
    }
    Ok(())
}

/// The address families to act on (`find` locates a tool).
fn families(
    mode: Ipv6,
    find: impl Fn(&str) -> Option<PathBuf>,
) -> Result<Vec<Family>, RedirectError> {
    find(Family::V4.restore()).ok_or(RedirectError::Missing {
        tool: Family::V4.restore(),
    })?;
    let v6 = match mode {
        Ipv6::Off => false,
        Ipv6::On => {
            find(Family::V6.restore()).ok_or(RedirectError::Missing {
                tool: Family::V6.restore(),
            })?;
            true
        }
        // `if_inet6` exists only when the kernel (and this namespace) has IPv6.
        Ipv6::Auto => {
            Path::new("/proc/net/if_inet6").exists() && find(Family::V6.restore()).is_some()
        }
    };
    Ok(if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    })
}

/// A tool's path: PATH first, then the sbin directories a non-root PATH often lacks.
fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Whether this process may change the network namespace's tables.
fn has_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        // Not Linux's procfs: let iptables itself say.
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// The nat table's Spoke chains and jumps, from `iptables-save -t nat`.
fn read_state(family: Family) -> Result<rules::State, RedirectError> {
    let tool = family.save();
    let path = find(tool).ok_or(RedirectError::Missing { tool })?;
    let out = Command::new(path)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(tool, -1, &e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(failed(tool, out.status.code().unwrap_or(-1), &err));
    }
    Ok(rules::State::parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Applies one restore input atomically.
fn restore(family: Family, input: &str) -> Result<(), RedirectError> {
    let tool = family.restore();
    let path = find(tool).ok_or(RedirectError::Missing { tool })?;
    let mut child = Command::new(path)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(tool, -1, &e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| failed(tool, -1, &e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(tool, -1, &e.to_string()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(failed(tool, out.status.code().unwrap_or(-1), &err))
}

/// A tool's failure; refusals for lack of privilege get the error that says what to grant.
fn failed(tool: &'static str, code: i32, stderr: &str) -> RedirectError {
    let detail = stderr.trim().to_string();
    let denied = [
        "Permission denied",
        "Operation not permitted",
        "must be root",
    ];
    if denied.iter().any(|d| detail.contains(d)) {
        return RedirectError::Permission {
            detail: format!(" ({tool}: {detail})"),
        };
    }
    RedirectError::Failed { tool, code, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_iptables_is_named() {
        let e = families(Ipv6::Auto, |_| None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("iptables-restore is not installed"),
            "{e}"
        );
        assert!(e.to_string().contains("apt-get install iptables"), "{e}");
        let only_v4 = |t: &str| (t == "iptables-restore").then(|| PathBuf::from(t));
        let e = families(Ipv6::On, only_v4).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ip6tables-restore is not installed"),
            "{e}"
        );
        assert_eq!(families(Ipv6::Off, only_v4).unwrap(), [Family::V4]);
        assert_eq!(families(Ipv6::Auto, only_v4).unwrap(), [Family::V4]);
    }

    #[test]
    fn refusals_for_privilege_say_what_to_grant() {
        let e = failed(
            "iptables-restore",
            4,
            "iptables-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n",
        );
        let text = e.to_string();
        assert!(
            text.starts_with("permission denied (iptables-restore: "),
            "{text}"
        );
        assert!(text.contains("needs the NET_ADMIN capability"), "{text}");
        let e = failed("iptables-restore", 2, "line 3: bad rule");
        assert_eq!(
            e.to_string(),
            "iptables-restore failed (exit 2): line 3: bad rule"
        );
    }
}
