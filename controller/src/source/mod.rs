//! The sources that feed the index: Kubernetes (kube-rs watchers) and a folder of YAML.

pub mod folder;
pub mod kube;

use std::path::PathBuf;

use crate::index::inbound::{Checked, Spec};
use crate::index::routes::{AnyRoute, RouteObject, GATEWAY_GROUP, POLICY_GROUP};
use crate::index::Object;

/// Where the index's objects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The Kubernetes API, through a kubeconfig file or the in-cluster configuration.
    Kube {
        /// The kubeconfig file; `None` infers (`KUBECONFIG`, `~/.kube/config`, in-cluster).
        kubeconfig: Option<PathBuf>,
    },
    /// A folder of YAML files, watched for changes.
    Dir(PathBuf),
}

/// An invalid `--source` value.
#[derive(Debug, thiserror::Error)]
#[error("invalid source {0:?}: expected `kube` or `dir:PATH`")]
pub struct ParseSourceError(String);

impl Source {
    /// Parses `kube` or `dir:PATH`.
    pub fn parse(s: &str, kubeconfig: Option<PathBuf>) -> Result<Self, ParseSourceError> {
        match s.split_once(':') {
            None if s == "kube" => Ok(Source::Kube { kubeconfig }),
            Some(("dir", path)) if !path.is_empty() => Ok(Source::Dir(PathBuf::from(path))),
            _ => Err(ParseSourceError(s.to_owned())),
        }
    }
}

/// Why one object (from the API or a file) was not indexed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The document is not an object with `apiVersion` and `kind`.
    #[error("document {index}: not a Kubernetes object (no kind)")]
    NoKind {
        /// The document's position in its file (from 0).
        index: usize,
    },
    /// A kind the index does not hold (skipped, not an error worth a warning).
    #[error("document {index}: kind {kind} is not indexed")]
    Ignored {
        /// The document's position.
        index: usize,
        /// Its kind.
        kind: String,
    },
    /// The object does not match its kind's schema.
    #[error("document {index}: invalid {kind} {namespace}/{name}: {source}")]
    Invalid {
        /// The document's position.
        index: usize,
        /// Its kind.
        kind: String,
        /// Its `metadata.namespace` (`default` when unset).
        namespace: String,
        /// Its `metadata.name`, if any.
        name: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A kind the index holds, in an API version it does not read.
    #[error("document {index}: {kind} {namespace}/{name}: apiVersion {api_version:?} is not supported (use {expected})")]
    Version {
        /// The document's position.
        index: usize,
        /// Its kind.
        kind: String,
        /// Its `metadata.namespace` (`default` when unset).
        namespace: String,
        /// Its `metadata.name`, if any.
        name: String,
        /// The version it has.
        api_version: String,
        /// The versions read.
        expected: &'static str,
    },
}

/// Decodes one JSON object of a known kind into an [`Object`]; a `List` yields its items.
pub fn decode(index: usize, value: serde_json::Value) -> Vec<Result<Object, ObjectError>> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .map(str::to_owned);
    let Some(kind) = kind else {
        return vec![Err(ObjectError::NoKind { index })];
    };
    if kind == "List" || kind.ends_with("List") {
        let items = match value.get("items").and_then(|i| i.as_array()) {
            Some(items) => items.clone(),
            None => return Vec::new(),
        };
        // Items of a typed list (`ServiceList`) may omit kind and apiVersion.
        let (item_kind, api_version) = match kind.strip_suffix("List") {
            Some(k) if !k.is_empty() => (Some(k.to_owned()), api_version_of(k)),
            _ => (None, None),
        };
        return items
            .into_iter()
            .flat_map(|mut item| {
                if let (Some(obj), Some(k), Some(v)) =
                    (item.as_object_mut(), &item_kind, api_version)
                {
                    obj.entry("kind").or_insert_with(|| k.clone().into());
                    obj.entry("apiVersion").or_insert_with(|| v.into());
                }
                decode(index, item)
            })
            .collect();
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_owned();
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default")
        .to_owned();
    let invalid = |source| ObjectError::Invalid {
        index,
        kind: kind.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    };
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let version = |expected: &'static str, group: &str, versions: &[&str]| {
        let ok = api_version
            .split_once('/')
            .is_some_and(|(g, v)| g == group && versions.contains(&v));
        if ok {
            Ok(())
        } else {
            Err(ObjectError::Version {
                index,
                kind: kind.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
                api_version: api_version.clone(),
                expected,
            })
        }
    };
    let object = match kind.as_str() {
        "HTTPRoute" => {
            let expected = "gateway.networking.k8s.io/v1 or v1beta1";
            if let Err(e) = version(expected, GATEWAY_GROUP, &["v1", "v1beta1"]) {
                return vec![Err(e)];
            }
            serde_json::from_value(value)
                .map(|r| Object::HttpRoute(Box::new(RouteObject::new(AnyRoute::Http(r)))))
        }
        "GRPCRoute" => {
            let expected = "gateway.networking.k8s.io/v1 or v1alpha2";
            if let Err(e) = version(expected, GATEWAY_GROUP, &["v1", "v1alpha2"]) {
                return vec![Err(e)];
            }
            serde_json::from_value(value)
                .map(|r| Object::GrpcRoute(Box::new(RouteObject::new(AnyRoute::Grpc(r)))))
        }
        "HTTPFault"
        | "Server"
        | "AuthorizationPolicy"
        | "MeshTLSAuthentication"
        | "NetworkAuthentication"
        | "HTTPLocalRateLimitPolicy"
        | "MetaRoute" => {
            if let Err(e) = version("policy.mesh.io/v1alpha1", POLICY_GROUP, &["v1alpha1"]) {
                return vec![Err(e)];
            }
            decode_policy(&kind, value)
        }
        "Service" => serde_json::from_value(value).map(|o| Object::Service(Box::new(o))),
        "EndpointSlice" => {
            serde_json::from_value(value).map(|o| Object::EndpointSlice(Box::new(o)))
        }
        "Pod" => serde_json::from_value(value).map(|o| Object::Pod(Box::new(o))),
        "ReplicaSet" => serde_json::from_value(value).map(|o| Object::ReplicaSet(Box::new(o))),
        _ => return vec![Err(ObjectError::Ignored { index, kind })],
    };
    vec![object.map_err(invalid)]
}

/// Decodes a `policy.mesh.io` object of `kind` (its apiVersion checked).
fn decode_policy(kind: &str, value: serde_json::Value) -> Result<Object, serde_json::Error> {
    fn checked<T: Spec + serde::de::DeserializeOwned>(
        value: serde_json::Value,
        into: fn(Box<Checked<T>>) -> Object,
    ) -> Result<Object, serde_json::Error> {
        serde_json::from_value(value).map(|o| into(Box::new(Checked::new(o))))
    }
    match kind {
        "Server" => checked(value, Object::Server),
        "AuthorizationPolicy" => checked(value, Object::AuthorizationPolicy),
        "MeshTLSAuthentication" => checked(value, Object::MeshTlsAuthentication),
        "NetworkAuthentication" => checked(value, Object::NetworkAuthentication),
        "HTTPLocalRateLimitPolicy" => checked(value, Object::HttpLocalRateLimitPolicy),
        "MetaRoute" => checked(value, Object::MetaRoute),
        // HTTPFault, the group's one kind without validation at decode time.
        _ => serde_json::from_value(value).map(|f| Object::HttpFault(Box::new(f))),
    }
}

fn api_version_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Service" | "Pod" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        "ReplicaSet" => "apps/v1",
        "HTTPRoute" | "GRPCRoute" => "gateway.networking.k8s.io/v1",
        "HTTPFault"
        | "Server"
        | "AuthorizationPolicy"
        | "MeshTLSAuthentication"
        | "NetworkAuthentication"
        | "HTTPLocalRateLimitPolicy"
        | "MetaRoute" => "policy.mesh.io/v1alpha1",
        _ => return None,
    })
}
