//! The codec stage of the inbound stack: a connection to a port of
//! `MESH_PROXY_INBOUND_CODEC_PORTS` (the pod's `config.mesh.io/codec-ports`), once authorized
//! as an opaque connection would be, has its requests decoded and each metered, checked against
//! the port's rate limit, and sent to the application on connections of its own (one per lane,
//! and one more per pinning request: a peer proxy's shared connection carries many clients'
//! requests, in order; a pinned client's arrives on a connection of its own, pinning request
//! first).
//!
//! | stage | target | layers, outer to inner |
//! |---|---|---|
//! | connection | [`InboundConn`] | serve: decode, answer in order (`codec::serve`) |
//! | request | the connection | metrics and tap (`codec::meter`) → rate limit (`inbound::authorize`) → the connection's application connection (`codec::upstream`) |

use super::{authorize::NewRateLimit, InboundConn};
use crate::{
    codec::{
        self,
        meter::Meter,
        serve::{ConnParams, NewServe},
        upstream::{EndpointTarget, NewEndpoint, Pinned},
        Protocol, Served,
    },
    http::client::NewClient,
    metrics::{Direction, Metrics, Tls},
    svc::{NewFn, NewService, Param},
    tap::Taps,
};
use mesh_api::codec_ports::CodecPorts;
use std::{collections::HashMap, sync::Arc};
use tower::Layer;

/// The codec of each codec port.
#[derive(Clone, Default)]
pub struct Codecs(Arc<HashMap<u16, Arc<dyn Protocol>>>);

impl Codecs {
    /// The codecs of `ports` (every codec they name is one this proxy has: the names are
    /// checked when the configuration is read).
    pub fn new(ports: &[CodecPorts]) -> Self {
        let mut map = HashMap::new();
        for p in ports {
            if let Some(protocol) = codec::by_name(&p.codec) {
                for port in p.first..=p.last {
                    map.insert(port, protocol.clone());
                }
            }
        }
        Self(Arc::new(map))
    }

    pub fn get(&self, port: u16) -> Option<&Arc<dyn Protocol>> {
        self.0.get(&port)
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.keys().copied()
    }
}

/// A connection to a codec port.
#[derive(Clone)]
pub struct CodecConn {
    pub conn: InboundConn,
    pub protocol: Arc<dyn Protocol>,
}

impl Param<ConnParams> for CodecConn {
    fn param(&self) -> ConnParams {
        ConnParams {
            client: self.conn.client,
            orig_dst: self.conn.orig_dst,
            client_id: match &self.conn.tls {
                Tls::Established(id) => Some(id.clone()),
                Tls::NoIdentity(_) => None,
            },
            protocol: self.protocol.clone(),
        }
    }
}

/// The stage of codec connections.
pub fn stack(
    codecs: Codecs,
    client: NewClient,
    metrics: Metrics,
    taps: Taps,
) -> impl NewService<
    InboundConn,
    Service = impl tower::Service<
        crate::svc::BoxIo,
        Response = (),
        Error = crate::svc::BoxError,
        Future = crate::svc::ConnFuture,
    > + Send
                  + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    let new_endpoint = NewEndpoint::new(client);
    let rate_limit = NewRateLimit::layer(metrics.authz.clone());
    let requests = {
        let taps = taps.clone();
        NewFn(move |target: CodecConn| {
            let conn = &target.conn;
            let authority = metrics.authority_label(&conn.orig_dst.to_string());
            let served = Served {
                direction: Direction::Inbound,
                target_addr: conn.target,
                dst: None,
                tls: conn.tls.clone(),
                server_id: None,
            };
            let app = new_endpoint.new_service(EndpointTarget {
                addr: conn.target,
                server_id: None,
                info: Arc::new(served.clone()),
                protocol: target.protocol.clone(),
            });
            let limited = rate_limit
                .layer(NewFn(move |_: InboundConn| {
                    Pinned::layer().layer(app.clone())
                }))
                .new_service(conn.clone());
            Meter::new(
                limited,
                metrics.clone(),
                taps.clone(),
                target.protocol.name(),
                authority,
                served,
            )
        })
    };
    let serve = NewServe::layer(taps).layer(requests);
    NewFn(move |conn: InboundConn| {
        let protocol = codecs
            .get(conn.target.port())
            .expect("chosen only for codec ports")
            .clone();
        serve.new_service(CodecConn { conn, protocol })
    })
}
