-- The monitoring views: their columns, one launcher per cluster and a worker for this
-- database, a queue status row per TVIEW before anything was queued for it, and, once the
-- worker applied a few transactions, nothing pending, keys applied, no error recorded. Only
-- stable facts are printed (no pids, oids or timestamps).
\set SHOW_CONTEXT never
\set VERBOSITY default

-- The monitoring views and their columns.
SELECT table_name, column_name, data_type
FROM information_schema.columns
WHERE table_schema = 'public'
  AND table_name IN ('pg_tviews_queue_status', 'pg_tviews_worker_status', 'pg_tviews_stats')
ORDER BY table_name, ordinal_position;

-- One launcher per cluster, and this database gets its own worker (started asynchronously:
-- wait for it, up to 30 seconds).
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN EXISTS (SELECT 1 FROM pg_tviews_worker_status
                          WHERE database = current_database() AND pid IS NOT NULL);
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT backend_type, count(*) FROM pg_stat_activity
WHERE backend_type = 'pg_tviews_bgw launcher'
   OR (backend_type = 'pg_tviews_bgw worker' AND datname = current_database())
GROUP BY 1 ORDER BY 1;
SELECT w.pid = a.pid AS pid_matches_pg_stat_activity
FROM pg_tviews_worker_status w
JOIN pg_stat_activity a ON a.pid = w.pid
WHERE w.database = current_database();

CREATE TABLE tb_post (
    pk_post bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id      uuid NOT NULL,
    title   text NOT NULL
);
INSERT INTO tb_post (id, title)
SELECT md5('post' || i)::uuid, 'post ' || i FROM generate_series(1, 100) i;
SELECT pg_tviews_create('tv_post', $$
    SELECT pk_post, id, jsonb_build_object('title', title) AS data FROM tb_post
$$);

-- Compares the TVIEW with its view, both directions.
CREATE VIEW diff AS
SELECT (SELECT count(*) FROM (TABLE tv_post EXCEPT ALL TABLE v_post) a) AS stale_rows,
       (SELECT count(*) FROM (TABLE v_post EXCEPT ALL TABLE tv_post) b) AS missing_rows;

-- A queue status row per TVIEW, even before anything was queued for it.
SELECT entity, tview, pending, oldest_pending_at, oldest_pending_age, paused
FROM pg_tviews_queue_status;

-- Writes in several transactions; pg_tviews_wait returns once the worker applied them.
INSERT INTO tb_post (id, title)
SELECT md5('post' || i)::uuid, 'post ' || i FROM generate_series(101, 200) i;
UPDATE tb_post SET title = title || ' (edited)' WHERE pk_post % 3 = 0;
DELETE FROM tb_post WHERE pk_post % 10 = 0;
BEGIN;
UPDATE tb_post SET title = 'twice' WHERE pk_post = 1;
UPDATE tb_post SET title = 'thrice' WHERE pk_post = 1;
COMMIT;
SELECT pg_tviews_wait('5s');

-- Once drained: nothing pending, keys were applied, no error recorded.
SELECT entity, tview, pending, oldest_pending_at IS NULL AS no_oldest_pending,
       oldest_pending_age IS NULL AS no_age, applied > 0 AS applied_some,
       last_applied_at IS NOT NULL AS has_last_applied, paused
FROM pg_tviews_queue_status;
SELECT database = current_database() AS this_database, pid IS NOT NULL AS running,
       state IN ('idle', 'draining') AS state_ok, pending, recovery_pending,
       batches > 0 AS batches_done, rows > 0 AS rows_written,
       started_at IS NOT NULL AS has_started_at,
       -- A refresh that raced the DDL of earlier tests may have been retried (and recorded
       -- here); such errors are covered by the end-to-end failure tests, not by this file.
       (last_error IS NULL) = (last_error_at IS NULL) AS error_columns_consistent
FROM pg_tviews_worker_status
WHERE database = current_database();
SELECT enqueued = applied AS all_applied, overflowed, published_txns > 0 AS published,
       recoveries > 0 AS had_recovery, shared_memory
FROM pg_tviews_stats;

DROP VIEW diff;
SELECT pg_tviews_drop('tv_post');
DROP TABLE tb_post;
