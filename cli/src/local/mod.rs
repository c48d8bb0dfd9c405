//! Local mode: "pods" as Linux network namespaces on one bridge, with the real `mesh-init` and `mesh-proxy` in them.
//!
//! A [`Cluster`] owns a bridge namespace and its pods; each [`Pod`] is a network namespace with
//! `lo` and an `eth0` veth on the bridge, addressed in `10.244.0.0/16`. The pods have no default
//! route and no link to the host's namespace: nothing they send leaves the machine. Dropping the
//! cluster (also while a test panics) kills every process in its pods and deletes the
//! namespaces.
//!
//! ```no_run
//! use mesh_cli::local::{self, Cluster, MeshOptions};
//! # fn main() -> anyhow::Result<()> {
//! local::require_root()?;
//! let mut cluster = Cluster::new("example")?;
//! let web = cluster.add_pod("web")?;
//! let client = cluster.add_pod("client")?;
//! let proxy = client.mesh(MeshOptions::default())?; // mesh-init, then mesh-proxy as uid 2102
//! let (status, _metrics) = proxy.admin_get("/metrics")?;
//! assert_eq!(status, 200);
//! // Commands and threads run inside a pod; the client's outbound TCP goes through its proxy.
//! let curl = client.command("curl").arg(format!("http://{}:8080/", web.ip)).output()?;
//! # let _ = curl;
//! # Ok(())
//! # }
//! ```
//!
//! Everything here needs root (see [`require_root`]); this is the runtime of the end-to-end tests
//! and of `mesh demo`.
#![forbid(unsafe_code)]

mod binary;
mod cluster;
mod control;
mod netns;
mod proxy;
pub mod running;

use std::io;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

pub use binary::binary;
pub use cluster::{Cluster, Pod};
pub use control::{
    service_yaml, ControlOptions, ControlPlane, DESTINATION_PORT, IDENTITY_PORT, NETNS_ANNOTATION,
    TRUST_DOMAIN,
};
pub(crate) use netns::{enter as netns_enter, path as netns_path};
pub use nix::sys::signal::Signal;
pub use proxy::{MeshOptions, PodIdentity, Proxy};

/// The uid `mesh-proxy` runs as in a pod; `mesh-init` exempts its traffic from the redirect.
pub use mesh_api::defaults::PROXY_UID;

/// The tools local mode runs, and the Debian packages that provide them.
const TOOLS: [(&str, &str); 3] = [
    ("ip", "iproute2"),
    ("iptables-restore", "iptables"),
    ("setpriv", "util-linux"),
];

/// Makes sure the tools local mode needs are installed: as root on a machine with `apt-get`,
/// installs the missing Debian packages (`iproute2`, `iptables`, `util-linux`), reporting each
/// through `progress`; elsewhere fails with what to install. Returns what it installed.
pub fn ensure_tools(progress: impl Fn(&str)) -> anyhow::Result<Vec<&'static str>> {
    let missing: Vec<&'static str> = TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(missing);
    }
    if !nix::unistd::geteuid().is_root() || !on_path("apt-get") {
        bail!(
            "local mode needs the packages {}: install them (e.g. `apt-get install {}`)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    progress(&format!("installing {} with apt-get", missing.join(", ")));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(missing.iter().copied());
    apt(&install)?;
    Ok(missing)
}

/// Now, as RFC 3339 in UTC.
pub(crate) fn now_rfc3339() -> String {
    mesh_api::identity::ca::rfc3339(std::time::SystemTime::now())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Fails with a clear message unless this process can build pods: it must be root, and `ip netns`
/// and `setpriv` must work.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "local mode needs root: it creates network namespaces, veth links and iptables rules \
             (run as root, e.g. `sudo -E cargo test -p mesh-tests`)"
        );
    }
    let output = Command::new("ip")
        .args(["netns", "list"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                anyhow::anyhow!("`ip` not found on PATH: local mode needs iproute2")
            }
            _ => anyhow::Error::new(e).context("running `ip netns list`"),
        })?;
    if !output.status.success() {
        bail!(
            "`ip netns list` failed ({}): network namespaces are unavailable here: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Command::new("setpriv")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .context("`setpriv` (util-linux) is needed to run the proxy as its own user")?;
    Ok(())
}
