//! `mesh-init`: installs (or removes) a pod's traffic redirect rules; see `mesh_proxy::init`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use mesh_proxy::init::{self, Config, Mark, NatState, Outcome, PortList};

/// Redirects the pod's TCP traffic through the mesh proxy, like the init container of a meshed
/// pod.
///
/// Inbound TCP goes to the proxy's inbound port and outbound TCP to its outbound port, except
/// the proxy's own connections (by uid, and by socket mark with --proxy-mark), the pod talking
/// to itself and the ports to skip. The rules are
/// applied to the current network namespace in one atomic iptables-restore call; running
/// mesh-init again replaces them. Needs CAP_NET_ADMIN (root).
#[derive(Debug, Parser)]
#[command(name = "mesh-init", version)]
struct Args {
    /// The uid the proxy runs as: its own connections are never redirected.
    #[arg(long, value_name = "UID", default_value_t = init::DEFAULT_PROXY_UID)]
    proxy_uid: u32,

    /// Exempts the proxy by --proxy-mark alone, with no uid rule: for a user namespace where
    /// the proxy shares the application's uid and uid --proxy-uid does not exist (the kernel
    /// refuses a rule on an unmapped uid).
    #[arg(long, requires = "proxy_mark", conflicts_with = "proxy_uid")]
    no_proxy_uid: bool,

    /// A socket mark (decimal or 0x hex, nonzero) whose connections are never redirected either:
    /// the proxy sets it with MESH_PROXY_SOCKET_MARK. For pods where the proxy shares the
    /// application's uid (a rootless user namespace has only uid 0).
    #[arg(long, value_name = "MARK")]
    proxy_mark: Option<Mark>,

    /// The proxy's inbound port, where inbound TCP is redirected.
    #[arg(long, value_name = "PORT", default_value_t = init::DEFAULT_INBOUND_PORT)]
    inbound_port: u16,

    /// The proxy's outbound port, where outbound TCP is redirected.
    #[arg(long, value_name = "PORT", default_value_t = init::DEFAULT_OUTBOUND_PORT)]
    outbound_port: u16,

    /// Local ports whose inbound connections bypass the proxy, e.g. `22,8000-8100`.
    #[arg(long, value_name = "PORTS")]
    skip_inbound_ports: Option<PortList>,

    /// Remote ports whose outbound connections bypass the proxy, e.g. `25,3306,8000-8100`.
    #[arg(long, value_name = "PORTS")]
    skip_outbound_ports: Option<PortList>,

    /// Prints the iptables-restore input for a fresh network namespace and changes nothing.
    #[arg(long)]
    dry_run: bool,

    /// Removes the mesh's rules and chains instead of installing them.
    #[arg(long)]
    remove: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mesh-init: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config {
        proxy_uid: (!args.no_proxy_uid).then_some(args.proxy_uid),
        proxy_mark: args.proxy_mark,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        skip_inbound_ports: args.skip_inbound_ports.unwrap_or_default(),
        skip_outbound_ports: args.skip_outbound_ports.unwrap_or_default(),
    };
    match (args.dry_run, args.remove) {
        (true, false) => print!("{}", init::render_install(&config, &NatState::default())),
        (true, true) => print!(
            "{}",
            init::render_remove(&NatState::installed()).unwrap_or_default()
        ),
        (false, false) => {
            init::install(&config).context("installing the redirect rules")?;
            let exempt: Vec<String> = config
                .proxy_uid
                .map(|uid| format!("proxy uid {uid}"))
                .into_iter()
                .chain(config.proxy_mark.map(|m| format!("socket mark {m}")))
                .collect();
            println!(
                "mesh-init: redirecting inbound TCP to port {}, outbound TCP to port {} \
                 ({} exempt)",
                config.inbound_port,
                config.outbound_port,
                exempt.join(" and ")
            );
        }
        (false, true) => match init::remove().context("removing the redirect rules")? {
            Outcome::Applied(_) => println!("mesh-init: redirect rules removed"),
            Outcome::Unchanged => println!("mesh-init: no redirect rules to remove"),
        },
    }
    Ok(())
}
