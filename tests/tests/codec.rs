//! Protocol codecs end to end on pods: the destination and identity controllers run in a pod
//! of their own on a folder of YAML; server pods run a real `redis-server` (Debian's) or the
//! Python Thrift server of `testdata/thrift/`, meshed with their codec port declared
//! (`MESH_PROXY_INBOUND_CODEC_PORTS`, what `config.mesh.io/codec-ports` becomes); a meshed
//! client pod runs `redis-cli`, `redis-benchmark`, the Python Thrift client and raw clients
//! against Services whose port says `appProtocol: mesh.io/redis` (or `mesh.io/thrift`). The
//! client's proxy decodes each connection into requests, routes them by their metadata
//! (`MetaRoute`s), balances them over the endpoints and carries them over mutual TLS to the
//! server's proxy, which decodes them again and hands them to the application. Needs root,
//! `redis-server`, `redis-tools` and `python3-thrift` (scripts/test installs them).
//!
//! Services: `redis-main` (10.96.0.20) and `redis-sessions` (.21), a pod each, with the
//! MetaRoute `sessions` sending `session:*` keys of `redis-main` to `redis-sessions`;
//! `redis-none` (.22) without endpoints; `thrift` (.30, a server of both the binary and the
//! compact protocol), `thrift-compact` (.33, the compact protocol alone), `thrift-echo` (.31,
//! whose server puts a marker before what it echoes) and `thrift-none` (.32) without endpoints.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mesh_api::inject::CODEC_PORTS_ANNOTATION;
use mesh_cli::local::{
    require_root, Cluster, ControlOptions, ControlPlane, MeshOptions, Pod, Proxy,
};
use mesh_tests::capture::{contains, Capture};
use mesh_tests::fixtures::eventually;
use mesh_tests::redis::{command, Conn, Value};
use mesh_tests::{metric_sum, CLIENT_ID};

const REDIS_PORT: u16 = 6379;
const THRIFT_PORT: u16 = 9090;
/// The client pod's own unmeshed Redis, on loopback (which the proxy never sees): the reference
/// that the meshed replies are compared with.
const REFERENCE_PORT: u16 = 6380;
const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// The system Python, which has `python3-thrift` (a `python3` first on the PATH may not); run
/// with `-B`, so that it leaves no `__pycache__` in `testdata/`.
const PYTHON: &str = "/usr/bin/python3";
/// How long a step may take to become true.
const WAIT: Duration = Duration::from_secs(20);
/// The bound on every command a test runs (`timeout` kills it after this many seconds).
const COMMAND_SECONDS: &str = "60";

const MAIN_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const SESSIONS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
const REDIS_NONE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 22);
const THRIFT_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const THRIFT_ECHO_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
const THRIFT_NONE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 32);
const THRIFT_COMPACT_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 33);

/// What `thrift-echo`'s server puts before the string it echoes.
const ECHO_MARKER: &str = "from-thrift-echo:";

/// The identity of a server pod (its service account is its name).
fn server_id(pod: &str) -> String {
    format!("{pod}.demo.serviceaccount.identity.mesh.cluster.local")
}

/// Which protocol a mesh serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codec {
    Redis,
    Thrift,
}

/// A Service of the mesh: its name, ClusterIP and the server pods behind it.
struct Service {
    name: &'static str,
    ip: Ipv4Addr,
    pods: &'static [&'static str],
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::Redis => "redis",
            Codec::Thrift => "thrift",
        }
    }

    fn port(self) -> u16 {
        match self {
            Codec::Redis => REDIS_PORT,
            Codec::Thrift => THRIFT_PORT,
        }
    }

    fn services(self) -> Vec<Service> {
        match self {
            Codec::Redis => vec![
                Service {
                    name: "redis-main",
                    ip: MAIN_IP,
                    pods: &["redis-main"],
                },
                Service {
                    name: "redis-sessions",
                    ip: SESSIONS_IP,
                    pods: &["redis-sessions"],
                },
                Service {
                    name: "redis-none",
                    ip: REDIS_NONE_IP,
                    pods: &[],
                },
            ],
            Codec::Thrift => vec![
                Service {
                    name: "thrift",
                    ip: THRIFT_IP,
                    pods: &["thrift"],
                },
                Service {
                    name: "thrift-compact",
                    ip: THRIFT_COMPACT_IP,
                    pods: &["thrift-compact"],
                },
                Service {
                    name: "thrift-echo",
                    ip: THRIFT_ECHO_IP,
                    pods: &["thrift-echo"],
                },
                Service {
                    name: "thrift-none",
                    ip: THRIFT_NONE_IP,
                    pods: &[],
                },
            ],
        }
    }
}

/// A Service whose port carries `codec` (`appProtocol: mesh.io/<codec>`) and its EndpointSlice
/// with the `pods` (name, address) ready, as the controllers' folder source reads them.
fn codec_service(
    name: &str,
    ip: Ipv4Addr,
    port: u16,
    codec: &str,
    pods: &[(&str, Ipv4Addr)],
) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\n\
         spec: {{clusterIP: {ip}, selector: {{app: {name}}}, \
         ports: [{{name: {codec}, port: {port}, targetPort: {port}, appProtocol: mesh.io/{codec}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: {codec}, port: {port}, appProtocol: mesh.io/{codec}}}]\nendpoints:"
    );
    if pods.is_empty() {
        yaml.push_str(" []");
    }
    yaml.push('\n');
    for (pod, ip) in pods {
        yaml.push_str(&format!(
            "- {{addresses: [\"{ip}\"], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: {pod}, namespace: demo}}}}\n"
        ));
    }
    yaml
}

/// A MetaRoute on Service `parent`'s codec port whose one rule sends the requests whose
/// metadata `key` matches (`kind`: Exact, Prefix, RegularExpression) `value` to `backend`.
fn meta_route(
    name: &str,
    parent: &str,
    port: u16,
    key: &str,
    kind: &str,
    value: &str,
    backend: &str,
) -> String {
    format!(
        "apiVersion: policy.mesh.io/v1alpha1\nkind: MetaRoute\nmetadata: {{name: {name}, namespace: demo}}\n\
         spec:\n  parentRefs: [{{group: core, kind: Service, name: {parent}, port: {port}}}]\n  rules:\n\
         \x20 - matches: [{{metadata: [{{key: {key}, type: {kind}, value: \"{value}\"}}]}}]\n\
         \x20   backendRefs: [{{name: {backend}, port: {port}, weight: 1}}]\n\
         \x20   timeout: 5s\n"
    )
}

/// `session:*` keys of `redis-main` go to `redis-sessions`.
fn sessions_route() -> String {
    meta_route(
        "sessions",
        "redis-main",
        REDIS_PORT,
        "key",
        "Prefix",
        "session:",
        "redis-sessions",
    )
}

/// Thrift's `echo` calls to `thrift` go to `thrift-echo`.
fn echo_route() -> String {
    meta_route(
        "echo",
        "thrift",
        THRIFT_PORT,
        "method",
        "Exact",
        "echo",
        "thrift-echo",
    )
}

// === the mesh ===

/// A process of the test in a pod, killed (and reaped) on drop.
struct Process {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `program` with `args` in `pod`, its output in `log`.
    fn start(pod: &Pod, what: &str, program: &str, args: &[&str], log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("a log file");
        let child = pod
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} in pod {}: {e}", pod.name));
        Process {
            child,
            what: what.to_string(),
            log,
        }
    }

    /// Waits until the process accepts connections on `port` of the pod's loopback; fails with
    /// its output if it exits or does not listen in time.
    fn wait_listening(&mut self, pod: &Pod, port: u16) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listening = wait_until(|| {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} in pod {} exited ({status}):\n{}",
                    self.what,
                    pod.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            in_pod(pod, move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
                Ok(())
            })
            .map_err(|e| format!("{e:#}"))
        });
        if let Err(last) = listening {
            panic!(
                "{} in pod {} does not listen on {addr}: {last}\n{}",
                self.what,
                pod.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A meshed server pod: its application and its proxy.
struct Server {
    pod: Pod,
    proxy: Proxy,
    _app: Process,
}

struct Mesh {
    codec: Codec,
    _control: ControlPlane,
    client: Pod,
    client_proxy: Proxy,
    servers: BTreeMap<&'static str, Server>,
    /// Where the processes' logs (and captures) go: the cluster's log folder.
    logs: PathBuf,
    /// The client pod's reference Redis, once started.
    _reference: Option<Process>,
    /// The control plane's folder (its logs too).
    dir: tempfile::TempDir,
    _cluster: Cluster,
}

impl Mesh {
    /// The Redis mesh: `redis-main` and `redis-sessions` meshed, the MetaRoute `sessions`, the
    /// Services, and the meshed client pod.
    fn redis(name: &str) -> Mesh {
        Mesh::start(name, Codec::Redis, &sessions_route())
    }

    /// The Thrift mesh: `thrift`, `thrift-compact` and `thrift-echo` meshed, `routes` (YAML) in
    /// the state folder, the Services, and the meshed client pod.
    fn thrift(name: &str, routes: &str) -> Mesh {
        Mesh::start(name, Codec::Thrift, routes)
    }

    fn start(name: &str, codec: Codec, routes: &str) -> Mesh {
        require_root().expect("end-to-end tests need root and network namespaces");
        check_tools(codec);
        let mut cluster = Cluster::new(name).expect("cluster");
        let control_pod = cluster.add_pod("control").expect("control pod");
        let dir = tempfile::tempdir().expect("control folder");
        // The cluster's log folder, which `MESH_KEEP_LOGS` keeps.
        let logs = cluster.log_dir().to_path_buf();
        let control = ControlPlane::start(&control_pod, dir.path(), &ControlOptions::default())
            .expect("control plane");

        let mut servers = BTreeMap::new();
        let mut addresses = BTreeMap::new();
        for service in codec.services() {
            for &pod_name in service.pods {
                let pod = cluster.add_pod(pod_name).expect("server pod");
                let log = logs.join(format!("{pod_name}.log"));
                let mut app = match codec {
                    Codec::Redis => redis_server(&pod, pod_name, REDIS_PORT, "0.0.0.0", log),
                    Codec::Thrift => thrift_server(&pod, pod_name, log),
                };
                app.wait_listening(&pod, codec.port());
                let mut opts = control
                    .enroll(&pod, "demo", pod_name, &[("app", service.name)])
                    .expect("enroll a server");
                let ports = format!("{}={}", codec.port(), codec.name());
                annotate_pod(&control, &pod, CODEC_PORTS_ANNOTATION, &ports);
                opts.env
                    .push(("MESH_PROXY_INBOUND_CODEC_PORTS".into(), ports));
                log_info(&mut opts);
                let proxy = pod.mesh(opts).expect("mesh a server pod");
                addresses.insert(pod_name, pod.ip);
                servers.insert(
                    pod_name,
                    Server {
                        pod,
                        proxy,
                        _app: app,
                    },
                );
            }
        }
        let services: Vec<String> = codec
            .services()
            .iter()
            .map(|s| {
                let pods: Vec<(&str, Ipv4Addr)> =
                    s.pods.iter().map(|p| (*p, addresses[p])).collect();
                codec_service(s.name, s.ip, codec.port(), codec.name(), &pods)
            })
            .collect();
        control
            .write("services.yaml", &services.join("---\n"))
            .expect("services");
        if !routes.is_empty() {
            control.write("routes.yaml", routes).expect("routes");
        }

        let client = cluster.add_pod("client").expect("client pod");
        let hosts: Vec<(IpAddr, String)> = codec
            .services()
            .iter()
            .map(|s| {
                (
                    IpAddr::from(s.ip),
                    format!("{}.demo.svc.cluster.local", s.name),
                )
            })
            .collect();
        let hosts: Vec<(IpAddr, &str)> = hosts.iter().map(|(ip, n)| (*ip, n.as_str())).collect();
        client.set_hosts(&hosts).expect("hosts file");
        client.route("10.96.0.0/12").expect("service route");
        let mut opts = control
            .enroll(&client, "demo", "client", &[("app", "client")])
            .expect("enroll the client");
        log_info(&mut opts);
        let client_proxy = client.mesh(opts).expect("mesh the client");
        let mesh = Mesh {
            codec,
            _control: control,
            client,
            client_proxy,
            servers,
            logs,
            _reference: None,
            dir,
            _cluster: cluster,
        };
        mesh.wait_ready();
        mesh
    }

    /// Waits until a request through the client's proxy is answered by the main server.
    fn wait_ready(&self) {
        let ready = match self.codec {
            Codec::Redis => wait_until(|| {
                let out = self.redis_cli(MAIN_IP, &["PING"], "");
                match out.trim() {
                    "PONG" => Ok(()),
                    _ => Err(out),
                }
            }),
            Codec::Thrift => wait_until(|| {
                let (ok, out) = self.thrift_client(THRIFT_IP, "binary", &["whoami"]);
                match ok && out.trim() == "whoami thrift" {
                    true => Ok(()),
                    false => Err(out),
                }
            }),
        };
        if let Err(last) = ready {
            panic!(
                "the mesh never answered through the client's proxy: {last}\n{}",
                self.diagnostics()
            );
        }
    }

    fn server(&self, name: &str) -> &Server {
        &self.servers[name]
    }

    /// Runs `redis-cli -h <ip> -p 6379 args…` in the client pod with `stdin`; its stdout and
    /// stderr, whatever its exit status (`redis-cli` exits 0 on an error reply).
    fn redis_cli(&self, ip: Ipv4Addr, args: &[&str], stdin: &str) -> String {
        let mut all = vec![
            "-h".to_string(),
            ip.to_string(),
            "-p".into(),
            REDIS_PORT.to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let out = run(&self.client, "redis-cli", &all, stdin.as_bytes());
        text(&out)
    }

    /// Runs the Thrift client in the client pod against `ip`: whether it succeeded, and its
    /// stdout and stderr.
    fn thrift_client(&self, ip: Ipv4Addr, protocol: &str, ops: &[&str]) -> (bool, String) {
        let mut args = vec![
            "-B".to_string(),
            thrift_dir().join("client.py").display().to_string(),
            "--host".into(),
            ip.to_string(),
            "--port".into(),
            THRIFT_PORT.to_string(),
            "--protocol".into(),
            protocol.into(),
        ];
        args.extend(ops.iter().map(|o| o.to_string()));
        let out = run(&self.client, PYTHON, &args, b"");
        (out.status.success(), text(&out))
    }

    /// `redis-cli -p 6379 args…` inside server pod `pod`, on its loopback: the server itself,
    /// not through any proxy.
    fn redis_direct(&self, pod: &str, args: &[&str]) -> String {
        let mut all = vec![
            "-h".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            REDIS_PORT.to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let out = run(&self.server(pod).pod, "redis-cli", &all, b"");
        text(&out).trim().to_string()
    }

    /// Starts the client pod's unmeshed reference Redis on loopback.
    fn start_reference(&mut self) {
        let log = self.logs.join("reference.log");
        let mut reference =
            redis_server(&self.client, "reference", REFERENCE_PORT, "127.0.0.1", log);
        reference.wait_listening(&self.client, REFERENCE_PORT);
        self._reference = Some(reference);
    }

    /// `redis-cli -p 6380` against the reference Redis, with `stdin`.
    fn redis_reference(&self, stdin: &str) -> String {
        let args: Vec<String> = ["-h", "127.0.0.1", "-p", &REFERENCE_PORT.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        text(&run(&self.client, "redis-cli", &args, stdin.as_bytes()))
    }

    /// Runs `f` in the client pod (its sockets go through the client's proxy).
    fn in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> T {
        in_pod(&self.client, f).unwrap_or_else(|e| panic!("in the client pod: {e:#}"))
    }

    fn client_metrics(&self) -> String {
        metrics(&self.client_proxy)
    }

    fn server_metrics(&self, pod: &str) -> String {
        metrics(&self.server(pod).proxy)
    }

    /// Waits until `metric` summed over the lines with all of `labels` is at least `at_least`
    /// in what `scrape` returns; fails with the matching lines.
    fn wait_metric(
        &self,
        what: &str,
        scrape: impl Fn() -> String,
        metric: &str,
        labels: &[&str],
        at_least: u64,
    ) {
        let mut last = String::new();
        let ok = wait_until(|| {
            last = scrape();
            match metric_sum(&last, metric, labels) >= at_least {
                true => Ok(()),
                false => Err(String::new()),
            }
        });
        if ok.is_err() {
            let codec = format!("codec=\"{}\"", self.codec.name());
            let of_metric = || last.lines().filter(|l| l.starts_with(metric));
            let mut lines: Vec<&str> = of_metric().filter(|l| l.contains(&codec)).collect();
            let which = match lines.is_empty() {
                true => {
                    lines = of_metric().take(30).collect();
                    "none has {codec}; the first ones"
                }
                false => "the ones with {codec}",
            };
            panic!(
                "{what}: {metric}{labels:?} ≥ {at_least}, but it is {}; {}:\n{}\n{}",
                metric_sum(&last, metric, labels),
                which.replace("{codec}", &codec),
                lines.join("\n"),
                self.diagnostics()
            );
        }
    }

    /// Polls `check` until it succeeds or [`WAIT`] passes; fails with `what`, what the check
    /// said last, and the logs.
    fn wait(&self, what: &str, check: impl FnMut() -> Result<(), String>) {
        if let Err(last) = wait_until(check) {
            panic!("{what}: {last}\n{}", self.diagnostics());
        }
    }

    /// The proxies' logs and the destination controller's, for a failure's message.
    fn diagnostics(&self) -> String {
        let mut out = format!("--- client proxy log:\n{}", tail(&self.client_proxy.log()));
        for (name, server) in &self.servers {
            out.push_str(&format!(
                "\n--- {name} proxy log:\n{}",
                tail(&server.proxy.log())
            ));
        }
        let destination = std::fs::read_to_string(self.dir.path().join("destination.log"));
        out.push_str(&format!(
            "\n--- destination controller log:\n{}",
            tail(&destination.unwrap_or_default())
        ));
        out
    }
}

/// Fails with a clear message when a tool the codec tests run is missing.
fn check_tools(codec: Codec) {
    match codec {
        Codec::Redis => {
            for tool in [
                REDIS_SERVER,
                "/usr/bin/redis-cli",
                "/usr/bin/redis-benchmark",
            ] {
                assert!(
                    Path::new(tool).is_file(),
                    "{tool} not found: the codec tests run Debian's redis-server and redis-tools \
                     (scripts/test installs them when run as root)"
                );
            }
        }
        Codec::Thrift => {
            let ok = std::process::Command::new(PYTHON)
                .args(["-c", "import thrift"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
                ok,
                "{PYTHON} cannot import thrift: the codec tests need Debian's python3-thrift \
                 (scripts/test installs it when run as root)"
            );
        }
    }
}

/// The proxy logs at info, for a failure's message, unless `MESH_PROXY_LOG` says otherwise.
fn log_info(opts: &mut MeshOptions) {
    if std::env::var_os("MESH_PROXY_LOG").is_none() {
        opts.env
            .push(("MESH_PROXY_LOG".into(), "warn,mesh_proxy=info".into()));
    }
}

/// `redis-server` in `pod` on `bind:port`, keeping nothing on disk.
fn redis_server(pod: &Pod, name: &str, port: u16, bind: &str, log: PathBuf) -> Process {
    let dir = log.with_extension("data");
    std::fs::create_dir_all(&dir).expect("a redis folder");
    let port = port.to_string();
    let dir = dir.display().to_string();
    Process::start(
        pod,
        &format!("redis-server {name}"),
        REDIS_SERVER,
        &[
            "--port",
            &port,
            "--bind",
            bind,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &dir,
        ],
        log,
    )
}

/// The Thrift server in `pod` on port 9090, naming itself `name`: `thrift-compact` speaks the
/// compact protocol alone, as a server built with one protocol factory does; `thrift-echo` puts
/// [`ECHO_MARKER`] before what it echoes; the others speak both protocols, each connection the
/// one it starts with.
fn thrift_server(pod: &Pod, name: &str, log: PathBuf) -> Process {
    let script = thrift_dir().join("server.py").display().to_string();
    let port = THRIFT_PORT.to_string();
    let mut args = vec!["-B", script.as_str(), "--port", &port, "--name", name];
    match name {
        "thrift-echo" => args.extend(["--echo-prefix", ECHO_MARKER]),
        "thrift-compact" => args.extend(["--protocol", "compact"]),
        _ => {}
    }
    Process::start(pod, &format!("thrift server {name}"), PYTHON, &args, log)
}

fn thrift_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/thrift")
}

/// Adds `annotation: value` to the Pod object of `pod` in the state folder, as the pod's
/// manifest would carry it.
fn annotate_pod(control: &ControlPlane, pod: &Pod, annotation: &str, value: &str) {
    let file = format!("pod-demo-{}.yaml", pod.name);
    let yaml = std::fs::read_to_string(control.state_dir().join(&file)).expect("the Pod object");
    let yaml = yaml.replacen(
        "annotations: {",
        &format!("annotations: {{{annotation}: \"{value}\", "),
        1,
    );
    control
        .write(&file, &yaml)
        .expect("the annotated Pod object");
}

/// Runs `program args…` in `pod` with `stdin`, bounded by `timeout`.
fn run(pod: &Pod, program: &str, args: &[String], stdin: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = pod
        .command("timeout")
        .arg(COMMAND_SECONDS)
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program} in pod {}: {e}", pod.name));
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // Written from a thread: the program's output must be read meanwhile.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program} in pod {}: {e}", pod.name));
    let _ = writer.join();
    out
}

/// A command's stdout, then its stderr.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn in_pod<T: Send + 'static>(
    pod: &Pod,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    pod.run_in(f)
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in pod {} panicked", pod.name))?
}

fn metrics(proxy: &Proxy) -> String {
    let (status, body) = proxy.admin_get("/metrics").expect("metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `check` until it succeeds or [`WAIT`] passes: `Err` with what it said last.
fn wait_until(mut check: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let mut last = String::new();
    let ok = runtime().block_on(eventually(WAIT, || {
        let now = match check() {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        };
        std::future::ready(now)
    }));
    match ok {
        true => Ok(()),
        false => Err(last),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The last lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The main Redis through the mesh (its ClusterIP, which the client's proxy intercepts).
fn main_addr() -> SocketAddr {
    SocketAddr::from((MAIN_IP, REDIS_PORT))
}

// === Redis ===

/// Commands that `redis-cli` runs on one connection, through the mesh and against the
/// reference Redis; `TTL` comes last, as its answer may differ by a second.
const SCRIPT: &str = "PING
ECHO \"hello mesh\"
SET greeting hello
GET greeting
SET counter 10
INCR counter
INCRBY counter 5
SET word abc
INCR word
NOSUCHCMD arg
EXISTS greeting counter nosuchkey
DEL greeting
GET greeting
MSET a 1 b 2 c 3
MGET a b nosuchkey c
HSET user:1 name ada lang rust
HGETALL user:1
LPUSH list x y z
LRANGE list 0 -1
SADD numbers 3 1 2 2
SMEMBERS numbers
ZADD board 30 carol 10 alice 20 bob
ZRANGE board 0 -1 WITHSCORES
MULTI
INCR tx
INCR tx
EXEC
SET temp v
EXPIRE temp 1000
TTL temp
";

#[test]
fn redis_commands() {
    let mut mesh = Mesh::redis("codec-redis");
    mesh.start_reference();
    let mut sets = 0u64;

    // The same commands, through the mesh and directly: the same replies.
    let meshed = mesh.redis_cli(MAIN_IP, &[], SCRIPT);
    let direct = mesh.redis_reference(SCRIPT);
    sets += SCRIPT.lines().filter(|l| l.starts_with("SET ")).count() as u64;
    let (meshed_lines, direct_lines): (Vec<&str>, Vec<&str>) =
        (meshed.lines().collect(), direct.lines().collect());
    assert!(
        direct.contains("QUEUED") && direct.contains("alice"),
        "the reference ran: {direct}"
    );
    let n = direct_lines.len();
    assert_eq!(
        meshed_lines.len(),
        n,
        "as many reply lines through the mesh as directly:\n--- meshed:\n{meshed}\n--- direct:\n{direct}"
    );
    assert_eq!(
        meshed_lines[..n - 1],
        direct_lines[..n - 1],
        "the replies through the mesh are the reference's:\n--- meshed:\n{meshed}\n--- direct:\n{direct}"
    );
    let ttl: u64 = meshed_lines[n - 1].trim().parse().expect("TTL's answer");
    assert!((990..=1000).contains(&ttl), "TTL after EXPIRE 1000: {ttl}");
    assert!(
        meshed.contains("ERR value is not an integer"),
        "error replies pass: {meshed}"
    );

    // A value of 1 MiB, and pipelines of 1000 commands, read back in order.
    let (big_ok, pipelined) = mesh.in_client(|| {
        let mut c = Conn::connect(main_addr())?;
        let big: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let set = c.call(&[b"SET".as_slice(), b"big", &big])?;
        anyhow::ensure!(set == Value::Simple("OK".into()), "SET big: {set:?}");
        let got = c.call(&["GET", "big"])?;
        let big_ok = got == Value::Bulk(big);

        let mut batch = Vec::new();
        for i in 0..1000 {
            batch.extend(command(&[
                "SET".to_string(),
                format!("pipe:{i}"),
                i.to_string(),
            ]));
        }
        c.write_raw(&batch)?;
        for i in 0..1000 {
            let r = c.read()?;
            anyhow::ensure!(
                r == Value::Simple("OK".into()),
                "SET #{i} of the pipeline: {r:?}"
            );
        }
        let mut batch = Vec::new();
        for i in 0..1000 {
            batch.extend(command(&["GET".to_string(), format!("pipe:{i}")]));
        }
        c.write_raw(&batch)?;
        let mut pipelined = Vec::new();
        for _ in 0..1000 {
            pipelined.push(c.read()?.text().unwrap_or_default());
        }
        Ok((big_ok, pipelined))
    });
    sets += 1 + 1000;
    assert!(big_ok, "GET returns the 1 MiB value SET through the mesh");
    let expected: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    assert_eq!(pipelined, expected, "1000 pipelined GETs answered in order");

    // redis-cli --pipe: 1000 commands in one stream.
    let stream: Vec<u8> = (0..1000)
        .flat_map(|_| command(&["INCR", "piped"]))
        .collect();
    let out = text(&run(
        &mesh.client,
        "redis-cli",
        &[
            "-h".into(),
            MAIN_IP.to_string(),
            "-p".into(),
            REDIS_PORT.to_string(),
            "--pipe".into(),
        ],
        &stream,
    ));
    assert!(
        out.contains("errors: 0, replies: 1000"),
        "redis-cli --pipe: {out}"
    );
    assert_eq!(
        mesh.redis_cli(MAIN_IP, &["GET", "piped"], "").trim(),
        "1000"
    );

    // RESP3 after HELLO 3: a hash is a map; on a RESP2 connection it is an array.
    let (hello, map, array) = mesh.in_client(|| {
        let mut c = Conn::connect(main_addr())?;
        let hello = c.call(&["HELLO", "3"])?;
        c.call(&["HSET", "resp3", "f", "v"])?;
        let map = c.call(&["HGETALL", "resp3"])?;
        let array = Conn::connect(main_addr())?.call(&["HGETALL", "resp3"])?;
        Ok((hello, map, array))
    });
    assert!(
        matches!(&hello, Value::Map(pairs) if pairs.contains(&(Value::bulk("proto"), Value::Int(3)))),
        "HELLO 3 answers a map with proto 3: {hello:?}"
    );
    assert_eq!(map, Value::Map(vec![(Value::bulk("f"), Value::bulk("v"))]));
    assert_eq!(
        array,
        Value::Array(vec![Value::bulk("f"), Value::bulk("v")])
    );

    // SELECT 1 holds for its connection only.
    let (selected, other) = mesh.in_client(|| {
        let mut a = Conn::connect(main_addr())?;
        let mut b = Conn::connect(main_addr())?;
        anyhow::ensure!(a.call(&["SELECT", "1"])? == Value::Simple("OK".into()));
        a.call(&["SET", "selected", "in-db-1"])?;
        Ok((a.call(&["GET", "selected"])?, b.call(&["GET", "selected"])?))
    });
    sets += 1;
    assert_eq!(selected, Value::bulk("in-db-1"));
    assert_eq!(other, Value::Nil, "another connection stays on database 0");
    assert_eq!(
        mesh.redis_direct("redis-main", &["-n", "1", "GET", "selected"]),
        "in-db-1"
    );
    assert_eq!(
        mesh.redis_direct("redis-main", &["-n", "0", "EXISTS", "selected"]),
        "0"
    );

    // Pub/sub: a subscriber through the mesh gets what another connection publishes.
    let (subscribed_tx, subscribed) = mpsc::channel();
    let subscriber = mesh.client.run_in(move || {
        let mut s = Conn::connect(main_addr())?;
        let confirmation = s.call(&["SUBSCRIBE", "news"])?;
        let _ = subscribed_tx.send(confirmation);
        s.set_timeout(Duration::from_secs(15))?;
        s.read()
    });
    let confirmation = subscribed
        .recv_timeout(WAIT)
        .expect("SUBSCRIBE is confirmed");
    assert_eq!(
        confirmation,
        Value::Array(vec![
            Value::bulk("subscribe"),
            Value::bulk("news"),
            Value::Int(1)
        ])
    );
    let receivers =
        mesh.in_client(|| Conn::connect(main_addr())?.call(&["PUBLISH", "news", "hello"]));
    assert_eq!(receivers, Value::Int(1), "PUBLISH reaches the subscriber");
    let message = subscriber
        .join()
        .expect("the subscriber thread")
        .expect("the message");
    assert_eq!(
        message,
        Value::Array(vec![
            Value::bulk("message"),
            Value::bulk("news"),
            Value::bulk("hello")
        ])
    );

    // BLPOP blocks on the server until another connection pushes.
    let popper = mesh.client.run_in(|| {
        let mut c = Conn::connect(main_addr())?;
        c.set_timeout(Duration::from_secs(30))?;
        c.call(&["BLPOP", "jobs", "20"])
    });
    mesh.wait("BLPOP blocks on the server", || {
        let info = mesh.redis_direct("redis-main", &["INFO", "clients"]);
        match info.contains("blocked_clients:1") {
            true => Ok(()),
            false => Err(info),
        }
    });
    let pushed = mesh.in_client(|| Conn::connect(main_addr())?.call(&["LPUSH", "jobs", "job-1"]));
    assert_eq!(pushed, Value::Int(1));
    let popped = popper
        .join()
        .expect("the BLPOP thread")
        .expect("BLPOP's reply");
    assert_eq!(
        popped,
        Value::Array(vec![Value::bulk("jobs"), Value::bulk("job-1")])
    );

    // Every command was a request to both proxies, by its name.
    let outbound = [
        "direction=\"outbound\"",
        "codec=\"redis\"",
        "method=\"SET\"",
    ];
    mesh.wait_metric(
        "the client's proxy counts each SET",
        || mesh.client_metrics(),
        "request_total",
        &outbound,
        sets,
    );
    let inbound = ["direction=\"inbound\"", "codec=\"redis\"", "method=\"SET\""];
    mesh.wait_metric(
        "redis-main's proxy counts each SET",
        || mesh.server_metrics("redis-main"),
        "request_total",
        &inbound,
        sets,
    );
    let gets = [
        "direction=\"outbound\"",
        "codec=\"redis\"",
        "method=\"GET\"",
        "classification=\"success\"",
    ];
    mesh.wait_metric(
        "GETs answered",
        || mesh.client_metrics(),
        "response_total",
        &gets,
        1000,
    );
    mesh.wait_metric(
        "GET latencies",
        || mesh.client_metrics(),
        "response_latency_ms_count",
        &["codec=\"redis\"", "method=\"GET\""],
        1000,
    );
    mesh.wait_metric(
        "the INCRs of redis-cli --pipe",
        || mesh.client_metrics(),
        "request_total",
        &[
            "direction=\"outbound\"",
            "codec=\"redis\"",
            "method=\"INCR\"",
        ],
        1000,
    );
}

#[test]
fn redis_key_prefix_routing() {
    let mesh = Mesh::redis("codec-route");
    // The route is in force once a session key lands on redis-sessions.
    let mut probe = 0;
    mesh.wait("session:* keys go to redis-sessions", || {
        probe += 1;
        let key = format!("session:probe-{probe}");
        mesh.redis_cli(MAIN_IP, &["SET", &key, "x"], "");
        match mesh
            .redis_direct("redis-sessions", &["EXISTS", &key])
            .as_str()
        {
            "1" => Ok(()),
            other => Err(format!("EXISTS {key} on redis-sessions: {other}")),
        }
    });

    let script = "SET session:alice a\nSET session:bob b\nSET user:alice u\nSET cart:1 c\n\
                  GET session:alice\nGET user:alice\nINCR session:visits\nINCR visits\n";
    let out = mesh.redis_cli(MAIN_IP, &[], script);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["OK", "OK", "OK", "OK", "a", "u", "1", "1"],
        "{out}"
    );
    for (key, on_sessions) in [
        ("session:alice", true),
        ("session:bob", true),
        ("session:visits", true),
        ("user:alice", false),
        ("cart:1", false),
        ("visits", false),
    ] {
        let (here, there) = match on_sessions {
            true => ("redis-sessions", "redis-main"),
            false => ("redis-main", "redis-sessions"),
        };
        assert_eq!(
            mesh.redis_direct(here, &["EXISTS", key]),
            "1",
            "{key} is on {here}"
        );
        assert_eq!(
            mesh.redis_direct(there, &["EXISTS", key]),
            "0",
            "{key} is not on {there}"
        );
    }
    // The sessions server's proxy saw the routed requests.
    mesh.wait_metric(
        "redis-sessions' proxy counts the routed SETs",
        || mesh.server_metrics("redis-sessions"),
        "request_total",
        &["direction=\"inbound\"", "codec=\"redis\"", "method=\"SET\""],
        2 + probe,
    );
}

#[test]
fn redis_mutual_tls() {
    let mesh = Mesh::redis("codec-mtls");
    // Between the pods (eth0), and from the server's proxy to Redis (lo).
    let pod = &mesh.server("redis-main").pod;
    let wire = Capture::start(pod, "eth0", mesh.logs.join("eth0.pcap"));
    let local = Capture::start(pod, "lo", mesh.logs.join("lo.pcap"));
    let secret = "SECRET-REDIS-VALUE-3c1d";
    let n = 20u64;
    let script: String = (0..n)
        .map(|i| format!("SET secret:{i} {secret}\nGET secret:{i}\n"))
        .collect();
    let out = mesh.redis_cli(MAIN_IP, &[], &script);
    assert_eq!(
        out.matches(secret).count() as u64,
        n,
        "every GET answered: {out}"
    );
    // The server's proxy handed them to Redis: the last one is there.
    assert_eq!(
        mesh.redis_direct("redis-main", &["GET", &format!("secret:{}", n - 1)]),
        secret
    );
    let (wire, local) = (wire.stop(), local.stop());
    assert!(
        contains(&local, secret),
        "the capture sees the requests in the clear where the proxy hands them to Redis"
    );
    assert!(
        !contains(&wire, secret),
        "the requests are encrypted between the pods"
    );

    let from_client = format!("client_id=\"{CLIENT_ID}\"");
    mesh.wait_metric(
        "redis-main's proxy got the SETs over mutual TLS from the client's identity",
        || mesh.server_metrics("redis-main"),
        "request_total",
        &[
            "direction=\"inbound\"",
            "codec=\"redis\"",
            "method=\"SET\"",
            "tls=\"true\"",
            &from_client,
        ],
        n,
    );
    let to_server = format!("server_id=\"{}\"", server_id("redis-main"));
    mesh.wait_metric(
        "the client's proxy sent them over mutual TLS to redis-main's identity",
        || mesh.client_metrics(),
        "response_total",
        &[
            "direction=\"outbound\"",
            "codec=\"redis\"",
            "method=\"GET\"",
            "tls=\"true\"",
            &to_server,
        ],
        n,
    );
}

#[test]
fn redis_malformed_frame() {
    let mesh = Mesh::redis("codec-malformed");
    let outcome = mesh.in_client(|| {
        let mut good = Conn::connect(main_addr())?;
        anyhow::ensure!(good.call(&["SET", "k", "before"])? == Value::Simple("OK".into()));
        let mut closed = Vec::new();
        // A negative bulk length other than -1; an array length that is not a number.
        for garbage in [&b"*2\r\n$-7\r\n"[..], b"*abc\r\n"] {
            let mut bad = Conn::connect(main_addr())?;
            anyhow::ensure!(bad.call(&["PING"])? == Value::Simple("PONG".into()));
            bad.write_raw(garbage)?;
            closed.push(
                bad.read_to_close()
                    .map(|rest| String::from_utf8_lossy(&rest).into_owned()),
            );
        }
        // The other connection, open all along, still works; so does a new one.
        let after = good.call(&["GET", "k"])?;
        let fresh = Conn::connect(main_addr())?.call(&["PING"])?;
        Ok((closed, after, fresh))
    });
    let (closed, after, fresh) = outcome;
    for (i, c) in closed.iter().enumerate() {
        assert!(
            c.is_ok(),
            "malformed frame #{i} closes its connection: {c:?}"
        );
    }
    assert_eq!(
        after,
        Value::bulk("before"),
        "the other connection keeps working"
    );
    assert_eq!(fresh, Value::Simple("PONG".into()));
}

#[test]
fn redis_no_endpoints() {
    let mesh = Mesh::redis("codec-noep");
    mesh.wait("the proxy answers -ERR mesh: …", || {
        let out = mesh.redis_cli(REDIS_NONE_IP, &["GET", "anything"], "");
        match out.contains("ERR mesh:") {
            true => Ok(()),
            false => Err(out),
        }
    });
    // The answer names what has no endpoints, and the connection stays usable for the next.
    let out = mesh.redis_cli(REDIS_NONE_IP, &[], "PING\nGET anything\n");
    assert_eq!(out.matches("ERR mesh:").count(), 2, "{out}");
    assert!(out.contains("no endpoints"), "{out}");
    assert!(
        out.contains("redis-none") || out.contains(&REDIS_NONE_IP.to_string()),
        "the reply names the destination: {out}"
    );
    mesh.wait_metric(
        "the local replies are failures, with the proxy's error",
        || mesh.client_metrics(),
        "response_total",
        &[
            "direction=\"outbound\"",
            "codec=\"redis\"",
            "classification=\"failure\"",
            "error=\"",
        ],
        3,
    );
}

#[test]
fn redis_benchmark_smoke() {
    let mesh = Mesh::redis("codec-bench");
    let args: Vec<String> = [
        "-h",
        &MAIN_IP.to_string(),
        "-p",
        "6379",
        "-t",
        "set,get",
        "-n",
        "2000",
        "-c",
        "10",
        "-P",
        "16",
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(&mesh.client, "redis-benchmark", &args, b"");
    let all = text(&out);
    assert!(
        out.status.success(),
        "redis-benchmark through the mesh: {}\n{all}",
        out.status
    );
    for test in ["SET:", "GET:"] {
        assert!(
            all.lines()
                .any(|l| l.contains(test) && l.contains("requests per second")),
            "{test} done: {all}"
        );
    }
    for method in ["SET", "GET"] {
        mesh.wait_metric(
            "the benchmark's requests went through the codec",
            || mesh.client_metrics(),
            "response_total",
            &[
                "direction=\"outbound\"",
                "codec=\"redis\"",
                &format!("method=\"{method}\""),
                "classification=\"success\"",
            ],
            2000,
        );
    }
}

// === Thrift ===

/// Binary clients call `thrift`, compact ones `thrift-compact`: a Thrift service speaks one
/// protocol.
#[test]
fn thrift_binary_and_compact() {
    let mesh = Mesh::thrift("codec-thrift", "");
    let ops = [
        "add:2:3",
        "echo:hello",
        "echo-size:1048576",
        "fail:boom",
        "ping",
        "add:40:2",
        "whoami",
    ];
    let from_client = format!("client_id=\"{CLIENT_ID}\"");
    for (protocol, ip, server) in [
        ("binary", THRIFT_IP, "thrift"),
        ("compact", THRIFT_COMPACT_IP, "thrift-compact"),
    ] {
        let (ok, out) = mesh.thrift_client(ip, protocol, &ops);
        assert!(ok, "{protocol}: {out}\n{}", mesh.diagnostics());
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                "add 5",
                "echo hello",
                "echo-size 1048576 ok",
                "fail CalcError: boom",
                "ping sent",
                "add 42",
                &format!("whoami {server}"),
            ],
            "{protocol}"
        );
        mesh.wait(
            &format!("{protocol}: the oneway call reached {server}"),
            || {
                let (_, out) = mesh.thrift_client(ip, protocol, &["pings"]);
                match out.trim() == "pings 1" {
                    true => Ok(()),
                    false => Err(out),
                }
            },
        );

        // Many calls on one connection.
        let (ok, out) = mesh.thrift_client(ip, protocol, &["--calls", "20", "add:1:1", "echo:x"]);
        assert!(ok, "{protocol}: {out}");
        assert_eq!(out.matches("add 2\n").count(), 20, "{protocol}: {out}");

        mesh.wait_metric(
            &format!("{server}'s proxy counts each add"),
            || mesh.server_metrics(server),
            "request_total",
            &[
                "direction=\"inbound\"",
                "codec=\"thrift\"",
                "method=\"add\"",
            ],
            22,
        );
        mesh.wait_metric(
            &format!("{server}'s proxy got the echo calls over mutual TLS from the client"),
            || mesh.server_metrics(server),
            "request_total",
            &[
                "direction=\"inbound\"",
                "codec=\"thrift\"",
                "method=\"echo\"",
                "tls=\"true\"",
                &from_client,
            ],
            22,
        );
    }
    mesh.wait_metric(
        "the client's proxy counts each add",
        || mesh.client_metrics(),
        "request_total",
        &[
            "direction=\"outbound\"",
            "codec=\"thrift\"",
            "method=\"add\"",
        ],
        44,
    );
    mesh.wait_metric(
        "the adds succeed",
        || mesh.client_metrics(),
        "response_total",
        &[
            "direction=\"outbound\"",
            "codec=\"thrift\"",
            "method=\"add\"",
            "classification=\"success\"",
        ],
        44,
    );

    // No endpoints: a TApplicationException from the proxy, in either protocol.
    for protocol in ["binary", "compact"] {
        mesh.wait(
            &format!("{protocol}: the proxy answers a TApplicationException"),
            || {
                let (ok, out) = mesh.thrift_client(THRIFT_NONE_IP, protocol, &["add:1:2"]);
                match !ok && out.contains("TApplicationException") && out.contains("mesh:") {
                    true => Ok(()),
                    false => Err(out),
                }
            },
        );
    }
    mesh.wait_metric(
        "the local replies are failures, with the proxy's error",
        || mesh.client_metrics(),
        "response_total",
        &[
            "direction=\"outbound\"",
            "codec=\"thrift\"",
            "classification=\"failure\"",
            "error=\"",
        ],
        2,
    );
}

/// A server that speaks both protocols (each connection the one it starts with, as Apache
/// Thrift's `TProtocolUtil.guessProtocolFactory` lets a server do) keeps serving clients of
/// both through the mesh, whichever came first.
#[test]
fn thrift_clients_of_both_protocols_share_a_server() {
    // The mesh is ready once a binary call went through.
    let mesh = Mesh::thrift("codec-thrift-mixed", "");
    for protocol in ["compact", "binary", "compact"] {
        let (ok, out) = mesh.thrift_client(THRIFT_IP, protocol, &["add:1:2", "whoami"]);
        assert!(
            ok && out == "add 3\nwhoami thrift\n",
            "a {protocol} client after a client of the other protocol: {out}\n{}",
            mesh.diagnostics()
        );
    }
}

#[test]
fn thrift_method_routing() {
    let mesh = Mesh::thrift("codec-thrift-route", &echo_route());
    mesh.wait("echo goes to thrift-echo", || {
        let (_, out) = mesh.thrift_client(THRIFT_IP, "binary", &["echo:hi"]);
        match out.trim() == format!("echo {ECHO_MARKER}hi") {
            true => Ok(()),
            false => Err(out),
        }
    });
    let (ok, out) = mesh.thrift_client(
        THRIFT_IP,
        "binary",
        &["--calls", "2", "echo:one", "whoami", "add:1:2", "echo:two"],
    );
    assert!(ok, "{out}");
    let once = [
        format!("echo {ECHO_MARKER}one"),
        "whoami thrift".to_string(),
        "add 3".to_string(),
        format!("echo {ECHO_MARKER}two"),
    ];
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [once.clone(), once].concat(),
        "echo goes to thrift-echo, the rest to thrift"
    );
    mesh.wait_metric(
        "thrift-echo's proxy got the echo calls",
        || mesh.server_metrics("thrift-echo"),
        "request_total",
        &[
            "direction=\"inbound\"",
            "codec=\"thrift\"",
            "method=\"echo\"",
        ],
        5,
    );
    assert_eq!(
        metric_sum(
            &mesh.server_metrics("thrift"),
            "request_total",
            &["codec=\"thrift\"", "method=\"echo\""]
        ),
        0,
        "no echo reached thrift"
    );
}

// === without the mesh ===

/// The tools alone, between two unmeshed pods: what the other tests build on.
#[test]
fn codec_tools_work_without_the_mesh() {
    require_root().expect("end-to-end tests need root and network namespaces");
    check_tools(Codec::Redis);
    check_tools(Codec::Thrift);
    let mut cluster = Cluster::new("codec-plain").expect("cluster");
    let server = cluster.add_pod("server").expect("server pod");
    let client = cluster.add_pod("client").expect("client pod");
    let dir = tempfile::tempdir().expect("a folder");
    let mut redis = redis_server(
        &server,
        "plain",
        REDIS_PORT,
        "0.0.0.0",
        dir.path().join("redis.log"),
    );
    redis.wait_listening(&server, REDIS_PORT);
    let mut thrift = thrift_server(&server, "plain", dir.path().join("thrift.log"));
    thrift.wait_listening(&server, THRIFT_PORT);

    let args: Vec<String> = ["-h", &server.ip.to_string(), "-p", "6379"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = text(&run(&client, "redis-cli", &args, SCRIPT.as_bytes()));
    assert!(out.starts_with("PONG\nhello mesh\nOK\nhello\n"), "{out}");
    let addr = SocketAddr::from((server.ip, REDIS_PORT));
    let reply =
        in_pod(&client, move || Conn::connect(addr)?.call(&["HELLO", "3"])).expect("HELLO 3");
    assert!(matches!(reply, Value::Map(_)), "{reply:?}");

    for protocol in ["binary", "compact"] {
        let args: Vec<String> = [
            "-B",
            &thrift_dir().join("client.py").display().to_string(),
            "--host",
            &server.ip.to_string(),
            "--protocol",
            protocol,
            "add:2:3",
            "echo-size:1048576",
            "fail:boom",
            "ping",
            "pings",
            "whoami",
            "call:nosuch",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = run(&client, PYTHON, &args, b"");
        let all = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "an application exception ends the run: {all}"
        );
        assert!(
            all.starts_with("add 5\necho-size 1048576 ok\nfail CalcError: boom\nping sent\npings ")
                && all.contains("whoami plain\n")
                && all.contains("TApplicationException UNKNOWN_METHOD: unknown method nosuch"),
            "{protocol}: {all}"
        );
    }
}
