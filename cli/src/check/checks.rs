//! The checks themselves, against the Kubernetes API. Every check waits for the cluster at most
//! the run's `--check-timeout` ([`Ctx::bounded`], [`Ctx::within`]): whatever the API server
//! does (no answer, headers and then nothing, a silent connection), the check ends, and says
//! whom it waited for and what to look at.

use std::future::Future;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use mesh_api::identity::ca;
use mesh_api::inject::{self as core, SidecarMode};
use serde_json::{json, Value};

use super::{show_duration, Category, Check, Checklist, Outcome};
use crate::install::{certs, NAMESPACE};
use crate::kube::ClusterArgs;

/// Certificates expiring sooner than this get a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(60 * 86_400);
/// The oldest Kubernetes mesh supports (before 1.29, proxies are classic sidecars).
pub const MIN_VERSION: (u32, u32) = (1, 28);
const COMPONENTS: [&str; 3] = ["destination", "identity", "injector"];
/// How many proxies `mesh check --proxy` asks at once through the API server's pod proxy.
const PROXIES_AT_ONCE: usize = 16;

pub(super) fn ok(description: impl Into<String>) -> Check {
    Check {
        description: description.into(),
        result: Outcome::Success,
        detail: None,
        error: None,
        hint: None,
    }
}

pub(super) fn fail(
    description: impl Into<String>,
    error: impl Into<String>,
    hint: impl Into<String>,
) -> Check {
    Check {
        description: description.into(),
        result: Outcome::Error,
        detail: None,
        error: Some(error.into()),
        hint: Some(hint.into()),
    }
}

pub(super) fn warn(
    description: impl Into<String>,
    error: impl Into<String>,
    hint: impl Into<String>,
) -> Check {
    Check {
        result: Outcome::Warning,
        ..fail(description, error, hint)
    }
}

pub(super) fn category(name: &str, checks: Vec<Check>) -> Category {
    Category {
        name: name.into(),
        checks,
    }
}

// === bounded time ===

/// Whom a check waits for, and what to look at when it does not answer.
#[derive(Clone, Copy)]
pub(super) struct Waiting<'a> {
    /// `the API server's service proxy to mesh-injector:443`.
    pub from: &'a str,
    /// What to look at, e.g. the pods behind a Service.
    pub hint: &'a str,
}

/// The API server itself.
pub(super) const API_SERVER: Waiting = Waiting {
    from: "the API server",
    hint: "check that the API server answers: kubectl get --raw /readyz",
};

/// The failure of `description` when `timeout` went by without an answer from `waiting.from`.
pub(super) fn timed_out(
    description: impl Into<String>,
    timeout: Duration,
    waiting: Waiting<'_>,
) -> Check {
    fail(
        description,
        format!(
            "no answer within {} from {}",
            show_duration(timeout),
            waiting.from
        ),
        format!("{}; raise --check-timeout on a slow cluster", waiting.hint),
    )
}

/// `call`'s output, or the failure of `description` when it takes longer than `timeout`.
pub(super) async fn within<T>(
    timeout: Duration,
    description: &str,
    waiting: Waiting<'_>,
    call: impl Future<Output = T>,
) -> Result<T, Check> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| timed_out(description, timeout, waiting))
}

/// What the checks of a cluster share: its client, and how long each check may wait for it.
pub(super) struct Ctx {
    pub(super) client: Client,
    pub(super) timeout: Duration,
}

impl Ctx {
    /// `check`, or its failure when it takes longer than the check timeout.
    async fn bounded(
        &self,
        description: &str,
        waiting: Waiting<'_>,
        check: impl Future<Output = Check>,
    ) -> Check {
        within(self.timeout, description, waiting, check)
            .await
            .unwrap_or_else(|timed_out| timed_out)
    }

    /// An API call of the check `description`: its answer, or the check failed with the
    /// API's message or for lack of an answer.
    pub(super) async fn call<T>(
        &self,
        description: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Check> {
        within(self.timeout, description, API_SERVER, call)
            .await?
            .map_err(|e| api_failure(description, &e))
    }
}

/// The failure of `description` for the API's error `e`, with what to do about it.
pub(super) fn api_failure(description: &str, e: &kube::Error) -> Check {
    fail(description, describe(e), forbidden_hint(e))
}

/// A kube error in one line: the API's own message when there is one.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

fn forbidden_hint(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => {
            "your user lacks the permission named above; run mesh check as a cluster administrator"
                .into()
        }
        _ => "check that the cluster is reachable (kubectl cluster-info)".into(),
    }
}

fn date(t: SystemTime) -> String {
    ca::rfc3339(t)[..10].to_string()
}

/// `kubernetes-api`: the client and the API server; the client and the server's version when
/// both pass.
async fn connect(cluster: &ClusterArgs, timeout: Duration) -> (Category, Option<(Ctx, Info)>) {
    let mut checks = Vec::new();
    const CLIENT: &str = "can initialize the client";
    let credentials = Waiting {
        from: "the kubeconfig's credentials (a credential plugin?)",
        hint: "check the kubeconfig's user: kubectl config view --minify",
    };
    let client = match within(timeout, CLIENT, credentials, cluster.client()).await {
        Ok(Ok(client)) => {
            checks.push(ok(CLIENT));
            client
        }
        Ok(Err(e)) => {
            checks.push(fail(
                CLIENT,
                format!("{e:#}"),
                "point KUBECONFIG, --kubeconfig or --context at your cluster",
            ));
            return (category("kubernetes-api", checks), None);
        }
        Err(timed_out) => {
            checks.push(timed_out);
            return (category("kubernetes-api", checks), None);
        }
    };
    const QUERY: &str = "can query the Kubernetes API";
    let reachable = "check that the cluster is reachable (kubectl cluster-info)";
    let api_server = Waiting {
        hint: reachable,
        ..API_SERVER
    };
    match within(timeout, QUERY, api_server, client.apiserver_version()).await {
        Ok(Ok(info)) => {
            checks.push(ok(QUERY));
            let ctx = Ctx { client, timeout };
            (category("kubernetes-api", checks), Some((ctx, info)))
        }
        Ok(Err(e)) => {
            checks.push(fail(QUERY, describe(&e), reachable));
            (category("kubernetes-api", checks), None)
        }
        Err(timed_out) => {
            checks.push(timed_out);
            (category("kubernetes-api", checks), None)
        }
    }
}

// === --pre ===

/// `mesh check --pre`: its categories go to `list` as they are done.
pub async fn run_pre(cluster: &ClusterArgs, list: &mut Checklist<'_>) {
    let timeout = list.check_timeout;
    let Some((ctx, info)) = list.category(|| connect(cluster, timeout)).await else {
        return;
    };
    let (ctx, info) = (&ctx, &info);
    list.category(|| async move { (kubernetes_version(info), ()) })
        .await;
    list.category(|| async move { (pre_setup(ctx).await, ()) })
        .await;
    list.category(|| async move {
        let capability = vec![net_admin_allowed(ctx).await];
        (category("pre-kubernetes-capability", capability), ())
    })
    .await;
}

/// `kubernetes-version`: supported, and which sidecars proxies are on this version.
fn kubernetes_version(info: &Info) -> Category {
    let mode = SidecarMode::for_version(&info.major, &info.minor);
    category(
        "kubernetes-version",
        vec![
            check_version(info),
            ok(format!("proxies are injected as {} sidecars", mode.name()))
                .with_detail(mode.reason),
        ],
    )
}

fn check_version(info: &Info) -> Check {
    const WHAT: &str = "the Kubernetes version is supported";
    match core::parse_version(&info.major, &info.minor) {
        Some(v) if v < MIN_VERSION => fail(
            WHAT,
            format!(
                "the cluster runs {}.{}; mesh needs {}.{} or later",
                v.0, v.1, MIN_VERSION.0, MIN_VERSION.1
            ),
            "upgrade the cluster",
        ),
        Some(_) => ok(WHAT),
        None => warn(
            WHAT,
            format!(
                "cannot read the version {:?}.{:?} ({})",
                info.major, info.minor, info.git_version
            ),
            "check kubectl version",
        ),
    }
}

async fn pre_setup(ctx: &Ctx) -> Category {
    let mut setup = Vec::new();
    const ABSENT: &str = "the control plane namespace does not exist yet";
    let ns: Api<Namespace> = Api::all(ctx.client.clone());
    setup.push(match ctx.call(ABSENT, ns.get_opt(NAMESPACE)).await {
        Ok(None) => ok(ABSENT),
        Ok(Some(_)) => fail(
            ABSENT,
            format!("namespace {NAMESPACE} exists"),
            "mesh is installed already: run mesh check, or mesh uninstall | kubectl delete -f - first",
        ),
        Err(check) => check,
    });
    const LEFTOVERS: &str = "no mesh webhook or cluster roles are left from another installation";
    setup.push(
        ctx.bounded(LEFTOVERS, API_SERVER, no_cluster_leftovers(ctx, LEFTOVERS))
            .await,
    );
    let cluster_wide = "can create the cluster-wide resources install needs";
    let resources = [
        ("", "namespaces"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
        ),
    ];
    setup.push(
        ctx.bounded(
            cluster_wide,
            API_SERVER,
            can_create(ctx, cluster_wide, None, &resources),
        )
        .await,
    );
    let namespaced = "can create the control plane's resources";
    let resources = [
        ("", "serviceaccounts"),
        ("", "services"),
        ("", "configmaps"),
        ("", "secrets"),
        ("apps", "deployments"),
    ];
    setup.push(
        ctx.bounded(
            namespaced,
            API_SERVER,
            can_create(ctx, namespaced, Some(NAMESPACE), &resources),
        )
        .await,
    );
    category("pre-kubernetes-setup", setup)
}

async fn no_cluster_leftovers(ctx: &Ctx, what: &str) -> Check {
    let mut found = Vec::new();
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(ctx.client.clone());
    match hooks.get_opt("mesh-proxy-injector").await {
        Ok(Some(_)) => found.push("mutatingwebhookconfiguration/mesh-proxy-injector".to_string()),
        Ok(None) => {}
        Err(e) => return fail(what, describe(&e), forbidden_hint(&e)),
    }
    let roles: Api<ClusterRole> = Api::all(ctx.client.clone());
    for c in COMPONENTS {
        match roles.get_opt(&format!("mesh-{c}")).await {
            Ok(Some(_)) => found.push(format!("clusterrole/mesh-{c}")),
            Ok(None) => {}
            Err(e) => return fail(what, describe(&e), forbidden_hint(&e)),
        }
    }
    if found.is_empty() {
        ok(what)
    } else {
        fail(
            what,
            format!("found {}", found.join(", ")),
            "remove them: mesh uninstall | kubectl delete -f -",
        )
    }
}

async fn can_create(
    ctx: &Ctx,
    what: &str,
    namespace: Option<&str>,
    resources: &[(&str, &str)],
) -> Check {
    let api: Api<SelfSubjectAccessReview> = Api::all(ctx.client.clone());
    let mut denied = Vec::new();
    for (group, resource) in resources {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some("create".into()),
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    namespace: namespace.map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &review).await {
            Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => denied.push(if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{group}")
            }),
            Err(e) => return fail(what, describe(&e), forbidden_hint(&e)),
        }
    }
    if denied.is_empty() {
        ok(what)
    } else {
        fail(
            what,
            format!("not allowed to create {}", denied.join(", ")),
            "install needs cluster-admin rights: ask your cluster administrator",
        )
    }
}

async fn net_admin_allowed(ctx: &Ctx) -> Check {
    const WHAT: &str = "pods may add NET_ADMIN and NET_RAW (mesh-init's redirect rules)";
    let pod: Pod = match serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "mesh-check-"},
        "spec": {"containers": [{
            "name": core::INIT_CONTAINER,
            "image": "ghcr.io/mesh/proxy:check",
            "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}},
        }]},
    })) {
        Ok(pod) => pod,
        Err(e) => return fail(WHAT, e.to_string(), "a bug in mesh check"),
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), "default");
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    // The API server runs the cluster's admission webhooks on the dry-run pod too.
    let admission = Waiting {
        from: "the API server (a dry-run pod in namespace default, through the cluster's \
               admission webhooks)",
        hint: "a slow admission webhook holds pods up: kubectl get \
               mutatingwebhookconfigurations,validatingwebhookconfigurations",
    };
    let create = api.create(&params, &pod);
    match within(ctx.timeout, WHAT, admission, create).await {
        Ok(Ok(_)) => ok(WHAT),
        Ok(Err(e)) => fail(
            WHAT,
            format!("a dry-run pod in namespace default was refused: {}", describe(&e)),
            "meshed namespaces must allow NET_ADMIN and NET_RAW for mesh-init (Pod Security level privileged)",
        ),
        Err(timed_out) => timed_out,
    }
}

// === the control plane ===

/// `mesh check`: its categories go to `list` as they are done.
pub async fn run_control_plane(cluster: &ClusterArgs, list: &mut Checklist<'_>) {
    let timeout = list.check_timeout;
    let Some((ctx, info)) = list.category(|| connect(cluster, timeout)).await else {
        return;
    };
    let (ctx, info) = (&ctx, &info);
    list.category(|| async move { (control_plane(ctx, info).await, ()) })
        .await;
    list.category(|| async move { (crds(ctx).await, ()) }).await;
    list.category(|| async move { (identity(ctx).await, ()) })
        .await;
    list.category(|| async move { (webhook(ctx).await, ()) })
        .await;
    list.category(|| async move { (super::policy::policy(ctx).await, ()) })
        .await;
}

async fn control_plane(ctx: &Ctx, info: &Info) -> Category {
    let mut checks = Vec::new();
    let ns: Api<Namespace> = Api::all(ctx.client.clone());
    const NS_CHECK: &str = "the control plane namespace exists";
    match ctx.call(NS_CHECK, ns.get_opt(NAMESPACE)).await {
        Ok(Some(_)) => checks.push(ok(NS_CHECK)),
        Ok(None) => {
            checks.push(fail(
                NS_CHECK,
                format!("namespace {NAMESPACE} not found"),
                "install mesh: mesh install | kubectl apply -f -",
            ));
            return category("mesh-control-plane", checks);
        }
        Err(check) => {
            checks.push(check);
            return category("mesh-control-plane", checks);
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    for c in COMPONENTS {
        let name = format!("mesh-{c}");
        let what = format!("the {c} controller is ready");
        let deployment = match ctx.call(&what, deployments.get_opt(&name)).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                checks.push(fail(
                    what,
                    format!("deployments.apps \"{name}\" not found"),
                    "reinstall the control plane: mesh install --ignore-cluster | kubectl apply -f -",
                ));
                continue;
            }
            Err(check) => {
                checks.push(check);
                continue;
            }
        };
        let want = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let ready = deployment
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        checks.push(if ready >= want && want > 0 {
            ok(what)
        } else {
            fail(
                what,
                format!("{ready} of {want} replicas of {name} are ready"),
                format!("see why: kubectl -n {NAMESPACE} describe deployment {name}"),
            )
        });
        if c == "injector" {
            checks.push(injector_mode(&deployment, info));
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let what = "the control plane pods are running and ready";
    let selector = format!("mesh.io/control-plane-ns={NAMESPACE}");
    checks.push(
        match ctx
            .call(what, pods.list(&ListParams::default().labels(&selector)))
            .await
        {
            Ok(list) if list.items.is_empty() => fail(
                what,
                "no control plane pods",
                format!("see why: kubectl -n {NAMESPACE} get events"),
            ),
            Ok(list) => {
                let not_ready: Vec<String> = list
                    .items
                    .iter()
                    .filter(|p| !pod_ready(p))
                    .map(|p| p.metadata.name.clone().unwrap_or_default())
                    .collect();
                if not_ready.is_empty() {
                    ok(what)
                } else {
                    fail(
                        what,
                        format!("not ready: {}", not_ready.join(", ")),
                        format!(
                            "see why: kubectl -n {NAMESPACE} describe pod {}",
                            not_ready[0]
                        ),
                    )
                }
            }
            Err(check) => check,
        },
    );
    category("mesh-control-plane", checks)
}

/// `mesh-crds`: the CustomResourceDefinitions `mesh install --crds` prints are in the cluster,
/// established, and serve the version the mesh reads (a Gateway API older than v1.0 has no
/// HTTPRoute v1, a GRPCRoute v1 came with v1.1).
async fn crds(ctx: &Ctx) -> Category {
    const WHAT: &str = "the CRDs the mesh reads are installed";
    const HINT: &str = "install them: mesh install --crds | kubectl apply -f -";
    let wanted = match crate::install::crds() {
        Ok(wanted) => wanted,
        Err(e) => return category("mesh-crds", vec![fail(WHAT, format!("{e:#}"), "a bug")]),
    };
    let api: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let mut problems = Vec::new();
    for want in &wanted {
        let name = want["metadata"]["name"].as_str().unwrap_or_default();
        let version = want["spec"]["versions"][0]["name"]
            .as_str()
            .unwrap_or_default();
        match ctx.call(WHAT, api.get_opt(name)).await {
            Ok(Some(crd)) => problems.extend(crd_problem(&crd, name, version)),
            Ok(None) => problems.push(format!("{name} is not installed")),
            Err(check) => return category("mesh-crds", vec![check]),
        }
    }
    let check = if problems.is_empty() {
        ok(WHAT)
    } else {
        fail(WHAT, problems.join("; "), HINT)
    };
    category("mesh-crds", vec![check])
}

/// Why the installed CRD `name` does not do: not established, or not serving `version`.
fn crd_problem(crd: &CustomResourceDefinition, name: &str, version: &str) -> Option<String> {
    let established = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    if !established {
        return Some(format!("{name} is not established yet"));
    }
    if !crd
        .spec
        .versions
        .iter()
        .any(|v| v.name == version && v.served)
    {
        let served: Vec<&str> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.as_str())
            .collect();
        return Some(format!(
            "{name} serves {}, not {version}",
            served.join(", ")
        ));
    }
    None
}

/// The value of the `--native-sidecar` flag of the injector Deployment's containers, as
/// written (`auto`, `true`, `True`, `false`…; a flag without a value is `true`).
pub(super) fn native_sidecar_flag(deployment: &Deployment) -> Option<String> {
    const FLAG: &str = "--native-sidecar";
    let spec = deployment.spec.as_ref()?.template.spec.as_ref()?;
    spec.containers.iter().find_map(|c| {
        let words: Vec<&str> = c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .map(|w| w.trim())
            .collect();
        words.iter().enumerate().find_map(|(i, word)| {
            if let Some(value) = word.strip_prefix(FLAG).and_then(|v| v.strip_prefix('=')) {
                return Some(value.trim_matches(|c| c == '"' || c == '\'').to_string());
            }
            (*word == FLAG).then(|| match words.get(i + 1) {
                Some(next) if !next.starts_with('-') => next.to_string(),
                _ => "true".to_string(),
            })
        })
    })
}

/// Which sidecars the installed injector makes, and why: its `--native-sidecar` (`auto`: by
/// the cluster's version, as `mesh install` does).
pub(super) fn injector_mode(deployment: &Deployment, info: &Info) -> Check {
    let cluster = SidecarMode::for_version(&info.major, &info.minor);
    let injected = |native: bool| {
        format!(
            "proxies are injected as {} sidecars",
            if native { "native" } else { "classic" }
        )
    };
    const UNKNOWN: &str = "the injector's sidecar mode is set";
    let reinstall = "reinstall the control plane: mesh install | kubectl apply -f -";
    let Some(flag) = native_sidecar_flag(deployment) else {
        return warn(
            UNKNOWN,
            "the mesh-injector Deployment has no --native-sidecar flag: the mode is its image's default",
            reinstall,
        );
    };
    match flag.to_ascii_lowercase().as_str() {
        "auto" => ok(injected(cluster.native)).with_detail(format!(
            "the injector decides by the cluster's version (--native-sidecar={flag}): {}",
            cluster.reason
        )),
        "true" | "1" | "yes" | "on" if !cluster.native => warn(
            injected(true),
            format!(
                "the injector runs with --native-sidecar={flag}, but {}",
                cluster.reason
            ),
            "meshed pods start only if the API server's SidecarContainers feature gate is on; \
             otherwise reinstall with classic sidecars: \
             mesh install --set proxy.nativeSidecar=false | kubectl apply -f -",
        ),
        "true" | "1" | "yes" | "on" => ok(injected(true)).with_detail(format!(
            "the injector runs with --native-sidecar={flag} ({})",
            cluster.reason
        )),
        "false" | "0" | "no" | "off" => ok(injected(false)).with_detail(format!(
            "the injector runs with --native-sidecar={flag} ({})",
            cluster.reason
        )),
        _ => warn(
            UNKNOWN,
            format!(
                "the mesh-injector Deployment has --native-sidecar={flag}, not auto, true or false"
            ),
            reinstall,
        ),
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The trust anchors from the cluster's ConfigMap; `description` is the check that fails
/// without them.
async fn trust_anchors(ctx: &Ctx, description: &str) -> Result<String, Check> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let cm = ctx.call(description, api.get("mesh-trust-anchors")).await?;
    cm.data
        .and_then(|d| d.get("ca-bundle.crt").cloned())
        .ok_or_else(|| {
            fail(
                description,
                "configmap mesh-trust-anchors has no ca-bundle.crt",
                "reinstall the control plane",
            )
        })
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// A validity check and an expiry check of one or more certificates.
fn validity(what: &str, pem: &str, now: SystemTime) -> (Check, Option<Check>) {
    let valid = format!("the {what} is valid");
    let certs = match ca::certs_from_pem(pem, what) {
        Ok(certs) => certs,
        Err(e) => {
            return (
                fail(valid, e.to_string(), "replace it with a PEM certificate"),
                None,
            )
        }
    };
    let mut soonest = None::<SystemTime>;
    for der in &certs {
        let info = match ca::cert_info(der) {
            Ok(info) => info,
            Err(e) => return (fail(valid, e.to_string(), "replace it"), None),
        };
        if info.not_before > now || info.not_after <= now {
            return (
                fail(
                    valid,
                    format!(
                        "valid from {} to {} only",
                        ca::rfc3339(info.not_before),
                        ca::rfc3339(info.not_after)
                    ),
                    "rotate it: see mesh install --identity-* flags",
                ),
                None,
            );
        }
        soonest = Some(soonest.map_or(info.not_after, |s| s.min(info.not_after)));
    }
    let expiry = format!("the {what} is not expiring within 60 days");
    let soonest = soonest.expect("certs_from_pem returns at least one");
    let left = soonest.duration_since(now).unwrap_or_default();
    let expiry = if left < EXPIRY_WARNING {
        warn(
            expiry,
            format!(
                "it expires on {} (in {} days)",
                date(soonest),
                left.as_secs() / 86_400
            ),
            "rotate it before then",
        )
    } else {
        ok(expiry)
    };
    (ok(valid), Some(expiry))
}

async fn identity(ctx: &Ctx) -> Category {
    let now = SystemTime::now();
    let mut checks = Vec::new();
    let anchors = match trust_anchors(ctx, "the trust anchors are valid").await {
        Ok(pem) => pem,
        Err(check) => return category("mesh-identity", vec![check]),
    };
    let (valid, expiry) = validity("trust anchor", &anchors, now);
    checks.push(valid);
    checks.extend(expiry);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    const ISSUER: &str = "the issuer certificate is signed by the trust anchors";
    match ctx.call(ISSUER, secrets.get("mesh-identity-issuer")).await {
        Err(check) => checks.push(check),
        Ok(secret) => match (
            secret_text(&secret, "tls.crt"),
            secret_text(&secret, "tls.key"),
        ) {
            (Some(cert_pem), Some(key_pem)) => {
                let (valid, expiry) = validity("issuer certificate", &cert_pem, now);
                checks.push(valid);
                checks.extend(expiry);
                let trust_domain = ca::certs_from_pem(&cert_pem, "issuer")
                    .ok()
                    .and_then(|c| ca::cert_info(&c[0]).ok())
                    .and_then(|i| i.common_name)
                    .and_then(|cn| cn.strip_prefix("identity.mesh.").map(str::to_string))
                    .unwrap_or_else(|| "cluster.local".into());
                let issuer = ca::CertAndKey { cert_pem, key_pem };
                checks.push(
                    match certs::check_issuer(&anchors, &issuer, &trust_domain, now) {
                        Ok(()) => ok(ISSUER),
                        Err(e) => fail(
                            ISSUER,
                            format!("{e:#}"),
                            "install an issuer signed by one of the trust anchors",
                        ),
                    },
                );
            }
            _ => checks.push(fail(
                ISSUER,
                "secret mesh-identity-issuer lacks tls.crt or tls.key",
                "reinstall the control plane",
            )),
        },
    }
    category("mesh-identity", checks)
}

async fn webhook(ctx: &Ctx) -> Category {
    let now = SystemTime::now();
    let mut checks = Vec::new();
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(ctx.client.clone());
    const CONFIGURED: &str = "the injector webhook is configured";
    let bundle = match ctx
        .call(CONFIGURED, hooks.get_opt("mesh-proxy-injector"))
        .await
    {
        Ok(Some(config)) => {
            let hook = config.webhooks.unwrap_or_default().into_iter().next();
            match hook {
                Some(hook) => {
                    checks.push(if hook.failure_policy.as_deref() == Some("Fail") {
                        warn(CONFIGURED, "failurePolicy is Fail: pods cannot be created while the injector is down", "set failurePolicy: Ignore")
                    } else {
                        ok(CONFIGURED)
                    });
                    hook.client_config
                        .ca_bundle
                        .and_then(|b| String::from_utf8(b.0).ok())
                        .unwrap_or_default()
                }
                None => {
                    checks.push(fail(
                        CONFIGURED,
                        "mesh-proxy-injector has no webhooks",
                        "reinstall the control plane",
                    ));
                    return category("mesh-webhook", checks);
                }
            }
        }
        Ok(None) => {
            checks.push(fail(
                CONFIGURED,
                "mutatingwebhookconfiguration mesh-proxy-injector not found",
                "reinstall the control plane: mesh install --ignore-cluster | kubectl apply -f -",
            ));
            return category("mesh-webhook", checks);
        }
        Err(check) => {
            checks.push(check);
            return category("mesh-webhook", checks);
        }
    };
    const MATCHES: &str = "the webhook's certificate matches its CA bundle";
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    match ctx.call(MATCHES, secrets.get("mesh-injector-tls")).await {
        Err(check) => checks.push(check),
        Ok(secret) => match secret_text(&secret, "tls.crt") {
            None => checks.push(fail(
                MATCHES,
                "secret mesh-injector-tls has no tls.crt",
                "reinstall the control plane",
            )),
            Some(cert) => {
                let name = certs::webhook_names(NAMESPACE, "cluster.local").remove(0);
                checks.push(match certs::check_webhook(&bundle, &cert, &name, now) {
                    Ok(()) => ok(MATCHES),
                    Err(e) => fail(
                        MATCHES,
                        format!("{e:#}"),
                        "reinstall the webhook's certificate and caBundle together",
                    ),
                });
                if let (_, Some(expiry)) = validity("webhook certificate", &cert, now) {
                    checks.push(expiry);
                }
            }
        },
    }
    const ANSWERS: &str = "the injector webhook answers and injects";
    let pods = format!(
        "check the injector's pods: kubectl -n {NAMESPACE} get pods \
         -l mesh.io/control-plane-component=injector"
    );
    let injector = Waiting {
        from: "the API server's service proxy to mesh-injector:443",
        hint: &pods,
    };
    checks.push(
        ctx.bounded(ANSWERS, injector, webhook_answers(ctx, ANSWERS))
            .await,
    );
    category("mesh-webhook", checks)
}

/// Sends a pod that asks for injection to the webhook through the API server's service proxy.
async fn webhook_answers(ctx: &Ctx, what: &str) -> Check {
    let uid = format!(
        "mesh-check-{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "mesh-check"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "mesh-check", "namespace": "default",
                    "annotations": {core::INJECT_ANNOTATION: "enabled"}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
            },
            "dryRun": true,
        },
    });
    let path =
        format!("/api/v1/namespaces/{NAMESPACE}/services/https:mesh-injector:443/proxy/inject");
    let request = match http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(review.to_string().into_bytes())
    {
        Ok(r) => r,
        Err(e) => return fail(what, e.to_string(), "a bug in mesh check"),
    };
    let hint =
        format!("see its logs: kubectl -n {NAMESPACE} logs deploy/mesh-injector -c injector");
    let text = match ctx.client.request_text(request).await {
        Ok(text) => text,
        Err(e) => return fail(what, describe(&e), hint),
    };
    let answer: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return fail(what, format!("not an AdmissionReview: {e}"), hint),
    };
    let response = &answer["response"];
    if response["uid"] != uid.as_str() || response["allowed"] != true {
        return fail(what, format!("unexpected answer: {response}"), hint);
    }
    use base64::Engine as _;
    let patch = response["patch"]
        .as_str()
        .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
        .and_then(|p| serde_json::from_slice::<Value>(&p).ok());
    match patch {
        Some(Value::Array(ops))
            if ops
                .iter()
                .any(|op| op.to_string().contains(core::PROXY_CONTAINER)) =>
        {
            ok(what)
        }
        _ => fail(what, "it answered without adding mesh-proxy", hint),
    }
}

// === --proxy ===

/// `mesh check --proxy [-n NS]`: its categories go to `list` as they are done. With a
/// namespace, every list is of that namespace only (a user allowed one namespace can run it).
pub async fn run_proxy(cluster: &ClusterArgs, namespace: Option<&str>, list: &mut Checklist<'_>) {
    let timeout = list.check_timeout;
    let Some((ctx, _)) = list.category(|| connect(cluster, timeout)).await else {
        return;
    };
    let ctx = &ctx;
    list.category(|| async move { (data_plane(ctx, namespace).await, ()) })
        .await;
}

fn proxy_container(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == core::PROXY_CONTAINER)
}

fn proxy_ready(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .any(|s| s.name == core::PROXY_CONTAINER && s.ready)
}

fn pod_id(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

async fn data_plane(ctx: &Ctx, namespace: Option<&str>) -> Category {
    let mut checks = Vec::new();
    if let Some(ns) = namespace {
        let api: Api<Namespace> = Api::all(ctx.client.clone());
        let what = format!("namespace {ns} exists");
        match ctx.call(&what, api.get_opt(ns)).await {
            Ok(Some(_)) => checks.push(ok(what)),
            Ok(None) => {
                checks.push(fail(
                    what,
                    format!("namespace {ns} not found"),
                    "check the name: kubectl get namespaces",
                ));
                return category("mesh-data-plane", checks);
            }
            Err(check) => {
                checks.push(check);
                return category("mesh-data-plane", checks);
            }
        }
    }
    let pods: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    const FOUND: &str = "there are meshed pods";
    let meshed: Vec<Pod> = match ctx.call(FOUND, pods.list(&ListParams::default())).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|p| proxy_container(p).is_some())
            .collect(),
        Err(check) => {
            checks.push(check);
            return category("mesh-data-plane", checks);
        }
    };
    if meshed.is_empty() {
        checks.push(fail(
            FOUND,
            "no pod has a mesh-proxy container",
            "mesh a workload: kubectl get deploy NAME -o yaml | mesh inject - | kubectl apply -f -",
        ));
        return category("mesh-data-plane", checks);
    }
    checks.push(ok(FOUND));

    let not_ready: Vec<String> = meshed
        .iter()
        .filter(|p| !proxy_ready(p))
        .map(pod_id)
        .collect();
    checks.push(if not_ready.is_empty() {
        ok("the proxies are ready")
    } else {
        fail(
            "the proxies are ready",
            format!("not ready: {}", not_ready.join(", ")),
            "see why: kubectl -n NAMESPACE logs POD -c mesh-proxy",
        )
    });

    let version = crate::install::version();
    let other: Vec<String> = meshed
        .iter()
        .filter_map(|p| {
            let v = p
                .metadata
                .annotations
                .as_ref()?
                .get(core::PROXY_VERSION_ANNOTATION);
            (v.map(String::as_str) != Some(version.as_str())).then(|| {
                format!(
                    "{} ({})",
                    pod_id(p),
                    v.map(String::as_str).unwrap_or("unknown")
                )
            })
        })
        .collect();
    let what = format!("the proxies run this CLI's version ({version})");
    checks.push(if other.is_empty() {
        ok(what)
    } else {
        warn(
            what,
            format!("other versions: {}", other.join(", ")),
            "restart them to pick up the installed proxy: kubectl rollout restart",
        )
    });

    const ANCHORS: &str = "the proxies trust the current trust anchors";
    match trust_anchors(ctx, ANCHORS).await {
        Err(check) => checks.push(check),
        Ok(anchors) => {
            let stale: Vec<String> = meshed
                .iter()
                .filter(|p| {
                    let env = proxy_container(p).and_then(|c| c.env.as_ref());
                    let value = env
                        .and_then(|e| e.iter().find(|v| v.name == "MESH_PROXY_TRUST_ANCHORS"))
                        .and_then(|v| v.value.as_deref());
                    value.map(str::trim) != Some(anchors.trim())
                })
                .map(pod_id)
                .collect();
            checks.push(if stale.is_empty() {
                ok(ANCHORS)
            } else {
                fail(
                    ANCHORS,
                    format!("other trust anchors: {}", stale.join(", ")),
                    "restart them to pick up the current anchors: kubectl rollout restart",
                )
            });
        }
    }
    checks.push(certificates(ctx, &meshed).await);
    category("mesh-data-plane", checks)
}

/// Each ready proxy's certificate, read through the API server's pod proxy, a few proxies at
/// once; the whole check waits at most the check timeout, and names the proxies that did not
/// answer in time.
async fn certificates(ctx: &Ctx, meshed: &[Pod]) -> Check {
    const CERT: &str = "the proxies have a valid certificate";
    let now = SystemTime::now();
    let deadline = tokio::time::Instant::now() + ctx.timeout;
    let answers: Vec<(String, Option<Result<(), String>>)> =
        futures_util::stream::iter(meshed.iter().filter(|p| proxy_ready(p)))
            .map(|pod| async move {
                let answer = tokio::time::timeout_at(deadline, proxy_certificate(ctx, pod, now));
                (pod_id(pod), answer.await.ok())
            })
            .buffered(PROXIES_AT_ONCE)
            .collect()
            .await;
    let mut bad = Vec::new();
    let mut silent = Vec::new();
    for (pod, answer) in answers {
        match answer {
            Some(Ok(())) => {}
            Some(Err(why)) => bad.push(format!("{pod} ({why})")),
            None => {
                bad.push(format!(
                    "{pod} (no answer within {} from the API server's pod proxy to {pod}:{})",
                    show_duration(ctx.timeout),
                    mesh_api::defaults::ADMIN_PORT
                ));
                silent.push(pod);
            }
        }
    }
    if bad.is_empty() {
        return ok(CERT);
    }
    let hint = match silent.first().and_then(|p| p.split_once('/')) {
        Some((ns, name)) => format!(
            "see the proxy's logs: kubectl -n {ns} logs {name} -c {}; raise --check-timeout on a \
             slow cluster",
            core::PROXY_CONTAINER
        ),
        None => format!(
            "see the identity controller's logs: kubectl -n {NAMESPACE} logs deploy/mesh-identity"
        ),
    };
    fail(CERT, bad.join(", "), hint)
}

/// Reads the proxy's `identity_cert_expiration_timestamp_seconds` through the API server's pod
/// proxy to its admin port.
async fn proxy_certificate(ctx: &Ctx, pod: &Pod, now: SystemTime) -> Result<(), String> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}:{}/proxy/metrics",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
        mesh_api::defaults::ADMIN_PORT
    );
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let metrics = ctx
        .client
        .request_text(request)
        .await
        .map_err(|e| describe(&e))?;
    let expiry = metrics
        .lines()
        .find_map(|l| l.strip_prefix("identity_cert_expiration_timestamp_seconds "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or("no certificate: identity_cert_expiration_timestamp_seconds is missing")?;
    let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(expiry.max(0.0));
    if expiry <= now {
        return Err(format!(
            "its certificate expired at {}",
            ca::rfc3339(expiry)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injector(args: &[&str]) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "mesh-injector", "namespace": "mesh"},
            "spec": {
                "selector": {},
                "template": {"spec": {"containers": [
                    {"name": "injector", "image": "ghcr.io/mesh/controller", "args": args},
                ]}},
            },
        }))
        .unwrap()
    }

    fn version(minor: &str) -> Info {
        Info {
            major: "1".into(),
            minor: minor.into(),
            git_version: format!("v1.{minor}.0"),
            ..Default::default()
        }
    }

    #[test]
    fn the_injectors_flag_is_read_however_it_is_written() {
        let check = |args: &[&str], expected: Option<&str>| {
            let flag = native_sidecar_flag(&injector(args));
            assert_eq!(flag.as_deref(), expected, "{args:?}");
        };
        check(&["injector", "--native-sidecar=auto"], Some("auto"));
        check(&["injector", "--native-sidecar=True"], Some("True"));
        check(&["injector", "--native-sidecar", "false"], Some("false"));
        check(
            &["injector", "--native-sidecar", "--log-level=info"],
            Some("true"),
        );
        check(&["injector", "--native-sidecar=\"false\""], Some("false"));
        check(&["injector", "--native-sidecars=true"], None);
        check(&["injector"], None);
    }

    #[test]
    fn the_injectors_mode_follows_its_flag_and_the_clusters_version() {
        let check = |flag: &str, minor: &str, result: Outcome, line: &str, why: &str| {
            let c = injector_mode(&injector(&[flag]), &version(minor));
            assert_eq!(
                (c.result, c.description.as_str()),
                (result, line),
                "{flag} {minor}"
            );
            let text = [c.detail, c.error]
                .into_iter()
                .flatten()
                .collect::<String>();
            assert!(text.contains(why), "{flag} {minor}: {text}");
        };
        let classic = "proxies are injected as classic sidecars";
        let native = "proxies are injected as native sidecars";
        use Outcome::*;
        check(
            "--native-sidecar=auto",
            "28",
            Success,
            classic,
            "runs 1.28, without",
        );
        check(
            "--native-sidecar=auto",
            "30",
            Success,
            native,
            "runs 1.30, with native",
        );
        check(
            "--native-sidecar=True",
            "28",
            Warning,
            native,
            "=True, but the cluster runs 1.28",
        );
        check("--native-sidecar=true", "29", Success, native, "1.29");
        check("--native-sidecar=false", "30", Success, classic, "=false");
        check(
            "--native-sidecar=maybe",
            "30",
            Warning,
            "the injector's sidecar mode is set",
            "maybe",
        );
        check(
            "--log-level=info",
            "30",
            Warning,
            "the injector's sidecar mode is set",
            "no --native-sidecar",
        );
    }

    #[test]
    fn the_version_check_passes_from_1_28_and_says_which_sidecars() {
        let category = kubernetes_version(&version("28"));
        let lines: Vec<(Outcome, &str, Option<&str>)> = category
            .checks
            .iter()
            .map(|c| (c.result, c.description.as_str(), c.detail.as_deref()))
            .collect();
        assert_eq!(
            lines,
            [
                (Outcome::Success, "the Kubernetes version is supported", None),
                (
                    Outcome::Success,
                    "proxies are injected as classic sidecars",
                    Some("the cluster runs 1.28, without native sidecars by default (1.29 and later)")
                ),
            ]
        );
        assert_eq!(check_version(&version("27")).result, Outcome::Error);
        assert_eq!(check_version(&version("33+")).result, Outcome::Success);
        assert_eq!(check_version(&version("x")).result, Outcome::Warning);
    }
}
