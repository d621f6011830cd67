-- Catalog of TVIEWs in this database. Read by user backends (create/drop) and drainers.
-- Relations are referenced as regclass, never as bare oids: pg_dump writes a regclass as the
-- relation's qualified name and a restore reads it back as the new database's oid, so the
-- metadata restored with these tables (pg_extension_config_dump) points at the restored
-- relations. pg_upgrade keeps relation oids, so regclass columns are fine there too.
CREATE TABLE pg_tview_meta (
    entity       text        PRIMARY KEY,
    table_oid    regclass    NOT NULL UNIQUE,
    view_oid     regclass    NOT NULL,
    definition   text        NOT NULL,
    dependencies regclass[]  NOT NULL DEFAULT '{}',
    fk_columns   text[]      NOT NULL DEFAULT '{}',
    key_column   text        NOT NULL,
    root_table   regclass,
    mode         text        NOT NULL DEFAULT 'async' CHECK (mode IN ('async', 'sync')),
    paused       boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- The root table's column the keys are selected from (pk_post of a TVIEW keyed
    -- pk_post AS pk_post_card); NULL: the same name as key_column.
    root_key     text,
    -- Opt-in for reads that cannot be captured (pg_tviews_create(..., reconcile_interval)):
    -- the worker recomputes the whole TVIEW this often; NULL: every read is captured.
    reconcile_interval interval CHECK (reconcile_interval > interval '0'),
    last_reconciled_at timestamptz,
    -- The background scrub (pg_tviews_bgw.scrub_interval): when it last completed a pass over
    -- this TVIEW, rows it repaired in all (drift: they differed from the query although every
    -- committed change was applied), when it last did, and how many in the last pass. NULL
    -- counts are 0 (pg_tviews_create fills only the columns it knows).
    last_scrubbed_at timestamptz,
    drift_repaired   bigint,
    last_drift_at    timestamptz,
    last_pass_drift  bigint
);
COMMENT ON TABLE pg_tview_meta IS 'One row per TVIEW (tv_<entity>) managed by pg_tviews_bgw';

-- Helper views that TVIEW definitions build on (kept for the runbook's reset procedure).
CREATE TABLE pg_tview_helpers (
    helper_name  text        PRIMARY KEY,
    view_oid     regclass,
    used_by      text[]      NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- How changed rows of each source table map to TVIEW keys (see ARCHITECTURE.md "Lineage").
-- rule: 0 = the captured values are TVIEW keys, 1 = any change refreshes the whole TVIEW,
-- >= 2 = resolve_sql maps the values to keys, -1 = not captured at all (a foreign table, a
-- materialized view, a volatile function: only the reconcile_interval keeps it fresh).
CREATE TABLE pg_tview_lineage (
    tview_oid      regclass NOT NULL,
    source_oid     regclass NOT NULL,
    rule           integer NOT NULL,
    capture_column text    NOT NULL,
    resolve_sql    text,
    description    text    NOT NULL,
    PRIMARY KEY (tview_oid, source_oid, capture_column)
);

-- Keys taken out of the shared-memory queue without being applied, kept durably:
--   paused: the TVIEW is paused (pg_tviews_pause); applied after pg_tviews_resume;
--   failed: the refresh raised an error; retried with backoff by the worker;
--   dead:   failed pg_tviews_bgw.max_retries times; kept until pg_tviews_retry_failed();
--   prepared: keys of a committed prepared transaction (moved here from pg_tview_prepared).
-- kind: 0 = key of the TVIEW, 1 = full refresh, >= 2 = value of lineage rule `kind`.
CREATE TABLE pg_tview_deferred (
    tview_oid       oid         NOT NULL,
    kind            integer     NOT NULL,
    key             bigint      NOT NULL,
    reason          text        NOT NULL CHECK (reason IN ('paused', 'failed', 'dead', 'prepared')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    sqlstate        text,
    first_deferred_at timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tview_oid, kind, key)
);
CREATE INDEX ON pg_tview_deferred (reason, next_attempt_at);

-- The durable journal (pg_tviews_bgw.durability = journal; ARCHITECTURE.md "Journal rotation").
-- Every transaction that changes a TVIEW source appends one row with all its keys at
-- PRE_COMMIT, so the row commits (and is WAL-logged) with the change itself. Writers append to
-- one table at a time; the worker TRUNCATEs a table once every key in it is applied, instead
-- of deleting rows (no bloat, no vacuum). Read back in full only after a restart, a crash or a
-- queue overflow. entries: a 4-byte format version, then 16 bytes per key.
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

SELECT pg_catalog.pg_extension_config_dump('pg_tview_meta', '');
SELECT pg_catalog.pg_extension_config_dump('pg_tview_lineage', '');
SELECT pg_catalog.pg_extension_config_dump('pg_tview_helpers', '');

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
-- owner, who must be able to read its own lineage). Only the extension writes it: the
-- pg_tviews_* functions check that the caller owns the TVIEW, then write as the extension's
-- owner. Nobody can squat a TVIEW name or rewrite another's lineage with plain DML; the
-- policies below stay as a second line.
GRANT SELECT ON pg_tview_meta, pg_tview_lineage, pg_tview_helpers, pg_tview_deferred TO PUBLIC;
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
