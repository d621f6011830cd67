-- pg_tviews_bgw 0.5.0 -> 0.6.0: one capture trigger family per source table; cached paused flags.
--   * every source table carries one family of tview_* triggers (tview_ins, tview_upd,
--     tview_del, tview_trunc, tview_row; tview_full without lineage; tview_prow and
--     tview_ptrunc on a partitioned table) calling pg_tviews_capture_source with a group of
--     arguments per TVIEW that reads it, instead of a family per TVIEW: a write pays one
--     trigger call and one pass over its transition tables however many TVIEWs it reaches.
--   * pg_tviews_capture stays: triggers of 0.5.0 and earlier (and dumps of that era) keep
--     capturing until their table's triggers are rewritten.
--   * the pg_tview_meta_changed trigger: backends cache paused flags, and every statement
--     that may change one invalidates those caches.
--   * _pg_tviews_note_key: the refresh statement of writing statements (sync mode) hands the
--     keys its view returned through it.
-- Install the new library first; the end of this script rewrites every TVIEW's capture
-- triggers in the new layout.
\echo Use "ALTER EXTENSION pg_tviews_bgw UPDATE TO '0.6.0'" to load this file. \quit

-- The capture trigger of a source table, for every TVIEW that reads it (capture/trigger.rs),
-- as a fresh install defines it.
CREATE  FUNCTION "pg_tviews_capture_source"() RETURNS TRIGGER
LANGUAGE c
AS 'MODULE_PATHNAME', 'pg_tviews_capture_source_wrapper';

-- Existing TVIEWs: one trigger family per source table.
SELECT @extschema@.pg_tviews_install_stmt_triggers();

-- Backends cache TVIEWs' paused flags (catalog/state.rs); every statement that may change
-- one invalidates those caches.
CREATE  FUNCTION "_pg_tviews_meta_changed"() RETURNS TRIGGER
LANGUAGE c
AS 'MODULE_PATHNAME', '_pg_tviews_meta_changed_wrapper';
CREATE TRIGGER pg_tview_meta_changed
    AFTER INSERT OR DELETE OR UPDATE OF paused, table_oid ON pg_tview_meta
    FOR EACH ROW EXECUTE FUNCTION _pg_tviews_meta_changed();
CREATE TRIGGER pg_tview_meta_truncated AFTER TRUNCATE ON pg_tview_meta
    FOR EACH STATEMENT EXECUTE FUNCTION _pg_tviews_meta_changed();

-- Sync-mode refreshes hand the keys their view returned through this (refresh/plans.rs).
CREATE  FUNCTION "_pg_tviews_note_key"(
	"key" bigint /* i64 */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pg_tviews_note_key_wrapper';
