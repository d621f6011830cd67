-- pg_tviews_bgw 0.3.0 -> 0.4.0: never silently stale (2)
\echo Use "ALTER EXTENSION pg_tviews_bgw UPDATE TO '0.4.0'" to load this file. \quit

-- Background scrub (anti-entropy): per-TVIEW pass time and drift counters, shown in
-- pg_tviews_queue_status and pg_tviews_metrics (pg_tviews_drift_repaired_total).
ALTER TABLE pg_tview_meta
    ADD COLUMN last_scrubbed_at timestamptz,
    ADD COLUMN drift_repaired   bigint,
    ADD COLUMN last_drift_at    timestamptz,
    ADD COLUMN last_pass_drift  bigint;

CREATE OR REPLACE VIEW pg_tviews_queue_status AS
SELECT m.entity,
       m.table_oid::regclass                          AS tview,
       m.table_oid,
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

CREATE OR REPLACE VIEW pg_tviews_metrics AS
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
