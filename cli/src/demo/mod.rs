//! `mesh demo`: a whole meshed application on this machine, with no cluster.
//!
//! `mesh demo up` (the default) starts a supervisor in namespaces of its own (see
//! [`crate::local::running`]): without root inside one unprivileged user namespace where the
//! host allows it, otherwise as root. The supervisor ([`supervisor`]) builds the pods, the
//! control plane and the demo application, and reports each step on a pipe that `up` relays;
//! `up` then either stays until Ctrl-C (and asks the supervisor to tear down) or, with
//! `--detach`, returns once everything is ready. `mesh demo down` stops a running demo and
//! removes what a crashed one left in its folder. `mesh demo exec POD -- COMMAND` runs a
//! command inside one of its pods, like `kubectl exec`.

mod supervisor;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::AsyncBufReadExt as _;

use crate::local::running::{self, Found, Mode};

pub use supervisor::SuperviseArgs;

/// The line the supervisor prints when everything is ready (not shown to the user).
const READY_LINE: &str = "::mesh-demo-ready::";

/// How long `down` waits for the supervisor to tear down before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// `mesh demo [up|down]`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub command: Option<DemoCommand>,
    #[command(flatten)]
    pub up: UpArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum DemoCommand {
    /// Starts the demo (the default): pods, control plane, the demo application and its load.
    Up(UpArgs),
    /// Stops the running demo and removes its folder; also cleans up after a crashed one.
    Down,
    /// Runs a command inside a pod of the running demo, like `kubectl exec`: its connections
    /// go through the pod's proxy. The demo's binaries are on its PATH, and the demo's Services
    /// in MESH_DEMO_RESOLVE (HOST=IP,…; the pods have no DNS), which `mesh-demo-app` reads.
    ///
    /// `mesh demo exec vote-bot-1 -- mesh-demo-app vote` casts a vote as vote-bot, which the
    /// demo's policy refuses.
    Exec(ExecArgs),
    /// The supervisor, inside the demo's namespaces (started by `up`).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Returns once the demo is ready and leaves it running; `mesh demo down` stops it.
    #[arg(long)]
    pub detach: bool,
    /// In the foreground: how often to print each workload's requests and success rate, in
    /// seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub every: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExecArgs {
    /// The pod (`vote-bot-1`; `mesh viz stat po` lists them).
    pub pod: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs `mesh demo …`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    match args.command {
        None => up(&args.up),
        Some(DemoCommand::Up(up_args)) => up(&up_args),
        Some(DemoCommand::Down) => down(),
        Some(DemoCommand::Exec(args)) => exec(&args),
        Some(DemoCommand::Supervise(args)) => supervisor::supervise(args),
    }
}

/// `mesh demo exec`: enters the demo's namespaces (before any thread starts), then runs the
/// command in the pod's network namespace and exits with its status.
fn exec(args: &ExecArgs) -> anyhow::Result<()> {
    let dir = running::home()?;
    let Found::Running(demo) = running::find(&dir)? else {
        bail!("no demo is running: start one with `mesh demo`");
    };
    let netns = pod_netns(&dir.join("state"), &args.pod)?;
    let bin_dir = crate::local::binary("mesh-demo-app")?
        .parent()
        .map(PathBuf::from)
        .context("no binary folder")?;
    let mut path = bin_dir.into_os_string();
    path.push(":");
    path.push(path_with_sbin());
    demo.enter()?;
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &netns])
        .args(&args.command)
        .env("PATH", path)
        .env("MESH_DEMO_RESOLVE", supervisor::resolve_env())
        .status()
        .with_context(|| format!("running {:?} in pod {}", args.command, args.pod))?;
    match status.code() {
        Some(0) => Ok(()),
        code => std::process::exit(code.unwrap_or(1)),
    }
}

/// The network namespace of `pod`, from its Pod object in the demo's state folder.
fn pod_netns(state: &std::path::Path, pod: &str) -> anyhow::Result<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(state).with_context(|| format!("reading {}", state.display()))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let Ok(object) =
                <k8s_openapi::api::core::v1::Pod as serde::Deserialize>::deserialize(doc)
            else {
                continue;
            };
            let name = object.metadata.name.clone().unwrap_or_default();
            let netns = object
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::local::NETNS_ANNOTATION));
            match netns {
                Some(netns) if name == pod => return Ok(netns.clone()),
                Some(_) => names.push(name),
                None => {}
            }
        }
    }
    names.sort();
    bail!(
        "the demo has no pod {pod}: its pods are {}",
        names.join(", ")
    )
}

/// `mesh demo up`.
fn up(args: &UpArgs) -> anyhow::Result<()> {
    let dir = running::home()?;
    match running::find(&dir)? {
        Found::Running(r) => bail!(
            "a local mesh is already running (pid {}, started {}, folder {}): look at it with \
             `mesh viz stat deploy`, or stop it with `mesh demo down`",
            r.record.pid,
            r.record.started,
            dir.display()
        ),
        Found::Stale(r) => {
            println!(
                "  removing what a local mesh that did not stop cleanly left (pid {}, started {}) ✔",
                r.pid, r.started
            );
            running::remove(&dir)?;
        }
        Found::Nothing => clear_leftovers(&dir)?,
    }
    let mode = running::mode()?;
    // Debian keeps iptables-restore in the sbin folders, which a user's PATH lacks; no thread
    // runs yet.
    std::env::set_var("PATH", path_with_sbin());
    let tools = crate::local::ensure_tools(|what| println!("  {what} …"));
    if let Err(e) = tools {
        bail!("{e:#}; a fresh Debian machine gets them with `sudo ./scripts/setup`");
    }
    // Resolve (and under cargo, build) the binaries here, before anything runs.
    if std::env::var_os("CARGO").is_some() && std::env::var_os("MESH_BIN_DIR").is_none() {
        println!(
            "  building mesh-proxy, mesh-init, mesh-controller and mesh-demo-app with cargo \
             (minutes the first time, a moment after that) …"
        );
    }
    let mut bin_dir = None;
    for name in [
        "mesh-proxy",
        "mesh-init",
        "mesh-controller",
        "mesh-demo-app",
    ] {
        let path = crate::local::binary(name)?;
        bin_dir = path.parent().map(PathBuf::from);
    }
    let bin_dir = bin_dir.context("no binary folder")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;

    let me = std::env::current_exe().context("locating the mesh executable")?;
    let log = dir.join("demo.log");
    let mut cmd = running::supervisor_command(mode, &me);
    cmd.args(["demo", "supervise", "--dir"])
        .arg(&dir)
        .arg("--mode")
        .arg(match mode {
            Mode::Root => "root",
            Mode::UserNamespace => "user-namespace",
        })
        .arg("--every")
        .arg(args.every.to_string())
        .env("MESH_BIN_DIR", &bin_dir)
        .env("MESH_LOCAL_UID", nix::unistd::getuid().as_raw().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?,
        );
    println!(
        "Starting the local mesh ({}; folder {})",
        match mode {
            Mode::Root => "as root",
            Mode::UserNamespace => "without root, in a user namespace",
        },
        dir.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(relay(cmd, &dir, args.detach))
}

/// Relays the supervisor's lines until it is ready (`--detach`) or gone; Ctrl-C or SIGTERM ask
/// it to stop (a second one kills it).
async fn relay(
    cmd: std::process::Command,
    dir: &std::path::Path,
    detach: bool,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .context("starting the supervisor with unshare (util-linux)")?;
    let stdout = child.stdout.take().context("the supervisor's stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut ready = false;
    let mut stopping = 0;
    loop {
        tokio::select! {
            line = lines.next_line() => match line.context("reading the supervisor's output")? {
                Some(line) if line == READY_LINE => {
                    ready = true;
                    if detach {
                        return Ok(());
                    }
                }
                Some(line) => println!("{line}"),
                None => break,
            },
            _ = term.recv() => stopping += 1,
            _ = interrupt.recv() => stopping += 1,
        }
        if stopping > 0 {
            stop_signal(dir, stopping);
        }
    }
    let status = child.wait().await?;
    if ready && status.success() {
        return Ok(());
    }
    // It ended before it was ready, or failed: say why, and leave nothing behind.
    let log = std::fs::read_to_string(dir.join("demo.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    if !matches!(running::find(dir), Ok(Found::Running(_))) {
        let _ = running::remove(dir);
    }
    if stopping > 0 && status.success() {
        return Ok(());
    }
    bail!(
        "the local mesh stopped ({status}){}",
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its log ends:\n{}", tail.join("\n"))
        }
    )
}

/// Asks the supervisor to stop: SIGTERM the first time, SIGKILL after that.
fn stop_signal(dir: &std::path::Path, count: u32) {
    use nix::sys::signal::{kill, Signal};
    if let Ok(Found::Running(r)) = running::find(dir) {
        let signal = if count > 1 {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        let _ = kill(nix::unistd::Pid::from_raw(r.record.pid as i32), signal);
    }
}

/// `mesh demo down`.
fn down() -> anyhow::Result<()> {
    let dir = running::home()?;
    match running::find(&dir)? {
        Found::Running(r) => {
            print!(
                "  stopping the local mesh (pid {}, started {}) … ",
                r.record.pid, r.record.started
            );
            let _ = std::io::Write::flush(&mut std::io::stdout());
            r.stop(STOP_GRACE)?;
            println!("✔");
            running::remove(&dir)?;
            println!("  removed its folder {} ✔", dir.display());
        }
        Found::Stale(r) => {
            println!(
                "  the local mesh (pid {}, started {}) ended without cleaning up; its processes, \
                 network namespaces and mounts ended with it ✔",
                r.pid, r.started
            );
            running::remove(&dir)?;
            println!("  removed its folder {} ✔", dir.display());
        }
        Found::Nothing => {
            clear_leftovers(&dir)?;
            println!("no local mesh is running (folder {})", dir.display());
        }
    }
    Ok(())
}

/// Removes a folder without a record that holds only what a local mesh writes (a start that
/// failed early); refuses to touch a folder with anything else in it.
fn clear_leftovers(dir: &std::path::Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    const OURS: [&str; 7] = [
        "state",
        "ca",
        "pods",
        "demo.log",
        "destination.log",
        "identity.log",
        ".run.json.tmp",
    ];
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if !OURS.contains(&name.as_ref()) {
            bail!(
                "{} holds {name}, which a local mesh does not write: point {} at an empty folder",
                dir.display(),
                running::STATE_ENV
            );
        }
    }
    running::remove(dir)
}

/// `$PATH` with the sbin folders, where Debian keeps `iptables-restore` (a user's PATH lacks them).
fn path_with_sbin() -> std::ffi::OsString {
    let mut paths: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for sbin in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !paths.iter().any(|p| p == std::path::Path::new(sbin)) {
            paths.push(sbin.into());
        }
    }
    std::env::join_paths(paths).unwrap_or_default()
}
