//! The mesh data plane: a transparent sidecar proxy (`mesh-proxy`) and the pod's redirect rules
//! (`mesh-init`).
//!
//! [`run`] is the whole proxy: it binds the inbound, outbound and admin listeners, gets its
//! certificate (identity on), serves until SIGTERM, SIGINT or `POST /shutdown`, then drains
//! in-flight work within the grace period.
//!
//! Each listener serves its connections with one stack of tower layers: [`inbound::stack`] and
//! [`outbound::stack`] (see ARCHITECTURE.md for both, layer by layer).
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod codec;
pub mod config;
pub mod connect;
pub mod detect;
pub mod discover;
pub mod drain;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod io;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod ports;
pub mod svc;
pub mod tap;
pub mod tcp;
pub mod tls;
pub mod transport;

use crate::{
    admin::Admin,
    balance::BalanceConfig,
    config::Config,
    connect::Connect,
    discover::{DiscoveryConfig, Resolver},
    drain::Drain,
    http::{client::NewClient, HttpSettings},
    identity::{IdentityError, LocalIdentity},
    metrics::{Direction, Metrics},
    orig_dst::OriginalDst,
    tap::Taps,
    transport::{Listen, Refuse},
};
use std::{
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc},
};
use tokio::net::TcpListener;

/// The proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {var}={addr}: {source}")]
    Bind {
        var: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("MESH_PROXY_SOCKET_MARK={mark}: {source}")]
    SocketMark {
        mark: init::Mark,
        source: std::io::Error,
    },
}

/// Runs the proxy until shutdown completes.
pub async fn run(config: Config) -> Result<(), StartError> {
    let drain = Drain::new();
    let proxy = start(&config, drain.clone()).await?;
    tracing::info!(
        inbound = %proxy.inbound, outbound = %proxy.outbound, admin = %proxy.admin,
        "proxy ready"
    );
    wait_for_shutdown(&drain).await;
    if !config.shutdown_delay.is_zero() && !drain.is_draining() {
        // Kubernetes withdraws a terminating pod's endpoint while it signals its containers;
        // clients learn of it a moment later. Serving on meanwhile loses none of their requests.
        tracing::info!(delay = ?config.shutdown_delay, "still serving while the pod's endpoint is withdrawn");
        tokio::select! {
            () = tokio::time::sleep(config.shutdown_delay) => {}
            () = wait_for_shutdown(&drain) => {}
        }
    }
    drain.start();
    tracing::info!(in_flight = drain.in_flight(), grace = ?config.shutdown_grace_period, "draining");
    if drain.wait(config.shutdown_grace_period).await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            in_flight = drain.in_flight(),
            "grace period over; exiting with work in flight"
        );
    }
    Ok(())
}

/// The addresses a started proxy listens on.
#[derive(Clone, Copy, Debug)]
pub struct Started {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
}

/// Binds the listeners and spawns their accept loops; the proxy then serves until `drain` starts.
pub async fn start(config: &Config, drain: Drain) -> Result<Started, StartError> {
    start_with(config, drain, [OriginalDst::Socket; 2]).await
}

/// [`start`], with where the inbound and outbound listeners learn original destinations.
pub async fn start_with(
    config: &Config,
    drain: Drain,
    original_dst: [OriginalDst; 2],
) -> Result<Started, StartError> {
    let bind = |var: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { var, addr, source })
    };
    let inbound = bind("MESH_PROXY_INBOUND_ADDR", config.inbound_addr).await?;
    let outbound = bind("MESH_PROXY_OUTBOUND_ADDR", config.outbound_addr).await?;
    let admin = bind("MESH_PROXY_ADMIN_ADDR", config.admin_addr).await?;
    let local = |l: &TcpListener, var, addr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { var, addr, source })
    };
    let started = Started {
        inbound: local(&inbound, "MESH_PROXY_INBOUND_ADDR", config.inbound_addr)?,
        outbound: local(&outbound, "MESH_PROXY_OUTBOUND_ADDR", config.outbound_addr)?,
        admin: local(&admin, "MESH_PROXY_ADMIN_ADDR", config.admin_addr)?,
    };

    // Every connection the proxy opens goes through `connect`, which sets the socket mark.
    let connect = Connect {
        timeout: config.connect_timeout,
        mark: config.socket_mark,
    };
    if let Some(mark) = config.socket_mark {
        connect::check_mark(mark).map_err(|source| StartError::SocketMark { mark, source })?;
    }
    let metrics = Metrics::with_idle_timeout(
        config.max_authority_labels,
        config.identity.is_some(),
        config.metrics_idle_timeout,
    );
    let identity = match &config.identity {
        Some(identity) => Some(LocalIdentity::new(
            identity.clone(),
            metrics.identity.clone(),
            connect.control_plane(),
        )?),
        None => None,
    };
    let taps = Taps::new(
        &config.tap,
        identity.as_ref().map(|i| Arc::from(i.name())),
        metrics.clone(),
    );
    let discovery = config.destination_addr.as_ref().map(|controller| {
        Resolver::new(DiscoveryConfig {
            controller: controller.clone(),
            namespace: config.destination_namespace.clone(),
            cluster_domain: config.cluster_domain.clone(),
            failfast_timeout: config.failfast_timeout,
            idle_timeout: config.destination_idle_timeout,
            balance: BalanceConfig::default(),
            connector: connect.control_plane(),
        })
    });
    let policies = config.destination_addr.as_ref().map(|controller| {
        outbound::Policies::new(outbound::PolicyConfig {
            controller: controller.clone(),
            namespace: config.destination_namespace.clone(),
            idle_timeout: config.destination_idle_timeout,
            connector: connect.control_plane(),
        })
    });
    let labels = &config.tap.pod_labels;
    let inbound_policies = inbound::policy::PortPolicies::new(inbound::policy::PolicyConfig {
        controller: config.destination_addr.clone(),
        pod: labels
            .get("namespace")
            .zip(labels.get("pod"))
            .map(|(ns, pod)| format!("{ns}/{pod}")),
        default: config.inbound_default_policy,
        cluster_networks: config.inbound_cluster_networks.clone(),
        first_timeout: config.inbound_policy_timeout,
        idle_timeout: config.destination_idle_timeout,
        connector: connect.control_plane(),
        metrics: metrics.authz.clone(),
    });
    let own_ports = vec![
        started.inbound.port(),
        started.outbound.port(),
        started.admin.port(),
    ];
    let settings = HttpSettings {
        header_read_timeout: config.header_read_timeout,
        max_header_bytes: config.max_header_bytes,
    };
    let new_client = |identity: Option<Arc<LocalIdentity>>| {
        NewClient::new(connect, config.pool_idle_timeout, identity, drain.clone())
    };
    let inbound_stack = inbound::stack(inbound::Inbound {
        policies: inbound_policies,
        opaque_ports: config.inbound_opaque_ports.clone(),
        require_identity_ports: config.inbound_require_identity_ports.clone(),
        detect_timeout: config.detect_timeout,
        http: settings.clone(),
        idle_timeout: config.destination_idle_timeout,
        metrics: metrics.clone(),
        taps: taps.clone(),
        identity: identity.clone(),
        // The application is on the pod's loopback: never mutual TLS.
        client: new_client(None),
        drain: drain.clone(),
        codecs: inbound::codec::Codecs::new(&config.inbound_codec_ports),
    });
    let outbound_stack = outbound::stack(outbound::Outbound {
        opaque_ports: config.outbound_opaque_ports.clone(),
        detect_timeout: config.detect_timeout,
        http: settings,
        names: discovery.as_ref().map(|_| outbound::Names {
            namespace: config.destination_namespace.clone(),
            cluster_domain: config.cluster_domain.clone(),
        }),
        resolver: discovery,
        policies,
        failfast_timeout: config.failfast_timeout,
        idle_timeout: config.destination_idle_timeout,
        balance: BalanceConfig::default(),
        metrics: metrics.clone(),
        taps: taps.clone(),
        identity: identity.is_some(),
        client: new_client(identity.clone()),
        drain: drain.clone(),
    });
    let listen = |direction, original_dst, own_ports_on_any_address| Listen {
        original_dst,
        own_ports: own_ports.clone(),
        own_ports_on_any_address,
        refuse: Refuse {
            metrics: metrics.clone(),
            direction,
        },
    };
    tokio::spawn(listen(Direction::Inbound, original_dst[0], true).run(
        inbound,
        inbound_stack,
        drain.clone(),
    ));
    tokio::spawn(listen(Direction::Outbound, original_dst[1], false).run(
        outbound,
        outbound_stack,
        drain.clone(),
    ));

    // Ready at once without identity; with it, once the first certificate is in.
    let ready = Arc::new(AtomicBool::new(identity.is_none()));
    let admin_identity = identity.clone();
    if let Some(identity) = identity {
        tracing::info!(identity = identity.name(), "requesting a certificate");
        tokio::spawn(identity.run(ready.clone()));
    }
    tokio::spawn(
        Admin {
            metrics,
            ready,
            drain,
            taps,
            identity: admin_identity,
            tap_identity: config.tap.identity.clone(),
            header_read_timeout: config.header_read_timeout,
        }
        .run(admin),
    );
    Ok(started)
}

/// Completes on SIGTERM, SIGINT, or a shutdown begun elsewhere (the admin server).
async fn wait_for_shutdown(drain: &Drain) {
    use tokio::signal::unix::{signal, SignalKind};
    let (term, int) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    let (Ok(mut term), Ok(mut int)) = (term, int) else {
        tracing::warn!("cannot watch for signals; only POST /shutdown stops the proxy");
        return drain.signaled().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        () = drain.signaled() => {}
    }
}
