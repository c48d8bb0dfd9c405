//! `mesh viz install` and `mesh viz uninstall`: the viz component (Prometheus, the metrics API,
//! the tap aggregator) rendered from the templates in `manifests/viz/` (embedded at build time)
//! with minijinja, every object checked against its k8s-openapi type.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::manifest;

/// The viz component's namespace: fixed, because the proxies' default tap identity names it
/// (`mesh-tap.mesh-viz.serviceaccount.identity.mesh.<trust-domain>`).
pub const NAMESPACE: &str = "mesh-viz";

/// The templates, in the order their objects are applied.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "namespace.yaml",
        include_str!("../../../manifests/viz/namespace.yaml"),
    ),
    (
        "prometheus.yaml",
        include_str!("../../../manifests/viz/prometheus.yaml"),
    ),
    (
        "metrics-api.yaml",
        include_str!("../../../manifests/viz/metrics-api.yaml"),
    ),
    ("tap.yaml", include_str!("../../../manifests/viz/tap.yaml")),
];

/// The defaults `--set` overrides.
const VALUES: &str = include_str!("../../../manifests/viz/values.yaml");

/// `mesh viz install`'s flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct VizInstallArgs {
    /// The controller image (metrics API and tap aggregator), without its tag.
    #[arg(long, value_name = "IMAGE")]
    pub controller_image: Option<String>,
    /// The controller image's tag; by default this CLI's version.
    #[arg(long, value_name = "TAG")]
    pub image_tag: Option<String>,
    /// Overrides a value of manifests/viz/values.yaml, e.g. `prometheus.retention=1d`; may be
    /// repeated.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// The values the templates see: the defaults with the flags and `--set` applied.
pub fn values(args: &VizInstallArgs) -> anyhow::Result<Value> {
    let mut overrides: Vec<(String, String)> = Vec::new();
    for (key, flag) in [
        ("controller.image", &args.controller_image),
        ("imageTag", &args.image_tag),
    ] {
        if let Some(v) = flag {
            overrides.push((key.into(), v.clone()));
        }
    }
    let values = manifest::template_values(
        VALUES,
        "viz",
        overrides,
        &args.set,
        &crate::install::version(),
    )?;
    validate(&values)?;
    Ok(values)
}

/// Refuses values that Prometheus or the controller would refuse, or that would not make valid
/// YAML.
fn validate(values: &Value) -> anyhow::Result<()> {
    use manifest::{check_word, dns_char, filter_char, image_char};
    check_word(values, "clusterDomain", dns_char)?;
    check_word(values, "trustDomain", dns_char)?;
    check_word(values, "imageTag", image_char)?;
    check_word(values, "controller.image", image_char)?;
    check_word(values, "controller.logLevel", filter_char)?;
    check_word(values, "prometheus.image", image_char)?;
    for key in [
        "controller.cpuRequest",
        "controller.memoryRequest",
        "controller.memoryLimit",
        "prometheus.cpuRequest",
        "prometheus.memoryRequest",
        "prometheus.memoryLimit",
    ] {
        check_word(values, key, image_char)?;
    }
    // Prometheus' durations: a number and a unit.
    for key in ["prometheus.scrapeInterval", "prometheus.retention"] {
        let v = manifest::value_str(values, key);
        let digits = v.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 || !["ms", "s", "m", "h", "d", "w", "y"].contains(&&v[digits..]) {
            anyhow::bail!("{key}: {v:?} is not a Prometheus duration (e.g. 10s, 6h, 1d)");
        }
    }
    manifest::check_pull_policy(values)
}

/// Renders the viz component's objects.
pub fn render(values: &Value) -> anyhow::Result<Vec<Value>> {
    let mut env = manifest::template_env();
    env.add_function("labels", |component: Option<String>| {
        let mut labels = BTreeMap::from([
            ("app.kubernetes.io/part-of".to_string(), "mesh".to_string()),
            ("mesh.io/extension".to_string(), "viz".to_string()),
        ]);
        if let Some(c) = component {
            labels.insert("mesh.io/viz-component".into(), c);
        }
        json!(labels).to_string()
    });
    env.add_function("pod_security_context", |uid: u32| {
        json!({
            "runAsNonRoot": true,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
        .to_string()
    });
    env.add_function("container_security_context", |uid: u32| {
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": uid,
            "runAsGroup": uid,
        })
        .to_string()
    });
    let all = values.clone();
    env.add_function("resources", move |group: String| {
        let v = &all[&group];
        json!({
            "requests": {"cpu": v["cpuRequest"], "memory": v["memoryRequest"]},
            "limits": {"memory": v["memoryLimit"]},
        })
        .to_string()
    });
    let controller_image = format!(
        "{}:{}",
        values["controller"]["image"].as_str().unwrap_or_default(),
        values["imageTag"].as_str().unwrap_or_default()
    );
    let context = minijinja::context! {
        namespace => NAMESPACE,
        control_plane_namespace => crate::install::NAMESPACE,
        values => minijinja::Value::from_serialize(values),
        controller_image => controller_image,
        token_audience => mesh_api::identity::TOKEN_AUDIENCE,
    };
    manifest::render_templates(&env, &context, "viz", TEMPLATES, |_| Ok(()))
}

/// `mesh viz install`: the whole stream of YAML.
pub fn install(args: &VizInstallArgs) -> anyhow::Result<String> {
    let values = values(args)?;
    let objects = render(&values)?;
    Ok(format!(
        "# mesh {} viz: mesh viz install | kubectl apply -f -\n{}",
        values["imageTag"].as_str().unwrap_or_default(),
        manifest::write(manifest::Format::Yaml, &objects)
    ))
}

/// `mesh viz uninstall`: what to delete, as YAML for `kubectl delete -f -`: the cluster-wide
/// RBAC, the Role and RoleBinding in the control plane's namespace, then the viz namespace with
/// everything in it.
pub fn uninstall() -> anyhow::Result<String> {
    let objects = render(&values(&VizInstallArgs::default())?)?;
    let rank = |kind: &str| match kind {
        "ClusterRoleBinding" => 0,
        "ClusterRole" => 1,
        "RoleBinding" => 2,
        "Role" => 3,
        "Namespace" => 4,
        _ => 5,
    };
    let mut deletions: Vec<Value> = objects
        .iter()
        .filter(|o| {
            let kind = o["kind"].as_str().unwrap_or_default();
            // Everything else lives in the viz namespace, and goes with it.
            rank(kind) < 5 && o["metadata"]["namespace"] != NAMESPACE
        })
        .map(|o| {
            let mut metadata = json!({"name": o["metadata"]["name"]});
            if let Some(ns) = o["metadata"]["namespace"].as_str() {
                metadata["namespace"] = json!(ns);
            }
            json!({"apiVersion": o["apiVersion"], "kind": o["kind"], "metadata": metadata})
        })
        .collect();
    deletions.sort_by_key(|o| rank(o["kind"].as_str().unwrap_or_default()));
    Ok(format!(
        "# mesh viz uninstall | kubectl delete -f -\n{}",
        manifest::write(manifest::Format::Yaml, &deletions)
    ))
}
