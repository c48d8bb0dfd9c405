//! The inbound stack: what the pod's clients send, on its way to the application on
//! `127.0.0.1:<port>`. [`stack`] is the only place that knows the order of its layers.
//!
//! Per connection, outer to inner:
//!
//! 1. detect the protocol (opaque ports skip it; with identity on they only look briefly for a
//!    TLS ClientHello, which a peer proxy sends at once);
//! 2. TLS for the proxy's own identity: terminate mutual TLS, verify the client's identity, and
//!    detect again inside; anything else: refuse it on a port that requires identity;
//! 3. by protocol: HTTP to the HTTP server, the rest (other TLS included) opaque.
//!
//! Before all of them, the port's inbound policy is looked up ([`policy`]: the first connection
//! to a port waits for the controller's answer, bounded).
//!
//! HTTP, per request: errors become responses → a `mesh-client-id` the client sent is counted
//! ([`client_id`]) → `mesh-client-id` set from the proven identity
//! → HTTP/1 restored from a peer proxy's HTTP/2 (`mesh-orig-proto`) → metrics, classification
//! and tap → authorization ([`authorize`]) → local rate limit ([`ratelimit`]'s limiters) → hop-by-hop
//! headers → the application's client (shared per port). A connection whose authorization is
//! revoked closes after its in-flight requests.
//!
//! Opaque: authorization (refused: a reset; revoked: closed) → TCP metrics → bytes copied to
//! the application.

pub mod authorize;
pub mod client_id;
pub mod codec;
pub mod policy;
pub mod ratelimit;

use crate::{
    detect::{Detect, DetectConfig, NewSwitch, Protocol},
    drain::Drain,
    http::{
        classify::{MeterTarget, NewMeter, Record},
        client::{EndpointAddr, NewClient},
        errors::RespondLayer,
        headers,
        server::{CloseSignal, HttpSettings, NewServeHttp},
    },
    identity::LocalIdentity,
    metrics::{Direction, Metrics, TcpLabels, Tls, NO_TLS_DISABLED, NO_TLS_FROM_REMOTE},
    ports::PortList,
    svc::{
        BoxError, BoxIo, Cache, CacheLayer, ConnFuture, ForEachLayer, MapTargetLayer, NewSelect,
        NewService, Param, Stack,
    },
    tap::Taps,
    tcp::{NewForward, TcpEndpoint},
    tls::{Decided, NewRequireIdentity, NewTerminate, TerminateConfig},
    transport::{Accepted, ClientAddr, OrigDst, Refuse},
};
use authorize::{ClientIdentity, NewAuthorizeHttp, NewAuthorizeTcp, NewRateLimit};
use policy::{NewPortPolicy, Policied, PolicyHandle, PortPolicies};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use tower::Layer;

/// How long an opaque inbound port waits for a ClientHello (identity on) before it takes the
/// connection as plaintext: a peer proxy sends it at once.
const OPAQUE_TLS_PEEK: Duration = Duration::from_secs(1);

/// What the inbound stack is built from.
pub struct Inbound {
    pub opaque_ports: PortList,
    pub require_identity_ports: PortList,
    pub detect_timeout: Duration,
    pub http: HttpSettings,
    /// How long an unused client of an application port is kept.
    pub idle_timeout: Duration,
    pub metrics: Metrics,
    pub taps: Taps,
    pub identity: Option<Arc<LocalIdentity>>,
    pub client: NewClient,
    pub drain: Drain,
    /// The inbound policy of each port.
    pub policies: PortPolicies,
    /// The codec of each codec port (`MESH_PROXY_INBOUND_CODEC_PORTS`).
    pub codecs: codec::Codecs,
}

/// An inbound connection once its protocol and TLS are known: the target of everything below
/// the detection and TLS layers.
#[derive(Clone, Debug)]
pub struct InboundConn {
    pub client: SocketAddr,
    /// The pod's address the client dialed.
    pub orig_dst: SocketAddr,
    /// Where the application listens: the pod's loopback at the port the client dialed.
    pub target: SocketAddr,
    pub protocol: Protocol,
    pub tls: Tls,
    /// The port's inbound policy.
    pub policy: PolicyHandle,
}

impl InboundConn {
    fn new(parent: &Policied<Accepted>, protocol: Protocol, tls: Tls) -> Self {
        let ClientAddr(client) = parent.param();
        let OrigDst(orig_dst) = parent.param();
        Self {
            client,
            orig_dst,
            target: SocketAddr::new(loopback(orig_dst.ip()), orig_dst.port()),
            protocol,
            tls,
            policy: parent.policy.clone(),
        }
    }

    fn client_id(&self) -> ClientIdentity {
        ClientIdentity(match &self.tls {
            Tls::Established(id) => Some(id.clone()),
            Tls::NoIdentity(_) => None,
        })
    }
}

/// The stack for the inbound listener's connections.
pub fn stack(
    inbound: Inbound,
) -> impl NewService<
    Accepted,
    Service = impl tower::Service<BoxIo, Response = (), Error = BoxError, Future = ConnFuture>
                  + Send
                  + 'static,
> + Send
       + Sync
       + 'static {
    let Inbound {
        opaque_ports,
        require_identity_ports,
        detect_timeout,
        http,
        idle_timeout,
        metrics,
        taps,
        identity,
        client,
        drain,
        policies,
        codecs,
    } = inbound;
    // A codec port skips detection, as an opaque one does.
    let opaque_ports = opaque_ports.with(codecs.ports());
    let refuse = Refuse {
        metrics: metrics.clone(),
        direction: Direction::Inbound,
    };

    let app = Stack::new(client.clone())
        .push(CacheLayer::new(Cache::<EndpointAddr, _>::new(idle_timeout)))
        .push(headers::hop_by_hop())
        .push(NewRateLimit::layer(metrics.authz.clone()))
        .push(NewAuthorizeHttp::layer())
        .push(NewMeter::layer(metrics.clone(), taps.clone(), Record::All))
        .push(headers::downgrade())
        .push(headers::client_id())
        .push(client_id::layer(
            metrics.authz.client_id_removed_total.clone(),
        ))
        .push(ForEachLayer(RespondLayer))
        .push(NewServeHttp::layer(http.clone(), drain, taps.clone()))
        .push(crate::transport::NewTcpMetrics::layer(metrics.clone()))
        .into_inner();
    let forward = Stack::new(NewForward::new(client.clone()))
        .push(crate::transport::NewTcpMetrics::layer(metrics.clone()))
        .push(MapTargetLayer(|conn: InboundConn| TcpEndpoint {
            addr: conn.target,
            server_id: None,
            labels: conn.param(),
            in_flight: None,
            unavailable: None,
        }))
        .into_inner();
    let by_codec = codecs.clone();
    let opaque = Stack::new(NewSelect::new(
        move |conn: &InboundConn| by_codec.get(conn.target.port()).is_some(),
        Stack::new(codec::stack(codecs, client, metrics.clone(), taps.clone()))
            .push(crate::transport::NewTcpMetrics::layer(metrics.clone()))
            .into_inner(),
        forward,
    ))
    .push(NewAuthorizeTcp::layer())
    .into_inner();
    let by_protocol = Arc::new(NewSwitch::new(app, opaque));

    let detect = |opaque_tls_peek| DetectConfig {
        recognizers: Default::default(),
        timeout: detect_timeout,
        capacity: http.max_header_bytes,
        opaque_ports: opaque_ports.clone(),
        opaque_tls_peek,
    };
    let no_identity = match identity {
        Some(_) => NO_TLS_FROM_REMOTE,
        None => NO_TLS_DISABLED,
    };
    let plain = Stack::new(by_protocol.clone())
        .push(MapTargetLayer(|d: Decided<Detect<Policied<Accepted>>>| {
            InboundConn::new(&d.parent.parent, d.parent.protocol, d.tls)
        }))
        .push(NewRequireIdentity::layer(
            require_identity_ports,
            no_identity,
            refuse.clone(),
        ))
        .shared()
        .into_inner();
    // A Server whose `proxyProtocol` is `opaque` or `TLS` makes its port opaque, as if it
    // were listed in `MESH_PROXY_INBOUND_OPAQUE_PORTS`: outside mutual TLS and inside it.
    let declared_opaque = |peek| DetectConfig {
        opaque_ports: PortList::all(),
        ..detect(peek)
    };
    let meshed = Stack::new(by_protocol)
        .push(MapTargetLayer(
            |d: Detect<Decided<Detect<Policied<Accepted>>>>| {
                InboundConn::new(&d.parent.parent.parent, d.protocol, d.parent.tls)
            },
        ))
        .into_inner();
    let meshed = NewSelect::new(
        |d: &Decided<Detect<Policied<Accepted>>>| d.parent.parent.policy.declares_opaque(),
        declared_opaque(None).layer().layer(meshed.clone()),
        detect(None).layer().layer(meshed),
    );
    let terminate = identity.clone().map(|identity| TerminateConfig {
        identity,
        timeout: detect_timeout,
        capacity: http.max_header_bytes,
        refuse,
    });
    let tls_on = terminate.is_some();
    let terminate = terminate.map(|config| NewTerminate::new(config, meshed, plain.clone()));
    let accepted = NewSelect::new(
        move |d: &Detect<Policied<Accepted>>| tls_on && d.protocol == Protocol::TLS,
        NewOption(terminate),
        plain,
    );
    let peek = identity.is_some().then_some(OPAQUE_TLS_PEEK);
    let by_policy = NewSelect::new(
        |p: &Policied<Accepted>| p.policy.declares_opaque(),
        declared_opaque(peek).layer().layer(accepted.clone()),
        detect(peek).layer().layer(accepted),
    );
    Stack::new(by_policy)
        .push(NewPortPolicy::layer(policies))
        .into_inner()
}

/// A stage that may be absent; it is only asked for targets where it is present.
#[derive(Clone)]
struct NewOption<N>(Option<N>);

impl<T, N: NewService<T>> NewService<T> for NewOption<N> {
    type Service = N::Service;
    fn new_service(&self, target: T) -> N::Service {
        self.0
            .as_ref()
            .expect("chosen only when present")
            .new_service(target)
    }
}

impl Param<Protocol> for InboundConn {
    fn param(&self) -> Protocol {
        self.protocol
    }
}

impl Param<ClientAddr> for InboundConn {
    fn param(&self) -> ClientAddr {
        ClientAddr(self.client)
    }
}

impl Param<OrigDst> for InboundConn {
    fn param(&self) -> OrigDst {
        OrigDst(self.orig_dst)
    }
}

impl Param<PolicyHandle> for InboundConn {
    fn param(&self) -> PolicyHandle {
        self.policy.clone()
    }
}

impl Param<ClientIdentity> for InboundConn {
    fn param(&self) -> ClientIdentity {
        self.client_id()
    }
}

impl Param<CloseSignal> for InboundConn {
    fn param(&self) -> CloseSignal {
        authorize::close_when_revoked(&self.policy, ClientAddr(self.client), self.client_id())
    }
}

impl Param<Tls> for InboundConn {
    fn param(&self) -> Tls {
        self.tls.clone()
    }
}

impl Param<TcpLabels> for InboundConn {
    fn param(&self) -> TcpLabels {
        TcpLabels {
            direction: Direction::Inbound,
            target_addr: self.target,
            tls: Some(self.tls.clone()),
        }
    }
}

impl Param<EndpointAddr> for InboundConn {
    fn param(&self) -> EndpointAddr {
        EndpointAddr {
            addr: self.target,
            server_id: None,
        }
    }
}

impl Param<MeterTarget> for InboundConn {
    fn param(&self) -> MeterTarget {
        MeterTarget {
            direction: Direction::Inbound,
            target_addr: Some(self.target),
            dst: None,
            tls: self.tls.clone(),
            server_id: None,
            tap_target: None,
            authority_fallback: Some(self.target),
        }
    }
}

fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}
