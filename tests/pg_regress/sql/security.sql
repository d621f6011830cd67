-- Privileges. Owners of source tables create and manage their own TVIEWs without superuser
-- rights; nobody changes anyone else's TVIEW or reads a source through one; writers need no
-- privilege on the extension's tables; cluster-wide functions are for superusers.
CREATE ROLE tv_alice;   -- owns tb_secret and tv_secret
CREATE ROLE tv_bob;     -- no privilege on alice's tables
CREATE ROLE tv_carol;   -- may only write tb_secret
GRANT CREATE ON SCHEMA public TO tv_alice, tv_bob;

SET ROLE tv_alice;
CREATE TABLE tb_secret (pk_secret bigint PRIMARY KEY, body text NOT NULL);
INSERT INTO tb_secret VALUES (1, 'alice only'), (2, 'second');
SELECT pg_tviews_create('tv_secret', $$SELECT pk_secret, jsonb_build_object('body', body) AS data FROM tb_secret$$);
GRANT SELECT, UPDATE ON tb_secret TO tv_carol;
RESET ROLE;
SELECT entity, table_oid::regclass, pg_get_userbyid(c.relowner) AS owner
FROM pg_tview_meta m JOIN pg_class c ON c.oid = m.table_oid WHERE entity = 'secret';

SET ROLE tv_bob;
-- His own root table joined with alice's source: no SELECT on it, so no TVIEW over it (the
-- worker, a superuser, would otherwise read it for him), and nothing left behind.
CREATE TABLE tb_stolen (pk_stolen bigint PRIMARY KEY);
INSERT INTO tb_stolen VALUES (1), (2);
SELECT pg_tviews_create('tv_stolen', $$
    SELECT t.pk_stolen, jsonb_build_object('body', s.body) AS data
    FROM tb_stolen t JOIN tb_secret s ON s.pk_secret = t.pk_stolen$$);
\echo :LAST_ERROR_SQLSTATE
SELECT to_regclass('v_stolen') AS view, to_regclass('tv_stolen') AS tview,
       (SELECT count(*) FROM pg_trigger WHERE encode(tgargs, 'escape') LIKE '%tv\_stolen%') AS triggers;
DROP TABLE tb_stolen;
-- Alice's TVIEW is not readable, and not his to change.
SELECT * FROM tv_secret;
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_drop('tv_secret');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_pause('tv_secret');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_resume('tv_secret');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_refresh('tv_secret');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_retry_failed('tv_secret');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_set_mode('tv_secret', 'sync');
\echo :LAST_ERROR_SQLSTATE
-- The metadata is readable, but only the extension writes it: plain DML is refused.
SELECT count(*) AS visible FROM pg_tview_meta WHERE entity = 'secret';
UPDATE pg_tview_meta SET paused = true WHERE entity = 'secret';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM pg_tview_lineage;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO pg_tview_meta (entity, table_oid, view_oid, definition, key_column)
VALUES ('fake', 'tv_secret'::regclass, 'tv_secret'::regclass, 'x', 'pk_fake');
\echo :LAST_ERROR_SQLSTATE
-- Nobody can squat a TVIEW name with a row for a table that does not exist.
INSERT INTO pg_tview_meta (entity, table_oid, view_oid, definition, key_column)
VALUES ('squatted', 999999, 999999, 'x', 'pk_squatted');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO pg_tview_deferred (tview_oid, kind, key, reason) VALUES ('tv_secret'::regclass, 0, 1, 'dead');
\echo :LAST_ERROR_SQLSTATE
-- The DROP TABLE cleanup entry point does nothing to a TVIEW whose table still exists.
SELECT _pg_tviews_forget('tv_secret'::regclass);
-- Journal tables and cluster-wide functions are off limits.
INSERT INTO pg_tview_journal_0 VALUES (now(), '\x01000000');
\echo :LAST_ERROR_SQLSTATE
SELECT _pg_tviews_attach_database();
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_install_stmt_triggers();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT entity, paused, (SELECT count(*) FROM pg_tview_lineage l WHERE l.tview_oid = m.table_oid) AS lineage_rows
FROM pg_tview_meta m WHERE entity IN ('secret', 'fake');

-- Carol only writes the source: her commits are journaled and applied, and her prepared
-- transactions too, although she has no privilege on any extension table.
SET ROLE tv_carol;
UPDATE tb_secret SET body = 'carol was here' WHERE pk_secret = 1;
SELECT pg_tviews_wait('30s') AS applied;
BEGIN;
UPDATE tb_secret SET body = 'prepared by carol' WHERE pk_secret = 2;
PREPARE TRANSACTION 'carol_2pc';
RESET ROLE;
COMMIT PREPARED 'carol_2pc';
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN (SELECT data->>'body' FROM tv_secret WHERE pk_secret = 2) = 'prepared by carol';
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT pk_secret, data->>'body' AS body FROM tv_secret ORDER BY 1;
SELECT count(*) AS differences FROM pg_tviews_verify('tv_secret');

-- Alice manages her own TVIEW, then drops it.
SET ROLE tv_alice;
SELECT pg_tviews_pause('tv_secret');
SELECT pg_tviews_resume('tv_secret');
SELECT pg_tviews_refresh('tv_secret');
SELECT pg_tviews_drop('tv_secret');
RESET ROLE;
SELECT count(*) AS left_behind FROM pg_tview_meta WHERE entity = 'secret';

DROP TABLE tb_secret;
REVOKE CREATE ON SCHEMA public FROM tv_alice, tv_bob;
DROP ROLE tv_alice, tv_bob, tv_carol;

-- Hostile names never reach generated SQL: TVIEW names are lower-case identifiers.
CREATE TABLE tb_name (pk_name bigint PRIMARY KEY);
SELECT pg_tviews_create($n$tv_x"; DROP TABLE tb_name; --$n$, 'SELECT pk_name AS pk_x, ''{}''::jsonb AS data FROM tb_name');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_create('tv_café', 'SELECT pk_name, ''{}''::jsonb AS data FROM tb_name');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_create('tv_' || repeat('n', 61), 'SELECT pk_name, ''{}''::jsonb AS data FROM tb_name');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_create('tv_Name', 'SELECT pk_name, ''{}''::jsonb AS data FROM tb_name');
\echo :LAST_ERROR_SQLSTATE
SELECT to_regclass('tb_name') IS NOT NULL AS still_there,
       count(*) FILTER (WHERE entity <> 'post') AS new_tviews FROM pg_tview_meta;
DROP TABLE tb_name;
