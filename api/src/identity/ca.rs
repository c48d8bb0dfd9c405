//! The mesh CA's certificates: making them (rcgen), reading them (PEM), checking them (webpki).
//!
//! Every key the mesh makes is ECDSA P-256: small certificates, fast handshakes. A trust anchor
//! signs an issuer (a CA limited to one level below it), the issuer signs leaves. Leaves carry
//! both the server and the client usage, because every proxy is both. Keys an operator brings
//! (the issuer's, the webhook's) are read by [`key_from_pem`] whatever form openssl, step or
//! cert-manager wrote them in.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{
    pem::PemObject, CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use x509_parser::asn1_rs::{
    self, Any, Class, FromDer, Null, OctetString, Oid, Sequence, Tag, ToDer,
};

use super::Identity;

/// Why a certificate could not be made, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused to make or parse something.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: &'static str,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// PEM without the expected blocks, or blocks that do not decode.
    #[error("{what}: {reason}")]
    Pem {
        /// What was being read.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A chain that does not verify.
    #[error("certificate for {name} does not verify: {reason}")]
    Untrusted {
        /// The name the chain was checked for.
        name: String,
        /// webpki's reason, in words.
        reason: String,
    },
}

fn rcgen(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Rcgen { what, source }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertAndKey {
    /// The certificate (one PEM block).
    pub cert_pem: String,
    /// The private key: PKCS#8 when the mesh made it, any form [`key_from_pem`] reads when it
    /// came from a file.
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A fresh P-256 key.
pub fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen("generating a key"))
}

/// A random positive 128-bit serial, from ring's CSPRNG (serials must be unpredictable).
fn new_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system's random source works");
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// A fresh unguessable token (256 bits, hex): what `mesh demo` hands a service account.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system's random source works");
    hex(&bytes)
}

fn window(lifetime: Duration, skew: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - skew, now + lifetime)
}

/// A self-signed root for `trust_domain`, valid for `lifetime`.
pub fn new_trust_anchor(trust_domain: &str, lifetime: Duration) -> Result<CertAndKey, CaError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&format!("root.identity.mesh.{trust_domain}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.not_before, params.not_after) = window(lifetime, Duration::from_secs(300));
    params.serial_number = Some(new_serial());
    let cert = params
        .self_signed(&key)
        .map_err(rcgen("signing the trust anchor"))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// An issuer for `trust_domain` signed by `anchor`, valid for `lifetime`: a CA that may sign
/// leaves only.
pub fn new_issuer(
    anchor: &CertAndKey,
    trust_domain: &str,
    lifetime: Duration,
) -> Result<CertAndKey, CaError> {
    let signer = Signer::from_pem(&anchor.cert_pem, &anchor.key_pem)?;
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&format!("identity.mesh.{trust_domain}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.not_before, params.not_after) = window(lifetime, Duration::from_secs(300));
    params.serial_number = Some(new_serial());
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &signer.issuer)
        .map_err(rcgen("signing the issuer"))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// What a leaf is for: the names it carries.
#[derive(Clone, Debug, Default)]
pub struct LeafNames {
    /// DNS SANs; the first is also the common name.
    pub dns: Vec<String>,
    /// URI SANs.
    pub uris: Vec<String>,
}

impl LeafNames {
    /// The names of a workload identity: its DNS name and its SPIFFE ID.
    pub fn identity(id: &Identity) -> Self {
        Self {
            dns: vec![id.dns_name()],
            uris: vec![id.spiffe_id()],
        }
    }
}

/// A leaf as issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf, PEM.
    pub cert_pem: String,
    /// The leaf then the issuer, PEM.
    pub chain_pem: String,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
    /// The serial, lowercase hex.
    pub serial: String,
}

/// A CA certificate and its key, ready to sign.
pub struct Signer {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl Signer {
    /// Loads a CA from its certificate and key (PEM, any form [`key_from_pem`] reads); the
    /// certificate must be a CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        Self::new(cert_pem, &key_from_pem(key_pem, "the issuer key")?)
    }

    /// Loads a CA from its certificate (PEM) and a key [`key_from_pem`] read (and named in its
    /// errors); the certificate must be a CA and the key its own.
    pub fn new(cert_pem: &str, key: &PrivateKeyDer<'_>) -> Result<Self, CaError> {
        let key = KeyPair::try_from(key).map_err(rcgen("loading the issuer key"))?;
        let der = certs_from_pem(cert_pem, "the issuer certificate")?
            .into_iter()
            .next()
            .expect("certs_from_pem returns at least one");
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::Pem {
            what: "the issuer certificate".into(),
            reason: e.to_string(),
        })?;
        if !parsed.is_ca() {
            return Err(CaError::Pem {
                what: "the issuer certificate".into(),
                reason: "it is not a CA certificate (basicConstraints cA is not set)".into(),
            });
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(not_its_key("the issuer key", "the issuer certificate"));
        }
        let issuer = rcgen::Issuer::from_ca_cert_der(&der, key)
            .map_err(rcgen("reading the issuer certificate"))?;
        Ok(Self {
            cert_pem: pem_of(&der),
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a leaf for `public_key` carrying `names`, valid from `skew` ago for `lifetime`.
    pub fn issue(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        names: &LeafNames,
        lifetime: Duration,
        skew: Duration,
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(names.dns.first().map_or("", String::as_str));
        for dns in &names.dns {
            let name = dns.clone().try_into().map_err(rcgen("a DNS name"))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        for uri in &names.uris {
            let name = uri.clone().try_into().map_err(rcgen("a URI name"))?;
            params.subject_alt_names.push(SanType::URI(name));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let (not_before, not_after) = window(lifetime, skew);
        params.not_before = not_before;
        params.not_after = not_after;
        let serial = new_serial();
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(rcgen("signing a leaf"))?;
        let cert_pem = cert.pem();
        Ok(Issued {
            chain_pem: format!("{cert_pem}{}", self.cert_pem),
            cert_pem,
            not_after: not_after.into(),
            serial: hex(serial.as_ref()),
        })
    }

    /// A leaf with a fresh key: for servers the CA vouches for directly (the injector webhook,
    /// the identity controller itself) and for tests.
    pub fn issue_with_key(
        &self,
        names: &LeafNames,
        lifetime: Duration,
    ) -> Result<(Issued, String), CaError> {
        let key = new_key()?;
        let issued = self.issue(&key, names, lifetime, Duration::from_secs(60))?;
        Ok((issued, key.serialize_pem()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    pem_block("CERTIFICATE", der)
}

/// One PEM block of `label` around `der`.
pub fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Every certificate in `pem`, in order; at least one.
pub fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Pem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::Pem {
            what: what.to_string(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

// === Private keys ===

/// The private key in `pem`, as PKCS#8 (what ring, and so rcgen and rustls, load), from any of
/// the forms openssl, step and cert-manager write:
///
/// - PKCS#8, `BEGIN PRIVATE KEY` (`openssl genpkey`, `openssl pkey`);
/// - SEC1, `BEGIN EC PRIVATE KEY` (`openssl ecparam -genkey`, `step`, cert-manager's ECDSA
///   keys): a named curve, and the public key the key carries (every one of these writes it);
/// - PKCS#1, `BEGIN RSA PRIVATE KEY` (`openssl genrsa -traditional`).
///
/// ECDSA P-256 and P-384, Ed25519 and RSA (2048 to 8192 bits) keys are read; other blocks in
/// the PEM (certificates, the `EC PARAMETERS` of `openssl ecparam`) are skipped. The key is
/// loaded once before it is returned, so what this returns signs, and an error says why a key
/// is refused (encrypted, another curve or algorithm, too small) in words. `what` names the key
/// in errors: say where it came from (the file and the flag, the Secret).
///
/// ```
/// use mesh_api::identity::ca;
/// let anchor = ca::new_trust_anchor("cluster.local", std::time::Duration::from_secs(60))?;
/// let key = ca::key_from_pem(&anchor.key_pem, "the anchor key ca.key")?;
/// let pair = rcgen::KeyPair::try_from(&key)?; // or rustls' `load_private_key(key)`
/// assert_eq!(pair.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn key_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, CaError> {
    read_key(pem).map_err(|reason| CaError::Pem {
        what: what.to_string(),
        reason,
    })
}

/// Checks that `key` (from [`key_from_pem`]; `what` names it) is the key of the certificate
/// `cert` (`whose` names it).
pub fn check_key_pair(
    cert: &CertificateDer<'_>,
    whose: &str,
    key: &PrivateKeyDer<'_>,
    what: &str,
) -> Result<(), CaError> {
    let pair = KeyPair::try_from(key).map_err(|e| CaError::Pem {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    if cert_info(cert)?.public_key != pair.public_key_raw() {
        return Err(not_its_key(what, whose));
    }
    Ok(())
}

fn not_its_key(what: &str, whose: &str) -> CaError {
    CaError::Pem {
        what: what.to_string(),
        reason: format!("it does not belong to {whose}"),
    }
}

/// The PEM labels of the key forms [`key_from_pem`] reads.
const PKCS8_LABEL: &str = "PRIVATE KEY";
const SEC1_LABEL: &str = "EC PRIVATE KEY";
const PKCS1_LABEL: &str = "RSA PRIVATE KEY";

const ENCRYPTED: &str = "encrypted keys are not supported: decrypt it with \
                         `openssl pkey -in KEY -out PLAIN` (it asks for the passphrase)";

/// The OIDs of key algorithms (in a PKCS#8 `AlgorithmIdentifier`) and of curves.
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const ED25519: &str = "1.3.101.112";
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";

/// [`key_from_pem`] without the key's name: the reason it is refused, if it is.
fn read_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    let blocks = pem::parse_many(pem).map_err(|e| format!("it is not PEM: {e}"))?;
    let mut keys = blocks.iter().filter(|b| b.tag().ends_with("PRIVATE KEY"));
    let block = match (keys.next(), keys.count()) {
        (Some(block), 0) => block,
        (Some(_), more) => {
            return Err(format!(
                "it holds {} private keys: give one key per file",
                more + 1
            ))
        }
        (None, _) if pem.trim().is_empty() => return Err("it is empty".into()),
        (None, _) => {
            return Err(format!(
                "it holds no private key: expected a PEM block `BEGIN {PKCS8_LABEL}` (PKCS#8), \
                 `BEGIN {SEC1_LABEL}` (SEC1) or `BEGIN {PKCS1_LABEL}` (PKCS#1)"
            ))
        }
    };
    let encrypted = block
        .headers()
        .get("Proc-Type")
        .is_some_and(|v| v.contains("ENCRYPTED"));
    let der = block.contents();
    let (form, pkcs8, alg) = match block.tag() {
        "ENCRYPTED PRIVATE KEY" => return Err(ENCRYPTED.into()),
        _ if encrypted => return Err(ENCRYPTED.into()),
        PKCS8_LABEL => ("PKCS#8", der.to_vec(), pkcs8_algorithm(der)?),
        SEC1_LABEL => {
            let (pkcs8, alg) = sec1_to_pkcs8(der)?;
            ("SEC1", pkcs8, alg)
        }
        PKCS1_LABEL => ("PKCS#1", pkcs1_to_pkcs8(der)?, &rcgen::PKCS_RSA_SHA256),
        "DSA PRIVATE KEY" => return Err(unsupported_algorithm("DSA")),
        "OPENSSH PRIVATE KEY" => {
            return Err("an OpenSSH key is not supported: \
                        write it as PKCS#8 with `ssh-keygen -p -m PKCS8 -f KEY`"
                .into())
        }
        other => {
            return Err(format!(
                "a `BEGIN {other}` block is not a key form mesh reads: give PKCS#8 \
                 (`BEGIN {PKCS8_LABEL}`), SEC1 (`BEGIN {SEC1_LABEL}`) or PKCS#1 \
                 (`BEGIN {PKCS1_LABEL}`)"
            ))
        }
    };
    let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8);
    // Loading it is the proof that it signs (ring checks the key's consistency); rcgen and rustls
    // load the same bytes with the same ring.
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, alg).map_err(|e| refused(form, alg, &e))?;
    Ok(PrivateKeyDer::Pkcs8(pkcs8))
}

/// The algorithm of a PKCS#8 key, from its `AlgorithmIdentifier`.
fn pkcs8_algorithm(der: &[u8]) -> Result<&'static rcgen::SignatureAlgorithm, String> {
    let malformed = |e: String| format!("the PKCS#8 key does not parse: {e}");
    let info = sequence(der).map_err(malformed)?;
    // PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, privateKey OCTET STRING, … }
    let (alg_id, key) = match info.as_slice() {
        [_version, alg_id, key, ..] => (alg_id, key),
        _ => return Err(malformed("too few elements".into())),
    };
    let alg_id = sequence_of(alg_id).map_err(malformed)?;
    let oid = match alg_id.first() {
        Some(oid) if oid.tag() == Tag::Oid => Oid::try_from(oid)
            .map_err(|e| malformed(e.to_string()))?
            .to_id_string(),
        _ => return Err(malformed("no algorithm".into())),
    };
    match oid.as_str() {
        EC_PUBLIC_KEY => {
            let curve = alg_id
                .get(1)
                .ok_or_else(|| malformed("an EC key without its curve".into()))?;
            let alg = curve_algorithm(curve)?;
            // The ECPrivateKey inside must carry its public key, as in SEC1 form.
            let key = OctetString::try_from(key).map_err(|e| malformed(e.to_string()))?;
            ec_private_key(key.as_ref())?;
            Ok(alg)
        }
        RSA_ENCRYPTION => Ok(&rcgen::PKCS_RSA_SHA256),
        ED25519 => Ok(&rcgen::PKCS_ED25519),
        other => Err(unsupported_algorithm(algorithm_name(other))),
    }
}

/// A SEC1 `ECPrivateKey` as PKCS#8: the same key in a `PrivateKeyInfo` that names its curve.
fn sec1_to_pkcs8(der: &[u8]) -> Result<(Vec<u8>, &'static rcgen::SignatureAlgorithm), String> {
    let curve = ec_private_key(der)?.ok_or_else(|| {
        "the SEC1 key does not name its curve: write it with its parameters \
         (`openssl ec -in KEY -param_enc named_curve -out FIXED`)"
            .to_string()
    })?;
    let alg = curve_algorithm(&curve)?;
    let curve_oid = curve
        .to_der_vec()
        .map_err(|e| format!("the SEC1 key's curve does not encode: {e}"))?;
    Ok((pkcs8(EC_PUBLIC_KEY, &curve_oid, der)?, alg))
}

/// A PKCS#1 `RSAPrivateKey` as PKCS#8 (ring reads RSA keys in PKCS#8 only).
fn pkcs1_to_pkcs8(der: &[u8]) -> Result<Vec<u8>, String> {
    let null = Null::new()
        .to_der_vec()
        .map_err(|e| format!("encoding NULL: {e}"))?;
    pkcs8(RSA_ENCRYPTION, &null, der)
}

/// Checks a SEC1 `ECPrivateKey` (RFC 5915) and returns its `[0]` parameters (the curve), if it
/// has them: version 1, the private key, and the `[1]` public key, which ring needs.
fn ec_private_key(der: &[u8]) -> Result<Option<Any<'_>>, String> {
    let malformed = |e: String| format!("the EC key does not parse: {e}");
    let elements = sequence(der).map_err(malformed)?;
    let version = elements.first().map(u32::try_from);
    if !matches!(version, Some(Ok(1))) {
        return Err(malformed("its version is not 1".into()));
    }
    let tagged = |n: u32| {
        elements
            .iter()
            .skip(2)
            .find(|e| e.class() == Class::ContextSpecific && e.tag() == Tag(n))
    };
    if tagged(1).is_none() {
        return Err(
            "the EC key does not carry its public key, which is needed: \
                    `openssl ec -in KEY -out FIXED` writes it back"
                .into(),
        );
    }
    match tagged(0) {
        None => Ok(None),
        Some(params) => Any::from_der(params.data)
            .map(|(_, curve)| Some(curve))
            .map_err(|e| malformed(e.to_string())),
    }
}

/// The rcgen algorithm of a curve (an `ECParameters`: a named curve's OID).
fn curve_algorithm(params: &Any<'_>) -> Result<&'static rcgen::SignatureAlgorithm, String> {
    let oid = (params.tag() == Tag::Oid)
        .then(|| Oid::try_from(params).ok())
        .flatten();
    let Some(oid) = oid else {
        return Err(
            "explicit curve parameters are not supported: write the key with a named \
                    curve (`openssl ec -in KEY -param_enc named_curve -out FIXED`)"
                .into(),
        );
    };
    match oid.to_id_string().as_str() {
        P256 => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
        P384 => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
        other => Err(format!(
            "the curve {} is not supported: use P-256 (`openssl ecparam -name prime256v1`) \
             or P-384 (`secp384r1`)",
            curve_name(other)
        )),
    }
}

fn curve_name(oid: &str) -> String {
    match oid {
        "1.3.132.0.35" => "P-521 (secp521r1)".into(),
        "1.3.132.0.33" => "P-224 (secp224r1)".into(),
        "1.2.840.10045.3.1.1" => "P-192 (prime192v1)".into(),
        "1.3.132.0.10" => "secp256k1".into(),
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1".into(),
        "1.3.36.3.3.2.8.1.1.11" => "brainpoolP384r1".into(),
        "1.3.36.3.3.2.8.1.1.13" => "brainpoolP512r1".into(),
        "1.2.156.10197.1.301" => "SM2".into(),
        other => format!("with OID {other}"),
    }
}

fn algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.113549.1.1.10" => "RSA-PSS".into(),
        "1.3.101.113" => "Ed448".into(),
        "1.3.101.110" => "X25519".into(),
        "1.3.101.111" => "X448".into(),
        "1.2.840.10040.4.1" => "DSA".into(),
        "1.2.840.113549.1.3.1" | "1.2.840.10046.2.1" => "Diffie-Hellman".into(),
        other => format!("algorithm {other}"),
    }
}

fn unsupported_algorithm(name: impl std::fmt::Display) -> String {
    format!(
        "{name} keys are not supported: use ECDSA P-256 (`openssl ecparam -name prime256v1 \
         -genkey -noout`), P-384, Ed25519 or RSA"
    )
}

/// Why ring refused a key that parsed, in words.
fn refused(form: &str, alg: &rcgen::SignatureAlgorithm, e: &rcgen::Error) -> String {
    let kind = if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        "ECDSA P-256"
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        "ECDSA P-384"
    } else if alg == &rcgen::PKCS_ED25519 {
        "Ed25519"
    } else {
        "RSA"
    };
    let reason = match e {
        rcgen::Error::RingKeyRejected(r) if r == "TooSmall" => {
            "it is too small: use 2048 bits or more".to_string()
        }
        rcgen::Error::RingKeyRejected(r) if r == "TooLarge" => {
            "it is too large: use 8192 bits or fewer".to_string()
        }
        other => other.to_string(),
    };
    format!("the {form} {kind} key does not load: {reason}")
}

/// A PKCS#8 `PrivateKeyInfo` (version 0) of `key` for the algorithm `alg` with `params` (DER).
fn pkcs8(alg: &str, params: &[u8], key: &[u8]) -> Result<Vec<u8>, String> {
    let encode = |e: asn1_rs::SerializeError| format!("encoding the key as PKCS#8: {e}");
    let oid: Oid<'static> = alg
        .parse()
        .map_err(|e| format!("the OID {alg} does not parse: {e:?}"))?;
    let mut alg_id = oid.to_der_vec().map_err(encode)?;
    alg_id.extend_from_slice(params);
    let mut info = 0u32.to_der_vec().map_err(encode)?;
    info.extend(Sequence::new(alg_id.into()).to_der_vec().map_err(encode)?);
    info.extend(OctetString::new(key).to_der_vec().map_err(encode)?);
    Sequence::new(info.into()).to_der_vec().map_err(encode)
}

/// The elements of the DER SEQUENCE `der` (nothing may follow it).
fn sequence(der: &[u8]) -> Result<Vec<Any<'_>>, String> {
    let (rest, seq) = Any::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("bytes follow it".into());
    }
    sequence_of(&seq)
}

/// The elements of the SEQUENCE `seq`.
fn sequence_of<'a>(seq: &Any<'a>) -> Result<Vec<Any<'a>>, String> {
    if seq.tag() != Tag::Sequence {
        return Err(format!("expected a SEQUENCE, found {}", seq.tag()));
    }
    let mut rest = seq.data;
    let mut elements = Vec::new();
    while !rest.is_empty() {
        let (next, element) = Any::from_der(rest).map_err(|e| e.to_string())?;
        elements.push(element);
        rest = next;
    }
    Ok(elements)
}

/// The signature algorithms webpki accepts in mesh chains.
pub static SIGNATURE_ALGORITHMS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
];

/// Checks that `chain` (leaf first) chains to one of `anchors` at `now` and names `name`.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
    name: &str,
    now: SystemTime,
) -> Result<(), CaError> {
    let untrusted = |reason: String| CaError::Untrusted {
        name: name.to_string(),
        reason,
    };
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| untrusted("the chain is empty".into()))?;
    let anchors = anchors
        .iter()
        .map(|a| webpki::anchor_from_trusted_cert(a).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| untrusted(format!("a trust anchor does not parse: {e}")))?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| untrusted(format!("the leaf does not parse: {e}")))?;
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    cert.verify_for_usage(
        SIGNATURE_ALGORITHMS,
        &anchors,
        intermediates,
        UnixTime::since_unix_epoch(since),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| untrusted(describe(&e)))?;
    let server_name = ServerName::try_from(name)
        .map_err(|e| untrusted(format!("{name:?} is not a server name: {e}")))?;
    cert.verify_is_valid_for_subject_name(&server_name)
        .map_err(|e| untrusted(describe(&e)))?;
    Ok(())
}

fn describe(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "it is not signed by a trusted CA (unknown issuer)".into(),
        webpki::Error::InvalidSignatureForPublicKey => {
            "it is not signed by a trusted CA (a signature does not match)".into()
        }
        webpki::Error::CertExpired { .. } => "it has expired".into(),
        webpki::Error::CertNotValidYet { .. } => "it is not valid yet".into(),
        webpki::Error::CertNotValidForName(_) => "it is for another name".into(),
        other => format!("{other:?}"),
    }
}

/// What a certificate says of itself.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// The DNS SANs.
    pub dns_names: Vec<String>,
    /// The URI SANs.
    pub uris: Vec<String>,
    /// `notBefore`.
    pub not_before: SystemTime,
    /// `notAfter`.
    pub not_after: SystemTime,
    /// The serial, lowercase hex.
    pub serial: String,
    /// Whether basicConstraints says CA.
    pub is_ca: bool,
    /// The subject public key's bits (for an EC key, the encoded point), to match a key pair.
    pub public_key: Vec<u8>,
}

/// Reads the facts of one DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, CaError> {
    use x509_parser::extensions::GeneralName;
    let bad = |reason: String| CaError::Pem {
        what: "a certificate".into(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let mut dns_names = Vec::new();
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::URI(u) => uris.push(u.to_string()),
                _ => {}
            }
        }
    }
    let ts = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(CertInfo {
        common_name,
        dns_names,
        uris,
        not_before: ts(cert.validity().not_before),
        not_after: ts(cert.validity().not_after),
        serial: hex(cert.raw_serial()),
        is_ca: cert.is_ca(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// `t` as RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond");
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("a UTC time formats as RFC 3339")
}

/// Parses an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// A CSR for `identity` (its DNS name and SPIFFE ID, nothing else: what the identity controller
/// signs) signed by `key`, PEM.
pub fn csr(identity: &Identity, key: &KeyPair) -> Result<String, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, identity.dns_name());
    params.subject_alt_names = vec![
        SanType::DnsName(
            identity
                .dns_name()
                .try_into()
                .map_err(rcgen("the CSR's DNS name"))?,
        ),
        SanType::URI(
            identity
                .spiffe_id()
                .try_into()
                .map_err(rcgen("the CSR's SPIFFE ID"))?,
        ),
    ];
    params
        .serialize_request(key)
        .map_err(rcgen("signing the CSR"))?
        .pem()
        .map_err(rcgen("encoding the CSR"))
}

/// Checks a chain the identity controller issued for a CSR of [`csr`]: it verifies against
/// `anchors` for `name` now and its leaf carries `public_key` (the raw key of the CSR's key
/// pair). Returns the chain and the leaf's expiry.
pub fn check_issued(
    chain_pem: &str,
    anchors: &[CertificateDer<'_>],
    name: &str,
    public_key: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, SystemTime), CaError> {
    let chain = certs_from_pem(chain_pem, "the certificate chain")?;
    verify_chain(&chain, anchors, name, SystemTime::now())?;
    let info = cert_info(&chain[0])?;
    if info.public_key != public_key {
        return Err(CaError::Untrusted {
            name: name.to_string(),
            reason: "it is for another key".into(),
        });
    }
    Ok((chain, info.not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn ca() -> (CertAndKey, Signer) {
        let anchor = new_trust_anchor("cluster.local", 365 * DAY).unwrap();
        let issuer = new_issuer(&anchor, "cluster.local", 30 * DAY).unwrap();
        let signer = Signer::from_pem(&issuer.cert_pem, &issuer.key_pem).unwrap();
        (anchor, signer)
    }

    fn web() -> Identity {
        Identity::new("web", "demo", "cluster.local").unwrap()
    }

    #[test]
    fn a_leaf_verifies_for_its_name_only() {
        let (anchor, signer) = ca();
        let (issued, _key) = signer
            .issue_with_key(&LeafNames::identity(&web()), DAY)
            .unwrap();
        let chain = certs_from_pem(&issued.chain_pem, "chain").unwrap();
        assert_eq!(chain.len(), 2);
        let anchors = certs_from_pem(&anchor.cert_pem, "anchor").unwrap();
        verify_chain(&chain, &anchors, &web().dns_name(), SystemTime::now()).unwrap();
        let e = verify_chain(
            &chain,
            &anchors,
            "db.demo.serviceaccount.identity.mesh.cluster.local",
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("another name"), "{e}");
        let info = cert_info(&chain[0]).unwrap();
        assert_eq!(info.dns_names, vec![web().dns_name()]);
        assert_eq!(info.uris, vec![web().spiffe_id()]);
        assert_eq!(info.serial, issued.serial);
        assert!(!info.is_ca);
        assert!(cert_info(&chain[1]).unwrap().is_ca);
    }

    #[test]
    fn another_ca_is_an_unknown_issuer() {
        let (_, signer) = ca();
        let (other_anchor, _) = ca();
        let (issued, _) = signer
            .issue_with_key(&LeafNames::identity(&web()), DAY)
            .unwrap();
        let chain = certs_from_pem(&issued.chain_pem, "chain").unwrap();
        let anchors = certs_from_pem(&other_anchor.cert_pem, "anchor").unwrap();
        let e = verify_chain(&chain, &anchors, &web().dns_name(), SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("not signed by a trusted CA"), "{e}");
    }

    #[test]
    fn an_expired_leaf_is_refused() {
        let (anchor, signer) = ca();
        let (issued, _) = signer
            .issue_with_key(&LeafNames::identity(&web()), DAY)
            .unwrap();
        let chain = certs_from_pem(&issued.chain_pem, "chain").unwrap();
        let anchors = certs_from_pem(&anchor.cert_pem, "anchor").unwrap();
        let later = SystemTime::now() + 2 * DAY;
        let e = verify_chain(&chain, &anchors, &web().dns_name(), later).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let anchor = new_trust_anchor("cluster.local", DAY).unwrap();
        let issuer = new_issuer(&anchor, "cluster.local", DAY).unwrap();
        let e = Signer::from_pem(&issuer.cert_pem, &anchor.key_pem)
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not belong"), "{e}");
        let e = Signer::from_pem("not pem", &issuer.key_pem).err().unwrap();
        assert!(e.to_string().contains("issuer certificate"), "{e}");
    }

    #[test]
    fn an_issued_csr_is_checked_for_its_name_and_key() {
        let (anchor, signer) = ca();
        let anchors = certs_from_pem(&anchor.cert_pem, "anchors").unwrap();
        let key = new_key().unwrap();
        let csr =
            rcgen::CertificateSigningRequestParams::from_pem(&csr(&web(), &key).unwrap()).unwrap();
        let names: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let issued = signer
            .issue(
                &csr.public_key,
                &LeafNames::identity(&web()),
                DAY,
                Duration::ZERO,
            )
            .unwrap();
        let name = web().dns_name();
        let (chain, not_after) =
            check_issued(&issued.chain_pem, &anchors, &name, key.public_key_raw()).unwrap();
        assert_eq!(chain.len(), 2);
        assert!(not_after > SystemTime::now());
        let other = new_key().unwrap();
        let e =
            check_issued(&issued.chain_pem, &anchors, &name, other.public_key_raw()).unwrap_err();
        assert!(e.to_string().contains("another key"), "{e}");
        let db = Identity::new("db", "demo", "cluster.local").unwrap();
        let e = check_issued(
            &issued.chain_pem,
            &anchors,
            &db.dns_name(),
            key.public_key_raw(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("another name"), "{e}");
    }

    #[test]
    fn times_round_trip_as_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(rfc3339(t), "2027-01-15T08:00:00Z");
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
    }
}
