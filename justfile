# mesh: common tasks. `just --list` shows them.

# Run every test (unit, integration, end-to-end on network-namespace pods; needs root).
test *args:
    ./scripts/test {{args}}

# Only the end-to-end tests on network-namespace pods (needs root).
e2e *args:
    cargo build -p mesh-proxy -p mesh-controller -p mesh-demo-app -p mesh-cli --bins
    cargo test -p mesh-tests {{args}}

# The cluster tier: the mesh on a real Kubernetes (KUBECONFIG, or ../shared/k8s brought up as root).
kube-e2e:
    ./scripts/test-kube

# Benchmarks: the mesh (and the pre-rebuild proxy, b92aad9, built once by the setup) against direct
# calls, haproxy and twemproxy, written to BENCHMARKS.md (needs root). A full run takes about 20
# minutes on 2 cores (the report says how long it took), `just bench --quick` about 5. A look at the
# connection counts and redis alone, to stdout (about 2 minutes): `./scripts/setup-bench.sh &&
# cargo run --release -p mesh-bench -- --quick --only proxy,redis --series connections`.
bench *args:
    ./scripts/setup-bench.sh
    cargo run --release -p mesh-bench -- --out BENCHMARKS.md {{args}}

# Fuzzing with AFL++ (cargo-afl, installed when missing): every target 10 minutes, one at a time,
# written to RELIABILITY.md (about 80 minutes); `just fuzz --time 2m codec` one target, `just fuzz
# --ci` each ~15 s on its seeds, as scripts/test does. Crashing inputs are kept in fuzz/crashes/.
fuzz *args:
    ./scripts/fuzz {{args}}

# Formatting and lints, as CI would want them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The demo: a whole meshed application on this machine (`just demo down` stops a detached one).
demo *args:
    cargo run --release -p mesh-cli -- demo {{args}}

# The images from this machine's release binaries, no registry or engine needed (target/images/*.tar;
# `--import` loads them into containerd).
images *args:
    ./scripts/build-images {{args}}

# The same images built by a container engine from images/*.Containerfile (static musl binaries).
images-engine engine="podman" registry="ghcr.io/mesh":
    {{engine}} build -f images/proxy.Containerfile -t {{registry}}/proxy:v$(cargo pkgid -p mesh-cli | sed 's/.*[#@]//') .
    {{engine}} build -f images/controller.Containerfile -t {{registry}}/controller:v$(cargo pkgid -p mesh-cli | sed 's/.*[#@]//') .

# The reliability suite of issue 17 (attacks, chaos under load, resources; root, pods) against
# the release build, written to RELIABILITY.md; `just reliability chaos` runs one test file.
reliability *tests:
    ./scripts/reliability {{tests}}
