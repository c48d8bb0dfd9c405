//! `mesh`: the command line of the mesh.

use clap::{Parser, Subcommand};
use std::{process::ExitCode, time::Duration};

/// An ultralight service mesh for Kubernetes.
#[derive(Parser)]
#[command(name = "mesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs meshed pods with live traffic on this machine (network namespaces; needs root).
    Demo {
        /// How often to print the client proxy's golden metrics, in seconds.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        every: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { every } => mesh_cli::demo::run(Duration::from_secs(every)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mesh: {error:#}");
            ExitCode::from(2)
        }
    }
}
