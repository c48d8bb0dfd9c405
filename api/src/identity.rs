//! Workload identity: the names, the certify API's wire types, and the mesh CA's certificates.
//!
//! A workload's identity is its service account: `<sa>.<ns>.serviceaccount.identity.mesh.<td>`
//! is the DNS SAN of its certificate and the TLS server name other proxies dial it by, and
//! `spiffe://<td>/ns/<ns>/sa/<sa>` is its URI SAN. A trust anchor (the root) signs an issuer, the
//! issuer signs 24-hour leaves. The identity controller holds the issuer; a proxy generates its
//! own key and sends only a CSR ([`CertifyRequest`]) with its service-account token.
//!
//! [`ca`] makes and checks certificates (rcgen to make, rustls-webpki to verify) for everyone who
//! needs to: the controller, `mesh install`, `mesh demo`, the proxy and the tests.

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod ca;
pub mod client;
pub mod credentials;

/// Where a proxy asks for a certificate (`POST`, JSON [`CertifyRequest`] → [`CertifyResponse`]).
pub const CERTIFY_PATH: &str = "/v1/identity/certify";

/// The audience of the projected service-account token a proxy presents.
pub const TOKEN_AUDIENCE: &str = "identity.mesh.io";

/// The service account and namespace of the identity controller; its serving certificate carries
/// this identity, and proxies verify it before they send a token.
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "mesh-identity";
/// The control plane's namespace.
pub const CONTROL_PLANE_NAMESPACE: &str = "mesh";

/// The body of `POST /v1/identity/certify`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertifyRequest {
    /// A PKCS#10 request, PEM, for exactly the identity the token proves.
    pub csr_pem: String,
    /// The workload's token: a projected service-account token in a cluster, the `data.token` of
    /// a `kubernetes.io/service-account-token` Secret on one machine.
    pub token: String,
}

/// The answer to a successful certify request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertifyResponse {
    /// The leaf first, then the issuer: everything but the trust anchor, PEM.
    pub cert_chain_pem: String,
    /// The leaf's `notAfter`, RFC 3339.
    pub expires_at: String,
}

/// The body of every error answer of the identity API (4xx and 5xx).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
}

/// A workload identity: a service account in a namespace, in a trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    service_account: String,
    namespace: String,
    trust_domain: String,
}

/// Why a string is not an identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Not of the form `<sa>.<ns>.serviceaccount.identity.mesh.<trust-domain>`.
    #[error(
        "{0:?} is not a mesh identity (<sa>.<ns>.serviceaccount.identity.mesh.<trust-domain>)"
    )]
    Shape(String),
    /// A part is not a DNS label (lowercase letters, digits and '-', at most 63 characters).
    #[error("{part:?} in {name:?} is not a DNS label")]
    Label {
        /// The whole name.
        name: String,
        /// The offending part.
        part: String,
    },
}

const MIDDLE: &str = ".serviceaccount.identity.mesh.";

impl Identity {
    /// The identity of `service_account` in `namespace`, checking that each is a DNS label and
    /// the trust domain a DNS name.
    pub fn new(
        service_account: &str,
        namespace: &str,
        trust_domain: &str,
    ) -> Result<Self, NameError> {
        let name = format!("{service_account}.{namespace}{MIDDLE}{trust_domain}");
        for part in [service_account, namespace]
            .into_iter()
            .chain(trust_domain.split('.'))
        {
            if !is_dns_label(part) {
                return Err(NameError::Label {
                    name,
                    part: part.to_string(),
                });
            }
        }
        Ok(Self {
            service_account: service_account.to_string(),
            namespace: namespace.to_string(),
            trust_domain: trust_domain.to_string(),
        })
    }

    /// Parses the DNS form, `<sa>.<ns>.serviceaccount.identity.mesh.<trust-domain>`.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let shape = || NameError::Shape(name.to_string());
        let (head, trust_domain) = name.split_once(MIDDLE).ok_or_else(shape)?;
        let (service_account, namespace) = head.split_once('.').ok_or_else(shape)?;
        if namespace.contains('.') {
            return Err(shape());
        }
        Self::new(service_account, namespace, trust_domain)
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The DNS SAN and TLS server name.
    pub fn dns_name(&self) -> String {
        self.to_string()
    }

    /// The SPIFFE ID, the certificate's URI SAN.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// The identity controller's own identity in `trust_domain`.
    pub fn controller(trust_domain: &str) -> Result<Self, NameError> {
        Self::new(
            CONTROLLER_SERVICE_ACCOUNT,
            CONTROL_PLANE_NAMESPACE,
            trust_domain,
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}{MIDDLE}{}",
            self.service_account, self.namespace, self.trust_domain
        )
    }
}

impl std::str::FromStr for Identity {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let id = Identity::new("web", "demo", "cluster.local").unwrap();
        assert_eq!(
            id.to_string(),
            "web.demo.serviceaccount.identity.mesh.cluster.local"
        );
        assert_eq!(id.spiffe_id(), "spiffe://cluster.local/ns/demo/sa/web");
        assert_eq!(Identity::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn rejects_what_is_not_an_identity() {
        for bad in [
            "",
            "web.demo.svc.cluster.local",
            "web.serviceaccount.identity.mesh.cluster.local",
            "a.b.c.serviceaccount.identity.mesh.cluster.local",
            "Web.demo.serviceaccount.identity.mesh.cluster.local",
            "web.demo.serviceaccount.identity.mesh.",
            "web.-demo.serviceaccount.identity.mesh.cluster.local",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
