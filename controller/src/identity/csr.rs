//! CSR checks: a certificate request may ask for exactly one workload identity, nothing more.
//!
//! [`parse`] reads a PKCS#10 request (rcgen verifies its signature) and refuses what the CA never
//! signs whatever the token: a CA request, a key that is not P-256, P-384 or Ed25519, a SAN that
//! is not a DNS name or a URI. [`Csr::check_for`] then checks the names against the identity the
//! token proves: the DNS SANs must be exactly `[identity.dns_name()]`, and a URI SAN, if any,
//! exactly `identity.spiffe_id()`. The subject, key usages and extended key usages asked for
//! are ignored: the leaf always gets the CA's own (both DNS and SPIFFE SANs, server and client
//! auth).

use mesh_api::identity::Identity;
use rcgen::{CertificateSigningRequestParams, IsCa, SanType, SignatureAlgorithm};

/// Why a CSR is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a CSR, a bad signature, or something the CA never signs (a `400`).
    #[error("bad CSR: {0}")]
    Malformed(String),
    /// A well-formed CSR for another identity than the token's (a `403`).
    #[error("the CSR is not for the token's identity {identity}: {reason}")]
    Mismatch {
        /// The identity the token proves.
        identity: String,
        /// What the CSR asks for instead.
        reason: String,
    },
}

/// A CSR that passed the checks that do not depend on the identity.
#[derive(Debug)]
pub struct Csr {
    dns: Vec<String>,
    uris: Vec<String>,
    key: CsrKey,
}

/// The public key of a checked CSR, with the algorithm its type calls for (the CSR's signature
/// algorithm does not say the curve: a P-384 key may sign with SHA-256).
#[derive(Debug, Clone)]
pub struct CsrKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl rcgen::PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Parses `pem` and checks everything that does not depend on the identity.
pub fn parse(pem: &str) -> Result<Csr, CsrError> {
    let bad = |reason: String| CsrError::Malformed(reason);
    if !pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
        return Err(bad("no CERTIFICATE REQUEST PEM block".into()));
    }
    let params = CertificateSigningRequestParams::from_pem(pem).map_err(|e| {
        bad(match e {
            rcgen::Error::InvalidCertificationRequestSignature => {
                "its signature does not verify".to_owned()
            }
            rcgen::Error::UnsupportedExtension => {
                "it asks for an extension the CA does not sign".to_owned()
            }
            rcgen::Error::UnsupportedSignatureAlgorithm => {
                "its signature algorithm is not supported".to_owned()
            }
            other => format!("it does not parse: {other}"),
        })
    })?;
    if let IsCa::Ca(_) = params.params.is_ca {
        return Err(bad(
            "it asks for a CA certificate (basicConstraints cA)".into()
        ));
    }
    let key = key_of(pem)?;
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    for san in &params.params.subject_alt_names {
        match san {
            SanType::DnsName(name) => dns.push(name.as_str().to_owned()),
            SanType::URI(uri) => uris.push(uri.as_str().to_owned()),
            SanType::IpAddress(ip) => {
                return Err(bad(format!("it asks for an IP address SAN ({ip})")))
            }
            SanType::Rfc822Name(email) => {
                return Err(bad(format!(
                    "it asks for an email SAN ({})",
                    email.as_str()
                )))
            }
            SanType::OtherName(_) => return Err(bad("it asks for an otherName SAN".into())),
            _ => return Err(bad("it asks for a SAN the CA does not sign".into())),
        }
    }
    Ok(Csr { dns, uris, key })
}

impl Csr {
    /// Checks that the CSR asks for exactly `identity`, and returns its key.
    pub fn check_for(self, identity: &Identity) -> Result<CsrKey, CsrError> {
        let dns_name = identity.dns_name();
        let spiffe_id = identity.spiffe_id();
        let mismatch = |reason: String| CsrError::Mismatch {
            identity: dns_name.clone(),
            reason,
        };
        match self.dns.as_slice() {
            [name] if *name == dns_name => {}
            [] => {
                return Err(CsrError::Malformed(format!(
                    "it has no DNS SAN (expected exactly {dns_name})"
                )))
            }
            [name] => return Err(mismatch(format!("it asks for DNS name {name}"))),
            names => {
                return Err(CsrError::Malformed(format!(
                    "it asks for {} DNS SANs ({}); expected exactly {dns_name}",
                    names.len(),
                    names.join(", ")
                )))
            }
        }
        match self.uris.as_slice() {
            [] => {}
            [uri] if *uri == spiffe_id => {}
            [uri] if uri.starts_with("spiffe://") => {
                return Err(mismatch(format!("it asks for SPIFFE ID {uri}")))
            }
            [uri] => {
                return Err(CsrError::Malformed(format!(
                    "it asks for URI SAN {uri}; only {spiffe_id} is allowed"
                )))
            }
            uris => {
                return Err(CsrError::Malformed(format!(
                    "it asks for {} URI SANs ({}); at most {spiffe_id} is allowed",
                    uris.len(),
                    uris.join(", ")
                )))
            }
        }
        Ok(self.key)
    }
}

/// Parses the whole CSR and checks the identity in one call (the token's identity known).
pub fn check(pem: &str, identity: &Identity) -> Result<CsrKey, CsrError> {
    parse(pem)?.check_for(identity)
}

/// The CSR's key, if it is one the CA signs: P-256, P-384 or Ed25519.
fn key_of(pem: &str) -> Result<CsrKey, CsrError> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
    };
    use x509_parser::prelude::FromDer;
    let bad = |reason: String| CsrError::Malformed(reason);
    let block = pem::parse(pem).map_err(|e| bad(format!("it does not parse: {e}")))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(block.contents())
            .map_err(|e| bad(format!("it does not parse: {e}")))?;
    let spki = &csr.certification_request_info.subject_pki;
    let algorithm = &spki.algorithm.algorithm;
    let alg: &'static SignatureAlgorithm = if *algorithm == OID_SIG_ED25519 {
        &rcgen::PKCS_ED25519
    } else if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(c) if c == OID_NIST_EC_P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Some(c) => {
                return Err(bad(format!(
                    "its key is on curve {c}; only P-256, P-384 and Ed25519 keys are signed"
                )))
            }
            None => return Err(bad("its EC key names no curve".into())),
        }
    } else {
        return Err(bad(format!(
            "its key is of type {algorithm}; only P-256, P-384 and Ed25519 keys are signed"
        )));
    };
    Ok(CsrKey {
        raw: spki.subject_public_key.data.to_vec(),
        alg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, KeyPair};

    fn web() -> Identity {
        Identity::new("web", "demo", "cluster.local").unwrap()
    }

    /// A CSR with these SANs, signed by a fresh key of `alg`.
    fn csr_with(alg: &'static SignatureAlgorithm, sans: Vec<SanType>, ca: bool) -> String {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.to_owned().try_into().unwrap())
    }

    fn uri(u: &str) -> SanType {
        SanType::URI(u.to_owned().try_into().unwrap())
    }

    fn csr(sans: Vec<SanType>) -> String {
        csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, sans, false)
    }

    /// Checks `pem` for web.demo: `Ok(())` or the error's text must contain `expected`.
    fn check_case(pem: &str, expected: Result<(), &str>) {
        let got = check(pem, &web());
        match (got, expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(want)) => assert!(
                e.to_string().contains(want),
                "error {e:?} does not contain {want:?}"
            ),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    const NAME: &str = "web.demo.serviceaccount.identity.mesh.cluster.local";
    const SPIFFE: &str = "spiffe://cluster.local/ns/demo/sa/web";

    #[test]
    fn the_right_identity_is_accepted() {
        check_case(&csr(vec![dns(NAME)]), Ok(()));
        check_case(&csr(vec![dns(NAME), uri(SPIFFE)]), Ok(()));
        check_case(
            &csr_with(&rcgen::PKCS_ECDSA_P384_SHA384, vec![dns(NAME)], false),
            Ok(()),
        );
        check_case(
            &csr_with(&rcgen::PKCS_ED25519, vec![dns(NAME)], false),
            Ok(()),
        );
    }

    #[test]
    fn another_identity_is_a_mismatch() {
        let other = "db.demo.serviceaccount.identity.mesh.cluster.local";
        let e = check(&csr(vec![dns(other)]), &web()).unwrap_err();
        assert!(matches!(e, CsrError::Mismatch { .. }), "{e:?}");
        assert!(e.to_string().contains(other), "{e}");
        let e = check(
            &csr(vec![dns(NAME), uri("spiffe://cluster.local/ns/demo/sa/db")]),
            &web(),
        )
        .unwrap_err();
        assert!(matches!(e, CsrError::Mismatch { .. }), "{e:?}");
    }

    #[test]
    fn extra_or_odd_names_are_refused() {
        check_case(
            &csr(vec![dns(NAME), dns("evil.example.com")]),
            Err("2 DNS SANs"),
        );
        check_case(
            &csr(vec![
                dns(NAME),
                uri(SPIFFE),
                uri("https://evil.example.com"),
            ]),
            Err("2 URI SANs"),
        );
        check_case(
            &csr(vec![dns(NAME), uri("https://evil.example.com")]),
            Err("URI SAN https://evil.example.com"),
        );
        check_case(
            &csr(vec![
                dns(NAME),
                SanType::IpAddress("10.0.0.1".parse().unwrap()),
            ]),
            Err("IP address SAN (10.0.0.1)"),
        );
        check_case(
            &csr(vec![
                dns(NAME),
                SanType::Rfc822Name("a@example.com".to_owned().try_into().unwrap()),
            ]),
            Err("email SAN"),
        );
        check_case(&csr(vec![]), Err("no DNS SAN"));
        check_case(&csr(vec![uri(SPIFFE)]), Err("no DNS SAN"));
    }

    #[test]
    fn a_ca_request_is_refused() {
        check_case(
            &csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, vec![dns(NAME)], true),
            Err("CA certificate"),
        );
    }

    #[test]
    fn malformed_input_is_refused() {
        check_case("", Err("no CERTIFICATE REQUEST"));
        check_case("garbage \u{0} bytes", Err("no CERTIFICATE REQUEST"));
        check_case(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            Err("does not parse"),
        );
        // A certificate is not a request.
        let cert = rcgen::CertificateParams::new(vec![NAME.to_owned()])
            .unwrap()
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        check_case(&cert, Err("no CERTIFICATE REQUEST"));
    }

    #[test]
    fn a_csr_whose_signature_does_not_verify_is_refused() {
        let good = csr(vec![dns(NAME)]);
        let block = pem::parse(&good).unwrap();
        let mut der = block.contents().to_vec();
        // The signature is the last bytes of the DER: flip one of them.
        let last = der.len() - 2;
        der[last] ^= 0x01;
        let tampered = mesh_api::identity::ca::pem_block("CERTIFICATE REQUEST", &der);
        check_case(&tampered, Err("signature does not verify"));
    }
}
