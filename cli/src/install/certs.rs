//! The control plane's certificates: generated fresh per install, or read from files.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use mesh_api::identity::ca::{self, CertAndKey, LeafNames, Signer};

fn days_of(days: u64) -> Duration {
    Duration::from_secs(days.saturating_mul(86_400))
}

/// Where certificates come from, when not generated.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CertFiles {
    /// The trust anchors (PEM); with the issuer certificate and key, instead of generating them.
    #[arg(long, value_name = "PATH")]
    pub identity_trust_anchors_file: Option<PathBuf>,
    /// The issuer certificate (PEM), signed by one of the trust anchors.
    #[arg(long, value_name = "PATH")]
    pub identity_issuer_certificate_file: Option<PathBuf>,
    /// The issuer's private key (PEM).
    #[arg(long, value_name = "PATH")]
    pub identity_issuer_key_file: Option<PathBuf>,
    /// The injector webhook's CA (PEM, becomes the webhook's caBundle); with the certificate and
    /// key, instead of generating them.
    #[arg(long, value_name = "PATH")]
    pub webhook_ca_file: Option<PathBuf>,
    /// The injector webhook's serving certificate (PEM), for mesh-injector.<ns>.svc.
    #[arg(long, value_name = "PATH")]
    pub webhook_certificate_file: Option<PathBuf>,
    /// The injector webhook's private key (PEM).
    #[arg(long, value_name = "PATH")]
    pub webhook_key_file: Option<PathBuf>,
}

/// Every certificate an install needs.
#[derive(Clone, Debug)]
pub struct Certs {
    /// The trust anchors, PEM.
    pub trust_anchors_pem: String,
    /// The issuer, signed by a trust anchor.
    pub issuer: CertAndKey,
    /// The webhook's CA, PEM.
    pub webhook_ca_pem: String,
    /// The webhook's serving certificate and key.
    pub webhook: CertAndKey,
}

/// The DNS names the injector is called by.
pub fn webhook_names(namespace: &str, cluster_domain: &str) -> Vec<String> {
    vec![
        format!("mesh-injector.{namespace}.svc"),
        format!("mesh-injector.{namespace}.svc.{cluster_domain}"),
    ]
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

impl Certs {
    /// Reads the given files and generates the rest; checks that they fit together.
    pub fn load_or_generate(
        files: &CertFiles,
        trust_domain: &str,
        namespace: &str,
        cluster_domain: &str,
        anchor_days: u64,
        issuer_days: u64,
        webhook_days: u64,
    ) -> anyhow::Result<Self> {
        let identity = match (
            &files.identity_trust_anchors_file,
            &files.identity_issuer_certificate_file,
            &files.identity_issuer_key_file,
        ) {
            (None, None, None) => None,
            (Some(a), Some(c), Some(k)) => {
                let issuer = CertAndKey {
                    cert_pem: read(c, "the issuer certificate")?,
                    key_pem: read(k, "the issuer key")?,
                };
                check_key(
                    &issuer,
                    &format!("the issuer certificate {}", c.display()),
                    &format!(
                        "the issuer key {} (--identity-issuer-key-file)",
                        k.display()
                    ),
                )?;
                Some((read(a, "the trust anchors")?, issuer))
            }
            _ => bail!(
                "--identity-trust-anchors-file, --identity-issuer-certificate-file and \
                 --identity-issuer-key-file go together: give all three or none"
            ),
        };
        let (trust_anchors_pem, issuer) = match identity {
            Some(pair) => pair,
            None => {
                let anchor = ca::new_trust_anchor(trust_domain, days_of(anchor_days))
                    .context("generating the trust anchor")?;
                let issuer = ca::new_issuer(&anchor, trust_domain, days_of(issuer_days))
                    .context("generating the issuer")?;
                (anchor.cert_pem, issuer)
            }
        };
        check_issuer(&trust_anchors_pem, &issuer, trust_domain, SystemTime::now())?;

        let names = webhook_names(namespace, cluster_domain);
        let (webhook_ca_pem, webhook) = match (
            &files.webhook_ca_file,
            &files.webhook_certificate_file,
            &files.webhook_key_file,
        ) {
            (None, None, None) => generate_webhook(&names, webhook_days)?,
            (Some(a), Some(c), Some(k)) => {
                let webhook = CertAndKey {
                    cert_pem: read(c, "the webhook certificate")?,
                    key_pem: read(k, "the webhook key")?,
                };
                check_key(
                    &webhook,
                    &format!("the webhook certificate {}", c.display()),
                    &format!("the webhook key {} (--webhook-key-file)", k.display()),
                )?;
                (read(a, "the webhook CA")?, webhook)
            }
            _ => bail!(
                "--webhook-ca-file, --webhook-certificate-file and --webhook-key-file go \
                 together: give all three or none"
            ),
        };
        check_webhook(
            &webhook_ca_pem,
            &webhook.cert_pem,
            &names[0],
            SystemTime::now(),
        )?;
        Ok(Self {
            trust_anchors_pem,
            issuer,
            webhook_ca_pem,
            webhook,
        })
    }
}

/// Checks that the issuer's key is its own, that it is a CA, and that what it signs chains to
/// the trust anchors at `now`: it signs a short-lived probe leaf and verifies it.
pub fn check_issuer(
    trust_anchors_pem: &str,
    issuer: &CertAndKey,
    trust_domain: &str,
    now: SystemTime,
) -> anyhow::Result<()> {
    let anchors = ca::certs_from_pem(trust_anchors_pem, "the trust anchors")?;
    let signer =
        Signer::from_pem(&issuer.cert_pem, &issuer.key_pem).context("reading the issuer")?;
    let name = format!("probe.mesh.serviceaccount.identity.mesh.{trust_domain}");
    let (probe, _key) = signer
        .issue_with_key(
            &LeafNames {
                dns: vec![name.clone()],
                uris: vec![],
            },
            Duration::from_secs(600),
        )
        .context("signing with the issuer")?;
    let chain = ca::certs_from_pem(&probe.chain_pem, "the probe chain")?;
    ca::verify_chain(&chain, &anchors, &name, now)
        .context("the issuer does not chain to the trust anchors")?;
    Ok(())
}

/// Checks that the key of `pair` is one mesh reads (PKCS#8, SEC1 or PKCS#1; see
/// [`ca::key_from_pem`]) and is the key of its certificate (the first of the PEM). `whose` and
/// `what` name the certificate and the key in errors: say the file and the flag.
pub fn check_key(pair: &CertAndKey, whose: &str, what: &str) -> anyhow::Result<()> {
    let key = ca::key_from_pem(&pair.key_pem, what)?;
    let cert = ca::certs_from_pem(&pair.cert_pem, whose)?;
    ca::check_key_pair(&cert[0], whose, &key, what)?;
    Ok(())
}

/// Checks that the webhook's certificate is valid for `name` under `ca_pem` at `now`.
pub fn check_webhook(
    ca_pem: &str,
    cert_pem: &str,
    name: &str,
    now: SystemTime,
) -> anyhow::Result<()> {
    let anchors = ca::certs_from_pem(ca_pem, "the webhook CA")?;
    let chain = ca::certs_from_pem(cert_pem, "the webhook certificate")?;
    ca::verify_chain(&chain, &anchors, name, now)
        .context("the webhook certificate does not match its CA bundle")?;
    Ok(())
}

/// A self-signed CA for the webhook and a serving certificate it signs.
fn generate_webhook(names: &[String], days: u64) -> anyhow::Result<(String, CertAndKey)> {
    let ca = webhook_ca(days_of(days)).context("generating the webhook CA")?;
    let signer = Signer::from_pem(&ca.cert_pem, &ca.key_pem)?;
    let (issued, key_pem) = signer
        .issue_with_key(
            &LeafNames {
                dns: names.to_vec(),
                uris: vec![],
            },
            days_of(days),
        )
        .context("generating the webhook certificate")?;
    Ok((
        ca.cert_pem,
        CertAndKey {
            cert_pem: issued.chain_pem,
            key_pem,
        },
    ))
}

fn webhook_ca(lifetime: Duration) -> Result<CertAndKey, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "mesh-injector-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(300);
    params.not_after = now + lifetime;
    let cert = params.self_signed(&key)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
