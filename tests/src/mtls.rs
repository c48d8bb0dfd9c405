//! A mutual-TLS mesh in process, for the tests that need identity without root: the real
//! identity and destination controllers on a folder of YAML with a fresh CA, a server proxy
//! (`web`, inbound on 127.0.0.2) in front of the test app, and a client proxy (`client`) that
//! discovers `web-svc` and reaches it over mutual TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::identity::{ca, Identity};
use mesh_controller::identity::IdentityConfig;
use mesh_controller::{index::IndexConfig, source::Source, DestinationConfig};
use mesh_proxy::config::{Config, IdentityConfig as ProxyIdentity};
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use crate::fixtures::{self, eventually, TestProxy};
use crate::state::{meshed_service, token_secret, write};

/// A day, for certificate lifetimes.
pub const DAY: Duration = Duration::from_secs(86_400);

/// Where the client application "dials": the service's ClusterIP.
pub const CLUSTER_IP: &str = "10.96.0.10:80";

/// The identity of service account `sa` in `demo`.
pub fn identity(sa: &str) -> Identity {
    Identity::new(sa, "demo", "cluster.local").expect("a valid identity")
}

/// A CA on disk (`anchors.pem`, `issuer.crt`, `issuer.key`), and its issuer to make test
/// certificates with.
pub struct TestCa {
    pub anchor_pem: String,
    pub signer: ca::Signer,
    dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("a CA folder");
        let anchor = ca::new_trust_anchor("cluster.local", 365 * DAY).expect("an anchor");
        let issuer = ca::new_issuer(&anchor, "cluster.local", 30 * DAY).expect("an issuer");
        for (file, pem) in [
            ("anchors.pem", &anchor.cert_pem),
            ("issuer.crt", &issuer.cert_pem),
            ("issuer.key", &issuer.key_pem),
        ] {
            std::fs::write(dir.path().join(file), pem).expect("write the CA");
        }
        TestCa {
            signer: ca::Signer::from_pem(&issuer.cert_pem, &issuer.key_pem).expect("the issuer"),
            anchor_pem: anchor.cert_pem,
            dir,
        }
    }

    /// One of the CA's files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A certificate for `who` with a fresh key: the chain and the key, PEM.
    pub fn issue(&self, who: &Identity) -> (String, String) {
        let (issued, key) = self
            .signer
            .issue_with_key(&ca::LeafNames::identity(who), DAY)
            .expect("issue a certificate");
        (issued.chain_pem, key)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// The running mesh; dropping it stops everything.
pub struct MtlsMesh {
    pub ca: TestCa,
    /// Token files and key folders of the proxies, and the controllers' `objects/` folder.
    pub state: tempfile::TempDir,
    pub identity: mesh_controller::identity::Running,
    pub destination: mesh_controller::Running,
    /// The app behind the server proxy (its connections are taken as dialed to it).
    pub app: SocketAddr,
    pub client: TestProxy,
    pub server: TestProxy,
}

impl MtlsMesh {
    /// Starts the controllers and both proxies, `tweak` adjusting each proxy's configuration,
    /// and waits until both hold their certificates.
    pub async fn start(tweak: impl Fn(&mut Config)) -> MtlsMesh {
        let ca = TestCa::new();
        let state = tempfile::tempdir().expect("a state folder");
        let folder = state.path().join("objects");
        std::fs::create_dir_all(&folder).expect("the objects folder");
        write(&folder, "web-sa.yaml", &token_secret("web", "web-token"));
        write(
            &folder,
            "client-sa.yaml",
            &token_secret("client", "client-token"),
        );
        let mut config = IdentityConfig::new(
            ca.file("issuer.crt"),
            ca.file("issuer.key"),
            ca.file("anchors.pem"),
            Source::Dir(folder.clone()),
        );
        config.listen = "127.0.0.1:0".parse().expect("an address");
        let identity = mesh_controller::identity::start(config)
            .await
            .expect("the identity controller starts");
        let destination = mesh_controller::start(DestinationConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            source: Source::Dir(folder.clone()),
            index: IndexConfig::default(),
        })
        .await
        .expect("the destination controller starts");

        let app = fixtures::app_on("127.0.0.1:0".parse().expect("an address")).await;
        let server_identity = proxy_identity(
            &ca,
            &state,
            identity.addr,
            &self::identity("web"),
            "web-token",
        );
        let server = fixtures::proxy(app, |c| {
            c.inbound_addr = "127.0.0.2:0".parse().expect("an address");
            c.identity = Some(server_identity);
            tweak(c);
        })
        .await;
        write(
            &folder,
            "web-svc.yaml",
            &meshed_service(server.addrs.inbound),
        );
        let client_identity = proxy_identity(
            &ca,
            &state,
            identity.addr,
            &self::identity("client"),
            "client-token",
        );
        let destination_addr = destination.addr;
        let client = fixtures::proxy(CLUSTER_IP.parse().expect("an address"), |c| {
            c.identity = Some(client_identity);
            c.destination_addr = Some(destination_addr.to_string());
            c.destination_namespace = "demo".into();
            tweak(c);
        })
        .await;
        for proxy in [&client, &server] {
            assert!(
                ready(proxy, Duration::from_secs(10)).await,
                "the proxy gets its certificate: {}",
                proxy.metrics().await
            );
        }
        MtlsMesh {
            ca,
            state,
            identity,
            destination,
            app,
            client,
            server,
        }
    }

    /// The identity configuration of another proxy for `id`, with `token` in its token file.
    pub fn proxy_identity(&self, id: &Identity, token: &str) -> ProxyIdentity {
        proxy_identity(&self.ca, &self.state, self.identity.addr, id, token)
    }

    /// Mutual TLS to `addr` for `server_name`, trusting the mesh's anchors and presenting
    /// `chain_pem` / `key_pem`, offering `alpn`.
    pub async fn tls_client(
        &self,
        addr: SocketAddr,
        server_name: &str,
        (chain_pem, key_pem): (&str, &str),
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for anchor in ca::certs_from_pem(&self.ca.anchor_pem, "anchors").expect("anchors") {
            roots.add(anchor).expect("an anchor");
        }
        let chain = ca::certs_from_pem(chain_pem, "chain").expect("a chain");
        let key: PrivateKeyDer<'static> = ca::key_from_pem(key_pem, "key").expect("a key");
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("a client certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let io = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, io)
            .await
    }
}

fn proxy_identity(
    ca: &TestCa,
    state: &tempfile::TempDir,
    controller: SocketAddr,
    id: &Identity,
    token: &str,
) -> ProxyIdentity {
    let dir = state.path().join(format!("proxy-{}", id.service_account()));
    std::fs::create_dir_all(&dir).expect("the proxy's folder");
    std::fs::write(dir.join("token"), token).expect("the token");
    ProxyIdentity {
        name: id.clone(),
        addr: controller.to_string(),
        server_name: Identity::controller("cluster.local").expect("the controller's identity"),
        token_file: dir.join("token"),
        trust_anchors: ca::certs_from_pem(&ca.anchor_pem, "anchors").expect("anchors"),
        dir: dir.join("key"),
    }
}

/// Whether `proxy` answers `/ready` with 200 within `within`.
pub async fn ready(proxy: &TestProxy, within: Duration) -> bool {
    let admin = proxy.addrs.admin;
    eventually(within, || async move {
        fixtures::get_h1(admin, "/ready").await.0 == 200
    })
    .await
}
