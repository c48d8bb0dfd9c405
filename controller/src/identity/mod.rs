//! The identity controller: the mesh CA's issuer, certifying workloads over TLS.
//!
//! `POST /v1/identity/certify` takes a CSR and a token: [`token`] finds the identity the token
//! proves (a TokenReview in a cluster, service-account token Secrets in a folder), [`csr`] checks
//! that the CSR asks for exactly that identity, and [`Ca`] signs a leaf with the issuer, never
//! outliving it. [`server`] serves the API over TLS with a certificate the controller issues to
//! itself (`mesh-identity.mesh.serviceaccount.identity.mesh.<td>`) and renews, so a proxy
//! without a certificate can verify it against the trust anchors before sending its token.
//!
//! Start-up refuses what would make every answer wrong: unreadable or empty PEM, a key that is
//! not the issuer's, an issuer that is not a CA, has expired, or does not chain to the anchors.

pub mod csr;
pub mod server;
pub mod token;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_api::identity::ca::{self, CaError, Issued, LeafNames, Signer};
use mesh_api::identity::{Identity, NameError, TOKEN_AUDIENCE};
use rustls_pki_types::CertificateDer;

use crate::source::Source;
use token::TokenReviewer;

/// How to run the identity controller.
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// Where to listen (`0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// The issuer certificate, PEM (the first certificate of the file is the issuer).
    pub issuer_cert: PathBuf,
    /// The issuer's private key, PEM.
    pub issuer_key: PathBuf,
    /// The trust anchors, PEM (one or more certificates).
    pub trust_anchors: PathBuf,
    /// Where tokens are checked: TokenReviews (`Kube`) or token Secrets in a folder (`Dir`).
    pub source: Source,
    /// The trust domain of the identities (`cluster.local`).
    pub trust_domain: String,
    /// The lifetime of issued leaves (24 h).
    pub leaf_lifetime: Duration,
    /// How far back a leaf's `notBefore` goes, for clocks behind ours (1 min).
    pub clock_skew: Duration,
    /// The audience projected tokens must be for (`identity.mesh.io`).
    pub token_audience: String,
}

impl IdentityConfig {
    /// The defaults of everything but the CA files and the source.
    pub fn new(
        issuer_cert: PathBuf,
        issuer_key: PathBuf,
        trust_anchors: PathBuf,
        source: Source,
    ) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            issuer_cert,
            issuer_key,
            trust_anchors,
            source,
            trust_domain: "cluster.local".into(),
            leaf_lifetime: Duration::from_secs(24 * 3600),
            clock_skew: Duration::from_secs(60),
            token_audience: TOKEN_AUDIENCE.into(),
        }
    }
}

/// Why the identity controller could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file could not be read.
    #[error("reading {what} {path}: {error}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The cause (in the message, so not a separate source).
        error: std::io::Error,
    },
    /// The PEM or the certificates are unusable (no certificate, no key, a key that is not the
    /// issuer's, an issuer that is not a CA).
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The issuer's validity does not cover now.
    #[error("the issuer certificate {path} {reason}")]
    IssuerValidity {
        /// The issuer file.
        path: PathBuf,
        /// `has expired at …` / `is not valid before …`.
        reason: String,
    },
    /// The issuer does not chain to the trust anchors: every leaf would be refused by proxies.
    #[error(
        "the issuer certificate {issuer} does not chain to the trust anchors {anchors}: {error}"
    )]
    NotChained {
        /// The issuer file.
        issuer: PathBuf,
        /// The anchors file.
        anchors: PathBuf,
        /// The verification failure of a certificate it issued.
        error: CaError,
    },
    /// A configuration value is unusable.
    #[error("{0}")]
    Config(String),
    /// The trust domain is not a DNS name.
    #[error("invalid trust domain: {0}")]
    TrustDomain(#[from] NameError),
    /// The listener could not bind.
    #[error("listening on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        error: std::io::Error,
    },
    /// The Kubernetes client could not be configured.
    #[error(transparent)]
    Kube(#[from] crate::source::kube::KubeError),
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// The loaded CA: the issuer that signs, the anchors proxies trust, and the lifetimes.
pub struct Ca {
    signer: Signer,
    issuer_not_after: SystemTime,
    anchors: Vec<CertificateDer<'static>>,
    leaf_lifetime: Duration,
    clock_skew: Duration,
}

/// Why a leaf was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The issuer has expired since start-up.
    #[error("the issuer certificate has expired; the CA cannot issue until it is rotated")]
    IssuerExpired,
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] CaError),
}

impl Ca {
    /// Loads and checks the issuer and the anchors of `config`.
    pub fn load(config: &IdentityConfig) -> Result<Self, StartError> {
        if config.leaf_lifetime < Duration::from_secs(1) {
            return Err(StartError::Config(
                "--leaf-lifetime must be at least 1s".into(),
            ));
        }
        let read = |what, path: &Path| {
            std::fs::read_to_string(path).map_err(|error| StartError::Read {
                what,
                path: path.to_owned(),
                error,
            })
        };
        let issuer_pem = read("the issuer certificate", &config.issuer_cert)?;
        let key_pem = read("the issuer key", &config.issuer_key)?;
        let anchors_pem = read("the trust anchors", &config.trust_anchors)?;
        let in_file = |what: &str, path: &Path| format!("{what} {}", path.display());
        let anchors = ca::certs_from_pem(
            &anchors_pem,
            &in_file("the trust anchors", &config.trust_anchors),
        )?;
        let issuer_ders = ca::certs_from_pem(
            &issuer_pem,
            &in_file("the issuer certificate", &config.issuer_cert),
        )?;
        // PKCS#8, SEC1 or PKCS#1, as openssl, step and cert-manager write it.
        let key_what = format!(
            "the issuer key {} (--issuer-key)",
            config.issuer_key.display()
        );
        let key = ca::key_from_pem(&key_pem, &key_what)?;
        ca::check_key_pair(
            &issuer_ders[0],
            &in_file("the issuer certificate", &config.issuer_cert),
            &key,
            &key_what,
        )?;
        let signer = Signer::new(&issuer_pem, &key)?;
        let info = ca::cert_info(&issuer_ders[0])?;
        let now = SystemTime::now();
        let validity = |reason| StartError::IssuerValidity {
            path: config.issuer_cert.clone(),
            reason,
        };
        if info.not_after <= now {
            return Err(validity(format!(
                "has expired at {}",
                ca::rfc3339(info.not_after)
            )));
        }
        if info.not_before > now {
            return Err(validity(format!(
                "is not valid before {}",
                ca::rfc3339(info.not_before)
            )));
        }
        let ca = Ca {
            signer,
            issuer_not_after: info.not_after,
            anchors,
            leaf_lifetime: config.leaf_lifetime,
            clock_skew: config.clock_skew,
        };
        // The controller's own certificate proves the issuer chains to the anchors: if it does
        // not verify, no proxy would accept any leaf either.
        let controller = Identity::controller(&config.trust_domain)?;
        let (issued, _key) = ca.issue_with_key(&controller)?;
        let chain = ca::certs_from_pem(&issued.chain_pem, "the serving certificate")?;
        ca::verify_chain(&chain, &ca.anchors, &controller.dns_name(), now).map_err(|error| {
            StartError::NotChained {
                issuer: config.issuer_cert.clone(),
                anchors: config.trust_anchors.clone(),
                error,
            }
        })?;
        if info.not_after < now + config.leaf_lifetime {
            tracing::warn!(
                issuer_expires_at = %ca::rfc3339(info.not_after),
                leaf_lifetime = ?config.leaf_lifetime,
                "the issuer expires within one leaf lifetime: leaves are cut short to its expiry; rotate the issuer"
            );
        }
        Ok(ca)
    }

    /// The issuer's `notAfter`.
    pub fn issuer_not_after(&self) -> SystemTime {
        self.issuer_not_after
    }

    /// The trust anchors.
    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// The lifetime of a leaf issued now: the configured one, cut to the issuer's expiry.
    fn lifetime_now(&self) -> Result<Duration, IssueError> {
        let left = self
            .issuer_not_after
            .duration_since(SystemTime::now())
            .map_err(|_| IssueError::IssuerExpired)?;
        // Whole seconds, so the leaf's notAfter (whole seconds) is never past the issuer's.
        let left = Duration::from_secs(left.as_secs());
        if left.is_zero() {
            return Err(IssueError::IssuerExpired);
        }
        Ok(self.leaf_lifetime.min(left))
    }

    /// Signs a leaf for `key` carrying `identity`'s DNS name and SPIFFE ID.
    pub fn issue(
        &self,
        key: &impl rcgen::PublicKeyData,
        identity: &Identity,
    ) -> Result<Issued, IssueError> {
        let lifetime = self.lifetime_now()?;
        Ok(self.signer.issue(
            key,
            &LeafNames::identity(identity),
            lifetime,
            self.clock_skew,
        )?)
    }

    /// A leaf with a fresh key (the controller's own serving certificate).
    pub fn issue_with_key(&self, identity: &Identity) -> Result<(Issued, String), IssueError> {
        let key = ca::new_key()?;
        let issued = self.issue(&key, identity)?;
        Ok((issued, key.serialize_pem()))
    }
}

impl From<IssueError> for StartError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Sign(e) => StartError::Ca(e),
            IssueError::IssuerExpired => StartError::Config(e.to_string()),
        }
    }
}

/// A started identity controller.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The name its serving certificate is for (what clients verify).
    pub server_name: String,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), StartError>>,
}

impl Running {
    /// Waits until the server stops (normally never).
    pub async fn wait(&mut self) -> Result<(), StartError> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Ok(()),
        }
    }

    /// Stops accepting, lets the requests in flight finish (up to 10 s), and returns.
    pub async fn shutdown(mut self) -> Result<(), StartError> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Loads the CA, binds the listener, starts the server, and returns at once.
pub async fn start(config: IdentityConfig) -> Result<Running, StartError> {
    let ca = Ca::load(&config)?;
    let controller = Identity::controller(&config.trust_domain)?;
    let reviewer = match &config.source {
        Source::Dir(dir) => {
            if !dir.is_dir() {
                return Err(StartError::Config(format!(
                    "--source dir:{}: not a folder",
                    dir.display()
                )));
            }
            TokenReviewer::Folder {
                dir: dir.clone(),
                trust_domain: config.trust_domain.clone(),
            }
        }
        Source::Kube { kubeconfig } => TokenReviewer::Kube {
            client: crate::source::kube::client(kubeconfig.as_deref()).await?,
            audience: config.token_audience.clone(),
            trust_domain: config.trust_domain.clone(),
        },
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| StartError::Bind {
            addr: config.listen,
            error,
        })?;
    let addr = listener.local_addr().map_err(|error| StartError::Bind {
        addr: config.listen,
        error,
    })?;
    let state = server::State::new(Arc::new(ca), reviewer, controller.clone())?;
    let (shutdown, stop) = tokio::sync::watch::channel(false);
    tracing::info!(
        %addr,
        server_name = %controller,
        issuer_expires_at = %ca::rfc3339(state.ca().issuer_not_after()),
        "identity controller listening"
    );
    let task = tokio::spawn(async move {
        server::serve(listener, state, stop)
            .await
            .map_err(StartError::from)
    });
    Ok(Running {
        addr,
        server_name: controller.dns_name(),
        shutdown,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::duration::parse_duration;

    #[test]
    fn durations_parse() {
        let ok = |s: &str, secs: u64| assert_eq!(parse_duration(s), Ok(Duration::from_secs(secs)));
        ok("90s", 90);
        ok("1m", 60);
        ok("24h", 86_400);
        ok("2d", 172_800);
        ok("0s", 0);
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in [
            "",
            "10",
            "h",
            "1.5h",
            "10 parsecs",
            "-1s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }
}
