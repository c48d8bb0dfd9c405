//! `mesh-init`: installs (or removes) a pod's traffic redirect rules; see `mesh_proxy::init`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use mesh_proxy::init::{self, Args, Config, NatState, Outcome};

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
