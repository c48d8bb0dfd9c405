//! The control-plane API's wire types and clients, shared by the proxy, the controller and the CLI.
//!
//! The API is HTTP/2 with JSON-lines bodies, versioned under `/v1` (see `api/README.md` for the
//! protocol). It holds the destination watch ([`destination::Update`] and its client
//! [`destination::watch`]), the outbound and inbound policy watches ([`policy`], [`inbound`]), identities and the certify client ([`identity`]), tap ([`tap`]),
//! sidecar injection (`inject`, feature `inject`), and what several crates must spell alike:
//! the proxy's ports and uid ([`defaults`]), durations ([`duration`]) and the viz component's
//! wire format ([`viz`]). The proxy never depends on the controller; everything the two sides
//! agree on lives here.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec_ports;
pub mod defaults;
pub mod destination;
pub mod duration;
pub mod identity;
pub mod inbound;
#[cfg(feature = "inject")]
pub mod inject;
pub mod policy;
pub mod tap;
pub mod viz;
mod wire;

/// The line framing every JSON-lines watch reads with, for the fuzz targets (`fuzz/`): not a
/// stable API.
#[doc(hidden)]
pub use wire::{LineDecoder, TooLong};
