//! The demo application of `mesh demo`, in the spirit of Linkerd's emojivoto: two gRPC
//! services, a web front end that calls them, a bot that votes through it, and the Redis that
//! keeps the votes.
//!
//! Each part is a module with a `serve` (or `run`) function that takes a listener (or a
//! target) and a shutdown future, so the parts can be embedded as well as run by the
//! `mesh-demo-app` binary:
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! mesh_demo_app::emoji::serve(listener, shutdown).await;
//! # Ok(())
//! # }
//! ```
//!
//! Every vote for one emoji (the doughnut, by default) fails on purpose: the problem a mesh
//! user is meant to find.

#![forbid(unsafe_code)]

pub mod bot;
pub mod emoji;
pub mod grpc;
pub mod net;
pub mod redis;
pub mod voting;
pub mod web;
