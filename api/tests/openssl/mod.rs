//! Keys and certificates made by the real `openssl` binary in every form mesh reads, and the
//! README's recipes run as written: the tests of "keys written by openssl, step and
//! cert-manager". Shared by mesh-api's, mesh-cli's and mesh-controller's tests through
//! `#[path = "…/api/tests/openssl/mod.rs"] mod openssl;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Keys openssl writes in every form mesh reads: the file each line writes, the PEM label it
/// must have (so an openssl that writes another form fails the test instead of testing
/// something else) and the commands.
pub const ACCEPTED: &[(&str, &str, &str)] = &[
    (
        "p256-sec1.key",
        "EC PRIVATE KEY",
        "openssl ecparam -name prime256v1 -genkey -noout -out p256-sec1.key",
    ),
    (
        // Without -noout, ecparam writes an `EC PARAMETERS` block before the key.
        "p256-sec1-params.key",
        "EC PARAMETERS",
        "openssl ecparam -name prime256v1 -genkey -out p256-sec1-params.key",
    ),
    (
        "p256-pkcs8.key",
        "PRIVATE KEY",
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out p256-pkcs8.key",
    ),
    (
        "p256-pkcs8-to-sec1.key",
        "EC PRIVATE KEY",
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out k8.tmp && \
         openssl ec -in k8.tmp -out p256-pkcs8-to-sec1.key",
    ),
    (
        "p256-sec1-to-pkcs8.key",
        "PRIVATE KEY",
        "openssl ecparam -name prime256v1 -genkey -noout -out k1.tmp && \
         openssl pkcs8 -topk8 -nocrypt -in k1.tmp -out p256-sec1-to-pkcs8.key",
    ),
    (
        "p384-sec1.key",
        "EC PRIVATE KEY",
        "openssl ecparam -name secp384r1 -genkey -noout -out p384-sec1.key",
    ),
    (
        "p384-pkcs8.key",
        "PRIVATE KEY",
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out p384-pkcs8.key",
    ),
    (
        "rsa-pkcs8.key",
        "PRIVATE KEY",
        "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa-pkcs8.key",
    ),
    (
        "rsa-pkcs1.key",
        "RSA PRIVATE KEY",
        "openssl genrsa -out rsa.tmp 2048 && \
         openssl rsa -in rsa.tmp -traditional -out rsa-pkcs1.key",
    ),
    (
        "ed25519.key",
        "PRIVATE KEY",
        "openssl genpkey -algorithm ed25519 -out ed25519.key",
    ),
];

/// Keys openssl writes that mesh refuses: the file, the commands, and what the error must say.
pub const REFUSED: &[(&str, &str, &str)] = &[
    (
        "encrypted-pkcs8.key",
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
         -aes256 -pass pass:secret -out encrypted-pkcs8.key",
        "encrypted keys are not supported: decrypt it with `openssl pkey",
    ),
    (
        "encrypted-sec1.key",
        "openssl ecparam -name prime256v1 -genkey -noout -out e1.tmp && \
         openssl ec -in e1.tmp -aes256 -passout pass:secret -out encrypted-sec1.key",
        "encrypted keys are not supported",
    ),
    (
        "p521-sec1.key",
        "openssl ecparam -name secp521r1 -genkey -noout -out p521-sec1.key",
        "the curve P-521 (secp521r1) is not supported",
    ),
    (
        "p521-pkcs8.key",
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-521 -out p521-pkcs8.key",
        "the curve P-521 (secp521r1) is not supported",
    ),
    (
        "secp256k1.key",
        "openssl ecparam -name secp256k1 -genkey -noout -out secp256k1.key",
        "the curve secp256k1 is not supported",
    ),
    (
        "explicit.key",
        "openssl ecparam -name prime256v1 -genkey -noout -out x1.tmp && \
         openssl ec -in x1.tmp -param_enc explicit -out explicit.key",
        "explicit curve parameters are not supported",
    ),
    (
        "no-public.key",
        "openssl ecparam -name prime256v1 -genkey -noout -out n1.tmp && \
         openssl ec -in n1.tmp -no_public -out no-public.key",
        "does not carry its public key",
    ),
    (
        "rsa-1024.key",
        "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out rsa-1024.key",
        "the PKCS#8 RSA key does not load: it is too small",
    ),
    (
        "rsa-pss.key",
        "openssl genpkey -algorithm RSA-PSS -pkeyopt rsa_keygen_bits:2048 -out rsa-pss.key",
        "RSA-PSS keys are not supported",
    ),
    (
        "ed448.key",
        "openssl genpkey -algorithm ed448 -out ed448.key",
        "Ed448 keys are not supported",
    ),
    (
        "x25519.key",
        "openssl genpkey -algorithm x25519 -out x25519.key",
        "X25519 keys are not supported",
    ),
    (
        "cert-only.key",
        "openssl ecparam -name prime256v1 -genkey -noout -out c1.tmp && \
         openssl req -x509 -new -key c1.tmp -subj /CN=x -days 1 -out cert-only.key",
        "it holds no private key",
    ),
    (
        "two.key",
        "openssl ecparam -name prime256v1 -genkey -noout -out t1.tmp && \
         openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out t2.tmp && \
         cat t1.tmp t2.tmp > two.key",
        "it holds 2 private keys",
    ),
];

/// A fresh folder under Cargo's temporary folder for tests, removed on drop.
pub struct Workdir {
    path: PathBuf,
}

impl Workdir {
    /// A fresh folder named after `name`; fails the test if openssl cannot be run.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let dir = Self { path };
        dir.require_openssl();
        dir
    }

    /// `file` in this folder.
    pub fn path(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    /// `file` in this folder as a command line argument.
    pub fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// The text of `file`.
    pub fn read(&self, file: &str) -> String {
        let path = self.path(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Writes `file`.
    pub fn write(&self, file: &str, text: &str) {
        let path = self.path(file);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Runs `script` with `sh -eu` in this folder; fails the test with its output if it fails.
    pub fn sh(&self, script: &str) {
        let out = Command::new("sh")
            .args(["-euc", script])
            .current_dir(&self.path)
            .output()
            .unwrap_or_else(|e| panic!("running sh: {e}"));
        assert!(
            out.status.success(),
            "{script}\nfailed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes every key of [`ACCEPTED`] and checks each is in the form it is listed with.
    pub fn accepted_keys(&self) -> Vec<&'static str> {
        ACCEPTED
            .iter()
            .map(|(file, label, commands)| {
                self.sh(commands);
                let text = self.read(file);
                assert!(
                    text.starts_with(&format!("-----BEGIN {label}-----")),
                    "{commands} wrote another form than {label}:\n{text}"
                );
                *file
            })
            .collect()
    }

    /// Runs the README's openssl recipe for a trust anchor and an issuer here (`ca.crt`,
    /// `ca.key`, `issuer.crt`, `issuer.key`, `mesh-ca.cnf`).
    pub fn readme_anchor_and_issuer(&self) {
        self.sh(&readme_block("### With openssl", 0));
    }

    /// A CA certificate for `key` (in this folder) signed by the README's anchor with the
    /// README's issuer extensions: `<key>.crt`.
    pub fn issuer_for(&self, key: &str) -> String {
        let crt = format!("{key}.crt");
        self.sh(&format!(
            "openssl req -new -config mesh-ca.cnf -key {key} \
               -subj /CN=identity.mesh.cluster.local -out {key}.csr
             openssl x509 -req -in {key}.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
               -days 30 -extfile mesh-ca.cnf -extensions issuer -out {crt}"
        ));
        self.read(&crt)
    }

    fn require_openssl(&self) {
        match Command::new("openssl").arg("version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "`openssl version` failed ({}): these tests make keys with the real openssl",
                out.status
            ),
            Err(e) => panic!(
                "openssl cannot be run ({e}): these tests make keys with the real openssl \
                 binary; install it (apt-get install openssl)"
            ),
        }
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The `n`-th ```` ```sh ```` block of the README section under the heading line `heading`: the
/// recipes the tests run as written, so the README cannot rot.
pub fn readme_block(heading: &str, n: usize) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let level = |line: &str| line.chars().take_while(|c| *c == '#').count();
    let mut blocks = Vec::new();
    let mut block: Option<String> = None;
    for line in readme.lines().skip_while(|l| *l != heading).skip(1) {
        match &mut block {
            Some(text) if line == "```" => blocks.push(std::mem::take(text)),
            Some(text) => {
                text.push_str(line);
                text.push('\n');
                continue;
            }
            None if line == "```sh" => {
                block = Some(String::new());
                continue;
            }
            // The section ends at the next heading of its level or above.
            None if line.starts_with('#') && level(line) <= level(heading) => break,
            None => continue,
        }
        block = None;
    }
    blocks
        .into_iter()
        .nth(n)
        .unwrap_or_else(|| panic!("README.md has no ```sh block #{n} under {heading:?}"))
}
