//! The `mesh-controller` binary: parses flags, starts logging and runs a controller.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_controller::identity::{self, IdentityConfig};
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
    /// Runs the identity controller: certifies workloads whose token proves their service
    /// account, with the mesh CA's issuer.
    Identity(IdentityArgs),
    /// Runs the injector webhook: adds the proxy to pods that ask for it (AdmissionReview v1
    /// over TLS).
    Injector(InjectorArgs),
    /// Runs the viz metrics API: answers `mesh viz stat|edges|dashboard` with the proxies'
    /// samples, read from Prometheus.
    MetricsApi(MetricsApiArgs),
    /// Runs the viz tap aggregator: taps (and scrapes) a pod's proxy over mutual TLS as the viz
    /// tap identity, for `mesh viz tap|top` in a cluster.
    Tap(TapArgs),
}

#[derive(clap::Args)]
struct TapArgs {
    /// The address to serve the aggregator, health and readiness on (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:8089")]
    listen: SocketAddr,
    /// The identity controller, host:port.
    #[arg(long, default_value = "mesh-identity.mesh.svc.cluster.local:8080")]
    identity_addr: String,
    /// The projected service-account token (audience identity.mesh.io) sent to the identity
    /// controller.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/run/secrets/tokens/mesh-identity-token"
    )]
    token_file: PathBuf,
    /// The trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The aggregator's own namespace: its identity is mesh-tap.<namespace>.
    #[arg(long, default_value = "mesh-viz")]
    namespace: String,
    /// The control plane's namespace, whose ConfigMap mesh-trust-anchors holds the trust
    /// anchors.
    #[arg(long, default_value = mesh_api::identity::CONTROL_PLANE_NAMESPACE)]
    control_plane_namespace: String,
    /// The trust anchors (PEM) from a file instead of the ConfigMap.
    #[arg(long, value_name = "PATH")]
    trust_anchors: Option<PathBuf>,
    /// The proxies' admin port.
    #[arg(long, default_value_t = mesh_api::inject::ADMIN_PORT)]
    proxy_admin_port: u16,
    /// The kubeconfig file; by default KUBECONFIG, ~/.kube/config or the in-cluster
    /// configuration.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(clap::Args)]
struct MetricsApiArgs {
    /// The address to serve the metrics API, health and readiness on (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:8085")]
    listen: SocketAddr,
    /// The Prometheus that scrapes the proxies (its `namespace` and `pod` labels name them).
    #[arg(
        long,
        default_value = "http://prometheus.mesh-viz.svc.cluster.local:9090"
    )]
    prometheus_url: String,
    /// How long one Prometheus query may take (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = identity::parse_duration)]
    query_timeout: Duration,
    /// The log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(clap::Args)]
struct InjectorArgs {
    /// The address to serve the webhook, health and metrics on (TLS).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// The serving certificate chain (PEM), valid for mesh-injector.<namespace>.svc.
    #[arg(long, value_name = "PATH")]
    tls_cert: PathBuf,
    /// The serving certificate's private key (PEM).
    #[arg(long, value_name = "PATH")]
    tls_key: PathBuf,
    /// The trust anchors (PEM) injected proxies verify against.
    #[arg(long, value_name = "PATH")]
    trust_anchors: PathBuf,
    /// The proxy image, without its tag.
    #[arg(long)]
    proxy_image: String,
    /// The proxy image's tag, also written as mesh.io/proxy-version.
    #[arg(long)]
    proxy_version: String,
    /// The proxy's log filter unless a pod's config.mesh.io/proxy-log-level says otherwise.
    #[arg(long, default_value = "warn,mesh_proxy=info")]
    proxy_log_level: String,
    /// Whether the proxy is a native sidecar unless a pod's config.mesh.io/native-sidecar says
    /// otherwise: `true`, `false`, or `auto`, from the API server's version (native from 1.29),
    /// read at start-up and every 10 minutes.
    #[arg(long, value_name = "auto|true|false", default_value = "auto")]
    native_sidecar: mesh_controller::injector::SidecarPolicy,
    /// The image pull policy of the injected containers.
    #[arg(long, default_value = "IfNotPresent")]
    image_pull_policy: String,
    /// The control plane's namespace.
    #[arg(long, default_value = mesh_api::identity::CONTROL_PLANE_NAMESPACE)]
    control_plane_namespace: String,
    /// The trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The kubeconfig file (for reading namespaces); by default KUBECONFIG, ~/.kube/config or
    /// the in-cluster configuration.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(clap::Args)]
struct IdentityArgs {
    /// The issuer certificate (PEM), signed by a trust anchor.
    #[arg(long)]
    issuer_cert: PathBuf,
    /// The issuer's private key (PEM).
    #[arg(long)]
    issuer_key: PathBuf,
    /// The trust anchors (PEM) proxies verify against.
    #[arg(long)]
    trust_anchors: PathBuf,
    /// The address to serve the identity API (TLS), health and metrics on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Where tokens are checked: `kube` (TokenReviews) or `dir:PATH` (service-account token
    /// Secrets in a folder of YAML).
    #[arg(long, default_value = "kube")]
    source: String,
    /// The kubeconfig file for `--source kube`; by default KUBECONFIG, ~/.kube/config or the
    /// in-cluster configuration.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// How long issued certificates live (e.g. 24h, 90m); never past the issuer's expiry.
    #[arg(long, default_value = "24h", value_parser = identity::parse_duration)]
    leaf_lifetime: Duration,
    /// How far back a certificate's validity starts, for clocks that run behind (e.g. 1m).
    #[arg(long, default_value = "1m", value_parser = identity::parse_duration)]
    clock_skew: Duration,
    /// The audience a projected service-account token must be for.
    #[arg(long, default_value = mesh_api::identity::TOKEN_AUDIENCE)]
    token_audience: String,
    /// The log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
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
