//! The demo's supervisor: PID 1 of the demo's namespaces. It builds the cluster, runs it until
//! SIGTERM or SIGINT, tears it down and removes the demo's folder.
//!
//! What runs, in namespace `demo` (the same objects a cluster would hold, in the folder the
//! controllers read):
//!
//! | pod | Deployment | service account | Service | what |
//! |---|---|---|---|---|
//! | `control` | | | | `mesh-controller destination` and `identity` (a CA made for the run) |
//! | `emoji-1` | `emoji` | `emoji` | `emoji-svc:8080` | gRPC `demo.Emoji` |
//! | `redis-1` | `redis` | `redis` | `redis-svc:6379` (`appProtocol: mesh.io/redis`) | the in-memory Redis that keeps the votes |
//! | `voting-1` | `voting` | `voting` | `voting-svc:8080` | gRPC `demo.Voting`, counting in Redis; every doughnut vote fails, and 10 % of calls are refused with `UNAVAILABLE` |
//! | `web-1`, `web-2` | `web` | `web` | `web-svc:80` | the HTTP front end, calling emoji and voting |
//! | `web-v2-1` | `web-v2` | `web` | `web-v2:80` | the front end's canary (`--release v2`) |
//! | `vote-bot-1` | `vote-bot` | `vote-bot` | | votes through `web-svc` a few times a second |
//!
//! Every pod but `control` runs `mesh-init`, `mesh-proxy` (with a certificate for its service
//! account) and its `mesh-demo-app` workload; every hop between them is mutual TLS. The pods
//! have no DNS: the applications connect to a Service's ClusterIP with its name as authority
//! (`--resolve`), and their proxies route by that name, following the routes of
//! [`ROUTES_FILE`] (written once, then the user's to edit): HTTPRoute `web-canary` sends 10 % of
//! `web-svc`'s requests to `web-v2`, GRPCRoute `voting` retries `UNAVAILABLE` calls to voting.
//! The inbound policy of [`POLICY_FILE`] (also the user's) lets only the `web` identity call
//! voting and emoji, and only `voting` call Redis, and limits emoji's rate: `mesh demo exec
//! vote-bot-1 -- mesh-demo-app vote` is refused with `PERMISSION_DENIED`.
//!
//! Redis's Service port says `appProtocol: mesh.io/redis`, so voting's proxy decodes its
//! commands, and redis's proxy decodes them inbound (`MESH_PROXY_INBOUND_CODEC_PORTS`, what the
//! injector sets from the annotation `config.mesh.io/codec-ports` in a cluster): `mesh viz top
//! deploy/voting` shows `HINCRBY` and `HGETALL` beside the gRPC calls.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::READY_LINE;
use crate::local::running::{self, Mode};
use crate::local::{self, Cluster, ControlOptions, ControlPlane, Pod, Proxy};

/// The demo's Kubernetes namespace.
const NAMESPACE: &str = "demo";
/// The port every demo workload but Redis serves on.
const APP_PORT: u16 = 8080;
/// Redis's port.
const REDIS_PORT: u16 = 6379;
/// The service network, routed out of every pod (where the proxies intercept it).
const SERVICE_NETWORK: &str = "10.96.0.0/12";
/// The socket mark of the proxies' own traffic in a user namespace, where they cannot have a
/// uid of their own.
const PROXY_MARK: u32 = 0x2102;
/// The pods' files (proxy keys and certificates, logs), on the tmpfs over `/run` that only the
/// demo's mount namespace sees: they vanish with the demo, however it ends, and the proxies
/// (uid [`local::PROXY_UID`] when root) can read them whatever the permissions of the demo's folder.
const PODS_DIR: &str = "/run/mesh/pods";
/// The bot's votes per second.
const BOT_RATE: &str = "5";
/// The share of voting's calls refused with `UNAVAILABLE` (trailers-only), which the route's
/// retries recover.
const VOTING_UNAVAILABLE_PERCENT: &str = "10";
/// The routes' file in the state folder: the user's to edit while the demo runs.
pub const ROUTES_FILE: &str = "routes.yaml";
/// The share of `web-svc`'s requests that the canary route sends to `web-v2`, in percent.
const CANARY_PERCENT: u32 = 10;
/// The inbound policy's file in the state folder: the user's to edit while the demo runs.
pub const POLICY_FILE: &str = "policy.yaml";
/// emoji's local rate limit: requests per second in total, and per client identity. Far above
/// what the demo's callers send (and what the cluster tier's load tests send through web), so
/// that it protects emoji without refusing them; lower it in `policy.yaml` to see it refuse.
const EMOJI_RATE_LIMIT: (u32, u32) = (2000, 1000);

/// `mesh demo supervise` (hidden): started by `mesh demo up` inside fresh namespaces.
#[derive(clap::Args, Debug)]
pub struct SuperviseArgs {
    /// The demo's folder.
    #[arg(long)]
    pub dir: PathBuf,
    /// How the demo is isolated (what `up` chose).
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// How often to print the workloads' traffic, in seconds.
    #[arg(long, default_value_t = 5)]
    pub every: u64,
}

/// A Service of the demo.
struct Service {
    name: &'static str,
    cluster_ip: Ipv4Addr,
    port: u16,
    /// The port's name and `appProtocol` where it names one (`mesh.io/redis`).
    app_protocol: Option<(&'static str, &'static str)>,
}

impl Service {
    fn host(&self) -> String {
        format!("{}.{NAMESPACE}.svc.cluster.local", self.name)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host(), self.port)
    }

    fn resolve(&self) -> String {
        format!("{}={}", self.host(), self.cluster_ip)
    }
}

const WEB_SVC: Service = Service {
    name: "web-svc",
    cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
    port: 80,
    app_protocol: None,
};
const EMOJI_SVC: Service = Service {
    name: "emoji-svc",
    cluster_ip: Ipv4Addr::new(10, 96, 0, 11),
    port: APP_PORT,
    app_protocol: None,
};
const VOTING_SVC: Service = Service {
    name: "voting-svc",
    cluster_ip: Ipv4Addr::new(10, 96, 0, 12),
    port: APP_PORT,
    app_protocol: None,
};
const REDIS_SVC: Service = Service {
    name: "redis-svc",
    cluster_ip: Ipv4Addr::new(10, 96, 0, 14),
    port: REDIS_PORT,
    app_protocol: Some(("redis", "mesh.io/redis")),
};
const WEB_V2_SVC: Service = Service {
    name: "web-v2",
    cluster_ip: Ipv4Addr::new(10, 96, 0, 13),
    port: 80,
    app_protocol: None,
};

/// A Deployment of the demo: its pods, their service account, the Service that selects them
/// (if any) and the port its application serves on.
struct Workload {
    name: &'static str,
    replicas: usize,
    account: &'static str,
    service: Option<&'static Service>,
    port: u16,
    /// `MESH_PROXY_INBOUND_CODEC_PORTS` of its proxies (in a cluster, the pod's annotation
    /// `config.mesh.io/codec-ports`).
    codec_ports: Option<&'static str>,
}

/// In the order they start: the bot last, once what it calls serves.
const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "emoji",
        replicas: 1,
        account: "emoji",
        service: Some(&EMOJI_SVC),
        port: APP_PORT,
        codec_ports: None,
    },
    Workload {
        name: "redis",
        replicas: 1,
        account: "redis",
        service: Some(&REDIS_SVC),
        port: REDIS_PORT,
        codec_ports: Some("6379=redis"),
    },
    Workload {
        name: "voting",
        replicas: 1,
        account: "voting",
        service: Some(&VOTING_SVC),
        port: APP_PORT,
        codec_ports: None,
    },
    Workload {
        name: "web",
        replicas: 2,
        account: "web",
        service: Some(&WEB_SVC),
        port: APP_PORT,
        codec_ports: None,
    },
    // The canary: the same application and identity, its own Deployment and Service.
    Workload {
        name: "web-v2",
        replicas: 1,
        account: "web",
        service: Some(&WEB_V2_SVC),
        port: APP_PORT,
        codec_ports: None,
    },
    Workload {
        name: "vote-bot",
        replicas: 1,
        account: "vote-bot",
        service: None,
        port: APP_PORT,
        codec_ports: None,
    },
];

impl Workload {
    /// `mesh-demo-app` arguments.
    fn args(&self) -> Vec<String> {
        let listen = format!("0.0.0.0:{}", self.port);
        let args: Vec<String> = match self.name {
            "emoji" => vec!["emoji".into(), "--listen".into(), listen],
            "redis" => vec!["redis".into(), "--port".into(), self.port.to_string()],
            "voting" => vec![
                "voting".into(),
                "--listen".into(),
                listen,
                "--unavailable-percent".into(),
                VOTING_UNAVAILABLE_PERCENT.into(),
                "--redis".into(),
                REDIS_SVC.addr(),
                "--resolve".into(),
                REDIS_SVC.resolve(),
            ],
            "web" | "web-v2" => vec![
                "web".into(),
                "--listen".into(),
                listen,
                "--emoji".into(),
                EMOJI_SVC.url(),
                "--voting".into(),
                VOTING_SVC.url(),
                "--resolve".into(),
                EMOJI_SVC.resolve(),
                "--resolve".into(),
                VOTING_SVC.resolve(),
                "--release".into(),
                if self.name == "web" { "v1" } else { "v2" }.into(),
            ],
            _ => vec![
                "vote-bot".into(),
                "--web".into(),
                WEB_SVC.url(),
                "--resolve".into(),
                WEB_SVC.resolve(),
                "--rate".into(),
                BOT_RATE.into(),
            ],
        };
        args
    }

    fn labels(&self) -> [(&'static str, &'static str); 1] {
        [("app", self.name)]
    }

    /// Its Service and the Service's EndpointSlice (of `pods`), as the destination controller
    /// reads them; a port with an `appProtocol` has it, and its name, on both.
    fn service_yaml(&self, pods: &[Pod]) -> Option<String> {
        let svc = self.service?;
        let yaml = local::service_yaml(
            NAMESPACE,
            svc.name,
            svc.cluster_ip,
            (svc.port, self.port),
            &self.labels(),
            pods,
        );
        let Some((port_name, protocol)) = svc.app_protocol else {
            return Some(yaml);
        };
        // The port is named `http` on both documents; its `targetPort` only on the Service.
        Some(
            yaml.replace("{name: http, ", &format!("{{name: {port_name}, "))
                .replacen(
                    &format!("targetPort: {}}}", self.port),
                    &format!("targetPort: {}, appProtocol: {protocol}}}", self.port),
                    1,
                ),
        )
    }
}

/// Runs the supervisor; the demo's folder is removed on the way out (unless `MESH_KEEP_LOGS`).
pub fn supervise(args: SuperviseArgs) -> anyhow::Result<()> {
    let record = running::start_supervisor(&args.dir, args.mode)?;
    let result = Demo::start(&args, record).and_then(|demo| demo.run(&args));
    if let Err(e) = &result {
        say(&format!("× {e:#}"));
        eprintln!("mesh demo: {e:#}");
    }
    if std::env::var_os("MESH_KEEP_LOGS").is_some() {
        say(&format!("  logs kept in {}", args.dir.display()));
    } else if let Err(e) = running::remove(&args.dir) {
        say(&format!("  × {e:#}"));
    }
    result
}

/// A running demo; dropping it stops everything in the reverse order of starting.
struct Demo {
    apps: Vec<Child>,
    proxies: Vec<(String, Proxy)>,
    control: ControlPlane,
    cluster: Cluster,
    started: Instant,
}

impl Demo {
    fn start(args: &SuperviseArgs, mut record: running::Record) -> anyhow::Result<Demo> {
        let started = Instant::now();
        let dir = &args.dir;
        local::require_root().context("the supervisor is not root in its namespaces")?;
        let mut cluster = step(
            "creating the pod network (a bridge, 10.244.0.0/16, no route off it)",
            || Cluster::new_in("demo", Path::new(PODS_DIR)),
        )?;
        let control_pod = step("creating pod control", || cluster.add_pod("control"))?;
        let control = step(
            "starting the destination and identity controllers in pod control (a fresh CA)",
            || ControlPlane::start(&control_pod, dir, &ControlOptions::default()),
        )?;
        let mut pods: Vec<(&Workload, Pod)> = Vec::new();
        let names: Vec<String> = WORKLOADS
            .iter()
            .flat_map(|w| (1..=w.replicas).map(move |n| format!("{}-{n}", w.name)))
            .collect();
        step(&format!("creating pods {}", names.join(", ")), || {
            for w in &WORKLOADS {
                for n in 1..=w.replicas {
                    let pod = cluster.add_pod(&format!("{}-{n}", w.name))?;
                    pod.route(SERVICE_NETWORK)?;
                    pods.push((w, pod));
                }
            }
            Ok(())
        })?;
        step(
            "writing the cluster's objects (Namespace demo, ServiceAccounts, Services, EndpointSlices)",
            || {
                control.write("namespace-demo.yaml", &namespace_yaml())?;
                for w in &WORKLOADS {
                    let members: Vec<Pod> = pods
                        .iter()
                        .filter(|(pw, _)| pw.name == w.name)
                        .map(|(_, p)| p.clone())
                        .collect();
                    let (Some(svc), Some(yaml)) = (w.service, w.service_yaml(&members)) else {
                        continue;
                    };
                    control.write(&format!("svc-{}.yaml", svc.name), &yaml)?;
                }
                Ok(())
            },
        )?;
        step(
            &format!(
                "writing the routes to state/{ROUTES_FILE}: HTTPRoute web-canary (web-svc {}/{CANARY_PERCENT} % \
                 to web-v2), GRPCRoute voting (retries UNAVAILABLE)",
                100 - CANARY_PERCENT
            ),
            || control.write(ROUTES_FILE, &routes_yaml()),
        )?;
        step(
            &format!(
                "writing the inbound policy to state/{POLICY_FILE}: only identity web may call \
                 voting and emoji, only voting may call redis; emoji limited to {} rps ({} per caller)",
                EMOJI_RATE_LIMIT.0, EMOJI_RATE_LIMIT.1
            ),
            || control.write(POLICY_FILE, &policy_yaml()),
        )?;
        let mut demo = Demo {
            apps: Vec::new(),
            proxies: Vec::new(),
            control,
            cluster,
            started,
        };
        for (w, pod) in &pods {
            let what = format!(
                "starting pod {}: mesh-init, mesh-proxy (identity {}.{NAMESPACE}), {}",
                pod.name, w.account, w.name
            );
            let (proxy, app) = step(&what, || {
                let mut opts =
                    demo.control
                        .enroll_in(pod, NAMESPACE, w.account, &w.labels(), Some(w.name))?;
                if args.mode == Mode::UserNamespace {
                    opts.proxy_mark = Some(PROXY_MARK);
                }
                if let Some(ports) = w.codec_ports {
                    opts.env
                        .push(("MESH_PROXY_INBOUND_CODEC_PORTS".into(), ports.into()));
                }
                let proxy = pod.mesh(opts)?;
                let app = start_app(pod, w)?;
                Ok((proxy, app))
            })?;
            demo.proxies.push((w.name.to_string(), proxy));
            demo.apps.push(app);
        }
        record.ready = true;
        running::write_record(dir, &record)?;
        Ok(demo)
    }

    /// Prints what runs and what to try, then the workloads' traffic every `--every` seconds
    /// until SIGTERM or SIGINT.
    fn run(self, args: &SuperviseArgs) -> anyhow::Result<()> {
        // Whoever started a root demo through sudo needs sudo to look at it.
        let sudo = if args.mode == Mode::Root && std::env::var_os("SUDO_USER").is_some() {
            "sudo "
        } else {
            ""
        };
        say(&format!(
            "\nThe demo is up ({:.1?}): namespace {NAMESPACE}, Deployments web (2 pods), its \
             canary web-v2, emoji, voting, redis (voting's vote store) and vote-bot, every hop \
             mutual TLS. Pods:",
            self.started.elapsed()
        ));
        for pod in self.cluster.pods() {
            say(&format!("  {:<11} {}", pod.name, pod.ip));
        }
        say(&format!(
            "\nSomething is failing. Find it:\n\
             \x20 {sudo}mesh viz stat deploy             golden metrics per Deployment\n\
             \x20 {sudo}mesh viz top deploy/web          live routes through web\n\
             \x20 {sudo}mesh viz top deploy/voting       its gRPC calls and Redis commands\n\
             \x20 {sudo}mesh viz tap deploy/web          live requests (add --path /api/vote)\n\
             \x20 {sudo}mesh viz edges deploy            who talks to whom, with identities\n\
             \x20 {sudo}mesh viz dashboard               all of it at once\n\
             \x20 {sudo}mesh check --proxy               are the proxies healthy\n\
             \nTraffic policy (the routes are {routes}; edit them to move the split live):\n\
             \x20 {sudo}mesh viz routes deploy/vote-bot  web-svc's canary split (web-v2 {CANARY_PERCENT} % to start)\n\
             \x20 {sudo}mesh viz routes deploy/web       the voting route: retries recovering UNAVAILABLE\n\
             \nWho may call what (the policy is {policy}):\n\
             only web may call voting and emoji, and only voting may call redis.\n\
             \x20 {sudo}mesh demo exec vote-bot-1 -- mesh-demo-app vote   refused: PERMISSION_DENIED\n\
             \x20 {sudo}mesh viz authz deploy/voting     allowed and denied, per authorization\n\
             \n\x20 {sudo}mesh demo down                   stop it (or Ctrl-C here)\n",
            routes = self.control.state_dir().join(ROUTES_FILE).display(),
            policy = self.control.state_dir().join(POLICY_FILE).display(),
        ));
        say(READY_LINE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut interrupt = signal(SignalKind::interrupt())?;
            let mut ticks = tokio::time::interval(Duration::from_secs(args.every));
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = interrupt.recv() => break,
                    _ = ticks.tick() => say(&format!("  {}", self.summary())),
                }
            }
            anyhow::Ok(())
        })?;
        say("\nstopping: the bot, the applications, the proxies, the controllers, the pods");
        drop(self);
        say("✔ the demo is down");
        Ok(())
    }

    /// Each workload's inbound requests and success rate, from its proxies.
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        for w in WORKLOADS.iter().filter(|w| w.service.is_some()) {
            let (mut ok, mut failed) = (0u64, 0u64);
            for (_, proxy) in self.proxies.iter().filter(|(n, _)| n == w.name) {
                if let Ok((200, metrics)) = proxy.admin_get("/metrics") {
                    let (o, f) = inbound_responses(&metrics);
                    ok += o;
                    failed += f;
                }
            }
            let total = ok + failed;
            let rate = if total == 0 {
                "-".to_string()
            } else {
                format!("{:.1}%", ok as f64 * 100.0 / total as f64)
            };
            parts.push(format!("{} {total} requests, {rate} success", w.name));
        }
        parts.join(" · ")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The bot last started, first stopped; the cluster's drop ends whatever is left.
        for app in self.apps.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(app.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for app in &mut self.apps {
            let _ = app.wait();
        }
        self.proxies.clear();
    }
}

/// Starts the workload's `mesh-demo-app` in `pod` (logging to `<PODS_DIR>/<pod>.app.log`) and
/// waits until it listens (the bot listens on nothing: it is given a moment to fail).
fn start_app(pod: &Pod, w: &Workload) -> anyhow::Result<Child> {
    let log_path = Path::new(PODS_DIR).join(format!("{}.app.log", pod.name));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = pod
        .command(local::binary("mesh-demo-app")?)
        .args(w.args())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting mesh-demo-app {} in pod {}", w.name, pod.name))?;
    let exited = |child: &mut Child| -> anyhow::Result<()> {
        match child.try_wait()? {
            None => Ok(()),
            Some(status) => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                anyhow::bail!("mesh-demo-app {} exited ({status}): {}", w.name, log.trim())
            }
        }
    };
    if w.service.is_none() {
        std::thread::sleep(Duration::from_millis(300));
        exited(&mut child)?;
        return Ok(child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(pod, w.port) {
        exited(&mut child)?;
        if Instant::now() >= deadline {
            let _ = child.kill();
            anyhow::bail!(
                "mesh-demo-app {} does not listen on port {} after 10s",
                w.name,
                w.port
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// Whether something accepts connections on the pod's application port.
fn listening(pod: &Pod, port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    pod.run_in(move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        Ok(())
    })
    .join()
    .is_ok_and(|r| r.is_ok())
}

/// Sums a proxy's inbound `response_total` by classification: (success, failure).
fn inbound_responses(metrics: &str) -> (u64, u64) {
    let (mut ok, mut failed) = (0u64, 0u64);
    for line in metrics
        .lines()
        .filter(|l| l.starts_with(r#"response_total{direction="inbound""#))
    {
        let n: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if line.contains(r#"classification="success""#) {
            ok += n;
        } else {
            failed += n;
        }
    }
    (ok, failed)
}

/// The Namespace and the ServiceAccounts of the demo.
fn namespace_yaml() -> String {
    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n");
    let mut accounts: Vec<&str> = WORKLOADS.iter().map(|w| w.account).collect();
    accounts.sort_unstable();
    accounts.dedup();
    for account in accounts {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {account}, namespace: {NAMESPACE}}}\n"
        ));
    }
    yaml
}

/// The demo's routes ([`ROUTES_FILE`]), commented for the user who edits them: Gateway API
/// routes with a Service parent, as `manifests/demo/demo.yaml` has them for a cluster.
fn routes_yaml() -> String {
    let (web, v2, voting) = (&WEB_SVC, &WEB_V2_SVC, &VOTING_SVC);
    format!(
        "# The demo's traffic policy: Gateway API routes whose parent is a Service, which the\n\
         # callers' proxies follow. Edit this file while the demo runs: the destination controller\n\
         # rereads it and the proxies follow within a second. Watch it with\n\
         #   mesh viz routes deploy/vote-bot     (the split)\n\
         #   mesh viz routes deploy/web          (the voting route's retries)\n\
         # A file that is not valid YAML keeps its last good routes (see ../destination.log).\n\
         \n\
         # The canary: of the requests to web-svc, {stay} % stay on web-svc's own pods (web-1,\n\
         # web-2) and {canary} % go to web-v2. Change the weights (0 drains a backend), e.g. 50/50.\n\
         apiVersion: gateway.networking.k8s.io/v1\n\
         kind: HTTPRoute\n\
         metadata:\n\
         \x20 name: web-canary\n\
         \x20 namespace: {NAMESPACE}\n\
         spec:\n\
         \x20 parentRefs:\n\
         \x20 - {{group: \"\", kind: Service, name: {web}, port: {web_port}}}\n\
         \x20 rules:\n\
         \x20 - backendRefs:\n\
         \x20   - {{name: {web}, port: {web_port}, weight: {stay}}}\n\
         \x20   - {{name: {v2}, port: {v2_port}, weight: {canary}}}\n\
         ---\n\
         # The voting path: web's calls to voting. voting refuses {unavailable} % of calls with UNAVAILABLE\n\
         # (trailers-only), which the proxy retries, up to twice, each attempt within 500 ms; the\n\
         # doughnut's failure (grpc-status 2, the demo's bug) is not retried. A GRPCRoute has no\n\
         # `timeouts` in Gateway API: the time limit is retry.mesh.io/timeout, per attempt.\n\
         apiVersion: gateway.networking.k8s.io/v1\n\
         kind: GRPCRoute\n\
         metadata:\n\
         \x20 name: voting\n\
         \x20 namespace: {NAMESPACE}\n\
         \x20 annotations:\n\
         \x20   retry.mesh.io/grpc: unavailable\n\
         \x20   retry.mesh.io/limit: \"2\"\n\
         \x20   retry.mesh.io/timeout: 500ms\n\
         spec:\n\
         \x20 parentRefs:\n\
         \x20 - {{group: \"\", kind: Service, name: {voting}, port: {voting_port}}}\n\
         \x20 rules:\n\
         \x20 - backendRefs:\n\
         \x20   - {{name: {voting}, port: {voting_port}}}\n",
        web = web.name,
        web_port = web.port,
        v2 = v2.name,
        v2_port = v2.port,
        voting = voting.name,
        voting_port = voting.port,
        stay = 100 - CANARY_PERCENT,
        canary = CANARY_PERCENT,
        unavailable = VOTING_UNAVAILABLE_PERCENT,
    )
}

/// The demo's inbound policy ([`POLICY_FILE`]), commented for the user who edits it:
/// `policy.mesh.io` resources, as `manifests/demo/demo.yaml` has them for a cluster.
fn policy_yaml() -> String {
    let (total, per_caller) = EMOJI_RATE_LIMIT;
    format!(
        "# The demo's inbound policy: who may call what. A Server names a port of some pods; once\n\
         # one does, only what an AuthorizationPolicy allows gets in (403, or PERMISSION_DENIED for\n\
         # gRPC). Edit this file while the demo runs: new requests follow within a second. Watch it\n\
         # with\n\
         #   mesh viz authz deploy/voting     (allowed and denied rates, per authorization)\n\
         #   mesh viz tap deploy/voting       (denials show as grpc-status 7)\n\
         # Try it: mesh demo exec vote-bot-1 -- mesh-demo-app vote   (vote-bot is not web)\n\
         \n\
         # The identity of web's pods (web-1, web-2 and the canary web-v2 share it).\n\
         apiVersion: policy.mesh.io/v1alpha1\n\
         kind: MeshTLSAuthentication\n\
         metadata: {{name: web, namespace: {NAMESPACE}}}\n\
         spec:\n\
         \x20 identityRefs:\n\
         \x20 - {{kind: ServiceAccount, name: web}}\n\
         ---\n\
         # voting's gRPC port: only web may call it.\n\
         apiVersion: policy.mesh.io/v1alpha1\n\
         kind: Server\n\
         metadata: {{name: voting-grpc, namespace: {NAMESPACE}}}\n\
         spec:\n\
         \x20 podSelector: {{matchLabels: {{app: voting}}}}\n\
         \x20 port: {APP_PORT}\n\
         \x20 proxyProtocol: gRPC\n\
         ---\n\
         apiVersion: policy.mesh.io/v1alpha1\n\
         kind: AuthorizationPolicy\n\
         metadata: {{name: voting-from-web, namespace: {NAMESPACE}}}\n\
         spec:\n\
         \x20 targetRef: {{group: policy.mesh.io, kind: Server, name: voting-grpc}}\n\
         \x20 requiredAuthenticationRefs:\n\
         \x20 - {{group: policy.mesh.io, kind: MeshTLSAuthentication, name: web}}\n\
         ---\n\
         # emoji's gRPC port: only web may call it, at most {total} requests per second in all and\n\
         # {per_caller} per caller (429, or RESOURCE_EXHAUSTED for gRPC, beyond). Lower them to see it.\n\
         apiVersion: policy.mesh.io/v1alpha1\n\
         kind: Server\n\
         metadata: {{name: emoji-grpc, namespace: {NAMESPACE}}}\n\
         spec:\n\
         \x20 podSelector: {{matchLabels: {{app: emoji}}}}\n\
         \x20 port: {APP_PORT}\n\
         \x20 proxyProtocol: gRPC\n\
         ---\n\
         apiVersion: policy.mesh.io/v1alpha1\n\
         kind: AuthorizationPolicy\n\
         metadata: {{name: emoji-from-web, namespace: {NAMESPACE}}}\n\
         spec:\n\
         \x20 targetRef: {{group: policy.mesh.io, kind: Server, name: emoji-grpc}}\n\
         \x20 requiredAuthenticationRefs:\n\
         \x20 - {{group: policy.mesh.io, kind: MeshTLSAuthentication, name: web}}\n\
         ---\n\
         apiVersion: policy.mesh.io/v1alpha1\n\
         kind: HTTPLocalRateLimitPolicy\n\
         metadata: {{name: emoji-rate, namespace: {NAMESPACE}}}\n\
         spec:\n\
         \x20 targetRef: {{group: policy.mesh.io, kind: Server, name: emoji-grpc}}\n\
         \x20 total: {{requestsPerSecond: {total}}}\n\
         \x20 identity: {{requestsPerSecond: {per_caller}}}\n\
         ---\n\
         # redis's port: only voting may call it. No proxyProtocol (not opaque): the port's\n\
         # codec (MESH_PROXY_INBOUND_CODEC_PORTS) decodes Redis's commands.\n\
         apiVersion: policy.mesh.io/v1alpha1\n\
         kind: MeshTLSAuthentication\n\
         metadata: {{name: voting, namespace: {NAMESPACE}}}\n\
         spec:\n\
         \x20 identityRefs:\n\
         \x20 - {{kind: ServiceAccount, name: voting}}\n\
         ---\n\
         apiVersion: policy.mesh.io/v1alpha1\n\
         kind: Server\n\
         metadata: {{name: redis, namespace: {NAMESPACE}}}\n\
         spec:\n\
         \x20 podSelector: {{matchLabels: {{app: redis}}}}\n\
         \x20 port: {REDIS_PORT}\n\
         ---\n\
         apiVersion: policy.mesh.io/v1alpha1\n\
         kind: AuthorizationPolicy\n\
         metadata: {{name: redis-from-voting, namespace: {NAMESPACE}}}\n\
         spec:\n\
         \x20 targetRef: {{group: policy.mesh.io, kind: Server, name: redis}}\n\
         \x20 requiredAuthenticationRefs:\n\
         \x20 - {{group: policy.mesh.io, kind: MeshTLSAuthentication, name: voting}}\n"
    )
}

/// What `mesh demo exec` hands its command in `MESH_DEMO_RESOLVE`: the demo's Services as
/// `HOST=IP` pairs, comma-separated (the pods have no DNS).
pub fn resolve_env() -> String {
    [&WEB_SVC, &EMOJI_SVC, &VOTING_SVC, &WEB_V2_SVC, &REDIS_SVC]
        .iter()
        .map(|s| s.resolve())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs one setup step, printing it with a tick (or a cross) and how long it took.
fn step<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    match f() {
        Ok(t) => {
            say(&format!("  ✔ {what} ({:.0?})", start.elapsed()));
            Ok(t)
        }
        Err(e) => {
            say(&format!("  × {what}"));
            Err(e.context(what.to_string()))
        }
    }
}

/// Prints a line for `mesh demo up` to relay; once it has gone (`--detach`), nobody reads:
/// that is not an error.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    #[test]
    fn inbound_responses_are_summed_by_classification() {
        let metrics = r#"
response_total{direction="inbound",authority="web",classification="success",status_code="200"} 18
response_total{direction="inbound",authority="web",classification="failure",status_code="500"} 2
response_total{direction="outbound",authority="x",classification="failure",status_code="500"} 7
"#;
        assert_eq!(super::inbound_responses(metrics), (18, 2));
        assert_eq!(super::inbound_responses(""), (0, 0));
    }

    /// The routes file as the destination controller reads it, beside the demo's Services:
    /// every document valid, the split and the retries as the demo means them.
    #[test]
    fn the_routes_are_what_the_controller_serves() {
        use super::*;
        let mut texts = vec![routes_yaml()];
        texts.extend(WORKLOADS.iter().filter_map(|w| w.service_yaml(&[])));
        check_routes(&texts);
    }

    /// The cluster's demo routes as the local one does.
    #[test]
    fn the_cluster_demo_has_the_same_routes() {
        let manifest = include_str!("../../../manifests/demo/demo.yaml");
        check_routes(&[manifest.to_string()]);
    }

    fn check_routes(texts: &[String]) {
        use super::*;
        use mesh_api::policy::RouteKind;
        use mesh_controller::index::{Index, IndexConfig, Target};
        use mesh_controller::source::folder::parse_yaml;

        let mut index = Index::new(IndexConfig::default());
        for text in texts {
            let (objects, errors) = parse_yaml(text);
            assert!(errors.is_empty(), "{errors:?}\n{text}");
            for object in objects {
                index.apply(object);
            }
        }
        let policy = |svc: &Service| {
            let target = Target::Service {
                namespace: NAMESPACE.into(),
                name: svc.name.into(),
                port: svc.port,
                hostname: None,
            };
            index.outbound_policy(&target, Some(NAMESPACE))
        };

        let web = policy(&WEB_SVC);
        assert_eq!(web.routes.len(), 1, "{web:?}");
        let route = &web.routes[0];
        assert_eq!(
            (route.kind, route.name.as_str()),
            (RouteKind::Http, "web-canary")
        );
        let backends: Vec<(&str, u32, Option<&String>)> = route.rules[0]
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.weight, b.error.as_ref()))
            .collect();
        assert_eq!(backends, [("web-svc", 90, None), ("web-v2", 10, None)]);

        let voting = policy(&VOTING_SVC);
        assert_eq!(voting.routes.len(), 1, "{voting:?}");
        let route = &voting.routes[0];
        assert_eq!(
            (route.kind, route.name.as_str()),
            (RouteKind::Grpc, "voting")
        );
        let rule = &route.rules[0];
        assert_eq!(rule.backends.len(), 1);
        assert_eq!(rule.backends[0].error, None);
        let retry = rule.retry.as_ref().expect("a retry");
        assert_eq!(
            (retry.grpc.as_slice(), retry.limit, retry.timeout_ms),
            (&[14][..], 2, Some(500))
        );

        // Nothing else is routed: emoji keeps its default route.
        assert!(policy(&EMOJI_SVC).routes.is_empty());
        assert_eq!(policy(&EMOJI_SVC).codec, None);

        // Redis's port has the Redis codec (its `appProtocol`), and no route.
        let redis = policy(&REDIS_SVC);
        assert_eq!(redis.codec.as_deref(), Some("redis"), "{redis:?}");
        assert!(redis.routes.is_empty(), "{redis:?}");
    }

    /// The policy file as the destination controller reads it, beside the demo's pods: only
    /// web may call voting and emoji, only voting may call redis, and emoji is rate-limited.
    #[test]
    fn the_policy_is_what_the_controller_serves() {
        check_policy(&super::policy_yaml());
    }

    /// The cluster's demo policy as the local one does.
    #[test]
    fn the_cluster_demo_has_the_same_policy() {
        check_policy(include_str!("../../../manifests/demo/demo.yaml"));
    }

    fn check_policy(text: &str) {
        use super::*;
        use mesh_api::inbound::{Access, ProxyProtocol, Requirement};
        use mesh_controller::index::{Index, IndexConfig};
        use mesh_controller::source::folder::parse_yaml;

        let mut index = Index::new(IndexConfig::default());
        let pods: String = [
            ("emoji", "grpc", APP_PORT),
            ("voting", "grpc", APP_PORT),
            ("vote-bot", "grpc", APP_PORT),
            ("web", "grpc", APP_PORT),
            ("redis", "redis", REDIS_PORT),
        ]
        .iter()
        .enumerate()
        .map(|(i, (app, port_name, port))| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {app}-1, namespace: {NAMESPACE}, \
                 labels: {{app: {app}}}}}\nspec: {{serviceAccountName: {app}, containers: \
                 [{{name: app, image: app, ports: [{{name: {port_name}, containerPort: {port}}}]}}]}}\n\
                 status: {{podIP: 10.244.0.{}}}\n",
                i + 3
            )
        })
        .collect();
        for text in [text, &pods] {
            let (objects, errors) = parse_yaml(text);
            assert!(errors.is_empty(), "{errors:?}\n{text}");
            for object in objects {
                index.apply(object);
            }
        }
        let identity = |sa: &str| format!("{sa}.demo.serviceaccount.identity.mesh.cluster.local");
        for (pod, port, server, protocol, authz, client) in [
            (
                "voting-1",
                APP_PORT,
                "voting-grpc",
                ProxyProtocol::Grpc,
                "voting-from-web",
                "web",
            ),
            (
                "emoji-1",
                APP_PORT,
                "emoji-grpc",
                ProxyProtocol::Grpc,
                "emoji-from-web",
                "web",
            ),
            // No proxyProtocol (not opaque), so that the port's codec sees Redis's commands.
            (
                "redis-1",
                REDIS_PORT,
                "redis",
                ProxyProtocol::Unknown,
                "redis-from-voting",
                "voting",
            ),
        ] {
            let policy = index.inbound_policy(NAMESPACE, pod, port);
            let name = policy.server.as_ref().map(|s| s.name.as_str());
            assert_eq!(name, Some(server), "{policy:?}");
            assert_eq!((policy.protocol, policy.access), (protocol, Access::Deny));
            assert_eq!(policy.authorizations.len(), 1, "{policy:?}");
            let a = &policy.authorizations[0];
            assert_eq!(a.name, authz);
            assert_eq!(
                a.requires,
                [Requirement::MeshTls {
                    identities: vec![identity(client)]
                }]
            );
        }
        let limit = index
            .inbound_policy(NAMESPACE, "emoji-1", APP_PORT)
            .rate_limit
            .expect("emoji's rate limit");
        assert_eq!(
            (limit.name.as_str(), limit.total, limit.identity),
            ("emoji-rate", Some(2000), Some(1000))
        );
        assert_eq!(
            (limit.total, limit.identity),
            (Some(EMOJI_RATE_LIMIT.0), Some(EMOJI_RATE_LIMIT.1))
        );
        // Nothing else has a Server: the default policy.
        for pod in ["web-1", "vote-bot-1"] {
            assert_eq!(index.inbound_policy(NAMESPACE, pod, APP_PORT).server, None);
        }
    }

    #[test]
    fn the_objects_parse_as_kubernetes_objects() {
        let yaml = super::namespace_yaml();
        let (_, docs) = crate::manifest::parse(&yaml, "namespace").unwrap();
        assert_eq!(docs.len(), 6, "the Namespace and 5 ServiceAccounts");
        for doc in &docs {
            crate::manifest::check_typed(doc).unwrap();
        }
    }

    /// The cluster's demo has the local one's Redis: the Service's `appProtocol`, the pods'
    /// codec annotation (what the local proxies get in `MESH_PROXY_INBOUND_CODEC_PORTS`), and
    /// voting told where it is.
    #[test]
    fn the_cluster_demo_has_the_same_redis() {
        use super::*;
        let text = include_str!("../../../manifests/demo/demo.yaml");
        let (_, docs) = crate::manifest::parse(text, "demo.yaml").unwrap();
        let find = |kind: &str, name: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("no {kind} {name} in demo.yaml"))
        };
        let port = &find("Service", REDIS_SVC.name)["spec"]["ports"][0];
        assert_eq!(port["port"], REDIS_SVC.port);
        assert_eq!(port["appProtocol"], "mesh.io/redis");
        let redis = WORKLOADS.iter().find(|w| w.name == "redis").unwrap();
        let template = &find("Deployment", "redis")["spec"]["template"];
        assert_eq!(
            template["metadata"]["annotations"]["config.mesh.io/codec-ports"],
            redis.codec_ports.unwrap()
        );
        assert_eq!(template["spec"]["containers"][0]["args"][0], "redis");
        let voting = &find("Deployment", "voting")["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(voting["env"][0]["name"], "MESH_DEMO_REDIS");
        assert_eq!(voting["env"][0]["value"], REDIS_SVC.addr());
        for doc in docs
            .iter()
            .filter(|d| d["apiVersion"] == "v1" || d["apiVersion"] == "apps/v1")
        {
            crate::manifest::check_typed(doc).unwrap();
        }
    }

    /// Redis's Service names its port `redis` with `appProtocol: mesh.io/redis`, and its
    /// EndpointSlice names the port alike (the controller pairs them by name).
    #[test]
    fn the_redis_service_has_its_app_protocol() {
        use super::*;
        let pod = Pod {
            name: "redis-1".into(),
            netns: "demo-redis-1".into(),
            ip: Ipv4Addr::new(10, 244, 0, 9),
            log_dir: Default::default(),
        };
        let redis = WORKLOADS.iter().find(|w| w.name == "redis").unwrap();
        let yaml = redis.service_yaml(&[pod]).unwrap();
        let (_, docs) = crate::manifest::parse(&yaml, "redis").unwrap();
        assert_eq!(docs.len(), 2, "{yaml}");
        crate::manifest::check_typed(&docs[0]).unwrap();
        let port = &docs[0]["spec"]["ports"][0];
        assert_eq!(port["name"], "redis", "{yaml}");
        assert_eq!(port["port"], 6379, "{yaml}");
        assert_eq!(port["targetPort"], 6379, "{yaml}");
        assert_eq!(port["appProtocol"], "mesh.io/redis", "{yaml}");
        assert_eq!(docs[1]["ports"][0]["name"], "redis", "{yaml}");
        assert_eq!(docs[1]["endpoints"][0]["addresses"][0], "10.244.0.9");
        // The others are as local::service_yaml writes them.
        let emoji = &WORKLOADS[0];
        assert_eq!(
            emoji.service_yaml(&[]).unwrap(),
            local::service_yaml(
                NAMESPACE,
                "emoji-svc",
                EMOJI_SVC.cluster_ip,
                (8080, 8080),
                &emoji.labels(),
                &[]
            )
        );
    }
}
