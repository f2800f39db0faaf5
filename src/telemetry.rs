//! Logging setup: `tracing` with a plain or JSON formatter and a filter that the admin
//! server's `POST /logging` can change while the proxy runs.

use std::sync::Arc;

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter, Registry};

/// Changes the live log filter. Cheap to clone; absent when logging was not set up by us
/// (in-process tests).
#[derive(Clone)]
pub struct LogHandle {
    set: Arc<SetFilter>,
}

type SetFilter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl LogHandle {
    /// Applies a new filter (`debug`, `info,spoke::proxy=trace`, ...).
    pub fn set_filter(&self, filter: &str) -> Result<(), String> {
        (self.set)(filter)
    }
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogHandle")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Installs the global subscriber. `level` wins over `RUST_LOG`; with neither, `info`.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<LogHandle, String> {
    let initial = match level {
        Some(l) => l.to_string(),
        None => std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()),
    };
    let filter = EnvFilter::try_new(&initial).map_err(|e| format!("log level {initial:?}: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = Registry::default().with(filter);
    let result = match format {
        LogFormat::Plain => registry
            .with(fmt::layer().with_writer(std::io::stderr).with_target(true))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| e.to_string())?;
    Ok(LogHandle {
        set: Arc::new(move |f: &str| {
            let new = EnvFilter::try_new(f).map_err(|e| format!("{f:?}: {e}"))?;
            handle.reload(new).map_err(|e| e.to_string())
        }),
    })
}
