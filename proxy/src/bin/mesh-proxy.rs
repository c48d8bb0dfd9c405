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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Plain => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("mesh-proxy");
    if let Some(n) = config.worker_threads {
        runtime.worker_threads(n);
    }
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
