//! The proxy's identity: its private key, its certificate from the identity controller, and the
//! mutual-TLS configurations that present it.
//!
//! At start the proxy generates a P-256 key in `MESH_PROXY_IDENTITY_DIR` (it never leaves the
//! proxy) and sends a CSR for its identity with its service-account token to the identity
//! controller, whose own certificate it verifies first. It becomes ready once it holds a
//! certificate that chains to the trust anchors, names it, and matches its key. It renews at
//! 70 % of the lifetime; a failed renewal is retried with backoff while the old certificate
//! keeps serving. The TLS configurations read the current certificate at every handshake, so a
//! renewal needs no restart of anything.

use crate::config::IdentityConfig;
use crate::metrics::{IdentityMetrics, RefreshLabels};
use mesh_api::identity::credentials::{provider, Credentials, Renewal};
use mesh_api::identity::{ca, client, CertifyRequest, Identity};
use rustls::{
    pki_types::{CertificateDer, ServerName},
    server::WebPkiClientVerifier,
    ClientConfig, ServerConfig,
};
use std::{
    io,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};
use tokio::io::{AsyncRead, AsyncWrite};

/// ALPN between proxies: HTTP/2 for requests, HTTP/1.1 for upgrades and CONNECT.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// How long one certify call may take.
const CERTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("MESH_PROXY_IDENTITY_DIR={dir}: {source}")]
    Dir { dir: String, source: io::Error },
    #[error("generating the identity key: {0}")]
    Key(String),
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the trust anchors: {0}")]
    Anchors(String),
}

/// Why one certificate refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("reading the token {path}: {source}")]
    Token { path: String, source: io::Error },
    #[error(transparent)]
    Certify(#[from] client::CertifyError),
    #[error("the identity controller sent an unusable certificate: {0}")]
    Certificate(String),
}

/// What the proxy knows of who it is.
pub struct LocalIdentity {
    config: IdentityConfig,
    /// The key, the CSR and the current certificate (the TLS configurations' resolver).
    credentials: Arc<Credentials>,
    server: Arc<ServerConfig>,
    client_h2: Arc<ClientConfig>,
    client_http1: Arc<ClientConfig>,
    client_opaque: Arc<ClientConfig>,
    metrics: IdentityMetrics,
    /// How certify calls connect to the controller (the proxy's socket mark).
    connector: client::Connector,
}

impl LocalIdentity {
    /// Generates the key (written to the identity directory) and builds the TLS configurations;
    /// no certificate yet: [`LocalIdentity::run`] gets it, connecting with `connector`.
    pub fn new(
        config: IdentityConfig,
        metrics: IdentityMetrics,
        connector: client::Connector,
    ) -> Result<Arc<Self>, IdentityError> {
        let key_pair = ca::new_key().map_err(|e| IdentityError::Key(e.to_string()))?;
        write_key(&config.dir, &key_pair.serialize_pem())?;
        let credentials = Arc::new(
            Credentials::new(&config.name, &key_pair, config.trust_anchors.clone())
                .map_err(|e| IdentityError::Key(e.to_string()))?,
        );
        let roots = Arc::new(
            credentials
                .roots()
                .map_err(|e| IdentityError::Anchors(e.to_string()))?,
        );
        let provider = provider();
        let store = credentials.clone();

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| IdentityError::Anchors(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(store.clone());
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];

        let client = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, IdentityError> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(roots.clone())
                .with_client_cert_resolver(store.clone());
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(c))
        };
        let (client_h2, client_http1, client_opaque) =
            (client(&[ALPN_H2])?, client(&[ALPN_HTTP1])?, client(&[])?);
        Ok(Arc::new(Self {
            credentials,
            server: Arc::new(server),
            client_h2,
            client_http1,
            client_opaque,
            metrics,
            config,
            connector,
        }))
    }

    /// The proxy's identity, in its DNS form.
    pub fn name(&self) -> &str {
        self.credentials.name()
    }

    /// Whether a certificate is held.
    pub fn has_certificate(&self) -> bool {
        self.credentials.current().is_some()
    }

    /// Gets a certificate, then keeps renewing it; sets `ready` once the first arrives.
    pub async fn run(self: Arc<Self>, ready: Arc<AtomicBool>) {
        let mut renewal = Renewal::new();
        loop {
            let wait = match self.refresh().await {
                Ok(not_after) => {
                    self.metrics
                        .refresh_total
                        .get_or_create(&RefreshLabels { result: "ok" })
                        .inc();
                    ready.store(true, Ordering::Release);
                    let wait = renewal.succeeded(not_after);
                    tracing::info!(identity = %self.name(), renew_in = ?wait, "certificate obtained");
                    wait
                }
                Err(error) => {
                    self.metrics
                        .refresh_total
                        .get_or_create(&RefreshLabels { result: "failure" })
                        .inc();
                    // Jitter, so a fleet that failed together does not retry together.
                    let wait = renewal.failed().mul_f64(0.75 + fastrand::f64() / 2.0);
                    let serving = self.has_certificate();
                    tracing::warn!(identity = %self.name(), %error, retry_in = ?wait, serving_old = serving, "certificate refresh failed");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One certify call: on success the new certificate serves from the next handshake on.
    async fn refresh(&self) -> Result<SystemTime, RefreshError> {
        let path = &self.config.token_file;
        let token =
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| RefreshError::Token {
                    path: path.display().to_string(),
                    source,
                })?;
        let request = CertifyRequest {
            csr_pem: self.credentials.csr_pem().to_string(),
            token: token.trim().to_string(),
        };
        let response = client::certify_with(
            &self.connector,
            &self.config.addr,
            &self.config.server_name.dns_name(),
            &self.config.trust_anchors,
            &request,
            CERTIFY_TIMEOUT,
        )
        .await?;
        let not_after = self
            .credentials
            .accept(&response.cert_chain_pem)
            .map_err(|e| RefreshError::Certificate(e.to_string()))?;
        let epoch = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.metrics.expiration.set(epoch.as_secs() as i64);
        Ok(not_after)
    }

    /// The mutual-TLS server configuration for connections to this identity.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Opens mutual TLS to a peer proxy that must prove `server_id`.
    pub async fn connect<I>(
        &self,
        io: I,
        server_id: &str,
        alpn: Alpn,
    ) -> io::Result<tokio_rustls::client::TlsStream<I>>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let config = match alpn {
            Alpn::H2 => &self.client_h2,
            Alpn::Http1 => &self.client_http1,
            Alpn::None => &self.client_opaque,
        };
        let name = ServerName::try_from(server_id.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, io)
            .await
    }
}

/// Which application protocol a connection between proxies carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http1,
    None,
}

/// The verified identity in a peer's certificate chain: the first DNS name that is an identity.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<Arc<str>> {
    let leaf = certs?.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let name = cert
        .valid_dns_names()
        .find(|name| Identity::parse(name).is_ok())?;
    Some(Arc::from(name))
}

/// What a connection's first bytes say of TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A complete ClientHello, with its server name if it sent one.
    ServerName(Option<String>),
    /// A ClientHello so far: more bytes are needed.
    Incomplete,
    /// Not a TLS ClientHello.
    NotTls,
}

/// Reads the server name of the ClientHello in `prefix` without answering it.
pub fn client_hello(prefix: &[u8]) -> Hello {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = prefix;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Hello::NotTls,
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            Hello::ServerName(accepted.client_hello().server_name().map(str::to_string))
        }
        Ok(None) => Hello::Incomplete,
        Err(_) => Hello::NotTls,
    }
}

/// Writes the key where the proxy keeps it, readable by the proxy's user only.
fn write_key(dir: &Path, pem: &str) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |source| IdentityError::Dir {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let path = dir.join("key.pem");
    let tmp = dir.join(".key.pem.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(pem.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ca::{LeafNames, Signer};
    use rustls::RootCertStore;

    const DAY: Duration = Duration::from_secs(86_400);

    fn web() -> Identity {
        Identity::new("web", "demo", "cluster.local").unwrap()
    }

    fn local(anchor_pem: &str, dir: &Path) -> Arc<LocalIdentity> {
        let config = IdentityConfig {
            name: web(),
            addr: "127.0.0.1:1".into(),
            server_name: Identity::controller("cluster.local").unwrap(),
            token_file: dir.join("token"),
            trust_anchors: ca::certs_from_pem(anchor_pem, "anchors").unwrap(),
            dir: dir.to_path_buf(),
        };
        LocalIdentity::new(config, IdentityMetrics::default(), Default::default()).unwrap()
    }

    fn new_ca() -> (String, Signer) {
        let anchor = ca::new_trust_anchor("cluster.local", DAY).unwrap();
        let issuer = ca::new_issuer(&anchor, "cluster.local", DAY).unwrap();
        (
            anchor.cert_pem,
            Signer::from_pem(&issuer.cert_pem, &issuer.key_pem).unwrap(),
        )
    }

    #[test]
    fn the_key_stays_in_the_identity_dir_and_the_csr_names_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (anchor, _) = new_ca();
        let id = local(&anchor, dir.path());
        let meta = std::fs::metadata(dir.path().join("key.pem")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let csr =
            rcgen::CertificateSigningRequestParams::from_pem(id.credentials.csr_pem()).unwrap();
        let names: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].contains(&web().dns_name()), "{names:?}");
        assert!(names[1].contains(&web().spiffe_id()), "{names:?}");
        assert!(!id.has_certificate());
    }

    #[test]
    fn only_a_trusted_certificate_for_this_key_and_name_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (anchor, signer) = new_ca();
        let id = local(&anchor, dir.path());
        let csr =
            rcgen::CertificateSigningRequestParams::from_pem(id.credentials.csr_pem()).unwrap();
        let good = signer
            .issue(
                &csr.public_key,
                &LeafNames::identity(&web()),
                DAY,
                Duration::ZERO,
            )
            .unwrap();
        assert!(id.credentials.accept(&good.chain_pem).is_ok());

        // Right name, wrong key.
        let (other_key, _) = signer
            .issue_with_key(&LeafNames::identity(&web()), DAY)
            .unwrap();
        let e = id.credentials.accept(&other_key.chain_pem).err().unwrap();
        assert!(e.to_string().contains("another key"), "{e}");
        // Right key, wrong name.
        let db = Identity::new("db", "demo", "cluster.local").unwrap();
        let wrong = signer
            .issue(
                &csr.public_key,
                &LeafNames::identity(&db),
                DAY,
                Duration::ZERO,
            )
            .unwrap();
        let e = id.credentials.accept(&wrong.chain_pem).err().unwrap();
        assert!(e.to_string().contains("another name"), "{e}");
        // Another CA.
        let (_, stranger) = new_ca();
        let foreign = stranger
            .issue(
                &csr.public_key,
                &LeafNames::identity(&web()),
                DAY,
                Duration::ZERO,
            )
            .unwrap();
        let e = id.credentials.accept(&foreign.chain_pem).err().unwrap();
        assert!(e.to_string().contains("trusted CA"), "{e}");
        assert!(id.credentials.accept("garbage").is_err());
    }

    #[test]
    fn client_hellos_are_read_without_answering() {
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(client_hello(&[0x16, 0x03, 0x01]), Hello::Incomplete);
        // A real ClientHello, from rustls, with and without a server name.
        let hello = |name: &str| {
            let config = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth();
            let mut conn = rustls::ClientConnection::new(
                Arc::new(config),
                ServerName::try_from(name.to_string()).unwrap(),
            )
            .unwrap();
            let mut out = Vec::new();
            conn.write_tls(&mut out).unwrap();
            out
        };
        let bytes = hello("web.demo.serviceaccount.identity.mesh.cluster.local");
        assert_eq!(
            client_hello(&bytes),
            Hello::ServerName(Some(
                "web.demo.serviceaccount.identity.mesh.cluster.local".into()
            ))
        );
        assert_eq!(client_hello(&bytes[..bytes.len() / 2]), Hello::Incomplete);
        assert_eq!(
            client_hello(&hello("10.0.0.1")),
            Hello::ServerName(None),
            "IP addresses are not sent as SNI"
        );
    }
}
