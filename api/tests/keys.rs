//! Keys written by openssl (and so by step and cert-manager, which write the same forms): every
//! form `ca::key_from_pem` reads signs a leaf that verifies against an anchor made by the
//! README's openssl recipe, every key it refuses is refused in words that name the key, and the
//! README's recipe itself makes an anchor and an issuer mesh accepts.

mod openssl;

use std::time::{Duration, SystemTime};

use mesh_api::identity::ca::{self, LeafNames, Signer};
use mesh_api::identity::Identity;
use openssl::{Workdir, REFUSED};
use rustls_pki_types::PrivateKeyDer;

const DAY: Duration = Duration::from_secs(86_400);

fn web() -> Identity {
    Identity::new("web", "demo", "cluster.local").expect("identity")
}

/// Signs a leaf for web with `signer` and verifies it against the anchors `anchors_pem`.
fn assert_signs_a_leaf_that_verifies(signer: &Signer, anchors_pem: &str, what: &str) {
    let (issued, _key) = signer
        .issue_with_key(&LeafNames::identity(&web()), DAY)
        .unwrap_or_else(|e| panic!("{what}: issuing: {e}"));
    let chain = ca::certs_from_pem(&issued.chain_pem, "chain").expect("chain");
    let anchors = ca::certs_from_pem(anchors_pem, "anchors").expect("anchors");
    ca::verify_chain(&chain, &anchors, &web().dns_name(), SystemTime::now())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[test]
fn the_readme_recipe_makes_an_anchor_and_an_issuer_mesh_accepts() {
    let dir = Workdir::new("readme-recipe");
    dir.readme_anchor_and_issuer();
    let key = dir.read("issuer.key");
    // The form the bug was found with: `openssl ecparam -genkey` writes SEC1.
    assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{key}");
    let anchor = ca::certs_from_pem(&dir.read("ca.crt"), "ca.crt").expect("ca.crt");
    assert!(ca::cert_info(&anchor[0]).expect("anchor").is_ca);
    let issuer = dir.read("issuer.crt");
    let info = ca::cert_info(&ca::certs_from_pem(&issuer, "issuer.crt").expect("issuer")[0])
        .expect("issuer");
    assert!(info.is_ca);
    assert_eq!(
        info.common_name.as_deref(),
        Some("identity.mesh.cluster.local")
    );
    let signer = Signer::from_pem(&issuer, &key).expect("the README's issuer");
    assert_signs_a_leaf_that_verifies(&signer, &dir.read("ca.crt"), "the README's issuer");
}

#[test]
fn every_form_openssl_writes_signs_a_leaf_that_verifies() {
    let dir = Workdir::new("accepted");
    dir.readme_anchor_and_issuer();
    let anchors = dir.read("ca.crt");
    for file in dir.accepted_keys() {
        let key_pem = dir.read(file);
        let cert_pem = dir.issuer_for(file);
        let signer =
            Signer::from_pem(&cert_pem, &key_pem).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_signs_a_leaf_that_verifies(&signer, &anchors, file);

        // What key_from_pem returns is PKCS#8, which rustls loads as a serving key too.
        let key = ca::key_from_pem(&key_pem, file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)), "{file}");
        let chain = ca::certs_from_pem(&cert_pem, file).expect("cert");
        ca::check_key_pair(&chain[0], "its certificate", &key, file)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .unwrap_or_else(|e| panic!("{file}: rustls: {e}"));
    }
}

#[test]
fn refused_keys_are_refused_in_words_that_name_the_key() {
    let dir = Workdir::new("refused");
    for (file, commands, message) in REFUSED {
        dir.sh(commands);
        let what = format!("the issuer key {file} (--issuer-key)");
        let e = ca::key_from_pem(&dir.read(file), &what)
            .err()
            .unwrap_or_else(|| panic!("{file} was accepted"))
            .to_string();
        assert!(e.starts_with(&format!("{what}: ")), "{file}: {e}");
        assert!(e.contains(message), "{file}: {e}");
    }
}

#[test]
fn a_key_of_another_certificate_is_refused_in_any_form() {
    let dir = Workdir::new("another");
    dir.readme_anchor_and_issuer();
    dir.sh("openssl ecparam -name prime256v1 -genkey -noout -out other.key");
    let e = Signer::from_pem(&dir.read("issuer.crt"), &dir.read("other.key"))
        .err()
        .expect("another key")
        .to_string();
    assert!(e.contains("does not belong"), "{e}");
    let cert = ca::certs_from_pem(&dir.read("issuer.crt"), "issuer.crt").expect("cert");
    let key = ca::key_from_pem(&dir.read("other.key"), "other.key").expect("key");
    let e = ca::check_key_pair(&cert[0], "issuer.crt", &key, "other.key")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "other.key: it does not belong to issuer.crt");
}

#[test]
fn what_is_not_a_key_says_what_to_give() {
    for (pem, message) in [
        ("", "it is empty"),
        ("hello", "it holds no private key: expected a PEM block"),
        (
            "-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n",
            "DSA keys are not supported",
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            "ssh-keygen -p -m PKCS8",
        ),
        (
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
            "the EC key does not parse",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "the PKCS#8 key does not parse",
        ),
    ] {
        let e = ca::key_from_pem(pem, "k").unwrap_err().to_string();
        assert!(e.starts_with("k: "), "{pem:?}: {e}");
        assert!(e.contains(message), "{pem:?}: {e}");
    }
}
