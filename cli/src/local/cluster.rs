//! The cluster (a bridge namespace and its pods) and the pod handle: commands and threads inside a pod.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::netns;

/// The bridge, inside the cluster's bridge namespace.
const BRIDGE: &str = "br0";
/// The pod network: pods get `10.244.0.2`, `10.244.0.3`, …; `10.244.0.1` is reserved.
const POD_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);
const POD_PREFIX_LEN: u8 = 16;
/// The first host number handed to a pod.
const FIRST_POD_HOST: u32 = 2;
/// The prefix of every namespace and log folder this module creates: `mesh-<pid>-<n>-<cluster>`.
const NAME_PREFIX: &str = "mesh-";
/// How long processes get between SIGTERM and SIGKILL when a cluster goes down.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Numbers the clusters of this process, so that names never collide across threads.
static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

/// A bridge in its own network namespace and the pods linked to it.
///
/// Names are unique per process and call (`mesh-<pid>-<n>-<name>`), so tests in parallel threads
/// each get their own cluster. Dropping the cluster kills every process in its pods and deletes
/// the namespaces; its log folder goes too unless `MESH_KEEP_LOGS` is set.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    /// `mesh-<pid>-<n>-<name>`: the bridge namespace's name and the prefix of the pods'.
    prefix: String,
    /// The namespaces created so far, bridge first.
    namespaces: Vec<String>,
    pods: Vec<Pod>,
    log_dir: Arc<PathBuf>,
    next_host: u32,
}

/// A pod: a network namespace with `lo` and `eth0` (on the cluster's bridge). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pod {
    /// The name given to [`Cluster::add_pod`].
    pub name: String,
    /// The network namespace's name (`ip netns exec <netns> …`).
    pub netns: String,
    /// The pod's address on `eth0`, in `10.244.0.0/16`.
    pub ip: Ipv4Addr,
    /// The cluster's log folder.
    pub(crate) log_dir: Arc<PathBuf>,
}

// === impl Cluster ===

impl Cluster {
    /// Creates the bridge namespace of a new cluster; `name` is lowercase letters, digits and `-`.
    ///
    /// Also removes the namespaces left behind by earlier runs that crashed (those whose
    /// creating process is gone), with any process still in them.
    pub fn new(name: &str) -> anyhow::Result<Cluster> {
        Cluster::create(name, None)
    }

    /// [`Cluster::new`], with its logs in `log_dir` (created; removed with the cluster).
    pub fn new_in(name: &str, log_dir: &Path) -> anyhow::Result<Cluster> {
        Cluster::create(name, Some(log_dir))
    }

    fn create(name: &str, log_dir: Option<&Path>) -> anyhow::Result<Cluster> {
        super::require_root()?;
        check_name("cluster", name)?;
        remove_stale();

        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_PREFIX}{}-{n}-{name}", std::process::id());
        let log_dir = match log_dir {
            Some(dir) => dir.to_path_buf(),
            None => std::env::temp_dir().join(&prefix),
        };
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating log folder {}", log_dir.display()))?;
        let mut cluster = Cluster {
            name: name.to_string(),
            prefix: prefix.clone(),
            namespaces: Vec::new(),
            pods: Vec::new(),
            log_dir: Arc::new(log_dir),
            next_host: FIRST_POD_HOST,
        };
        // From here on, dropping `cluster` on an error cleans up what was made.
        netns::ip(&["netns", "add", &prefix])?;
        cluster.namespaces.push(prefix.clone());
        netns::ip(&["-n", &prefix, "link", "set", "lo", "up"])?;
        netns::ip(&["-n", &prefix, "link", "add", BRIDGE, "type", "bridge"])?;
        netns::ip(&["-n", &prefix, "link", "set", BRIDGE, "up"])?;
        Ok(cluster)
    }

    /// Adds a pod: a namespace with `lo` up and `eth0` on the bridge, with the next free address.
    ///
    /// `name` is lowercase letters, digits and `-`, unique in the cluster.
    pub fn add_pod(&mut self, name: &str) -> anyhow::Result<Pod> {
        check_name("pod", name)?;
        if self.pods.iter().any(|p| p.name == name) {
            bail!("cluster {} already has a pod named {name}", self.name);
        }
        let host = self.next_host;
        if host >= (1 << (32 - POD_PREFIX_LEN)) - 1 {
            bail!("cluster {} is full", self.name);
        }
        self.next_host += 1;
        let ip = Ipv4Addr::from(u32::from(POD_NETWORK) + host);
        let ns = format!("{}-{name}", self.prefix);
        // The bridge side of the veth pair, named after the host number (unique in the bridge
        // namespace, and short: interface names have at most 15 bytes).
        let peer = format!("veth{host}");
        let bridge_ns = &self.prefix;

        netns::ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        netns::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        netns::ip(&[
            "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
            bridge_ns,
        ])?;
        netns::ip(&[
            "-n", bridge_ns, "link", "set", &peer, "master", BRIDGE, "up",
        ])?;
        let cidr = format!("{ip}/{POD_PREFIX_LEN}");
        netns::ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        netns::ip(&["-n", &ns, "link", "set", "eth0", "up"])?;

        let pod = Pod {
            name: name.to_string(),
            netns: ns,
            ip,
            log_dir: self.log_dir.clone(),
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// The name given to [`Cluster::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the bridge's network namespace; pods' namespaces are named `<it>-<pod>`.
    pub fn bridge_netns(&self) -> &str {
        &self.prefix
    }

    /// The pods, in the order they were added.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The folder of this cluster's logs (one file per started proxy).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let stuck = netns::kill_all(&self.namespaces, KILL_GRACE);
        if !stuck.is_empty() {
            eprintln!("mesh: processes survived SIGKILL in network namespaces {stuck:?}");
        }
        // Pods first, the bridge last.
        for ns in self.namespaces.iter().rev() {
            if let Err(err) = netns::delete(ns) {
                eprintln!("mesh: removing cluster {}: {err:#}", self.name);
            }
        }
        if std::env::var_os("MESH_KEEP_LOGS").is_some() {
            eprintln!(
                "mesh: logs of cluster {} kept in {}",
                self.name,
                self.log_dir.display()
            );
        } else if let Err(err) = std::fs::remove_dir_all(self.log_dir.as_path()) {
            eprintln!(
                "mesh: removing log folder {}: {err}",
                self.log_dir.display()
            );
        }
    }
}

// === impl Pod ===

impl Pod {
    /// A command that runs `program` as root inside the pod (`ip netns exec <netns> program`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// A command that runs `program` inside the pod as user and group `uid`, with no
    /// supplementary groups and no capabilities (`setpriv --reuid --regid --clear-groups`).
    pub fn command_as(&self, uid: u32, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = self.command("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        cmd
    }

    /// Gives the pod a hosts file: commands run with [`Pod::command`] resolve these names
    /// (`ip netns exec` mounts it over `/etc/hosts`), as a pod's DNS would answer a service's
    /// ClusterIP. Threads of [`Pod::run_in`] keep the host's files.
    pub fn set_hosts(&self, entries: &[(std::net::IpAddr, &str)]) -> anyhow::Result<()> {
        let dir = netns::etc_dir(&self.netns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (ip, name) in entries {
            hosts.push_str(&format!("{ip} {name}\n"));
        }
        let path = dir.join("hosts");
        std::fs::write(&path, hosts).with_context(|| format!("writing {}", path.display()))
    }

    /// Routes `cidr` (e.g. the service network `10.96.0.0/12`) out of the pod's `eth0`, on
    /// link: connections to a ClusterIP then get past routing to the pod's redirect rules, as
    /// in a cluster. Nothing answers there on the bridge, so nothing leaves the pod network.
    pub fn route(&self, cidr: &str) -> anyhow::Result<()> {
        netns::ip(&["-n", &self.netns, "route", "replace", cidr, "dev", "eth0"]).map(drop)
    }

    /// Runs `f` on a new thread that has entered the pod's network namespace: every socket it
    /// (and any thread it starts) opens lives in the pod.
    ///
    /// ```no_run
    /// # fn demo(pod: &mesh_cli::local::Pod) -> anyhow::Result<()> {
    /// let server = pod.run_in(|| {
    ///     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    ///     rt.block_on(async {
    ///         let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
    ///         let (_stream, peer) = listener.accept().await?;
    ///         Ok(peer)
    ///     })
    /// });
    /// let peer = server.join().expect("server thread panicked")?;
    /// # Ok(()) }
    /// ```
    pub fn run_in<F, T>(&self, f: F) -> JoinHandle<anyhow::Result<T>>
    where
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let path = netns::path(&self.netns);
        std::thread::spawn(move || {
            netns::enter(&path)?;
            f()
        })
    }
}

// === helpers ===

/// Names become parts of namespace names: keep them short and plain.
fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 40 || !plain {
        bail!("invalid {what} name `{name}`: use 1 to 40 lowercase letters, digits and `-`");
    }
    Ok(())
}

/// Removes the namespaces of earlier runs whose process is gone: `mesh-<pid>-<n>-…` with no
/// `/proc/<pid>`. Best effort: a failure is reported and skipped.
fn remove_stale() {
    let names = match netns::list() {
        Ok(names) => names,
        Err(err) => {
            eprintln!("mesh: looking for stale namespaces: {err:#}");
            return;
        }
    };
    let me = std::process::id();
    let stale: Vec<String> = names
        .into_iter()
        .filter(|name| match creator(name) {
            Some(pid) => pid != me && !Path::new("/proc").join(pid.to_string()).exists(),
            None => false,
        })
        .collect();
    if stale.is_empty() {
        return;
    }
    netns::kill_all(&stale, KILL_GRACE);
    for ns in &stale {
        // Another thread's cluster may have removed it meanwhile: only report what is left.
        if let Err(err) = netns::delete(ns) {
            if netns::path(ns).exists() {
                eprintln!("mesh: removing stale namespace {ns}: {err:#}");
            }
        }
    }
}

/// The pid encoded in a namespace name made by this module, `mesh-<pid>-<n>-…`.
fn creator(ns: &str) -> Option<u32> {
    let mut parts = ns.strip_prefix(NAME_PREFIX)?.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    parts.next().filter(|rest| !rest.is_empty())?;
    Some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creators() {
        let check = |ns: &str, expected: Option<u32>| assert_eq!(creator(ns), expected, "{ns}");
        check("mesh-123-0-pods", Some(123));
        check("mesh-123-7-pods-web", Some(123));
        check("mesh-123-0-", None);
        check("mesh-123-pods", None);
        check("mesh-x-0-pods", None);
        check("mesh", None);
        check("cni-1234", None);
    }

    #[test]
    fn names() {
        let check =
            |name: &str, ok: bool| assert_eq!(check_name("pod", name).is_ok(), ok, "{name}");
        check("web", true);
        check("web-2", true);
        check("", false);
        check("Web", false);
        check("a/b", false);
        check("a.b", false);
        check(&"x".repeat(41), false);
    }
}
