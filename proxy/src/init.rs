//! `mesh-init`: renders a pod's traffic redirect rules (iptables nat table) and applies them atomically.
//!
//! Inbound TCP is redirected to the proxy's inbound port, outbound TCP to its outbound port,
//! except the proxy's own traffic (its uid, and with `--proxy-mark` its socket mark), the pod
//! talking to itself (`-o lo`) and the ports the operator asks to skip. The rules live in four
//! chains of our own, hooked from `PREROUTING` and `OUTPUT`:
//!
//! ```text
//! PREROUTING -> MESH_INBOUND  -> (skip ports: RETURN) -> MESH_INBOUND_REDIRECT  -> REDIRECT 4143
//! OUTPUT     -> MESH_OUTBOUND -> (proxy uid, proxy mark, lo, skip ports: RETURN) -> MESH_OUTBOUND_REDIRECT -> REDIRECT 4140
//! ```
//!
//! The mark is for pods where the proxy cannot have a uid of its own: in a rootless user
//! namespace only uid 0 exists, so proxy and application share it. The proxy then sets `SO_MARK`
//! on every connection it opens (`MESH_PROXY_SOCKET_MARK`, the same number), and this rule lets
//! them leave as they are:
//!
//! ```text
//! -A MESH_OUTBOUND -m mark --mark 0x66 -j RETURN
//! ```
//!
//! The whole rule set is rendered by pure functions ([`render_install`], [`render_remove`]) as
//! `iptables-restore` input and applied in one `iptables-restore --noflush` call, so a rule set
//! is never half applied. Declaring a chain in that input flushes it, so installing twice leaves
//! one set of rules; the hooks in `PREROUTING` / `OUTPUT` are only added when
//! `iptables-save -t nat` does not show them already.

pub use crate::ports::{ParsePortsError, PortList, PortRange};

use mesh_api::defaults;
use std::io::{self, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;

/// Our chain hooked from `PREROUTING`: decides which inbound connections go to the proxy.
pub const INBOUND_CHAIN: &str = "MESH_INBOUND";
/// Redirects inbound TCP to the proxy's inbound port.
pub const INBOUND_REDIRECT_CHAIN: &str = "MESH_INBOUND_REDIRECT";
/// Our chain hooked from `OUTPUT`: decides which outbound connections go to the proxy.
pub const OUTBOUND_CHAIN: &str = "MESH_OUTBOUND";
/// Redirects outbound TCP to the proxy's outbound port.
pub const OUTBOUND_REDIRECT_CHAIN: &str = "MESH_OUTBOUND_REDIRECT";

/// All our chains, in the order they are declared.
const CHAINS: [&str; 4] = [
    INBOUND_CHAIN,
    INBOUND_REDIRECT_CHAIN,
    OUTBOUND_CHAIN,
    OUTBOUND_REDIRECT_CHAIN,
];

/// The built-in chains we hook into, and the chain each one jumps to.
const HOOKS: [(&str, &str); 2] = [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTBOUND_CHAIN)];

// `mesh-init`'s command line, here so that what renders its arguments (`mesh inject`) can
// check them against this very parser. Its doc comment is `mesh-init --help`'s text.
/// Redirects the pod's TCP traffic through the mesh proxy, like the init container of a meshed
/// pod.
///
/// Inbound TCP goes to the proxy's inbound port and outbound TCP to its outbound port, except
/// the proxy's own connections (by uid, and by socket mark with --proxy-mark), the pod talking
/// to itself and the ports to skip. The rules are
/// applied to the current network namespace in one atomic iptables-restore call; running
/// mesh-init again replaces them. Needs CAP_NET_ADMIN (root).
#[derive(Debug, clap::Parser)]
#[command(name = "mesh-init", version)]
pub struct Args {
    /// The uid the proxy runs as: its own connections are never redirected.
    #[arg(long, value_name = "UID", default_value_t = defaults::PROXY_UID)]
    pub proxy_uid: u32,

    /// Exempts the proxy by --proxy-mark alone, with no uid rule: for a user namespace where
    /// the proxy shares the application's uid and uid --proxy-uid does not exist (the kernel
    /// refuses a rule on an unmapped uid).
    #[arg(long, requires = "proxy_mark", conflicts_with = "proxy_uid")]
    pub no_proxy_uid: bool,

    /// A socket mark (decimal or 0x hex, nonzero) whose connections are never redirected either:
    /// the proxy sets it with MESH_PROXY_SOCKET_MARK. For pods where the proxy shares the
    /// application's uid (a rootless user namespace has only uid 0).
    #[arg(long, value_name = "MARK")]
    pub proxy_mark: Option<Mark>,

    /// The proxy's inbound port, where inbound TCP is redirected.
    #[arg(long, value_name = "PORT", default_value_t = defaults::INBOUND_PORT)]
    pub inbound_port: u16,

    /// The proxy's outbound port, where outbound TCP is redirected.
    #[arg(long, value_name = "PORT", default_value_t = defaults::OUTBOUND_PORT)]
    pub outbound_port: u16,

    /// Local ports whose inbound connections bypass the proxy, e.g. `22,8000-8100`.
    #[arg(long, value_name = "PORTS")]
    pub skip_inbound_ports: Option<PortList>,

    /// Remote ports whose outbound connections bypass the proxy, e.g. `25,3306,8000-8100`.
    #[arg(long, value_name = "PORTS")]
    pub skip_outbound_ports: Option<PortList>,

    /// Prints the iptables-restore input for a fresh network namespace and changes nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Removes the mesh's rules and chains instead of installing them.
    #[arg(long)]
    pub remove: bool,
}

/// What to redirect where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Connections made by this uid (the proxy's) are never redirected. `None` leaves the
    /// exemption to [`Config::proxy_mark`]: in a user namespace where the proxy's uid does not
    /// exist, the kernel refuses an owner match on it.
    pub proxy_uid: Option<u32>,
    /// Connections whose socket carries this mark (`SO_MARK`, set by the proxy with
    /// `MESH_PROXY_SOCKET_MARK`) are never redirected either.
    pub proxy_mark: Option<Mark>,
    /// Inbound TCP is redirected to this port.
    pub inbound_port: u16,
    /// Outbound TCP is redirected to this port.
    pub outbound_port: u16,
    /// Inbound connections to these local ports go straight to the application.
    pub skip_inbound_ports: PortList,
    /// Outbound connections to these remote ports bypass the proxy.
    pub skip_outbound_ports: PortList,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            proxy_uid: Some(defaults::PROXY_UID),
            proxy_mark: None,
            inbound_port: defaults::INBOUND_PORT,
            outbound_port: defaults::OUTBOUND_PORT,
            skip_inbound_ports: PortList::default(),
            skip_outbound_ports: PortList::default(),
        }
    }
}

/// A socket mark (`SO_MARK`): a nonzero `u32`, written in decimal (`102`) or hex (`0x66`);
/// shown in hex, as `iptables-save` prints it.
///
/// ```
/// use mesh_proxy::init::Mark;
/// let mark: Mark = "0x66".parse().unwrap();
/// assert_eq!(mark, "102".parse().unwrap());
/// assert_eq!(mark.get(), 102);
/// assert_eq!(mark.to_string(), "0x66");
/// assert!("0".parse::<Mark>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mark(std::num::NonZeroU32);

/// A socket mark did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a socket mark (expected a nonzero 32-bit number, decimal or 0x hex)")]
pub struct ParseMarkError(String);

/// The parts of the nat table that concern us, as read from `iptables-save -t nat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatState {
    /// Our chains that exist.
    chains: Vec<String>,
    /// Rules in built-in chains that jump to one of our chains, as `iptables-save` prints them
    /// (`-A PREROUTING -j MESH_INBOUND`).
    hooks: Vec<String>,
}

/// Why reading or changing the nat table failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The iptables tools are not installed.
    #[error("{tool}: not found on PATH (install the iptables package)")]
    ToolNotFound {
        /// `iptables-save` or `iptables-restore`.
        tool: &'static str,
    },
    /// Not root, or no `CAP_NET_ADMIN` in the network namespace.
    #[error(
        "{tool}: permission denied: needs CAP_NET_ADMIN in the pod's network namespace \
         (run mesh-init as root): {stderr}"
    )]
    PermissionDenied {
        /// `iptables-save` or `iptables-restore`.
        tool: &'static str,
        /// What the tool said.
        stderr: String,
    },
    /// The tool could not be started or talked to.
    #[error("running {tool}")]
    Io {
        /// `iptables-save` or `iptables-restore`.
        tool: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The tool ran and failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// `iptables-save` or `iptables-restore`.
        tool: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// What it said.
        stderr: String,
    },
}

/// What [`install`] and [`remove`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This `iptables-restore` input was applied.
    Applied(String),
    /// Nothing needed doing (only [`remove`], when none of our rules exist).
    Unchanged,
}

/// Renders the `iptables-restore --noflush` input that installs `config` into a nat table in
/// `state`: our chains (declaring a chain flushes it) and the hooks that `state` lacks.
pub fn render_install(config: &Config, state: &NatState) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }

    // Inbound: skip ports, then everything else to the proxy.
    for range in config.skip_inbound_ports.ranges() {
        out.push_str(&format!(
            "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {} -j RETURN\n",
            range.iptables()
        ));
    }
    out.push_str(&format!(
        "-A {INBOUND_CHAIN} -p tcp -j {INBOUND_REDIRECT_CHAIN}\n"
    ));
    out.push_str(&format!(
        "-A {INBOUND_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
        config.inbound_port
    ));

    // Outbound: the proxy's own traffic, the pod talking to itself and skip ports leave as
    // they are; everything else goes to the proxy.
    if let Some(uid) = config.proxy_uid {
        out.push_str(&format!(
            "-A {OUTBOUND_CHAIN} -m owner --uid-owner {uid} -j RETURN\n"
        ));
    }
    if let Some(mark) = config.proxy_mark {
        out.push_str(&format!(
            "-A {OUTBOUND_CHAIN} -m mark --mark {mark} -j RETURN\n"
        ));
    }
    out.push_str(&format!("-A {OUTBOUND_CHAIN} -o lo -j RETURN\n"));
    for range in config.skip_outbound_ports.ranges() {
        out.push_str(&format!(
            "-A {OUTBOUND_CHAIN} -p tcp -m tcp --dport {} -j RETURN\n",
            range.iptables()
        ));
    }
    out.push_str(&format!(
        "-A {OUTBOUND_CHAIN} -p tcp -j {OUTBOUND_REDIRECT_CHAIN}\n"
    ));
    out.push_str(&format!(
        "-A {OUTBOUND_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}\n",
        config.outbound_port
    ));

    for (builtin, ours) in HOOKS {
        if !state.has_hook(builtin, ours) {
            out.push_str(&format!("-A {builtin} -j {ours}\n"));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// Renders the `iptables-restore --noflush` input that removes our hooks and chains from a nat
/// table in `state`, or `None` when there is nothing of ours to remove.
pub fn render_remove(state: &NatState) -> Option<String> {
    if state.chains.is_empty() && state.hooks.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for hook in &state.hooks {
        // Invariant: `NatState::parse` only keeps lines that start with "-A ".
        let rule = hook.strip_prefix("-A ").unwrap_or(hook);
        out.push_str(&format!("-D {rule}\n"));
    }
    // Flush all first: a chain cannot be deleted while another of ours still jumps to it.
    for chain in &state.chains {
        out.push_str(&format!("-F {chain}\n"));
    }
    for chain in &state.chains {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Reads the nat table of the current network namespace (`iptables-save -t nat`).
pub fn read_nat() -> Result<NatState, Error> {
    const TOOL: &str = "iptables-save";
    let output = Command::new(TOOL)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(TOOL, e))?;
    if !output.status.success() {
        return Err(failure(TOOL, output.status, &output.stderr));
    }
    Ok(NatState::parse(&String::from_utf8_lossy(&output.stdout)))
}

/// Applies `iptables-restore` input in one atomic `iptables-restore --noflush` call.
pub fn restore(input: &str) -> Result<(), Error> {
    const TOOL: &str = "iptables-restore";
    let mut child = Command::new(TOOL)
        .args(["--wait", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(TOOL, e))?;
    // Invariant: stdin was set to `Stdio::piped()` just above.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = stdin.write_all(input.as_bytes());
    // Close stdin so that iptables-restore sees the end of its input, even after a failed write.
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|source| Error::Io { tool: TOOL, source })?;
    if !output.status.success() {
        return Err(failure(TOOL, output.status, &output.stderr));
    }
    written.map_err(|source| Error::Io { tool: TOOL, source })
}

/// Installs the rules of `config` into the current network namespace; idempotent.
pub fn install(config: &Config) -> Result<Outcome, Error> {
    let state = read_nat()?;
    let input = render_install(config, &state);
    restore(&input)?;
    Ok(Outcome::Applied(input))
}

/// Removes our rules and chains from the current network namespace; idempotent.
pub fn remove() -> Result<Outcome, Error> {
    let state = read_nat()?;
    match render_remove(&state) {
        None => Ok(Outcome::Unchanged),
        Some(input) => {
            restore(&input)?;
            Ok(Outcome::Applied(input))
        }
    }
}

// === impl Mark ===

impl Mark {
    /// The mark as a number.
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl FromStr for Mark {
    type Err = ParseMarkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let n = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => t.parse(),
        };
        n.ok()
            .and_then(std::num::NonZeroU32::new)
            .map(Self)
            .ok_or_else(|| ParseMarkError(s.to_string()))
    }
}

impl std::fmt::Display for Mark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

// === impl NatState ===

impl NatState {
    /// Picks our chains and the hooks into them out of `iptables-save -t nat` output.
    pub fn parse(save: &str) -> Self {
        let mut state = Self::default();
        for line in save.lines().map(str::trim_end) {
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or_default();
                if CHAINS.contains(&name) {
                    state.chains.push(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split_whitespace().next().unwrap_or_default();
                let jumps_to_ours = HOOKS
                    .iter()
                    .any(|(_, ours)| line.ends_with(&format!(" -j {ours}")));
                if !CHAINS.contains(&chain) && jumps_to_ours {
                    state.hooks.push(line.to_string());
                }
            }
        }
        state
    }

    /// The state right after [`install`] into an empty table: what `--remove --dry-run` shows.
    pub fn installed() -> Self {
        Self {
            chains: CHAINS.iter().map(|c| c.to_string()).collect(),
            hooks: HOOKS
                .iter()
                .map(|(builtin, ours)| format!("-A {builtin} -j {ours}"))
                .collect(),
        }
    }

    /// Whether `builtin` already jumps to `ours`.
    fn has_hook(&self, builtin: &str, ours: &str) -> bool {
        self.hooks.iter().any(|rule| {
            rule.split_whitespace().nth(1) == Some(builtin)
                && rule.ends_with(&format!(" -j {ours}"))
        })
    }
}

// === helpers ===

fn spawn_error(tool: &'static str, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::NotFound {
        Error::ToolNotFound { tool }
    } else {
        Error::Io { tool, source }
    }
}

fn failure(tool: &'static str, status: ExitStatus, stderr: &[u8]) -> Error {
    let stderr = String::from_utf8_lossy(stderr).trim().to_string();
    let lower = stderr.to_lowercase();
    if lower.contains("permission denied")
        || lower.contains("operation not permitted")
        || lower.contains("you must be root")
    {
        Error::PermissionDenied { tool, stderr }
    } else {
        Error::Failed {
            tool,
            status,
            stderr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders `config` (built from `mesh-init`-style flags) into an empty table.
    fn check(flags: &[(&str, &str)], expected: &str) {
        let mut config = Config::default();
        for (flag, value) in flags {
            match *flag {
                "proxy-uid" => config.proxy_uid = Some(value.parse().expect("test uid")),
                "no-proxy-uid" => config.proxy_uid = None,
                "proxy-mark" => config.proxy_mark = Some(value.parse().expect("test mark")),
                "inbound-port" => config.inbound_port = value.parse().expect("test port"),
                "outbound-port" => config.outbound_port = value.parse().expect("test port"),
                "skip-inbound-ports" => {
                    config.skip_inbound_ports = value.parse().expect("test ports")
                }
                "skip-outbound-ports" => {
                    config.skip_outbound_ports = value.parse().expect("test ports")
                }
                other => panic!("unknown test flag {other}"),
            }
        }
        let actual = render_install(&config, &NatState::default());
        assert_eq!(actual, expected, "flags: {flags:?}\n{actual}");
    }

    const HEAD: &str = "*nat
:MESH_INBOUND - [0:0]
:MESH_INBOUND_REDIRECT - [0:0]
:MESH_OUTBOUND - [0:0]
:MESH_OUTBOUND_REDIRECT - [0:0]
";
    const TAIL: &str = "-A PREROUTING -j MESH_INBOUND
-A OUTPUT -j MESH_OUTBOUND
COMMIT
";

    fn rules(body: &str) -> String {
        format!("{HEAD}{body}{TAIL}")
    }

    #[test]
    fn render_default_flags() {
        check(
            &[],
            &rules(
                "-A MESH_INBOUND -p tcp -j MESH_INBOUND_REDIRECT
-A MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN
-A MESH_OUTBOUND -o lo -j RETURN
-A MESH_OUTBOUND -p tcp -j MESH_OUTBOUND_REDIRECT
-A MESH_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140
",
            ),
        );
    }

    #[test]
    fn render_skip_ports_and_ranges() {
        check(
            &[
                ("skip-inbound-ports", "22,4190-4191"),
                ("skip-outbound-ports", "25,3306,8000-8100"),
            ],
            &rules(
                "-A MESH_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A MESH_INBOUND -p tcp -m tcp --dport 4190:4191 -j RETURN
-A MESH_INBOUND -p tcp -j MESH_INBOUND_REDIRECT
-A MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN
-A MESH_OUTBOUND -o lo -j RETURN
-A MESH_OUTBOUND -p tcp -m tcp --dport 25 -j RETURN
-A MESH_OUTBOUND -p tcp -m tcp --dport 3306 -j RETURN
-A MESH_OUTBOUND -p tcp -m tcp --dport 8000:8100 -j RETURN
-A MESH_OUTBOUND -p tcp -j MESH_OUTBOUND_REDIRECT
-A MESH_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140
",
            ),
        );
    }

    #[test]
    fn render_custom_uid_and_ports() {
        check(
            &[
                ("proxy-uid", "999"),
                ("inbound-port", "15006"),
                ("outbound-port", "15001"),
                ("skip-inbound-ports", "7-7"),
            ],
            &rules(
                "-A MESH_INBOUND -p tcp -m tcp --dport 7 -j RETURN
-A MESH_INBOUND -p tcp -j MESH_INBOUND_REDIRECT
-A MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A MESH_OUTBOUND -m owner --uid-owner 999 -j RETURN
-A MESH_OUTBOUND -o lo -j RETURN
-A MESH_OUTBOUND -p tcp -j MESH_OUTBOUND_REDIRECT
-A MESH_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001
",
            ),
        );
    }

    #[test]
    fn render_proxy_mark_next_to_the_uid() {
        let with_mark = |mark: &str| {
            rules(
                &"-A MESH_INBOUND -p tcp -j MESH_INBOUND_REDIRECT
-A MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN
-A MESH_OUTBOUND -m mark --mark MARK -j RETURN
-A MESH_OUTBOUND -o lo -j RETURN
-A MESH_OUTBOUND -p tcp -j MESH_OUTBOUND_REDIRECT
-A MESH_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140
"
                .replace("MARK", mark),
            )
        };
        // By mark alone: no owner match on a uid that may not exist.
        check(
            &[("proxy-mark", "0x2102"), ("no-proxy-uid", "")],
            &rules(
                "-A MESH_INBOUND -p tcp -j MESH_INBOUND_REDIRECT
-A MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A MESH_OUTBOUND -m mark --mark 0x2102 -j RETURN
-A MESH_OUTBOUND -o lo -j RETURN
-A MESH_OUTBOUND -p tcp -j MESH_OUTBOUND_REDIRECT
-A MESH_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140
",
            ),
        );
        // Decimal or hex in, hex out (as iptables-save prints it).
        check(&[("proxy-mark", "102")], &with_mark("0x66"));
        check(&[("proxy-mark", "0x66")], &with_mark("0x66"));
        check(&[("proxy-mark", "0xffffffff")], &with_mark("0xffffffff"));
        check(
            &[("proxy-mark", "1"), ("skip-outbound-ports", "25")],
            &rules(
                "-A MESH_INBOUND -p tcp -j MESH_INBOUND_REDIRECT
-A MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN
-A MESH_OUTBOUND -m mark --mark 0x1 -j RETURN
-A MESH_OUTBOUND -o lo -j RETURN
-A MESH_OUTBOUND -p tcp -m tcp --dport 25 -j RETURN
-A MESH_OUTBOUND -p tcp -j MESH_OUTBOUND_REDIRECT
-A MESH_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140
",
            ),
        );
    }

    #[test]
    fn marks() {
        fn check_mark(input: &str, expected: Result<u32, ()>) {
            let actual = input.parse::<Mark>().map(Mark::get).map_err(|e| {
                assert!(e.to_string().contains("nonzero 32-bit number"), "{e}");
            });
            assert_eq!(actual, expected, "input: {input:?}");
        }
        check_mark("1", Ok(1));
        check_mark("102", Ok(102));
        check_mark(" 0x66 ", Ok(0x66));
        check_mark("0X1f", Ok(0x1f));
        check_mark("4294967295", Ok(u32::MAX));
        check_mark("0xffffffff", Ok(u32::MAX));
        check_mark("0", Err(()));
        check_mark("0x0", Err(()));
        check_mark("0x", Err(()));
        check_mark("", Err(()));
        check_mark("-1", Err(()));
        check_mark("4294967296", Err(()));
        check_mark("0x100000000", Err(()));
        check_mark("mark", Err(()));
        check_mark("0xg", Err(()));
    }

    /// `iptables-save -t nat` after one install with default flags (nf_tables backend).
    const SAVED: &str =
        "# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 21 22:16:49 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:MESH_INBOUND - [0:0]
:MESH_INBOUND_REDIRECT - [0:0]
:MESH_OUTBOUND - [0:0]
:MESH_OUTBOUND_REDIRECT - [0:0]
-A PREROUTING -j MESH_INBOUND
-A OUTPUT -j MESH_OUTBOUND
-A MESH_INBOUND -p tcp -j MESH_INBOUND_REDIRECT
-A MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN
-A MESH_OUTBOUND -o lo -j RETURN
-A MESH_OUTBOUND -p tcp -j MESH_OUTBOUND_REDIRECT
-A MESH_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4140
COMMIT
# Completed on Sat Nov 21 22:16:49 2026
";

    #[test]
    fn parse_saved_table() {
        assert_eq!(NatState::parse(SAVED), NatState::installed());
        assert_eq!(NatState::parse(""), NatState::default());
        // Other people's rules are not ours.
        let theirs =
            "*nat\n:DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
                      -A OUTPUT -p tcp -j MESH_OUTBOUND_X\nCOMMIT\n";
        assert_eq!(NatState::parse(theirs), NatState::default());
    }

    #[test]
    fn reinstall_skips_existing_hooks() {
        let again = render_install(&Config::default(), &NatState::parse(SAVED));
        assert!(again.starts_with(HEAD), "{again}");
        assert!(!again.contains("-A PREROUTING"), "{again}");
        assert!(!again.contains("-A OUTPUT"), "{again}");
        // Only one hook missing: only that one is added.
        let half = SAVED.replace("-A OUTPUT -j MESH_OUTBOUND\n", "");
        let fixed = render_install(&Config::default(), &NatState::parse(&half));
        assert!(!fixed.contains("-A PREROUTING"), "{fixed}");
        assert!(
            fixed.ends_with("-A OUTPUT -j MESH_OUTBOUND\nCOMMIT\n"),
            "{fixed}"
        );
    }

    #[test]
    fn remove_rendering() {
        assert_eq!(render_remove(&NatState::default()), None);
        // The mark rule lives in our chain: flushing the chain removes it with the rest.
        let marked = SAVED.replace(
            "-A MESH_OUTBOUND -o lo -j RETURN\n",
            "-A MESH_OUTBOUND -m mark --mark 0x66 -j RETURN\n-A MESH_OUTBOUND -o lo -j RETURN\n",
        );
        assert_eq!(NatState::parse(&marked), NatState::installed());
        assert_eq!(
            render_remove(&NatState::parse(&marked)),
            render_remove(&NatState::parse(SAVED))
        );
        assert_eq!(
            render_remove(&NatState::parse(SAVED)).as_deref(),
            Some(
                "*nat
-D PREROUTING -j MESH_INBOUND
-D OUTPUT -j MESH_OUTBOUND
-F MESH_INBOUND
-F MESH_INBOUND_REDIRECT
-F MESH_OUTBOUND
-F MESH_OUTBOUND_REDIRECT
-X MESH_INBOUND
-X MESH_INBOUND_REDIRECT
-X MESH_OUTBOUND
-X MESH_OUTBOUND_REDIRECT
COMMIT
"
            )
        );
    }

    /// Parses `input` as a port list: `Ok(normalized)` or `Err(message)`.
    fn check_ports(input: &str, expected: Result<&str, &str>) {
        let actual = input
            .parse::<PortList>()
            .map(|l| l.to_string())
            .map_err(|e| e.to_string());
        assert_eq!(
            actual,
            expected.map(str::to_string).map_err(str::to_string),
            "input: {input:?}"
        );
    }

    #[test]
    fn port_lists() {
        check_ports("", Ok(""));
        check_ports("  ", Ok(""));
        check_ports("25", Ok("25"));
        check_ports("25,3306,8000-8100", Ok("25,3306,8000-8100"));
        check_ports(" 25 , 8000 - 8100 ", Ok("25,8000-8100"));
        check_ports("1,65535", Ok("1,65535"));
        check_ports("80-80", Ok("80"));
        check_ports(
            "0",
            Err("`0` is not a port (expected a number from 1 to 65535)"),
        );
        check_ports(
            "65536",
            Err("`65536` is not a port (expected a number from 1 to 65535)"),
        );
        check_ports(
            "http",
            Err("`http` is not a port (expected a number from 1 to 65535)"),
        );
        check_ports(
            "-5",
            Err("`-5` is not a port range (expected START-END, two ports with START <= END)"),
        );
        check_ports(
            "25,,80",
            Err("empty entry in the port list (expected ports and ranges like 25,3306,8000-8100)"),
        );
        check_ports(
            "25,",
            Err("empty entry in the port list (expected ports and ranges like 25,3306,8000-8100)"),
        );
        check_ports(
            "8100-8000",
            Err(
                "`8100-8000` is not a port range (expected START-END, two ports with START <= END)",
            ),
        );
        check_ports(
            "1-2-3",
            Err("`1-2-3` is not a port range (expected START-END, two ports with START <= END)"),
        );
    }
}
