//! The mesh the observability suites watch: a control plane, Deployment `web` (pods `web-1`,
//! `web-2`, the test application behind Service `web-svc`) and Deployment `client`, all meshed
//! with discovery and identity; and a client that calls `web-svc` by name.

use std::net::{IpAddr, SocketAddr};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::BodyExt as _;
use mesh_cli::local::{
    require_root, service_yaml, Cluster, ControlOptions, ControlPlane, Pod, Proxy,
};

use crate::{fixtures, serve_app};

/// The name the client calls.
pub const SERVICE: &str = "web-svc.demo.svc.cluster.local";
/// `web-svc`'s ClusterIP (port 80).
pub const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
/// The web pods' application port.
pub const APP_PORT: u16 = 8080;

/// Service `web-svc` of namespace `demo` ([`CLUSTER_IP`], port 80 to [`APP_PORT`]) with `pods`
/// as its endpoints.
pub fn web_svc(pods: &[Pod]) -> String {
    service_yaml(
        "demo",
        "web-svc",
        CLUSTER_IP.into(),
        (80, APP_PORT),
        &[("app", "web")],
        pods,
    )
}

/// Serves the test app on `web` and meshes it as a pod of Deployment `web` (service account
/// `web`, identity from `control`): the app's thread and the proxy.
pub fn mesh_web(control: &ControlPlane, web: &Pod) -> (JoinHandle<anyhow::Result<()>>, Proxy) {
    let app = serve_app(web, APP_PORT, Duration::ZERO, &web.name).expect("web app");
    let opts = control
        .enroll_in(web, "demo", "web", &[("app", "web")], Some("web"))
        .expect("enroll web");
    (app, web.mesh(opts).expect("mesh web"))
}

/// Meshes `client` as Deployment `client` of namespace `demo` (service account `client`,
/// identity from `control`), resolving [`SERVICE`] to [`CLUSTER_IP`] and routing the Service
/// range through its link: the client pod of this mesh and of the chaos suites.
pub fn mesh_client(control: &ControlPlane, client: &Pod) -> Proxy {
    client
        .set_hosts(&[(IpAddr::from(CLUSTER_IP), SERVICE)])
        .expect("hosts file");
    client.route("10.96.0.0/12").expect("service route");
    let opts = control
        .enroll_in(
            client,
            "demo",
            "client",
            &[("app", "client")],
            Some("client"),
        )
        .expect("enroll client");
    client.mesh(opts).expect("mesh client")
}

/// The running mesh; dropping it ends every pod.
pub struct WebMesh {
    /// Mutable, for suites that add pods of their own.
    pub cluster: Cluster,
    pub control: ControlPlane,
    pub webs: Vec<Pod>,
    pub web_proxies: Vec<Proxy>,
    pub client: Pod,
    pub client_proxy: Proxy,
    /// A folder for the suite's files (the control plane's are in it too).
    pub dir: tempfile::TempDir,
    _apps: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl WebMesh {
    /// Starts it in a new cluster named `name`. Needs root.
    pub fn start(name: &str) -> WebMesh {
        require_root().expect("end-to-end tests need root and network namespaces");
        let mut cluster = Cluster::new(name).expect("cluster");
        let control_pod = cluster.add_pod("control").expect("control pod");
        let webs = vec![
            cluster.add_pod("web-1").expect("web-1"),
            cluster.add_pod("web-2").expect("web-2"),
        ];
        let client = cluster.add_pod("client").expect("client pod");
        let dir = tempfile::tempdir().expect("test folder");
        let control = ControlPlane::start(&control_pod, dir.path(), &ControlOptions::default())
            .expect("control plane");
        control
            .write("web-svc.yaml", &web_svc(&webs))
            .expect("service");
        let (apps, web_proxies) = webs.iter().map(|web| mesh_web(&control, web)).unzip();
        let client_proxy = mesh_client(&control, &client);
        WebMesh {
            cluster,
            control,
            webs,
            web_proxies,
            client,
            client_proxy,
            dir,
            _apps: apps,
        }
    }

    /// Sends `paths` in order from the client pod to `web-svc` over one HTTP/2 connection, as
    /// gRPC-shaped requests; returns each answer's status and grpc-status.
    pub fn send(&self, paths: Vec<&'static str>) -> Vec<(u16, Option<String>)> {
        self.client
            .run_in(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let mut h2 = fixtures::h2(SocketAddr::from((CLUSTER_IP, 80))).await;
                    let mut answers = Vec::new();
                    for path in paths {
                        let req = http::Request::get(format!("http://{SERVICE}{path}"))
                            .header("content-type", "application/grpc")
                            .body(http_body_util::Empty::new().boxed())?;
                        let rsp = h2.send_request(req).await?;
                        let status = rsp.status().as_u16();
                        let body = rsp.into_body().collect().await?;
                        let grpc = body
                            .trailers()
                            .and_then(|t| t.get("grpc-status"))
                            .map(|v| v.to_str().unwrap_or("?").to_string());
                        answers.push((status, grpc));
                    }
                    Ok(answers)
                })
            })
            .join()
            .expect("client thread")
            .expect("requests")
    }
}
