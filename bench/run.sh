#!/usr/bin/env bash
# pg_tviews_bgw benchmark driver: one fresh cluster, one fixed-seed workload, every comparison
# side by side in one run, then bench/report.py turns the raw numbers into a Markdown table and
# plots. `make bench` runs it with the defaults below; bench/smoke.sh runs it with tiny sizes.
#
# Every size is an environment variable (defaults = the full benchmark). Timings are reported,
# never asserted: the script fails only when the harness itself breaks (a query errors, pgbench
# aborts, a TVIEW does not converge before DEADLINE_S, converged contents differ from the view).
#
# Phases (see bench/README.md for what each figure means):
#   A  writer overhead   pgbench single-row UPDATEs, variants alternated round by round
#   B  freshness lag     bench/lag-probe: commit -> visible in tv_post, idle, under paced writers
#                        (a fixed rate the worker can absorb) and under saturating writers
#   C  bulk catch-up     one UPDATE of every post: TVIEW vs REFRESH MATERIALIZED VIEW vs upsert
#   D  drain throughput  a queued backlog drained at several batch sizes (+ paced lag at each)
#   A2 durability = none the writer variants again after a restart without the journal
#   E  overflow          more keys than the ring holds: the recovery path (journal replay)
#   F  memory            shared memory per queued key, worker RSS (sampled during C, D, E)
#   G  two workers       restart with workers_per_database = 2: drain and bulk catch-up again
#   S  scrub             writer rounds with the background scrub working (short interval, no
#                        cap) vs off, and the scrub's own speed in one pass without writers
#   W  writers pay once  server CPU per write with 1 vs W_TVIEWS TVIEWs over copies of the same
#                        table (worker paused: the writers' own cost)
#   R  read-your-writes  pg_tviews_write_token() + pg_tviews_wait(token) under saturating
#                        writers (skipped if the token API is missing), plain pg_tviews_wait()
#
# Phase A (and A2, S, W) also measure server CPU per committed write: user+sys time of every
# server process (the postmaster's reaped children included) from before a round to after it,
# refresh included (see cpu_ticks below).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# ---- parameters ------------------------------------------------------------------------------
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench-run}     # cluster + raw data (wiped at start)
BENCH_PORT=${BENCH_PORT:-5601}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}    # latest.md + PNGs
LABEL=${LABEL:-full}
SEED=${SEED:-0.42}                  # setseed() for the data; the lag probe uses its own seed
USERS=${USERS:-10000}
POSTS=${POSTS:-100000}
ROUNDS=${ROUNDS:-5}                 # writer-overhead rounds per variant (median reported)
ROUND_S=${ROUND_S:-6}               # seconds per pgbench round
CLIENTS=${CLIENTS:-4}               # pgbench clients in the writer-overhead phase
LAG_PROBES=${LAG_PROBES:-500}       # probes per lag measurement (idle: all of them)
LAG_PROBE_IDS=${LAG_PROBE_IDS:-1000}  # probes touch posts 1..this; load writers the others
LAG_LOAD_S=${LAG_LOAD_S:-15}        # duration of each loaded lag measurement
LAG_LOAD_CLIENTS=${LAG_LOAD_CLIENTS:-2}
LAG_LOAD_RATE=${LAG_LOAD_RATE:-2000}  # total tps (pgbench -R) of the paced load
POLL_SLEEP_US=${POLL_SLEEP_US:-200} # lag probe sleep between visibility polls
DRAIN_KEYS=${DRAIN_KEYS:-50000}     # posts updated (in one statement) for the drain phase
BATCH_SIZES=${BATCH_SIZES:-100 1000 10000}
BS_LAG_S=${BS_LAG_S:-6}             # loaded lag measurement per batch size
# Ring keys: must hold a whole round of writers with the worker paused (~2 keys per UPDATE),
# or that round overflows into a full refresh. 24 bytes a key, times MAX_WORKERS.
QUEUE_SIZE=${QUEUE_SIZE:-1048576}
MAX_WORKERS=${MAX_WORKERS:-4}
OVERFLOW=${OVERFLOW:-1}             # run phase E
NONE_ROUNDS=${NONE_ROUNDS:-3}      # phase A2 (durability = none) rounds; 0 skips it (3, not ROUNDS:
                                    # keeps make bench under 15 min with phases W and R)
BULK_ROUNDS=${BULK_ROUNDS:-3}       # phase C rounds (medians reported)
TWO_WORKERS=${TWO_WORKERS:-1}       # run phase G (workers_per_database = 2)
SCRUB_ROUNDS=${SCRUB_ROUNDS:-$ROUNDS} # phase S rounds (scrub on vs off); 0 skips it
SCRUB_INTERVAL=${SCRUB_INTERVAL:-1s} # scrub_interval while phase S measures it (no rate cap; 1s:
                                    # always behind, so it uses all the idle time it gets)
SCRUB_LAG_S=${SCRUB_LAG_S:-15}      # phase S: paced writers + lag probe, scrub off, then on
# The paused variant of phases A and A2 runs a fixed PAUSED_TX transactions per client instead
# of ROUND_S seconds: its keys stay in the ring until the round ends, and a round that overflows
# it measures the overflow path (a transaction that does not fit is only counted) instead of the
# writers' normal cost. Each write takes three ring slots (two keys and a commit marker); the
# default fills three quarters of the ring.
PAUSED_TX=${PAUSED_TX:-$((QUEUE_SIZE / (CLIENTS * 4)))}
# Phase W: 1 vs W_TVIEWS TVIEWs over identical copies of tb_post, worker paused, W_TX
# transactions per client per round (a fixed count, so a round's keys, W_TVIEWS per write plus a
# commit marker, always fit the ring: the default fills a sixth of it, since the worker then
# needs ~1 s per 16k keys of the W_TVIEWS joins to drain them between rounds).
W_ROUNDS=${W_ROUNDS:-$ROUNDS}       # 0 skips phase W
W_TVIEWS=${W_TVIEWS:-8}
W_TX=${W_TX:-$((QUEUE_SIZE / (CLIENTS * (W_TVIEWS + 1) * 6)))}
# Phase R: read-your-writes under RYW_LOAD_CLIENTS saturating writers for RYW_LOAD_S seconds
# each (token waits, then plain waits); a wait gives up after RYW_WAIT_TIMEOUT_S.
RYW_LOAD_S=${RYW_LOAD_S:-12}        # 0 skips phase R
RYW_LOAD_CLIENTS=${RYW_LOAD_CLIENTS:-4}
RYW_WAIT_TIMEOUT_S=${RYW_WAIT_TIMEOUT_S:-10}
SAMPLE_S=${SAMPLE_S:-0.05}          # queue sampling interval while draining
DEADLINE_S=${DEADLINE_S:-600}       # any single convergence wait longer than this = broken
SHARED_BUFFERS=${SHARED_BUFFERS:-512MB}
EXTRA_CONF=${EXTRA_CONF:-}          # more postgresql.conf lines, separated by ';'
KEEP_CLUSTER=${KEEP_CLUSTER:-0}     # 1: leave the cluster running afterwards (for EXPLAIN etc.)

PGBIN=${PGBIN:-$(scripts/pg-bindir.sh "${PG:-15}")}
export PGBIN   # for scripts/cluster.sh
RAW=$BENCH_DIR/raw
PROBE_TARGET=$ROOT/target/bench-lag-probe
PROBE=$PROBE_TARGET/release/pg_tviews_lag_probe
DB=bench
T_START=$(date +%s)

log() { printf '[%s %5ss] %s\n' "$(date +%T)" "$(($(date +%s) - T_START))" "$*"; }
die() { printf 'bench: FAILED: %s\n' "$*" >&2; exit 1; }

PSQL=("$PGBIN/psql" -X -v ON_ERROR_STOP=1 -h "$BENCH_DIR" -p "$BENCH_PORT" -U postgres)
q() { "${PSQL[@]}" -d "$DB" -Atq -c "$1"; }
# One "key<TAB>value" per line; report.py reads them back.
metric() { printf '%s\t%s\n' "$1" "$2" >>"$RAW/metrics.tsv"; }
# Runs SQL commands in one session with \timing on; prints the client-side milliseconds of the
# last command. psql's timer covers the round trip, including COMMIT (autocommit).
timed_ms() {
    local args=(-c '\timing on') c out
    for c in "$@"; do args+=(-c "$c"); done
    out=$("${PSQL[@]}" -d "$DB" -At "${args[@]}") || die "statement failed: $*"
    printf '%s\n' "$out" >>"$RAW/statements.log"
    awk '/^Time:/ { t = $2 } END { if (t == "") exit 1; print t }' <<<"$out"
}
# Rows reported by the INSERT command tag of the last timed_ms call.
last_insert_rows() { awk '/^INSERT 0 / { n = $3 } END { print n + 0 }' < <(tail -n 3 "$RAW/statements.log"); }

# Background processes this script started, stopped by pid on exit.
BG_PIDS=()
cleanup() {
    local rc=$? pid
    for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [[ $KEEP_CLUSTER == 1 ]]; then
        log "cluster left running: psql -h $BENCH_DIR -p $BENCH_PORT -U postgres $DB"
    else
        scripts/cluster.sh stop "$BENCH_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT

# ---- build the lag probe -----------------------------------------------------------------------
log "building bench/lag-probe (release)"
CARGO_TARGET_DIR=$PROBE_TARGET cargo build --quiet --release \
    --manifest-path bench/lag-probe/Cargo.toml || die "lag probe build failed"

# ---- cluster ---------------------------------------------------------------------------------
# Always a fresh data directory: results must not depend on what an earlier run left behind.
scripts/cluster.sh stop "$BENCH_DIR"
rm -rf "$BENCH_DIR/data" "$RAW"
mkdir -p "$RAW" "$RESULTS_DIR"
conf=(
    "fsync = off"                        # measure CPU work, not this machine's disk
    "shared_buffers = $SHARED_BUFFERS"   # every copy of the workload stays in memory
    "max_wal_size = 8GB"                 # no forced checkpoints in the middle of a round
    "checkpoint_timeout = 30min"
    "pg_tviews_bgw.queue_size = $QUEUE_SIZE"
    "pg_tviews_bgw.max_workers = $MAX_WORKERS"
)
IFS=';' read -r -a extra <<<"$EXTRA_CONF"
for line in "${extra[@]}"; do [[ -n ${line// /} ]] && conf+=("$line"); done
log "starting cluster in $BENCH_DIR (port $BENCH_PORT)"
scripts/cluster.sh start "$BENCH_DIR" "$BENCH_PORT" "${conf[@]}"
"${PSQL[@]}" -d postgres -qc "CREATE DATABASE $DB"
# Restarts the cluster with the base settings plus the given lines (postmaster settings such
# as durability and workers_per_database need a restart).
restart_with() {
    scripts/cluster.sh stop "$BENCH_DIR"
    scripts/cluster.sh start "$BENCH_DIR" "$BENCH_PORT" "${conf[@]}" "$@"
}

# ---- run metadata: hardware, commit, settings ----------------------------------------------
{
    printf 'label\t%s\n' "$LABEL"
    printf 'date\t%s\n' "$(date -u +'%Y-%m-%d %H:%M UTC')"
    printf 'commit\t%s%s\n' "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (working tree modified)' || true)"
    printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'memory\t%s\n' "$(free -m | awk '/^Mem:/ { printf "%d MB total, %d MB available", $2, $7 }')"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'postgres\t%s\n' "$("$PGBIN/postgres" --version)"
    so=$("$PGBIN/pg_config" --pkglibdir)/pg_tviews_bgw.so
    printf 'so_mtime\t%s\n' "$(date -u -r "$so" +'%Y-%m-%d %H:%M UTC')"
    # `cargo pgrx install` without --release installs an unoptimized debug build: say which one
    # this run measured, since it changes the extension's own CPU cost several times over.
    if cmp -s "$so" target/release/libpg_tviews_bgw.so 2>/dev/null; then build="release (target/release)"
    elif cmp -s "$so" target/debug/libpg_tviews_bgw.so 2>/dev/null; then build="debug (target/debug, unoptimized)"
    elif readelf -S "$so" 2>/dev/null | grep -q '\.debug_info'; then build="probably debug (has debug info)"
    else build="probably release (no debug info)"; fi
    printf 'build\t%s\n' "$build"
    printf 'loadavg_start\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'clk_tck\t%s\n' "$(getconf CLK_TCK)"
    for v in SEED USERS POSTS ROUNDS ROUND_S CLIENTS LAG_PROBES LAG_PROBE_IDS LAG_LOAD_S \
        LAG_LOAD_CLIENTS LAG_LOAD_RATE POLL_SLEEP_US DRAIN_KEYS BATCH_SIZES BS_LAG_S QUEUE_SIZE \
        MAX_WORKERS OVERFLOW NONE_ROUNDS BULK_ROUNDS TWO_WORKERS SCRUB_ROUNDS SCRUB_INTERVAL SCRUB_LAG_S \
        PAUSED_TX W_ROUNDS W_TVIEWS W_TX RYW_LOAD_S RYW_LOAD_CLIENTS RYW_WAIT_TIMEOUT_S SAMPLE_S DEADLINE_S; do
        printf 'param.%s\t%s\n' "$v" "${!v}"
    done
} >"$RAW/meta.tsv"

# ---- workload --------------------------------------------------------------------------------
log "building the workload: $USERS users, $POSTS posts, seed $SEED"
t0=$(date +%s.%N)
"${PSQL[@]}" -d "$DB" -q -v nusers="$USERS" -v nposts="$POSTS" -v seed="$SEED" \
    -f bench/sql/schema.sql >"$RAW/schema.log" 2>&1 || { cat "$RAW/schema.log"; die "schema.sql failed"; }
metric setup.seconds "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
q "SELECT pg_tviews_version()" | sed 's/^/version\t/' >>"$RAW/meta.tsv"

# The drainer starts within seconds of CREATE EXTENSION and begins with a full refresh: wait
# until it is attached, idle and has nothing pending before measuring anything.
wait_worker_idle() {
    local deadline=$(($(date +%s) + DEADLINE_S)) state
    while :; do
        state=$(q "SELECT CASE WHEN count(*) > 0 AND bool_and(state = 'idle') THEN 'idle' ELSE string_agg(state, ',') END
                          || ':' || bool_or(recovery_pending)::text || ':' || coalesce(sum(pending), 0)
                   FROM pg_tviews_worker_status WHERE database = current_database()")
        [[ $state == idle:false:0 ]] && [[ $(q "SELECT pg_tviews_wait('0s')") == t ]] && return 0
        (($(date +%s) < deadline)) || die "worker not idle after ${DEADLINE_S}s (state '$state')"
        sleep 0.2
    done
}
wait_worker_state() {
    local want=$1 deadline=$(($(date +%s) + 60)) state
    while :; do
        state=$(q "SELECT CASE WHEN count(*) > 0 AND bool_and(state = '$want') THEN '$want' ELSE string_agg(state, ',') END
                   FROM pg_tviews_worker_status WHERE database = current_database()")
        [[ $state == "$want" ]] && return 0
        (($(date +%s) < deadline)) || die "worker state '$state', expected '$want' after 60s"
        sleep 0.1
    done
}
# Everything committed so far applied (pg_tviews_wait), within the deadline.
wait_applied() {
    [[ $(q "SELECT pg_tviews_wait('${DEADLINE_S}s')") == t ]] \
        || die "pg_tviews_wait: TVIEWs did not converge within ${DEADLINE_S}s"
}
# Converged contents equal the views, both ways (a benchmark of a wrong result is worthless).
check_converged() {
    local diff
    diff=$(q "SELECT (SELECT count(*) FROM (TABLE tv_post EXCEPT ALL SELECT * FROM v_post
                                            UNION ALL
                                            SELECT * FROM v_post EXCEPT ALL TABLE tv_post) d)
                   + (SELECT count(*) FROM (TABLE tv_user EXCEPT ALL SELECT * FROM v_user
                                            UNION ALL
                                            SELECT * FROM v_user EXCEPT ALL TABLE tv_user) d)")
    [[ $diff == 0 ]] || die "after $1: $diff rows of tv_post/tv_user differ from v_post/v_user"
}
# Samples the queue into CSV (epoch, pending, oldest pending commit epoch, converged) until it
# has drained; further arguments are SQL commands run first in the same session (e.g. enabling
# the worker), so the first sample follows them within a millisecond.
sample_drain() {
    local out=$1 c
    shift
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    args+=(-c "\\copy (SELECT extract(epoch FROM at) AS at, pending, extract(epoch FROM oldest_pending_at) AS oldest_pending_at, converged FROM bench_sample_drain($SAMPLE_S, $DEADLINE_S)) TO '$out' WITH (FORMAT csv, HEADER)")
    "${PSQL[@]}" -d "$DB" -Atq "${args[@]}" >/dev/null || die "sampling the queue failed"
    [[ $(tail -n 1 "$out" | cut -d, -f4) == t ]] || die "queue not drained within ${DEADLINE_S}s ($out)"
}
worker_pid() { q "SELECT pid FROM pg_tviews_worker_status WHERE database = current_database() AND partition = 0"; }
worker_totals() { q "SELECT sum(batches) || ' ' || sum(rows) FROM pg_tviews_worker_status WHERE database = current_database()"; }
# Samples the worker's memory (kB) every 0.1 s into $1 until stop_rss; VmHWM is the peak.
start_rss() {
    local out=$1 pid
    pid=$(worker_pid)
    (
        echo "t,pid,vmrss_kb,rssanon_kb,rssshmem_kb,vmhwm_kb"
        while [[ -r /proc/$pid/status ]]; do
            awk -v t="$(date +%s.%N)" -v pid="$pid" '
                /^VmRSS:/ { rss = $2 } /^RssAnon:/ { anon = $2 } /^RssShmem:/ { shm = $2 }
                /^VmHWM:/ { hwm = $2 }
                END { printf "%s,%s,%s,%s,%s,%s\n", t, pid, rss, anon, shm, hwm }' \
                "/proc/$pid/status" 2>/dev/null || break
            sleep 0.1
        done
    ) >"$out" &
    RSS_PID=$!
    BG_PIDS+=("$RSS_PID")
}
stop_rss() { kill "$RSS_PID" 2>/dev/null || true; wait "$RSS_PID" 2>/dev/null || true; }
set_guc() {   # ALTER SYSTEM + reload: how an operator changes a sighup setting
    "${PSQL[@]}" -d "$DB" -q -c "ALTER SYSTEM SET $1 = '$2'" -c "SELECT pg_reload_conf()" >/dev/null
}
reset_guc() { "${PSQL[@]}" -d "$DB" -q -c "ALTER SYSTEM RESET $1" -c "SELECT pg_reload_conf()" >/dev/null; }
epoch() { date +%s.%N; }
# ---- server CPU ----------------------------------------------------------------------------
# Clock ticks (CLK_TCK per second) of user+sys time spent by the whole server so far: the
# postmaster's own utime+stime, its cutime+cstime (every child it has reaped: the backends of
# connections that have closed, pgbench's included), plus utime+stime of every live child
# (background worker, launcher, checkpointer, walwriter, autovacuum, ...). Read from /proc only,
# so taking a snapshot costs the server nothing.
CLK_TCK=$(getconf CLK_TCK)
postmaster_pid() { head -n 1 "$BENCH_DIR/data/postmaster.pid"; }
cpu_ticks() {
    local pm
    pm=$(postmaster_pid)
    # Fields after "(comm)": 1 state, 2 ppid, 12 utime, 13 stime, 14 cutime, 15 cstime.
    # (cat fails when a process exits while it reads /proc: that one simply does not count.)
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" '
        { pid = $1; s = $0; sub(/^.*\) /, "", s); split(s, f, " ") }
        pid == pm { t += f[12] + f[13] + f[14] + f[15]; seen = 1 }
        f[2] == pm { t += f[12] + f[13] }
        END { if (!seen) exit 1; print t }'
}
# Waits until no client backend is left (the connections of pgbench and of psql calls have
# closed and their processes were reaped, so their time is in the postmaster's cutime) and no
# child is a zombie: a snapshot taken meanwhile could miss or double-count an exiting backend.
cpu_quiesce() {
    local pm deadline=$(($(date +%s) + 30))
    pm=$(postmaster_pid)
    # One pass over /proc: 1 if a child of the postmaster is a zombie or a client backend (titled
    # "postgres: <user> <db> ..."; background processes are not titled after the user).
    until [[ $({ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" '
        { pid = $1; s = $0; sub(/^.*\) /, "", s); split(s, f, " ") }
        f[2] == pm {
            if (f[1] == "Z") { busy = 1; exit }
            cmd = ""; file = "/proc/" pid "/cmdline"
            if ((getline cmd < file) > 0 && index(cmd, "postgres: postgres ") == 1) { busy = 1; exit }
            close(file)
        }
        END { print busy + 0 }') == 0 ]]; do
        (($(date +%s) < deadline)) || { log "   WARNING: client backends still running 30s after the round; CPU snapshot taken anyway"; return 0; }
        sleep 0.02
    done
}
cpu_snapshot() { cpu_quiesce; cpu_ticks || die "cannot read the postmaster's /proc/<pid>/stat"; }
# Phases A and B leave every copy with many dead row versions; vacuum (outside any timing) so
# the compared statements of C, D and E read tables in the same state.
vacuum_all() { q "VACUUM (ANALYZE)" >/dev/null; }

wait_worker_idle
check_converged "setup"
"${PSQL[@]}" -d "$DB" -AtF $'\t' -c "
    SELECT name, setting, coalesce(unit, '') FROM pg_settings
    WHERE name LIKE 'pg_tviews_bgw.%' OR name IN ('fsync', 'synchronous_commit', 'shared_buffers',
          'max_wal_size', 'checkpoint_timeout', 'max_worker_processes', 'autovacuum', 'wal_level',
          'work_mem', 'jit', 'shared_preload_libraries')
    ORDER BY name" >"$RAW/settings.tsv"
log "settings:"; column -t -s $'\t' "$RAW/settings.tsv" | sed 's/^/    /'
# Features this version may not have: report them as such instead of faking a comparison.
has_setting() { [[ $(q "SELECT count(*) FROM pg_settings WHERE name = '$1'") == 1 ]]; }
HAS_SYNC=0; has_setting pg_tviews_bgw.mode && HAS_SYNC=1
metric feature.sync_mode "$HAS_SYNC"
metric feature.durability "$(has_setting pg_tviews_bgw.durability && echo 1 || echo 0)"
metric feature.workers_per_database "$(has_setting pg_tviews_bgw.workers_per_database && echo 1 || echo 0)"
metric max_workers "$(q "SHOW pg_tviews_bgw.max_workers")"
metric queue_size "$(q "SHOW pg_tviews_bgw.queue_size")"

# ---- F (part 1): shared memory, idle worker RSS ------------------------------------------------
"${PSQL[@]}" -d "$DB" -AtF , -c "SELECT name, size, allocated_size FROM pg_shmem_allocations
                                  WHERE name LIKE 'pg_tviews_bgw%' ORDER BY name" >"$RAW/shmem.csv"
pid=$(worker_pid)
metric worker.idle_rss_kb "$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")"
metric worker.idle_rssanon_kb "$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status")"

# ---- A: writer overhead ----------------------------------------------------------------------
# Same single-row UPDATE on each copy of tb_post; the TVIEW variants also refresh tv_user (the
# post's vote sum), as does the PL/pgSQL floor. `paused` is the TVIEW with the worker disabled
# during the round: the writers' own cost (capture + publish) without a worker competing for
# the CPU; its backlog is drained after the round.
variants=(base tview paused cap syncpl)
((HAS_SYNC)) && variants+=(sync)
for v in "${variants[@]}" scrub noscrub w1 w8 w8l; do
    case $v in
        base | cap | syncpl | w1 | w8 | w8l) table=$v.tb_post ;;
        tview | paused | sync | scrub | noscrub) table=public.tb_post ;;
    esac
    printf '\\set id random(1, %s)\nUPDATE %s SET votes = votes + 1 WHERE pk_post = :id;\n' \
        "$POSTS" "$table" >"$RAW/pgbench_$v.sql"
done
# Synchronous refresh under READ COMMITTED can lose updates: two writers changing posts of the
# same user each recompute that tv_user row from a snapshot without the other's change, and the
# later upsert wins. Rows left stale by the sync variants are counted (a finding, not a harness
# failure) and repaired before the next round; the async paths are checked strictly below.
stale_rows() {   # stale_rows SCHEMA: TVIEW rows that differ from their view
    q "SELECT (SELECT count(*) FROM (TABLE $1.tv_post EXCEPT ALL SELECT * FROM $1.v_post) d)
            + (SELECT count(*) FROM (TABLE $1.tv_user EXCEPT ALL SELECT * FROM $1.v_user) d)"
}
repair() {
    if [[ $1 == public ]]; then
        q "SELECT pg_tviews_refresh('tv_post') + pg_tviews_refresh('tv_user')" >/dev/null
    else
        local e
        for e in post user; do
            q "INSERT INTO syncpl.tv_$e AS t SELECT * FROM syncpl.v_$e ON CONFLICT (pk_$e)
               DO UPDATE SET id = EXCLUDED.id, data = EXCLUDED.data
               WHERE (t.id, t.data) IS DISTINCT FROM (EXCLUDED.id, EXCLUDED.data)" >/dev/null
        done
    fi
}
# One pgbench round of variant $2 (round $1), appended to $3. Besides tps, the server CPU per
# committed write: cpu_snapshot before pgbench starts and after the round's writes are applied
# (pg_tviews_wait, whose own connection counts too), so the async variant includes the refresh;
# the paused variants (worker disabled: paused, w1, w8) are measured before the worker is
# re-enabled, i.e. the writers' own cost. w1/w8 run a fixed W_TX transactions per client,
# paused PAUSED_TX.
writer_round() {
    local r=$1 v=$2 out=$3 opts=() tps lat backlog=0 catchup=0 stale=0 t0 schema len c0 c1 tx
    local paused=0 ov0
    [[ $v == paused || $v == w1 || $v == w8 || $v == w8l ]] && paused=1
    wait_applied             # the previous round's backlog must not run into this one
    q "CHECKPOINT" >/dev/null
    [[ $v == sync ]] && opts=(-c pg_tviews_bgw.mode=sync)
    if ((paused)); then set_guc pg_tviews_bgw.enabled off; wait_worker_state disabled; fi
    len=(-T "$ROUND_S"); [[ $v == w1 || $v == w8 || $v == w8l ]] && len=(-t "$W_TX")
    [[ $v == paused ]] && len=(-t "$PAUSED_TX")
    ov0=$(q "SELECT overflowed FROM pg_tviews_stats")
    # Phase S: the TVIEW with the scrub working through the round (a pass every SCRUB_INTERVAL,
    # no rate cap), or with it off.
    if [[ $v == scrub ]]; then
        set_guc pg_tviews_bgw.scrub_rows_per_second 0
        set_guc pg_tviews_bgw.scrub_interval "$SCRUB_INTERVAL"
    fi
    [[ $v == noscrub ]] && set_guc pg_tviews_bgw.scrub_interval 0
    c0=$(cpu_snapshot)   # after every psql of the harness has gone (cpu_quiesce)
    PGOPTIONS="${opts[*]}" "$PGBIN/pgbench" -n -M prepared -h "$BENCH_DIR" -p "$BENCH_PORT" \
        -U postgres -c "$CLIENTS" -j "$((CLIENTS < 2 ? CLIENTS : 2))" "${len[@]}" \
        -f "$RAW/pgbench_$v.sql" "$DB" >"$RAW/pgbench_${v}_$r.log" 2>&1 \
        || { tail -n 20 "$RAW/pgbench_${v}_$r.log"; die "pgbench failed ($v, round $r)"; }
    tps=$(awk '/^tps = / { print $3 }' "$RAW/pgbench_${v}_$r.log")
    lat=$(awk '/^latency average = / { print $4 }' "$RAW/pgbench_${v}_$r.log")
    # "...: 20792", or "...: 224/224" with -t
    tx=$(awk '/^number of transactions actually processed: / { split($6, n, "/"); print n[1] }' "$RAW/pgbench_${v}_$r.log")
    # Async: how far the worker fell behind during the round, and how long it then needs.
    if [[ $v == tview || $v == scrub || $v == noscrub ]]; then
        backlog=$(q "SELECT coalesce(sum(pending), 0) FROM pg_tviews_queue_status")
        t0=$(epoch)
        wait_applied
        catchup=$(awk -v a="$t0" -v b="$(epoch)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
    elif ((!paused)); then
        wait_applied   # refresh included: the same wait (a no-op) for the variants without a queue
    fi
    c1=$(cpu_snapshot)
    if [[ $v == scrub || $v == noscrub ]]; then
        reset_guc pg_tviews_bgw.scrub_interval
        reset_guc pg_tviews_bgw.scrub_rows_per_second
    fi
    if ((paused)); then
        backlog=$(q "SELECT coalesce(sum(pending), 0) FROM pg_tviews_queue_status")
        t0=$(epoch)
        reset_guc pg_tviews_bgw.enabled
        wait_applied
        catchup=$(awk -v a="$t0" -v b="$(epoch)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
    fi
    if [[ $v == sync || $v == syncpl ]]; then
        schema=public; [[ $v == syncpl ]] && schema=syncpl
        stale=$(stale_rows "$schema")
        if ((stale > 0)); then
            log "   WARNING: $v left $stale TVIEW rows stale (lost updates between concurrent writers); repairing"
            repair "$schema"
        fi
    fi
    local ov=$(($(q "SELECT overflowed FROM pg_tviews_stats") - ov0)) cpu_us
    cpu_us=$(awk -v t="$((c1 - c0))" -v hz="$CLK_TCK" -v n="$tx" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')
    echo -e "$r\t$v\t$tps\t$lat\t$backlog\t$catchup\t$stale\t$tx\t$((c1 - c0))\t$cpu_us\t$ov" >>"$out"
    log "   round $((r + 1)) $v: $tps tps, latency $lat ms, backlog $backlog keys (drained in ${catchup} ms), server CPU $cpu_us us/write ($((c1 - c0)) ticks / $tx tx)$( ((ov)) && echo ", $ov keys OVERFLOWED")"
}
writer_rounds() {   # writer_rounds ROUNDS OUT VARIANT...: variants rotated every round
    local rounds=$1 out=$2 r i v
    shift 2
    local vs=("$@")
    echo -e "round\tvariant\ttps\tlatency_ms\tbacklog_keys\tcatchup_ms\tstale_rows\ttx\tcpu_ticks\tcpu_us_per_tx\toverflowed_keys" >"$out"
    for ((r = 0; r < rounds; r++)); do
        # Rotate the order every round so no variant always runs first (warm-up, autovacuum).
        for ((i = 0; i < ${#vs[@]}; i++)); do
            v=${vs[$(((i + r) % ${#vs[@]}))]}
            writer_round "$r" "$v" "$out"
        done
    done
}
log "A: writer overhead (durability = $(q "SHOW pg_tviews_bgw.durability")): ${variants[*]}; $ROUNDS round(s) x ${ROUND_S}s, $CLIENTS clients"
overflowed0=$(q "SELECT overflowed FROM pg_tviews_stats")
writer_rounds "$ROUNDS" "$RAW/writer.tsv" "${variants[@]}"
wait_applied
check_converged "writer overhead"
# Non-zero if a paused round queued more than QUEUE_SIZE keys (its catch-up was a recovery).
metric writer.overflowed_keys "$(($(q "SELECT overflowed FROM pg_tviews_stats") - overflowed0))"

# ---- W: writers pay once per table: 1 vs W_TVIEWS TVIEWs over the same table --------------------
# Two more copies of tb_user/tb_post: w1 with one TVIEW (tv_post's query), w8 with W_TVIEWS (the
# same query under other names, each keyed by pk_post under its own name; entities are unique in
# a database, so tv_post_w1 and tv_post_w8_1..N), created for this
# phase and dropped after it so no other phase sees them. The worker is paused during each round
# and the CPU is taken before it is re-enabled: what the writers themselves pay for capture and
# publish. A fixed W_TX transactions per client keep a round's keys within the ring.
w_post_query() {   # w_post_query SCHEMA KEY
    echo "SELECT p.pk_post AS $2, p.id, jsonb_build_object('title', p.title, 'votes', p.votes, 'author', u.name) AS data
          FROM $1.tb_post p JOIN $1.tb_user u ON u.pk_user = p.fk_user"
}
w_names() {   # w_names SCHEMA: the entity of each TVIEW of that copy (unique in the database)
    local i
    if [[ $1 == w1 ]]; then echo post_w1; return; fi
    for ((i = 1; i <= W_TVIEWS; i++)); do echo "post_$1_$i"; done
}
# w8l: the same TVIEWs as w8, their capture rewritten into the per-TVIEW layout of 0.5.0 (each
# TVIEW its own tview_<entity>_* triggers calling pg_tviews_capture, which the library still
# serves): the "before" of one trigger family per table, measured in the same run.
w_legacy_layout() {   # w_legacy_layout SCHEMA
    q "DO \$\$
        DECLARE r record; a text;
        BEGIN
            FOR r IN SELECT t.tgname, t.tgrelid::regclass AS rel FROM pg_trigger t
                     WHERE t.tgrelid IN ('$1.tb_post'::regclass, '$1.tb_user'::regclass)
                       AND t.tgname LIKE 'tview%' AND t.tgparentid = 0 LOOP
                EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
            END LOOP;
            FOR r IN SELECT m.entity, l.source_oid::regclass AS src,
                            format('%s:async:%I.%I', m.table_oid::oid, '$1', 'tv_' || m.entity) AS binding,
                            string_agg(format('%L, %L', l.capture_column, l.rule), ', ' ORDER BY l.capture_column) AS cols
                     FROM pg_tview_meta m JOIN pg_tview_lineage l ON l.tview_oid = m.table_oid
                     WHERE m.entity LIKE 'post\\_$1\\_%' GROUP BY 1, 2, 3 LOOP
                a := format('pg_tviews_capture(%L, %s)', r.binding, r.cols);
                EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS tview_new FOR EACH STATEMENT EXECUTE FUNCTION %s', 'tview_' || r.entity || '_ins', r.src, a);
                EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS tview_old NEW TABLE AS tview_new FOR EACH STATEMENT EXECUTE FUNCTION %s', 'tview_' || r.entity || '_upd', r.src, a);
                EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS tview_old FOR EACH STATEMENT EXECUTE FUNCTION %s', 'tview_' || r.entity || '_del', r.src, a);
                EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s', 'tview_' || r.entity || '_trunc', r.src, a);
                EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', r.src, 'tview_' || r.entity || '_trunc');
                EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION %s', 'tview_' || r.entity || '_row', r.src, a);
                EXECUTE format('ALTER TABLE %s ENABLE REPLICA TRIGGER %I', r.src, 'tview_' || r.entity || '_row');
            END LOOP;
        END \$\$" >/dev/null || die "phase W: the per-TVIEW layout of $1 failed"
    [[ $(q "SELECT count(*) FROM pg_trigger WHERE tgrelid = '$1.tb_post'::regclass AND tgname LIKE 'tview%'") == $((5 * W_TVIEWS)) ]] \
        || die "phase W: $1 lacks its per-TVIEW triggers"
    [[ $(q "SELECT status FROM pg_tviews_health_check() WHERE check_name = 'triggers'") == OK ]] \
        || die "phase W: the health check does not accept the per-TVIEW layout of $1"
}
w_check_converged() {
    local sch e diff
    for sch in w1 w8 w8l; do
        for e in $(w_names "$sch"); do
            diff=$(q "SELECT count(*) FROM (TABLE $sch.tv_$e EXCEPT ALL SELECT * FROM $sch.v_$e
                                            UNION ALL
                                            SELECT * FROM $sch.v_$e EXCEPT ALL TABLE $sch.tv_$e) d")
            [[ $diff == 0 ]] || die "after $1: $diff rows of $sch.tv_$e differ from $sch.v_$e"
        done
    done
}
if ((W_ROUNDS > 0)); then
    log "W: writer CPU with 1 vs $W_TVIEWS TVIEWs over copies of tb_post (worker paused); $W_ROUNDS round(s) x $W_TX tx per client"
    for sch in w1 w8 w8l; do
        "${PSQL[@]}" -d "$DB" -q -c "SET client_min_messages = warning" -c "
            CREATE SCHEMA $sch;
            CREATE TABLE $sch.tb_user (LIKE public.tb_user INCLUDING ALL);
            CREATE TABLE $sch.tb_post (LIKE public.tb_post INCLUDING ALL);
            ALTER TABLE $sch.tb_post ADD FOREIGN KEY (fk_user) REFERENCES $sch.tb_user;
            INSERT INTO $sch.tb_user SELECT * FROM base.tb_user;
            INSERT INTO $sch.tb_post SELECT * FROM base.tb_post" \
            -c "VACUUM ANALYZE $sch.tb_user, $sch.tb_post" >/dev/null || die "phase W: copying tb_post into $sch failed"
        for e in $(w_names "$sch"); do
            q "SELECT pg_tviews_create('$sch.tv_$e', \$q\$$(w_post_query "$sch" "pk_$e")\$q\$)" >/dev/null \
                || die "phase W: pg_tviews_create('$sch.tv_$e') failed"
        done
    done
    w_legacy_layout w8l
    wait_worker_idle
    w_check_converged "phase W setup"
    metric w.tviews.w1 "$(w_names w1 | wc -l)"
    metric w.tviews.w8 "$(w_names w8 | wc -l)"
    writer_rounds "$W_ROUNDS" "$RAW/writer_w.tsv" w1 w8 w8l
    wait_applied
    w_check_converged "phase W rounds"
    for sch in w1 w8 w8l; do
        for e in $(w_names "$sch"); do q "SELECT pg_tviews_drop('$sch.tv_$e')" >/dev/null; done
        "${PSQL[@]}" -d "$DB" -q -c "SET client_min_messages = warning" -c "DROP SCHEMA $sch CASCADE" >/dev/null
    done
    wait_worker_idle
fi

# ---- A2: writer overhead without the journal ----------------------------------------------------
# durability is a postmaster setting: restart without the journal, measure the async variants
# against the baseline again (alternated in this configuration), then restart back.
if ((NONE_ROUNDS > 0)) && [[ $(q "SELECT count(*) FROM pg_settings WHERE name = 'pg_tviews_bgw.durability'") == 1 ]]; then
    log "A2: writer overhead with durability = none: base tview paused; $NONE_ROUNDS round(s)"
    restart_with "pg_tviews_bgw.durability = none"
    wait_worker_idle
    writer_rounds "$NONE_ROUNDS" "$RAW/writer_none.tsv" base tview paused
    restart_with
    t0=$(epoch)
    wait_worker_idle
    metric restart.journal_replay_ms "$(awk -v a="$t0" -v b="$(epoch)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')"
    check_converged "durability = none rounds"
fi

# ---- B: freshness lag --------------------------------------------------------------------------
CONN="host=$BENCH_DIR port=$BENCH_PORT user=postgres dbname=$DB"
probe() {   # probe TAG OUT [extra args]: deadline per probe is the harness deadline
    local tag=$1 out=$2; shift 2
    "$PROBE" --conn "$CONN" --out "$out" --tag "$tag" --id-min 1 --id-max "$LAG_PROBE_IDS" \
        --poll-sleep-us "$POLL_SLEEP_US" --timeout-s "$DEADLINE_S" "$@" 2>>"$RAW/probe.log" \
        || { tail -n 5 "$RAW/probe.log"; die "lag probe '$tag' failed"; }
    tail -n 1 "$RAW/probe.log" | sed 's/^/    /'
}
# Writers on the posts the probe never touches, in the background for $1 seconds; paced at
# LAG_LOAD_RATE tps in total when $3 is "paced", as fast as they can otherwise.
start_load() {   # start_load SECONDS TAG [paced|saturating [CLIENTS]]
    local secs=$1 tag=$2 rate=() clients=${4:-$LAG_LOAD_CLIENTS}
    [[ ${3:-} == paced ]] && rate=(-R "$LAG_LOAD_RATE")
    printf '\\set id random(%s, %s)\nUPDATE tb_post SET votes = votes + 1 WHERE pk_post = :id;\n' \
        "$((LAG_PROBE_IDS + 1))" "$POSTS" >"$RAW/pgbench_load.sql"
    "$PGBIN/pgbench" -n -M prepared -h "$BENCH_DIR" -p "$BENCH_PORT" -U postgres \
        -c "$clients" -j "$((clients < 2 ? clients : 2))" -T "$secs" "${rate[@]}" \
        -f "$RAW/pgbench_load.sql" "$DB" >"$RAW/pgbench_load_$tag.log" 2>&1 &
    LOAD_PID=$!
    BG_PIDS+=("$LOAD_PID")
}
finish_load() {   # waits for the load; records its tps and the queue it left behind
    local tag=$1
    wait "$LOAD_PID" || { tail -n 20 "$RAW/pgbench_load_$tag.log"; die "load pgbench failed ($tag)"; }
    metric "load.$tag.tps" "$(awk '/^tps = / { print $3 }' "$RAW/pgbench_load_$tag.log")"
    metric "load.$tag.backlog_keys" "$(q "SELECT coalesce(sum(pending), 0) FROM pg_tviews_queue_status")"
    wait_applied
}
log "B: freshness lag, idle ($LAG_PROBES probes)"
probe idle "$RAW/lag_idle.csv" --probes "$LAG_PROBES"
PROBE_S=$(awk -v s="$LAG_LOAD_S" 'BEGIN { print (s > 3 ? s - 2 : 1) }')
log "B: freshness lag under $LAG_LOAD_CLIENTS pgbench writers paced at $LAG_LOAD_RATE tps (${LAG_LOAD_S}s)"
start_load "$LAG_LOAD_S" paced paced
sleep 1   # let the writers reach their pace first
probe paced "$RAW/lag_paced.csv" --probes "$LAG_PROBES" --max-seconds "$PROBE_S"
finish_load paced
# Unpaced writers outrun the single worker on a small machine: the backlog, hence the lag,
# grows for as long as they run, so this figure depends on LAG_LOAD_S.
log "B: freshness lag under $LAG_LOAD_CLIENTS saturating pgbench writers (${LAG_LOAD_S}s)"
start_load "$LAG_LOAD_S" lag
sleep 1
probe load "$RAW/lag_load.csv" --probes "$LAG_PROBES" --warmup 0 --max-seconds "$PROBE_S"
finish_load lag
check_converged "lag probes"

# ---- R: read-your-writes (write token) ----------------------------------------------------------
# RYW_LOAD_CLIENTS saturating writers (the worker falls behind, the backlog grows); meanwhile the
# probe commits a title change with pg_tviews_write_token() taken in the same transaction and
# waits for that token on another connection, then reads tv_post there: commit -> wait returned,
# reads that miss the write (violations), waits that returned false. Then the same with plain
# pg_tviews_wait(), which waits for everything committed before it (the whole backlog).
# Both halves of the API must be there: pg_tviews_write_token() and pg_tviews_wait(text, ...).
HAS_TOKEN=$(q "SELECT (EXISTS (SELECT FROM pg_proc WHERE proname = 'pg_tviews_write_token')
                       AND EXISTS (SELECT FROM pg_proc WHERE proname = 'pg_tviews_wait'
                                   AND proargtypes[0] = 'text'::regtype))::int")
metric feature.write_token "$HAS_TOKEN"
if ((RYW_LOAD_S > 0)); then
    RYW_PROBE_S=$(awk -v s="$RYW_LOAD_S" 'BEGIN { print (s > 3 ? s - 2 : 1) }')
    for mode in token wait; do
        if [[ $mode == token ]] && ((!HAS_TOKEN)); then
            log "R: read-your-writes token: SKIPPED (no pg_tviews_write_token() / pg_tviews_wait(text) in this version)"
            continue
        fi
        log "R: read-your-writes, $mode waits under $RYW_LOAD_CLIENTS saturating writers (${RYW_LOAD_S}s)"
        ov0=$(q "SELECT overflowed FROM pg_tviews_stats")
        start_load "$RYW_LOAD_S" "ryw_$mode" saturating "$RYW_LOAD_CLIENTS"
        sleep 1   # no warm-up probes: a plain wait under this load takes seconds, and so
                  # would a token wait that waits for the backlog ahead of it
        probe "ryw_$mode" "$RAW/ryw_$mode.csv" --mode "$mode" --wait-timeout-s "$RYW_WAIT_TIMEOUT_S" \
            --probes "$LAG_PROBES" --warmup 0 --max-seconds "$RYW_PROBE_S"
        finish_load "ryw_$mode"
        metric "ryw.$mode.overflowed_keys" "$(($(q "SELECT overflowed FROM pg_tviews_stats") - ov0))"
    done
    check_converged "read-your-writes probes"
fi

# ---- C: bulk catch-up ------------------------------------------------------------------------
log "C: bulk catch-up: UPDATE of all $POSTS posts, $BULK_ROUNDS round(s)"
upsert() {   # the bare set-based recompute of every row, as the worker's full refresh does it
    echo "INSERT INTO base.tv_$1 AS t SELECT * FROM base.v_$1
          ON CONFLICT (pk_$1) DO UPDATE SET id = EXCLUDED.id, data = EXCLUDED.data
          WHERE (t.id, t.data) IS DISTINCT FROM (EXCLUDED.id, EXCLUDED.data)"
}
echo -e "round\tbase_ms\tcap_ms\tmv_ms\tupsert_ms\ttview_ms\tcatchup_ms\tworker_rows" >"$RAW/bulk.tsv"
for ((r = 0; r < BULK_ROUNDS; r++)); do
    vacuum_all   # every copy starts the round in the same state
    base_ms=$(timed_ms "UPDATE base.tb_post SET votes = votes + 1")
    cap_ms=$(timed_ms "UPDATE cap.tb_post SET votes = votes + 1")
    mv1=$(timed_ms "REFRESH MATERIALIZED VIEW CONCURRENTLY base.mv_post")
    mv2=$(timed_ms "REFRESH MATERIALIZED VIEW CONCURRENTLY base.mv_user")
    # Not a no-op: every materialized post now carries the new vote count.
    n=$(q "SELECT count(*) FROM base.mv_post m JOIN base.tb_post p USING (pk_post)
           WHERE (m.data->>'votes')::int = p.votes")
    [[ $n == "$POSTS" ]] || die "mv_post has $n/$POSTS up-to-date rows after REFRESH"
    up1=$(timed_ms "$(upsert post)"); rows=$(last_insert_rows)
    [[ $rows == "$POSTS" ]] || die "set-based recompute changed $rows/$POSTS posts"
    up2=$(timed_ms "$(upsert user)")
    vacuum_all
    rows_before=$(worker_totals); rows_before=${rows_before#* }
    ((r == 0)) && start_rss "$RAW/rss_bulk.csv"
    tview_ms=$(timed_ms "UPDATE public.tb_post SET votes = votes + 1")
    end=$(epoch)
    sample_drain "$RAW/bulk_samples_$r.csv"
    ((r == 0)) && stop_rss
    rows_after=$(worker_totals)
    # Catch-up: from the bulk transaction's commit (the oldest pending commit at the first
    # sample; when the UPDATE returned if nothing was pending any more) to converged.
    catchup=$(awk -F, -v end="$end" 'NR == 2 { c = ($3 == "" ? end : $3) } { last = $1 }
                                     END { printf "%.0f", (last - c) * 1000 }' "$RAW/bulk_samples_$r.csv")
    check_converged "bulk update"
    echo -e "$r\t$base_ms\t$cap_ms\t$(awk -v a="$mv1" -v b="$mv2" 'BEGIN { print a + b }')\t$(awk -v a="$up1" -v b="$up2" 'BEGIN { print a + b }')\t$tview_ms\t$catchup\t$((${rows_after#* } - rows_before))" >>"$RAW/bulk.tsv"
    log "   round $((r + 1)): baseline $base_ms ms, capture floor $cap_ms ms, MV refresh $mv1 + $mv2 ms, upsert $up1 + $up2 ms, TVIEW UPDATE $tview_ms ms, caught up ${catchup} ms after commit"
done

# ---- D: drain throughput and lag per batch size ----------------------------------------------
log "D: drain throughput: $DRAIN_KEYS posts queued with the worker disabled; batch sizes $BATCH_SIZES"
for bs in $BATCH_SIZES; do
    set_guc pg_tviews_bgw.enabled off
    wait_worker_state disabled
    vacuum_all
    q "UPDATE tb_post SET votes = votes + 1 WHERE pk_post <= $DRAIN_KEYS" >/dev/null
    keys=$(q "SELECT coalesce(sum(pending), 0) FROM pg_tviews_queue_status")
    before=$(worker_totals)
    "${PSQL[@]}" -d "$DB" -q -c "ALTER SYSTEM SET pg_tviews_bgw.batch_size = $bs" >/dev/null
    start_rss "$RAW/rss_drain_$bs.csv"
    # Enabling and sampling in one session: the first sample is taken right after the reload.
    sample_drain "$RAW/drain_$bs.csv" "ALTER SYSTEM SET pg_tviews_bgw.enabled = on" "SELECT pg_reload_conf()"
    stop_rss
    after=$(worker_totals)
    metric "drain.$bs.keys" "$keys"
    metric "drain.$bs.batches" "$((${after% *} - ${before% *}))"
    metric "drain.$bs.rows" "$((${after#* } - ${before#* }))"
    secs=$(awk -F, 'NR == 2 { a = $1 } END { printf "%.3f", $1 - a }' "$RAW/drain_$bs.csv")
    log "   batch_size $bs: $keys keys drained in ${secs}s"
    check_converged "drain at batch_size $bs"
    log "   batch_size $bs: lag under writers paced at $LAG_LOAD_RATE tps (${BS_LAG_S}s)"
    start_load "$BS_LAG_S" "bs_$bs" paced
    sleep 1
    probe "bs$bs" "$RAW/lag_bs_$bs.csv" --probes "$LAG_PROBES" --warmup 2 \
        --max-seconds "$(awk -v s="$BS_LAG_S" 'BEGIN { print (s > 3 ? s - 2 : 1) }')"
    finish_load "bs_$bs"
done
reset_guc pg_tviews_bgw.batch_size
reset_guc pg_tviews_bgw.enabled
wait_worker_state idle

# ---- E: overflow -> recovery (journal replay) ----------------------------------------------------
if [[ $OVERFLOW == 1 ]]; then
    log "E: overflow: bulk UPDATEs with the worker disabled until the ring overflows"
    set_guc pg_tviews_bgw.enabled off
    wait_worker_state disabled
    stats() { q "SELECT overflowed || ' ' || recoveries FROM pg_tviews_stats"; }
    s0=$(stats) n=0
    while [[ $(stats | cut -d' ' -f1) == "${s0% *}" ]]; do
        ((n < 50)) || die "ring did not overflow after $n bulk updates"
        q "UPDATE tb_post SET votes = votes + 1" >/dev/null
        n=$((n + 1))
    done
    metric overflow.statements "$n"
    vacuum_all   # the full refresh should not pay for the dead versions of $n bulk updates
    metric overflow.pending_before "$(q "SELECT coalesce(sum(pending), 0) FROM pg_tviews_queue_status")"
    start_rss "$RAW/rss_overflow.csv"
    sample_drain "$RAW/overflow_samples.csv" "ALTER SYSTEM SET pg_tviews_bgw.enabled = on" "SELECT pg_reload_conf()"
    stop_rss
    s1=$(stats)
    metric overflow.overflowed_keys "$((${s1% *} - ${s0% *}))"
    metric overflow.full_refreshes "$((${s1#* } - ${s0#* }))"
    reset_guc pg_tviews_bgw.enabled
    check_converged "overflow"
    log "   overflowed after $n bulk UPDATEs; recovered"
fi

# ---- F (part 2): peak worker memory ------------------------------------------------------------
pid=$(worker_pid)
metric worker.vmhwm_kb "$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")"
metric worker.final_rss_kb "$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")"

# ---- S: background scrub ----------------------------------------------------------------------
if ((SCRUB_ROUNDS > 0)) && has_setting pg_tviews_bgw.scrub_interval; then
    log "S: writer overhead with the scrub working (scrub_interval = $SCRUB_INTERVAL, no cap) vs off; $SCRUB_ROUNDS round(s)"
    scrub_passes() { grep -c 'scrub pass of database' "$BENCH_DIR/log" || true; }
    passes0=$(scrub_passes)
    writer_rounds "$SCRUB_ROUNDS" "$RAW/writer_scrub.tsv" noscrub scrub
    wait_applied
    check_converged "scrub rounds"
    metric scrub.passes_during_rounds "$(($(scrub_passes) - passes0))"
    # Saturating writers leave the worker no idle time, so the scrub hardly runs above. Paced
    # writers (LAG_LOAD_RATE tps) leave it idle time, which the scrub then takes: its cost shows
    # as freshness lag (a refresh may wait for the step in progress) and writer latency.
    for v in noscrub scrub; do
        if [[ $v == scrub ]]; then
            set_guc pg_tviews_bgw.scrub_rows_per_second 0
            set_guc pg_tviews_bgw.scrub_interval "$SCRUB_INTERVAL"
        else
            set_guc pg_tviews_bgw.scrub_interval 0
        fi
        passes1=$(scrub_passes)
        log "   paced writers ($LAG_LOAD_RATE tps, ${SCRUB_LAG_S}s) with the lag probe: $v"
        start_load "$SCRUB_LAG_S" "scrub_$v" paced
        sleep 1
        probe "scrub_$v" "$RAW/lag_scrub_$v.csv" --probes "$LAG_PROBES" --warmup 2 \
            --max-seconds "$(awk -v s="$SCRUB_LAG_S" 'BEGIN { print (s > 3 ? s - 2 : 1) }')"
        finish_load "scrub_$v"
        metric "scrub.paced.$v.latency_ms" "$(awk '/^latency average = / { print $4 }' "$RAW/pgbench_load_scrub_$v.log")"
        metric "scrub.paced.$v.passes" "$(($(scrub_passes) - passes1))"
        reset_guc pg_tviews_bgw.scrub_interval
        reset_guc pg_tviews_bgw.scrub_rows_per_second
    done
    check_converged "scrub with paced writers"
    # The scrub's own speed: passes over every TVIEW without writers and without a cap; the
    # worker logs rows checked and the milliseconds its steps took (compare + confirm).
    log "   scrub speed: passes without writers, no cap"
    vacuum_all
    passes0=$(scrub_passes)
    set_guc pg_tviews_bgw.scrub_rows_per_second 0
    set_guc pg_tviews_bgw.scrub_interval 1
    t0=$(date +%s)
    until (($(scrub_passes) >= passes0 + 2)); do
        (($(date +%s) - t0 < DEADLINE_S)) || die "no scrub pass within ${DEADLINE_S}s"
        sleep 0.5
    done
    reset_guc pg_tviews_bgw.scrub_interval
    reset_guc pg_tviews_bgw.scrub_rows_per_second
    # "... done: 2 TVIEWs, 110000 rows checked in 1.9 s (1800 ms of work, 61111 rows/s of work), 0 drifted rows repaired"
    grep 'scrub pass of database' "$BENCH_DIR/log" | tail -n 1 | sed -E \
        's/.*done: ([0-9]+) TVIEWs, ([0-9]+) rows checked in ([0-9.]+) s \(([0-9]+) ms of work, ([0-9]+) rows\/s of work\), ([0-9]+) drifted.*/\1 \2 \3 \4 \5 \6/' \
        >"$RAW/scrub_pass.txt"
    read -r s_tviews s_rows s_secs s_work_ms s_rate s_drift <"$RAW/scrub_pass.txt" || die "no scrub pass line in the server log"
    metric scrub.pass.tviews "$s_tviews"
    metric scrub.pass.rows "$s_rows"
    metric scrub.pass.seconds "$s_secs"
    metric scrub.pass.work_ms "$s_work_ms"
    metric scrub.pass.rows_per_work_second "$s_rate"
    metric scrub.pass.drift "$s_drift"
    metric scrub.total_drift "$(q "SELECT coalesce(sum(drift_repaired), 0) FROM pg_tviews_queue_status")"
    log "   scrub pass: $s_rows rows of $s_tviews TVIEWs in ${s_secs}s, ${s_work_ms} ms of work ($s_rate rows/s of work), $s_drift drifted"
fi

# ---- G: two workers per database -------------------------------------------------------------
if [[ $TWO_WORKERS == 1 ]] && [[ $(q "SELECT count(*) FROM pg_settings WHERE name = 'pg_tviews_bgw.workers_per_database'") == 1 ]]; then
    log "G: two workers per database: drain of $DRAIN_KEYS keys and bulk catch-up again"
    restart_with "pg_tviews_bgw.workers_per_database = 2"
    wait_worker_idle
    metric g.workers "$(q "SELECT count(*) FROM pg_tviews_worker_status WHERE database = current_database() AND pid IS NOT NULL")"
    set_guc pg_tviews_bgw.enabled off
    wait_worker_state disabled
    vacuum_all
    q "UPDATE tb_post SET votes = votes + 1 WHERE pk_post <= $DRAIN_KEYS" >/dev/null
    metric g.drain.keys "$(q "SELECT coalesce(sum(pending), 0) FROM pg_tviews_queue_status")"
    sample_drain "$RAW/g_drain.csv" "ALTER SYSTEM SET pg_tviews_bgw.enabled = on" "SELECT pg_reload_conf()"
    reset_guc pg_tviews_bgw.enabled
    check_converged "two workers: drain"
    wait_worker_idle
    vacuum_all
    ms=$(timed_ms "UPDATE public.tb_post SET votes = votes + 1")
    metric g.bulk.tview_write_ms "$ms"
    metric g.bulk.tview_write_end "$(epoch)"
    sample_drain "$RAW/g_bulk_samples.csv"
    check_converged "two workers: bulk update"
    log "   two workers: drained and caught up"
fi

metric total.seconds "$(($(date +%s) - T_START))"
# Other work on this shared machine during the run shows up here.
metric loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"
# ---- report ----------------------------------------------------------------------------------
log "writing $RESULTS_DIR/latest.md"
python3 bench/report.py "$RAW" "$RESULTS_DIR" || die "report.py failed"
log "done in $(($(date +%s) - T_START))s"
