//! The injector's AdmissionReview (`POST /inject`): `injector::review::parse` reads the body,
//! `review::decide` injects the pod with `mesh_api::inject` and diffs it into a JSONPatch,
//! `review::answer` writes the AdmissionReview answer, as the webhook does; with and without a
//! namespace that asks for injection, and with native and classic sidecars.
//!
//! Asserts: the answer serializes and allows the pod; a patch applies to the pod it was made
//! for (as the API server applies it); the patched pod is not injected a second time.
#![forbid(unsafe_code)]

use base64::Engine as _;
use mesh_api::{
    identity::ca,
    inject::{ProxyConfig, INJECT_ANNOTATION},
};
use mesh_controller::injector::review::{self, Decision};
use std::{collections::BTreeMap, time::Duration};

fn main() {
    let asked: BTreeMap<String, String> =
        [(INJECT_ANNOTATION.to_string(), "enabled".to_string())].into();
    let namespaces = [BTreeMap::new(), asked];
    // The trust anchors the injector puts in the proxy's environment.
    let anchor = ca::new_trust_anchor("cluster.local", Duration::from_secs(86_400))
        .expect("a trust anchor is generated");
    let proxies = [true, false].map(|native| ProxyConfig {
        native_sidecar: native,
        ..ProxyConfig::new("ghcr.io/mesh/proxy:v0.1.0", "v0.1.0", &anchor.cert_pem)
    });
    afl::fuzz!(|data: &[u8]| {
        let Ok(request) = review::parse(data) else {
            return;
        };
        let _ = review::pod_name(&request.object);
        for namespace in &namespaces {
            for proxy in &proxies {
                let (decision, patch) = review::decide(&request, namespace, proxy);
                let answer = review::answer(&request.uid, &decision, patch.as_ref());
                assert_eq!(answer["response"]["allowed"], true, "{answer}");
                let _ = serde_json::to_vec(&answer).expect("the answer serializes");
                if patch.is_none() {
                    continue;
                }
                assert_eq!(decision, Decision::Injected);
                let encoded = answer["response"]["patch"].as_str().expect("a patch");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .expect("the patch is base64");
                let patch: json_patch::Patch =
                    serde_json::from_slice(&bytes).expect("the patch is a JSONPatch");
                let mut pod = request.object.clone();
                json_patch::patch(&mut pod, &patch)
                    .unwrap_or_else(|e| panic!("the patch does not apply: {e}"));
                let again = review::Request {
                    uid: request.uid.clone(),
                    namespace: request.namespace.clone(),
                    what: request.what.clone(),
                    object: pod,
                };
                let (twice, _) = review::decide(&again, namespace, proxy);
                assert_ne!(
                    twice,
                    Decision::Injected,
                    "an injected pod is injected again"
                );
            }
        }
    });
}
