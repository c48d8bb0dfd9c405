//! Sidecar injection: the one function that adds the proxy to a pod template, shared by
//! `mesh inject --manual` and the injector webhook so the two never disagree.
//!
//! A pod template is a JSON value `{"metadata": …, "spec": …}` (a Pod itself has the same
//! shape). [`inject`] adds the `mesh-init` init container, the `mesh-proxy` sidecar (a native
//! sidecar by default: an init container with `restartPolicy: Always`), their volumes and the
//! `mesh.io/proxy-version` annotation; [`uninject`] takes exactly those away. Working on the
//! JSON value (not the typed pod) keeps every field of the input, in its order, and lets the
//! webhook answer with a diff of the two values.
//!
//! ```
//! use mesh_api::inject::{inject, Outcome, ProxyConfig};
//! let mut pod = serde_json::json!({
//!     "metadata": {"annotations": {"mesh.io/inject": "enabled"}},
//!     "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
//! });
//! let config = ProxyConfig::new("ghcr.io/mesh/proxy", "v0.1.0", "-----BEGIN CERTIFICATE-----…");
//! assert_eq!(inject(&mut pod, &Default::default(), &config).unwrap(), Outcome::Injected);
//! assert_eq!(pod["spec"]["initContainers"][1]["name"], "mesh-proxy");
//! ```

use std::collections::BTreeMap;
use std::fmt;

/// The codec ports' parser lives in `mesh_api::codec_ports` (the proxy reads the same variable
/// without this feature); the injector's names for it.
pub use crate::codec_ports::{parse_codec_ports, CodecPorts, CODECS};
use crate::defaults::{self, ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID};
use crate::duration::parse_duration;
use crate::inbound::{self, DefaultPolicy};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value};

/// `enabled` asks for injection (on a pod template or a namespace), `disabled` refuses it.
pub const INJECT_ANNOTATION: &str = "mesh.io/inject";
/// The version of the proxy a pod was injected with.
pub const PROXY_VERSION_ANNOTATION: &str = "mesh.io/proxy-version";
/// Ports (and ranges) whose traffic skips protocol detection, inbound and outbound.
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.mesh.io/opaque-ports";
/// Inbound ports whose connections carry a codec's protocol (`6379=redis,9090-9091=thrift`):
/// the proxy decodes their requests (`MESH_PROXY_INBOUND_CODEC_PORTS`).
pub const CODEC_PORTS_ANNOTATION: &str = "config.mesh.io/codec-ports";
/// Local ports whose inbound connections bypass the proxy.
pub const SKIP_INBOUND_PORTS_ANNOTATION: &str = "config.mesh.io/skip-inbound-ports";
/// Remote ports whose outbound connections bypass the proxy.
pub const SKIP_OUTBOUND_PORTS_ANNOTATION: &str = "config.mesh.io/skip-outbound-ports";
/// The proxy's log filter.
pub const PROXY_LOG_LEVEL_ANNOTATION: &str = "config.mesh.io/proxy-log-level";
/// Inbound ports that accept only mutual-TLS connections from meshed clients.
pub const REQUIRE_IDENTITY_PORTS_ANNOTATION: &str = "config.mesh.io/require-identity-ports";
/// How long the proxy goes on serving after SIGTERM while the pod's endpoint is withdrawn
/// (`MESH_PROXY_SHUTDOWN_DELAY`); `0s` turns it off.
pub const PROXY_SHUTDOWN_DELAY_ANNOTATION: &str = "config.mesh.io/proxy-shutdown-delay";
/// The injected default of `config.mesh.io/proxy-shutdown-delay`: longer than an endpoint's
/// removal takes to reach the clients' proxies, well inside the default 30 s grace period.
pub const DEFAULT_SHUTDOWN_DELAY: &str = "5s";
/// `enabled` or `disabled`: whether the proxy runs as a native sidecar.
pub const NATIVE_SIDECAR_ANNOTATION: &str = "config.mesh.io/native-sidecar";
/// The pod's default inbound policy, for the ports no Server selects
/// (`MESH_PROXY_INBOUND_DEFAULT_POLICY`): `all-unauthenticated`, `deny`… (see
/// [`DefaultPolicy`]).
pub const DEFAULT_INBOUND_POLICY_ANNOTATION: &str = inbound::DEFAULT_POLICY_ANNOTATION;

/// The proxy container's name: a pod with a container or init container of this name is meshed.
pub const PROXY_CONTAINER: &str = "mesh-proxy";
/// The init container that installs the redirect rules.
pub const INIT_CONTAINER: &str = "mesh-init";
/// The destination controller's port.
pub const DESTINATION_PORT: u16 = 8086;
/// The identity controller's port.
pub const IDENTITY_PORT: u16 = 8080;
/// The injector webhook's port.
pub const INJECTOR_PORT: u16 = 8443;

/// The volume the proxy keeps its private key in (memory only).
pub const IDENTITY_DIR_VOLUME: &str = "mesh-identity-dir";
/// The projected service-account token the proxy proves its identity with.
pub const IDENTITY_TOKEN_VOLUME: &str = "mesh-identity-token";
/// The scratch `/run` of `mesh-init` (iptables' lock file; the root filesystem is read-only).
pub const XTABLES_LOCK_VOLUME: &str = "mesh-init-xtables-lock";
const IDENTITY_DIR: &str = "/var/run/mesh/identity";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// Where the proxy image keeps its binaries.
pub const BIN_DIR: &str = "/usr/local/bin";

/// What the proxy is configured with: the same for the CLI and the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The proxy image without its tag (`ghcr.io/mesh/proxy`); `mesh-init` runs from it too.
    pub proxy_image: String,
    /// The tag of the image and the value of `mesh.io/proxy-version`.
    pub version: String,
    /// The image pull policy of both containers.
    pub image_pull_policy: String,
    /// The control plane's namespace.
    pub control_plane_namespace: String,
    /// The trust domain of workload identities.
    pub trust_domain: String,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// The trust anchors, PEM (given to the proxy as text: a pod cannot mount a ConfigMap of
    /// another namespace).
    pub trust_anchors_pem: String,
    /// Whether the proxy is a native sidecar unless the pod says otherwise.
    pub native_sidecar: bool,
    /// The proxy's log filter unless the pod says otherwise.
    pub log_level: String,
    /// The default inbound policy unless the pod or its namespace says otherwise
    /// (`config.mesh.io/default-inbound-policy`).
    pub default_inbound_policy: DefaultPolicy,
    /// The cluster's networks, which the `cluster-*` default policies allow, as the proxy reads
    /// them (`10.0.0.0/8,fd00::/8`; check a list with [`cluster_networks`]).
    pub cluster_networks: String,
}

impl ProxyConfig {
    /// The defaults for `image:version` and these trust anchors.
    pub fn new(proxy_image: &str, version: &str, trust_anchors_pem: &str) -> Self {
        Self {
            proxy_image: proxy_image.to_string(),
            version: version.to_string(),
            image_pull_policy: "IfNotPresent".into(),
            control_plane_namespace: "mesh".into(),
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            trust_anchors_pem: trust_anchors_pem.to_string(),
            native_sidecar: true,
            log_level: "warn,mesh_proxy=info".into(),
            default_inbound_policy: DefaultPolicy::default(),
            cluster_networks: inbound::DEFAULT_CLUSTER_NETWORKS.into(),
        }
    }

    fn image(&self) -> String {
        format!("{}:{}", self.proxy_image, self.version)
    }

    fn service(&self, name: &str, port: u16) -> String {
        format!(
            "{name}.{}.svc.{}:{port}",
            self.control_plane_namespace, self.cluster_domain
        )
    }
}

/// What [`inject`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The proxy was added.
    Injected,
    /// Nothing was changed, for this reason.
    Skipped(Skip),
}

/// Why a pod template was left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `hostNetwork: true`: redirect rules would capture the node's traffic.
    HostNetwork,
    /// It already has a `mesh-proxy` container.
    AlreadyInjected,
    /// `mesh.io/inject: disabled`.
    Disabled,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skip::HostNetwork => "it uses the host network (hostNetwork: true)",
            Skip::AlreadyInjected => "it already has a mesh-proxy container",
            Skip::Disabled => "it is annotated mesh.io/inject: disabled",
        })
    }
}

/// Why a pod template could not be injected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// The value is not a pod template.
    #[error("not a pod template: {0}")]
    Shape(String),
    /// An annotation has a value that cannot be used.
    #[error("annotation {name}: {value:?} {reason}")]
    Annotation {
        /// The annotation.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Checks a list of the cluster's networks (`MESH_PROXY_INBOUND_CLUSTER_NETWORKS`, the
/// install's `proxy.clusterNetworks`, the injector's `--cluster-networks`) and writes it the way
/// the proxy reads it: comma-separated, each a network with its prefix. An empty list is
/// refused: the `cluster-*` default policies would then allow no one.
///
/// ```
/// use mesh_api::inject::cluster_networks;
/// assert_eq!(cluster_networks("10.0.0.0/8, fd00::/8").unwrap(), "10.0.0.0/8,fd00::/8");
/// assert_eq!(cluster_networks("192.0.2.7").unwrap(), "192.0.2.7/32");
/// assert!(cluster_networks("10.0.0.0/33").is_err());
/// assert!(cluster_networks(" ").is_err());
/// ```
pub fn cluster_networks(list: &str) -> Result<String, String> {
    let networks = inbound::parse_networks(list)?;
    if networks.is_empty() {
        return Err("no network: name the cluster's networks, e.g. 10.0.0.0/8,fd00::/8".into());
    }
    let cidrs: Vec<String> = networks.iter().map(|n| n.cidr.to_string()).collect();
    Ok(cidrs.join(","))
}

/// Whether the proxy runs as a native sidecar on a cluster, and why: what the CLI and the
/// injector decide from the API server's `/version` when no one asked for a mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarMode {
    /// A native sidecar (an init container with `restartPolicy: Always`), or a classic one.
    pub native: bool,
    /// Why, in words for a person: `the cluster runs 1.28, without native sidecars by default`.
    pub reason: String,
}

impl SidecarMode {
    /// The mode for an API server whose `/version` says `major` and `minor` (providers write
    /// minors like `28+`). Kubernetes 1.29 turned the `SidecarContainers` gate on by default;
    /// 1.28 had it alpha, off, and an API server without it drops `restartPolicy: Always` from
    /// init containers and refuses their probes, so nothing meshed could start.
    pub fn for_version(major: &str, minor: &str) -> Self {
        match parse_version(major, minor) {
            Some(v) if v >= (1, 29) => Self {
                native: true,
                reason: format!("the cluster runs {}.{}, with native sidecars", v.0, v.1),
            },
            Some(v) => Self {
                native: false,
                reason: format!(
                    "the cluster runs {}.{}, without native sidecars by default (1.29 and later)",
                    v.0, v.1
                ),
            },
            None => Self {
                native: false,
                reason: format!("the cluster's version {major:?}.{minor:?} cannot be read"),
            },
        }
    }

    /// The mode when no cluster could be asked: classic, which every version runs, unless asked.
    pub fn without_cluster(asked: Option<bool>) -> Self {
        match asked {
            Some(native) => Self::asked(native),
            None => Self {
                native: false,
                reason: "no cluster was asked, and every Kubernetes version runs classic sidecars"
                    .into(),
            },
        }
    }

    /// The mode someone asked for.
    pub fn asked(native: bool) -> Self {
        Self {
            native,
            reason: "as asked".into(),
        }
    }

    /// `native` or `classic`.
    pub fn name(&self) -> &'static str {
        if self.native {
            "native"
        } else {
            "classic"
        }
    }
}

/// `(major, minor)` of a Kubernetes `/version` (`"1"`, `"28+"`).
pub fn parse_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| -> Option<u32> {
        let d: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    Some((digits(major)?, digits(minor)?))
}

/// Whether a pod (its template's annotations, then its namespace's) asks to be injected.
pub fn wants_injection(pod: &Map<String, Value>, namespace: &BTreeMap<String, String>) -> bool {
    match pod.get(INJECT_ANNOTATION).and_then(Value::as_str) {
        Some(v) => v == "enabled",
        None => namespace.get(INJECT_ANNOTATION).map(String::as_str) == Some("enabled"),
    }
}

/// The annotations of a pod template (empty when it has none).
pub fn annotations(template: &Value) -> Map<String, Value> {
    template
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Whether a pod spec has a `mesh-proxy` container or init container.
pub fn is_injected(template: &Value) -> bool {
    ["containers", "initContainers"].iter().any(|list| {
        template
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == PROXY_CONTAINER))
    })
}

/// Adds the proxy to `template` (`{"metadata": …, "spec": …}`).
///
/// `inherited` are the annotations of the pod's namespace: `config.mesh.io/*` there applies
/// unless the pod sets its own. A template that uses the host network, is already injected or
/// is annotated `mesh.io/inject: disabled` is left as it is and the reason returned.
pub fn inject(
    template: &mut Value,
    inherited: &BTreeMap<String, String>,
    config: &ProxyConfig,
) -> Result<Outcome, InjectError> {
    let spec = template
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| InjectError::Shape("it has no spec".into()))?;
    if !spec.get("containers").is_some_and(Value::is_array) {
        return Err(InjectError::Shape("its spec has no containers".into()));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(Skip::HostNetwork));
    }
    if is_injected(template) {
        return Ok(Outcome::Skipped(Skip::AlreadyInjected));
    }
    let own = annotations(template);
    if own.get(INJECT_ANNOTATION).and_then(Value::as_str) == Some("disabled") {
        return Ok(Outcome::Skipped(Skip::Disabled));
    }
    let settings = Settings::read(&own, inherited, config)?;

    let proxy = name_first(proxy_container(config, &settings));
    let init = name_first(init_container(config, &settings));
    let spec = template["spec"]
        .as_object_mut()
        .expect("checked to be an object above");
    let inits = list(spec, "initContainers")?;
    if settings.native {
        // mesh-init first, then the proxy, so the application's own init containers already
        // run meshed.
        inits.splice(0..0, [init, proxy]);
    } else {
        // mesh-init last: the application's init containers run before the proxy exists and
        // must not be redirected to it.
        inits.push(init);
        list(spec, "containers")?.insert(0, proxy);
    }
    let volumes = list(spec, "volumes")?;
    for volume in mesh_volumes() {
        volumes.push(name_first(volume));
    }
    let metadata = object(template, "metadata")?;
    object_in(metadata, "annotations")?.insert(
        PROXY_VERSION_ANNOTATION.into(),
        Value::String(config.version.clone()),
    );
    Ok(Outcome::Injected)
}

/// Takes away what [`inject`] added, and the `mesh.io/inject` annotation; true when anything
/// was removed. Lists and maps left empty are removed.
pub fn uninject(template: &mut Value) -> bool {
    let mut changed = false;
    if let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut) {
        for (key, names) in [
            ("initContainers", &[INIT_CONTAINER, PROXY_CONTAINER][..]),
            ("containers", &[PROXY_CONTAINER][..]),
            (
                "volumes",
                &[
                    IDENTITY_DIR_VOLUME,
                    IDENTITY_TOKEN_VOLUME,
                    XTABLES_LOCK_VOLUME,
                ][..],
            ),
        ] {
            if let Some(items) = spec.get_mut(key).and_then(Value::as_array_mut) {
                let before = items.len();
                items.retain(|item| !names.iter().any(|n| item["name"] == *n));
                changed |= items.len() != before;
                if items.is_empty() && before > 0 && key != "containers" {
                    spec.remove(key);
                }
            }
        }
    }
    changed | remove_annotations(template, &[INJECT_ANNOTATION, PROXY_VERSION_ANNOTATION])
}

/// Sets `mesh.io/inject: enabled` on an object's (or a template's) metadata; false when it
/// was already so.
pub fn annotate_enabled(object: &mut Value) -> Result<bool, InjectError> {
    let metadata = self::object(object, "metadata")?;
    let annotations = object_in(metadata, "annotations")?;
    let before = annotations.insert(INJECT_ANNOTATION.into(), Value::String("enabled".into()));
    Ok(before.as_ref().and_then(Value::as_str) != Some("enabled"))
}

/// Removes these annotations; an annotations map left empty is removed. True when any was.
pub fn remove_annotations(object: &mut Value, names: &[&str]) -> bool {
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return false;
    };
    let Some(annotations) = metadata
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    else {
        return false;
    };
    let before = annotations.len();
    for name in names {
        annotations.shift_remove(*name);
    }
    let changed = annotations.len() != before;
    if changed && annotations.is_empty() {
        metadata.shift_remove("annotations");
        if metadata.is_empty() {
            // A pod template's metadata that only held what inject added.
            object.as_object_mut().map(|o| o.shift_remove("metadata"));
        }
    }
    changed
}

// === helpers ===

/// The annotations that shape one pod's proxy, checked.
struct Settings {
    native: bool,
    log_level: String,
    shutdown_delay: String,
    default_inbound_policy: DefaultPolicy,
    opaque_ports: Option<String>,
    /// `config.mesh.io/codec-ports`, normalized (`6379=redis,9090-9091=thrift`).
    codec_ports: Option<String>,
    skip_inbound: Option<String>,
    skip_outbound: Option<String>,
    require_identity: Option<String>,
}

impl Settings {
    fn read(
        own: &Map<String, Value>,
        inherited: &BTreeMap<String, String>,
        config: &ProxyConfig,
    ) -> Result<Self, InjectError> {
        let get = |name: &str| -> Option<String> {
            own.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| inherited.get(name).cloned())
                .map(|v| v.trim().to_string())
        };
        let ports = |name: &'static str| -> Result<Option<String>, InjectError> {
            match get(name) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => check_ports(&v)
                    .map(|()| Some(v.split(',').map(str::trim).collect::<Vec<_>>().join(",")))
                    .map_err(|reason| InjectError::Annotation {
                        name,
                        value: v,
                        reason: reason.into(),
                    }),
            }
        };
        let native = match get(NATIVE_SIDECAR_ANNOTATION).as_deref() {
            None => config.native_sidecar,
            Some("enabled" | "true") => true,
            Some("disabled" | "false") => false,
            Some(other) => {
                return Err(InjectError::Annotation {
                    name: NATIVE_SIDECAR_ANNOTATION,
                    value: other.into(),
                    reason: "is not enabled or disabled".into(),
                })
            }
        };
        let log_level = match get(PROXY_LOG_LEVEL_ANNOTATION) {
            Some(v) if v.is_empty() || v.contains(char::is_whitespace) => {
                return Err(InjectError::Annotation {
                    name: PROXY_LOG_LEVEL_ANNOTATION,
                    value: v,
                    reason: "is not a log filter (e.g. warn,mesh_proxy=debug)".into(),
                })
            }
            Some(v) => v,
            None => config.log_level.clone(),
        };
        let shutdown_delay = match get(PROXY_SHUTDOWN_DELAY_ANNOTATION) {
            None => DEFAULT_SHUTDOWN_DELAY.to_string(),
            Some(v) if parse_duration(&v).is_ok() => v,
            Some(v) => {
                return Err(InjectError::Annotation {
                    name: PROXY_SHUTDOWN_DELAY_ANNOTATION,
                    value: v,
                    reason: "is not a duration (e.g. 5s, 500ms, 0s)".into(),
                })
            }
        };
        let default_inbound_policy = match get(DEFAULT_INBOUND_POLICY_ANNOTATION) {
            None => config.default_inbound_policy,
            Some(v) => v.parse().map_err(|_| {
                let names: Vec<&str> = DefaultPolicy::ALL.iter().map(|p| p.as_str()).collect();
                InjectError::Annotation {
                    name: DEFAULT_INBOUND_POLICY_ANNOTATION,
                    value: v,
                    reason: format!(
                        "is not a default inbound policy: use one of {}",
                        names.join(", ")
                    ),
                }
            })?,
        };
        let codec_ports = match get(CODEC_PORTS_ANNOTATION) {
            None => None,
            Some(v) => match parse_codec_ports(&v) {
                Ok(entries) if entries.is_empty() => None,
                Ok(entries) => Some(crate::codec_ports::format_codec_ports(&entries)),
                Err(e) => {
                    let reason = format!(
                        "is not a list of PORT=CODEC entries (e.g. {}): {e}",
                        "6379=redis,9090-9091=thrift"
                    );
                    return Err(InjectError::Annotation {
                        name: CODEC_PORTS_ANNOTATION,
                        value: v,
                        reason,
                    });
                }
            },
        };
        Ok(Self {
            native,
            log_level,
            shutdown_delay,
            default_inbound_policy,
            opaque_ports: ports(OPAQUE_PORTS_ANNOTATION)?,
            codec_ports,
            skip_inbound: ports(SKIP_INBOUND_PORTS_ANNOTATION)?,
            skip_outbound: ports(SKIP_OUTBOUND_PORTS_ANNOTATION)?,
            require_identity: ports(REQUIRE_IDENTITY_PORTS_ANNOTATION)?,
        })
    }
}

/// Checks a port list: `25,587,8000-8100`.
fn check_ports(list: &str) -> Result<(), &'static str> {
    const BAD: &str = "is not a list of ports and ranges (e.g. 25,3306,8000-8100)";
    for item in list.split(',').map(str::trim) {
        let (lo, hi) = item.split_once('-').unwrap_or((item, item));
        let lo: u16 = lo.trim().parse().map_err(|_| BAD)?;
        let hi: u16 = hi.trim().parse().map_err(|_| BAD)?;
        if lo == 0 || hi < lo {
            return Err(BAD);
        }
    }
    Ok(())
}

fn object<'a>(value: &'a mut Value, key: &str) -> Result<&'a mut Map<String, Value>, InjectError> {
    let map = value
        .as_object_mut()
        .ok_or_else(|| InjectError::Shape("it is not an object".into()))?;
    object_in(map, key)
}

fn object_in<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Map<String, Value>, InjectError> {
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry
        .as_object_mut()
        .ok_or_else(|| InjectError::Shape(format!("{key} is not a map")))
}

fn list<'a>(map: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, InjectError> {
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if entry.is_null() {
        *entry = Value::Array(Vec::new());
    }
    entry
        .as_array_mut()
        .ok_or_else(|| InjectError::Shape(format!("{key} is not a list")))
}

/// A container or volume as JSON with its name first, as people write them (k8s-openapi
/// serializes fields in alphabetical order).
fn name_first(object: impl serde::Serialize) -> Value {
    // Invariant: k8s-openapi objects always serialize to a JSON object.
    let Value::Object(fields) = serde_json::to_value(object).expect("a k8s object serializes")
    else {
        unreachable!("a k8s object serializes to a JSON object")
    };
    let mut ordered = Map::new();
    if let Some(name) = fields.get("name") {
        ordered.insert("name".into(), name.clone());
    }
    ordered.extend(fields.into_iter().filter(|(k, _)| k != "name"));
    Value::Object(ordered)
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..Default::default()
        }),
    }
}

fn http_probe(path: &str, period: i32, failures: i32, initial_delay: Option<i32>) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT.into()),
            ..Default::default()
        }),
        initial_delay_seconds: initial_delay,
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn proxy_container(config: &ProxyConfig, settings: &Settings) -> Container {
    let mut vars = vec![
        env_field("_MESH_POD_NAMESPACE", "metadata.namespace"),
        env_field("_MESH_POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env("MESH_PROXY_LOG", settings.log_level.clone()),
        env("MESH_PROXY_SHUTDOWN_DELAY", settings.shutdown_delay.clone()),
        env(
            "MESH_PROXY_INBOUND_ADDR",
            defaults::INBOUND_ADDR.to_string(),
        ),
        env(
            "MESH_PROXY_OUTBOUND_ADDR",
            defaults::OUTBOUND_ADDR.to_string(),
        ),
        env("MESH_PROXY_ADMIN_ADDR", defaults::ADMIN_ADDR.to_string()),
        env(
            "MESH_PROXY_DESTINATION_ADDR",
            config.service("mesh-destination", DESTINATION_PORT),
        ),
        env_field("MESH_PROXY_DESTINATION_NAMESPACE", "metadata.namespace"),
        env("MESH_PROXY_CLUSTER_DOMAIN", config.cluster_domain.clone()),
        // The proxy's own pod, for the labels of its side of tap events.
        env_field("MESH_PROXY_POD_NAME", "metadata.name"),
        env_field("MESH_PROXY_POD_NAMESPACE", "metadata.namespace"),
        // Who may call the ports no Server selects.
        env(
            "MESH_PROXY_INBOUND_DEFAULT_POLICY",
            settings.default_inbound_policy.as_str(),
        ),
        env(
            "MESH_PROXY_INBOUND_CLUSTER_NETWORKS",
            config.cluster_networks.clone(),
        ),
    ];
    if let Some(ports) = &settings.opaque_ports {
        vars.push(env("MESH_PROXY_INBOUND_OPAQUE_PORTS", ports.clone()));
        vars.push(env("MESH_PROXY_OUTBOUND_OPAQUE_PORTS", ports.clone()));
    }
    if let Some(ports) = &settings.codec_ports {
        vars.push(env("MESH_PROXY_INBOUND_CODEC_PORTS", ports.clone()));
    }
    if let Some(ports) = &settings.require_identity {
        vars.push(env(
            "MESH_PROXY_INBOUND_REQUIRE_IDENTITY_PORTS",
            ports.clone(),
        ));
    }
    vars.extend([
        env(
            "MESH_PROXY_IDENTITY_ADDR",
            config.service("mesh-identity", IDENTITY_PORT),
        ),
        env(
            "MESH_PROXY_IDENTITY_NAME",
            format!(
                "$(_MESH_POD_SERVICE_ACCOUNT).$(_MESH_POD_NAMESPACE).serviceaccount.identity.mesh.{}",
                config.trust_domain
            ),
        ),
        env(
            "MESH_PROXY_IDENTITY_TOKEN_FILE",
            format!("{TOKEN_DIR}/{IDENTITY_TOKEN_VOLUME}"),
        ),
        env("MESH_PROXY_IDENTITY_DIR", IDENTITY_DIR),
        env("MESH_PROXY_TRUST_ANCHORS", config.trust_anchors_pem.clone()),
    ]);
    let (startup_probe, restart_policy, lifecycle) = if settings.native {
        // The kubelet starts the next container only once the startup probe passes.
        (
            Some(http_probe("/ready", 1, 120, None)),
            Some("Always".to_string()),
            None,
        )
    } else {
        // The kubelet starts the next container only once the post-start hook returns.
        let await_ready = ExecAction {
            command: Some(vec![
                format!("{BIN_DIR}/mesh-await"),
                "--port".into(),
                ADMIN_PORT.to_string(),
                "--timeout".into(),
                "120".into(),
            ]),
        };
        let lifecycle = Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(await_ready),
                ..Default::default()
            }),
            ..Default::default()
        };
        (None, None, Some(lifecycle))
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(config.image()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        env: Some(vars),
        ports: Some(vec![
            ContainerPort {
                name: Some("mesh-proxy".into()),
                container_port: INBOUND_PORT.into(),
                ..Default::default()
            },
            ContainerPort {
                name: Some("mesh-admin".into()),
                container_port: ADMIN_PORT.into(),
                ..Default::default()
            },
        ]),
        startup_probe,
        readiness_probe: Some(http_probe("/ready", 10, 3, Some(2))),
        liveness_probe: Some(http_probe("/live", 10, 3, Some(10))),
        restart_policy,
        lifecycle,
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "10m"), ("memory", "20Mi")])),
            limits: Some(quantities(&[("memory", "250Mi")])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(PROXY_UID.into()),
            run_as_group: Some(PROXY_UID.into()),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![
            mount(IDENTITY_DIR_VOLUME, IDENTITY_DIR, false),
            mount(IDENTITY_TOKEN_VOLUME, TOKEN_DIR, true),
        ]),
        ..Default::default()
    }
}

fn init_container(config: &ProxyConfig, settings: &Settings) -> Container {
    // The admin port is never redirected: the kubelet probes it directly.
    let mut skip_inbound = ADMIN_PORT.to_string();
    if let Some(ports) = &settings.skip_inbound {
        skip_inbound = format!("{skip_inbound},{ports}");
    }
    let mut args = vec![
        "--proxy-uid".to_string(),
        PROXY_UID.to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--skip-inbound-ports".into(),
        skip_inbound,
    ];
    if let Some(ports) = &settings.skip_outbound {
        args.extend(["--skip-outbound-ports".to_string(), ports.clone()]);
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(config.image()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec![format!("{BIN_DIR}/mesh-init")]),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "10m"), ("memory", "10Mi")])),
            limits: Some(quantities(&[("memory", "50Mi")])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![mount(XTABLES_LOCK_VOLUME, "/run", false)]),
        ..Default::default()
    }
}

fn mesh_volumes() -> [Volume; 3] {
    [
        Volume {
            name: IDENTITY_DIR_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: None,
            }),
            ..Default::default()
        },
        Volume {
            name: IDENTITY_TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: None,
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(crate::identity::TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(86_400),
                        path: IDENTITY_TOKEN_VOLUME.into(),
                    }),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        },
        Volume {
            name: XTABLES_LOCK_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use serde_json::json;

    fn config() -> ProxyConfig {
        ProxyConfig::new("ghcr.io/mesh/proxy", "v0.1.0", "PEM")
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "metadata": {"labels": {"app": "web"}, "annotations": annotations},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "example/migrate:1"}],
                "containers": [{"name": "web", "image": "example/web:1"}],
                "serviceAccountName": "web",
            },
        })
    }

    fn names(v: &Value, list: &str) -> Vec<String> {
        v["spec"][list]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn env_of(v: &Value, list: &str) -> BTreeMap<String, String> {
        let proxy = v["spec"][list]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == PROXY_CONTAINER)
            .unwrap();
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_string(),
                    e["value"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    #[test]
    fn native_sidecar_goes_after_mesh_init_and_before_app_init_containers() {
        let mut v = pod(json!({}));
        let out = inject(&mut v, &BTreeMap::new(), &config()).unwrap();
        assert_eq!(out, Outcome::Injected);
        assert_eq!(
            names(&v, "initContainers"),
            ["mesh-init", "mesh-proxy", "migrate"]
        );
        assert_eq!(names(&v, "containers"), ["web"]);
        assert_eq!(v["spec"]["initContainers"][1]["restartPolicy"], "Always");
        assert!(v["spec"]["initContainers"][1]["startupProbe"].is_object());
        assert_eq!(
            v["metadata"]["annotations"][PROXY_VERSION_ANNOTATION],
            "v0.1.0"
        );
        // It is still a pod template the API accepts.
        let typed: PodTemplateSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(typed.spec.unwrap().volumes.unwrap().len(), 3);
        let env = env_of(&v, "initContainers");
        assert_eq!(
            env["MESH_PROXY_IDENTITY_NAME"],
            "$(_MESH_POD_SERVICE_ACCOUNT).$(_MESH_POD_NAMESPACE).serviceaccount.identity.mesh.cluster.local"
        );
        assert_eq!(
            env["MESH_PROXY_DESTINATION_ADDR"],
            "mesh-destination.mesh.svc.cluster.local:8086"
        );
        assert_eq!(env["MESH_PROXY_TRUST_ANCHORS"], "PEM");
    }

    #[test]
    fn regular_sidecar_goes_first_with_a_post_start_hook_and_mesh_init_last() {
        let mut v = pod(json!({NATIVE_SIDECAR_ANNOTATION: "disabled"}));
        inject(&mut v, &BTreeMap::new(), &config()).unwrap();
        assert_eq!(names(&v, "initContainers"), ["migrate", "mesh-init"]);
        assert_eq!(names(&v, "containers"), ["mesh-proxy", "web"]);
        let proxy = &v["spec"]["containers"][0];
        assert!(proxy["lifecycle"]["postStart"]["exec"].is_object());
        assert!(proxy.get("restartPolicy").is_none());
    }

    #[test]
    fn annotations_configure_the_proxy_and_mesh_init() {
        let mut v = pod(json!({
            OPAQUE_PORTS_ANNOTATION: "3306, 6379",
            CODEC_PORTS_ANNOTATION: " 6379=redis , 9090-9091=thrift,",
            SKIP_INBOUND_PORTS_ANNOTATION: "22",
            REQUIRE_IDENTITY_PORTS_ANNOTATION: "8080",
        }));
        let ns = BTreeMap::from([
            (
                SKIP_OUTBOUND_PORTS_ANNOTATION.to_string(),
                "25,8000-8100".to_string(),
            ),
            (PROXY_LOG_LEVEL_ANNOTATION.to_string(), "debug".to_string()),
        ]);
        inject(&mut v, &ns, &config()).unwrap();
        let env = env_of(&v, "initContainers");
        assert_eq!(env["MESH_PROXY_INBOUND_OPAQUE_PORTS"], "3306,6379");
        assert_eq!(env["MESH_PROXY_OUTBOUND_OPAQUE_PORTS"], "3306,6379");
        assert_eq!(
            env["MESH_PROXY_INBOUND_CODEC_PORTS"], "6379=redis,9090-9091=thrift",
            "normalized"
        );
        assert_eq!(env["MESH_PROXY_INBOUND_REQUIRE_IDENTITY_PORTS"], "8080");
        assert_eq!(env["MESH_PROXY_LOG"], "debug");
        assert_eq!(env["MESH_PROXY_SHUTDOWN_DELAY"], DEFAULT_SHUTDOWN_DELAY);
        let args: Vec<&str> = v["spec"]["initContainers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args
            .windows(2)
            .any(|w| w == ["--skip-inbound-ports", "4191,22"]));
        assert!(args
            .windows(2)
            .any(|w| w == ["--skip-outbound-ports", "25,8000-8100"]));
    }

    #[test]
    fn bad_annotations_are_errors_naming_them() {
        for (name, value) in [
            (OPAQUE_PORTS_ANNOTATION, "mysql"),
            (CODEC_PORTS_ANNOTATION, "6379=memcached"),
            (CODEC_PORTS_ANNOTATION, "redis"),
            (SKIP_INBOUND_PORTS_ANNOTATION, "0"),
            (SKIP_OUTBOUND_PORTS_ANNOTATION, "9000-8000"),
            (NATIVE_SIDECAR_ANNOTATION, "maybe"),
        ] {
            let mut v = pod(json!({name: value}));
            let before = v.clone();
            let e = inject(&mut v, &BTreeMap::new(), &config()).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
            assert_eq!(v, before, "nothing changes on error");
        }
    }

    #[test]
    fn skips_host_network_injected_and_disabled_pods() {
        let mut v = pod(json!({}));
        v["spec"]["hostNetwork"] = json!(true);
        let out = inject(&mut v.clone(), &BTreeMap::new(), &config()).unwrap();
        assert_eq!(out, Outcome::Skipped(Skip::HostNetwork));
        let mut v = pod(json!({INJECT_ANNOTATION: "disabled"}));
        let out = inject(&mut v, &BTreeMap::new(), &config()).unwrap();
        assert_eq!(out, Outcome::Skipped(Skip::Disabled));
        let mut v = pod(json!({}));
        inject(&mut v, &BTreeMap::new(), &config()).unwrap();
        let once = v.clone();
        let out = inject(&mut v, &BTreeMap::new(), &config()).unwrap();
        assert_eq!(out, Outcome::Skipped(Skip::AlreadyInjected));
        assert_eq!(v, once);
    }

    #[test]
    fn uninject_restores_the_template() {
        for native in ["enabled", "disabled"] {
            let mut original = pod(json!({NATIVE_SIDECAR_ANNOTATION: native}));
            original["spec"]
                .as_object_mut()
                .unwrap()
                .remove("initContainers");
            let mut v = original.clone();
            inject(&mut v, &BTreeMap::new(), &config()).unwrap();
            assert!(uninject(&mut v));
            assert_eq!(v, original);
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                serde_json::to_string(&original).unwrap(),
                "in the same order"
            );
            assert!(!uninject(&mut v));
        }
    }

    #[test]
    fn injection_is_wanted_by_the_pod_or_else_its_namespace() {
        let ns_on = BTreeMap::from([(INJECT_ANNOTATION.to_string(), "enabled".to_string())]);
        let on = json!({INJECT_ANNOTATION: "enabled"});
        let off = json!({INJECT_ANNOTATION: "disabled"});
        let none = json!({});
        assert!(wants_injection(on.as_object().unwrap(), &BTreeMap::new()));
        assert!(!wants_injection(off.as_object().unwrap(), &ns_on));
        assert!(wants_injection(none.as_object().unwrap(), &ns_on));
        assert!(!wants_injection(
            none.as_object().unwrap(),
            &BTreeMap::new()
        ));
    }

    #[test]
    fn sidecar_mode_follows_the_api_servers_version() {
        let native = |major, minor| SidecarMode::for_version(major, minor).native;
        assert!(!native("1", "28"));
        assert!(!native("1", "27+"));
        assert!(native("1", "29"));
        assert!(native("1", "30+"));
        assert!(native("2", "0"));
        assert!(!native("", "x"));
        assert!(SidecarMode::for_version("1", "28").reason.contains("1.28"));
        assert!(!SidecarMode::without_cluster(None).native);
        assert!(SidecarMode::without_cluster(Some(true)).native);
    }

    /// The default inbound policy: the pod's annotation, else its namespace's, else the
    /// install's; an invalid one is an error naming the annotation (the webhook then allows
    /// the pod without a proxy, with a warning), never a proxy that would refuse to start.
    #[test]
    fn the_default_inbound_policy_comes_from_the_pod_its_namespace_or_the_install() {
        let check = |own: Option<&str>, namespace: Option<&str>, install, expected: &str| {
            let annotations = match own {
                Some(v) => json!({DEFAULT_INBOUND_POLICY_ANNOTATION: v}),
                None => json!({}),
            };
            let inherited: BTreeMap<String, String> = namespace
                .map(|v| (DEFAULT_INBOUND_POLICY_ANNOTATION.to_string(), v.to_string()))
                .into_iter()
                .collect();
            let config = ProxyConfig {
                default_inbound_policy: install,
                ..config()
            };
            let mut v = pod(annotations);
            let got = match inject(&mut v, &inherited, &config) {
                Ok(_) => env_of(&v, "initContainers")["MESH_PROXY_INBOUND_DEFAULT_POLICY"].clone(),
                Err(e) => format!("error: {e}"),
            };
            assert_eq!(
                got, expected,
                "pod {own:?}, namespace {namespace:?}, install {install}"
            );
        };
        use DefaultPolicy::*;
        check(None, None, AllUnauthenticated, "all-unauthenticated");
        check(None, None, ClusterAuthenticated, "cluster-authenticated");
        check(None, Some("deny"), AllUnauthenticated, "deny");
        check(Some("audit"), Some("deny"), AllUnauthenticated, "audit");
        check(Some(" all-authenticated "), None, Deny, "all-authenticated");
        check(
            Some("cluster-unauthenticated"),
            None,
            Deny,
            "cluster-unauthenticated",
        );
        let refused =
            "error: annotation config.mesh.io/default-inbound-policy: \"allow\" is not a \
                       default inbound policy: use one of all-unauthenticated, all-authenticated, \
                       cluster-authenticated, cluster-unauthenticated, deny, audit";
        check(Some("allow"), None, Deny, refused);
        check(None, Some("allow"), Deny, refused);
        // The pod's own valid value wins over its namespace's invalid one.
        check(Some("deny"), Some("allow"), AllUnauthenticated, "deny");
    }

    #[test]
    fn the_cluster_networks_are_the_installs() {
        let mut v = pod(json!({}));
        let config = ProxyConfig {
            cluster_networks: "10.244.0.0/16,fd00::/8".into(),
            ..config()
        };
        inject(&mut v, &BTreeMap::new(), &config).unwrap();
        let env = env_of(&v, "initContainers");
        assert_eq!(
            env["MESH_PROXY_INBOUND_CLUSTER_NETWORKS"],
            "10.244.0.0/16,fd00::/8"
        );
        let mut v = pod(json!({}));
        inject(&mut v, &BTreeMap::new(), &self::config()).unwrap();
        assert_eq!(
            env_of(&v, "initContainers")["MESH_PROXY_INBOUND_CLUSTER_NETWORKS"],
            inbound::DEFAULT_CLUSTER_NETWORKS
        );
        for (list, expected) in [
            ("10.0.0.0/8", Ok("10.0.0.0/8")),
            (" 10.0.0.0/8 , 192.0.2.1 ", Ok("10.0.0.0/8,192.0.2.1/32")),
            (
                inbound::DEFAULT_CLUSTER_NETWORKS,
                Ok(inbound::DEFAULT_CLUSTER_NETWORKS),
            ),
            ("", Err("no network")),
            ("10.0.0.0/8,pods", Err("\"pods\" is not a network")),
        ] {
            match (cluster_networks(list), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{list:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{list:?}: {got}"),
                (got, want) => panic!("{list:?}: {got:?}, expected {want:?}"),
            }
        }
    }

    /// `config.mesh.io/codec-ports`: the pod's, else its namespace's, normalized for the
    /// proxy; none: no variable; an invalid one is an error naming the annotation and the entry.
    #[test]
    fn codec_ports_come_from_the_pod_or_its_namespace() {
        let check = |own: Option<&str>, namespace: Option<&str>, expected: Option<&str>| {
            let annotations = match own {
                Some(v) => json!({CODEC_PORTS_ANNOTATION: v}),
                None => json!({}),
            };
            let inherited: BTreeMap<String, String> = namespace
                .map(|v| (CODEC_PORTS_ANNOTATION.to_string(), v.to_string()))
                .into_iter()
                .collect();
            let mut v = pod(annotations);
            let got = match inject(&mut v, &inherited, &config()) {
                Ok(_) => env_of(&v, "initContainers")
                    .get("MESH_PROXY_INBOUND_CODEC_PORTS")
                    .cloned(),
                Err(e) => Some(format!("error: {e}")),
            };
            assert_eq!(
                got.as_deref(),
                expected,
                "pod {own:?}, namespace {namespace:?}"
            );
        };
        check(None, None, None);
        check(Some(""), None, None);
        check(Some("6379=redis"), None, Some("6379=redis"));
        check(None, Some("9090-9091 = thrift"), Some("9090-9091=thrift"));
        check(Some("6380=redis"), Some("6379=redis"), Some("6380=redis"));
        check(
            Some("6379=redis,6380=memcached"),
            None,
            Some(
                "error: annotation config.mesh.io/codec-ports: \"6379=redis,6380=memcached\" is \
                 not a list of PORT=CODEC entries (e.g. 6379=redis,9090-9091=thrift): \
                 \"6380=memcached\": unknown codec \"memcached\" (known: redis, thrift)",
            ),
        );
        check(
            None,
            Some("6379"),
            Some(
                "error: annotation config.mesh.io/codec-ports: \"6379\" is not a list of \
                 PORT=CODEC entries (e.g. 6379=redis,9090-9091=thrift): \"6379\": expected \
                 PORT=CODEC (6379=redis)",
            ),
        );
    }

    #[test]
    fn the_shutdown_delay_is_an_annotation_checked_as_a_duration() {
        let mut v = pod(json!({PROXY_SHUTDOWN_DELAY_ANNOTATION: "0s"}));
        inject(&mut v, &BTreeMap::new(), &config()).unwrap();
        assert_eq!(
            env_of(&v, "initContainers")["MESH_PROXY_SHUTDOWN_DELAY"],
            "0s"
        );
        let mut bad = pod(json!({PROXY_SHUTDOWN_DELAY_ANNOTATION: "five"}));
        let e = inject(&mut bad, &BTreeMap::new(), &config()).unwrap_err();
        assert!(e.to_string().contains("is not a duration"), "{e}");
    }
}
