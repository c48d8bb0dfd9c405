//! One AdmissionReview: decide, inject with [`mesh_api::inject`], answer with a JSONPatch.
//!
//! Every answer allows the pod: a pod that is not injected because of the injector's own
//! trouble (a bad annotation, a namespace it could not read) is created without the proxy and
//! the reason goes back as an admission warning, which `kubectl` shows.

use std::collections::BTreeMap;

use base64::Engine as _;
use mesh_api::inject::{self, Outcome, ProxyConfig};
use serde_json::{json, Value};

/// What the injector decided for one pod, for the log and the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Patched with the proxy.
    Injected,
    /// Neither the pod nor its namespace asks for it.
    NotRequested,
    /// Asked for, but skipped: host network, already injected.
    Skipped(String),
    /// Not a pod CREATE (the webhook's rules should not send those).
    Ignored(String),
    /// Asked for, but the injection failed.
    Failed(String),
}

impl Decision {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Injected => "injected",
            Decision::NotRequested => "not_requested",
            Decision::Skipped(_) => "skipped",
            Decision::Ignored(_) => "ignored",
            Decision::Failed(_) => "failed",
        }
    }
}

/// Why a request body is not an AdmissionReview (answered 400).
#[derive(Debug, thiserror::Error)]
#[error("not an AdmissionReview v1: {0}")]
pub struct BadReview(String);

/// The request's uid, namespace, and pod, read from an AdmissionReview v1.
pub struct Request {
    /// `request.uid`, echoed in the answer.
    pub uid: String,
    /// `request.namespace` (the pod's own may be empty when a controller creates it).
    pub namespace: String,
    /// `request.operation` and `request.kind.kind`, e.g. `CREATE Pod`.
    pub what: String,
    /// `request.object`.
    pub object: Value,
}

/// Reads an AdmissionReview v1 request.
pub fn parse(body: &[u8]) -> Result<Request, BadReview> {
    let review: Value = serde_json::from_slice(body).map_err(|e| BadReview(e.to_string()))?;
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err(BadReview(format!(
            "apiVersion {} kind {}",
            review["apiVersion"], review["kind"]
        )));
    }
    let request = &review["request"];
    let uid = request["uid"]
        .as_str()
        .ok_or_else(|| BadReview("no request.uid".into()))?;
    Ok(Request {
        uid: uid.to_string(),
        namespace: request["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        what: format!(
            "{} {}",
            request["operation"].as_str().unwrap_or_default(),
            request["kind"]["kind"].as_str().unwrap_or_default()
        ),
        object: request["object"].clone(),
    })
}

/// The pod's name for the log: its name, else its generateName with `*`.
pub fn pod_name(object: &Value) -> String {
    match (
        object["metadata"]["name"].as_str(),
        object["metadata"]["generateName"].as_str(),
    ) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => "<unnamed>".to_string(),
    }
}

/// Decides and, when injecting, returns the JSONPatch that turns `request.object` into the
/// injected pod. `namespace` holds the namespace's annotations.
pub fn decide(
    request: &Request,
    namespace: &BTreeMap<String, String>,
    config: &ProxyConfig,
) -> (Decision, Option<Value>) {
    if request.what != "CREATE Pod" {
        return (Decision::Ignored(request.what.clone()), None);
    }
    let annotations = inject::annotations(&request.object);
    if !inject::wants_injection(&annotations, namespace) {
        return (Decision::NotRequested, None);
    }
    let mut pod = request.object.clone();
    match inject::inject(&mut pod, namespace, config) {
        Ok(Outcome::Injected) => {
            let patch = json_patch::diff(&request.object, &pod);
            // Invariant: a JSON patch always serializes.
            let patch = serde_json::to_value(patch).expect("a JSON patch serializes");
            (Decision::Injected, Some(patch))
        }
        Ok(Outcome::Skipped(why)) => (Decision::Skipped(why.to_string()), None),
        Err(e) => (Decision::Failed(e.to_string()), None),
    }
}

/// The AdmissionReview v1 answer: always allowed; the patch (base64) when there is one, a
/// warning when injection was asked for and failed.
pub fn answer(uid: &str, decision: &Decision, patch: Option<&Value>) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(patch) = patch {
        let bytes = serde_json::to_vec(patch).expect("a JSON patch serializes");
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    if let Decision::Failed(why) = decision {
        response["warnings"] = json!([format!("mesh: the proxy was not injected: {why}")]);
    }
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/k8s-fixtures")
            .join(name);
        std::fs::read(path).expect("fixture")
    }

    fn config() -> ProxyConfig {
        ProxyConfig::new("ghcr.io/mesh/proxy", "v0.1.0", "PEM")
    }

    #[test]
    fn an_annotated_pod_is_patched_into_what_inject_makes() {
        let request = parse(&fixture("admissionreview-pod-create-bare-pod.json")).unwrap();
        assert_eq!(request.what, "CREATE Pod");
        let (decision, patch) = decide(&request, &BTreeMap::new(), &config());
        assert_eq!(decision, Decision::Injected);
        let patch: json_patch::Patch = serde_json::from_value(patch.unwrap()).unwrap();
        let mut patched = request.object.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        let mut direct = request.object.clone();
        inject::inject(&mut direct, &BTreeMap::new(), &config()).unwrap();
        assert_eq!(patched, direct);
        let _: k8s_openapi::api::core::v1::Pod = serde_json::from_value(patched).unwrap();
    }

    #[test]
    fn a_replicaset_pod_follows_its_namespace() {
        let request = parse(&fixture("admissionreview-pod-create-from-replicaset.json")).unwrap();
        assert!(pod_name(&request.object).ends_with('*'));
        let (decision, _) = decide(&request, &BTreeMap::new(), &config());
        assert_eq!(decision, Decision::NotRequested);
        let ns = BTreeMap::from([(inject::INJECT_ANNOTATION.to_string(), "enabled".to_string())]);
        let (decision, patch) = decide(&request, &ns, &config());
        assert_eq!(decision, Decision::Injected);
        assert!(patch.is_some());
    }

    #[test]
    fn failures_allow_the_pod_with_a_warning() {
        let mut request = parse(&fixture("admissionreview-pod-create-bare-pod.json")).unwrap();
        request.object["metadata"]["annotations"][inject::OPAQUE_PORTS_ANNOTATION] = json!("mysql");
        let (decision, patch) = decide(&request, &BTreeMap::new(), &config());
        assert!(matches!(decision, Decision::Failed(_)), "{decision:?}");
        let answer = answer(&request.uid, &decision, patch.as_ref());
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none());
        assert!(answer["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("opaque-ports"));
    }

    #[test]
    fn codec_ports_reach_the_proxy_and_bad_ones_are_a_warning() {
        let request = parse(&fixture("admissionreview-pod-create-bare-pod.json")).unwrap();
        // From the namespace, normalized.
        let ns = BTreeMap::from([(
            inject::CODEC_PORTS_ANNOTATION.to_string(),
            "6379 = redis".to_string(),
        )]);
        let (decision, patch) = decide(&request, &ns, &config());
        assert_eq!(decision, Decision::Injected);
        let patch: json_patch::Patch = serde_json::from_value(patch.unwrap()).unwrap();
        let mut patched = request.object.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        let proxy = ["initContainers", "containers"]
            .iter()
            .filter_map(|list| patched["spec"][list].as_array())
            .flatten()
            .find(|c| c["name"] == inject::PROXY_CONTAINER)
            .unwrap();
        assert!(
            proxy["env"].as_array().unwrap().contains(
                &json!({"name": "MESH_PROXY_INBOUND_CODEC_PORTS", "value": "6379=redis"})
            ),
            "{proxy}"
        );

        let mut request = request;
        request.object["metadata"]["annotations"][inject::CODEC_PORTS_ANNOTATION] =
            json!("6379=memcached");
        let (decision, patch) = decide(&request, &BTreeMap::new(), &config());
        assert!(matches!(decision, Decision::Failed(_)), "{decision:?}");
        let answer = answer(&request.uid, &decision, patch.as_ref());
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none());
        let warning = answer["response"]["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains("config.mesh.io/codec-ports")
                && warning.contains("unknown codec \"memcached\""),
            "{warning}"
        );
    }

    #[test]
    fn other_bodies_are_refused() {
        assert!(parse(b"{}").is_err());
        assert!(parse(b"not json").is_err());
    }
}
