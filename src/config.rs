//! Config: the YAML schema (`raw`), validation into typed values (`validate`), and the
//! validated model the rest of Spoke acts on (`model`). This module is data only: it opens
//! no sockets and knows nothing of the proxy or the control plane.

mod cluster;
pub mod duration;
pub mod identity;
mod inbound;
pub mod model;
pub mod raw;
mod routes;
mod trace;
mod validate;

use std::fmt;
use std::path::Path;

pub use model::*;
pub use routes::retry_on;
pub use validate::{endpoint_addr, validate};

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

/// Parses YAML text into the raw schema. Syntax errors, unknown fields and wrong types
/// come back with line and column.
pub fn parse_yaml(text: &str) -> Result<raw::File, ConfigError> {
    if text.trim().is_empty() {
        return Ok(raw::File::default());
    }
    serde_saphyr::from_str::<raw::File>(text).map_err(|e| ConfigError {
        path: String::new(),
        message: e.to_string(),
    })
}

/// Parses and validates YAML text.
pub fn from_yaml(text: &str) -> Result<Config, ConfigErrors> {
    let raw = parse_yaml(text)?;
    validate(&raw).map_err(ConfigErrors)
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
