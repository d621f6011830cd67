#!/usr/bin/env bash
# Demo: a cluster in .demo/pg$PG (port 5490) with a TVIEW tv_post, a burst of 20k updates, and the
# background worker draining the queue live. Run via `make demo` (which installs the
# extension first); stop with `make demo-stop`.
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN=${PGBIN:-$(scripts/pg-bindir.sh "${PG:-15}")}
export PGBIN   # for scripts/cluster.sh
# One directory per version (make sets DEMO_DIR): a data directory belongs to one major version.
DIR=${DEMO_DIR:-$(pwd)/.demo/pg${PG:-15}}
PORT=5490
DEADLINE_S=120   # generous: 2 cores, debug build

scripts/cluster.sh start "$DIR" "$PORT"
psql() { "$PGBIN/psql" -X -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres "$@"; }
q() { psql -d demo -Atq -c "$1"; }

if [[ $(psql -d postgres -Atc "SELECT count(*) FROM pg_database WHERE datname = 'demo'") == 0 ]]; then
    psql -d postgres -qc "CREATE DATABASE demo"
fi

echo "== schema, data and TVIEW (examples/demo.sql)"
psql -d demo -q -f examples/demo.sql
q "SELECT pg_tviews_wait('30s')" >/dev/null   # start from an idle queue

echo "== burst: 10k rows updated in 4 transactions, then 10k single-row transactions (pgbench)"
for i in 0 1 2 3; do
    q "UPDATE tb_post SET views = views + 1, updated_at = now()
       WHERE pk_post % 4 = $i AND pk_post <= 10000" >/dev/null
done
# Many small commits from 4 clients, in the background while we watch the queue.
"$PGBIN/pgbench" -n -h "$DIR" -p "$PORT" -U postgres -c 4 -j 2 -t 2500 -f - demo \
    >"$DIR/pgbench.log" 2>&1 <<'SQL' &
\set k random(1, 10000)
\set a random(1, 100)
UPDATE tb_post SET fk_author = :a, title = 'post ' || :k || ' v' || (views + 1),
       views = views + 1, updated_at = now() WHERE pk_post = :k;
SQL
bench=$!

echo "== draining (every 0.2s: queue of tv_post, and this database's worker)"
status_sql="
SELECT format('pending=%-6s oldest_age=%-8s applied=%-7s | worker %-12s batches=%-5s rows=%s',
              q.pending,
              coalesce(round(extract(epoch FROM q.oldest_pending_age) * 1000)::text || 'ms', '-'),
              q.applied, coalesce(w.state, 'none'), w.batches, w.rows)
FROM pg_tviews_queue_status q
LEFT JOIN pg_tviews_worker_status w ON w.database = current_database()
WHERE q.entity = 'post'"
start=$(date +%s.%N)
bench_done=0
while :; do
    elapsed=$(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%5.1f", n - s }')
    echo "  t=${elapsed}s $(q "$status_sql")"
    if ((!bench_done)) && ! kill -0 "$bench" 2>/dev/null; then
        wait "$bench" || { cat "$DIR/pgbench.log"; echo "demo: pgbench failed" >&2; exit 1; }
        bench_done=1
    fi
    # Done when the writers finished and everything committed so far has been applied.
    if ((bench_done)) && [[ $(q "SELECT pg_tviews_wait('0s')") == t ]]; then
        break
    fi
    if awk -v e="$elapsed" -v d="$DEADLINE_S" 'BEGIN { exit !(e > d) }'; then
        echo "demo: queue not drained after ${DEADLINE_S}s (server log: $DIR/log)" >&2
        exit 1
    fi
    sleep 0.2
done
echo "  $(grep -E '^(number of transactions actually processed|tps)' "$DIR/pgbench.log" | tr '\n' ' ')"

echo "== rename an author: a joined-table change; lineage refreshes only that author's posts"
q "UPDATE tb_author SET name = 'Ada Lovelace' WHERE pk_author = 1" >/dev/null
[[ $(q "SELECT pg_tviews_wait('30s')") == t ]] || { echo "demo: author change not applied" >&2; exit 1; }
echo "  posts showing the new name: $(q "SELECT count(*) FROM tv_post WHERE data->'author'->>'name' = 'Ada Lovelace'")" \
     "(expected $(q "SELECT count(*) FROM tb_post WHERE fk_author = 1"))"

echo "== check: tv_post equals v_post"
diff=$(q "SELECT (SELECT count(*) FROM (TABLE tv_post EXCEPT ALL TABLE v_post) a)
               + (SELECT count(*) FROM (TABLE v_post EXCEPT ALL TABLE tv_post) b)")
rows=$(q "SELECT count(*) FROM tv_post")
if [[ $diff != 0 ]]; then
    echo "FAILED: $diff rows differ between tv_post and v_post" >&2
    exit 1
fi
echo "  OK: $rows rows, 0 differences (EXCEPT ALL both ways)"
psql -d demo -c "SELECT * FROM pg_tviews_stats"

cat <<MSG
== the demo cluster is still running
  connect:  psql -h $DIR -p $PORT -U postgres demo
  try:      SELECT data FROM tv_post WHERE pk_post = 1;
            SELECT * FROM pg_tviews_queue_status;  SELECT * FROM pg_tviews_worker_status;
  stop:     make demo-stop
MSG
