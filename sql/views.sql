-- Monitoring surface built on the shared-memory SRFs (defined by the Rust functions).

CREATE FUNCTION pg_tviews_wait(timeout interval DEFAULT interval '10 seconds')
RETURNS boolean
LANGUAGE sql VOLATILE STRICT
AS $$ SELECT @extschema@._pg_tviews_wait_ms(greatest(0, (extract(epoch FROM timeout) * 1000)::bigint)) $$;
COMMENT ON FUNCTION pg_tviews_wait(interval) IS
    'Waits until every key committed before the call is applied; false on timeout';

-- Read-your-writes: the token of pg_tviews_write_token(), waited for from any session. An
-- untyped literal (pg_tviews_wait('5s')) resolves to this overload; a text that is an interval
-- rather than a token is taken as the timeout of the wait for everything.
CREATE FUNCTION pg_tviews_wait(token text, timeout interval DEFAULT interval '10 seconds')
RETURNS boolean
LANGUAGE sql VOLATILE STRICT
AS $$ SELECT @extschema@._pg_tviews_wait_token_ms(token, greatest(0, (extract(epoch FROM timeout) * 1000)::bigint)) $$;
COMMENT ON FUNCTION pg_tviews_wait(text, interval) IS
    'Waits until the TVIEW rows the token''s transaction changed (cascades included) are applied; false on timeout';

CREATE VIEW pg_tviews_queue_status AS
SELECT m.entity,
       m.table_oid                                     AS tview,
       m.table_oid::oid                                AS table_oid,
       coalesce(s.pending, 0)                          AS pending,
       s.oldest_pending_at,
       clock_timestamp() - s.oldest_pending_at         AS oldest_pending_age,
       coalesce(s.applied, 0)                          AS applied,
       coalesce(s.failed, 0)                           AS failed,
       coalesce(d.retrying, 0)                         AS retrying,
       coalesce(d.dead, 0)                             AS dead_letters,
       coalesce(d.parked, 0)                           AS parked,
       s.last_applied_at,
       s.lag_p50_ms,
       s.lag_p95_ms,
       s.lag_p99_ms,
       m.paused,
       m.reconcile_interval,
       m.last_reconciled_at,
       coalesce(d.blocked, 0)                          AS blocked,
       m.last_scrubbed_at,
       coalesce(m.drift_repaired, 0)                  AS drift_repaired,
       m.last_drift_at,
       coalesce(m.last_pass_drift, 0)                 AS last_pass_drift
FROM pg_tview_meta m
LEFT JOIN @extschema@._pg_tviews_queue_stats() s ON s.table_oid = m.table_oid
LEFT JOIN (SELECT tview_oid,
                  count(*) FILTER (WHERE reason = 'failed') AS retrying,
                  count(*) FILTER (WHERE reason = 'dead')   AS dead,
                  count(*) FILTER (WHERE reason = 'paused') AS parked,
                  count(*) FILTER (WHERE reason = 'failed' AND sqlstate = '55P03') AS blocked
           FROM pg_tview_deferred GROUP BY tview_oid) d ON d.tview_oid = m.table_oid;

-- Keys whose refresh failed pg_tviews_bgw.max_retries times; pg_tviews_retry_failed() revives them.
CREATE VIEW pg_tviews_dead_letters AS
SELECT m.entity, d.kind, d.key, d.attempts, d.last_error, d.sqlstate, d.first_deferred_at,
       d.next_attempt_at AS last_attempt_after
FROM pg_tview_deferred d
LEFT JOIN pg_tview_meta m ON m.table_oid = d.tview_oid
WHERE d.reason = 'dead';

CREATE VIEW pg_tviews_worker_status AS
SELECT w.pid,
       w.datid,
       d.datname          AS database,
       w.slot,
       w.partition,
       w.partitions,
       w.state,
       w.current_tview::regclass AS current_tview,
       w.pending,
       w.capacity,
       w.recovery_pending,
       w.batches,
       w.rows,
       round(w.avg_batch_ms::numeric, 2) AS avg_batch_ms,
       w.started_at,
       w.last_activity,
       w.last_error,
       w.last_error_at
FROM @extschema@._pg_tviews_worker_stats() w
LEFT JOIN pg_catalog.pg_database d ON d.oid = w.datid;

-- The three journal tables of this database: which one writers append to, which drain.
CREATE VIEW pg_tviews_journal_status AS
SELECT j.journal_table,
       format('pg_tview_journal_%s', j.journal_table) AS table_name,
       j.state,
       j.writers_in_flight,
       j.rows_since_current,
       pg_catalog.pg_total_relation_size(
           pg_catalog.to_regclass(format('%I.pg_tview_journal_%s', '@extschema@', j.journal_table))) AS bytes
FROM @extschema@._pg_tviews_journal_stats() j;

CREATE VIEW pg_tviews_stats AS
SELECT * FROM @extschema@._pg_tviews_counters();

-- The per-TVIEW queue as pg_tviews' runbook names it.
CREATE VIEW pg_tviews_queue_realtime AS
SELECT entity, pending, oldest_pending_age, applied, failed, last_applied_at, paused
FROM pg_tviews_queue_status;

-- Every number above as (name, value, labels), for postgres_exporter custom queries / Prometheus.
CREATE VIEW pg_tviews_metrics AS
SELECT 'pg_tviews_enqueued_total'::text AS name, enqueued::float8 AS value, '{}'::jsonb AS labels FROM pg_tviews_stats
UNION ALL SELECT 'pg_tviews_applied_total', applied, '{}' FROM pg_tviews_stats
UNION ALL SELECT 'pg_tviews_overflowed_total', overflowed, '{}' FROM pg_tviews_stats
UNION ALL SELECT 'pg_tviews_published_transactions_total', published_txns, '{}' FROM pg_tviews_stats
UNION ALL SELECT 'pg_tviews_recoveries_total', recoveries, '{}' FROM pg_tviews_stats
UNION ALL SELECT 'pg_tviews_journal_rows_total', journal_rows, '{}' FROM pg_tviews_stats
UNION ALL SELECT 'pg_tviews_journal_truncations_total', journal_truncations, '{}' FROM pg_tviews_stats
UNION ALL SELECT 'pg_tviews_pending_keys', pending, jsonb_build_object('tview', entity) FROM pg_tviews_queue_status
UNION ALL SELECT 'pg_tviews_lag_seconds', coalesce(extract(epoch FROM oldest_pending_age), 0),
                 jsonb_build_object('tview', entity) FROM pg_tviews_queue_status
UNION ALL SELECT 'pg_tviews_lag_p99_ms', lag_p99_ms, jsonb_build_object('tview', entity)
          FROM pg_tviews_queue_status WHERE lag_p99_ms IS NOT NULL
UNION ALL SELECT 'pg_tviews_tview_applied_total', applied, jsonb_build_object('tview', entity) FROM pg_tviews_queue_status
UNION ALL SELECT 'pg_tviews_tview_failed_total', failed, jsonb_build_object('tview', entity) FROM pg_tviews_queue_status
UNION ALL SELECT 'pg_tviews_dead_letters', dead_letters, jsonb_build_object('tview', entity) FROM pg_tviews_queue_status
UNION ALL SELECT 'pg_tviews_parked_keys', parked, jsonb_build_object('tview', entity) FROM pg_tviews_queue_status
UNION ALL SELECT 'pg_tviews_worker_batches_total', batches,
                 jsonb_build_object('database', database, 'partition', partition, 'state', state) FROM pg_tviews_worker_status
UNION ALL SELECT 'pg_tviews_worker_rows_total', rows,
                 jsonb_build_object('database', database, 'partition', partition, 'state', state) FROM pg_tviews_worker_status
UNION ALL SELECT 'pg_tviews_worker_queue_keys', pending,
                 jsonb_build_object('database', database, 'partition', partition, 'capacity', capacity) FROM pg_tviews_worker_status
UNION ALL SELECT 'pg_tviews_worker_avg_batch_ms', avg_batch_ms,
                 jsonb_build_object('database', database, 'partition', partition) FROM pg_tviews_worker_status
          WHERE avg_batch_ms IS NOT NULL
UNION ALL SELECT 'pg_tviews_drift_repaired_total', drift_repaired, jsonb_build_object('tview', entity) FROM pg_tviews_queue_status;

-- Wake the launcher now so this database gets its drainer without waiting for a scan.
SELECT @extschema@._pg_tviews_attach_database();

-- Functions that change cluster-wide state, or objects of every TVIEW: superusers only
-- (GRANT EXECUTE to delegate).
REVOKE EXECUTE ON FUNCTION @extschema@._pg_tviews_attach_database() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.pg_tviews_install_stmt_triggers() FROM PUBLIC;

-- CREATE TABLE tv_x AS SELECT ... and DROP TABLE tv_x, in every session (event triggers fire
-- whether or not this session has loaded the library yet).
CREATE FUNCTION _pg_tviews_on_ctas() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    command record;
BEGIN
    FOR command IN
        SELECT objid FROM pg_event_trigger_ddl_commands()
        WHERE command_tag IN ('CREATE TABLE AS', 'SELECT INTO') AND object_type = 'table'
    LOOP
        PERFORM @extschema@._pg_tviews_adopt_ctas(command.objid, current_query());
    END LOOP;
END $$;
CREATE EVENT TRIGGER pg_tviews_bgw_ctas ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE AS', 'SELECT INTO')
    EXECUTE FUNCTION _pg_tviews_on_ctas();

CREATE FUNCTION _pg_tviews_on_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    dropped record;
BEGIN
    FOR dropped IN
        SELECT objid FROM pg_event_trigger_dropped_objects() WHERE object_type = 'table'
    LOOP
        PERFORM @extschema@._pg_tviews_forget(dropped.objid);
    END LOOP;
    -- A capture trigger that went with its table (a dropped partition of a partitioned
    -- source): those rows left the source without DML.
    FOR dropped IN
        SELECT DISTINCT split_part(object_identity, ' on ', 1) AS name
        FROM pg_event_trigger_dropped_objects()
        WHERE object_type = 'trigger' AND object_identity LIKE 'tview\_%'
    LOOP
        PERFORM @extschema@._pg_tviews_trigger_dropped(dropped.name);
    END LOOP;
END $$;
CREATE EVENT TRIGGER pg_tviews_bgw_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE')
    EXECUTE FUNCTION _pg_tviews_on_drop();

-- Partitions of partitioned sources created or attached later get their TRUNCATE capture
-- trigger; ATTACH / DETACH PARTITION recompute the TVIEWs over that table.
CREATE FUNCTION _pg_tviews_on_table_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    command record;
BEGIN
    FOR command IN
        SELECT DISTINCT objid, command_tag FROM pg_event_trigger_ddl_commands()
        WHERE command_tag IN ('CREATE TABLE', 'ALTER TABLE') AND object_type = 'table'
    LOOP
        PERFORM @extschema@._pg_tviews_partitions_changed(command.objid, command.command_tag);
    END LOOP;
END $$;
CREATE EVENT TRIGGER pg_tviews_bgw_partitions ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION _pg_tviews_on_table_ddl();
REVOKE EXECUTE ON FUNCTION @extschema@.pg_tviews_repair(text) FROM PUBLIC;

-- Every row write that may change a TVIEW's paused flag (or add or remove a TVIEW) sends a
-- relcache invalidation of pg_tview_meta, which empties each backend's cache of paused flags
-- (catalog/state.rs): sync-mode writers and workers read them from that cache.
CREATE TRIGGER pg_tview_meta_changed
    AFTER INSERT OR DELETE OR UPDATE OF paused, table_oid ON pg_tview_meta
    FOR EACH ROW EXECUTE FUNCTION _pg_tviews_meta_changed();
CREATE TRIGGER pg_tview_meta_truncated AFTER TRUNCATE ON pg_tview_meta
    FOR EACH STATEMENT EXECUTE FUNCTION _pg_tviews_meta_changed();
