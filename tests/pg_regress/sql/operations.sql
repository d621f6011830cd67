-- DDL spellings (CREATE TABLE tv_x AS / DROP TABLE tv_x), sync mode (per session and per
-- TVIEW), and the manual operations of the runbook: verify, cascade, reinstalling triggers,
-- health check.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_user (pk_user int PRIMARY KEY, name text NOT NULL);
CREATE TABLE tb_post (pk_post int PRIMARY KEY, fk_user int REFERENCES tb_user, title text NOT NULL);
INSERT INTO tb_user VALUES (1, 'ada'), (2, 'grace');
INSERT INTO tb_post VALUES (1, 1, 'one'), (2, 1, 'two'), (3, 2, 'three');

-- CREATE TABLE tv_<entity> AS is a TVIEW, with lineage and indexes.
CREATE TABLE tv_post AS
SELECT p.pk_post, p.fk_user, jsonb_build_object('title', p.title, 'author', u.name) AS data
FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_user;
SELECT entity, key_column, fk_columns FROM pg_tview_meta;
SELECT source_oid::regclass AS source, capture_column, rule >= 2 AS resolved
FROM pg_tview_lineage ORDER BY source_oid::regclass::text, capture_column;
SELECT indexname FROM pg_indexes WHERE tablename = 'tv_post' ORDER BY 1;

-- A column list cannot be kept by a TVIEW: refused, and no plain tv_ table is left.
CREATE TABLE tv_user (pk_user, data) AS SELECT pk_user, to_jsonb(name) FROM tb_user;
\echo :LAST_ERROR_SQLSTATE
SELECT to_regclass('tv_user') IS NULL AS no_plain_table;

-- Sync mode: the TVIEW shows the change inside the writing transaction.
SET pg_tviews_bgw.mode = sync;
BEGIN;
UPDATE tb_user SET name = 'ada lovelace' WHERE pk_user = 1;
SELECT pk_post, data->>'author' AS author FROM tv_post ORDER BY pk_post;
COMMIT;
RESET pg_tviews_bgw.mode;
-- Sync mode still queues the keys for the worker's confirming refresh; let it finish so the
-- DDL below does not race it.
SELECT pg_tviews_wait('5s');
SHOW pg_tviews_bgw.mode;

-- Sync mode of one TVIEW: every session sees its own writes in tv_post, without SET.
SELECT pg_tviews_set_mode('tv_post', 'sync');
SELECT mode FROM pg_tview_meta WHERE entity = 'post';
SELECT count(*) AS sync_triggers FROM pg_trigger
WHERE tgname LIKE 'tview\_post\_%' AND encode(tgargs, 'escape') LIKE '%:sync%';
BEGIN;
UPDATE tb_post SET title = 'one, edited' WHERE pk_post = 1;
SELECT pk_post, data->>'title' AS title FROM tv_post WHERE pk_post = 1;
ROLLBACK;
SELECT pg_tviews_set_mode('post', 'ASYNC');
SELECT pg_tviews_set_mode('tv_post', 'eventually');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_set_mode('tv_nope', 'sync');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_wait('5s');

-- verify: nothing differs; then damage two rows behind the extension's back.
SELECT * FROM pg_tviews_verify('tv_post');
UPDATE tv_post SET data = '{}' WHERE pk_post = 2;
DELETE FROM tv_post WHERE pk_post = 3;
SELECT * FROM pg_tviews_verify('post');
-- cascade re-queues exactly the rows fed by a source row; the worker repairs them.
SELECT pg_tviews_cascade('tb_post'::regclass::oid, 2) AS staged_from_post,
       pg_tviews_cascade('tb_user'::regclass::oid, 2) AS staged_from_user;
SELECT pg_tviews_wait('5s');
SELECT * FROM pg_tviews_verify('tv_post');

-- Reinstalling triggers after someone dropped one.
DROP TRIGGER tview_post_upd ON tb_user;
SELECT check_name, status FROM pg_tviews_health_check() WHERE check_name = 'triggers';
SELECT pg_tviews_install_stmt_triggers();
SELECT check_name, status FROM pg_tviews_health_check() WHERE check_name = 'triggers';
SELECT tgrelid::regclass AS on_table, count(*) FROM pg_trigger
WHERE tgname LIKE 'tview\_post\_%' GROUP BY 1 ORDER BY tgrelid::regclass::text;
-- A disabled capture trigger is as bad as a missing one.
ALTER TABLE tb_user DISABLE TRIGGER tview_post_row;
SELECT check_name, status FROM pg_tviews_health_check() WHERE check_name = 'triggers';
ALTER TABLE tb_user ENABLE REPLICA TRIGGER tview_post_row;
SELECT check_name, status FROM pg_tviews_health_check() WHERE check_name = 'triggers';

-- The health check's rows (statuses depend on timing, so only names here; refresh_errors
-- and enabled only appear when there is something to report).
SELECT check_name FROM pg_tviews_health_check()
WHERE check_name NOT IN ('refresh_errors', 'enabled') ORDER BY 1;
SELECT pg_tviews_check_jsonb_ivm();

-- Metrics for scrapers: stable names, labels identify the TVIEW or database.
SELECT name, labels ? 'tview' AS per_tview FROM pg_tviews_metrics GROUP BY 1, 2 ORDER BY 1;
SELECT value FROM pg_tviews_metrics WHERE name = 'pg_tviews_pending_keys' AND labels->>'tview' = 'post';
SELECT entity, pending, applied > 0 AS applied FROM pg_tviews_queue_realtime;

-- Errors.
SELECT * FROM pg_tviews_verify('tv_nothing');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE no_key (x int);
SELECT pg_tviews_cascade('no_key'::regclass::oid, 1);
\echo :LAST_ERROR_SQLSTATE
DROP TABLE no_key;

-- DROP TABLE tv_<entity> removes the view, triggers, lineage and metadata too.
DROP TABLE tv_post;
SELECT (SELECT count(*) FROM pg_tview_meta) AS meta,
       (SELECT count(*) FROM pg_tview_lineage) AS lineage,
       (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tview\_%') AS triggers,
       to_regclass('v_post') IS NULL AS view_gone;
DROP TABLE tb_post, tb_user;
