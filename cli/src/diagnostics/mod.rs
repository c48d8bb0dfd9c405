//! `mesh diagnostics`: what the mesh itself says, unfolded: the destination controller's answer
//! for a name (`endpoints`) and a proxy's raw `/metrics` (`proxy-metrics`), on the local mesh
//! (`local.rs`: the controllers' and the proxies' network namespaces) or in a cluster
//! (`cluster.rs`: the API server's service and pod proxies).

mod cluster;
pub(crate) mod local;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context as _};
use mesh_api::destination::{Endpoint, ProtocolHint, Update};
use serde::Serialize;

use crate::kube::ClusterArgs;
use crate::target::{Target, TargetArgs};

pub use cluster::{watch_path, DESTINATION_SERVICE};

/// `mesh diagnostics`' flags.
#[derive(clap::Args, Debug)]
pub struct DiagnosticsArgs {
    #[command(subcommand)]
    pub command: DiagnosticsCommand,
    #[command(flatten)]
    pub target: TargetArgs,
    /// The namespace of a pod, or of a bare service name (`web-svc:80`): by default `demo` on
    /// the local mesh, `default` in a cluster.
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// How long to wait for the answer (e.g. 10s, 1m).
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s",
          value_parser = mesh_api::duration::parse_duration)]
    pub timeout: Duration,
}

#[derive(clap::Subcommand, Debug)]
pub enum DiagnosticsCommand {
    /// Shows what the destination controller answers for a name, as the proxies see it: its
    /// endpoints with their weights, pods, identities and protocol hints.
    ///
    /// The answer is the first message of the controller's watch (the full current state); the
    /// command stops there. On the local mesh it calls the controller in the control pod's
    /// network namespace (as root); in a cluster through the API server's service proxy to
    /// Service mesh-destination (it needs `get services/proxy` in namespace mesh).
    Endpoints(EndpointsArgs),
    /// Prints a meshed pod's proxy metrics, raw, as its admin port (4191) serves `/metrics`.
    ///
    /// On the local mesh it calls the proxy inside the pod's network namespace (as root); in a
    /// cluster through the API server's pod proxy (`get pods/proxy` in the pod's namespace).
    ProxyMetrics(ProxyMetricsArgs),
}

/// `mesh diagnostics endpoints`' arguments.
#[derive(clap::Args, Debug)]
pub struct EndpointsArgs {
    /// The name as a client dials it, `HOST:PORT`: `web-svc.demo.svc.cluster.local:80`,
    /// `web-svc.demo:80`, `web-svc:80` (in -n's namespace), or an address `10.244.0.5:8080`.
    #[arg(value_name = "AUTHORITY")]
    pub authority: String,
    /// `table` or `json`.
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table",
          value_parser = ["table", "json"])]
    pub output: String,
}

/// `mesh diagnostics proxy-metrics`' arguments.
#[derive(clap::Args, Debug)]
pub struct ProxyMetricsArgs {
    /// The pod: `po/NAME` (or its name alone).
    #[arg(value_name = "po/NAME")]
    pub pod: String,
}

/// The destination controller's answer for a name: the first message of its watch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// The authority asked about (a bare service name completed with the namespace).
    pub authority: String,
    /// Whether the controller knows the name (`false`: the proxies forward it as is).
    pub exists: bool,
    /// The endpoints, by address (the wire type of the watch).
    pub endpoints: Vec<Endpoint>,
}

impl Answer {
    /// Folds the first message of a watch of `authority`.
    pub fn new(authority: &str, first: Update) -> anyhow::Result<Answer> {
        let (exists, mut endpoints) = match first {
            Update::Add(add) => (true, add.endpoints),
            Update::NoEndpoints(none) => (none.exists, Vec::new()),
            Update::Remove(_) => bail!(
                "the destination controller's first answer for {authority} is a removal, not \
                 the full state its protocol promises: is it an older version? `mesh version`"
            ),
        };
        endpoints.sort_by_key(|e| e.addr);
        Ok(Answer {
            authority: authority.to_string(),
            exists,
            endpoints,
        })
    }

    /// A table of the endpoints, or a sentence when there are none.
    pub fn table(&self) -> String {
        if !self.exists {
            return format!(
                "{}: unknown to the destination controller: no Service or pod of the mesh has \
                 this name and port, so proxies forward it as is, to the address it resolves to\n",
                self.authority
            );
        }
        if self.endpoints.is_empty() {
            return format!(
                "{}: known to the destination controller, with no endpoints (no ready pod \
                 backs it): proxies fail requests to it\n",
                self.authority
            );
        }
        let dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
        let mut rows = vec![[
            "ADDRESS".to_string(),
            "WEIGHT".into(),
            "POD".into(),
            "WORKLOAD".into(),
            "IDENTITY".into(),
            "PROTOCOL-HINT".into(),
        ]];
        for e in &self.endpoints {
            rows.push([
                e.addr.to_string(),
                e.weight.to_string(),
                dash(e.labels.get("pod").cloned()),
                dash(workload(e)),
                dash(e.identity.clone()),
                dash(e.protocol_hint.as_ref().map(hint)),
            ]);
        }
        table(&rows)
    }

    /// The answer as JSON, one document.
    pub fn json(&self) -> String {
        // A struct of strings, numbers and the wire types: serializing it cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// A protocol hint as the table shows it: `h2`, `codec:redis`.
fn hint(h: &ProtocolHint) -> String {
    match h {
        ProtocolHint::H2 => "h2".into(),
        ProtocolHint::Codec(codec) => format!("codec:{codec}"),
    }
}

/// The workload of an endpoint's labels: `deployment/web`.
fn workload(e: &Endpoint) -> Option<String> {
    [
        "deployment",
        "statefulset",
        "daemonset",
        "job",
        "replicaset",
    ]
    .iter()
    .find_map(|kind| e.labels.get(*kind).map(|name| format!("{kind}/{name}")))
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Completes a bare service name (`web-svc:80`) with `namespace`, as a pod's DNS search path
/// would; anything else is returned as is.
///
/// ```
/// use mesh_cli::diagnostics::qualify;
/// assert_eq!(qualify("web-svc:80", "demo"), "web-svc.demo:80");
/// assert_eq!(qualify("web-svc.demo.svc.cluster.local:80", "shop"), "web-svc.demo.svc.cluster.local:80");
/// assert_eq!(qualify("10.244.0.5:8080", "demo"), "10.244.0.5:8080");
/// ```
pub fn qualify(authority: &str, namespace: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains('.')
                && !host.contains(':')
                && !host.starts_with('[') =>
        {
            format!("{host}.{namespace}:{port}")
        }
        _ => authority.to_string(),
    }
}

/// The pod name of `po/NAME`, `pod/NAME` or `NAME`.
pub fn pod_name(arg: &str) -> anyhow::Result<String> {
    if !arg.contains('/') {
        if arg.is_empty() {
            bail!("no pod named: use po/NAME");
        }
        return Ok(arg.to_string());
    }
    let resource: crate::viz::resource::Resource = arg.parse()?;
    match (resource.kind, resource.name) {
        (mesh_viz::model::Kind::Pod, Some(name)) => Ok(name),
        _ => bail!("proxy-metrics reads one pod's proxy: use po/NAME, not {arg}"),
    }
}

/// Whether a pod runs the mesh proxy: a container or an init container (a native sidecar) named
/// `mesh-proxy`, as the destination controller counts it.
pub(crate) fn meshed(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    let proxy = mesh_api::inject::PROXY_CONTAINER;
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == proxy)
            || s.init_containers.iter().flatten().any(|c| c.name == proxy)
    })
}

/// Runs `mesh diagnostics …` against the mesh the flags name; returns what to print.
pub fn run(args: &DiagnosticsArgs, cluster: &ClusterArgs) -> anyhow::Result<String> {
    let target = args.target.resolve(cluster)?;
    if let Target::Local(local) = &target {
        // Into the local mesh's namespaces first: the kernel allows it only while no thread runs.
        local.enter()?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let implicit = args.target.implicit(cluster);
        let source = match target {
            Target::Local(local) => Source::Local(local::LocalMesh::read(&local.objects)?),
            Target::Kube => Source::Cluster(connect(cluster, implicit).await?),
        };
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| source.default_namespace().to_string());
        let timeout = |what: String| {
            let limit = args.timeout;
            move |_| anyhow::anyhow!("{what}: no answer within {limit:?} (--timeout)")
        };
        match &args.command {
            DiagnosticsCommand::Endpoints(e) => {
                let authority = qualify(&e.authority, &namespace);
                let first = tokio::time::timeout(args.timeout, source.first_update(&authority))
                    .await
                    .map_err(timeout(format!(
                        "asking the destination controller about {authority}"
                    )))??;
                let answer = Answer::new(&authority, first)?;
                Ok(if e.output == "json" {
                    answer.json()
                } else {
                    answer.table()
                })
            }
            DiagnosticsCommand::ProxyMetrics(p) => {
                let pod = pod_name(&p.pod)?;
                tokio::time::timeout(args.timeout, source.proxy_metrics(&namespace, &pod))
                    .await
                    .map_err(timeout(format!(
                        "reading the proxy metrics of pod {namespace}/{pod}"
                    )))?
            }
        }
    })
}

/// A client of the cluster the flags name, with what to do when there is none.
pub(crate) async fn connect(
    cluster: &ClusterArgs,
    implicit: bool,
) -> anyhow::Result<::kube::Client> {
    match cluster.client().await {
        Ok(client) => Ok(client),
        Err(e) if implicit => Err(e.context(
            "no local mesh is running, and no cluster is configured: start the local mesh with \
             `mesh demo`, or name a cluster with --kubeconfig or --context",
        )),
        Err(e) => Err(e),
    }
}

/// Where the answers come from.
enum Source {
    Local(local::LocalMesh),
    Cluster(::kube::Client),
}

impl Source {
    fn default_namespace(&self) -> &'static str {
        match self {
            Source::Local(_) => local::DEFAULT_NAMESPACE,
            Source::Cluster(_) => crate::viz::kube::DEFAULT_NAMESPACE,
        }
    }

    /// The first message of the destination controller's watch of `authority`.
    async fn first_update(&self, authority: &str) -> anyhow::Result<Update> {
        match self {
            Source::Local(mesh) => mesh.first_update(authority).await,
            Source::Cluster(client) => cluster::first_update(client, authority).await,
        }
        .with_context(|| format!("asking the destination controller about {authority}"))
    }

    /// The raw `/metrics` of pod `namespace/pod`'s proxy.
    async fn proxy_metrics(&self, namespace: &str, pod: &str) -> anyhow::Result<String> {
        match self {
            Source::Local(mesh) => mesh.proxy_metrics(namespace, pod).await,
            Source::Cluster(client) => cluster::proxy_metrics(client, namespace, pod).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::destination::{Add, NoEndpoints, Remove};

    fn endpoint(addr: &str, pod: &str, meshed: bool) -> Endpoint {
        Endpoint {
            addr: addr.parse().unwrap(),
            weight: 10_000,
            labels: [
                ("namespace", "demo"),
                ("service", "web-svc"),
                ("pod", pod),
                ("deployment", "web"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            identity: meshed.then(|| "web.demo.serviceaccount.identity.mesh.cluster.local".into()),
            protocol_hint: meshed.then_some(ProtocolHint::H2),
        }
    }

    #[test]
    fn endpoints_are_a_table_by_address() {
        let add = Update::Add(Add {
            endpoints: vec![
                endpoint("10.244.0.7:8080", "web-3", false),
                endpoint("10.244.0.5:8080", "web-1", true),
            ],
        });
        let answer = Answer::new("web-svc.demo:80", add).unwrap();
        assert_eq!(
            answer.table(),
            "ADDRESS          WEIGHT  POD    WORKLOAD        IDENTITY                                             PROTOCOL-HINT\n\
             10.244.0.5:8080  10000   web-1  deployment/web  web.demo.serviceaccount.identity.mesh.cluster.local  h2\n\
             10.244.0.7:8080  10000   web-3  deployment/web  -                                                    -\n"
        );
    }

    #[test]
    fn a_codec_hint_names_its_codec() {
        let mut redis = endpoint("10.244.0.9:6379", "redis-0", false);
        redis.protocol_hint = Some(ProtocolHint::Codec("redis".into()));
        let answer = Answer::new(
            "redis.demo:6379",
            Update::Add(Add {
                endpoints: vec![redis],
            }),
        )
        .unwrap();
        let table = answer.table();
        assert!(
            table.lines().nth(1).unwrap().ends_with("  codec:redis"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&answer.json()).unwrap();
        assert_eq!(
            json["endpoints"][0]["protocolHint"],
            serde_json::json!({"codec": "redis"}),
            "{json}"
        );
    }

    #[test]
    fn no_endpoints_say_whether_the_name_is_known() {
        let check = |exists: bool, expected: &str| {
            let update = Update::NoEndpoints(NoEndpoints { exists });
            let text = Answer::new("web.demo:80", update).unwrap().table();
            assert!(text.contains(expected), "{text}");
        };
        check(
            true,
            "known to the destination controller, with no endpoints",
        );
        check(false, "unknown to the destination controller");
    }

    #[test]
    fn a_removal_first_is_not_an_answer() {
        let update = Update::Remove(Remove { addrs: vec![] });
        assert!(Answer::new("web.demo:80", update).is_err());
    }

    #[test]
    fn bare_names_take_the_namespace() {
        let check = |authority: &str, expected: &str| {
            assert_eq!(qualify(authority, "demo"), expected, "{authority}");
        };
        check("web-svc:80", "web-svc.demo:80");
        check("web-svc.shop:80", "web-svc.shop:80");
        check(
            "web-svc.shop.svc.cluster.local:80",
            "web-svc.shop.svc.cluster.local:80",
        );
        check("10.244.0.5:8080", "10.244.0.5:8080");
        check("[fd00::5]:8080", "[fd00::5]:8080");
        check("web-svc", "web-svc");
        check(":80", ":80");
    }

    #[test]
    fn pods_are_named_like_kubectl() {
        let check = |arg: &str, expected: Option<&str>| {
            assert_eq!(pod_name(arg).ok().as_deref(), expected, "{arg}");
        };
        check("po/web-1", Some("web-1"));
        check("pod/web-1", Some("web-1"));
        check("pods/web-1", Some("web-1"));
        check("web-1", Some("web-1"));
        check("deploy/web", None);
        check("po/", None);
        check("", None);
    }
}
