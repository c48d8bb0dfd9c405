//! The original destination of a connection redirected by `mesh-init`'s iptables rules.

use nix::sys::socket::{getsockopt, sockopt};
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
};
use tokio::net::TcpStream;

/// Where a listener learns each connection's original destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginalDst {
    /// From the socket, as redirected by `mesh-init` (what a pod uses).
    Socket,
    /// Every connection is taken as redirected from this address: for in-process tests and
    /// benchmarks on a machine without redirect rules.
    Fixed(SocketAddr),
}

impl OriginalDst {
    pub fn lookup(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        match self {
            Self::Socket => original_dst(stream),
            Self::Fixed(addr) => Ok(*addr),
        }
    }
}

/// Reads `SO_ORIGINAL_DST` (or its IPv6 twin) from an accepted connection: the address the
/// client meant to reach before the NAT table redirected it to the proxy. A connection that was
/// not redirected answers with its own local address.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let orig = match local {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst).map(|sa| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                u16::from_be(sa.sin_port),
            ))
        }),
        SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst).map(|sa| {
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
                sa.sin6_flowinfo,
                sa.sin6_scope_id,
            ))
        }),
    };
    match orig {
        Ok(addr) => Ok(addr),
        // ENOENT: no NAT entry, so the client connected to the proxy's port directly.
        Err(nix::errno::Errno::ENOENT) => Ok(local),
        Err(e) => Err(io::Error::from(e)),
    }
}
