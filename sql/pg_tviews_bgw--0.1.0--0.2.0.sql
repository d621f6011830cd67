-- pg_tviews_bgw 0.1.0 -> 0.2.0
--   * durable journal (pg_tviews_bgw.durability): three rotating journal tables;
--   * partitioned workers (pg_tviews_bgw.workers_per_database): partition columns in
--     pg_tviews_worker_status, recovery counters in pg_tviews_stats, pg_tviews_journal_status;
--   * privileges: owners of source tables create and manage their own TVIEWs (row level
--     security on the metadata), prepared transactions' keys in pg_tview_prepared, cluster-wide
--     functions for superusers only.
-- Install the new library first (it serves both versions' functions); until this script runs,
-- the 0.1.0 monitoring views report an error and recoveries reconcile every TVIEW in full.
\echo Use "ALTER EXTENSION pg_tviews_bgw UPDATE TO '0.2.0'" to load this file. \quit

CREATE TABLE pg_tview_journal_0 (written_at timestamptz NOT NULL, entries bytea NOT NULL)
    WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false);
CREATE TABLE pg_tview_journal_1 (LIKE pg_tview_journal_0)
    WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false);
CREATE TABLE pg_tview_journal_2 (LIKE pg_tview_journal_0)
    WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false);
-- Keys compress poorly and writers should not pay for it: store large rows uncompressed.
ALTER TABLE pg_tview_journal_0 ALTER COLUMN entries SET STORAGE EXTERNAL;
ALTER TABLE pg_tview_journal_1 ALTER COLUMN entries SET STORAGE EXTERNAL;
ALTER TABLE pg_tview_journal_2 ALTER COLUMN entries SET STORAGE EXTERNAL;
-- Writers insert through the extension's commit callback, never through SQL.
REVOKE ALL ON pg_tview_journal_0, pg_tview_journal_1, pg_tview_journal_2 FROM PUBLIC;

-- Keys of prepared transactions (PREPARE TRANSACTION), written with the transaction itself
-- so they appear exactly at COMMIT PREPARED and vanish with ROLLBACK PREPARED; the worker
-- moves them to pg_tview_deferred. Same row format as the journal; writers insert through
-- the extension's PRE_PREPARE callback, never through SQL.
CREATE TABLE pg_tview_prepared (written_at timestamptz NOT NULL, entries bytea NOT NULL);
REVOKE ALL ON pg_tview_prepared FROM PUBLIC;

-- Who may change the rows of a TVIEW in the tables below: members of the role owning its
-- table (or anyone once the table is gone, to clean up after DROP TABLE). Superusers, and so
-- the workers, bypass row level security.
CREATE FUNCTION _pg_tviews_may_manage(table_oid oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog
AS $$ SELECT coalesce((SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = table_oid), true) $$;

-- Metadata is readable by everyone (the runbook queries it, and refreshes run as each TVIEW's
-- owner, who must be able to read its own lineage). Owners of TVIEW tables create, change and
-- drop their TVIEWs' rows through the pg_tviews_* functions; nobody touches anyone else's.
GRANT SELECT ON pg_tview_meta, pg_tview_lineage, pg_tview_helpers, pg_tview_deferred TO PUBLIC;
GRANT INSERT, UPDATE, DELETE ON pg_tview_meta, pg_tview_lineage, pg_tview_deferred TO PUBLIC;
ALTER TABLE pg_tview_meta ENABLE ROW LEVEL SECURITY;
ALTER TABLE pg_tview_lineage ENABLE ROW LEVEL SECURITY;
ALTER TABLE pg_tview_deferred ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON pg_tview_meta FOR SELECT USING (true);
CREATE POLICY owner_manages ON pg_tview_meta
    USING (@extschema@._pg_tviews_may_manage(table_oid))
    WITH CHECK (@extschema@._pg_tviews_may_manage(table_oid));
CREATE POLICY read_all ON pg_tview_lineage FOR SELECT USING (true);
CREATE POLICY owner_manages ON pg_tview_lineage
    USING (@extschema@._pg_tviews_may_manage(tview_oid))
    WITH CHECK (@extschema@._pg_tviews_may_manage(tview_oid));
CREATE POLICY read_all ON pg_tview_deferred FOR SELECT USING (true);
CREATE POLICY owner_manages ON pg_tview_deferred
    USING (@extschema@._pg_tviews_may_manage(tview_oid))
    WITH CHECK (@extschema@._pg_tviews_may_manage(tview_oid));
-- 0.1.0 wrote the keys of prepared transactions straight into pg_tview_deferred; those rows
-- stay valid and are applied as before.

REVOKE EXECUTE ON FUNCTION @extschema@._pg_tviews_attach_database() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.pg_tviews_install_stmt_triggers() FROM PUBLIC;

-- Per-TVIEW mode (pg_tview_meta.mode): set with pg_tviews_set_mode.
CREATE FUNCTION "pg_tviews_set_mode"(
	"name" TEXT, /* & str */
	"mode" TEXT /* & str */
) RETURNS TEXT /* String */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pg_tviews_set_mode_wrapper';

-- The monitoring functions changed shape: drop the views built on them, then recreate all.
DROP VIEW pg_tviews_metrics;
DROP VIEW pg_tviews_worker_status;
DROP VIEW pg_tviews_stats;
DROP FUNCTION _pg_tviews_worker_stats();
DROP FUNCTION _pg_tviews_counters();

CREATE FUNCTION "_pg_tviews_counters"() RETURNS TABLE (
	"enqueued" bigint,  /* i64 */
	"applied" bigint,  /* i64 */
	"overflowed" bigint,  /* i64 */
	"published_txns" bigint,  /* i64 */
	"recoveries" bigint,  /* i64 */
	"journal_rows" bigint,  /* i64 */
	"journal_truncations" bigint,  /* i64 */
	"shared_memory" bool  /* bool */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pg_tviews_counters_wrapper';

CREATE FUNCTION "_pg_tviews_worker_stats"() RETURNS TABLE (
	"pid" INT,  /* Option < i32 > */
	"datid" oid,  /* pg_sys :: Oid */
	"slot" INT,  /* i32 */
	"partition" INT,  /* i32 */
	"partitions" INT,  /* i32 */
	"state" TEXT,  /* String */
	"current_tview" oid,  /* Option < pg_sys :: Oid > */
	"pending" bigint,  /* i64 */
	"capacity" bigint,  /* i64 */
	"recovery_pending" bool,  /* bool */
	"batches" bigint,  /* i64 */
	"rows" bigint,  /* i64 */
	"avg_batch_ms" double precision,  /* Option < f64 > */
	"started_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"last_activity" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"last_error" TEXT,  /* Option < String > */
	"last_error_at" timestamp with time zone  /* Option < TimestampWithTimeZone > */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pg_tviews_worker_stats_wrapper';

CREATE FUNCTION "_pg_tviews_journal_stats"() RETURNS TABLE (
	"journal_table" INT,  /* i32 */
	"state" TEXT,  /* String */
	"writers_in_flight" bigint,  /* i64 */
	"rows_since_current" bigint  /* i64 */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pg_tviews_journal_stats_wrapper';

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
          WHERE avg_batch_ms IS NOT NULL;
