//! A workload's credentials: its key, the CSR for its identity, and the certificate the
//! identity controller issued for it. The proxy and the tap aggregator both hold one.
//!
//! The certificate is read at every handshake (`Credentials` is the rustls certificate
//! resolver, client and server side), so a renewal needs no rebuild of any TLS configuration.
//! A chain becomes current only after [`ca::check_issued`]: it verifies against the trust
//! anchors for the workload's own name and carries its own key. [`Renewal`] says when to ask
//! again.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{RootCertStore, SignatureScheme};

use super::ca::{self, CaError};
use super::Identity;

/// The crypto provider of the mesh's TLS: ring (no C toolchain needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A workload's key and current certificate.
#[derive(Debug)]
pub struct Credentials {
    name: String,
    csr_pem: String,
    public_key: Vec<u8>,
    signing_key: Arc<dyn SigningKey>,
    anchors: Vec<CertificateDer<'static>>,
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Credentials {
    /// The credentials of `identity` with `key`, trusting `anchors`; no certificate yet.
    pub fn new(
        identity: &Identity,
        key: &KeyPair,
        anchors: Vec<CertificateDer<'static>>,
    ) -> Result<Credentials, CaError> {
        let signing_key = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            )))
            .map_err(|e| CaError::Pem {
                what: "the workload's key".into(),
                reason: e.to_string(),
            })?;
        Ok(Credentials {
            name: identity.dns_name(),
            csr_pem: ca::csr(identity, key)?,
            public_key: key.public_key_raw().to_vec(),
            signing_key,
            anchors,
            current: RwLock::new(None),
        })
    }

    /// The identity, in its DNS form.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CSR to send with each certify call (the key never changes).
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The trust anchors.
    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// The trust anchors as a root store, for verifying peers.
    pub fn roots(&self) -> Result<RootCertStore, CaError> {
        let mut roots = RootCertStore::empty();
        for anchor in &self.anchors {
            roots.add(anchor.clone()).map_err(|e| CaError::Pem {
                what: "the trust anchors".into(),
                reason: e.to_string(),
            })?;
        }
        Ok(roots)
    }

    /// The current certificate and key, if one was accepted.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Checks a chain the identity controller sent ([`ca::check_issued`]) and makes it current;
    /// returns when it expires. A chain that fails the checks changes nothing.
    pub fn accept(&self, chain_pem: &str) -> Result<SystemTime, CaError> {
        let (chain, not_after) =
            ca::check_issued(chain_pem, &self.anchors, &self.name, &self.public_key)?;
        let key = Arc::new(CertifiedKey::new(chain, self.signing_key.clone()));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(not_after)
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

/// When to ask for a certificate again: at 70 % of the current one's remaining lifetime, or
/// after a failure with a backoff doubling from 500 ms to 30 s.
#[derive(Debug)]
pub struct Renewal {
    backoff: Duration,
}

impl Renewal {
    /// Renew when this share of the certificate's remaining lifetime has passed.
    pub const RENEW_AT: f64 = 0.7;
    /// The retry backoff after a failed call: doubling from the first to the last.
    pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

    /// A schedule whose next failure waits the first backoff.
    pub fn new() -> Renewal {
        Renewal {
            backoff: Self::BACKOFF.0,
        }
    }

    /// A certificate valid until `not_after` arrived: how long until the next call (at least
    /// a second). Resets the backoff.
    pub fn succeeded(&mut self, not_after: SystemTime) -> Duration {
        self.backoff = Self::BACKOFF.0;
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        left.mul_f64(Self::RENEW_AT).max(Duration::from_secs(1))
    }

    /// A call failed: how long until the next one; doubles the backoff for the one after.
    pub fn failed(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(Self::BACKOFF.1);
        wait
    }
}

impl Default for Renewal {
    fn default() -> Self {
        Renewal::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ca::{LeafNames, Signer};

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn only_a_checked_chain_for_the_own_key_becomes_current() {
        let anchor = ca::new_trust_anchor("cluster.local", 365 * DAY).unwrap();
        let issuer = ca::new_issuer(&anchor, "cluster.local", 30 * DAY).unwrap();
        let signer = Signer::from_pem(&issuer.cert_pem, &issuer.key_pem).unwrap();
        let web = Identity::new("web", "demo", "cluster.local").unwrap();
        let anchors = ca::certs_from_pem(&anchor.cert_pem, "anchors").unwrap();
        let key = ca::new_key().unwrap();
        let creds = Credentials::new(&web, &key, anchors).unwrap();
        assert!(creds.current().is_none());
        assert!(creds.csr_pem().contains("CERTIFICATE REQUEST"));

        // Issued for another key: refused, nothing current.
        let (other, _) = signer
            .issue_with_key(&LeafNames::identity(&web), DAY)
            .unwrap();
        let err = creds.accept(&other.chain_pem).unwrap_err();
        assert!(err.to_string().contains("another key"), "{err}");
        assert!(creds.current().is_none());

        // Issued for this key (through the CSR, as the controller does): current.
        let csr = rcgen::CertificateSigningRequestParams::from_pem(creds.csr_pem()).unwrap();
        let issued = signer
            .issue(
                &csr.public_key,
                &LeafNames::identity(&web),
                DAY,
                Duration::ZERO,
            )
            .unwrap();
        let not_after = creds.accept(&issued.chain_pem).unwrap();
        assert!(not_after > SystemTime::now());
        assert!(creds.current().is_some());
    }

    #[test]
    fn renewal_at_70_percent_and_doubling_backoff() {
        let mut r = Renewal::new();
        assert_eq!(r.failed(), Duration::from_millis(500));
        assert_eq!(r.failed(), Duration::from_secs(1));
        for _ in 0..10 {
            r.failed();
        }
        assert_eq!(r.failed(), Duration::from_secs(30));
        let wait = r.succeeded(SystemTime::now() + Duration::from_secs(100));
        assert!(
            wait > Duration::from_secs(60) && wait <= Duration::from_secs(70),
            "{wait:?}"
        );
        assert_eq!(
            r.failed(),
            Duration::from_millis(500),
            "a success resets the backoff"
        );
        assert_eq!(
            r.succeeded(SystemTime::now() - Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
