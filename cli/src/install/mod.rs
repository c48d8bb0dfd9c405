//! `mesh install` and `mesh uninstall`: the CRDs of `manifests/crds/` and the control plane
//! rendered from the templates in `manifests/control-plane/` (both embedded at build time) with
//! minijinja.

pub mod certs;

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use mesh_api::inbound::DefaultPolicy;
use mesh_api::inject::{self, ProxyConfig, SidecarMode};
use serde_json::{json, Value};

use crate::manifest;
use certs::{CertFiles, Certs};

/// The control plane's namespace: fixed, because the identity controller's certificate names
/// it (`mesh-identity.mesh.serviceaccount.identity.mesh.<td>`).
pub const NAMESPACE: &str = mesh_api::identity::CONTROL_PLANE_NAMESPACE;

/// The templates, in the order their objects are applied.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "namespace.yaml",
        include_str!("../../../manifests/control-plane/namespace.yaml"),
    ),
    (
        "rbac.yaml",
        include_str!("../../../manifests/control-plane/rbac.yaml"),
    ),
    (
        "config.yaml",
        include_str!("../../../manifests/control-plane/config.yaml"),
    ),
    (
        "identity.yaml",
        include_str!("../../../manifests/control-plane/identity.yaml"),
    ),
    (
        "destination.yaml",
        include_str!("../../../manifests/control-plane/destination.yaml"),
    ),
    (
        "injector.yaml",
        include_str!("../../../manifests/control-plane/injector.yaml"),
    ),
];

/// The CustomResourceDefinitions the mesh reads, applied before the control plane: Gateway API's
/// HTTPRoute and GRPCRoute (v1, standard channel), the mesh's own HTTPFault and MetaRoute, and
/// the inbound policy resources of `policy.mesh.io` (Linkerd's model: Server,
/// AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication, HTTPLocalRateLimitPolicy).
/// Plain YAML, not templates.
const CRDS: &[(&str, &str)] = &[
    (
        "httproutes.yaml",
        include_str!("../../../manifests/crds/httproutes.yaml"),
    ),
    (
        "grpcroutes.yaml",
        include_str!("../../../manifests/crds/grpcroutes.yaml"),
    ),
    (
        "httpfaults.yaml",
        include_str!("../../../manifests/crds/httpfaults.yaml"),
    ),
    (
        "servers.yaml",
        include_str!("../../../manifests/crds/servers.yaml"),
    ),
    (
        "authorizationpolicies.yaml",
        include_str!("../../../manifests/crds/authorizationpolicies.yaml"),
    ),
    (
        "meshtlsauthentications.yaml",
        include_str!("../../../manifests/crds/meshtlsauthentications.yaml"),
    ),
    (
        "networkauthentications.yaml",
        include_str!("../../../manifests/crds/networkauthentications.yaml"),
    ),
    (
        "httplocalratelimitpolicies.yaml",
        include_str!("../../../manifests/crds/httplocalratelimitpolicies.yaml"),
    ),
    (
        "metaroutes.yaml",
        include_str!("../../../manifests/crds/metaroutes.yaml"),
    ),
];

/// The defaults `--set` overrides.
const VALUES: &str = include_str!("../../../manifests/control-plane/values.yaml");

/// The version of this CLI, which is also the default image tag.
pub fn version() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// `mesh install`'s flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct InstallArgs {
    /// Prints only the CustomResourceDefinitions the mesh reads (HTTPRoute, GRPCRoute,
    /// HTTPFault, the inbound policy's Server, AuthorizationPolicy, MeshTLSAuthentication,
    /// NetworkAuthentication and HTTPLocalRateLimitPolicy, and MetaRoute), without contacting
    /// a cluster: `mesh install --crds | kubectl apply -f -`.
    #[arg(long, conflicts_with_all = ["ha", "proxy_image", "controller_image", "image_tag", "set"])]
    pub crds: bool,
    /// Renders for high availability: 3 replicas of each controller spread over nodes, and
    /// disruption budgets.
    #[arg(long)]
    pub ha: bool,
    /// The proxy image, without its tag.
    #[arg(long, value_name = "IMAGE")]
    pub proxy_image: Option<String>,
    /// The controller image, without its tag.
    #[arg(long, value_name = "IMAGE")]
    pub controller_image: Option<String>,
    /// The tag of both images; by default this CLI's version.
    #[arg(long, value_name = "TAG")]
    pub image_tag: Option<String>,
    /// Overrides a value of manifests/control-plane/values.yaml, e.g. `controller.logLevel=debug`;
    /// may be repeated.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Renders without contacting a cluster (by default install refuses to render over an
    /// existing installation).
    #[arg(long)]
    pub ignore_cluster: bool,
    #[command(flatten)]
    pub certs: CertFiles,
}

/// The values the templates see: the defaults with the flags and `--set` applied.
pub fn values(args: &InstallArgs) -> anyhow::Result<Value> {
    let mut overrides: Vec<(String, String)> = Vec::new();
    if args.ha {
        overrides.push(("ha".into(), "true".into()));
        overrides.push(("controller.replicas".into(), "3".into()));
    }
    for (key, flag) in [
        ("proxy.image", &args.proxy_image),
        ("controller.image", &args.controller_image),
        ("imageTag", &args.image_tag),
    ] {
        if let Some(v) = flag {
            overrides.push((key.into(), v.clone()));
        }
    }
    let mut values =
        manifest::template_values(VALUES, "control-plane", overrides, &args.set, &version())?;
    validate(&values)?;
    // Written the way the proxy reads it (checked by `validate`).
    let networks = values["proxy"]["clusterNetworks"]
        .as_str()
        .unwrap_or_default();
    if let Ok(networks) = inject::cluster_networks(networks) {
        values["proxy"]["clusterNetworks"] = Value::String(networks);
    }
    Ok(values)
}

/// Refuses values that would not make valid YAML or a working install.
fn validate(values: &Value) -> anyhow::Result<()> {
    use manifest::{check_word, dns_char, filter_char, image_char};
    check_word(values, "trustDomain", dns_char)?;
    check_word(values, "clusterDomain", dns_char)?;
    check_word(values, "proxy.image", image_char)?;
    check_word(values, "controller.image", image_char)?;
    check_word(values, "imageTag", image_char)?;
    check_word(values, "proxy.logLevel", filter_char)?;
    check_word(values, "controller.logLevel", filter_char)?;
    check_word(values, "controller.cpuRequest", image_char)?;
    check_word(values, "controller.memoryRequest", image_char)?;
    check_word(values, "controller.memoryLimit", image_char)?;
    let native = values["proxy"]["nativeSidecar"]
        .as_str()
        .unwrap_or_default();
    if !["auto", "true", "false"].contains(&native) {
        bail!("proxy.nativeSidecar: {native:?} is not auto, true or false");
    }
    let policy = values["proxy"]["defaultInboundPolicy"]
        .as_str()
        .unwrap_or_default();
    if let Err(e) = policy.parse::<DefaultPolicy>() {
        bail!("proxy.defaultInboundPolicy: {e}");
    }
    let networks = values["proxy"]["clusterNetworks"]
        .as_str()
        .unwrap_or_default();
    if let Err(e) = inject::cluster_networks(networks) {
        bail!("proxy.clusterNetworks: {e}");
    }
    manifest::check_pull_policy(values)?;
    if values["webhook"]["timeoutSeconds"]
        .as_u64()
        .is_none_or(|t| !(1..=30).contains(&t))
    {
        bail!("webhook.timeoutSeconds: the API server allows 1 to 30");
    }
    Ok(())
}

/// The sidecar mode `proxy.nativeSidecar` asks for: `Some` for `true` or `false`, `None` for `auto`.
pub fn asked_sidecar_mode(values: &Value) -> Option<bool> {
    match values["proxy"]["nativeSidecar"].as_str() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    }
}

/// The proxy configuration the values describe (the injector gets the same through its flags),
/// for the control plane's own pods, which run in `mode`.
pub fn proxy_config(values: &Value, trust_anchors_pem: &str, mode: &SidecarMode) -> ProxyConfig {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    ProxyConfig {
        proxy_image: s(&values["proxy"]["image"]),
        version: s(&values["imageTag"]),
        image_pull_policy: s(&values["imagePullPolicy"]),
        control_plane_namespace: NAMESPACE.into(),
        trust_domain: s(&values["trustDomain"]),
        cluster_domain: s(&values["clusterDomain"]),
        trust_anchors_pem: trust_anchors_pem.into(),
        native_sidecar: mode.native,
        log_level: s(&values["proxy"]["logLevel"]),
        // `validate` checked both.
        default_inbound_policy: values["proxy"]["defaultInboundPolicy"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .unwrap_or_default(),
        cluster_networks: s(&values["proxy"]["clusterNetworks"]),
    }
}

/// Renders the control plane's objects, its own proxies in sidecar `mode`.
pub fn render(values: &Value, certs: &Certs, mode: &SidecarMode) -> anyhow::Result<Vec<Value>> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut env = manifest::template_env();
    let ns = NAMESPACE.to_string();
    let labels_ns = ns.clone();
    env.add_function(
        "labels",
        move |component: Option<String>, extra: Option<minijinja::Value>| {
            let mut labels = BTreeMap::from([
                ("app.kubernetes.io/part-of".to_string(), "mesh".to_string()),
                ("mesh.io/control-plane-ns".to_string(), labels_ns.clone()),
            ]);
            if let Some(c) = component {
                labels.insert("mesh.io/control-plane-component".into(), c);
            }
            if let Some(extra) = extra {
                for key in extra.try_iter()? {
                    let value = extra.get_item(&key)?;
                    labels.insert(key.to_string(), value.to_string());
                }
            }
            Ok::<_, minijinja::Error>(json!(labels).to_string())
        },
    );
    env.add_function("pod_security_context", || {
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}).to_string()
    });
    env.add_function("container_security_context", || {
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 2103,
            "runAsGroup": 2103,
        })
        .to_string()
    });
    let controller = values["controller"].clone();
    env.add_function("controller_resources", move || {
        json!({
            "requests": {"cpu": controller["cpuRequest"], "memory": controller["memoryRequest"]},
            "limits": {"memory": controller["memoryLimit"]},
        })
        .to_string()
    });
    env.add_function("anti_affinity", |component: String| {
        let selector = json!({"matchLabels": {"mesh.io/control-plane-component": component}});
        json!({"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": selector, "topologyKey": "kubernetes.io/hostname"},
            ],
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm":
                    {"labelSelector": selector, "topologyKey": "topology.kubernetes.io/zone"}},
            ],
        }})
        .to_string()
    });
    let image_tag = values["imageTag"].as_str().unwrap_or_default().to_string();
    let controller_image = format!(
        "{}:{image_tag}",
        values["controller"]["image"].as_str().unwrap_or_default()
    );
    let context = minijinja::context! {
        namespace => ns,
        values => minijinja::Value::from_serialize(values),
        image_tag => image_tag,
        controller_image => controller_image,
        trust_anchors_pem => json!(certs.trust_anchors_pem).to_string(),
        issuer_cert_b64 => b64(&certs.issuer.cert_pem),
        issuer_key_b64 => b64(&certs.issuer.key_pem),
        webhook_cert_b64 => b64(&certs.webhook.cert_pem),
        webhook_key_b64 => b64(&certs.webhook.key_pem),
        webhook_ca_b64 => b64(&certs.webhook_ca_pem),
    };
    let proxy = proxy_config(values, &certs.trust_anchors_pem, mode);
    manifest::render_templates(&env, &context, "control-plane", TEMPLATES, |doc| {
        mesh_control_plane_pod(doc, &proxy)
            .with_context(|| format!("meshing {}", manifest::describe(doc)))
    })
}

/// The CRDs, each checked against the CustomResourceDefinition type like every object
/// `mesh install` prints.
pub fn crds() -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for (name, text) in CRDS {
        let (_, docs) = manifest::parse(text, name)
            .with_context(|| format!("manifests/crds/{name} is invalid YAML (a bug)"))?;
        for doc in docs {
            manifest::check_typed(&doc).map_err(|e| {
                anyhow::anyhow!("manifests/crds/{name}: {}: {e}", manifest::describe(&doc))
            })?;
            objects.push(doc);
        }
    }
    Ok(objects)
}

/// Gives a control-plane Deployment annotated `mesh.io/inject: enabled` its proxy, the same
/// way `mesh inject --manual` would (the webhook never sees the control plane's namespace).
fn mesh_control_plane_pod(doc: &mut Value, proxy: &ProxyConfig) -> anyhow::Result<()> {
    if doc["kind"] != "Deployment" {
        return Ok(());
    }
    let template = &mut doc["spec"]["template"];
    let annotations = inject::annotations(template);
    if inject::wants_injection(&annotations, &BTreeMap::new()) {
        inject::inject(template, &BTreeMap::new(), proxy)?;
    }
    Ok(())
}

/// `mesh install`: the whole stream of YAML (the CRDs, then the control plane), or an error
/// before anything is written. With `--crds`, the CRDs alone.
pub async fn install(
    args: &InstallArgs,
    cluster: &crate::kube::ClusterArgs,
) -> anyhow::Result<String> {
    let crds = crds()?;
    if args.crds {
        return Ok(format!(
            "# mesh {} CRDs: mesh install --crds | kubectl apply -f -\n{}",
            version(),
            manifest::write(manifest::Format::Yaml, &crds)
        ));
    }
    let values = values(args)?;
    let asked = asked_sidecar_mode(&values);
    let mode = if args.ignore_cluster {
        SidecarMode::without_cluster(asked)
    } else {
        let client = cluster
            .client()
            .await
            .context("pass --ignore-cluster to render without contacting a cluster")?;
        refuse_existing(&client).await?;
        match asked {
            Some(native) => SidecarMode::asked(native),
            None => crate::kube::sidecar_mode(&client).await?,
        }
    };
    let days = |k: &str, g: &str| values[g][k].as_u64().unwrap_or(365);
    let certs = Certs::load_or_generate(
        &args.certs,
        values["trustDomain"].as_str().unwrap_or_default(),
        NAMESPACE,
        values["clusterDomain"].as_str().unwrap_or_default(),
        days("trustAnchorLifetimeDays", "identity"),
        days("issuerLifetimeDays", "identity"),
        days("certificateLifetimeDays", "webhook"),
    )?;
    let mut objects = crds;
    objects.extend(render(&values, &certs, &mode)?);
    Ok(format!(
        "# mesh {} control plane: mesh install | kubectl apply -f -\n\
         # proxies: {} sidecars ({}; proxy.nativeSidecar={})\n{}",
        values["imageTag"].as_str().unwrap_or_default(),
        mode.name(),
        mode.reason,
        values["proxy"]["nativeSidecar"]
            .as_str()
            .unwrap_or_default(),
        manifest::write(manifest::Format::Yaml, &objects)
    ))
}

/// Fails when the cluster already has a control plane (or cannot be reached).
async fn refuse_existing(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let hint = "pass --ignore-cluster to render without contacting a cluster";
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), NAMESPACE);
    match api.get_opt("mesh-trust-anchors").await {
        Ok(None) => Ok(()),
        Ok(Some(_)) => bail!(
            "the control plane is already installed in namespace {NAMESPACE}: \
             `mesh uninstall | kubectl delete -f -` first, or {hint}"
        ),
        Err(e) => {
            Err(anyhow::Error::new(e)
                .context(format!("looking for an existing installation ({hint})")))
        }
    }
}

/// `mesh uninstall`: what to delete, as YAML for `kubectl delete -f -`: the webhook first (so
/// no pod is injected meanwhile), the cluster-wide RBAC, the namespace with everything in it,
/// then the CRDs (and with them every route, HTTPFault and inbound policy object of the
/// cluster).
pub fn uninstall() -> anyhow::Result<String> {
    let args = InstallArgs::default();
    let values = values(&args)?;
    let certs = Certs::load_or_generate(
        &args.certs,
        "cluster.local",
        NAMESPACE,
        "cluster.local",
        1,
        1,
        1,
    )?;
    let mut objects = render(&values, &certs, &SidecarMode::without_cluster(None))?;
    objects.extend(crds()?);
    let rank = |kind: &str| match kind {
        "MutatingWebhookConfiguration" => 0,
        "ClusterRoleBinding" => 1,
        "ClusterRole" => 2,
        "Namespace" => 3,
        "CustomResourceDefinition" => 4,
        _ => 5,
    };
    let mut deletions: Vec<Value> = objects
        .iter()
        .filter(|o| rank(o["kind"].as_str().unwrap_or_default()) < 5)
        .map(|o| {
            json!({
                "apiVersion": o["apiVersion"],
                "kind": o["kind"],
                "metadata": {"name": o["metadata"]["name"]},
            })
        })
        .collect();
    deletions.sort_by_key(|o| rank(o["kind"].as_str().unwrap_or_default()));
    Ok(format!(
        "# mesh uninstall | kubectl delete -f -\n{}",
        manifest::write(manifest::Format::Yaml, &deletions)
    ))
}
