//! `mesh demo` end to end, through the real `mesh` binary: `up --detach`, then what a newcomer
//! would look at (`mesh viz edges`, `stat`, `tap`, `mesh check --proxy`), the traffic policy
//! (`mesh viz routes`: the canary's split, the voting route's retries, and the split moved by
//! editing `routes.yaml` in the state folder), then `down`, which must leave nothing behind; and
//! `down` after the demo was killed with SIGKILL.
//!
//! As root, and (when this host allows unprivileged user namespaces) once more as an ordinary
//! user, which runs the demo inside a user namespace. The demos run one at a time: each is a
//! dozen processes, and this machine is small.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mesh_tests::fixtures::eventually;
use serde_json::Value;

/// One demo at a time.
static DEMO: Mutex<()> = Mutex::new(());

/// The uid the unprivileged runs use.
const NOBODY: u32 = 65534;

/// How the `mesh` commands of a test run: as root or as `nobody`, with the demo's folder.
struct User {
    uid: Option<u32>,
    dir: PathBuf,
    mesh: PathBuf,
}

impl User {
    fn root(dir: &Path) -> User {
        User {
            uid: None,
            dir: dir.join("local"),
            mesh: mesh_cli::local::binary("mesh").expect("the mesh binary"),
        }
    }

    /// `nobody`, whose folder is a fresh one it owns.
    fn nobody(dir: &Path) -> User {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mesh = mesh_cli::local::binary("mesh").expect("the mesh binary");
        User {
            uid: Some(NOBODY),
            dir: dir.join("local"),
            mesh,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let bin_dir = self.mesh.parent().unwrap();
        let mut cmd = match self.uid {
            None => Command::new(&self.mesh),
            Some(uid) => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(&self.mesh);
                cmd.env("HOME", self.dir.parent().unwrap());
                cmd
            }
        };
        cmd.args(args)
            .env("MESH_LOCAL_STATE", &self.dir)
            .env("MESH_BIN_DIR", bin_dir)
            .env_remove("CARGO")
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running mesh")
    }

    /// Runs `mesh args…`, fails the test unless it exits 0, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "mesh {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn record(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.join("run.json")).expect("run.json");
        serde_json::from_str(&text).expect("run.json is JSON")
    }
}

/// What of the demo the host could see: processes in its PID namespace, holders of its network
/// namespace, and the host's mounts.
#[derive(Debug)]
struct Traces {
    pid_ns: PathBuf,
    net_ns: PathBuf,
    mounts: BTreeSet<String>,
}

impl Traces {
    fn of(pid: u64) -> Traces {
        let link = |ns: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        Traces {
            pid_ns: link("pid"),
            net_ns: link("net"),
            mounts: host_mounts(),
        }
    }

    /// Processes whose PID or network namespace is the demo's.
    fn processes(&self) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            for (ns, expected) in [("pid", &self.pid_ns), ("net", &self.net_ns)] {
                if std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
                    .ok()
                    .as_ref()
                    == Some(expected)
                {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    found.push(format!(
                        "{pid} ({ns}): {}",
                        String::from_utf8_lossy(&cmdline).replace('\0', " ")
                    ));
                }
            }
        }
        found
    }

    /// Waits until nothing of the demo is left, or fails with what is.
    fn assert_gone(&self, dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let processes = self.processes();
            let mounts: Vec<String> = host_mounts().difference(&self.mounts).cloned().collect();
            let files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            if processes.is_empty() && mounts.is_empty() && files.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the demo left processes {processes:#?}, mounts {mounts:#?}, files {files:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The host's mount points (what `mesh demo` must never add to).
fn host_mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The tier's `eventually` for a blocking check: polls `f` until it is true or `deadline`
/// passes.
fn eventually_sync(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
        .block_on(eventually(deadline, || std::future::ready(f())))
}

/// The row of route `name` in `mesh viz routes -o json`.
fn route<'a>(routes: &'a Value, name: &str) -> Option<&'a Value> {
    routes["routes"]
        .as_array()?
        .iter()
        .find(|r| r["route"]["name"] == name)
}

/// The requests of a route's backend `name` (0 when it is not listed).
fn backend_requests(route: &Value, name: &str) -> u64 {
    route["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["backend"]["name"] == name)
        .and_then(|b| b["requests"].as_u64())
        .unwrap_or(0)
}

/// The traffic policy of the demo: its routes and the canary's pod in the state folder, the
/// split and the retries in `mesh viz routes`, and the split moved by editing the routes' file.
fn traffic_policy(user: &User) {
    let state = user.dir.join("state");
    let routes_file = state.join("routes.yaml");
    let routes_text =
        std::fs::read_to_string(&routes_file).expect("routes.yaml in the state folder");
    for expected in [
        "kind: HTTPRoute",
        "name: web-canary",
        "weight: 90",
        "weight: 10",
        "kind: GRPCRoute",
        "retry.mesh.io/grpc: unavailable",
    ] {
        assert!(
            routes_text.contains(expected),
            "no {expected:?} in:\n{routes_text}"
        );
    }
    assert!(
        state.join("pod-demo-web-v2-1.yaml").exists(),
        "no Pod object of web-v2-1 in {}",
        state.display()
    );

    // The bot's proxy splits web-svc's requests: both backends of web-canary get some, most
    // stay on web-svc.
    let mut routes = Value::Null;
    let split = eventually_sync(Duration::from_secs(60), || {
        routes = json(&user.ok(&[
            "viz",
            "routes",
            "deploy/vote-bot",
            "--window",
            "0s",
            "-o",
            "json",
        ]));
        route(&routes, "web-canary").is_some_and(|r| {
            let (stay, canary) = (
                backend_requests(r, "web-svc"),
                backend_requests(r, "web-v2"),
            );
            r["route"]["kind"] == "HTTPRoute" && canary > 0 && stay > canary
        })
    });
    assert!(
        split,
        "web-canary never sent most requests to web-svc and some to web-v2: {routes:#}"
    );

    // web's proxy retries the calls voting refuses with UNAVAILABLE, and the retries succeed.
    let retried = eventually_sync(Duration::from_secs(60), || {
        routes = json(&user.ok(&[
            "viz",
            "routes",
            "deploy/web",
            "--window",
            "0s",
            "-o",
            "json",
        ]));
        route(&routes, "voting").is_some_and(|r| {
            r["route"]["kind"] == "GRPCRoute" && r["retries"]["success"].as_u64().unwrap_or(0) > 0
        })
    });
    assert!(
        retried,
        "the voting route never retried successfully: {routes:#}"
    );

    // Editing the file moves the split live: all to web-v2.
    let all_to_v2 = routes_text
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 100");
    assert_ne!(all_to_v2, routes_text);
    std::fs::write(&routes_file, &all_to_v2).unwrap();
    let moved = eventually_sync(Duration::from_secs(60), || {
        routes = json(&user.ok(&[
            "viz",
            "routes",
            "deploy/vote-bot",
            "--window",
            "2s",
            "-o",
            "json",
        ]));
        route(&routes, "web-canary").is_some_and(|r| {
            backend_requests(r, "web-svc") == 0 && backend_requests(r, "web-v2") > 0
        })
    });
    assert!(
        moved,
        "the split never moved to web-v2 after editing routes.yaml: {routes:#}"
    );
    // And back, for the rest of the tour (which counts web's failures).
    std::fs::write(&routes_file, &routes_text).unwrap();
}

/// The newcomer's tour: up, look around, down, nothing left.
/// Brings a detached demo down when dropped, so that a failing test leaves nothing running.
struct DownOnDrop<'a>(&'a User);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["demo", "down"]);
    }
}

fn tour(user: &User) {
    let _down = DownOnDrop(user);
    let up = user.ok(&["demo", "up", "--detach"]);
    assert!(up.contains("✔ starting pod vote-bot-1"), "{up}");
    assert!(up.contains("✔ starting pod redis-1"), "{up}");
    assert!(up.contains("mesh viz stat deploy"), "{up}");
    let record = user.record();
    assert_eq!(record["ready"], true, "{record}");
    let traces = Traces::of(record["pid"].as_u64().unwrap());

    // A second `up` refuses while one runs.
    let again = user.run(&["demo", "up", "--detach"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    // Let the bot vote for a while (bounded: the doughnut is one choice in eight, 5 votes/s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let web = loop {
        let stat = json(&user.ok(&["viz", "stat", "deploy", "--window", "0s", "-o", "json"]));
        let row = |name: &str| {
            stat.as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("no deploy/{name} in {stat}"))
        };
        let (web, emoji) = (row("web"), row("emoji"));
        let failing = web["successRate"].as_f64().is_some_and(|r| r < 1.0);
        if failing && emoji["responses"].as_f64().unwrap_or(0.0) > 0.0 {
            assert_eq!(emoji["successRate"], 1.0, "emoji never fails: {emoji}");
            assert_eq!(row("voting")["meshedPods"], 1);
            assert_eq!(row("redis")["meshedPods"], 1);
            break web;
        }
        assert!(Instant::now() < deadline, "web never failed in 60s: {stat}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(web["meshedPods"], 2, "{web}");

    traffic_policy(user);

    // Every edge is mutual TLS, with the workloads' identities.
    let edges = json(&user.ok(&["viz", "edges", "deploy", "-o", "json"]));
    let edges = edges.as_array().unwrap();
    let pairs: BTreeSet<(String, String)> = edges
        .iter()
        .map(|e| {
            assert_eq!(e["mtls"], true, "{e}");
            (
                e["src"]["name"].as_str().unwrap().to_string(),
                e["dst"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for pair in [
        ("vote-bot", "web"),
        ("web", "emoji"),
        ("web", "voting"),
        ("voting", "redis"),
    ] {
        assert!(
            pairs.contains(&(pair.0.into(), pair.1.into())),
            "no edge {pair:?} in {edges:#?}"
        );
    }
    let web_to_voting = edges.iter().find(|e| e["dst"]["name"] == "voting").unwrap();
    assert_eq!(
        web_to_voting["serverId"],
        "voting.demo.serviceaccount.identity.mesh.cluster.local"
    );
    let voting_to_redis = edges.iter().find(|e| e["dst"]["name"] == "redis").unwrap();
    assert_eq!(
        voting_to_redis["serverId"],
        "redis.demo.serviceaccount.identity.mesh.cluster.local"
    );

    // A vote as web (whom the policy lets call voting) is counted in Redis, through voting's
    // proxy and redis's (whose policy lets only voting in).
    let voted = user.ok(&["demo", "exec", "web-1", "--", "mesh-demo-app", "vote"]);
    assert!(voted.contains("voted for :joy:"), "{voted}");

    // The failing method, with its grpc-status, in the tap of web.
    // (One vote in eight is for the doughnut, five votes a second: 8 s of tap misses it about
    // once in two hundred; a few more taps, bounded, make that vanishingly rare.)
    let mut taps = 0;
    let (tap, events) = loop {
        taps += 1;
        let tap = user.ok(&["viz", "tap", "deploy/web", "-o", "json", "--duration", "8s"]);
        let events: Vec<Value> = tap.lines().map(json).collect();
        let voted = events
            .iter()
            .any(|e| e["event"] == "requestStart" && e["path"] == "/demo.Voting/VoteDoughnut");
        if voted || taps == 3 {
            break (tap, events);
        }
    };
    let doughnut: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "requestStart" && e["path"] == "/demo.Voting/VoteDoughnut")
        .collect();
    assert!(
        !doughnut.is_empty(),
        "no VoteDoughnut request in {taps} taps of 8s:\n{tap}"
    );
    let failed = events.iter().any(|e| {
        e["event"] == "responseEnd"
            && e["grpcStatus"] == 2
            && doughnut
                .iter()
                .any(|d| d["id"] == e["id"] && d["pod"] == e["pod"])
    });
    assert!(failed, "no VoteDoughnut ended with grpc-status 2:\n{tap}");

    let check = user.ok(&["check", "--proxy"]);
    assert!(check.contains("Status check results are ✔"), "{check}");

    let down = user.ok(&["demo", "down"]);
    assert!(down.contains("stopping the local mesh"), "{down}");
    traces.assert_gone(&user.dir);
    let after = user.ok(&["demo", "down"]);
    assert!(after.contains("no local mesh is running"), "{after}");
}

/// SIGKILL the supervisor: everything in its namespaces dies with it; `down` removes the folder.
fn killed(user: &User) {
    let _down = DownOnDrop(user);
    user.ok(&["demo", "up", "--detach"]);
    let pid = user.record()["pid"].as_u64().unwrap();
    let traces = Traces::of(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The commands now know it is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the supervisor survived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stat = user.run(&["viz", "stat", "deploy", "--target", "local"]);
    assert!(!stat.status.success());
    assert!(
        String::from_utf8_lossy(&stat.stderr).contains("mesh demo down"),
        "{}",
        String::from_utf8_lossy(&stat.stderr)
    );
    let down = user.ok(&["demo", "down"]);
    assert!(down.contains("ended without cleaning up"), "{down}");
    traces.assert_gone(&user.dir);
    // And the next demo starts clean.
    user.ok(&["demo", "up", "--detach"]);
    user.ok(&["demo", "down"]);
}

fn root_user() -> (tempfile::TempDir, User) {
    mesh_cli::local::require_root().expect("mesh demo's end-to-end tests run as root");
    let dir = tempfile::tempdir().unwrap();
    let user = User::root(dir.path());
    (dir, user)
}

/// As `nobody`, in a user namespace: fails (not skips) where the host forbids it, saying so.
fn nobody_user() -> (tempfile::TempDir, User) {
    mesh_cli::local::require_root().expect("the rootless runs start as root to become nobody");
    let probe = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
        ])
        .args([
            "unshare",
            "--user",
            "--map-root-user",
            "--net",
            "--mount",
            "true",
        ])
        .output()
        .expect("setpriv");
    assert!(
        probe.status.success(),
        "this host does not allow unprivileged user namespaces ({}): the rootless demo cannot be tested here",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let dir = tempfile::tempdir().unwrap();
    let user = User::nobody(dir.path());
    let exe = user.run(&["--version"]);
    assert!(
        exe.status.success(),
        "nobody cannot run {} ({}): the rootless demo needs the build folder readable by all",
        user.mesh.display(),
        String::from_utf8_lossy(&exe.stderr).trim()
    );
    (dir, user)
}

#[test]
fn demo_as_root() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, user) = root_user();
    tour(&user);
}

#[test]
fn demo_killed_as_root() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, user) = root_user();
    killed(&user);
}

#[test]
fn demo_without_root() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, user) = nobody_user();
    tour(&user);
}

#[test]
fn demo_killed_without_root() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, user) = nobody_user();
    killed(&user);
}
