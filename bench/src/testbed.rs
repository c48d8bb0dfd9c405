//! The pods the benchmark runs on, the processes in them, and where each scenario sends its load.
//!
//! ```text
//! client         (plain)  ──────────────────────────────────▶ server        app :8080 (plain)
//! client         (plain)  ─▶ haproxy 127.0.0.1:8081/8082 ────▶ server        app :8080
//! client-meshed  (proxy)  ─▶ outbound 4140 ──────────────────▶ server        app :8080
//! client-meshed  (proxy)  ─▶ outbound 4140 ─▶ inbound 4143 ──▶ server-meshed app :8080 (proxy)
//! client-mtls    (proxy)  ─▶ outbound 4140 ═▶ inbound 4143 ──▶ server-mtls   app :8080 (proxy)
//!                            (discovery by ClusterIP, mutual TLS, HTTP/2 between the proxies)
//! client         (plain)  ─▶ mutual-TLS handshakes ══════════▶ server-mtls   inbound / server :8443
//! ```
//!
//! The `control` pod runs the destination and identity controllers for the mTLS pair.
//!
//! Everything lives in one [`Cluster`] on `10.244.0.0/16`; dropping the testbed stops the
//! processes and servers, then the cluster removes the namespaces.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use mesh_cli::local::{
    service_yaml, Cluster, ControlOptions, ControlPlane, MeshOptions, Pod, Proxy,
};

use crate::haproxy::{self, Haproxy};
use crate::oha::Protocol;
use crate::resources::Watched;
use crate::server::{self, Server};

/// What carries the load between the client and the server application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Scenario {
    /// The baseline: an unmeshed client calls an unmeshed server.
    Direct,
    /// The client's outbound proxy only; the server is not meshed.
    OneHop,
    /// The client's outbound proxy and the server's inbound proxy.
    TwoHop,
    /// Two hops with identity: discovery, then mutual TLS and HTTP/2 between the proxies.
    TwoHopMtls,
    /// The peer: HAProxy in the client pod as a one-hop HTTP proxy.
    Haproxy,
}

impl Scenario {
    /// Every scenario, baseline first.
    pub const ALL: [Scenario; 5] = [
        Scenario::Direct,
        Scenario::OneHop,
        Scenario::TwoHop,
        Scenario::TwoHopMtls,
        Scenario::Haproxy,
    ];

    /// The scenario's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::OneHop => "1-hop",
            Scenario::TwoHop => "2-hop",
            Scenario::TwoHopMtls => "2-hop mTLS",
            Scenario::Haproxy => "haproxy",
        }
    }
}

/// Where one scenario's load generator runs, what it calls, and which proxies to measure.
pub struct Target<'a> {
    pub pod: &'a Pod,
    pub url: String,
    pub watched: Vec<Watched>,
}

/// The cluster with its four pods and everything running in them.
///
/// Fields drop in declaration order: processes and servers first, the cluster (and with it the
/// namespaces) last.
pub struct Testbed {
    haproxy: Haproxy,
    client_proxy: Proxy,
    server_proxy: Proxy,
    mtls_client_proxy: Proxy,
    mtls_server_proxy: Proxy,
    _servers: [Server; 3],
    control: ControlPlane,
    client: Pod,
    client_meshed: Pod,
    client_mtls: Pod,
    server: Pod,
    server_meshed: Pod,
    server_mtls: Pod,
    cluster: Cluster,
}

/// The mTLS server's service address (its proxies find it through discovery).
pub const MTLS_CLUSTER_IP: [u8; 4] = [10, 96, 0, 20];

impl Testbed {
    /// Builds the pods, starts the server application in both server pods, meshes the meshed
    /// ones (their proxies take `proxy_env`), and starts HAProxy in the client pod.
    pub fn start(haproxy_program: &Path, proxy_env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut cluster = Cluster::new("bench").context("creating the benchmark's cluster")?;
        let server = cluster.add_pod("server")?;
        let server_meshed = cluster.add_pod("server-meshed")?;
        let client = cluster.add_pod("client")?;
        let client_meshed = cluster.add_pod("client-meshed")?;
        let control_pod = cluster.add_pod("control")?;
        let server_mtls = cluster.add_pod("server-mtls")?;
        let client_mtls = cluster.add_pod("client-mtls")?;

        let servers = [
            Server::start(&server)?,
            Server::start(&server_meshed)?,
            Server::start(&server_mtls)?,
        ];
        let options = MeshOptions {
            env: proxy_env.to_vec(),
            ..MeshOptions::default()
        };
        let server_proxy = server_meshed
            .mesh(options.clone())
            .context("meshing the server pod")?;
        let client_proxy = client_meshed
            .mesh(options)
            .context("meshing the client pod")?;

        let control = ControlPlane::start(
            &control_pod,
            &cluster.log_dir().join("control"),
            &ControlOptions::default(),
        )
        .context("starting the control plane")?;
        control.write(
            "server-mtls.yaml",
            &service_yaml(
                "bench",
                "server-mtls",
                MTLS_CLUSTER_IP.into(),
                (server::PORT, server::PORT),
                &[],
                std::slice::from_ref(&server_mtls),
            ),
        )?;
        let enroll = |pod: &Pod, sa: &str| -> anyhow::Result<MeshOptions> {
            let mut options = control.enroll(pod, "bench", sa, &[])?;
            options.env.extend(proxy_env.iter().cloned());
            Ok(options)
        };
        let mtls_server_proxy = server_mtls
            .mesh(enroll(&server_mtls, "server")?)
            .context("meshing the mTLS server pod")?;
        client_mtls.route("10.96.0.0/12")?;
        let mtls_client_proxy = client_mtls
            .mesh(enroll(&client_mtls, "client")?)
            .context("meshing the mTLS client pod")?;
        let upstream = SocketAddr::from((server.ip, server::PORT));
        let haproxy = Haproxy::start(haproxy_program, &client, upstream, cluster.log_dir())
            .context("starting haproxy")?;
        Ok(Testbed {
            haproxy,
            client_proxy,
            server_proxy,
            mtls_client_proxy,
            mtls_server_proxy,
            _servers: servers,
            control,
            client,
            client_meshed,
            client_mtls,
            server,
            server_meshed,
            server_mtls,
            cluster,
        })
    }

    /// Where `scenario` sends its load when speaking `protocol`.
    pub fn target(&self, scenario: Scenario, protocol: Protocol) -> Target<'_> {
        let app = |pod: &Pod| format!("http://{}:{}/", pod.ip, server::PORT);
        let watch = |name: &str, pid: u32| Watched {
            name: name.to_string(),
            pid,
        };
        match scenario {
            Scenario::Direct => Target {
                pod: &self.client,
                url: app(&self.server),
                watched: Vec::new(),
            },
            Scenario::OneHop => Target {
                pod: &self.client_meshed,
                url: app(&self.server),
                watched: vec![watch("client proxy", self.client_proxy.pid())],
            },
            Scenario::TwoHop => Target {
                pod: &self.client_meshed,
                url: app(&self.server_meshed),
                watched: vec![
                    watch("client proxy", self.client_proxy.pid()),
                    watch("server proxy", self.server_proxy.pid()),
                ],
            },
            Scenario::TwoHopMtls => Target {
                pod: &self.client_mtls,
                url: format!(
                    "http://{}:{}/",
                    std::net::Ipv4Addr::from(MTLS_CLUSTER_IP),
                    server::PORT
                ),
                watched: vec![
                    watch("client proxy", self.mtls_client_proxy.pid()),
                    watch("server proxy", self.mtls_server_proxy.pid()),
                ],
            },
            Scenario::Haproxy => Target {
                pod: &self.client,
                url: format!(
                    "http://127.0.0.1:{}/",
                    match protocol {
                        Protocol::Http1 => haproxy::HTTP1_PORT,
                        Protocol::Http2 => haproxy::HTTP2_PORT,
                    }
                ),
                watched: vec![watch("haproxy", self.haproxy.pid())],
            },
        }
    }

    /// The unmeshed client pod, the meshed mTLS server pod and its proxy, the plain server pod,
    /// and the control plane: what the handshake benchmark needs.
    pub fn handshake_pods(&self) -> (&Pod, &Pod, &Proxy, &Pod, &ControlPlane) {
        (
            &self.client,
            &self.server_mtls,
            &self.mtls_server_proxy,
            &self.server,
            &self.control,
        )
    }

    /// The cluster's log folder (proxy logs, HAProxy's configuration and log).
    pub fn log_dir(&self) -> &Path {
        self.cluster.log_dir()
    }
}
