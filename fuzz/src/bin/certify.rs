//! The identity controller's certify request (`POST /v1/identity/certify`): the JSON body
//! (`CertifyRequest`), the CSR's PEM and DER as `identity::csr` parses and checks them, the
//! TokenReview status the API server answers, and the issuance of what passed.
//!
//! The input is read three ways: as the request body (its `csr_pem` then checked), as a PEM
//! text, and as the DER of a CSR (wrapped in PEM here, so the fuzzer mutates the ASN.1 itself);
//! and as a TokenReview, whose status `identity_of_review` turns into an identity. Asserts: a
//! CSR that passes every check for `web.demo`'s identity is signed by the CA, and the chain it
//! gets passes the proxy's own checks (`ca::check_issued`) for that name and key.
//!
//! `certify --write-seeds DIR` writes a real request, its CSR as PEM and as DER, and a review.
#![forbid(unsafe_code)]

use k8s_openapi::api::authentication::v1::TokenReview;
use mesh_api::identity::{ca, CertifyRequest, Identity};
use mesh_controller::{
    identity::{csr, token, Ca, IdentityConfig},
    source::Source,
};
use std::time::Duration;

const AUDIENCE: &str = "identity.mesh.cluster.local";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir] = &args[..] {
        if flag == "--write-seeds" {
            return write_seeds(dir.as_ref());
        }
    }
    let identity = Identity::new("web", "demo", "cluster.local").expect("a valid identity");
    let dir = std::env::temp_dir().join(format!("mesh-fuzz-certify-{}", std::process::id()));
    let (ca, anchors) = ca_in(&dir);
    // Immutable after loading: a panic cannot leave it half-changed.
    let ca = std::panic::AssertUnwindSafe(ca);
    afl::fuzz!(|data: &[u8]| {
        if let Ok(request) = serde_json::from_slice::<CertifyRequest>(data) {
            check(&request.csr_pem, &identity, &ca, &anchors);
        }
        if let Ok(text) = std::str::from_utf8(data) {
            check(text, &identity, &ca, &anchors);
        }
        check(
            &ca::pem_block("CERTIFICATE REQUEST", data),
            &identity,
            &ca,
            &anchors,
        );
        if let Ok(review) = serde_json::from_slice::<TokenReview>(data) {
            if let Some(status) = review.status {
                let _ = token::identity_of_review(&status, AUDIENCE, "cluster.local");
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Parses and checks `pem` for `identity` as the certify route does; signs what passes.
fn check(
    pem: &str,
    identity: &Identity,
    ca: &Ca,
    anchors: &[rustls::pki_types::CertificateDer<'static>],
) {
    let parsed = match csr::parse(pem) {
        Ok(parsed) => parsed,
        Err(error) => {
            if mesh_fuzz::verbose() {
                eprintln!("{error}");
            }
            return;
        }
    };
    let Ok(key) = parsed.check_for(identity) else {
        return;
    };
    let issued = ca
        .issue(&key, identity)
        .unwrap_or_else(|e| panic!("a CSR that passed the checks is not signed: {e}"));
    ca::check_issued(
        &issued.chain_pem,
        anchors,
        &identity.dns_name(),
        rcgen::PublicKeyData::der_bytes(&key),
    )
    .unwrap_or_else(|e| panic!("the issued chain fails the proxy's checks: {e}"));
}

/// A CA for `cluster.local` whose files are in `dir`, and its trust anchors.
fn ca_in(dir: &std::path::Path) -> (Ca, Vec<rustls::pki_types::CertificateDer<'static>>) {
    std::fs::create_dir_all(dir).expect("the temporary folder can be created");
    let day = Duration::from_secs(86_400);
    let anchor = ca::new_trust_anchor("cluster.local", 365 * day).expect("an anchor");
    let issuer = ca::new_issuer(&anchor, "cluster.local", 30 * day).expect("an issuer");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("the temporary file can be written");
        path
    };
    let config = IdentityConfig::new(
        write("issuer.crt", &issuer.cert_pem),
        write("issuer.key", &issuer.key_pem),
        write("anchors.crt", &anchor.cert_pem),
        Source::Dir(dir.to_path_buf()),
    );
    let ca = Ca::load(&config).expect("the CA loads");
    let anchors = ca::certs_from_pem(&anchor.cert_pem, "anchors").expect("its own PEM");
    (ca, anchors)
}

/// The seed corpus: what a proxy sends (its request, its CSR as PEM and DER) and a review.
fn write_seeds(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("the seed folder can be created");
    let identity = Identity::new("web", "demo", "cluster.local").expect("a valid identity");
    let key = ca::new_key().expect("a key");
    let pem = ca::csr(&identity, &key).expect("a CSR");
    let request = CertifyRequest {
        csr_pem: pem.clone(),
        token: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVtbzp3ZWIifQ.c2ln"
            .into(),
    };
    let der = pem::parse(&pem).expect("its own PEM").into_contents();
    let review = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": "x", "audiences": [AUDIENCE]},
        "status": {
            "authenticated": true,
            "audiences": [AUDIENCE],
            "user": {"username": "system:serviceaccount:demo:web", "uid": "6f1c"}
        }
    });
    let files: [(&str, Vec<u8>); 4] = [
        (
            "request.json",
            serde_json::to_vec(&request).expect("serializes"),
        ),
        ("csr.pem", pem.into_bytes()),
        ("csr.der", der),
        (
            "tokenreview.json",
            serde_json::to_vec_pretty(&review).expect("serializes"),
        ),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("the seed can be written");
    }
}
