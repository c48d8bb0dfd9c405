//! The control plane of a local mesh: the destination and identity controllers in a pod, on a
//! folder of Kubernetes objects (the state folder), with a CA made fresh for the run.
//!
//! The state folder holds what a cluster's API server would: Services and EndpointSlices for
//! discovery, Pods (a meshed one has a `mesh-proxy` container and a service account, which
//! gives its identity), and a `kubernetes.io/service-account-token` Secret per service account,
//! whose token the pod's proxy presents for its certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
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
    /// The folder `start` was given: `state/`, `ca/` and the controllers' logs.
    dir: PathBuf,
    state: PathBuf,
    leaf_lifetime: Option<Duration>,
    /// The trust anchors the proxies are given, PEM: the anchor, then the next one if any.
    trust_anchors_pem: String,
    issuer: ca::CertAndKey,
    /// The issuer under the next trust anchor, which [`ControlPlane::rotate_issuer`] switches to.
    next_issuer: Option<ca::CertAndKey>,
    /// Each service account's token, by namespace and name: every pod of an account presents
    /// the same one, as pods mounting the account's token Secret do.
    tokens: Mutex<HashMap<(String, String), String>>,
    destination: Child,
    identity: Child,
}

impl ControlPlane {
    /// Makes a CA and the state folder under `dir`, starts both controllers in `pod`, and
    /// waits until they serve.
    pub fn start(pod: &Pod, dir: &Path, opts: &ControlOptions) -> anyhow::Result<ControlPlane> {
        let state = dir.join("state");
        for d in [&state, &dir.join("ca")] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let anchor = ca::new_trust_anchor(TRUST_DOMAIN, ANCHOR_LIFETIME)?;
        let issuer = ca::new_issuer(&anchor, TRUST_DOMAIN, ISSUER_LIFETIME)?;
        write_ca_file(dir, "trust-anchors.pem", &anchor.cert_pem)?;
        write_ca_file(dir, "issuer.crt", &issuer.cert_pem)?;
        write_ca_file(dir, "issuer.key", &issuer.key_pem)?;

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
        let destination = spawn_destination(pod, dir, &state)?;
        let identity = match spawn_identity(pod, dir, &state, opts.leaf_lifetime) {
            Ok(child) => child,
            Err(e) => {
                let mut destination = destination;
                let _ = destination.kill();
                let _ = destination.wait();
                return Err(e);
            }
        };
        let mut control = ControlPlane {
            pod: pod.clone(),
            dir: dir.to_path_buf(),
            state,
            leaf_lifetime: opts.leaf_lifetime,
            trust_anchors_pem: anchor.cert_pem,
            issuer,
            next_issuer: None,
            tokens: Mutex::default(),
            destination,
            identity,
        };
        control.wait_destination()?;
        control.wait_identity_up()?;
        Ok(control)
    }

    /// Kills the destination controller (SIGKILL, as a crash), leaves it down for `outage`, and
    /// starts it again on the same state folder; returns once it serves. Proxies keep what they
    /// last resolved and reconnect.
    pub fn restart_destination(&mut self, outage: Duration) -> anyhow::Result<()> {
        let _ = self.destination.kill();
        let _ = self.destination.wait();
        std::thread::sleep(outage);
        self.destination = spawn_destination(&self.pod, &self.dir, &self.state)?;
        self.wait_destination()
    }

    /// Kills the identity controller (SIGKILL, as a crash), leaves it down for `outage`, and
    /// starts it again with the CA files of `ca/` (the current issuer); returns once it accepts
    /// connections. Proxies keep their certificates and retry their renewals.
    pub fn restart_identity(&mut self, outage: Duration) -> anyhow::Result<()> {
        let _ = self.identity.kill();
        let _ = self.identity.wait();
        std::thread::sleep(outage);
        self.identity = spawn_identity(&self.pod, &self.dir, &self.state, self.leaf_lifetime)?;
        self.wait_identity_up()
    }

    /// Prepares a trust-anchor rotation: makes a second trust anchor and an issuer under it, and
    /// adds the anchor to the bundle (`ca/trust-anchors.pem` and what [`ControlPlane::enroll`]
    /// gives proxies from now on), so proxies trust both chains from the start. The identity
    /// controller keeps signing with the current issuer until [`ControlPlane::rotate_issuer`].
    pub fn add_next_trust_anchor(&mut self) -> anyhow::Result<()> {
        if self.next_issuer.is_some() {
            bail!("a next trust anchor is already prepared");
        }
        let anchor = ca::new_trust_anchor(TRUST_DOMAIN, ANCHOR_LIFETIME)?;
        let issuer = ca::new_issuer(&anchor, TRUST_DOMAIN, ISSUER_LIFETIME)?;
        let bundle = trust_bundle(&self.trust_anchors_pem, &anchor.cert_pem);
        write_ca_file(&self.dir, "trust-anchors.pem", &bundle)?;
        self.trust_anchors_pem = bundle;
        self.next_issuer = Some(issuer);
        Ok(())
    }

    /// Switches the identity controller to the issuer under the next trust anchor (see
    /// [`ControlPlane::add_next_trust_anchor`]): writes it to `ca/` and restarts the controller,
    /// which signs every certificate from then on under the new anchor. Proxies renew onto the
    /// new chain on their schedule; certificates already issued stay valid under the old anchor.
    pub fn rotate_issuer(&mut self) -> anyhow::Result<()> {
        let Some(next) = self.next_issuer.take() else {
            bail!("no next trust anchor: call add_next_trust_anchor first");
        };
        write_ca_file(&self.dir, "issuer.crt", &next.cert_pem)?;
        write_ca_file(&self.dir, "issuer.key", &next.key_pem)?;
        self.issuer = next;
        self.restart_identity(Duration::ZERO)
    }

    fn wait_destination(&self) -> anyhow::Result<()> {
        self.pod
            .wait_http_ok(self.destination_addr(), "/ready", START_TIMEOUT)
            .map_err(|e| e.context(self.log_tail(&self.dir, "destination.log")))
    }

    fn wait_identity_up(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        self.wait_identity(START_TIMEOUT)
            .map_err(|e| e.context(self.log_tail(&dir, "identity.log")))
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
        self.write(
            &format!("pod-{namespace}-{}.yaml", pod.name),
            &pod_yaml(pod, namespace, service_account, labels, deployment),
        )?;
        // The account's token: made, and its Secret written, by the first pod enrolled with it;
        // a new token would refuse the renewals of the account's pods enrolled before.
        let token = {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            let key = (namespace.to_string(), service_account.to_string());
            match tokens.get(&key) {
                Some(token) => token.clone(),
                None => {
                    let token = ca::random_token();
                    self.write(
                        &format!("sa-{namespace}-{service_account}.yaml"),
                        &token_secret_yaml(namespace, service_account, &token),
                    )?;
                    tokens.insert(key, token.clone());
                    token
                }
            }
        };
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

/// How long a controller may take to serve after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `mesh-controller destination` in `pod` on the state folder, its log appended to
/// `dir/destination.log`.
fn spawn_destination(pod: &Pod, dir: &Path, state: &Path) -> anyhow::Result<Child> {
    pod.command(binary("mesh-controller")?)
        .args(["destination", "--listen"])
        .arg(format!("0.0.0.0:{DESTINATION_PORT}"))
        .args(["--source", &format!("dir:{}", state.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(append_log(dir, "destination.log")?)
        .spawn()
        .context("starting mesh-controller destination")
}

/// Starts `mesh-controller identity` in `pod` with the CA files of `dir/ca`, its log appended to
/// `dir/identity.log`.
fn spawn_identity(
    pod: &Pod,
    dir: &Path,
    state: &Path,
    leaf_lifetime: Option<Duration>,
) -> anyhow::Result<Child> {
    let ca_dir = dir.join("ca");
    let mut cmd = pod.command(binary("mesh-controller")?);
    cmd.args(["identity", "--listen"])
        .arg(format!("0.0.0.0:{IDENTITY_PORT}"))
        .args(["--source", &format!("dir:{}", state.display())])
        .arg("--issuer-cert")
        .arg(ca_dir.join("issuer.crt"))
        .arg("--issuer-key")
        .arg(ca_dir.join("issuer.key"))
        .arg("--trust-anchors")
        .arg(ca_dir.join("trust-anchors.pem"))
        .args(["--trust-domain", TRUST_DOMAIN]);
    if let Some(lifetime) = leaf_lifetime {
        cmd.arg("--leaf-lifetime")
            .arg(format!("{}s", lifetime.as_secs().max(1)));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(append_log(dir, "identity.log")?)
        .spawn()
        .context("starting mesh-controller identity")
}

fn append_log(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Writes one file of `dir/ca` atomically (a restarting controller never reads half of it),
/// readable by its owner only (it may be a key).
fn write_ca_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("ca").join(name);
    let tmp = dir.join("ca").join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// A PEM bundle of `anchors` followed by `next`.
fn trust_bundle(anchors: &str, next: &str) -> String {
    let mut bundle = anchors.trim_end().to_string();
    bundle.push('\n');
    bundle.push_str(next.trim_end());
    bundle.push('\n');
    bundle
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
    fn the_next_trust_anchor_joins_the_bundle_after_the_first() {
        let first = ca::new_trust_anchor(TRUST_DOMAIN, ANCHOR_LIFETIME).unwrap();
        let next = ca::new_trust_anchor(TRUST_DOMAIN, ANCHOR_LIFETIME).unwrap();
        let bundle = trust_bundle(&first.cert_pem, &next.cert_pem);
        let certs = ca::certs_from_pem(&bundle, "the bundle").unwrap();
        let expect = |pem: &str| ca::certs_from_pem(pem, "an anchor").unwrap().remove(0);
        assert_eq!(certs, vec![expect(&first.cert_pem), expect(&next.cert_pem)]);
        // A leaf of the next anchor's issuer verifies against the bundle, as proxies check it.
        let issuer = ca::new_issuer(&next, TRUST_DOMAIN, ISSUER_LIFETIME).unwrap();
        let signer = ca::Signer::from_pem(&issuer.cert_pem, &issuer.key_pem).unwrap();
        let id = Identity::new("web", "demo", TRUST_DOMAIN).unwrap();
        let (leaf, _) = signer
            .issue_with_key(&ca::LeafNames::identity(&id), Duration::from_secs(60))
            .unwrap();
        let chain = ca::certs_from_pem(&leaf.chain_pem, "the chain").unwrap();
        let now = std::time::SystemTime::now();
        ca::verify_chain(&chain, &certs, &id.dns_name(), now).unwrap();
        assert!(ca::verify_chain(&chain, &certs[..1], &id.dns_name(), now).is_err());
    }

    #[test]
    fn template_hashes_are_stable_and_distinct() {
        assert_eq!(template_hash("demo", "web"), template_hash("demo", "web"));
        assert_ne!(template_hash("demo", "web"), template_hash("demo", "emoji"));
    }
}
