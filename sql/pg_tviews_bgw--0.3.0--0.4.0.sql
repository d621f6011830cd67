-- pg_tviews_bgw 0.3.0 -> 0.4.0: never silently stale (2)
--   * metadata references relations as regclass, so pg_dump + restore re-binds it by name;
--   * capture triggers carry their TVIEW's name beside its oid (restored triggers resolve it);
--   * pg_tviews_repair(name => NULL);
--   * the background scrub: drift counters and pass times per TVIEW.
-- Install the new library first; the end of this script rebuilds every TVIEW's capture
-- triggers with the new arguments.
\echo Use "ALTER EXTENSION pg_tviews_bgw UPDATE TO '0.4.0'" to load this file. \quit

-- Relations as regclass (see sql/schema.sql). A column type cannot change under a view or a
-- policy that uses it: drop those, change the columns, create them again as in a fresh install.
DROP VIEW pg_tviews_metrics;
DROP VIEW pg_tviews_queue_realtime;
DROP VIEW pg_tviews_queue_status;
DROP VIEW pg_tviews_dead_letters;
DROP POLICY owner_manages ON pg_tview_meta;
DROP POLICY owner_manages ON pg_tview_lineage;

ALTER TABLE pg_tview_meta
    ALTER COLUMN table_oid TYPE regclass,
    ALTER COLUMN view_oid TYPE regclass,
    ALTER COLUMN dependencies DROP DEFAULT,
    ALTER COLUMN dependencies TYPE regclass[],
    ALTER COLUMN dependencies SET DEFAULT '{}',
    ALTER COLUMN root_table TYPE regclass;
ALTER TABLE pg_tview_lineage
    ALTER COLUMN tview_oid TYPE regclass,
    ALTER COLUMN source_oid TYPE regclass;
ALTER TABLE pg_tview_helpers ALTER COLUMN view_oid TYPE regclass;

-- Background scrub (anti-entropy): per-TVIEW pass time and drift counters, shown in
-- pg_tviews_queue_status and pg_tviews_metrics (pg_tviews_drift_repaired_total).
ALTER TABLE pg_tview_meta
    ADD COLUMN last_scrubbed_at timestamptz,
    ADD COLUMN drift_repaired   bigint,
    ADD COLUMN last_drift_at    timestamptz,
    ADD COLUMN last_pass_drift  bigint;

CREATE POLICY owner_manages ON pg_tview_meta
    USING (@extschema@._pg_tviews_may_manage(table_oid))
    WITH CHECK (@extschema@._pg_tviews_may_manage(table_oid));
CREATE POLICY owner_manages ON pg_tview_lineage
    USING (@extschema@._pg_tviews_may_manage(tview_oid))
    WITH CHECK (@extschema@._pg_tviews_may_manage(tview_oid));

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

CREATE VIEW pg_tviews_dead_letters AS
SELECT m.entity, d.kind, d.key, d.attempts, d.last_error, d.sqlstate, d.first_deferred_at,
       d.next_attempt_at AS last_attempt_after
FROM pg_tview_deferred d
LEFT JOIN pg_tview_meta m ON m.table_oid = d.tview_oid
WHERE d.reason = 'dead';

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


CREATE FUNCTION "pg_tviews_repair"(
	"name" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"entity" TEXT,  /* String */
	"action" TEXT  /* String */
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, @extschema@
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pg_tviews_repair_wrapper';
REVOKE EXECUTE ON FUNCTION @extschema@.pg_tviews_repair(text) FROM PUBLIC;

-- Every TVIEW's capture triggers again, now carrying the TVIEW's name beside its oid.
SELECT @extschema@.pg_tviews_install_stmt_triggers();
