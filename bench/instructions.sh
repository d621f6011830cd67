#!/usr/bin/env bash
# Instructions per single-row UPDATE, counted by valgrind (callgrind) in a single-user backend:
# a deterministic figure beside make bench's CPU times, which swing by tens of percent on a
# shared machine. Not part of make bench (about a minute; valgrind is installed if missing).
#
# One cluster with bench/sql/schema.sql's workload (the same seed and sizes as make bench),
# stopped; then, for each variant, `postgres --single` runs a prepared single-row UPDATE of
# random posts N1 and N2 times under callgrind, each write its own transaction, and
# (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one write without the backend's start and
# first executions. Each run starts from a copy of the freshly loaded cluster, then a VACUUM
# (outside the count), so every variant reads tables in the same state.
#   base    the UPDATE of a copy without triggers
#   floor   the copy with the hand-written PL/pgSQL statement trigger that refreshes its read
#           model synchronously (the bench's syncpl variant)
#   sync    public.tb_post with pg_tviews_bgw.mode = sync (both TVIEWs refreshed in-statement),
#           written by their owner with the default search_path: the refresh leaves the path
#           unpinned (it already resolves as the pinned one)
#   syncrole the same written by another role (bench_writer): the refresh pins the path
#   noop    the copy with the no-op PL/pgSQL statement trigger (the bench's capture floor)
#   async   public.tb_post in async mode: the capture trigger and the publish at COMMIT (the
#           writer's own cost; no worker runs, so nothing is refreshed), journal included
#   none    the same with pg_tviews_bgw.durability = none (no journal row)
# Single-user mode runs no background worker; the sync variant does not need one.
# Usage: bash bench/instructions.sh   (N1, N2, USERS, POSTS, DIR, PORT: environment)
set -euo pipefail
cd "$(dirname "$0")/.."
PGBIN=${PGBIN:-$(scripts/pg-bindir.sh "${PG:-15}")}
DIR=${DIR:-$PWD/target/bench-instructions}
PORT=${PORT:-5602}
N1=${N1:-200}
N2=${N2:-1200}
USERS=${USERS:-10000}
POSTS=${POSTS:-100000}

if ! command -v valgrind >/dev/null; then
    echo "instructions: installing valgrind"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
fi
as_pg() { (cd / && sudo -u postgres -- "$@"); }

scripts/cluster.sh stop "$DIR" >/dev/null 2>&1 || true
rm -rf "$DIR"
env -u RUST_BACKTRACE scripts/cluster.sh start "$DIR" "$PORT" "fsync = off" "autovacuum = off" \
    "shared_buffers = '512MB'" >/dev/null
PSQL=("$PGBIN/psql" -h "$DIR" -p "$PORT" -U postgres -X -v ON_ERROR_STOP=1)
as_pg "${PSQL[@]}" -qc "CREATE DATABASE bench" postgres
as_pg "${PSQL[@]}" -q -v nusers="$USERS" -v nposts="$POSTS" -v seed=0.42 \
    -f "$PWD/bench/sql/schema.sql" bench >/dev/null
as_pg "${PSQL[@]}" -qc "SELECT pg_tviews_wait('60s')" bench >/dev/null
as_pg "${PSQL[@]}" -qc "CREATE ROLE bench_writer; GRANT SELECT, UPDATE ON public.tb_post TO bench_writer" bench >/dev/null
scripts/cluster.sh stop "$DIR" >/dev/null
# Every run starts from this copy: a table's state (dead versions, HOT chains, free space)
# moves its cost by several percent, so no variant may inherit another's writes.
cp -a "$DIR/data" "$DIR/pristine"

work=$(mktemp -d)
chmod 777 "$work"
# ir TABLE N [sync|syncrole|none]: total instructions of one single-user backend running N
# UPDATEs (syncrole: sync mode as bench_writer; none: async with pg_tviews_bgw.durability = none).
ir() {
    local sql=$work/run.sql out=$work/cg.out
    {
        # -j ends a statement at ";" and an empty line: each write is its own transaction
        # (without the empty lines the whole file would be one multi-statement query, one
        # transaction, and no write would pay its commit).
        [[ ${3:-} == syncrole ]] && printf 'SET ROLE bench_writer;\n\n'
        [[ ${3:-} == sync* ]] && printf 'SET pg_tviews_bgw.mode = sync;\n\n'
        printf 'PREPARE u(int) AS UPDATE %s SET votes = votes + 1 WHERE pk_post = $1;\n\n' "$1"
        awk -v n="$2" -v posts="$POSTS" 'BEGIN { srand(7); for (i = 0; i < n; i++) printf "EXECUTE u(%d);\n\n", 1 + int(rand() * posts) }'
    } >"$sql"
    chmod a+r "$sql"
    local single=("$PGBIN/postgres" --single -D "$DIR/data" -c shared_preload_libraries=pg_tviews_bgw -j bench)
    [[ ${3:-} == none ]] && single+=(-c pg_tviews_bgw.durability=none)
    rm -rf "$DIR/data"
    cp -a "$DIR/pristine" "$DIR/data"
    echo "VACUUM;" | as_pg env -u RUST_BACKTRACE "${single[@]}" >/dev/null 2>&1
    as_pg env -u RUST_BACKTRACE valgrind --tool=callgrind --callgrind-out-file="$out" \
        "${single[@]}" <"$sql" >"$work/run.log" 2>&1
    if grep -q ERROR "$work/run.log"; then
        grep ERROR "$work/run.log" | head -3 >&2
        exit 1
    fi
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
    rm -f "$out"
}
per_write() { echo $(( ($(ir "$1" "$N2" "${2:-}") - $(ir "$1" "$N1" "${2:-}")) / (N2 - N1) )); }

base=$(per_write base.tb_post)
floor=$(per_write syncpl.tb_post)
sync=$(per_write public.tb_post sync)
syncrole=$(per_write public.tb_post syncrole)
noop=$(per_write cap.tb_post)
async=$(per_write public.tb_post)
none=$(per_write public.tb_post none)
rm -rf "$work" "$DIR/pristine"
printf 'instructions per single-row UPDATE (callgrind, %s - %s writes)\n' "$N2" "$N1"
printf '  base      %9d\n  floor     %9d\n  sync      %9d\n  syncrole  %9d\n  noop      %9d\n  async     %9d\n  none      %9d\n' \
    "$base" "$floor" "$sync" "$syncrole" "$noop" "$async" "$none"
awk -v s="$sync" -v r="$syncrole" -v f="$floor" \
    'BEGIN { printf "  sync / floor = %.3f (written by another role: %.3f)\n", s / f, r / f }'
awk -v b="$base" -v n="$noop" -v a="$async" \
    'BEGIN { printf "  base / noop = %.3f, base / async = %.3f", b / n, b / a }'
awk -v b="$base" -v a="$none" 'BEGIN { printf ", base / async with durability = none = %.3f\n", b / a }'
