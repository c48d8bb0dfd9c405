//! `mesh-controller`'s command line: every subcommand's flags, in the library so that what
//! renders their arguments (`mesh install`, `mesh viz install`) can check them against this very
//! parser (`Cli::try_parse_from`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_api::duration::parse_duration;

/// The mesh control plane.
#[derive(Parser)]
#[command(name = "mesh-controller", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
pub struct TapArgs {
    /// The address to serve the aggregator, health and readiness on (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:8089")]
    pub listen: SocketAddr,
    /// The identity controller, host:port.
    #[arg(long, default_value = "mesh-identity.mesh.svc.cluster.local:8080")]
    pub identity_addr: String,
    /// The projected service-account token (audience identity.mesh.io) sent to the identity
    /// controller.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/run/secrets/tokens/mesh-identity-token"
    )]
    pub token_file: PathBuf,
    /// The trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// The aggregator's own namespace: its identity is mesh-tap.<namespace>.
    #[arg(long, default_value = "mesh-viz")]
    pub namespace: String,
    /// The control plane's namespace, whose ConfigMap mesh-trust-anchors holds the trust
    /// anchors.
    #[arg(long, default_value = mesh_api::identity::CONTROL_PLANE_NAMESPACE)]
    pub control_plane_namespace: String,
    /// The trust anchors (PEM) from a file instead of the ConfigMap.
    #[arg(long, value_name = "PATH")]
    pub trust_anchors: Option<PathBuf>,
    /// The proxies' admin port.
    #[arg(long, default_value_t = mesh_api::defaults::ADMIN_PORT)]
    pub proxy_admin_port: u16,
    /// The kubeconfig file; by default KUBECONFIG, ~/.kube/config or the in-cluster
    /// configuration.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(clap::Args)]
pub struct MetricsApiArgs {
    /// The address to serve the metrics API, health and readiness on (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:8085")]
    pub listen: SocketAddr,
    /// The Prometheus that scrapes the proxies (its `namespace` and `pod` labels name them).
    #[arg(
        long,
        default_value = "http://prometheus.mesh-viz.svc.cluster.local:9090"
    )]
    pub prometheus_url: String,
    /// How long one Prometheus query may take (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// The log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(clap::Args)]
pub struct InjectorArgs {
    /// The address to serve the webhook, health and metrics on (TLS).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// The serving certificate chain (PEM), valid for mesh-injector.<namespace>.svc.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: PathBuf,
    /// The serving certificate's private key (PEM).
    #[arg(long, value_name = "PATH")]
    pub tls_key: PathBuf,
    /// The trust anchors (PEM) injected proxies verify against.
    #[arg(long, value_name = "PATH")]
    pub trust_anchors: PathBuf,
    /// The proxy image, without its tag.
    #[arg(long)]
    pub proxy_image: String,
    /// The proxy image's tag, also written as mesh.io/proxy-version.
    #[arg(long)]
    pub proxy_version: String,
    /// The proxy's log filter unless a pod's config.mesh.io/proxy-log-level says otherwise.
    #[arg(long, default_value = "warn,mesh_proxy=info")]
    pub proxy_log_level: String,
    /// Who may call the ports no Server selects, unless a pod's (or its namespace's)
    /// config.mesh.io/default-inbound-policy says otherwise: all-unauthenticated,
    /// all-authenticated, cluster-authenticated, cluster-unauthenticated, deny or audit.
    #[arg(long, value_name = "POLICY", default_value = "all-unauthenticated")]
    pub default_inbound_policy: mesh_api::inbound::DefaultPolicy,
    /// The cluster's networks, which the cluster-* default inbound policies allow
    /// (comma-separated CIDRs).
    #[arg(long, value_name = "CIDRS", default_value = mesh_api::inbound::DEFAULT_CLUSTER_NETWORKS, value_parser = mesh_api::inject::cluster_networks)]
    pub cluster_networks: String,
    /// Whether the proxy is a native sidecar unless a pod's config.mesh.io/native-sidecar says
    /// otherwise: `true`, `false`, or `auto`, from the API server's version (native from 1.29),
    /// read at start-up and every 10 minutes.
    #[arg(long, value_name = "auto|true|false", default_value = "auto")]
    pub native_sidecar: crate::injector::SidecarPolicy,
    /// The image pull policy of the injected containers.
    #[arg(long, default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// The control plane's namespace.
    #[arg(long, default_value = mesh_api::identity::CONTROL_PLANE_NAMESPACE)]
    pub control_plane_namespace: String,
    /// The trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The kubeconfig file (for reading namespaces); by default KUBECONFIG, ~/.kube/config or
    /// the in-cluster configuration.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(clap::Args)]
pub struct IdentityArgs {
    /// The issuer certificate (PEM), signed by a trust anchor.
    #[arg(long)]
    pub issuer_cert: PathBuf,
    /// The issuer's private key (PEM).
    #[arg(long)]
    pub issuer_key: PathBuf,
    /// The trust anchors (PEM) proxies verify against.
    #[arg(long)]
    pub trust_anchors: PathBuf,
    /// The address to serve the identity API (TLS), health and metrics on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Where tokens are checked: `kube` (TokenReviews) or `dir:PATH` (service-account token
    /// Secrets in a folder of YAML).
    #[arg(long, default_value = "kube")]
    pub source: String,
    /// The kubeconfig file for `--source kube`; by default KUBECONFIG, ~/.kube/config or the
    /// in-cluster configuration.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// How long issued certificates live (e.g. 24h, 90m); never past the issuer's expiry.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub leaf_lifetime: Duration,
    /// How far back a certificate's validity starts, for clocks that run behind (e.g. 1m).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub clock_skew: Duration,
    /// The audience a projected service-account token must be for.
    #[arg(long, default_value = mesh_api::identity::TOKEN_AUDIENCE)]
    pub token_audience: String,
    /// The log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(clap::Args)]
pub struct DestinationArgs {
    /// The address to serve the destination API, health and metrics on.
    #[arg(long, default_value = "0.0.0.0:8086")]
    pub listen: SocketAddr,
    /// Where objects come from: `kube` (the Kubernetes API) or `dir:PATH` (a folder of YAML).
    #[arg(long, default_value = "kube")]
    pub source: String,
    /// The kubeconfig file for `--source kube`; by default KUBECONFIG, ~/.kube/config or the
    /// in-cluster configuration.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}
