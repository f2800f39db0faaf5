//! Config: the YAML schema (`raw`), validation into typed values (`validate`), and the
//! validated model the rest of Spoke acts on (`model`). This module is data only: it opens
//! no sockets and knows nothing of the proxy or the control plane.

mod cluster;
pub mod duration;
pub mod identity;
mod inbound;
mod listeners;
pub mod model;
pub mod raw;
mod routes;
mod trace;
mod validate;
pub mod yaml;

use std::fmt;
use std::path::Path;

pub use model::*;
pub use routes::retry_on;
pub use validate::{
    endpoint_addr, validate, validate_cluster, validate_owned, validate_without_clusters,
};
pub use yaml::{Located, Positions};

/// One problem in a config: where (`clusters[0].endpoints[1].address`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            e.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// One problem in a named file: `FILE:LINE:COL: path: message`, the form every command
/// prints config errors in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub at: Located,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.at.line, self.at.col, self.at.error
        )
    }
}

impl Diagnostic {
    pub fn new(file: &str, at: Located) -> Self {
        Diagnostic {
            file: file.to_string(),
            at,
        }
    }

    /// A problem with the file as a whole (it cannot be read).
    pub fn whole(file: &str, message: impl Into<String>) -> Self {
        Diagnostic::new(
            file,
            Located {
                line: 1,
                col: 1,
                error: ConfigError {
                    path: String::new(),
                    message: message.into(),
                },
            },
        )
    }
}

/// Parses YAML text into the raw schema, with every syntax, type and unknown-field error
/// placed (line, column, path), and where each path is for later errors.
pub fn parse_located(text: &str) -> Result<(raw::File, Positions), Vec<Located>> {
    let tree = yaml::parse(text)?;
    let positions = Positions::of(&tree);
    let file = yaml::decode(&tree)?;
    Ok((file, positions))
}

/// Parses YAML text into the raw schema (errors without their places).
pub fn parse_yaml(text: &str) -> Result<raw::File, ConfigErrors> {
    parse_located(text)
        .map(|(f, _)| f)
        .map_err(|e| ConfigErrors(e.into_iter().map(|l| l.error).collect()))
}

/// Parses and validates YAML text; every error is placed.
pub fn from_yaml_located(text: &str) -> Result<(Config, Positions), Vec<Located>> {
    let (raw, positions) = parse_located(text)?;
    match validate(&raw) {
        Ok(cfg) => Ok((cfg, positions)),
        Err(errs) => {
            let mut placed: Vec<Located> = errs.into_iter().map(|e| positions.locate(e)).collect();
            placed.sort_by_key(|l| (l.line, l.col));
            Err(placed)
        }
    }
}

/// Parses and validates YAML text.
pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
    from_yaml_located(text)
        .map(|(c, _)| c)
        .map_err(|e| ConfigErrors(e.into_iter().map(|l| l.error).collect()))
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: String::new(),
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    from_yaml(&text)
}

#[cfg(test)]
mod tests;
