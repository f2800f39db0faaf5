//! Command-line definitions only (clap derive). The flags a pod's manifest sets (log
//! format and level, the proxy's config, the control plane's settings) can also come from
//! `SPOKE_*` environment variables; the one-off commands (`ca`, `control token`) take flags
//! only. Every subcommand's help ends with an example and its exit codes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "spoke",
    version,
    about = "A small, fast service-mesh sidecar proxy",
    after_help = "Exit codes: 0 ok, 1 runtime failure, 2 bad usage or invalid config.\nDocs: README.md and docs/ in the repository."
)]
pub struct Cli {
    /// Log format (stderr; colour only on a terminal without NO_COLOR).
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

// Parsed once at start-up and matched once: a few hundred bytes more for one variant cost
// nothing, and boxing would only add noise at every use.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar proxy.
    #[command(
        after_help = "Example:\n  spoke proxy --config /etc/spoke/proxy.yaml\n\nExit codes: 0 after a drain (SIGTERM, SIGINT, POST /drain), 1 runtime failure (a port in use), 2 invalid config."
    )]
    Proxy(ProxyArgs),
    /// Validate proxy config files (or a mesh directory) exactly as `spoke proxy` would.
    #[command(
        after_help = "Examples:\n  spoke check proxy.yaml\n  kubectl get cm spoke -o jsonpath='{.data.proxy\\.yaml}' | spoke check -\n  spoke check --mesh mesh/ --output json\n\nExit codes: 0 valid, 2 any error (each as FILE:LINE:COL: path: message)."
    )]
    Check(CheckArgs),
    /// Run a whole demo on loopback and print what happened.
    #[command(
        after_help = "Example:\n  spoke demo --duration 5s\n\nExit codes: 0 the demo behaved, 1 it did not, 2 bad usage."
    )]
    Demo(DemoArgs),
    /// Make the mesh's root CA and workload certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run the control plane (mesh config, discovery stream, CA), or make a token.
    #[command(
        after_help = "Examples:\n  spoke control --config-dir mesh/ --ca ca/ --listen 0.0.0.0:15010 --stats 0.0.0.0:15014\n  spoke control --config-dir mesh/ --ca ca/ --webhook-cert webhook/cert.pem --webhook-key webhook/key.pem\n  spoke control token --ca ca/ --id spiffe://cluster.local/ns/default/sa/web --ttl 24h > web.token\n\nExit codes: 0 stopped by SIGTERM/SIGINT, 1 runtime failure (a port in use), 2 bad usage, an invalid mesh directory or CA."
    )]
    Control(ControlArgs),
    /// The control plane's view of every sidecar: versions sent and ACKed, last NACK.
    #[command(
        after_help = "Example:\n  spoke status --control 127.0.0.1:15014\n\nExit codes: 0 table printed, 1 the control plane cannot be asked, 2 bad usage."
    )]
    Status(StatusArgs),
    /// Pass/fail checks of one running sidecar through its admin server.
    #[command(
        after_help = "Example:\n  kubectl exec web-0 -c spoke -- spoke diagnose --admin 127.0.0.1:15000\n\nExit codes: 0 every check passed, 1 any failed, 2 bad usage."
    )]
    Diagnose(DiagnoseArgs),
    /// Add the sidecar to Kubernetes manifests (a file or stdin, to stdout).
    #[command(
        after_help = "Examples:\n  spoke inject -f app.yaml | kubectl apply -f -\n  kubectl get deploy web -o yaml | spoke inject --classic > web.yaml\n\nExit codes: 0 written (objects left alone are named on stderr), 2 bad usage or bad input (an error naming the document; nothing written)."
    )]
    Inject(InjectArgs),
    /// Install (or remove) the pod's iptables capture rules; run by the pod's init step.
    #[command(
        after_help = "Inbound TCP to the pod goes to --inbound-capture-port, the app's outbound TCP to --outbound-capture-port, except: the proxy's own uid and gid, loopback, the excluded ports and CIDRs, and the capture ports themselves. Rules live in the nat chains SPOKE_INBOUND, SPOKE_IN_REDIRECT, SPOKE_OUTPUT and SPOKE_REDIRECT, applied atomically with iptables-restore; running it again replaces them.\n\nExamples:\n  spoke redirect --proxy-uid 1337 --exclude-outbound-cidrs 169.254.169.254/32\n  spoke redirect --inbound-ports 8080,9090 --dry-run\n  SPOKE_EXCLUDE_OUTBOUND_PORTS=5432 spoke redirect\n  spoke redirect --remove\n\nExit codes: 0 installed, removed or printed; 1 iptables missing, permission denied (needs NET_ADMIN) or iptables failed; 2 bad usage."
    )]
    Redirect(RedirectArgs),
}

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// The manifests (YAML, any number of documents; `-` or none reads stdin).
    #[arg(long = "filename", short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
}

/// What the injected sidecar is made of; shared by `spoke inject` and the control plane's
/// webhook, so both inject the same pod the same way.
#[derive(Debug, Args)]
pub struct SidecarArgs {
    /// Image of the injected proxy (the distroless runtime image).
    #[arg(long, env = "SPOKE_IMAGE", default_value = "spoke:latest")]
    pub image: String,
    /// Image of the injected init step, `spoke redirect` with iptables (default: --image
    /// with `-init` added to its repository name, e.g. reg.example/spoke-init:1.2; required
    /// when --image is pinned by digest).
    #[arg(long, env = "SPOKE_INIT_IMAGE", value_name = "IMAGE")]
    pub init_image: Option<String>,
    /// The control plane's address as the injected sidecars dial it.
    #[arg(
        long,
        env = "SPOKE_CONTROL_ADDRESS",
        default_value = "spoke-control.spoke-system.svc:15010"
    )]
    pub control_address: String,
    /// Inject the proxy as a regular container (clusters before Kubernetes 1.29) instead of
    /// a native sidecar (an init container with restartPolicy: Always).
    #[arg(long, env = "SPOKE_INJECT_CLASSIC")]
    pub classic: bool,
}

#[derive(Debug, Args)]
pub struct RedirectArgs {
    /// The proxy's user id: its own connections are never captured.
    #[arg(long, env = "SPOKE_PROXY_UID", default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The proxy's group id, also never captured (default: the proxy uid).
    #[arg(long, env = "SPOKE_PROXY_GID")]
    pub proxy_gid: Option<u32>,
    /// Port of the `capture: inbound` listener.
    #[arg(long, env = "SPOKE_INBOUND_CAPTURE_PORT", default_value_t = 15006)]
    pub inbound_capture_port: u16,
    /// Port of the `capture: outbound` listener.
    #[arg(long, env = "SPOKE_OUTBOUND_CAPTURE_PORT", default_value_t = 15001)]
    pub outbound_capture_port: u16,
    /// Inbound ports captured: `*` (all), a list (`8080,9090`), or empty (none).
    #[arg(long, env = "SPOKE_INBOUND_PORTS", default_value = "*", value_parser = crate::redirect::Ports::parse)]
    pub inbound_ports: crate::redirect::Ports,
    /// Inbound ports never captured (the capture ports always are excluded). The default
    /// keeps the sidecar's admin (15000) and stats/probe (15020) ports reachable directly.
    #[arg(long, env = "SPOKE_EXCLUDE_INBOUND_PORTS", default_value = "15000,15020", value_parser = crate::redirect::PortList::parse)]
    pub exclude_inbound_ports: crate::redirect::PortList,
    /// Outbound destination ports captured: `*` (all), a list, or empty (none).
    #[arg(long, env = "SPOKE_OUTBOUND_PORTS", default_value = "*", value_parser = crate::redirect::Ports::parse)]
    pub outbound_ports: crate::redirect::Ports,
    /// Outbound destination ports never captured (`5432,6379`).
    #[arg(long, env = "SPOKE_EXCLUDE_OUTBOUND_PORTS", default_value = "", value_parser = crate::redirect::PortList::parse)]
    pub exclude_outbound_ports: crate::redirect::PortList,
    /// Outbound destinations never captured (`169.254.169.254/32,10.0.0.0/8,fd00::/8`).
    #[arg(long, env = "SPOKE_EXCLUDE_OUTBOUND_CIDRS", default_value = "", value_parser = crate::redirect::CidrList::parse)]
    pub exclude_outbound_cidrs: crate::redirect::CidrList,
    /// IPv6 rules (ip6tables) too: `auto` when the kernel has IPv6 and ip6tables is installed.
    #[arg(long, env = "SPOKE_IPV6", value_enum, default_value = "auto")]
    pub ipv6: crate::redirect::Ipv6,
    /// Remove every rule and chain a previous run installed, instead of installing.
    #[arg(long, env = "SPOKE_REDIRECT_REMOVE")]
    pub remove: bool,
    /// Print the exact iptables-restore input instead of applying it; changes nothing.
    #[arg(long, env = "SPOKE_DRY_RUN")]
    pub dry_run: bool,
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
    /// Address of the injection webhook (HTTPS); it runs only with --webhook-cert and
    /// --webhook-key.
    #[arg(long, env = "SPOKE_WEBHOOK_LISTEN", default_value = "0.0.0.0:15017")]
    pub webhook_listen: std::net::SocketAddr,
    /// The webhook's serving certificate (PEM chain, leaf first) with a DNS SAN for the
    /// webhook Service (spoke-control.spoke-system.svc).
    #[arg(long, env = "SPOKE_WEBHOOK_CERT", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,
    /// The webhook certificate's private key (PEM).
    #[arg(long, env = "SPOKE_WEBHOOK_KEY", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
    /// Discover Services, EndpointSlices and Pods from Kubernetes, and accept projected
    /// ServiceAccount tokens (checked with a TokenReview). In-cluster config by default.
    #[arg(long, env = "SPOKE_KUBERNETES")]
    pub kubernetes: bool,
    /// With --kubernetes: a kubeconfig file instead of the in-cluster config (KUBECONFIG is
    /// read too when this is not given).
    #[arg(long, env = "SPOKE_KUBECONFIG", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubernetes: the audience a sidecar's ServiceAccount token must be issued for
    /// (the projected volume's `audience`); default: the API server's own audiences.
    #[arg(long, env = "SPOKE_TOKEN_AUDIENCE", requires = "kubernetes")]
    pub token_audience: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Print a bootstrap token for one identity (creates CA/token.key on first use).
    #[command(
        after_help = "Example:\n  spoke control token --ca ca/ --id spiffe://cluster.local/ns/default/sa/web > web.token\n\nExit codes: 0 token printed, 2 bad usage, an identity outside the CA's trust domain, an unreadable CA."
    )]
    Token {
        /// The CA directory made by `spoke ca init`; the token key is kept there.
        #[arg(long)]
        ca: PathBuf,
        /// The workload's SPIFFE ID the token proves, e.g. spiffe://cluster.local/ns/default/sa/web.
        #[arg(long)]
        id: String,
        /// How long the token is accepted.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make a root CA: DIR/root.pem and DIR/root.key (0600).
    #[command(
        after_help = "Example:\n  spoke ca init --out ca/ --trust-domain cluster.local\n\nExit codes: 0 written, 2 bad usage or files exist (without --force)."
    )]
    Init {
        /// Directory to write root.pem and root.key to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The trust domain: identities are spiffe://<trust-domain>/...
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
    #[command(
        after_help = "Example:\n  spoke ca issue --ca ca/ --id spiffe://cluster.local/ns/default/sa/web --out certs/web --validity 24h\n  spoke ca issue --ca ca/ --id spiffe://cluster.local/ns/spoke-system/sa/spoke-control --dns spoke-control.spoke-system.svc --out webhook --validity 8760h\n\nExit codes: 0 written, 2 bad usage, a bad identity, an unreadable CA or files exist (without --force)."
    )]
    Issue {
        /// The CA directory made by `spoke ca init`.
        #[arg(long)]
        ca: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web.
        #[arg(long)]
        id: String,
        /// Directory to write cert.pem, key.pem and root.pem to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime.
        #[arg(long, default_value = "24h")]
        validity: String,
        /// A DNS name to add as a SAN (repeatable), for a serving certificate such as the
        /// webhook's (spoke-control.spoke-system.svc).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
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
    /// The node id (instead of the file's `node.id`): one config file can serve many
    /// pods, each named by its own (injected pods pass `$(SPOKE_POD_NAME).$(SPOKE_POD_NAMESPACE)`).
    #[arg(long, env = "SPOKE_NODE_ID")]
    pub node_id: Option<String>,
    /// Worker threads. Default: the pod's CPU limit from its cgroup, rounded up (1 without a
    /// limit); `TOKIO_WORKER_THREADS` is honoured too.
    #[arg(long, env = "SPOKE_WORKERS")]
    pub workers: Option<usize>,
    /// Give memory back when the proxy turns quiet after start-up or traffic: code pages,
    /// pooled upstream connections, allocator caches. `false` (or `0`, `off`) keeps them.
    #[arg(long, env = "SPOKE_IDLE_TRIM", default_value_t = true, value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub idle_trim: bool,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag says what it is for; every command ends with an example and its exit codes.
    #[test]
    fn every_flag_has_help_and_every_command_an_example() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let name = format!("{path} {}", cmd.get_name());
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id != "help" && id != "version" && a.get_help().is_none() {
                    missing.push(format!("{name} --{id}: no help"));
                }
            }
            let after = cmd
                .get_after_help()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let group = cmd.get_subcommands().next().is_some()
                && cmd
                    .get_arguments()
                    .all(|a| a.is_global_set() || a.get_id() == "help" || a.get_id() == "version");
            let documented = after.contains("Example") && after.contains("Exit codes");
            if !(group || documented) {
                missing.push(format!("{name}: no example or exit codes"));
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        for sub in Cli::command().get_subcommands() {
            walk(sub, "spoke", &mut missing);
        }
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
