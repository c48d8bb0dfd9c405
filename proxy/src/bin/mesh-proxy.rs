//! `mesh-proxy`: the sidecar proxy, configured by `MESH_PROXY_*` environment variables.

use mesh_proxy::config::{Config, LogFormat};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Config::from_env(|var| std::env::var(var).ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("mesh-proxy: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("mesh-proxy: invalid MESH_PROXY_LOG={:?}: expected a tracing filter like info or warn,mesh_proxy=debug: {error}", config.log);
            return ExitCode::from(2);
        }
    };
    // Colour only on a terminal, and never with NO_COLOR.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log_format {
        LogFormat::Plain => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    // One worker (the default) gets tokio's single-threaded scheduler: no work stealing and no
    // cross-thread wake-ups, which costs a sidecar less CPU per request than a thread pool.
    let mut runtime = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.worker_threads(n);
            rt
        }
    };
    runtime.enable_all().thread_name("mesh-proxy");
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("mesh-proxy: starting the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(mesh_proxy::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mesh-proxy: {error}");
            ExitCode::from(2)
        }
    }
}
