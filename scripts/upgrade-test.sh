#!/usr/bin/env bash
# pg_upgrade test: a cluster with a TVIEW (examples/demo.sql) is upgraded through the given
# PostgreSQL versions in turn (default 16 18: 16 -> 18; see README for why not 15 -> 16). Before each upgrade
# the worker is disabled (pg_tviews_bgw.enabled = off keeps capturing, stops applying) and rows
# are written, so the cluster shuts down with keys queued but not applied. After the upgrade the
# new server must apply them and converge (tv_post EXCEPT ALL v_post, both ways, empty), and later
# writes must converge too. The extension must be installed in every version given (make
# upgrade-test does that). Usage: scripts/upgrade-test.sh [VERSION ...]
set -euo pipefail
cd "$(dirname "$0")/.."

versions=("$@")
((${#versions[@]})) || versions=(16 18)
((${#versions[@]} >= 2)) || { echo "upgrade-test: give at least two versions" >&2; exit 2; }
DIR=$(pwd)/target/upgrade-test
PORT=5494
DEADLINE_S=120   # generous: 2 shared cores, debug build

as_pg() { (cd "$DIR" && sudo -u postgres -- "$@"); }
bindir() { scripts/pg-bindir.sh "$1"; }
current=   # version of the running cluster, for the trap
stop_current() { [[ -z $current ]] || PGBIN=$(bindir "$current") scripts/cluster.sh stop "$DIR/pg$current"; }
trap stop_current EXIT

# The same initdb options for every version: pg_upgrade wants equal encodings, locales and
# checksum settings. Checksums on everywhere, because PostgreSQL 18's initdb enables them by
# default while 15 and 16 do not (and pg_upgrade refuses a mismatch).
init() { # VERSION
    local v=$1 d=$DIR/pg$1
    mkdir -p "$d"
    chown postgres: "$d"
    as_pg "$(bindir "$v")/initdb" -A trust -U postgres -E UTF8 --locale=C --data-checksums \
        --no-sync -D "$d/data" >"$d/initdb.log" || { cat "$d/initdb.log" >&2; exit 1; }
    # scripts/cluster.sh writes this file when it starts the server (preload, port, socket);
    # pg_upgrade starts the new server before it exists, without the library preloaded.
    echo "include_if_exists 'pg_tviews_bgw_test.conf'" | as_pg tee -a "$d/data/postgresql.conf" >/dev/null
}
start() { # VERSION
    PGBIN=$(bindir "$1") scripts/cluster.sh start "$DIR/pg$1" "$PORT"
    current=$1
}
q() { "$(bindir "$current")/psql" -X -v ON_ERROR_STOP=1 -h "$DIR/pg$current" -p "$PORT" -U postgres -d demo -Atq -c "$1"; }
differences() {
    q "SELECT (SELECT count(*) FROM (TABLE tv_post EXCEPT ALL TABLE v_post) a)
            + (SELECT count(*) FROM (TABLE v_post EXCEPT ALL TABLE tv_post) b)"
}
converge() { # WHAT
    local start=$SECONDS
    until [[ $(differences) == 0 ]]; do
        if ((SECONDS - start > DEADLINE_S)); then
            echo "upgrade-test: FAILED: PostgreSQL $current: $1: $(differences) rows differ after ${DEADLINE_S}s (log: $DIR/pg$current/log)" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "  PostgreSQL $current: $1: tv_post equals v_post ($(q "SELECT count(*) FROM tv_post") rows)"
}
writes() { # TAG
    q "UPDATE tb_post SET views = views + 1, title = title || ' $1' WHERE pk_post % 7 = 0" >/dev/null
    q "UPDATE tb_author SET name = name || ' $1' WHERE pk_author % 10 = 3" >/dev/null
    q "DELETE FROM tb_post WHERE pk_post IN (SELECT pk_post FROM tb_post ORDER BY pk_post DESC LIMIT 5)" >/dev/null
    q "INSERT INTO tb_post (fk_author, title) SELECT 1 + i % 100, 'new $1 ' || i FROM generate_series(1, 50) i" >/dev/null
}

for v in "${versions[@]}"; do
    PGBIN=$(bindir "$v") scripts/cluster.sh stop "$DIR/pg$v"
done
rm -rf "$DIR"
mkdir -p "$DIR"
chown postgres: "$DIR"
scripts/cluster.sh prepare "$DIR"   # traverse rights on the parents for postgres

first=${versions[0]}
echo "== PostgreSQL $first: cluster with a TVIEW"
init "$first"
start "$first"
"$(bindir "$first")/psql" -X -q -h "$DIR/pg$first" -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE demo"
"$(bindir "$first")/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR/pg$first" -p "$PORT" -U postgres -d demo \
    -f examples/demo.sql >/dev/null
converge "initial"

for next in "${versions[@]:1}"; do
    old=$current
    echo "== PostgreSQL $old -> $next"
    # Stop applying, then write: these keys are queued (ring and journal) when the server stops.
    q "ALTER SYSTEM SET pg_tviews_bgw.enabled = off" >/dev/null
    q "SELECT pg_reload_conf()" >/dev/null
    # Wait until the worker says so (as e2e's disable_draining): committed keys then stay queued.
    start_wait=$SECONDS
    until [[ $(q "SELECT state FROM pg_tviews_worker_status WHERE database = 'demo'") == disabled ]]; do
        ((SECONDS - start_wait < 30)) || { echo "upgrade-test: FAILED: worker not disabled after 30s" >&2; exit 1; }
        sleep 0.2
    done
    writes "before-$next"
    pending=$(q "SELECT coalesce(sum(pending), 0) FROM pg_tviews_queue_status")
    diffs=$(differences)
    echo "  PostgreSQL $old: shutting down with $pending keys queued, $diffs rows not yet applied"
    if [[ $diffs == 0 ]]; then
        echo "upgrade-test: FAILED: the disabled worker applied the writes (nothing left queued)" >&2
        exit 1
    fi
    PGBIN=$(bindir "$old") scripts/cluster.sh stop "$DIR/pg$old"
    current=
    init "$next"
    echo "  pg_upgrade (log: $DIR/pg$next/pg_upgrade.log)"
    if ! as_pg "$(bindir "$next")/pg_upgrade" -b "$(bindir "$old")" -B "$(bindir "$next")" \
        -d "$DIR/pg$old/data" -D "$DIR/pg$next/data" -p 5495 -P 5496 -s "$DIR" -U postgres \
        >"$DIR/pg$next/pg_upgrade.log" 2>&1; then
        cat "$DIR/pg$next/pg_upgrade.log" >&2
        echo "upgrade-test: FAILED: pg_upgrade $old -> $next" >&2
        exit 1
    fi
    # The ALTER SYSTEM of the old cluster is not carried over (postgresql.auto.conf is not
    # copied); say it anyway, so the test does not depend on that.
    PGBIN=$(bindir "$next") scripts/cluster.sh start "$DIR/pg$next" "$PORT" "pg_tviews_bgw.enabled = on"
    current=$next
    q "SELECT extversion FROM pg_extension WHERE extname = 'pg_tviews_bgw'" >/dev/null
    converge "keys queued at shutdown applied after pg_upgrade"
    writes "after-$next"
    converge "writes after pg_upgrade"
done
echo "upgrade-test: OK (${versions[*]})"
