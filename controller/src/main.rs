//! The `mesh-controller` binary: parses flags, starts logging and runs a controller.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_controller::index::IndexConfig;
use mesh_controller::source::Source;
use mesh_controller::DestinationConfig;

/// The mesh control plane.
#[derive(Parser)]
#[command(name = "mesh-controller", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the destination controller: streams the endpoints of services to proxies.
    Destination(DestinationArgs),
}

#[derive(clap::Args)]
struct DestinationArgs {
    /// The address to serve the destination API, health and metrics on.
    #[arg(long, default_value = "0.0.0.0:8086")]
    listen: SocketAddr,
    /// Where objects come from: `kube` (the Kubernetes API) or `dir:PATH` (a folder of YAML).
    #[arg(long, default_value = "kube")]
    source: String,
    /// The kubeconfig file for `--source kube`; by default KUBECONFIG, ~/.kube/config or the
    /// in-cluster configuration.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("mesh-controller: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Destination(args) => destination(args),
    }
}

/// Logs to stderr through `log_level` (RUST_LOG overrides it).
fn init_logging(log_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_level));
    // Colour only on a terminal, and never with NO_COLOR.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// Parses `--source` (and checks `--kubeconfig` goes with `kube`), or says why on stderr.
fn parse_source(source: &str, kubeconfig: Option<PathBuf>) -> Result<Source, ExitCode> {
    let has_kubeconfig = kubeconfig.is_some();
    let source = Source::parse(source, kubeconfig).map_err(|e| {
        eprintln!("mesh-controller: {e}");
        ExitCode::from(2)
    })?;
    if has_kubeconfig && !matches!(source, Source::Kube { .. }) {
        eprintln!("mesh-controller: --kubeconfig only applies to --source kube");
        return Err(ExitCode::from(2));
    }
    Ok(source)
}

fn destination(args: DestinationArgs) -> ExitCode {
    let source = match parse_source(&args.source, args.kubeconfig.clone()) {
        Ok(source) => source,
        Err(code) => return code,
    };
    init_logging(&args.log_level);
    let config = DestinationConfig {
        listen: args.listen,
        source,
        index: IndexConfig {
            trust_domain: args.trust_domain,
            cluster_domain: args.cluster_domain,
        },
    };
    exit(run_destination(config))
}

/// The exit status of a controller's run: 0, or 2 with the error on stderr.
fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-controller: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_destination(config: DestinationConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let mut running = mesh_controller::start(config)
            .await
            .context("starting the destination controller")?;
        tokio::select! {
            r = running.wait() => r.context("destination controller stopped"),
            r = tokio::signal::ctrl_c() => r.context("waiting for a signal"),
        }
    })
}
