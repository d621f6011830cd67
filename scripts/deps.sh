#!/usr/bin/env bash
# Installs what building and testing pg_tviews_bgw needs on Debian 12 (root, Rust toolchain
# already present). Idempotent and silent when everything is there: every make target calls it.
set -euo pipefail

PGRX_VERSION=0.18.1
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
# bsdextrautils (column) and procps (free) are used by the benchmark harness (bench-smoke tier).
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo bsdextrautils procps)

# apt: only touch the network when a package is actually missing.
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# cargo-pgrx must match the pgrx crate version exactly.
if ! cargo pgrx --version 2>/dev/null | grep -qF "$PGRX_VERSION"; then
    echo "deps: installing cargo-pgrx $PGRX_VERSION"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# pgrx needs to know the system PostgreSQL 15 (we never let it download its own).
pgrx_config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! grep -qE '^[[:space:]]*pg15[[:space:]]*=' "$pgrx_config" 2>/dev/null; then
    echo "deps: cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG"
fi
