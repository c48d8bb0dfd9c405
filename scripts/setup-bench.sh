#!/usr/bin/env bash
# Installs what `mesh-bench` needs: the load generator `oha` (from crates.io, into a project-local
# root) and `haproxy` (the peer proxy, from Debian). Idempotent: a second run only checks.
#
#   scripts/setup-bench.sh            # then: cargo run --release -p mesh-bench -- --out BENCHMARKS.md
#
# MESH_BENCH_TOOLS overrides where oha goes (default: <repo>/target/bench-tools, whose bin/ is
# where mesh-bench looks first).
set -euo pipefail

# The oha version the report's numbers were taken with; bump it deliberately.
OHA_VERSION=1.16.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${MESH_BENCH_TOOLS:-$root/target/bench-tools}"

say() { echo "setup-bench: $*" >&2; }

# --- haproxy (Debian) ---
if command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; then
    say "haproxy: $( (command -v haproxy || echo /usr/sbin/haproxy) | head -1) present"
else
    if [ "$(id -u)" -ne 0 ]; then
        say "haproxy is missing and installing it needs root: run as root, or \`apt-get install haproxy\`"
        exit 1
    fi
    say "installing haproxy with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends haproxy >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -y --no-install-recommends haproxy >/dev/null
    }
    # The package starts a system-wide haproxy service; the benchmark runs its own.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now haproxy >/dev/null 2>&1 || true
    fi
fi

# --- oha (crates.io) ---
oha="$tools/bin/oha"
have=""
if [ -x "$oha" ]; then
    have="$("$oha" --version 2>/dev/null | awk '{print $2}')"
fi
if [ "$have" = "$OHA_VERSION" ]; then
    say "oha $OHA_VERSION present at $oha"
else
    say "installing oha $OHA_VERSION into $tools (a few minutes, once)"
    cargo install oha --locked --version "$OHA_VERSION" --root "$tools" --quiet
    say "oha $("$oha" --version | awk '{print $2}') installed at $oha"
fi
