//! The outbound stack: what the application calls, on its way to a service's endpoints or to
//! wherever the application was going. [`stack`] is the only place that knows the order of its
//! layers; each stage has a target type of its own:
//!
//! | stage | target | layers, outer to inner |
//! |---|---|---|
//! | connection | [`Accepted`], then [`OutboundConn`] | detect the protocol (opaque ports skip it) → by protocol: HTTP server, or opaque |
//! | HTTP connection | [`OutboundConn`] | TCP metrics → HTTP server → errors become responses → logical router |
//! | logical | [`Logical`] (service name and port, or the address dialed) | metrics of requests that fail before an endpoint → route selection by the destination's outbound policy (`route`, `policy`) |
//! | route | [`route::RouteTarget`] (a rule of an HTTPRoute/GRPCRoute, or the default rule) | route metrics → request timeout → retry (budget, replayed body, per-attempt timeout) → filters (headers, redirect, rewrite, faults) → mirrors → weighted split |
//! | backend | the backend Service's [`Logical`] (one balancer per Service, shared by the routes) | backend metrics (in the split) → discovery → P2C peak-EWMA balancer over endpoint stacks |
//! | endpoint | [`Endpoint`] (address, identity, labels) | metrics, classification and tap → hop-by-hop headers → HTTP/2 between proxies (`mesh-orig-proto`) → client (HTTP/1 pool, the endpoint's HTTP/2 connection, mutual TLS) |
//! | opaque | [`OutboundConn`], then [`TcpEndpoint`] | discovery by the original destination and a balanced pick → TCP metrics → connect (mutual TLS to a meshed endpoint) and copy |
//!
//! Logical stacks are shared by every connection and forgotten when idle, as are backends'
//! balancers; a backend's endpoint stacks live as long as the endpoint does; rule stacks are
//! made once per policy update.

mod backend;
mod codec;
mod logical;
mod opaque;
pub mod policy;
pub mod route;

pub use logical::Names;
pub use policy::{Policies, PolicyConfig};

use crate::{
    balance::BalanceConfig,
    detect::{Detect, DetectConfig, NewSwitch, Protocol},
    discover::{DstLabels, Resolver},
    drain::Drain,
    http::{
        classify::{MeterTarget, NewMeter, Record},
        client::{EndpointAddr, NewClient},
        errors::RespondLayer,
        filters::FiltersLayer,
        headers,
        retry::RetryLayer,
        server::{CloseSignal, HttpSettings, NewServeHttp},
        timeout::TimeoutLayer,
    },
    metrics::{Direction, Metrics, TcpLabels, Tls, NO_TLS_DISABLED, NO_TLS_FROM_DISCOVERY},
    ports::PortList,
    svc::{
        BoxError, BoxIo, Cache, ConnFuture, ForEachLayer, MapTargetLayer, NewService, Param, Stack,
        WrapLayer,
    },
    tap::Taps,
    tcp::NewForward,
    transport::{Accepted, ClientAddr, NewTcpMetrics, OrigDst},
};
use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

/// What the outbound stack is built from.
pub struct Outbound {
    pub opaque_ports: PortList,
    pub detect_timeout: Duration,
    pub http: HttpSettings,
    /// Discovery, when a destination controller is configured.
    pub resolver: Option<Arc<Resolver>>,
    /// Outbound policies (routes), when a destination controller is configured.
    pub policies: Option<Arc<Policies>>,
    pub names: Option<Names>,
    pub failfast_timeout: Duration,
    /// How long a logical destination's stack is kept after its last connection.
    pub idle_timeout: Duration,
    pub balance: BalanceConfig,
    pub metrics: Metrics,
    pub taps: Taps,
    /// Whether identity is on: meshed endpoints are then reached over mutual TLS.
    pub identity: bool,
    pub client: NewClient,
    pub drain: Drain,
}

/// An outbound connection whose protocol is known.
#[derive(Clone, Debug)]
pub struct OutboundConn {
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    pub protocol: Protocol,
}

/// A logical destination: a service's name and port, or the address the client dialed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LogicalAddr {
    Name(Arc<str>),
    Addr(SocketAddr),
}

impl fmt::Display for LogicalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Addr(addr) => addr.fmt(f),
        }
    }
}

/// Where requests for a logical destination go.
#[derive(Clone, Debug)]
pub struct Logical {
    pub addr: LogicalAddr,
    /// The `no_tls_reason` of a hop that is not mutual TLS.
    pub no_tls: &'static str,
}

/// An endpoint of a backend, or an original destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The identity its proxy must prove, when the hop is mutual TLS.
    pub server_id: Option<Arc<str>>,
    /// Its labels from discovery.
    pub dst: Option<Arc<DstLabels>>,
    /// The `no_tls_reason` when the hop is not mutual TLS.
    pub no_tls: &'static str,
}

/// The stack for the outbound listener's connections.
pub fn stack(
    outbound: Outbound,
) -> impl NewService<
    Accepted,
    Service = impl tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture>
                  + Send
                  + 'static,
> + Send
       + Sync
       + 'static {
    let Outbound {
        opaque_ports,
        detect_timeout,
        http,
        resolver,
        policies,
        names,
        failfast_timeout,
        idle_timeout,
        balance,
        metrics,
        taps,
        identity,
        client,
        drain,
    } = outbound;
    let (codec_policies, codec_names, taps_codec) = (policies.clone(), names.clone(), taps.clone());
    let no_tls = if identity {
        NO_TLS_FROM_DISCOVERY
    } else {
        NO_TLS_DISABLED
    };

    let endpoint = Stack::new(client.clone())
        .push(headers::upgrade())
        .push(headers::hop_by_hop())
        .push(NewMeter::layer(metrics.clone(), taps.clone(), Record::All))
        .into_inner();
    let backends = route::split::Backends::new(
        backend::NewBackend::new(
            resolver.clone(),
            endpoint,
            balance.clone(),
            failfast_timeout,
            identity,
            idle_timeout,
        ),
        Cache::new(idle_timeout),
        no_tls,
    );
    let rule = Stack::new(route::split::NewSplit::new(
        backends.clone(),
        metrics.route.clone(),
    ))
    .push(WrapLayer(route::mirror::MirrorLayer {
        backends,
        metrics: metrics.route.clone(),
    }))
    .push(WrapLayer(FiltersLayer {
        metrics: metrics.route.clone(),
    }))
    .push(WrapLayer(RetryLayer {
        metrics: metrics.route.clone(),
    }))
    .push(WrapLayer(TimeoutLayer))
    .push(WrapLayer(route::metrics::RouteMetricsLayer(
        metrics.route.clone(),
    )))
    .push(ForEachLayer(tower::layer::layer_fn(
        route::RuleService::new,
    )))
    .into_inner();
    let logical = Stack::new(route::NewRouter::new(
        policies,
        rule,
        failfast_timeout,
        metrics.route.clone(),
    ))
    .push(NewMeter::layer(
        metrics.clone(),
        taps.clone(),
        Record::UnrecordedFailures,
    ))
    .into_inner();
    let http_stack = Stack::new(logical::NewLogicalRouter::new(
        logical,
        Cache::new(idle_timeout),
        names,
        no_tls,
    ))
    .push(ForEachLayer(RespondLayer))
    .push(NewServeHttp::layer(http.clone(), drain, taps))
    .push(NewTcpMetrics::layer(metrics.clone()))
    .into_inner();
    let codec = codec::CodecConfig {
        policies: codec_policies,
        names: codec_names,
        resolver: resolver.clone(),
        client: client.clone(),
        balance: balance.clone(),
        failfast: failfast_timeout,
        identity,
        no_tls,
        idle: idle_timeout,
        metrics: metrics.clone(),
        taps: taps_codec,
    };
    let opaque = Stack::new(NewForward::new(client))
        .push(NewTcpMetrics::layer(metrics))
        .push(opaque::NewOpaqueEndpoint::layer(
            resolver,
            balance,
            failfast_timeout,
            identity,
            no_tls,
        ))
        .push(codec::NewCodecSwitch::layer(codec))
        .into_inner();
    Stack::new(NewSwitch::new(http_stack, opaque))
        .push(MapTargetLayer(|d: Detect<Accepted>| OutboundConn {
            client: d.parent.client,
            orig_dst: d.parent.orig_dst,
            protocol: d.protocol,
        }))
        .push(
            DetectConfig {
                recognizers: Default::default(),
                timeout: detect_timeout,
                capacity: http.max_header_bytes,
                opaque_ports,
                opaque_tls_peek: None,
            }
            .layer(),
        )
        .into_inner()
}

// === targets' parameters ===

impl Param<Protocol> for OutboundConn {
    fn param(&self) -> Protocol {
        self.protocol
    }
}

impl Param<ClientAddr> for OutboundConn {
    fn param(&self) -> ClientAddr {
        ClientAddr(self.client)
    }
}

impl Param<OrigDst> for OutboundConn {
    fn param(&self) -> OrigDst {
        OrigDst(self.orig_dst)
    }
}

/// The application's own connection carries no mesh identity.
impl Param<CloseSignal> for OutboundConn {
    fn param(&self) -> CloseSignal {
        CloseSignal::never()
    }
}

impl Param<Tls> for OutboundConn {
    fn param(&self) -> Tls {
        Tls::NoIdentity(NO_TLS_DISABLED)
    }
}

/// An HTTP connection is counted by where it was going; its requests may take different hops.
impl Param<TcpLabels> for OutboundConn {
    fn param(&self) -> TcpLabels {
        TcpLabels {
            direction: Direction::Outbound,
            target_addr: self.orig_dst,
            tls: None,
        }
    }
}

/// A request that fails before it reaches an endpoint is labelled with where its connection
/// was going.
impl Param<MeterTarget> for Logical {
    fn param(&self) -> MeterTarget {
        MeterTarget {
            direction: Direction::Outbound,
            target_addr: None,
            dst: None,
            tls: Tls::NoIdentity(self.no_tls),
            server_id: None,
            tap_target: None,
            authority_fallback: None,
        }
    }
}

impl Param<EndpointAddr> for Endpoint {
    fn param(&self) -> EndpointAddr {
        EndpointAddr {
            addr: self.addr,
            server_id: self.server_id.clone(),
        }
    }
}

impl Param<MeterTarget> for Endpoint {
    fn param(&self) -> MeterTarget {
        MeterTarget {
            direction: Direction::Outbound,
            target_addr: Some(self.addr),
            dst: self.dst.clone(),
            tls: match &self.server_id {
                Some(id) => Tls::Established(id.clone()),
                None => Tls::NoIdentity(self.no_tls),
            },
            server_id: self.server_id.clone(),
            tap_target: Some(self.addr),
            authority_fallback: None,
        }
    }
}
