//! The mesh's observability: metrics and tap clients over a pluggable transport, the
//! aggregations behind `mesh viz stat`, `edges`, `routes`, `authz`, `tap` and `top`, and the
//! ratatui views.
//!
//! Data flows one way: [`client`] reads proxies (through a [`client::Transport`]: local network
//! namespaces, or the in-cluster tap aggregator through an [`api::Api`]), [`source`] gets their
//! samples (from the proxies, or from Prometheus through the viz metrics API), [`prom`] parses
//! scrapes, [`stat`], [`routes`], [`authz`], [`edges`], [`top`] and [`tap`] fold them into
//! models, and `views` draws models. The live views (`live`) get their data over channels from
//! network tasks, so drawing never waits on the network. The views need the default `tui`
//! feature; the controller builds without it.
#![forbid(unsafe_code)]

pub mod api;
pub mod authz;
pub mod client;
pub mod edges;
#[cfg(feature = "tui")]
pub mod live;
pub mod model;
pub mod prom;
pub mod routes;
pub mod source;
pub mod stat;
pub mod tap;
#[cfg(test)]
mod testing;
pub mod top;
#[cfg(feature = "tui")]
pub mod views;
