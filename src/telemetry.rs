//! Logging setup: `tracing` with a plain or JSON formatter and a filter that the admin
//! server's `POST /logging` can change while the proxy runs.
//!
//! Colour only when stderr is a terminal and `NO_COLOR` is unset or empty, so files, pipes
//! and log collectors never get escape codes. Access events (`target: "access"`) are
//! switched by the config's `access_log`, not by the level: the filter lets them through
//! unless it names `access` itself.
//!
//! Lines are written to stderr by a thread of their own, in batches (see [`lines`]), so a
//! worker never waits on a slow log pipe. Access events, the one kind with a line per
//! request, skip the generic formatter: see [`access`].

mod access;
mod lines;

pub use access::{direct as access_direct, write as access_line};

use std::sync::Arc;

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter, Registry};

/// Changes the live log filter. Cheap to clone; absent when logging was not set up by us
/// (in-process tests).
#[derive(Clone)]
pub struct LogHandle {
    set: Arc<SetFilter>,
    /// Writes what is queued when the last clone is dropped.
    _lines: Arc<lines::LinesGuard>,
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

/// Whether to colour output written to stderr: a terminal, and no `NO_COLOR`.
pub fn use_colour() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// The filter for `spec`, with access events let through unless `spec` names them.
fn access_filter(spec: &str) -> Result<EnvFilter, String> {
    let full = if spec.contains("access") {
        spec.to_string()
    } else if spec.trim().is_empty() {
        "access=info".to_string()
    } else {
        format!("{spec},access=info")
    };
    EnvFilter::try_new(&full).map_err(|e| format!("log level {spec:?}: {e}"))
}

/// Installs the global subscriber. `level` wins over `RUST_LOG`; with neither, `info`.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<LogHandle, String> {
    let initial = match level {
        Some(l) => l.to_string(),
        None => std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()),
    };
    let filter = access_filter(&initial)?;
    let (filter, handle) = reload::Layer::new(filter);
    let (writer, guard) = lines::Lines::new(std::io::stderr());
    let access_layer = access::AccessLayer::new(writer.clone(), format == LogFormat::Json);
    let not_access = || filter_fn(|m| m.target() != access::TARGET);
    let direct = access_layer.clone();
    let registry = Registry::default().with(filter).with(access_layer);
    let result = match format {
        LogFormat::Plain => registry
            .with(
                fmt::layer()
                    .with_writer(writer)
                    .with_target(true)
                    .with_ansi(use_colour())
                    .with_filter(not_access()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_ansi(false)
                    .with_writer(writer)
                    .with_filter(not_access()),
            )
            .try_init(),
    };
    result.map_err(|e| e.to_string())?;
    direct.install();
    Ok(LogHandle {
        set: Arc::new(move |f: &str| {
            let new = access_filter(f)?;
            handle.reload(new).map_err(|e| e.to_string())?;
            access::refresh();
            Ok(())
        }),
        _lines: Arc::new(guard),
    })
}
