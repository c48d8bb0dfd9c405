//! The pods the benchmark runs on, the processes in them, and where each scenario sends its load.
//!
//! ```text
//! client         (plain)  ──────────────────────────────────▶ server        app :8080 (plain)
//! client         (plain)  ─▶ haproxy 127.0.0.1:8081/8082 ────▶ server        app :8080
//! client         (plain)  ─▶ haproxy nbthread 1 :8083/8084 ──▶ server        app :8080
//! client-meshed  (proxy)  ─▶ outbound 4140 ──────────────────▶ server        app :8080
//! client-meshed  (proxy)  ─▶ outbound 4140 ─▶ inbound 4143 ──▶ server-meshed app :8080 (proxy)
//! client-mtls    (proxy)  ─▶ outbound 4140 ═▶ inbound 4143 ──▶ server-mtls   app :8080 (proxy)
//!                            (discovery by ClusterIP, mutual TLS, HTTP/2 between the proxies)
//! client         (plain)  ─▶ mutual-TLS handshakes ══════════▶ server-mtls   inbound / server :8443
//! ```
//!
//! With the pre-rebuild proxy (`--baseline-proxy`), four more pods run it in the same roles, for
//! the "(before)" scenarios: `client-before` (to `server`, and to `server-before`) and the mTLS
//! pair `client-mtls-before` → `server-mtls-before` (its own ClusterIP).
//!
//! The `control` pod runs the destination and identity controllers for the mTLS pairs.
//!
//! With the redis part, two more pods serve its codec scenarios (see [`CodecPods`]):
//! `client-codec`, meshed with discovery and identity, calls Redis through Services whose port
//! says `appProtocol: mesh.io/redis`, one at [`REDIS_CODEC_CLUSTER_IP`] in front of the plain
//! `server` pod and one at [`REDIS_CODEC_MESHED_CLUSTER_IP`] in front of `server-codec`, whose
//! proxy decodes Redis inbound (`MESH_PROXY_INBOUND_CODEC_PORTS=6379=redis`).
//!
//! Everything lives in one [`Cluster`] on `10.244.0.0/16`; dropping the testbed stops the
//! processes and servers, then the cluster removes the namespaces.

use std::net::{Ipv4Addr, SocketAddr};
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
    /// [`Scenario::OneHop`] with the pre-rebuild proxy.
    OneHopBefore,
    /// The client's outbound proxy and the server's inbound proxy.
    TwoHop,
    /// [`Scenario::TwoHop`] with the pre-rebuild proxy on both sides.
    TwoHopBefore,
    /// Two hops with identity: discovery, then mutual TLS and HTTP/2 between the proxies.
    TwoHopMtls,
    /// [`Scenario::TwoHopMtls`] with the pre-rebuild proxy on both sides.
    TwoHopMtlsBefore,
    /// The peer: HAProxy in the client pod as a one-hop HTTP proxy, one thread per core.
    Haproxy,
    /// The same HAProxy with one thread (`nbthread 1`), like the mesh proxy's one worker.
    HaproxyOneThread,
}

impl Scenario {
    /// Every scenario, baseline first, each pre-rebuild one right after its current one.
    pub const ALL: [Scenario; 9] = [
        Scenario::Direct,
        Scenario::OneHop,
        Scenario::OneHopBefore,
        Scenario::TwoHop,
        Scenario::TwoHopBefore,
        Scenario::TwoHopMtls,
        Scenario::TwoHopMtlsBefore,
        Scenario::Haproxy,
        Scenario::HaproxyOneThread,
    ];

    /// The scenarios of the connection-count runs (HTTP/1.1 at the fixed rate with many
    /// connections): the mTLS pairs are left out to keep the run short.
    pub const CONNECTIONS: [Scenario; 7] = [
        Scenario::Direct,
        Scenario::OneHop,
        Scenario::OneHopBefore,
        Scenario::TwoHop,
        Scenario::TwoHopBefore,
        Scenario::Haproxy,
        Scenario::HaproxyOneThread,
    ];

    /// The scenario's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::OneHop => "1-hop",
            Scenario::OneHopBefore => "1-hop (before)",
            Scenario::TwoHop => "2-hop",
            Scenario::TwoHopBefore => "2-hop (before)",
            Scenario::TwoHopMtls => "2-hop mTLS",
            Scenario::TwoHopMtlsBefore => "2-hop mTLS (before)",
            Scenario::Haproxy => "haproxy",
            Scenario::HaproxyOneThread => "haproxy nbthread 1",
        }
    }

    /// The same path through the pre-rebuild proxy, for the mesh proxy's scenarios.
    pub fn before(self) -> Option<Scenario> {
        match self {
            Scenario::OneHop => Some(Scenario::OneHopBefore),
            Scenario::TwoHop => Some(Scenario::TwoHopBefore),
            Scenario::TwoHopMtls => Some(Scenario::TwoHopMtlsBefore),
            _ => None,
        }
    }

    /// Whether the scenario runs the pre-rebuild proxy.
    pub fn is_before(self) -> bool {
        matches!(
            self,
            Scenario::OneHopBefore | Scenario::TwoHopBefore | Scenario::TwoHopMtlsBefore
        )
    }
}

/// Where one scenario's load generator runs, what it calls, and which proxies to measure.
pub struct Target<'a> {
    pub pod: &'a Pod,
    pub url: String,
    pub watched: Vec<Watched>,
}

/// The cluster with its pods and everything running in them.
///
/// Fields drop in declaration order: processes and servers first, the cluster (and with it the
/// namespaces) last.
pub struct Testbed {
    haproxy: Haproxy,
    haproxy_one_thread: Haproxy,
    client_proxy: Proxy,
    server_proxy: Proxy,
    mtls_client_proxy: Proxy,
    mtls_server_proxy: Proxy,
    before: Option<Before>,
    codec: Option<Codec>,
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

/// The pods of the pre-rebuild proxy, in the roles of the current one's.
struct Before {
    client_proxy: Proxy,
    server_proxy: Proxy,
    mtls_client_proxy: Proxy,
    mtls_server_proxy: Proxy,
    _servers: [Server; 2],
    client: Pod,
    client_mtls: Pod,
    server: Pod,
}

/// The pods of the redis part's codec scenarios: a client meshed with discovery and identity,
/// and a meshed server whose proxy decodes Redis on [`REDIS_PORT`] inbound.
struct Codec {
    client_proxy: Proxy,
    server_proxy: Proxy,
    client: Pod,
    server: Pod,
}

/// The pods and processes the redis part uses: the server pod (where redis-server runs), the
/// unmeshed client pod (redis-benchmark direct, and nutcracker), the meshed client pods with
/// their proxy's pid, and the codec scenarios' pods when the testbed has them.
pub struct RedisPods<'a> {
    pub server: &'a Pod,
    pub client: &'a Pod,
    pub meshed: (&'a Pod, u32),
    pub before: Option<(&'a Pod, u32)>,
    pub codec: Option<CodecPods<'a>>,
}

/// The codec scenarios' pods, their proxies, and the Services (with `appProtocol:
/// mesh.io/redis` on port [`REDIS_PORT`]) that redis-benchmark calls.
pub struct CodecPods<'a> {
    /// Meshed with discovery and identity: its outbound proxy decodes what it sends to the
    /// Services.
    pub client: &'a Pod,
    pub client_proxy: &'a Proxy,
    /// Meshed with identity and `MESH_PROXY_INBOUND_CODEC_PORTS=6379=redis`; redis-server runs
    /// here for the two-hop scenario.
    pub server: &'a Pod,
    pub server_proxy: &'a Proxy,
    /// The Service in front of the plain `server` pod (one hop).
    pub one_hop: SocketAddr,
    /// The Service in front of [`CodecPods::server`] (two hops, mutual TLS).
    pub two_hop: SocketAddr,
}

/// The mTLS server's service address (its proxies find it through discovery).
pub const MTLS_CLUSTER_IP: [u8; 4] = [10, 96, 0, 20];
/// The pre-rebuild mTLS server's service address.
pub const MTLS_BEFORE_CLUSTER_IP: [u8; 4] = [10, 96, 0, 21];
/// The Redis Service in front of the plain server pod, for the codec's one hop.
pub const REDIS_CODEC_CLUSTER_IP: [u8; 4] = [10, 96, 0, 30];
/// The Redis Service in front of the meshed `server-codec` pod, for the codec's two hops.
pub const REDIS_CODEC_MESHED_CLUSTER_IP: [u8; 4] = [10, 96, 0, 31];
/// The Redis port: the Services', and redis-server's in the server pods.
pub const REDIS_PORT: u16 = 6379;

/// HAProxy with its default threads.
const HAPROXY: haproxy::Setup = haproxy::Setup {
    threads: None,
    ports: haproxy::Ports {
        http1: 8081,
        http2: 8082,
    },
};
/// HAProxy with one thread.
const HAPROXY_ONE_THREAD: haproxy::Setup = haproxy::Setup {
    threads: Some(1),
    ports: haproxy::Ports {
        http1: 8083,
        http2: 8084,
    },
};

impl Testbed {
    /// Builds the pods, starts the server application in the server pods, meshes the meshed
    /// ones (their proxies take `proxy_env`), and starts both HAProxies in the client pod. With
    /// `baseline`, the pre-rebuild proxy's pods too, meshed with that program and the same
    /// environment; with `redis_codec`, the redis part's codec pods and Services.
    pub fn start(
        haproxy_program: &Path,
        proxy_env: &[(String, String)],
        baseline: Option<&Path>,
        redis_codec: bool,
    ) -> anyhow::Result<Self> {
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
        let mtls = MtlsPair::start(
            &control,
            proxy_env,
            None,
            &server_mtls,
            &client_mtls,
            ("server-mtls", "server", "client"),
            MTLS_CLUSTER_IP,
        )?;

        let before = match baseline {
            None => None,
            Some(program) => Some(
                Before::start(&mut cluster, &control, proxy_env, program)
                    .context("meshing the pre-rebuild proxy's pods")?,
            ),
        };

        let codec = match redis_codec {
            false => None,
            true => Some(
                Codec::start(&mut cluster, &control, proxy_env, &server)
                    .context("meshing the redis codec's pods")?,
            ),
        };

        let upstream = SocketAddr::from((server.ip, server::PORT));
        let log_dir = cluster.log_dir();
        let haproxy = Haproxy::start(
            haproxy_program,
            &client,
            upstream,
            HAPROXY,
            log_dir,
            "haproxy",
        )
        .context("starting haproxy")?;
        let haproxy_one_thread = Haproxy::start(
            haproxy_program,
            &client,
            upstream,
            HAPROXY_ONE_THREAD,
            log_dir,
            "haproxy-nbthread-1",
        )
        .context("starting haproxy with one thread")?;
        Ok(Testbed {
            haproxy,
            haproxy_one_thread,
            client_proxy,
            server_proxy,
            mtls_client_proxy: mtls.client,
            mtls_server_proxy: mtls.server,
            before,
            codec,
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

    /// Where `scenario` sends its load when speaking `protocol`; `None` for a pre-rebuild
    /// scenario without that proxy.
    pub fn target(&self, scenario: Scenario, protocol: Protocol) -> Option<Target<'_>> {
        let app = |pod: &Pod| format!("http://{}:{}/", pod.ip, server::PORT);
        let service = |ip: [u8; 4]| format!("http://{}:{}/", Ipv4Addr::from(ip), server::PORT);
        let watch = |name: &str, pid: u32| Watched {
            name: name.to_string(),
            pid,
        };
        let haproxy = |h: &Haproxy, name: &str| Target {
            pod: &self.client,
            url: format!(
                "http://127.0.0.1:{}/",
                match protocol {
                    Protocol::Http1 => h.ports().http1,
                    Protocol::Http2 => h.ports().http2,
                }
            ),
            watched: vec![watch(name, h.pid())],
        };
        if scenario.is_before() {
            return self.before_target(scenario, &app, &watch);
        }
        Some(match scenario {
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
                url: service(MTLS_CLUSTER_IP),
                watched: vec![
                    watch("client proxy", self.mtls_client_proxy.pid()),
                    watch("server proxy", self.mtls_server_proxy.pid()),
                ],
            },
            Scenario::Haproxy => haproxy(&self.haproxy, "haproxy"),
            Scenario::HaproxyOneThread => haproxy(&self.haproxy_one_thread, "haproxy"),
            Scenario::OneHopBefore | Scenario::TwoHopBefore | Scenario::TwoHopMtlsBefore => {
                return None
            }
        })
    }

    /// [`Testbed::target`] of the pre-rebuild scenarios.
    fn before_target(
        &self,
        scenario: Scenario,
        app: &dyn Fn(&Pod) -> String,
        watch: &dyn Fn(&str, u32) -> Watched,
    ) -> Option<Target<'_>> {
        let before = self.before.as_ref()?;
        let service = |ip: [u8; 4]| format!("http://{}:{}/", Ipv4Addr::from(ip), server::PORT);
        let two = |client: &Proxy, server: &Proxy| {
            vec![
                watch("client proxy", client.pid()),
                watch("server proxy", server.pid()),
            ]
        };
        match scenario {
            Scenario::OneHopBefore => Some(Target {
                pod: &before.client,
                url: app(&self.server),
                watched: vec![watch("client proxy", before.client_proxy.pid())],
            }),
            Scenario::TwoHopBefore => Some(Target {
                pod: &before.client,
                url: app(&before.server),
                watched: two(&before.client_proxy, &before.server_proxy),
            }),
            Scenario::TwoHopMtlsBefore => Some(Target {
                pod: &before.client_mtls,
                url: service(MTLS_BEFORE_CLUSTER_IP),
                watched: two(&before.mtls_client_proxy, &before.mtls_server_proxy),
            }),
            _ => None,
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

    /// What the redis part needs.
    pub fn redis_pods(&self) -> RedisPods<'_> {
        RedisPods {
            server: &self.server,
            client: &self.client,
            meshed: (&self.client_meshed, self.client_proxy.pid()),
            before: self
                .before
                .as_ref()
                .map(|b| (&b.client, b.client_proxy.pid())),
            codec: self.codec.as_ref().map(|c| CodecPods {
                client: &c.client,
                client_proxy: &c.client_proxy,
                server: &c.server,
                server_proxy: &c.server_proxy,
                one_hop: SocketAddr::from((REDIS_CODEC_CLUSTER_IP, REDIS_PORT)),
                two_hop: SocketAddr::from((REDIS_CODEC_MESHED_CLUSTER_IP, REDIS_PORT)),
            }),
        }
    }

    /// The cluster's log folder (proxy logs, HAProxy's configuration and log).
    pub fn log_dir(&self) -> &Path {
        self.cluster.log_dir()
    }
}

// === impl Before ===

impl Before {
    /// Adds the pre-rebuild proxy's pods: a client meshed with it (calling the plain `server`
    /// for one hop, and its own meshed server for two), and an mTLS pair behind its own
    /// ClusterIP.
    fn start(
        cluster: &mut Cluster,
        control: &ControlPlane,
        proxy_env: &[(String, String)],
        program: &Path,
    ) -> anyhow::Result<Before> {
        let server = cluster.add_pod("server-before")?;
        let client = cluster.add_pod("client-before")?;
        let server_mtls = cluster.add_pod("server-mtls-before")?;
        let client_mtls = cluster.add_pod("client-mtls-before")?;
        let servers = [Server::start(&server)?, Server::start(&server_mtls)?];
        let options = MeshOptions {
            env: proxy_env.to_vec(),
            proxy_program: Some(program.to_path_buf()),
            ..MeshOptions::default()
        };
        let server_proxy = server
            .mesh(options.clone())
            .context("meshing the pre-rebuild server pod")?;
        let client_proxy = client
            .mesh(options)
            .context("meshing the pre-rebuild client pod")?;
        let mtls = MtlsPair::start(
            control,
            proxy_env,
            Some(program),
            &server_mtls,
            &client_mtls,
            ("server-mtls-before", "server-before", "client-before"),
            MTLS_BEFORE_CLUSTER_IP,
        )?;
        Ok(Before {
            client_proxy,
            server_proxy,
            mtls_client_proxy: mtls.client,
            mtls_server_proxy: mtls.server,
            _servers: servers,
            client,
            client_mtls,
            server,
        })
    }
}

// === impl Codec ===

impl Codec {
    /// Adds `client-codec` and `server-codec`, writes the Redis Services in front of `server`
    /// (unmeshed) and of `server-codec`, and meshes both pods with discovery and identity; the
    /// server's proxy decodes Redis on [`REDIS_PORT`] inbound.
    fn start(
        cluster: &mut Cluster,
        control: &ControlPlane,
        proxy_env: &[(String, String)],
        server: &Pod,
    ) -> anyhow::Result<Codec> {
        let codec_server = cluster.add_pod("server-codec")?;
        let client = cluster.add_pod("client-codec")?;
        for (name, ip, pod) in [
            ("redis-codec", REDIS_CODEC_CLUSTER_IP, server),
            (
                "redis-codec-meshed",
                REDIS_CODEC_MESHED_CLUSTER_IP,
                &codec_server,
            ),
        ] {
            control.write(
                &format!("{name}.yaml"),
                &redis_service_yaml("bench", name, ip.into(), (&pod.name, pod.ip)),
            )?;
        }
        let enroll = |pod: &Pod, sa: &str, extra: &[(&str, &str)]| {
            let mut options = control.enroll(pod, "bench", sa, &[])?;
            options.env.extend(proxy_env.iter().cloned());
            options
                .env
                .extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            anyhow::Ok(options)
        };
        let inbound_codec = format!("{REDIS_PORT}=redis");
        let server_proxy = codec_server
            .mesh(enroll(
                &codec_server,
                "redis-server",
                &[("MESH_PROXY_INBOUND_CODEC_PORTS", &inbound_codec)],
            )?)
            .context("meshing the redis codec's server pod")?;
        client.route("10.96.0.0/12")?;
        let client_proxy = client
            .mesh(enroll(&client, "redis-client", &[])?)
            .context("meshing the redis codec's client pod")?;
        Ok(Codec {
            client_proxy,
            server_proxy,
            client,
            server: codec_server,
        })
    }
}

/// A Service `name` at `cluster_ip` whose port [`REDIS_PORT`] says `appProtocol: mesh.io/redis`,
/// and its one EndpointSlice with the pod `(name, ip)` ready on that port (referenced by name:
/// meshed if the control plane knows it as a meshed Pod, plain otherwise).
pub fn redis_service_yaml(
    namespace: &str,
    name: &str,
    cluster_ip: Ipv4Addr,
    (pod, ip): (&str, Ipv4Addr),
) -> String {
    let port = format!("name: redis, port: {REDIS_PORT}, appProtocol: mesh.io/redis");
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{clusterIP: {cluster_ip}, ports: [{{{port}, targetPort: {REDIS_PORT}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: {namespace}, \
         labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{{port}}}]\nendpoints:\n\
         - {{addresses: [\"{ip}\"], conditions: {{ready: true}}, \
         targetRef: {{kind: Pod, name: {pod}, namespace: {namespace}}}}}\n"
    )
}

/// The proxies of a meshed client and server with identity, the server behind a ClusterIP.
struct MtlsPair {
    client: Proxy,
    server: Proxy,
}

impl MtlsPair {
    /// Writes the service `names.0` at `cluster_ip` for `server_pod` (which runs the
    /// application), enrolls both pods (service accounts `names.1` and `names.2`) and meshes
    /// them with `program` (the current proxy when `None`).
    fn start(
        control: &ControlPlane,
        proxy_env: &[(String, String)],
        program: Option<&Path>,
        server_pod: &Pod,
        client_pod: &Pod,
        names: (&str, &str, &str),
        cluster_ip: [u8; 4],
    ) -> anyhow::Result<MtlsPair> {
        let (service, server_sa, client_sa) = names;
        control.write(
            &format!("{service}.yaml"),
            &service_yaml(
                "bench",
                service,
                cluster_ip.into(),
                (server::PORT, server::PORT),
                &[],
                std::slice::from_ref(server_pod),
            ),
        )?;
        let enroll = |pod: &Pod, sa: &str| -> anyhow::Result<MeshOptions> {
            let mut options = control.enroll(pod, "bench", sa, &[])?;
            options.env.extend(proxy_env.iter().cloned());
            options.proxy_program = program.map(Path::to_path_buf);
            Ok(options)
        };
        let server = server_pod
            .mesh(enroll(server_pod, server_sa)?)
            .with_context(|| format!("meshing the mTLS server pod {}", server_pod.name))?;
        client_pod.route("10.96.0.0/12")?;
        let client = client_pod
            .mesh(enroll(client_pod, client_sa)?)
            .with_context(|| format!("meshing the mTLS client pod {}", client_pod.name))?;
        Ok(MtlsPair { client, server })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::destination::ProtocolHint;
    use mesh_controller::index::{Index, IndexConfig, Resolution, Target};
    use mesh_controller::source::folder::parse_yaml;

    /// The codec Services as the controller serves them: the codec in the outbound policy of
    /// the ClusterIP, and on the endpoint, plain or meshed (with its identity).
    #[test]
    fn redis_services_carry_the_codec() {
        let plain = Ipv4Addr::new(10, 244, 0, 2);
        let meshed = Ipv4Addr::new(10, 244, 0, 9);
        let yaml = format!(
            "{}---\n{}---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: server-codec, namespace: bench}}\n\
             spec: {{serviceAccountName: redis-server, containers: [{{name: app, image: app}}, \
             {{name: mesh-proxy, image: mesh-proxy}}]}}\n\
             status: {{phase: Running, podIP: \"{meshed}\"}}\n",
            redis_service_yaml(
                "bench",
                "redis-codec",
                REDIS_CODEC_CLUSTER_IP.into(),
                ("server", plain)
            ),
            redis_service_yaml(
                "bench",
                "redis-codec-meshed",
                REDIS_CODEC_MESHED_CLUSTER_IP.into(),
                ("server-codec", meshed)
            ),
        );
        let (objects, errors) = parse_yaml(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
        let mut index = Index::new(IndexConfig::default());
        objects.into_iter().for_each(|o| index.apply(o));
        for (cluster_ip, endpoint, identity) in [
            (REDIS_CODEC_CLUSTER_IP, plain, None),
            (
                REDIS_CODEC_MESHED_CLUSTER_IP,
                meshed,
                Some("redis-server.bench.serviceaccount.identity.mesh.cluster.local"),
            ),
        ] {
            let target = Target::Addr(SocketAddr::from((cluster_ip, REDIS_PORT)));
            let policy = index.outbound_policy(&target, Some("bench"));
            assert_eq!(policy.codec.as_deref(), Some("redis"), "{policy:?}");
            let Resolution::Endpoints(endpoints) = index.resolve(&target) else {
                panic!("{cluster_ip:?} resolves to nothing");
            };
            let addrs: Vec<SocketAddr> = endpoints.keys().copied().collect();
            assert_eq!(addrs, [SocketAddr::from((endpoint, REDIS_PORT))]);
            let ep = &endpoints[&addrs[0]];
            assert_eq!(
                ep.protocol_hint,
                Some(ProtocolHint::Codec("redis".into())),
                "{ep:?}"
            );
            assert_eq!(ep.identity.as_deref(), identity, "{ep:?}");
        }
    }
}
