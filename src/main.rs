//! The `spoke` binary: parse the CLI, set up logging, run the chosen command, and map the
//! result to an exit code (0 ok, 1 runtime failure, 2 bad usage or invalid config).

use std::process::ExitCode;

use clap::Parser;

use spoke::cli::{
    CaCommand, CheckArgs, CheckOutput, Cli, Command, ControlArgs, ControlCommand, InjectArgs,
    ProxyArgs, RedirectArgs, SidecarArgs,
};
use spoke::{app, config, telemetry};

/// jemalloc with a background thread that gives freed pages back to the system within about
/// a second (see `.cargo/config.toml`): glibc's per-thread arenas kept a sidecar at 3-4x its
/// idle size after a burst of connections had ended.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Status(args) => match spoke::status::status(&args.control, args.json) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Diagnose(args) => {
            let checks = spoke::status::diagnose(&args.admin);
            for c in &checks {
                println!("{} {}", if c.ok { "[ok]  " } else { "[FAIL]" }, c.line);
            }
            if checks.iter().all(|c| c.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Ca(cmd) => ca(cmd),
        Command::Inject(args) => inject(&args),
        Command::Redirect(args) => redirect(args),
        Command::Control(args) => {
            if let Some(ControlCommand::Token { ca, id, ttl }) = args.command {
                return token(&ca, &id, &ttl);
            }
            let _log = match telemetry::init(cli.log_format, cli.log_level.as_deref()) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            run_async(control(args))
        }
        Command::Proxy(args) => {
            let log = match telemetry::init(cli.log_format, cli.log_level.as_deref()) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let workers = spoke::workers::for_sidecar(args.workers);
            run_on(Some(workers), proxy(args, log))
        }
        Command::Demo(args) => {
            let level = cli.log_level.as_deref().or(Some("warn"));
            let _log = match telemetry::init(cli.log_format, level) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            run_async(spoke::demo::run(args.duration))
        }
    }
}

fn run_async<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    run_on(None, f)
}

/// Runs `f` on a multi-threaded runtime with `workers` threads (Tokio's default if `None`).
fn run_on<F: std::future::Future<Output = ExitCode>>(workers: Option<usize>, f: F) -> ExitCode {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    // A worker that parks after the proxy turned quiet gives its allocator cache back.
    b.on_thread_park(spoke::rest::on_worker_park);
    match b.enable_all().build() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    let mut diags = Vec::new();
    if let Some(dir) = &args.mesh {
        diags.extend(spoke::check::mesh_dir(dir));
    }
    for f in &args.files {
        if let Err(d) = spoke::check::proxy_file(f, args.unsafe_admin) {
            diags.extend(d);
        }
    }
    match args.output {
        CheckOutput::Json => println!("{}", spoke::check::to_json(&diags)),
        CheckOutput::Text if diags.is_empty() => println!("ok"),
        CheckOutput::Text => diags.iter().for_each(|d| eprintln!("{d}")),
    }
    if diags.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn redirect(a: RedirectArgs) -> ExitCode {
    use spoke::redirect::{Options, Plan};
    let opts = Options {
        plan: Plan {
            proxy_uid: a.proxy_uid,
            proxy_gid: a.proxy_gid.unwrap_or(a.proxy_uid),
            inbound_capture_port: a.inbound_capture_port,
            outbound_capture_port: a.outbound_capture_port,
            inbound_ports: a.inbound_ports,
            exclude_inbound_ports: a.exclude_inbound_ports.0,
            outbound_ports: a.outbound_ports,
            exclude_outbound_ports: a.exclude_outbound_ports.0,
            exclude_outbound_cidrs: a.exclude_outbound_cidrs.0,
        },
        ipv6: a.ipv6,
        remove: a.remove,
        dry_run: a.dry_run,
    };
    match spoke::redirect::run(&opts, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn ca(cmd: CaCommand) -> ExitCode {
    let dur =
        |flag: &str, v: &str| config::duration::parse(v).map_err(|e| format!("--{flag}: {e}"));
    let result = match cmd {
        CaCommand::Init {
            out,
            trust_domain,
            validity,
            force,
        } => dur("validity", &validity).and_then(|v| {
            let ca = spoke::ca::Ca::new(&trust_domain, v).map_err(|e| e.to_string())?;
            ca.save(&out, force).map_err(|e| e.to_string())?;
            println!(
                "root CA for trust domain {trust_domain} written to {}/root.pem and root.key",
                out.display()
            );
            Ok(())
        }),
        CaCommand::Issue {
            ca,
            id,
            out,
            validity,
            dns,
            force,
        } => dur("validity", &validity).and_then(|v| {
            let identity = config::Identity::parse(&id).map_err(|e| format!("--id: {e}"))?;
            let ca = spoke::ca::Ca::load(&ca).map_err(|e| e.to_string())?;
            spoke::ca::issue_to_dir(&ca, &identity, v, &dns, &out, force)
                .map_err(|e| e.to_string())?;
            println!(
                "certificate for {identity} written to {}/cert.pem, key.pem, root.pem",
                out.display()
            );
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Raises the open-file limit to its hard maximum: each proxied connection takes two
/// descriptors, and the default soft limit (often 1024) would cap a listener far below its
/// `max_connections`.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        match setrlimit(Resource::Nofile, lim) {
            Ok(()) => tracing::debug!(limit = ?lim.current, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
}

fn token(ca: &std::path::Path, id: &str, ttl: &str) -> ExitCode {
    let result = (|| -> Result<String, String> {
        let id = config::Identity::parse(id).map_err(|e| format!("--id: {e}"))?;
        let ttl = config::duration::parse(ttl).map_err(|e| format!("--ttl: {e}"))?;
        let ca_cert = spoke::ca::Ca::load(ca).map_err(|e| e.to_string())?;
        if id.trust_domain() != ca_cert.trust_domain() {
            return Err(format!(
                "{id} is not in this CA's trust domain {}",
                ca_cert.trust_domain()
            ));
        }
        let key = spoke::control::token::TokenKey::load_or_create(ca)?;
        Ok(key.issue(&id, ttl))
    })();
    match result {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn control(args: ControlArgs) -> ExitCode {
    let Some(ca_dir) = args.ca.clone() else {
        eprintln!("error: spoke control needs --config-dir DIR (or --kubernetes) and --ca DIR");
        return ExitCode::from(2);
    };
    let cert_ttl = match config::duration::parse(&args.cert_ttl) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --cert-ttl: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = spoke::control::Options {
        config_dir: args.config_dir.clone(),
        ca_dir,
        listen: args.listen,
        stats: args.stats,
        cert_ttl,
        kubernetes: args.kubernetes.then(|| args.kubeconfig.clone()),
        token_audience: args.token_audience.clone(),
    };
    let webhook = match webhook(&args).await {
        Ok(w) => w,
        Err((code, e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(code);
        }
    };
    let running = match spoke::control::run(opts).await {
        Ok(r) => r,
        Err(e) => {
            for m in e.messages {
                eprintln!("{m}");
            }
            return ExitCode::from(e.exit_code);
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("control plane stopping");
    drop(running);
    if let Some(w) = webhook {
        w.abort();
    }
    ExitCode::SUCCESS
}

/// What `spoke inject` and the webhook inject; an error when no init image can be derived.
fn inject_options(args: &SidecarArgs) -> Result<spoke::inject::Options, String> {
    let init_image = spoke::inject::image::init_image(&args.image, args.init_image.as_deref())
        .map_err(|e| e.to_string())?;
    Ok(spoke::inject::Options {
        image: args.image.clone(),
        init_image,
        control: args.control_address.clone(),
        classic: args.classic,
    })
}

/// `spoke inject`: the whole output is built first, so bad input writes nothing to stdout.
fn inject(args: &InjectArgs) -> ExitCode {
    use std::io::{Read, Write};
    let mut text = String::new();
    let read = match args.file.as_deref() {
        None => std::io::stdin().read_to_string(&mut text).map(|_| ()),
        Some(p) if p == std::path::Path::new("-") => {
            std::io::stdin().read_to_string(&mut text).map(|_| ())
        }
        Some(p) => std::fs::read_to_string(p).map(|t| text = t),
    };
    if let Err(e) = read {
        let name = args
            .file
            .as_ref()
            .map_or("stdin".into(), |p| p.display().to_string());
        eprintln!("error: cannot read {name}: {e}");
        return ExitCode::from(2);
    }
    let opts = match inject_options(&args.sidecar) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match spoke::inject::inject_yaml(&text, &opts) {
        Ok(out) => {
            for n in &out.notes {
                eprintln!("{n}");
            }
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(out.text.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Starts the injection webhook when its certificate and key are given.
async fn webhook(args: &ControlArgs) -> Result<Option<tokio::task::JoinHandle<()>>, (u8, String)> {
    let (Some(cert), Some(key)) = (&args.webhook_cert, &args.webhook_key) else {
        tracing::info!("injection webhook off (no --webhook-cert and --webhook-key)");
        return Ok(None);
    };
    let opts = inject_options(&args.sidecar).map_err(|e| (2, e))?;
    let tls = spoke::control::webhook::tls_config(cert, key).map_err(|e| (2, e))?;
    let listener = tokio::net::TcpListener::bind(args.webhook_listen)
        .await
        .map_err(|e| (1, format!("cannot bind {}: {e}", args.webhook_listen)))?;
    tracing::info!(listen = %args.webhook_listen, "injection webhook serving");
    Ok(Some(tokio::spawn(spoke::control::webhook::serve(
        listener, tls, opts,
    ))))
}

async fn proxy(args: ProxyArgs, log: telemetry::LogHandle) -> ExitCode {
    raise_fd_limit();
    // The same checks as `spoke check`, printed once, plainly, in the same form: they are
    // for the operator at the terminal (or the pod's last termination message).
    let mut cfg = match spoke::check::proxy_file(&args.config, args.unsafe_admin) {
        Ok(c) => c,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            return ExitCode::from(2);
        }
    };
    if let Some(id) = args.node_id.filter(|id| !id.is_empty()) {
        // The raw file too: it is what a control plane push is merged into.
        cfg.raw.node.get_or_insert_with(Default::default).id = Some(id.clone());
        cfg.node.id = id;
    }
    let opts = app::Options {
        unsafe_admin: args.unsafe_admin,
        log: Some(log),
        observer: None,
        idle_trim: args.idle_trim,
    };
    let running = match app::start(cfg, opts).await {
        Ok(r) => r,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("{}: {line}", args.config.display());
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler");
            return ExitCode::from(1);
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = running.drain_requested() => {}
    }
    running.shutdown().await;
    ExitCode::SUCCESS
}
