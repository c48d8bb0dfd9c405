//! The checks themselves, against the Kubernetes API.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use mesh_api::identity::ca;
use mesh_api::inject as core;
use serde_json::{json, Value};

use super::{Category, Check, Outcome, Report};
use crate::install::{certs, NAMESPACE};
use crate::kube::ClusterArgs;

/// Certificates expiring sooner than this get a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(60 * 86_400);
/// The oldest Kubernetes mesh supports (native sidecars need 1.29, or 1.28 with the
/// SidecarContainers feature gate).
pub const MIN_VERSION: (u32, u32) = (1, 28);
const COMPONENTS: [&str; 3] = ["destination", "identity", "injector"];

pub(super) fn ok(description: impl Into<String>) -> Check {
    Check {
        description: description.into(),
        result: Outcome::Success,
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

/// `kubernetes-api`: the client and the API server; the client when both pass.
async fn connect(cluster: &ClusterArgs) -> (Category, Option<(Client, String)>) {
    let mut checks = Vec::new();
    let client = match cluster.client().await {
        Ok(client) => {
            checks.push(ok("can initialize the client"));
            client
        }
        Err(e) => {
            checks.push(fail(
                "can initialize the client",
                format!("{e:#}"),
                "point KUBECONFIG, --kubeconfig or --context at your cluster",
            ));
            return (category("kubernetes-api", checks), None);
        }
    };
    match client.apiserver_version().await {
        Ok(info) => {
            checks.push(ok("can query the Kubernetes API"));
            let version = format!("{}.{}", info.major, info.minor);
            (category("kubernetes-api", checks), Some((client, version)))
        }
        Err(e) => {
            checks.push(fail(
                "can query the Kubernetes API",
                describe(&e),
                "check that the cluster is reachable (kubectl cluster-info)",
            ));
            (category("kubernetes-api", checks), None)
        }
    }
}

// === --pre ===

/// `mesh check --pre`.
pub async fn run_pre(cluster: &ClusterArgs) -> Report {
    let (api, client) = connect(cluster).await;
    let mut categories = vec![api];
    let Some((client, version)) = client else {
        return Report::new(categories);
    };
    categories.push(category(
        "kubernetes-version",
        vec![check_version(&version)],
    ));

    let mut setup = Vec::new();
    let ns: Api<Namespace> = Api::all(client.clone());
    setup.push(match ns.get_opt(NAMESPACE).await {
        Ok(None) => ok("the control plane namespace does not exist yet"),
        Ok(Some(_)) => fail(
            "the control plane namespace does not exist yet",
            format!("namespace {NAMESPACE} exists"),
            "mesh is installed already: run mesh check, or mesh uninstall | kubectl delete -f - first",
        ),
        Err(e) => fail("the control plane namespace does not exist yet", describe(&e), forbidden_hint(&e)),
    });
    setup.push(no_cluster_leftovers(&client).await);
    setup.push(
        can_create(
            &client,
            "can create the cluster-wide resources install needs",
            None,
            &[
                ("", "namespaces"),
                ("rbac.authorization.k8s.io", "clusterroles"),
                ("rbac.authorization.k8s.io", "clusterrolebindings"),
                (
                    "admissionregistration.k8s.io",
                    "mutatingwebhookconfigurations",
                ),
            ],
        )
        .await,
    );
    setup.push(
        can_create(
            &client,
            "can create the control plane's resources",
            Some(NAMESPACE),
            &[
                ("", "serviceaccounts"),
                ("", "services"),
                ("", "configmaps"),
                ("", "secrets"),
                ("apps", "deployments"),
            ],
        )
        .await,
    );
    categories.push(category("pre-kubernetes-setup", setup));
    categories.push(category(
        "pre-kubernetes-capability",
        vec![net_admin_allowed(&client).await],
    ));
    Report::new(categories)
}

fn check_version(version: &str) -> Check {
    const WHAT: &str = "the Kubernetes version is supported";
    let parse = |v: &str| -> Option<(u32, u32)> {
        let (major, minor) = v.split_once('.')?;
        let minor: String = minor.chars().take_while(char::is_ascii_digit).collect();
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    match parse(version) {
        Some(v) if v < MIN_VERSION => fail(
            WHAT,
            format!("the cluster runs {version}; mesh needs {}.{} or later", MIN_VERSION.0, MIN_VERSION.1),
            "upgrade the cluster",
        ),
        Some(v) if v < (1, 29) => warn(
            WHAT,
            format!("the cluster runs {version}: native sidecars need 1.29 (or the SidecarContainers feature gate)"),
            "without the feature gate, inject with --native-sidecar=false or annotate pods config.mesh.io/native-sidecar: disabled",
        ),
        Some(_) => ok(WHAT),
        None => warn(WHAT, format!("cannot read the version {version:?}"), "check kubectl version"),
    }
}

async fn no_cluster_leftovers(client: &Client) -> Check {
    const WHAT: &str = "no mesh webhook or cluster roles are left from another installation";
    let mut found = Vec::new();
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match hooks.get_opt("mesh-proxy-injector").await {
        Ok(Some(_)) => found.push("mutatingwebhookconfiguration/mesh-proxy-injector".to_string()),
        Ok(None) => {}
        Err(e) => return fail(WHAT, describe(&e), forbidden_hint(&e)),
    }
    let roles: Api<ClusterRole> = Api::all(client.clone());
    for c in COMPONENTS {
        match roles.get_opt(&format!("mesh-{c}")).await {
            Ok(Some(_)) => found.push(format!("clusterrole/mesh-{c}")),
            Ok(None) => {}
            Err(e) => return fail(WHAT, describe(&e), forbidden_hint(&e)),
        }
    }
    if found.is_empty() {
        ok(WHAT)
    } else {
        fail(
            WHAT,
            format!("found {}", found.join(", ")),
            "remove them: mesh uninstall | kubectl delete -f -",
        )
    }
}

async fn can_create(
    client: &Client,
    what: &str,
    namespace: Option<&str>,
    resources: &[(&str, &str)],
) -> Check {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
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

async fn net_admin_allowed(client: &Client) -> Check {
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
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&params, &pod).await {
        Ok(_) => ok(WHAT),
        Err(e) => fail(
            WHAT,
            format!("a dry-run pod in namespace default was refused: {}", describe(&e)),
            "meshed namespaces must allow NET_ADMIN and NET_RAW for mesh-init (Pod Security level privileged)",
        ),
    }
}

// === the control plane ===

/// `mesh check`.
pub async fn run_control_plane(cluster: &ClusterArgs) -> Report {
    let (api, client) = connect(cluster).await;
    let mut categories = vec![api];
    let Some((client, _)) = client else {
        return Report::new(categories);
    };
    categories.push(control_plane(&client).await);
    categories.push(identity(&client).await);
    categories.push(webhook(&client).await);
    Report::new(categories)
}

async fn control_plane(client: &Client) -> Category {
    let mut checks = Vec::new();
    let ns: Api<Namespace> = Api::all(client.clone());
    const NS_CHECK: &str = "the control plane namespace exists";
    match ns.get_opt(NAMESPACE).await {
        Ok(Some(_)) => checks.push(ok(NS_CHECK)),
        Ok(None) => {
            checks.push(fail(
                NS_CHECK,
                format!("namespace {NAMESPACE} not found"),
                "install mesh: mesh install | kubectl apply -f -",
            ));
            return category("mesh-control-plane", checks);
        }
        Err(e) => {
            checks.push(fail(NS_CHECK, describe(&e), forbidden_hint(&e)));
            return category("mesh-control-plane", checks);
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    for c in COMPONENTS {
        let name = format!("mesh-{c}");
        let what = format!("the {c} controller is ready");
        checks.push(match deployments.get_opt(&name).await {
            Ok(None) => fail(
                what,
                format!("deployments.apps \"{name}\" not found"),
                "reinstall the control plane: mesh install --ignore-cluster | kubectl apply -f -",
            ),
            Ok(Some(d)) => {
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let ready = d
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                if ready >= want && want > 0 {
                    ok(what)
                } else {
                    fail(
                        what,
                        format!("{ready} of {want} replicas of {name} are ready"),
                        format!("see why: kubectl -n {NAMESPACE} describe deployment {name}"),
                    )
                }
            }
            Err(e) => fail(what, describe(&e), forbidden_hint(&e)),
        });
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let what = "the control plane pods are running and ready";
    let selector = format!("mesh.io/control-plane-ns={NAMESPACE}");
    checks.push(
        match pods.list(&ListParams::default().labels(&selector)).await {
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
            Err(e) => fail(what, describe(&e), forbidden_hint(&e)),
        },
    );
    category("mesh-control-plane", checks)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The trust anchors from the cluster's ConfigMap.
async fn trust_anchors(client: &Client) -> Result<String, Check> {
    const WHAT: &str = "the trust anchors are valid";
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    match api.get("mesh-trust-anchors").await {
        Ok(cm) => cm
            .data
            .and_then(|d| d.get("ca-bundle.crt").cloned())
            .ok_or_else(|| {
                fail(
                    WHAT,
                    "configmap mesh-trust-anchors has no ca-bundle.crt",
                    "reinstall the control plane",
                )
            }),
        Err(e) => Err(fail(WHAT, describe(&e), forbidden_hint(&e))),
    }
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

async fn identity(client: &Client) -> Category {
    let now = SystemTime::now();
    let mut checks = Vec::new();
    let anchors = match trust_anchors(client).await {
        Ok(pem) => pem,
        Err(check) => return category("mesh-identity", vec![check]),
    };
    let (valid, expiry) = validity("trust anchor", &anchors, now);
    checks.push(valid);
    checks.extend(expiry);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    const ISSUER: &str = "the issuer certificate is signed by the trust anchors";
    match secrets.get("mesh-identity-issuer").await {
        Err(e) => checks.push(fail(ISSUER, describe(&e), forbidden_hint(&e))),
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

async fn webhook(client: &Client) -> Category {
    let now = SystemTime::now();
    let mut checks = Vec::new();
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    const CONFIGURED: &str = "the injector webhook is configured";
    let bundle = match hooks.get_opt("mesh-proxy-injector").await {
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
        Err(e) => {
            checks.push(fail(CONFIGURED, describe(&e), forbidden_hint(&e)));
            return category("mesh-webhook", checks);
        }
    };
    const MATCHES: &str = "the webhook's certificate matches its CA bundle";
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    match secrets.get("mesh-injector-tls").await {
        Err(e) => checks.push(fail(MATCHES, describe(&e), forbidden_hint(&e))),
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
    checks.push(webhook_answers(client).await);
    category("mesh-webhook", checks)
}

/// Sends a pod that asks for injection to the webhook through the API server's service proxy.
async fn webhook_answers(client: &Client) -> Check {
    const WHAT: &str = "the injector webhook answers and injects";
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
        Err(e) => return fail(WHAT, e.to_string(), "a bug in mesh check"),
    };
    let hint =
        format!("see its logs: kubectl -n {NAMESPACE} logs deploy/mesh-injector -c injector");
    let text = match client.request_text(request).await {
        Ok(text) => text,
        Err(e) => return fail(WHAT, describe(&e), hint),
    };
    let answer: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return fail(WHAT, format!("not an AdmissionReview: {e}"), hint),
    };
    let response = &answer["response"];
    if response["uid"] != uid.as_str() || response["allowed"] != true {
        return fail(WHAT, format!("unexpected answer: {response}"), hint);
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
            ok(WHAT)
        }
        _ => fail(WHAT, "it answered without adding mesh-proxy", hint),
    }
}

// === --proxy ===

/// `mesh check --proxy [-n NS]`.
pub async fn run_proxy(cluster: &ClusterArgs, namespace: Option<&str>) -> Report {
    let (api, client) = connect(cluster).await;
    let mut categories = vec![api];
    let Some((client, _)) = client else {
        return Report::new(categories);
    };
    categories.push(data_plane(&client, namespace).await);
    Report::new(categories)
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

async fn data_plane(client: &Client, namespace: Option<&str>) -> Category {
    let mut checks = Vec::new();
    if let Some(ns) = namespace {
        let api: Api<Namespace> = Api::all(client.clone());
        let what = format!("namespace {ns} exists");
        match api.get_opt(ns).await {
            Ok(Some(_)) => checks.push(ok(what)),
            Ok(None) => {
                checks.push(fail(
                    what,
                    format!("namespace {ns} not found"),
                    "check the name: kubectl get namespaces",
                ));
                return category("mesh-data-plane", checks);
            }
            Err(e) => {
                checks.push(fail(what, describe(&e), forbidden_hint(&e)));
                return category("mesh-data-plane", checks);
            }
        }
    }
    let pods: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    const FOUND: &str = "there are meshed pods";
    let meshed: Vec<Pod> = match pods.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|p| proxy_container(p).is_some())
            .collect(),
        Err(e) => {
            checks.push(fail(FOUND, describe(&e), forbidden_hint(&e)));
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
    match trust_anchors(client).await {
        Err(check) => checks.push(Check {
            description: ANCHORS.into(),
            ..check
        }),
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

    const CERT: &str = "the proxies have a valid certificate";
    let now = SystemTime::now();
    let mut bad = Vec::new();
    for pod in meshed.iter().filter(|p| proxy_ready(p)) {
        if let Err(why) = proxy_certificate(client, pod, now).await {
            bad.push(format!("{} ({why})", pod_id(pod)));
        }
    }
    checks.push(if bad.is_empty() {
        ok(CERT)
    } else {
        fail(CERT, bad.join(", "), format!("see the identity controller's logs: kubectl -n {NAMESPACE} logs deploy/mesh-identity"))
    });
    category("mesh-data-plane", checks)
}

/// Reads the proxy's `identity_cert_expiration_timestamp_seconds` through the API server's pod
/// proxy to its admin port.
async fn proxy_certificate(client: &Client, pod: &Pod, now: SystemTime) -> Result<(), String> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}:{}/proxy/metrics",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
        core::ADMIN_PORT
    );
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let metrics = client
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
