//! The README stands alone: its links and the docs' stay inside the repository and point at
//! files that exist, and the environment-variable tables list exactly the variables the
//! CLI reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(p: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(p)).unwrap()
}

/// Relative link targets of a markdown file (`](target)`), anchors dropped.
fn links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|s| s.split(')').next())
        .filter(|t| !t.starts_with("http") && !t.starts_with('#'))
        .map(|t| t.split('#').next().unwrap().to_string())
        .collect()
}

#[test]
fn links_stay_in_the_repository_and_exist() {
    let mut pages = vec!["README.md".to_string()];
    for e in std::fs::read_dir(Path::new(ROOT).join("docs")).unwrap() {
        pages.push(format!("docs/{}", e.unwrap().file_name().to_string_lossy()));
    }
    for page in &pages {
        let base = Path::new(ROOT).join(page);
        let dir = base.parent().unwrap();
        for target in links(&read(page)) {
            let full = dir.join(&target).canonicalize();
            let full = full.unwrap_or_else(|e| panic!("{page}: link {target}: {e}"));
            assert!(
                full.starts_with(Path::new(ROOT).canonicalize().unwrap()),
                "{page}: {target} leaves the repository"
            );
        }
        assert!(!read(page).contains("shared/DESIGN"), "{page}");
    }
}

#[test]
fn environment_tables_are_true() {
    let cli = read("src/cli.rs");
    let vars: Vec<&str> = cli
        .split("env = \"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert!(vars.len() >= 10, "{vars:?}");
    for page in ["README.md", "docs/cli.md"] {
        let text = read(page);
        for v in &vars {
            assert!(text.contains(&format!("`{v}`")), "{page} does not list {v}");
        }
        // And nothing listed as SPOKE_* that the CLI does not read.
        for word in text.split('`').filter(|w| w.starts_with("SPOKE_")) {
            let name = word.split('=').next().unwrap();
            // `spoke redirect`'s nat chains are spelled like variables, and are not.
            let chain = spoke::redirect::rules::CHAINS.contains(&name);
            // The tests' own variables.
            let test_only = ["SPOKE_REQUIRE_ALL", "SPOKE_PROMETHEUS"].contains(&name);
            assert!(
                vars.contains(&name) || test_only || chain,
                "{page} lists {name}, which no flag reads"
            );
        }
    }
}
