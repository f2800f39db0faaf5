//! Command-line definitions only (clap derive). Every flag can also come from a `SPOKE_*`
//! environment variable so Kubernetes manifests can set them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "spoke",
    version,
    about = "A small, fast service-mesh sidecar proxy"
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "SPOKE_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `warn,access=info`); overrides RUST_LOG.
    #[arg(long, global = true, env = "SPOKE_LOG_LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar proxy.
    Proxy(ProxyArgs),
    /// Validate proxy or mesh config files; exit 2 on any error.
    Check(CheckArgs),
    /// Run a whole demo on loopback and print what happened.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The proxy config file (YAML).
    #[arg(long, short, env = "SPOKE_CONFIG")]
    pub config: PathBuf,
    /// Allow the admin server to bind a non-loopback address.
    #[arg(long, env = "SPOKE_UNSAFE_ADMIN")]
    pub unsafe_admin: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop by itself after this long (`5s`, `1m`); default: run until Ctrl-C.
    #[arg(long, env = "SPOKE_DEMO_DURATION")]
    pub duration: Option<String>,
}
