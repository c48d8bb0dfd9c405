//! The proxy's well-known ports and uid: the defaults that the proxy, `mesh-init`, the injector,
//! local mode, the CLI and the controller must agree on, defined once.
//!
//! Each is only a default: the proxy's listeners move with `MESH_PROXY_*_ADDR`, `mesh-init`'s
//! with `--inbound-port`, `--outbound-port` and `--proxy-uid`. What a meshed pod gets when
//! nobody asks for anything else is what is written here.
//!
//! ```
//! use mesh_api::defaults;
//! assert_eq!(defaults::INBOUND_ADDR.port(), defaults::INBOUND_PORT);
//! assert_eq!(defaults::LOCAL_ADMIN_ADDR.to_string(), "127.0.0.1:4191");
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// The proxy's inbound port: `mesh-init` redirects the pod's incoming TCP here.
pub const INBOUND_PORT: u16 = 4143;
/// The proxy's outbound port: `mesh-init` redirects the pod's outgoing TCP here.
pub const OUTBOUND_PORT: u16 = 4140;
/// The proxy's admin port: `/metrics`, `/ready`, `/live`, `/v1/tap` and `POST /shutdown`. It is
/// never redirected inbound (the injector skips it), so it is reached directly.
pub const ADMIN_PORT: u16 = 4191;
/// The uid the proxy runs as; `mesh-init` never redirects this uid's own connections.
pub const PROXY_UID: u32 = 2102;

/// The proxy's inbound listener (`MESH_PROXY_INBOUND_ADDR`): every address, [`INBOUND_PORT`].
pub const INBOUND_ADDR: SocketAddr = any(INBOUND_PORT);
/// The proxy's outbound listener (`MESH_PROXY_OUTBOUND_ADDR`): loopback only, since only the
/// pod's own redirected connections arrive there; [`OUTBOUND_PORT`].
pub const OUTBOUND_ADDR: SocketAddr = loopback(OUTBOUND_PORT);
/// The proxy's admin listener (`MESH_PROXY_ADMIN_ADDR`): every address, [`ADMIN_PORT`], so
/// that probes, Prometheus and the tap aggregator reach it.
pub const ADMIN_ADDR: SocketAddr = any(ADMIN_PORT);
/// Where the admin server is reached from inside the pod's own network namespace:
/// `127.0.0.1:4191` (readiness, local scrapes and taps).
pub const LOCAL_ADMIN_ADDR: SocketAddr = loopback(ADMIN_PORT);

const fn any(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
}

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers are a contract with every pod meshed by an earlier version, with the
    /// manifests and with the operators' firewalls: they never change by accident.
    #[test]
    fn the_documented_numbers() {
        assert_eq!(INBOUND_ADDR.to_string(), "0.0.0.0:4143");
        assert_eq!(OUTBOUND_ADDR.to_string(), "127.0.0.1:4140");
        assert_eq!(ADMIN_ADDR.to_string(), "0.0.0.0:4191");
        assert_eq!(LOCAL_ADMIN_ADDR.to_string(), "127.0.0.1:4191");
        assert_eq!(PROXY_UID, 2102);
    }
}
