#!/usr/bin/env bash
# Installs what `mesh-bench` needs: what its pods need (iproute2, iptables for mesh-init: the
# project's scripts/setup); the load generator `oha` (from crates.io, into a project-local
# root); from Debian, `haproxy` (the peer proxy), `redis-server` and `redis-tools` (the server and
# `redis-benchmark` of the opaque-TCP part) and `nutcracker` (twemproxy, the peer of that part);
# and the pre-rebuild mesh proxy, built from a pinned commit by scripts/bench-baseline.sh.
# Idempotent: a second run only checks.
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

# debian_package PACKAGE PROGRAM [SERVICE]: installs PACKAGE with apt-get unless PROGRAM is on the
# PATH or in /usr/sbin, then stops and disables SERVICE, which the package may start: the benchmark
# runs its own, in its pods.
debian_package() {
    local package="$1" program="$2" service="${3:-}"
    if command -v "$program" >/dev/null 2>&1 || [ -x "/usr/sbin/$program" ]; then
        say "$package: $( (command -v "$program" || echo "/usr/sbin/$program") | head -1) present"
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        say "$package is missing and installing it needs root: run as root, or \`apt-get install $package\`"
        exit 1
    fi
    say "installing $package with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$package" >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -y --no-install-recommends "$package" >/dev/null
    }
    if [ -n "$service" ]; then
        if command -v systemctl >/dev/null 2>&1; then
            systemctl disable --now "$service" >/dev/null 2>&1 || true
        fi
        # Without systemd (a container), the SysV script may have started it.
        if [ -x "/etc/init.d/$service" ]; then
            "/etc/init.d/$service" stop >/dev/null 2>&1 || true
            update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    fi
}

# --- what the bench's pods need: ip netns and veth, mesh-init's iptables (scripts/setup) ---
"$root/scripts/setup" >&2

# --- Debian packages ---
debian_package haproxy haproxy haproxy
debian_package redis-server redis-server redis-server
debian_package redis-tools redis-benchmark
debian_package nutcracker nutcracker nutcracker

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

# --- the pre-rebuild proxy (the "(before)" scenarios) ---
"$root/scripts/bench-baseline.sh"
