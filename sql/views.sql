-- Monitoring surface built on the shared-memory SRFs (defined by the Rust functions).

CREATE FUNCTION pg_tviews_wait(timeout interval DEFAULT interval '10 seconds')
RETURNS boolean
LANGUAGE sql VOLATILE STRICT
AS $$ SELECT @extschema@._pg_tviews_wait_ms(greatest(0, (extract(epoch FROM timeout) * 1000)::bigint)) $$;
COMMENT ON FUNCTION pg_tviews_wait(interval) IS
    'Waits until every key committed before the call is applied; false on timeout';

CREATE VIEW pg_tviews_queue_status AS
SELECT m.entity,
       m.table_oid::regclass                          AS tview,
       m.table_oid,
       coalesce(s.pending, 0)                          AS pending,
       s.oldest_pending_at,
       clock_timestamp() - s.oldest_pending_at         AS oldest_pending_age,
       coalesce(s.applied, 0)                          AS applied,
       s.last_applied_at,
       m.paused
FROM pg_tview_meta m
LEFT JOIN @extschema@._pg_tviews_queue_stats() s ON s.table_oid = m.table_oid;

CREATE VIEW pg_tviews_worker_status AS
SELECT w.pid,
       w.datid,
       d.datname          AS database,
       w.slot,
       w.state,
       w.pending,
       w.capacity,
       w.full_refresh_pending,
       w.batches,
       w.rows,
       w.started_at,
       w.last_activity,
       w.last_error,
       w.last_error_at
FROM @extschema@._pg_tviews_worker_stats() w
LEFT JOIN pg_catalog.pg_database d ON d.oid = w.datid;

CREATE VIEW pg_tviews_stats AS
SELECT * FROM @extschema@._pg_tviews_counters();

-- Wake the launcher now so this database gets its drainer without waiting for a scan.
SELECT @extschema@._pg_tviews_attach_database();
