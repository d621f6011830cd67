#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for the demo and the regression tests. The server is the one in
# PGBIN, else that of version PG (scripts/pg-bindir.sh; default 15).
#   cluster.sh start DIR PORT [extra postgresql.conf lines...]
#   cluster.sh stop DIR
#   cluster.sh prepare DIR   (only create DIR for postgres, e.g. for cargo pgrx test --pgdata)
# PostgreSQL refuses to run as root, so every server binary runs as the postgres user.
# The server listens only on a Unix socket in DIR: connect with psql -h DIR -p PORT -U postgres.
set -euo pipefail

PGBIN=${PGBIN:-$("$(dirname "$0")/pg-bindir.sh" "${PG:-15}")}
# From / so a cwd the postgres user cannot read (e.g. /root/...) does not matter.
as_pg() { (cd / && sudo -u postgres -- "$@"); }

usage() { echo "usage: $0 start DIR PORT [conf lines...] | stop DIR | prepare DIR" >&2; exit 2; }

# DIR owned by postgres, and reachable by it: a clone under /root is not, so grant traverse
# (x only) on the parent directories.
prepare() {
    mkdir -p "$dir"
    chown postgres: "$dir"
    if ! as_pg test -w "$dir"; then
        local p
        p=$(dirname "$dir")
        while [[ $p != / ]]; do chmod o+x "$p"; p=$(dirname "$p"); done
    fi
}

cmd=${1:-}; [[ $# -ge 2 ]] || usage
dir=$(realpath -m "$2")

case $cmd in
start)
    [[ $# -ge 3 ]] || usage
    port=$3; shift 3
    prepare
    if as_pg "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        echo "cluster: already running in $dir"
        exit 0
    fi
    if [[ ! -f $dir/data/PG_VERSION ]]; then
        as_pg "$PGBIN/initdb" -A trust -U postgres -D "$dir/data" >"$dir/initdb.log" \
            || { cat "$dir/initdb.log" >&2; exit 1; }
        echo "include 'pg_tviews_bgw_test.conf'" | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
    fi
    # Rewritten on every start (included last by postgresql.conf), so a reused cluster picks up
    # the port and extra lines given now.
    {
        echo "# --- pg_tviews_bgw test cluster ---"
        echo "port = $port"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$dir'"
        echo "shared_preload_libraries = 'pg_tviews_bgw'"
        echo "max_worker_processes = 32"
        echo "pg_tviews_bgw.max_workers = 16"
        echo "pg_tviews_bgw.naptime = 200"
        echo "log_min_messages = log"
        for line in "$@"; do echo "$line"; done
    } | as_pg tee "$dir/data/pg_tviews_bgw_test.conf" >/dev/null
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start >/dev/null \
        || { echo "cluster: start failed; tail of $dir/log:" >&2; tail -n 30 "$dir/log" >&2; exit 1; }
    ;;
stop)
    # Not running (or never created) is fine: stop is used in traps and before wiping.
    if [[ -f $dir/data/PG_VERSION ]]; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
prepare) prepare ;;
*) usage ;;
esac
