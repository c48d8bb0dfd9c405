//! The injector's serving key written by openssl, in every form it writes (SEC1 is what
//! cert-manager stores for ECDSA keys): the injector starts and serves TLS with it, and a key it
//! cannot read is named with its flag.

#[path = "../../api/tests/openssl/mod.rs"]
mod openssl;
mod support;

use std::collections::BTreeMap;

use mesh_api::inject::ProxyConfig;
use mesh_controller::injector::{self, InjectorConfig, Namespaces, SidecarPolicy};
use openssl::Workdir;

const NAME: &str = "mesh-injector.mesh.svc";

/// A CA (the webhook's caBundle) and a serving certificate it signs for `key`, by openssl.
fn serving_cert(dir: &Workdir, key: &str) {
    dir.sh(&format!(
        "test -f webhook-ca.crt || {{
           openssl ecparam -name prime256v1 -genkey -noout -out webhook-ca.key
           openssl req -x509 -new -config mesh-ca.cnf -extensions anchor -key webhook-ca.key \
             -subj /CN=mesh-injector-ca -days 1 -out webhook-ca.crt
           printf 'subjectAltName = DNS:{NAME}\\nextendedKeyUsage = serverAuth\\n' > webhook.ext
         }}
         openssl req -new -config mesh-ca.cnf -key {key} -subj /CN={NAME} -out {key}.csr
         openssl x509 -req -in {key}.csr -CA webhook-ca.crt -CAkey webhook-ca.key \
           -CAcreateserial -days 1 -extfile webhook.ext -out {key}.crt"
    ));
}

fn config(dir: &Workdir, key: &str) -> InjectorConfig {
    InjectorConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls_cert: dir.path(&format!("{key}.crt")),
        tls_key: dir.path(key),
        proxy: ProxyConfig::new("ghcr.io/mesh/proxy", "v0.1.0", &dir.read("webhook-ca.crt")),
        sidecar: SidecarPolicy::Fixed(true),
    }
}

/// `GET /ready` over TLS, verifying the injector as the API server would.
async fn ready(running: &injector::Running, ca_pem: &str) -> u16 {
    support::tls_call(running.addr, ca_pem, NAME, "GET", "/ready", String::new())
        .await
        .0
}

#[tokio::test]
async fn serves_with_a_key_in_any_form_openssl_writes() {
    let dir = Workdir::new("injector-keys");
    dir.readme_anchor_and_issuer();
    for key in dir.accepted_keys() {
        serving_cert(&dir, key);
        let running = injector::start(config(&dir, key), Namespaces::Fixed(BTreeMap::new()))
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(
            ready(&running, &dir.read("webhook-ca.crt")).await,
            200,
            "{key}"
        );
    }
}

#[tokio::test]
async fn an_unreadable_serving_key_is_named_with_its_flag() {
    let dir = Workdir::new("injector-refused");
    dir.readme_anchor_and_issuer();
    dir.sh(
        "openssl ecparam -name prime256v1 -genkey -noout -out serving.key
         openssl ec -in serving.key -aes256 -passout pass:secret -out encrypted.key",
    );
    serving_cert(&dir, "serving.key");
    std::fs::copy(dir.path("serving.key.crt"), dir.path("encrypted.key.crt")).expect("copy");
    let e = match injector::start(
        config(&dir, "encrypted.key"),
        Namespaces::Fixed(BTreeMap::new()),
    )
    .await
    {
        Ok(_) => panic!("started with an encrypted key"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        e,
        format!(
            "reading {}: the serving key (--tls-key): encrypted keys are not supported: \
             decrypt it with `openssl pkey -in KEY -out PLAIN` (it asks for the passphrase)",
            dir.path("encrypted.key").display()
        )
    );
}
