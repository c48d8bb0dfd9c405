//! A local mesh that outlives the command that started it: its folder on this machine, the
//! namespaces it runs in, and how other commands find it, enter it and stop it.
//!
//! `mesh demo up` starts a *supervisor* (`mesh demo supervise`) under `unshare(1)` in fresh
//! mount, network and PID namespaces, plus a user namespace when not root. The supervisor is PID
//! 1 of its PID namespace, so when it dies, however it dies, the kernel kills every process of
//! the mesh, and with the last process go the network namespaces and every mount (the pods'
//! namespace files live on a tmpfs over `/run` that only the mesh sees). Nothing it makes is
//! visible on the host but its folder, which holds the [`Record`] (`run.json`), the cluster's
//! objects (`state/`), the CA and the logs.
//!
//! ```text
//! mesh demo up ──spawn──► unshare [--user --map-root-user] --mount --net --pid --fork
//!                             └─► mesh demo supervise   (PID 1: pods, controllers, proxies)
//! mesh viz … / mesh check --proxy ──setns(user?, mnt)──► sees /run/netns/<pod> like the supervisor
//! mesh demo down ──SIGTERM──► supervisor tears down, removes the folder (SIGKILL after a grace)
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Overrides the folder of the local mesh.
pub const STATE_ENV: &str = "MESH_LOCAL_STATE";
/// The record of a running local mesh, in its folder.
const RECORD: &str = "run.json";
/// The cluster's objects, in its folder: what the controllers' folder source reads.
pub const OBJECTS: &str = "state";

/// How the local mesh is isolated from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Started by root: mount, network and PID namespaces; the proxies run as their own uid.
    Root,
    /// Started by a user: the same inside one unprivileged user namespace, where only uid 0
    /// exists, so the proxies' traffic is told apart by socket mark instead of uid.
    UserNamespace,
}

/// What the supervisor writes when it starts (`run.json`): how to find and enter it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// The supervisor's pid, as the host sees it.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat`, field 22): tells it from a later process that reuses
    /// the pid.
    pub start_time: u64,
    pub mode: Mode,
    /// The host uid that started it.
    pub uid: u32,
    /// When it started, RFC 3339.
    pub started: String,
    /// Whether every pod is up.
    pub ready: bool,
}

/// The folder of the local mesh: `$MESH_LOCAL_STATE`, else
/// `${XDG_STATE_HOME:-$HOME/.local/state}/mesh/local`.
pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(STATE_ENV).filter(|d| !d.is_empty()) {
        return absolute(Path::new(&dir));
    }
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .context("neither MESH_LOCAL_STATE, XDG_STATE_HOME nor HOME is set: set MESH_LOCAL_STATE to a folder for the local mesh")?;
            PathBuf::from(home).join(".local").join("state")
        }
    };
    absolute(&base.join("mesh").join("local"))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// A local mesh whose supervisor is alive.
#[derive(Clone, Debug)]
pub struct Running {
    pub dir: PathBuf,
    pub record: Record,
}

/// What [`find`] saw in a folder.
#[derive(Debug)]
pub enum Found {
    /// No record: no local mesh was started here (or it stopped cleanly).
    Nothing,
    /// A record whose supervisor is gone: a crash, or a SIGKILL.
    Stale(Record),
    Running(Running),
}

/// Reads the record in `dir` and checks that its supervisor is alive.
pub fn find(dir: &Path) -> anyhow::Result<Found> {
    let path = dir.join(RECORD);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let record: Record = serde_json::from_str(&text)
        .with_context(|| format!("reading {}: not a record of a local mesh", path.display()))?;
    Ok(if alive(&record) {
        Found::Running(Running {
            dir: dir.to_path_buf(),
            record,
        })
    } else {
        Found::Stale(record)
    })
}

/// Whether the record's process still runs (the same process: same start time).
fn alive(record: &Record) -> bool {
    start_time(record.pid).is_some_and(|t| t == record.start_time)
}

/// Field 22 of `/proc/<pid>/stat` (after the parenthesised command, which may hold spaces).
fn start_time(pid: u32) -> Option<u64> {
    start_time_in(&format!("/proc/{pid}/stat"))
}

/// The start time in a `stat` file (`/proc/self/stat` names the caller in any PID namespace).
fn start_time_in(stat_file: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(stat_file).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Running {
    /// Moves this process into the local mesh's user (when it has one) and mount namespaces,
    /// so that its pods' network namespaces (`/run/netns/<pod>`) are where [`super::netns`]
    /// looks. Call it before any thread starts: the kernel refuses these moves to a process
    /// with threads.
    pub fn enter(&self) -> anyhow::Result<()> {
        let me = nix::unistd::geteuid().as_raw();
        let proc = PathBuf::from(format!("/proc/{}/ns", self.record.pid));
        let open =
            |ns: &str| {
                std::fs::File::open(proc.join(ns)).with_context(|| {
                    format!(
                    "opening the {ns} namespace of the local mesh (pid {}): it runs as uid {}, \
                     you are uid {me}{}",
                    self.record.pid,
                    self.record.uid,
                    if me == 0 { "" } else { ": run as that user or with sudo" }
                )
                })
            };
        use nix::sched::{setns, CloneFlags};
        if self.record.mode == Mode::UserNamespace && me != 0 {
            let user = open("user")?;
            setns(&user, CloneFlags::CLONE_NEWUSER).with_context(|| {
                format!(
                    "entering the user namespace of the local mesh (pid {})",
                    self.record.pid
                )
            })?;
        } else if me != 0 {
            bail!(
                "the local mesh (pid {}) was started by root: run this command with sudo",
                self.record.pid
            );
        }
        let mnt = open("mnt")?;
        setns(&mnt, CloneFlags::CLONE_NEWNS).with_context(|| {
            format!(
                "entering the mount namespace of the local mesh (pid {})",
                self.record.pid
            )
        })?;
        Ok(())
    }

    /// Asks the supervisor to tear down (SIGTERM) and waits up to `grace` for it to exit; then
    /// SIGKILL, which ends every process of the mesh with it (it is their PID 1).
    pub fn stop(&self, grace: Duration) -> anyhow::Result<()> {
        let pid = Pid::from_raw(self.record.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if self.wait_gone(grace) {
            return Ok(());
        }
        kill(pid, Signal::SIGKILL)
            .with_context(|| format!("killing the supervisor (pid {pid})"))?;
        if self.wait_gone(Duration::from_secs(5)) {
            return Ok(());
        }
        bail!("the supervisor (pid {pid}) survived SIGKILL")
    }

    fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !alive(&self.record) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        !alive(&self.record)
    }
}

/// Removes the folder of a local mesh that is not running.
pub fn remove(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Picks how to isolate a local mesh started by this process: root needs no user namespace;
/// anyone else needs the host to allow unprivileged user namespaces, which is tried for real.
pub fn mode() -> anyhow::Result<Mode> {
    if nix::unistd::geteuid().is_root() {
        return Ok(Mode::Root);
    }
    let probe = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output();
    match probe {
        Ok(out) if out.status.success() => Ok(Mode::UserNamespace),
        Ok(out) => bail!(
            "this host does not allow unprivileged user namespaces ({}), so the local mesh needs \
             root here: run it with sudo",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => bail!("running unshare (util-linux): {e}; the local mesh needs it"),
    }
}

/// The command that starts the supervisor `program args…` in fresh namespaces for `mode`.
/// It gets its own process group, so a terminal's Ctrl-C reaches only the command that started
/// it, which then asks it to stop.
pub fn supervisor_command(mode: Mode, program: &Path) -> Command {
    let mut cmd = Command::new("unshare");
    if mode == Mode::UserNamespace {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args([
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "--",
    ])
    .arg(program);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// Run first thing in the supervisor: makes its namespaces usable and writes its record.
///
/// Reads its host pid (the first `NSpid` of the host's `/proc`, still mounted), then mounts a
/// `/proc` of its own PID namespace (so `ip netns pids` and kill see the mesh's processes) and
/// a tmpfs over `/run` (for `/run/netns`, which a user namespace could not create on the host).
pub fn start_supervisor(dir: &Path, mode: Mode) -> anyhow::Result<Record> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let pid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|pids| pids.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .context("no NSpid in /proc/self/status")?;
    let start_time =
        start_time_in("/proc/self/stat").context("reading the start time in /proc/self/stat")?;
    use nix::mount::{mount, MsFlags};
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("mounting /proc for the local mesh's PID namespace")?;
    mount(
        Some("tmpfs"),
        "/run",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755"),
    )
    .context("mounting a tmpfs over /run for the pods' network namespaces")?;
    let record = Record {
        pid,
        start_time,
        mode,
        uid: std::env::var("MESH_LOCAL_UID")
            .ok()
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| nix::unistd::getuid().as_raw()),
        started: crate::local::now_rfc3339(),
        ready: false,
    };
    write_record(dir, &record)?;
    Ok(record)
}

/// Writes `record` into `dir`, atomically.
pub fn write_record(dir: &Path, record: &Record) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{RECORD}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(record)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(RECORD))
        .with_context(|| format!("writing {}", dir.join(RECORD).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_a_live_process_is_running_and_of_a_dead_one_stale() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(find(dir.path()).unwrap(), Found::Nothing));
        let me = std::process::id();
        let mut record = Record {
            pid: me,
            start_time: start_time(me).unwrap(),
            mode: Mode::Root,
            uid: 0,
            started: "2026-11-22T00:00:00Z".into(),
            ready: true,
        };
        write_record(dir.path(), &record).unwrap();
        assert!(matches!(find(dir.path()).unwrap(), Found::Running(_)));
        // The same pid with another start time is another process.
        record.start_time += 1;
        write_record(dir.path(), &record).unwrap();
        assert!(matches!(find(dir.path()).unwrap(), Found::Stale(_)));
        std::fs::write(dir.path().join(RECORD), "{not json").unwrap();
        let err = find(dir.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a record of a local mesh"),
            "{err:#}"
        );
    }

    #[test]
    fn home_honours_the_override_and_xdg() {
        // Only the pure part: absolute paths stay as they are.
        let p = absolute(Path::new("/x/y")).unwrap();
        assert_eq!(p, PathBuf::from("/x/y"));
        assert!(absolute(Path::new("rel")).unwrap().is_absolute());
    }
}
