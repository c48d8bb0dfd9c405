//! The TLS ClientHello peek (`mesh_proxy::identity::client_hello`) and the handshake that
//! follows it with the proxy's own server configuration.
//!
//! The inbound TLS stage reads until `client_hello` decides (or its 16 KiB buffer is full);
//! this target asks it at every piece of the input as it arrives, as that loop does, then feeds
//! the bytes to a rustls server connection built from `LocalIdentity::server_config` (mutual TLS,
//! ALPN h2 and http/1.1; no certificate yet, so the handshake goes as far as choosing one).
//! Asserts: a server name read is a non-empty DNS name of ASCII letters, digits, `-` and `.`;
//! what the peek says never changes between two runs on the same bytes.
//!
//! `tls_hello --write-seeds DIR` writes the ClientHellos a rustls client sends (the seed corpus).
#![forbid(unsafe_code)]

use mesh_api::identity::{ca, credentials::provider, Identity};
use mesh_proxy::{
    config::IdentityConfig,
    identity::{client_hello, Hello, LocalIdentity},
    metrics::IdentityMetrics,
};
use std::{io::Read, sync::Arc, time::Duration};

/// The inbound TLS stage's buffer (`TerminateConfig::capacity`).
const CAPACITY: usize = 16 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir] = &args[..] {
        if flag == "--write-seeds" {
            return write_seeds(dir.as_ref());
        }
    }
    // The proxy's identity writes its key to its directory: a temporary one, gone at exit.
    let dir = std::env::temp_dir().join(format!("mesh-fuzz-tls-{}", std::process::id()));
    let identity = local_identity(&dir);
    // Shared, immutable configuration: a panic cannot leave it half-changed.
    let server = std::panic::AssertUnwindSafe(identity.server_config());
    afl::fuzz!(|data: &[u8]| {
        let mut buf = Vec::new();
        let mut peeked = Hello::Incomplete;
        for piece in mesh_fuzz::pieces(data) {
            buf.extend_from_slice(piece);
            peeked = client_hello(&buf);
            if peeked != Hello::Incomplete || buf.len() >= CAPACITY {
                break;
            }
        }
        if let Hello::ServerName(Some(name)) = &peeked {
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'),
                "server name {name:?}"
            );
        }
        assert_eq!(
            client_hello(&buf),
            peeked,
            "the peek is a function of its bytes"
        );
        if mesh_fuzz::verbose() {
            eprintln!("peek: {peeked:?} after {} bytes", buf.len());
        }

        // The handshake that follows the peek, on every byte read.
        let Ok(mut conn) = rustls::ServerConnection::new(Arc::clone(&server)) else {
            return;
        };
        let mut rest = data;
        while !rest.is_empty() {
            match conn.read_tls(&mut rest) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let processed = conn.process_new_packets();
            let mut sink = Vec::new();
            while conn.wants_write() {
                if conn.write_tls(&mut sink).is_err() {
                    break;
                }
            }
            if let Err(error) = processed {
                if mesh_fuzz::verbose() {
                    eprintln!("handshake: {error}");
                }
                break;
            }
        }
        let mut plaintext = Vec::new();
        let _ = conn.reader().read_to_end(&mut plaintext);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// The proxy's identity (`web.demo…`) with a fresh key in `dir`, without a certificate.
fn local_identity(dir: &std::path::Path) -> Arc<LocalIdentity> {
    let anchor = ca::new_trust_anchor("cluster.local", Duration::from_secs(86_400))
        .expect("a trust anchor is generated");
    let config = IdentityConfig {
        name: Identity::new("web", "demo", "cluster.local").expect("a valid identity"),
        addr: "127.0.0.1:1".into(),
        server_name: Identity::controller("cluster.local").expect("a valid identity"),
        token_file: dir.join("token"),
        trust_anchors: ca::certs_from_pem(&anchor.cert_pem, "anchors").expect("its own PEM"),
        dir: dir.to_path_buf(),
    };
    LocalIdentity::new(config, IdentityMetrics::default(), Default::default())
        .expect("the identity's TLS configurations build")
}

/// Writes the ClientHellos a rustls client sends: a peer proxy's (TLS 1.3, the server's identity
/// as SNI, ALPN h2 or http/1.1 or none), and an application's (TLS 1.2 and 1.3, a DNS name).
fn write_seeds(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("the seed folder can be created");
    let peer = "web.demo.serviceaccount.identity.mesh.cluster.local";
    let cases: [(&str, &str, &[&[u8]], bool); 4] = [
        ("peer-h2", peer, &[b"h2"], false),
        ("peer-http1", peer, &[b"http/1.1"], false),
        ("peer-opaque", peer, &[], false),
        ("app-tls12", "api.example.com", &[b"h2", b"http/1.1"], true),
    ];
    for (file, server_name, alpn, tls12) in cases {
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12, &rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS13]
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("the provider supports these versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .expect("a valid DNS name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
            .expect("a client connection starts");
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).expect("writing to memory");
        std::fs::write(dir.join(file), hello).expect("the seed can be written");
    }
}
