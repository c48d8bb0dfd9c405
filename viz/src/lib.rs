//! The mesh's observability: metrics and tap clients over a pluggable transport, the
//! aggregations behind `mesh viz stat`, `edges`, `tap` and `top`, and the ratatui views.
//!
//! Data flows one way: [`client`] reads proxies (through a [`client::Transport`]: local network
//! namespaces today, the in-cluster viz component later), [`prom`] parses scrapes, [`stat`],
//! [`edges`], [`top`] and [`tap`] fold them into models, and [`views`] draws models. The live
//! views ([`live`]) get their data over channels from network tasks, so drawing never waits
//! on the network.
#![forbid(unsafe_code)]

pub mod client;
pub mod edges;
pub mod live;
pub mod model;
pub mod prom;
pub mod stat;
pub mod tap;
pub mod top;
pub mod views;
