//! `spoke check`: the validation `spoke proxy` runs before it binds (schema, cross-section
//! rules, unsupported parts, certificate files), on files or stdin, and the control plane's
//! directory merged as `spoke control` merges it. Every problem comes out placed, as
//! `FILE:LINE:COL: path: message`, or as JSON for CI.

use std::io::Read;
use std::path::Path;

use crate::config::{self, Config, Diagnostic};

/// The name stdin is shown under.
pub const STDIN: &str = "<stdin>";

/// Reads `path` (`-` is stdin); returns the name to show and the text.
fn read(path: &Path) -> Result<(String, String), Diagnostic> {
    if path == Path::new("-") {
        let mut text = String::new();
        return std::io::stdin()
            .read_to_string(&mut text)
            .map(|_| (STDIN.to_string(), text))
            .map_err(|e| Diagnostic::whole(STDIN, format!("cannot read stdin: {e}")));
    }
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((name, text)),
        Err(e) => Err(Diagnostic::whole(&name, format!("cannot read {name}: {e}"))),
    }
}

/// A proxy config file checked exactly as `spoke proxy` checks it before binding.
pub fn proxy_file(path: &Path, unsafe_admin: bool) -> Result<Config, Vec<Diagnostic>> {
    let (name, text) = read(path).map_err(|d| vec![d])?;
    let place = |e: Vec<config::Located>| -> Vec<Diagnostic> {
        e.into_iter().map(|l| Diagnostic::new(&name, l)).collect()
    };
    let (cfg, positions) = config::from_yaml_located(&text).map_err(place)?;
    let refused = crate::app::preflight(&cfg, unsafe_admin);
    if refused.is_empty() {
        Ok(cfg)
    } else {
        let mut placed: Vec<Diagnostic> = refused
            .into_iter()
            .map(|e| Diagnostic::new(&name, positions.locate(e)))
            .collect();
        placed.sort_by_key(|d| (d.at.line, d.at.col));
        Err(placed)
    }
}

/// A control plane's mesh directory, merged as the control plane merges it.
pub fn mesh_dir(dir: &Path) -> Vec<Diagnostic> {
    crate::control::mesh::load_dir(dir)
        .err()
        .unwrap_or_default()
}

/// The JSON form (`--output json`): one object per problem.
pub fn to_json(diags: &[Diagnostic]) -> String {
    let list: Vec<serde_json::Value> = diags
        .iter()
        .map(|d| {
            serde_json::json!({
                "file": d.file,
                "line": d.at.line,
                "column": d.at.col,
                "path": d.at.error.path,
                "message": d.at.error.message,
            })
        })
        .collect();
    serde_json::json!({ "ok": diags.is_empty(), "errors": list }).to_string()
}
