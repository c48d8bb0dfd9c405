#!/usr/bin/env bash
# Builds the pre-rebuild mesh proxy that `mesh-bench` measures next to the current one (the
# "(before)" scenarios): the source of one pinned commit, exported with `git archive` into
# target/bench-baseline/src and built there with its own target folder. Idempotent: when
# target/bench-baseline/mesh-proxy exists and target/bench-baseline/COMMIT names the pinned
# commit, it only checks. Called by scripts/setup-bench.sh.
#
#   scripts/bench-baseline.sh     # then: mesh-bench finds target/bench-baseline/mesh-proxy
#
# Without git, or without the commit in this clone (a shallow clone, a source tarball), it says
# so and exits 0: mesh-bench then reports the "(before)" scenarios as not measured.
set -euo pipefail

# The last commit before the proxy's internals were rebuilt (issue 13): the "before" of every
# before/after comparison in BENCHMARKS.md. Bump it only to compare against another proxy.
BASELINE_COMMIT=b92aad9ceb8c4f7658032ed11c292d98bbafd771

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="$root/target/bench-baseline"
binary="$base/mesh-proxy"
stamp="$base/COMMIT"

say() { echo "bench-baseline: $*" >&2; }

if [ -x "$binary" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$BASELINE_COMMIT" ]; then
    say "pre-rebuild proxy (${BASELINE_COMMIT:0:7}) present at $binary"
    exit 0
fi
if ! command -v git >/dev/null 2>&1 ||
    ! git -C "$root" cat-file -e "$BASELINE_COMMIT^{commit}" 2>/dev/null; then
    say "commit ${BASELINE_COMMIT:0:7} is not in $root (no git, or a shallow clone):" \
        "the benchmark will run without the pre-rebuild proxy"
    exit 0
fi

say "building the pre-rebuild proxy (${BASELINE_COMMIT:0:7}) into $base (a few minutes, once)"
rm -rf "$base/src" "$binary" "$stamp"
mkdir -p "$base/src"
git -C "$root" archive "$BASELINE_COMMIT" | tar -x -C "$base/src"
(
    cd "$base/src"
    cargo build --release --locked --quiet -p mesh-proxy --bin mesh-proxy \
        --target-dir "$base/target"
)
cp "$base/target/release/mesh-proxy" "$binary"
echo "$BASELINE_COMMIT" >"$stamp"
say "pre-rebuild proxy (${BASELINE_COMMIT:0:7}) built at $binary"
