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
    /// Make the mesh's root CA and workload certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run the control plane (mesh config, discovery stream, CA), or make a token.
    Control(ControlArgs),
    /// The control plane's view of every sidecar: versions sent and ACKed, last NACK.
    Status(StatusArgs),
    /// Pass/fail checks of one running sidecar through its admin server.
    Diagnose(DiagnoseArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The control plane's stats address (`host:port` or `http://host:port`), as given to
    /// `spoke control --stats`.
    #[arg(long, env = "SPOKE_CONTROL_STATS", default_value = "127.0.0.1:15014")]
    pub control: String,
    /// Print the control plane's JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// The sidecar's admin address (`admin.address`, loopback by default).
    #[arg(long, env = "SPOKE_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: String,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControlArgs {
    #[command(subcommand)]
    pub command: Option<ControlCommand>,
    /// Directory of mesh config YAML files (watched).
    #[arg(long, env = "SPOKE_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// The CA directory made by `spoke ca init` (root.pem, root.key; token.key is kept there).
    #[arg(long, env = "SPOKE_CA")]
    pub ca: Option<PathBuf>,
    /// Address of the discovery stream and certificate service (gRPC over TLS).
    #[arg(long, env = "SPOKE_LISTEN", default_value = "0.0.0.0:15010")]
    pub listen: std::net::SocketAddr,
    /// Address of /status, /metrics, /ready.
    #[arg(long, env = "SPOKE_STATS", default_value = "0.0.0.0:15014")]
    pub stats: std::net::SocketAddr,
    /// Lifetime of workload certificates.
    #[arg(long, env = "SPOKE_CERT_TTL", default_value = "24h")]
    pub cert_ttl: String,
}

#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Print a bootstrap token for one identity.
    Token {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make a root CA: DIR/root.pem and DIR/root.key (0600).
    Init {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "cluster.local", env = "SPOKE_TRUST_DOMAIN")]
        trust_domain: String,
        /// Root lifetime.
        #[arg(long, default_value = "87600h")]
        validity: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate: OUT/cert.pem, OUT/key.pem (0600), OUT/root.pem.
    Issue {
        /// The CA directory made by `spoke ca init`.
        #[arg(long)]
        ca: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web.
        #[arg(long)]
        id: String,
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime.
        #[arg(long, default_value = "24h")]
        validity: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
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
    /// Proxy config files to check (`-` reads stdin), exactly as `spoke proxy` checks them
    /// before it binds: schema, cross-section rules, unsupported parts, certificate files.
    #[arg(required_unless_present = "mesh")]
    pub files: Vec<PathBuf>,
    /// A control plane's config directory, every `*.yaml` merged as `spoke control` does.
    #[arg(long, value_name = "DIR")]
    pub mesh: Option<PathBuf>,
    /// `text`: `FILE:LINE:COL: path: message` lines on stderr; `json`: one document on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub output: CheckOutput,
    /// Check as `spoke proxy --unsafe-admin` would run (a non-loopback admin address).
    #[arg(long)]
    pub unsafe_admin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckOutput {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop by itself after this long (`5s`, `1m`); default: run until Ctrl-C.
    #[arg(long, env = "SPOKE_DEMO_DURATION")]
    pub duration: Option<String>,
}
