//! Thin wrappers over `ip netns` and `setns(2)`: run `ip`, enter a namespace, find and kill its processes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where `ip netns` keeps its named namespaces.
const RUN_DIR: &str = "/var/run/netns";

/// How often process and readiness polls look again.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// Runs `ip ARGS..` and returns its stdout; a failure carries the command and its stderr.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<String> {
    let line = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The file that names network namespace `name`.
pub(crate) fn path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(name)
}

/// Moves the calling thread (only it) into the network namespace at `path`.
pub(crate) fn enter(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", path.display()))
}

/// The names of all named network namespaces.
pub(crate) fn list() -> anyhow::Result<Vec<String>> {
    // Lines look like `name (id: 3)` or just `name`.
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// The processes living in namespace `name`, never this process itself.
pub(crate) fn pids(name: &str) -> Vec<Pid> {
    let me = std::process::id();
    ip(&["netns", "pids", name])
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| i32::try_from(pid).ok().map(Pid::from_raw))
        .collect()
}

/// Ends every process in `namespaces`: SIGTERM, up to `grace` to exit, then SIGKILL.
///
/// Returns the namespaces that still hold processes afterwards (normally none).
pub(crate) fn kill_all(namespaces: &[String], grace: Duration) -> Vec<String> {
    for (signal, wait) in [
        (Signal::SIGTERM, grace),
        (Signal::SIGKILL, Duration::from_secs(2)),
    ] {
        let mut any = false;
        for ns in namespaces {
            for pid in pids(ns) {
                // The process may have exited meanwhile: nothing to do then.
                let _ = kill(pid, signal);
                any = true;
            }
        }
        if !any {
            return Vec::new();
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if namespaces.iter().all(|ns| pids(ns).is_empty()) {
                return Vec::new();
            }
            std::thread::sleep(POLL);
        }
    }
    namespaces
        .iter()
        .filter(|ns| !pids(ns).is_empty())
        .cloned()
        .collect()
}

/// Deletes namespace `name` (its veths go with it) and its `/etc/netns/<name>` files.
pub(crate) fn delete(name: &str) -> anyhow::Result<()> {
    let etc = etc_dir(name);
    if etc.exists() {
        std::fs::remove_dir_all(&etc).with_context(|| format!("removing {}", etc.display()))?;
    }
    ip(&["netns", "delete", name]).map(drop)
}

/// Where `ip netns exec` finds files it bind-mounts over `/etc` for namespace `name`
/// (`hosts`, `resolv.conf`).
pub(crate) fn etc_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/etc/netns").join(name)
}
