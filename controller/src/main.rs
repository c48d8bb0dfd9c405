//! The `mesh-controller` binary: parses flags, starts logging and runs a controller.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser as _;
use mesh_controller::cli::{
    Cli, Command, DestinationArgs, IdentityArgs, InjectorArgs, MetricsApiArgs, TapArgs,
};
use mesh_controller::identity::{self, IdentityConfig};
use mesh_controller::index::IndexConfig;
use mesh_controller::source::Source;
use mesh_controller::DestinationConfig;

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
        Command::Identity(args) => identity(args),
        Command::Injector(args) => injector(args),
        Command::MetricsApi(args) => metrics_api(args),
        Command::Tap(args) => tap(args),
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

fn injector(args: InjectorArgs) -> ExitCode {
    init_logging(&args.log_level);
    exit(run_injector(args))
}

fn run_injector(args: InjectorArgs) -> anyhow::Result<()> {
    use mesh_controller::injector::{self, InjectorConfig, Namespaces};
    let anchors = std::fs::read_to_string(&args.trust_anchors)
        .with_context(|| format!("reading the trust anchors {}", args.trust_anchors.display()))?;
    mesh_api::identity::ca::certs_from_pem(&anchors, "the trust anchors")?;
    let mut proxy =
        mesh_api::inject::ProxyConfig::new(&args.proxy_image, &args.proxy_version, &anchors);
    proxy.log_level = args.proxy_log_level;
    proxy.default_inbound_policy = args.default_inbound_policy;
    proxy.cluster_networks = args.cluster_networks;
    proxy.image_pull_policy = args.image_pull_policy;
    proxy.control_plane_namespace = args.control_plane_namespace;
    proxy.trust_domain = args.trust_domain;
    proxy.cluster_domain = args.cluster_domain;
    let config = InjectorConfig {
        listen: args.listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        proxy,
        sidecar: args.native_sidecar,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let client = mesh_controller::source::kube::client(args.kubeconfig.as_deref()).await?;
        let mut running = injector::start(config, Namespaces::Kube(client))
            .await
            .context("starting the injector")?;
        tokio::select! {
            e = running.wait() => Err(anyhow::Error::new(e).context("injector stopped")),
            r = terminated() => r.context("waiting for a signal"),
        }
    })
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
            r = terminated() => r.context("waiting for a signal"),
        }
    })
}

fn identity(args: IdentityArgs) -> ExitCode {
    let source = match parse_source(&args.source, args.kubeconfig.clone()) {
        Ok(source) => source,
        Err(code) => return code,
    };
    init_logging(&args.log_level);
    let mut config = IdentityConfig::new(
        args.issuer_cert,
        args.issuer_key,
        args.trust_anchors,
        source,
    );
    config.listen = args.listen;
    config.trust_domain = args.trust_domain;
    config.leaf_lifetime = args.leaf_lifetime;
    config.clock_skew = args.clock_skew;
    config.token_audience = args.token_audience;
    exit(run_identity(config))
}

fn run_identity(config: IdentityConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let mut running = identity::start(config)
            .await
            .context("starting the identity controller")?;
        tokio::select! {
            r = running.wait() => return r.context("identity controller stopped"),
            r = terminated() => r.context("waiting for a signal")?,
        }
        running.shutdown().await.context("shutting down")
    })
}

fn metrics_api(args: MetricsApiArgs) -> ExitCode {
    use mesh_controller::viz::metrics_api::{self, MetricsApiConfig};
    init_logging(&args.log_level);
    let config = MetricsApiConfig {
        listen: args.listen,
        prometheus_url: args.prometheus_url,
        query_timeout: args.query_timeout,
    };
    exit((|| {
        let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
        runtime.block_on(async {
            tokio::select! {
                r = metrics_api::run(config) => r.context("metrics API stopped"),
                r = terminated() => r.context("waiting for a signal"),
            }
        })
    })())
}

fn tap(args: TapArgs) -> ExitCode {
    use mesh_controller::viz::tap::{self, TapConfig};
    init_logging(&args.log_level);
    let config = TapConfig {
        listen: args.listen,
        identity_addr: args.identity_addr,
        token_file: args.token_file,
        trust_domain: args.trust_domain,
        namespace: args.namespace,
        control_plane_namespace: args.control_plane_namespace,
        trust_anchors: args.trust_anchors,
        proxy_admin_port: args.proxy_admin_port,
    };
    exit((|| {
        let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
        runtime.block_on(async {
            let client = mesh_controller::source::kube::client(args.kubeconfig.as_deref()).await?;
            let mut running = tap::start(config, client)
                .await
                .context("starting the tap aggregator")?;
            tokio::select! {
                r = running.wait() => r.context("tap aggregator stopped"),
                r = terminated() => r.context("waiting for a signal"),
            }
        })
    })())
}

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends to stop a pod).
async fn terminated() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
