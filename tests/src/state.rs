//! The objects the in-process tests give the controllers' folder source: written atomically, so
//! a controller never reads half a file; and the destination controller reading them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use mesh_controller::{index::IndexConfig, source::Source, DestinationConfig};

use crate::fixtures::{self, eventually};

/// Writes `yaml` as `file` in `dir`, atomically (write, then rename).
pub fn write(dir: &Path, file: &str, yaml: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, yaml).expect("write the state");
    std::fs::rename(tmp, dir.join(file)).expect("rename the state");
}

/// The token Secret of service account `sa` in namespace `demo`.
pub fn token_secret(sa: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/service-account-token\n\
         metadata: {{name: {sa}-token, namespace: demo, annotations: {{kubernetes.io/service-account.name: {sa}}}}}\n\
         data: {{token: {}}}\n",
        base64::engine::general_purpose::STANDARD.encode(token)
    )
}

/// `web-svc` (ClusterIP 10.96.0.10, port 80) with one endpoint, `endpoint`, on the meshed pod
/// `web-0` of service account `web` in `demo`: its discovery record carries the identity
/// `web.demo.serviceaccount.identity.mesh.cluster.local`.
pub fn meshed_service(endpoint: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web-svc, namespace: demo}}\n\
         spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, targetPort: {port}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-svc-1, namespace: demo, labels: {{kubernetes.io/service-name: web-svc}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}}}]\n\
         endpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: web-0, namespace: demo}}}}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: demo}}\n\
         spec: {{serviceAccountName: web, containers: [{{name: app, image: app}}, {{name: mesh-proxy, image: proxy}}]}}\n\
         status: {{phase: Running, podIP: \"{ip}\"}}\n",
        port = endpoint.port(),
        ip = endpoint.ip(),
    )
}

/// One EndpointSlice of `web-svc` in `demo` per endpoint, each a document of its own (starting
/// with `---`): slice `web-svc-{i}` holds endpoint `i`, ready, on the pod `web-{i}`, at its own
/// port (test servers sharing the loopback interface each have their own).
pub fn web_svc_endpoint_slices(endpoints: &[SocketAddr]) -> String {
    let mut yaml = String::new();
    for (i, ep) in endpoints.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-svc-{i}, namespace: demo, labels: {{kubernetes.io/service-name: web-svc}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {}}}]\n\
             endpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: web-{i}, namespace: demo}}}}]\n",
            ep.port(),
            ep.ip()
        ));
    }
    yaml
}

/// Starts the destination controller on 127.0.0.1 with the folder `dir` as its source, and
/// waits (up to 10 s) until it answers `/ready`.
pub async fn destination_controller(dir: &Path) -> mesh_controller::Running {
    let running = mesh_controller::start(DestinationConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        source: Source::Dir(dir.to_path_buf()),
        index: IndexConfig::default(),
    })
    .await
    .expect("the controller starts");
    let ready = eventually(Duration::from_secs(10), || async {
        fixtures::get_h1(running.addr, "/ready").await.0 == 200
    })
    .await;
    assert!(ready, "the controller gets ready");
    running
}
