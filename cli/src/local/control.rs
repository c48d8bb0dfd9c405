//! The control plane of a local mesh: the destination and identity controllers in a pod, on a
//! folder of Kubernetes objects (the state folder), with a CA made fresh for the run.
//!
//! The state folder holds what a cluster's API server would: Services and EndpointSlices for
//! discovery, Pods (a meshed one has a `mesh-proxy` container and a service account, which
//! gives its identity), and a `kubernetes.io/service-account-token` Secret per service account,
//! whose token the pod's proxy presents for its certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use mesh_api::identity::{ca, Identity};
use mesh_api::inject::PROXY_VERSION_ANNOTATION;

use super::binary;
use super::cluster::Pod;
use super::proxy::{MeshOptions, PodIdentity};

/// The destination controller's port.
pub const DESTINATION_PORT: u16 = 8086;
/// The identity controller's port.
pub const IDENTITY_PORT: u16 = 8080;
/// The trust domain of the local mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The trust anchor's lifetime: longer than any local run.
const ANCHOR_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// The issuer's lifetime.
const ISSUER_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// How the controllers run.
#[derive(Clone, Debug, Default)]
pub struct ControlOptions {
    /// `mesh-controller identity --leaf-lifetime` (default: the controller's, 24 h).
    pub leaf_lifetime: Option<Duration>,
}

/// The controllers running in a pod. Dropping it stops them.
#[derive(Debug)]
pub struct ControlPlane {
    pod: Pod,
    state: PathBuf,
    trust_anchors_pem: String,
    issuer: ca::CertAndKey,
    destination: Child,
    identity: Child,
}

impl ControlPlane {
    /// Makes a CA and the state folder under `dir`, starts both controllers in `pod`, and
    /// waits until they serve.
    pub fn start(pod: &Pod, dir: &Path, opts: &ControlOptions) -> anyhow::Result<ControlPlane> {
        let state = dir.join("state");
        let ca_dir = dir.join("ca");
        for d in [&state, &ca_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let anchor = ca::new_trust_anchor(TRUST_DOMAIN, ANCHOR_LIFETIME)?;
        let issuer = ca::new_issuer(&anchor, TRUST_DOMAIN, ISSUER_LIFETIME)?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = ca_dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let anchors = write("trust-anchors.pem", &anchor.cert_pem)?;
        let issuer_cert = write("issuer.crt", &issuer.cert_pem)?;
        let issuer_key = write("issuer.key", &issuer.key_pem)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&issuer_key, std::fs::Permissions::from_mode(0o600))?;

        // The control pod's own object, as a cluster lists its controllers' pods.
        std::fs::write(
            state.join(format!("pod-mesh-{}.yaml", pod.name)),
            control_pod_yaml(pod),
        )
        .with_context(|| {
            format!(
                "writing the Pod object of {} in {}",
                pod.name,
                state.display()
            )
        })?;
        let source = format!("dir:{}", state.display());
        let log = |name: &str| std::fs::File::create(dir.join(name));
        let destination = pod
            .command(binary("mesh-controller")?)
            .args(["destination", "--listen"])
            .arg(format!("0.0.0.0:{DESTINATION_PORT}"))
            .args(["--source", &source])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("destination.log")?)
            .spawn()
            .context("starting mesh-controller destination")?;
        let mut identity_cmd = pod.command(binary("mesh-controller")?);
        identity_cmd
            .args(["identity", "--listen"])
            .arg(format!("0.0.0.0:{IDENTITY_PORT}"))
            .args(["--source", &source])
            .arg("--issuer-cert")
            .arg(&issuer_cert)
            .arg("--issuer-key")
            .arg(&issuer_key)
            .arg("--trust-anchors")
            .arg(&anchors)
            .args(["--trust-domain", TRUST_DOMAIN]);
        if let Some(lifetime) = opts.leaf_lifetime {
            identity_cmd
                .arg("--leaf-lifetime")
                .arg(format!("{}s", lifetime.as_secs().max(1)));
        }
        let identity = match identity_cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("identity.log")?)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                let mut destination = destination;
                let _ = destination.kill();
                let _ = destination.wait();
                return Err(e).context("starting mesh-controller identity");
            }
        };
        let mut control = ControlPlane {
            pod: pod.clone(),
            state,
            trust_anchors_pem: anchor.cert_pem,
            issuer,
            destination,
            identity,
        };
        let deadline = Duration::from_secs(20);
        pod.wait_http_ok(control.destination_addr(), "/ready", deadline)
            .map_err(|e| e.context(control.log_tail(dir, "destination.log")))?;
        control
            .wait_identity(deadline)
            .map_err(|e| e.context(control.log_tail(dir, "identity.log")))?;
        Ok(control)
    }

    fn log_tail(&self, dir: &Path, name: &str) -> String {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{name}:\n{}", tail.join("\n"))
    }

    /// Waits until the identity controller accepts connections (it binds only after it has
    /// loaded and checked its CA), or fails if it exits.
    fn wait_identity(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let addr = self.identity_addr();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.identity.try_wait()? {
                bail!("mesh-controller identity exited ({status})");
            }
            let connected = self
                .pod
                .run_in(move || {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
                    Ok(())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the connect thread panicked"))?;
            if connected.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the identity controller does not accept connections on {addr} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The destination controller, as pods reach it.
    pub fn destination_addr(&self) -> SocketAddr {
        SocketAddr::from((self.pod.ip, DESTINATION_PORT))
    }

    /// The identity controller, as pods reach it.
    pub fn identity_addr(&self) -> SocketAddr {
        SocketAddr::from((self.pod.ip, IDENTITY_PORT))
    }

    /// The trust anchor, PEM.
    pub fn trust_anchors_pem(&self) -> &str {
        &self.trust_anchors_pem
    }

    /// A certificate for `identity` from this control plane's issuer, with a fresh key: for
    /// clients the tests and benchmarks drive by hand. Returns the chain and the key, PEM.
    pub fn issue(
        &self,
        identity: &Identity,
        lifetime: Duration,
    ) -> anyhow::Result<(String, String)> {
        let signer = ca::Signer::from_pem(&self.issuer.cert_pem, &self.issuer.key_pem)?;
        let (issued, key) = signer.issue_with_key(&ca::LeafNames::identity(identity), lifetime)?;
        Ok((issued.chain_pem, key))
    }

    /// The folder both controllers read.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Writes `yaml` as `file` in the state folder, atomically (the controllers never see half).
    pub fn write(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.state.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.state.join(file))
            .with_context(|| format!("writing {file} in {}", self.state.display()))
    }

    /// Registers `pod` as a meshed Pod of `namespace` running as `service_account` with `labels`
    /// (its Pod object and its service account's token Secret), and returns the options that
    /// mesh it with discovery and identity. The pod belongs to no workload: see
    /// [`ControlPlane::enroll_in`].
    pub fn enroll(
        &self,
        pod: &Pod,
        namespace: &str,
        service_account: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<MeshOptions> {
        self.enroll_in(pod, namespace, service_account, labels, None)
    }

    /// [`ControlPlane::enroll`], with the pod owned by Deployment `deployment` the way Kubernetes
    /// does it: the Pod's controller is the ReplicaSet `<deployment>-<hash>` (label
    /// `pod-template-hash`), whose controller is the Deployment; both objects are written to the
    /// state folder (`deploy-<ns>-<deployment>.yaml`), so discovery labels the pod's endpoints
    /// `deployment=<deployment>` and `mesh viz` finds `deploy/<deployment>`.
    pub fn enroll_in(
        &self,
        pod: &Pod,
        namespace: &str,
        service_account: &str,
        labels: &[(&str, &str)],
        deployment: Option<&str>,
    ) -> anyhow::Result<MeshOptions> {
        if let Some(deployment) = deployment {
            self.write(
                &format!("deploy-{namespace}-{deployment}.yaml"),
                &deployment_yaml(namespace, deployment, labels),
            )?;
        }
        let identity = Identity::new(service_account, namespace, TRUST_DOMAIN)?;
        let token = ca::random_token();
        self.write(
            &format!("pod-{namespace}-{}.yaml", pod.name),
            &pod_yaml(pod, namespace, service_account, labels, deployment),
        )?;
        self.write(
            &format!("sa-{namespace}-{service_account}.yaml"),
            &token_secret_yaml(namespace, service_account, &token),
        )?;
        // The proxy's own pod, for the labels of its side of tap events.
        let mut env = vec![
            (
                "MESH_PROXY_DESTINATION_ADDR".to_string(),
                self.destination_addr().to_string(),
            ),
            ("MESH_PROXY_DESTINATION_NAMESPACE".into(), namespace.into()),
            ("MESH_PROXY_POD_NAME".into(), pod.name.clone()),
            ("MESH_PROXY_POD_NAMESPACE".into(), namespace.into()),
        ];
        if let Some(deployment) = deployment {
            env.push((
                "MESH_PROXY_WORKLOAD".into(),
                format!("deployment/{deployment}"),
            ));
        }
        Ok(MeshOptions {
            env,
            identity: Some(PodIdentity {
                name: identity.dns_name(),
                controller: self.identity_addr(),
                trust_anchors_pem: self.trust_anchors_pem.clone(),
                token,
            }),
            ..MeshOptions::default()
        })
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [&mut self.destination, &mut self.identity] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The annotation of a local Pod object that names its network namespace (`ip netns exec …`):
/// how `mesh viz` reaches the pod's proxy from the state folder alone.
pub const NETNS_ANNOTATION: &str = "mesh.io/local-netns";

/// The control pod's Pod object, in namespace `mesh` like a cluster's controllers: a container
/// per controller, whose image tag is the version of the binaries (this build's), the
/// destination controller's port, and the pod's network namespace ([`NETNS_ANNOTATION`]). What
/// `mesh version` and `mesh diagnostics` read to find the local control plane.
fn control_pod_yaml(pod: &Pod) -> String {
    let image = format!("mesh-controller:{}", crate::install::version());
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, \
         labels: {{app.kubernetes.io/part-of: mesh, mesh.io/control-plane-ns: {ns}}}, \
         annotations: {{{NETNS_ANNOTATION}: {netns}}}}}\n\
         spec: {{containers: [\
         {{name: destination, image: \"{image}\", ports: [{{name: grpc, containerPort: {DESTINATION_PORT}}}]}}, \
         {{name: identity, image: \"{image}\", ports: [{{name: grpc, containerPort: {IDENTITY_PORT}}}]}}]}}\n\
         status: {{phase: Running, podIP: \"{ip}\", podIPs: [{{ip: \"{ip}\"}}]}}\n",
        name = pod.name,
        ns = mesh_api::identity::CONTROL_PLANE_NAMESPACE,
        netns = pod.netns,
        ip = pod.ip,
    )
}

/// A Service (`<name>.<namespace>`, ClusterIP `cluster_ip`, port `port` → `target_port`,
/// selecting `selector`) and its one EndpointSlice with `pods` ready on `target_port`, as the
/// controllers' folder source reads them.
pub fn service_yaml(
    namespace: &str,
    name: &str,
    cluster_ip: std::net::Ipv4Addr,
    (port, target_port): (u16, u16),
    selector: &[(&str, &str)],
    pods: &[Pod],
) -> String {
    let selector: Vec<String> = selector.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{clusterIP: {cluster_ip}, selector: {{{selector}}}, ports: [{{name: http, port: {port}, targetPort: {target_port}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {target_port}}}]\nendpoints:",
        selector = selector.join(", "),
    );
    if pods.is_empty() {
        yaml.push_str(" []");
    }
    yaml.push('\n');
    for pod in pods {
        yaml.push_str(&format!(
            "- {{addresses: [\"{}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: {}, namespace: {namespace}}}}}\n",
            pod.ip, pod.name
        ));
    }
    yaml
}

/// A meshed Pod object: running, with its IP, a `mesh-proxy` container, its service account, its
/// network namespace ([`NETNS_ANNOTATION`]) and, with `deployment`, its ReplicaSet as owner.
pub fn pod_yaml(
    pod: &Pod,
    namespace: &str,
    service_account: &str,
    labels: &[(&str, &str)],
    deployment: Option<&str>,
) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let mut owners = String::new();
    if let Some(deployment) = deployment {
        let hash = template_hash(namespace, deployment);
        labels.push(format!("pod-template-hash: {hash}"));
        owners = format!(
            ", ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: {deployment}-{hash}, \
             uid: {}, controller: true, blockOwnerDeletion: true}}]",
            uid("rs", namespace, deployment)
        );
    }
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}, \
         annotations: {{{NETNS_ANNOTATION}: {netns}, {PROXY_VERSION_ANNOTATION}: {version}}}{owners}}}\n\
         spec: {{serviceAccountName: {service_account}, containers: [{{name: app, image: app}}, {{name: mesh-proxy, image: mesh-proxy}}]}}\n\
         status: {{phase: Running, podIP: \"{ip}\", podIPs: [{{ip: \"{ip}\"}}]}}\n",
        name = pod.name,
        labels = labels.join(", "),
        netns = pod.netns,
        ip = pod.ip,
        // The proxies are this build's binaries.
        version = crate::install::version(),
    )
}

/// A Deployment and its ReplicaSet `<deployment>-<hash>` (owned by it), selecting `labels`.
pub fn deployment_yaml(namespace: &str, deployment: &str, labels: &[(&str, &str)]) -> String {
    let hash = template_hash(namespace, deployment);
    let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let selector = selector.join(", ");
    let template = |extra: &str| {
        format!("{{metadata: {{labels: {{{selector}{extra}}}}}, spec: {{containers: [{{name: app, image: app}}]}}}}")
    };
    let rs_extra = if selector.is_empty() {
        format!("pod-template-hash: {hash}")
    } else {
        format!(", pod-template-hash: {hash}")
    };
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {deployment}, namespace: {namespace}, uid: {deploy_uid}}}\n\
         spec: {{selector: {{matchLabels: {{{selector}}}}}, template: {template}}}\n---\n\
         apiVersion: apps/v1\nkind: ReplicaSet\n\
         metadata: {{name: {deployment}-{hash}, namespace: {namespace}, uid: {rs_uid}, labels: {{{rs_labels}}}, \
         ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: {deployment}, uid: {deploy_uid}, controller: true, blockOwnerDeletion: true}}]}}\n\
         spec: {{selector: {{matchLabels: {{{rs_labels}}}}}, template: {rs_template}}}\n",
        deploy_uid = uid("deploy", namespace, deployment),
        rs_uid = uid("rs", namespace, deployment),
        template = template(""),
        rs_labels = format!("{selector}{rs_extra}"),
        rs_template = template(&rs_extra),
    )
}

/// The `pod-template-hash` of a local Deployment: stable per name, in the alphabet Kubernetes
/// uses for it (no vowels, so it never spells a word).
fn template_hash(namespace: &str, deployment: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = fnv1a(&format!("{namespace}/{deployment}"));
    (0..10)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// A stable uid for a local object (the state folder is rewritten on every run).
fn uid(kind: &str, namespace: &str, name: &str) -> String {
    let h = fnv1a(&format!("{kind}/{namespace}/{name}"));
    format!("00000000-0000-4000-8000-{:012x}", h & 0xffff_ffff_ffff)
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A service account's token Secret, as the identity controller's folder source reads it.
pub fn token_secret_yaml(namespace: &str, service_account: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/service-account-token\n\
         metadata:\n  name: {service_account}-token\n  namespace: {namespace}\n  \
         annotations: {{kubernetes.io/service-account.name: {service_account}}}\n\
         data: {{token: {}}}\n",
        base64::engine::general_purpose::STANDARD.encode(token)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::Pod as PodObject;

    fn pod() -> Pod {
        Pod {
            name: "web-1".into(),
            netns: "mesh-1-0-demo-web-1".into(),
            ip: std::net::Ipv4Addr::new(10, 244, 0, 3),
            log_dir: Default::default(),
        }
    }

    #[test]
    fn pods_name_their_netns_and_owner_chain() {
        let yaml = pod_yaml(&pod(), "demo", "web", &[("app", "web")], Some("web"));
        let object: PodObject = serde_yaml_ng::from_str(&yaml).expect("a Pod");
        let meta = &object.metadata;
        assert_eq!(
            meta.annotations.as_ref().unwrap()[NETNS_ANNOTATION],
            "mesh-1-0-demo-web-1"
        );
        let hash = meta.labels.as_ref().unwrap()["pod-template-hash"].clone();
        assert_eq!(hash.len(), 10);
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.clone(), owner.controller),
            ("ReplicaSet", format!("web-{hash}"), Some(true))
        );

        let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&deployment_yaml(
            "demo",
            "web",
            &[("app", "web")],
        ))
        .map(|d| serde::Deserialize::deserialize(d).expect("a document"))
        .collect();
        let deploy: Deployment = serde_json::from_value(docs[0].clone()).expect("a Deployment");
        let rs: ReplicaSet = serde_json::from_value(docs[1].clone()).expect("a ReplicaSet");
        assert_eq!(rs.metadata.name, Some(owner.name.clone()));
        assert_eq!(rs.metadata.uid.as_ref(), Some(&owner.uid));
        let rs_owner = &rs.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (rs_owner.kind.as_str(), rs_owner.name.as_str()),
            ("Deployment", "web")
        );
        assert_eq!(deploy.metadata.uid.as_ref(), Some(&rs_owner.uid));
    }

    #[test]
    fn the_control_pod_names_its_controllers_version_and_netns() {
        let object: PodObject = serde_yaml_ng::from_str(&control_pod_yaml(&pod())).expect("a Pod");
        assert_eq!(object.metadata.namespace.as_deref(), Some("mesh"));
        let containers = object.spec.expect("a spec").containers;
        let image = format!("mesh-controller:{}", crate::install::version());
        assert_eq!(containers[0].name, "destination");
        assert_eq!(containers[0].image.as_deref(), Some(image.as_str()));
        assert_eq!(
            containers[0].ports.as_ref().unwrap()[0].container_port,
            8086
        );
        assert_eq!(
            object.metadata.annotations.unwrap()[NETNS_ANNOTATION],
            "mesh-1-0-demo-web-1"
        );
    }

    #[test]
    fn pods_without_a_deployment_have_no_owner() {
        let yaml = pod_yaml(&pod(), "demo", "client", &[], None);
        let object: PodObject = serde_yaml_ng::from_str(&yaml).expect("a Pod");
        assert!(object.metadata.owner_references.is_none());
        assert!(object.metadata.labels.unwrap_or_default().is_empty());
    }

    #[test]
    fn services_are_a_service_and_its_endpoint_slice() {
        use k8s_openapi::api::core::v1::Service;
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let parse = |yaml: &str| -> Vec<serde_json::Value> {
            serde_yaml_ng::Deserializer::from_str(yaml)
                .map(|d| serde::Deserialize::deserialize(d).expect("a document"))
                .collect()
        };
        let ip = std::net::Ipv4Addr::new(10, 96, 0, 10);
        let yaml = service_yaml(
            "demo",
            "web-svc",
            ip,
            (80, 8080),
            &[("app", "web")],
            &[pod()],
        );
        let docs = parse(&yaml);
        let svc: Service = serde_json::from_value(docs[0].clone()).expect("a Service");
        let spec = svc.spec.expect("a spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert_eq!(spec.selector.expect("a selector")["app"], "web");
        let slice: EndpointSlice = serde_json::from_value(docs[1].clone()).expect("a slice");
        assert_eq!(slice.endpoints.len(), 1);
        assert_eq!(slice.endpoints[0].addresses, vec!["10.244.0.3".to_string()]);
        assert_eq!(
            slice.metadata.labels.expect("labels")["kubernetes.io/service-name"],
            "web-svc"
        );

        let empty = service_yaml("demo", "web-svc", ip, (80, 8080), &[], &[]);
        let slice: EndpointSlice =
            serde_json::from_value(parse(&empty)[1].clone()).expect("a slice");
        assert!(slice.endpoints.is_empty());
    }

    #[test]
    fn template_hashes_are_stable_and_distinct() {
        assert_eq!(template_hash("demo", "web"), template_hash("demo", "web"));
        assert_ne!(template_hash("demo", "web"), template_hash("demo", "emoji"));
    }
}
