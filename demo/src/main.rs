//! `mesh-demo-app`: parses the command line and runs one part of the demo application.

use std::future::Future;
use std::io::IsTerminal as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mesh_demo_app::net::{Resolve, Target};
use mesh_demo_app::{bot, emoji, redis, voting, web};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// The demo application of `mesh demo`: emoji and voting gRPC services, a web front end, a bot
/// that votes through it, and the Redis that keeps the votes. Every vote for the doughnut fails
/// on purpose.
#[derive(Parser)]
#[command(name = "mesh-demo-app", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// After SIGTERM, go on serving this long before shutting down (a second signal ends it
    /// early): in Kubernetes, the time a terminating pod's endpoint takes to reach its clients.
    #[arg(long, global = true, value_name = "MS", default_value_t = 0)]
    shutdown_delay_ms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the demo.Emoji gRPC service (ListAll, FindByShortcode).
    Emoji {
        /// The address to listen on.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
    /// Serves the demo.Voting gRPC service (Vote<Name> for every emoji, Results).
    Voting {
        /// The address to listen on.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Every vote for this emoji fails with grpc-status 2 UNKNOWN; `none` fails nothing.
        #[arg(long, default_value = voting::DEFAULT_FAIL)]
        fail: String,
        /// Refuses this share of calls (0 to 100, evenly spread) with grpc-status 14
        /// UNAVAILABLE, trailers-only: a transient failure that a retry recovers.
        #[arg(long, value_name = "PERCENT", default_value_t = 0,
              value_parser = clap::value_parser!(u8).range(0..=100))]
        unavailable_percent: u8,
        /// The Redis that keeps the votes: HOST:PORT or redis://HOST[:PORT]. While it cannot
        /// be reached, votes and results fail with UNAVAILABLE.
        #[arg(long, env = "MESH_DEMO_REDIS", default_value = voting::DEFAULT_REDIS)]
        redis: String,
        /// Connects to IP for HOST, keeping HOST as the name (like curl's --resolve).
        #[arg(long, value_name = "HOST=IP", value_parser = Resolve::parse_entry)]
        resolve: Vec<(String, IpAddr)>,
        /// The bound on each Redis command, connecting included, in milliseconds.
        #[arg(long, value_name = "MS",
              default_value_t = voting::DEFAULT_REDIS_TIMEOUT.as_millis() as u64)]
        redis_timeout_ms: u64,
    },
    /// Serves a small in-memory Redis (RESP2; strings and hashes, pipelining), where voting
    /// keeps the votes.
    Redis {
        /// The port to listen on, on every address.
        #[arg(long, default_value_t = redis::DEFAULT_PORT)]
        port: u16,
    },
    /// Serves the web front end (HTML page and JSON API), calling the emoji and voting services.
    Web {
        /// The address to listen on.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// The emoji service's URL; its authority is sent as :authority.
        #[arg(long, default_value = "http://emoji-svc.demo.svc.cluster.local:8080")]
        emoji: String,
        /// The voting service's URL; its authority is sent as :authority.
        #[arg(long, default_value = "http://voting-svc.demo.svc.cluster.local:8080")]
        voting: String,
        /// Connects to IP for HOST, keeping HOST as the authority (like curl's --resolve).
        #[arg(long, value_name = "HOST=IP", value_parser = Resolve::parse_entry)]
        resolve: Vec<(String, IpAddr)>,
        /// The bound on each call to a back end, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = web::DEFAULT_TIMEOUT.as_millis() as u64)]
        timeout_ms: u64,
        /// What this front end calls itself (`v2` for a canary), in every answer's
        /// x-demo-release header and on the page.
        #[arg(long, default_value = web::DEFAULT_RELEASE)]
        release: String,
    },
    /// Casts one vote straight to the voting service, as web does, and says how it went: how
    /// the voting service's inbound policy answers a caller (`mesh demo exec vote-bot-1 --
    /// mesh-demo-app vote`). Exits 1 when the vote fails.
    Vote {
        /// The voting service's URL; its authority is sent as :authority.
        #[arg(long, default_value = "http://voting-svc.demo.svc.cluster.local:8080")]
        voting: String,
        /// Connects to IP for HOST, keeping HOST as the authority (like curl's --resolve).
        /// `mesh demo exec` passes the demo's Services in MESH_DEMO_RESOLVE.
        #[arg(long, value_name = "HOST=IP", value_parser = Resolve::parse_entry,
              env = "MESH_DEMO_RESOLVE", value_delimiter = ',')]
        resolve: Vec<(String, IpAddr)>,
        /// The emoji to vote for.
        #[arg(long, default_value = ":joy:")]
        emoji: String,
    },
    /// Sends a steady trickle of votes through the web front end, for ever.
    VoteBot {
        /// The web front end's URL; its authority is sent as Host.
        #[arg(long, default_value = "http://web-svc.demo.svc.cluster.local:80")]
        web: String,
        /// Connects to IP for HOST, keeping HOST as the authority (like curl's --resolve).
        #[arg(long, value_name = "HOST=IP", value_parser = Resolve::parse_entry)]
        resolve: Vec<(String, IpAddr)>,
        /// Votes per second; fractions are allowed (0.5 is one vote every two seconds).
        #[arg(long, default_value_t = bot::DEFAULT_RATE, value_parser = parse_rate)]
        rate: f64,
    },
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.001..=1000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "expected votes per second between 0.001 and 1000, got {s:?}"
        )),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Colour only on a terminal, and never with NO_COLOR.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-demo-app: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let delay = Duration::from_millis(args.shutdown_delay_ms);
    match runtime.block_on(run(args.command, delay)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-demo-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, delay: Duration) -> anyhow::Result<()> {
    let shutdown = shutdown_signal(delay)?;
    match command {
        Command::Emoji { listen } => {
            let listener = bind(listen).await?;
            tracing::info!("emoji: listening on {listen}");
            emoji::serve(listener, shutdown).await;
        }
        Command::Voting {
            listen,
            fail,
            unavailable_percent,
            redis,
            resolve,
            redis_timeout_ms,
        } => {
            let redis = Target::redis(&redis, &Resolve::new(resolve)).context("--redis")?;
            let listener = bind(listen).await?;
            let fail = (fail != "none").then(|| emoji::shortcode(&fail));
            tracing::info!(
                fail = ?fail,
                unavailable_percent,
                redis = %redis,
                "voting: listening on {listen}"
            );
            let config = voting::Config {
                fail,
                unavailable_percent,
                redis,
                redis_timeout: Duration::from_millis(redis_timeout_ms.max(1)),
            };
            voting::serve(listener, config, shutdown).await;
        }
        Command::Redis { port } => {
            let listen = SocketAddr::from(([0, 0, 0, 0], port));
            let listener = bind(listen).await?;
            tracing::info!("redis: listening on {listen}");
            redis::serve(listener, shutdown).await;
        }
        Command::Web {
            listen,
            emoji,
            voting,
            resolve,
            timeout_ms,
            release,
        } => {
            let resolve = Resolve::new(resolve);
            let config = web::Config {
                emoji: Target::new(&emoji, &resolve).context("--emoji")?,
                voting: Target::new(&voting, &resolve).context("--voting")?,
                timeout: Duration::from_millis(timeout_ms.max(1)),
                release,
            };
            let listener = bind(listen).await?;
            tracing::info!(
                emoji = %config.emoji,
                voting = %config.voting,
                release = %config.release,
                "web: listening on {listen}"
            );
            web::serve(listener, config, shutdown).await;
        }
        Command::Vote {
            voting: url,
            resolve,
            emoji: choice,
        } => {
            let target = Target::new(&url, &Resolve::new(resolve)).context("--voting")?;
            let channel = mesh_demo_app::grpc::Channel::new(target, Duration::from_secs(5));
            let shortcode = emoji::shortcode(&choice);
            voting::vote(&channel, &shortcode)
                .await
                .with_context(|| format!("voting for {shortcode} at {url}"))?;
            println!("voted for {shortcode} at {url}");
        }
        Command::VoteBot { web, resolve, rate } => {
            let resolve = Resolve::new(resolve);
            let mut config = bot::Config::new(Target::new(&web, &resolve).context("--web")?);
            config.rate = rate;
            tracing::info!(rate, "vote-bot: calling {}", config.web);
            bot::run(config, shutdown).await;
        }
    }
    tracing::info!("shut down");
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// Completes `delay` after the first SIGTERM or SIGINT, or at the second. The handlers are
/// installed before it returns, so a signal that arrives during start-up is not lost.
fn shutdown_signal(delay: Duration) -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        if !delay.is_zero() {
            tracing::info!(?delay, "serving on while the endpoint is withdrawn");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    })
}
