#!/usr/bin/env bash
# Benchmark smoke test (`make bench-smoke`, last tier of `make test`): the full driver with tiny
# sizes, so the harness cannot rot. It fails only if the harness breaks (a query errors, pgbench
# aborts, a TVIEW does not converge before the deadline, converged contents are wrong), never
# because of a timing. Results go to target/bench-smoke/, not bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each size overridable from the environment, like bench/run.sh itself.
export LABEL=${LABEL:-smoke}
export BENCH_DIR=${BENCH_DIR:-$(pwd)/target/bench-smoke}
export BENCH_PORT=${BENCH_PORT:-5602}
export RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
export USERS=${USERS:-100}
export POSTS=${POSTS:-1000}
export ROUNDS=${ROUNDS:-1}
export ROUND_S=${ROUND_S:-2}
export NONE_ROUNDS=${NONE_ROUNDS:-1}
export LAG_PROBES=${LAG_PROBES:-50}
export LAG_PROBE_IDS=${LAG_PROBE_IDS:-100}
export LAG_LOAD_S=${LAG_LOAD_S:-3}
export DRAIN_KEYS=${DRAIN_KEYS:-500}
export BATCH_SIZES=${BATCH_SIZES:-100}
export BS_LAG_S=${BS_LAG_S:-2}
export SCRUB_LAG_S=${SCRUB_LAG_S:-3}
export RYW_LOAD_S=${RYW_LOAD_S:-2}
# Small ring, so the overflow phase needs only a few tiny bulk updates.
export QUEUE_SIZE=${QUEUE_SIZE:-4096}
export SHARED_BUFFERS=${SHARED_BUFFERS:-128MB}
# Generous: 2 shared cores, possibly a debug build of the extension.
export DEADLINE_S=${DEADLINE_S:-120}

exec bash bench/run.sh
