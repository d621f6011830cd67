#!/usr/bin/env bash
# SQL regression tests (tests/pg_regress) against a throwaway cluster with the extension
# preloaded. `cargo pgrx regress` refuses to run as root, so we drive pg_regress ourselves.
# Usage: scripts/regress.sh [test ...]   (default: every tests/pg_regress/sql/*.sql, setup first)
# The server is the one in PGBIN, else that of version PG (scripts/pg-bindir.sh; default 15), and
# pg_regress the one that version's pg_config places under PGXS.
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN=${PGBIN:-$(scripts/pg-bindir.sh "${PG:-15}")}
export PGBIN   # for scripts/cluster.sh
# pgxs.mk is in <pgxs>/src/makefiles/; pg_regress in <pgxs>/src/test/regress/ (all three installs).
PG_REGRESS=${PG_REGRESS:-$(dirname "$(dirname "$("$PGBIN/pg_config" --pgxs)")")/test/regress/pg_regress}
DIR=$(pwd)/target/regress-cluster
PORT=5491
DB=pg_tviews_regress
OUT=target/regress-out

# Stale cluster from an interrupted run: stop it and start from scratch.
scripts/cluster.sh stop "$DIR"
rm -rf "$DIR" "$OUT"
mkdir -p "$OUT"
trap 'scripts/cluster.sh stop "$DIR"' EXIT
# prepared_transactions_publish_on_commit_prepared.sql and security.sql prepare transactions,
# which needs 2PC enabled.
scripts/cluster.sh start "$DIR" "$PORT" "max_prepared_transactions = 2"

# --use-existing never creates the database, so do it here with the settings pg_regress
# itself would apply (C messages and sorting: expected files must not depend on the host).
psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)
"${psql[@]}" -c "CREATE DATABASE $DB TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'"
for setting in lc_messages lc_monetary lc_numeric lc_time; do
    "${psql[@]}" -c "ALTER DATABASE $DB SET $setting TO 'C'"
done

if (($#)); then
    tests=("$@")
else
    tests=()
    [[ -f tests/pg_regress/sql/setup.sql ]] && tests+=(setup)
    for f in tests/pg_regress/sql/*.sql; do
        name=$(basename "$f" .sql)
        [[ $name == setup ]] || tests+=("$name")
    done
fi

status=0
"$PG_REGRESS" --use-existing --bindir="$PGBIN" --host="$DIR" --port="$PORT" --user=postgres \
    --inputdir=tests/pg_regress --outputdir="$OUT" --dbname="$DB" "${tests[@]}" || status=$?
if ((status != 0)); then
    [[ -f $OUT/regression.diffs ]] && cat "$OUT/regression.diffs"
    echo "regress: FAILED (diffs in $OUT/regression.diffs, server log in $DIR/log)" >&2
fi
exit "$status"
