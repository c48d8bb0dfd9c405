//! `mesh`: the command line of the mesh.

use clap::{CommandFactory as _, Parser, Subcommand};
use std::process::ExitCode;

/// An ultralight service mesh for Kubernetes.
#[derive(Parser)]
#[command(name = "mesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    cluster: mesh_cli::kube::ClusterArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a whole meshed application on this machine, with no cluster: `mesh demo [up|down]`.
    Demo(mesh_cli::demo::DemoArgs),
    /// Prints the CRDs the mesh reads and the control plane as YAML: `mesh install | kubectl
    /// apply -f -` (`--crds`: the CRDs alone).
    Install(mesh_cli::install::InstallArgs),
    /// Prints what to delete to remove the control plane: `mesh uninstall | kubectl delete -f -`.
    Uninstall,
    /// Adds the mesh to workload manifests (the mesh.io/inject annotation, or the whole proxy
    /// with --manual) and writes them to stdout.
    Inject(mesh_cli::inject::InjectArgs),
    /// Checks the cluster (--pre), the control plane (the default) or the proxies (--proxy).
    Check(mesh_cli::check::CheckArgs),
    /// Watches the mesh: live requests (tap, top), golden metrics (stat), who talks to whom
    /// (edges) and a full-screen dashboard.
    Viz(mesh_cli::viz::VizArgs),
    /// Takes the mesh out of workload manifests and writes them to stdout.
    Uninject {
        /// Files, folders, or `-` for stdin.
        #[arg(required = true, value_name = "FILE")]
        inputs: Vec<String>,
    },
    /// Prints the versions of the CLI, the control plane and the proxies (per namespace).
    Version(mesh_cli::version::VersionArgs),
    /// Shows what the mesh itself says: the destination controller's endpoints for a name,
    /// a proxy's raw metrics.
    Diagnostics(mesh_cli::diagnostics::DiagnosticsArgs),
    /// Prints the shell completion script: `source <(mesh completion bash)`.
    ///
    /// bash: `mesh completion bash > /etc/bash_completion.d/mesh`; zsh: `mesh completion zsh >
    /// "${fpath[1]}/_mesh"`; fish: `mesh completion fish > ~/.config/fish/completions/mesh.fish`.
    Completion(mesh_cli::completion::CompletionArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => mesh_cli::demo::run(args),
        Command::Viz(args) => {
            return finish(mesh_cli::viz::run(args, &cli.cluster).map(|()| String::new()))
        }
        Command::Install(args) => {
            return finish(block_on(mesh_cli::install::install(&args, &cli.cluster)));
        }
        Command::Uninstall => return finish(mesh_cli::install::uninstall()),
        Command::Check(args) => return check(&args, &cli.cluster),
        Command::Inject(args) => return inject(&args, &cli.cluster),
        Command::Uninject { inputs } => {
            let report = mesh_cli::inject::read_inputs(&inputs)
                .and_then(|i| mesh_cli::inject::run(&i, &mesh_cli::inject::Mode::Uninject));
            return finish_report(report);
        }
        Command::Version(args) => {
            // The client's version even when no mesh answers, then the error (exit 1).
            let outcome = mesh_cli::version::run(&args, &cli.cluster);
            let code = finish(Ok(outcome.output));
            return outcome.error.map_or(code, |e| finish(Err(e)));
        }
        Command::Diagnostics(args) => {
            return finish(mesh_cli::diagnostics::run(&args, &cli.cluster))
        }
        Command::Completion(args) => {
            let script = mesh_cli::completion::script(args.shell, &mut Cli::command());
            return finish(Ok(script));
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mesh: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn inject(args: &mesh_cli::inject::InjectArgs, cluster: &mesh_cli::kube::ClusterArgs) -> ExitCode {
    use mesh_cli::inject::{read_inputs, run, Mode};
    let report = read_inputs(&args.inputs).and_then(|inputs| {
        if !args.manual {
            return run(&inputs, &Mode::Annotate);
        }
        let (manual, sidecar) = block_on(mesh_cli::inject::manual_config(args, cluster, &inputs))?;
        let notes = manual.notes.clone();
        let mut report = run(&inputs, &Mode::Manual(Box::new(manual)))?;
        let mut head = vec![format!(
            "proxies are {} sidecars: {}",
            sidecar.name(),
            sidecar.reason
        )];
        head.extend(notes);
        report.summary.splice(0..0, head);
        Ok(report)
    });
    finish_report(report)
}

/// Streams the checklist (or prints JSON); exit 1 when a check failed.
fn check(args: &mesh_cli::check::CheckArgs, cluster: &mesh_cli::kube::ClusterArgs) -> ExitCode {
    match mesh_cli::check::run(args, cluster) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => finish(Err(e)),
    }
}

/// Runs a future on a fresh runtime.
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// The summary on stderr, then the output on stdout; on error only the error (exit 1).
fn finish_report(report: anyhow::Result<mesh_cli::inject::Report>) -> ExitCode {
    match report {
        Ok(report) => {
            for line in &report.summary {
                eprintln!("{line}");
            }
            finish(Ok(report.output))
        }
        Err(e) => finish(Err(e)),
    }
}

/// Writes `output` to stdout (a closed pipe is not an error), or the error to stderr (exit 1).
fn finish(output: anyhow::Result<String>) -> ExitCode {
    use std::io::Write as _;
    match output {
        Ok(text) => match std::io::stdout().lock().write_all(text.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mesh: writing the output: {e}");
                ExitCode::from(1)
            }
        },
        Err(error) => {
            eprintln!("mesh: {error:#}");
            ExitCode::from(1)
        }
    }
}
