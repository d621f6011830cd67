-- TVIEWs and sources in any schema, from any search_path: generated statements are
-- schema-qualified, CREATE TABLE app.tv_x AS creates the TVIEW in app, and names longer than
-- PostgreSQL's 63 bytes get the name error.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE SCHEMA app;
CREATE TABLE app.tb_thing (pk_thing int PRIMARY KEY, fk_owner int, name text NOT NULL);
CREATE TABLE app.tb_owner (pk_owner int PRIMARY KEY, name text NOT NULL);
INSERT INTO app.tb_owner VALUES (1, 'ann'), (2, 'bob');
INSERT INTO app.tb_thing VALUES (1, 1, 'lamp'), (2, 2, 'desk');
SET search_path = app, public;
CREATE TABLE app.tv_thing AS
    SELECT t.pk_thing, t.fk_owner, jsonb_build_object('name', t.name, 'owner', o.name) AS data
    FROM tb_thing t JOIN tb_owner o ON o.pk_owner = t.fk_owner;
RESET search_path;
SELECT entity, table_oid::regclass, view_oid::regclass FROM pg_tview_meta WHERE entity = 'thing';
-- Stored lineage names its tables with their schema.
SELECT source_oid::regclass, resolve_sql FROM pg_tview_lineage
WHERE tview_oid = 'app.tv_thing'::regclass ORDER BY 1;
-- Writes from a session whose search_path has neither app nor the extension converge.
SET search_path = pg_catalog;
UPDATE app.tb_owner SET name = 'ANN' WHERE pk_owner = 1;
SELECT public.pg_tviews_wait();
SELECT pk_thing, data->>'owner' AS owner FROM app.tv_thing ORDER BY 1;
RESET search_path;

-- Names: too long for PostgreSQL (it would truncate them) in either spelling.
SELECT pg_tviews_create('tv_' || repeat('n', 70), 'SELECT pk_thing, ''{}''::jsonb AS data FROM app.tb_thing');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE tv_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa AS
    SELECT pk_thing, '{}'::jsonb AS data FROM app.tb_thing;
\echo :LAST_ERROR_SQLSTATE
-- A schema that does not exist.
SELECT pg_tviews_create('nowhere.tv_thing2', 'SELECT pk_thing AS pk_thing2, ''{}''::jsonb AS data FROM app.tb_thing');
\echo :LAST_ERROR_SQLSTATE

DROP TABLE app.tv_thing;
SELECT count(*) AS left_behind FROM pg_tview_meta WHERE entity = 'thing';
DROP SCHEMA app CASCADE;
