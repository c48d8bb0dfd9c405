//! The objects the in-process tests give the controllers' folder source: written atomically, so
//! a controller never reads half a file.

use std::net::SocketAddr;
use std::path::Path;

use base64::Engine as _;

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
