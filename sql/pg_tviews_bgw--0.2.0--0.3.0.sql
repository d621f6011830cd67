-- pg_tviews_bgw 0.2.0 -> 0.3.0: never silently stale (1)
--   * every generated statement is schema-qualified, and the extension's functions pin
--     search_path = pg_catalog, <extension schema>: TVIEWs and sources in any schema, the
--     extension in its own schema, any session or database search_path;
--   * capture on partitions (row trigger on the parent, cloned onto every partition, TRUNCATE
--     triggers on each partition, partition DDL event trigger), on logical-replication
--     subscribers (row triggers that fire under session_replication_role = replica);
--   * a creation-time analysis of the whole query tree: self-references, aliased keys, and
--     refusals of reads no trigger can capture (opt-in: reconcile_interval);
--   * pg_tviews_explain(name).
-- Install the new library first; the end of this script rebuilds every TVIEW's capture
-- triggers in the new layout.
\echo Use "ALTER EXTENSION pg_tviews_bgw UPDATE TO '0.3.0'" to load this file. \quit

-- Only the extension writes its metadata (the functions check ownership, then write as the
-- extension's owner): plain DML could squat TVIEW names.
REVOKE INSERT, UPDATE, DELETE ON pg_tview_meta, pg_tview_lineage, pg_tview_deferred FROM PUBLIC;

ALTER TABLE pg_tview_meta
    ADD COLUMN root_key text,
    ADD COLUMN reconcile_interval interval CHECK (reconcile_interval > interval '0'),
    ADD COLUMN last_reconciled_at timestamptz;

ALTER FUNCTION _pg_tviews_attach_database() SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION _pg_tviews_counters() SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION _pg_tviews_forget(oid) SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION _pg_tviews_journal_stats() SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION _pg_tviews_queue_stats() SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION _pg_tviews_wait_ms(bigint) SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION _pg_tviews_worker_stats() SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_cascade(oid, bigint) SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_check_jsonb_ivm() SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_drop(text, boolean) SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_health_check() SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_install_stmt_triggers() SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_pause(text) SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_refresh(text) SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_resume(text) SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_retry_failed(text) SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_set_mode(text, text) SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_staged_keys() SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_verify(text) SET search_path TO pg_catalog, @extschema@;
ALTER FUNCTION pg_tviews_version() SET search_path TO pg_catalog, @extschema@;

-- The opt-in for reads no trigger captures: an overload, so the two-argument function stays.
CREATE FUNCTION "pg_tviews_create"(
	"name" TEXT, /* & str */
	"query" TEXT, /* & str */
	"reconcile_interval" interval /* pgrx :: datum :: Interval */
) RETURNS TEXT /* String */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pg_tviews_create_reconciled_wrapper';

CREATE FUNCTION "pg_tviews_explain"(
	"name" TEXT /* & str */
) RETURNS TABLE (
	"source" TEXT,  /* String */
	"capture" TEXT,  /* String */
	"captured_column" TEXT,  /* Option < String > */
	"reaches" TEXT  /* String */
)
STRICT VOLATILE PARALLEL SAFE
SET search_path TO pg_catalog, @extschema@
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pg_tviews_explain_wrapper';

CREATE FUNCTION "_pg_tviews_partitions_changed"(
	"table_oid" oid, /* pg_sys :: Oid */
	"command_tag" TEXT /* & str */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, @extschema@
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pg_tviews_partitions_changed_wrapper';

CREATE FUNCTION "_pg_tviews_trigger_dropped"(
	"trigger_name" TEXT /* & str */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, @extschema@
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pg_tviews_trigger_dropped_wrapper';

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
       coalesce(d.blocked, 0)                          AS blocked
FROM pg_tview_meta m
LEFT JOIN @extschema@._pg_tviews_queue_stats() s ON s.table_oid = m.table_oid
LEFT JOIN (SELECT tview_oid,
                  count(*) FILTER (WHERE reason = 'failed') AS retrying,
                  count(*) FILTER (WHERE reason = 'dead')   AS dead,
                  count(*) FILTER (WHERE reason = 'paused') AS parked,
                  count(*) FILTER (WHERE reason = 'failed' AND sqlstate = '55P03') AS blocked
           FROM pg_tview_deferred GROUP BY tview_oid) d ON d.tview_oid = m.table_oid;

CREATE OR REPLACE FUNCTION _pg_tviews_on_drop() RETURNS event_trigger
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

-- Existing TVIEWs: their capture triggers in the new layout (row triggers for replicas and
-- partitions, TRUNCATE triggers on every partition).
SELECT @extschema@.pg_tviews_install_stmt_triggers();
