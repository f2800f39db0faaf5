//! `spoke check` against a corpus of broken files (`tests/check/`), each holding the exact
//! `LINE:COL: path: message` lines it must produce as `# expect:` comments at its end; and
//! parity with the commands it stands in for: every corpus file `spoke proxy` refuses (exit
//! 2) `spoke check` refuses, and the other way round; a mesh directory `spoke control`
//! refuses, `spoke check --mesh` refuses with the same lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::pki::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_spoke");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `spoke` from the repository root (corpus files name paths relative to it).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .current_dir(ROOT)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn corpus(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// The file's `# expect:` lines, with its repository-relative name in front.
fn expected(file: &Path, shown: &str) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .filter(|l| *l != "ok")
        .map(|l| format!("{shown}:{l}"))
        .collect()
}

fn rel(p: &Path) -> String {
    p.strip_prefix(ROOT).unwrap().display().to_string()
}

#[test]
fn every_broken_file_gives_its_exact_errors() {
    let files = corpus("tests/check/proxy");
    assert!(files.len() >= 12, "{files:?}");
    for f in files {
        let name = rel(&f);
        let want = expected(&f, &name);
        let (code, out, err) = run(&["check", &name]);
        let got: Vec<&str> = err.lines().collect();
        assert_eq!(got, want, "{name}");
        if want.is_empty() {
            assert_eq!((code, out.trim()), (0, "ok"), "{name}: {err}");
        } else {
            assert_eq!(code, 2, "{name}");
        }
    }
}

#[test]
fn mesh_directories_are_checked_merged() {
    for dir in ["tests/check/mesh-duplicate", "tests/check/mesh-listeners"] {
        let want: Vec<String> = corpus(dir)
            .iter()
            .flat_map(|f| expected(f, &rel(f)))
            .collect();
        assert!(!want.is_empty(), "{dir}");
        let (code, _, err) = run(&["check", "--mesh", dir]);
        assert_eq!(code, 2, "{dir}");
        assert_eq!(err.lines().collect::<Vec<_>>(), want, "{dir}");
    }
    // The control plane refuses the same directory with the same lines.
    let tmp = TempDir::new("check-ca");
    let ca = tmp.0.join("ca");
    assert_eq!(run(&["ca", "init", "--out", ca.to_str().unwrap()]).0, 0);
    let (code, _, err) = run(&[
        "control",
        "--config-dir",
        "tests/check/mesh-duplicate",
        "--ca",
        ca.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--stats",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 2, "{err}");
    let (_, _, check) = run(&["check", "--mesh", "tests/check/mesh-duplicate"]);
    for line in check.lines() {
        assert!(err.contains(line), "control did not say {line:?}:\n{err}");
    }
}

/// Every corpus file: `spoke proxy` exits 2 exactly when `spoke check` does.
#[test]
fn check_and_proxy_agree_on_every_corpus_file() {
    for f in corpus("tests/check/proxy") {
        let name = rel(&f);
        let (check, _, check_err) = run(&["check", &name]);
        let mut p = Command::new(BIN)
            .current_dir(ROOT)
            .args(["proxy", "--config", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let proxy = loop {
            if let Some(s) = p.try_wait().unwrap() {
                break s.code().unwrap_or(-1);
            }
            if start.elapsed() > Duration::from_secs(2) {
                // Still running: it started.
                let _ = p.kill();
                let _ = p.wait();
                break 0;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let proxy_err = std::io::read_to_string(p.stderr.take().unwrap()).unwrap();
        assert_eq!(
            proxy == 2,
            check == 2,
            "{name}: proxy exit {proxy}, check exit {check}\nproxy: {proxy_err}\ncheck: {check_err}"
        );
        if proxy == 2 {
            // And says the same thing, once.
            assert_eq!(proxy_err, check_err, "{name}");
        }
    }
}

#[test]
fn stdin_and_json_output() {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("tests/check/proxy/semantic.yaml")).unwrap();
    let out = support::spoke_with_stdin(&["check", "-"], &text);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().next().unwrap(),
        "<stdin>:5:64: listeners[0].cluster: cluster \"missing\" is not defined in clusters"
    );

    let (code, out, _) = run(&[
        "check",
        "--output",
        "json",
        "tests/check/proxy/unknown_field.yaml",
    ]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    let e = &v["errors"][0];
    assert_eq!(e["file"], "tests/check/proxy/unknown_field.yaml");
    assert_eq!(
        (e["line"].as_u64(), e["column"].as_u64()),
        (Some(6), Some(5))
    );
    assert_eq!(e["path"], "listeners[0].adress");
    assert_eq!(
        e["message"],
        "unknown field `adress`; did you mean `address`?"
    );
    let (code, out, _) = run(&[
        "check",
        "--output",
        "json",
        "tests/check/proxy/good_tcp.yaml",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), r#"{"errors":[],"ok":true}"#);
}
