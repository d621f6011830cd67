-- TVIEW life cycle: pg_tviews_create / pg_tviews_refresh / pg_tviews_drop, their catalog rows,
-- triggers and error reports. Errors show message, DETAIL and HINT, then their SQLSTATE.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_post (
    pk_post bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id      uuid NOT NULL,
    title   text NOT NULL
);
INSERT INTO tb_post (id, title)
SELECT md5('post' || i)::uuid, 'post ' || i FROM generate_series(1, 3) i;

-- Nothing is left behind by a failed pg_tviews_create: checked after every error below.
CREATE VIEW leftovers AS
SELECT 'relation ' || relname AS leftover FROM pg_class
WHERE relname ~ '^(tv|v)_(post|nopk|x|y)$' AND relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE 'tview\_%'
UNION ALL
SELECT 'meta ' || entity FROM pg_tview_meta
ORDER BY 1;

-- Invalid names: the entity must be a lower-case identifier.
SELECT pg_tviews_create('Bad-Name', $$SELECT pk_post, id FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_create('tv_', $$SELECT pk_post, id FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE

-- The query must return pk_<entity>...
SELECT pg_tviews_create('tv_post', $$SELECT id, jsonb_build_object('title', title) AS data FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM leftovers;
-- ... as an integer column.
SELECT pg_tviews_create('tv_post', $$SELECT pk_post::text AS pk_post, id FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM leftovers;
-- ... read from a table that has that column.
SELECT pg_tviews_create('tv_post', $$SELECT 1::bigint AS pk_post, '{}'::jsonb AS data$$);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM leftovers;
-- An invalid query is reported as such.
SELECT pg_tviews_create('tv_post', $$SELECT pk_post, nosuchcolumn FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM leftovers;
-- The read model is a jsonb column named data...
SELECT pg_tviews_create('tv_post', $$SELECT pk_post, id FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM leftovers;
-- ... jsonb, not json or text.
SELECT pg_tviews_create('tv_post', $$SELECT pk_post, json_build_object('t', title) AS data FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM leftovers;
-- Keys must be unique in the result (they become tv_post's primary key).
SELECT pg_tviews_create('tv_post', $$SELECT 1::bigint AS pk_post, '{}'::jsonb AS data FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM leftovers;

-- Existing relations named tv_<entity> or v_<entity> are never replaced.
CREATE TABLE tv_x (pk_x bigint);
SELECT pg_tviews_create('tv_x', $$SELECT pk_post AS pk_x FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE
CREATE VIEW v_y AS SELECT 1 AS pk_y;
SELECT pg_tviews_create('tv_y', $$SELECT pk_post AS pk_y FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE
DROP TABLE tv_x;
DROP VIEW v_y;
SELECT * FROM leftovers;

-- A valid TVIEW: tv_post is materialized from its backing view v_post.
SELECT pg_tviews_create('tv_post', $$
    SELECT pk_post, id, jsonb_build_object('title', title) AS data FROM tb_post;
$$);
SELECT pk_post, data FROM tv_post ORDER BY pk_post;
SELECT (SELECT count(*) FROM (TABLE tv_post EXCEPT ALL TABLE v_post) a) AS missing_in_view,
       (SELECT count(*) FROM (TABLE v_post EXCEPT ALL TABLE tv_post) b) AS missing_in_tview;
SELECT pg_get_constraintdef(oid) AS tv_post_key FROM pg_constraint
WHERE conrelid = 'tv_post'::regclass AND contype = 'p';

-- Its catalog row.
SELECT entity,
       table_oid = 'tv_post'::regclass AS table_is_tv_post,
       view_oid = 'v_post'::regclass AS view_is_v_post,
       ARRAY(SELECT d::regclass::text FROM unnest(dependencies) d ORDER BY 1) AS dependencies,
       root_table = 'tb_post'::regclass AS root_is_tb_post,
       fk_columns, key_column, mode, paused, definition
FROM pg_tview_meta;

-- Statement-level capture triggers on the root table (the TVIEW's oid is masked).
SELECT tgname, replace(pg_get_triggerdef(t.oid), m.table_oid::oid::text, '<tv_post>') AS definition
FROM pg_trigger t, pg_tview_meta m
WHERE t.tgrelid = 'tb_post'::regclass AND NOT t.tgisinternal
ORDER BY tgname;

-- A second create of the same TVIEW, by either spelling (tv_post or the bare entity post).
SELECT pg_tviews_create('tv_post', $$SELECT pk_post, id FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_create('post', $$SELECT pk_post, id FROM tb_post$$);
\echo :LAST_ERROR_SQLSTATE

-- pg_tviews_refresh recomputes in the caller's transaction and returns the rows it wrote:
-- none when tv_post is up to date.
SELECT pg_tviews_refresh('tv_post');
-- It also queued a full refresh for the worker (whose refresh after our commit must be the
-- last word next to concurrent writers); let it finish before the next transaction.
SELECT pg_tviews_wait('30s') AS drained;
-- Two changed rows, one removed, one added (the tv_post edits themselves are not tracked).
BEGIN;
UPDATE tb_post SET title = title || ' (edited)' WHERE pk_post <= 2;
DELETE FROM tv_post WHERE pk_post = 3;
INSERT INTO tv_post VALUES (42, md5('stray')::uuid, '{}');
SELECT pg_tviews_refresh('tv_post');
SELECT pk_post, data FROM tv_post ORDER BY pk_post;
COMMIT;
-- The entity name alone is accepted too.
SELECT pg_tviews_refresh('post');
SELECT pg_tviews_refresh('tv_nope');
\echo :LAST_ERROR_SQLSTATE

-- Drop removes the table, the view, the triggers and the catalog row.
SELECT pg_tviews_drop('tv_post');
SELECT * FROM leftovers;
SELECT pg_tviews_drop('tv_post');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_drop('tv_post', true);
SELECT pg_tviews_drop('post', if_exists => true);

-- A TVIEW that joins a parent table: capture triggers on both tables, lineage from the foreign key.
CREATE TABLE tb_author (
    pk_author bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name      text NOT NULL
);
INSERT INTO tb_author (name) VALUES ('ada'), ('grace');
ALTER TABLE tb_post ADD COLUMN fk_author bigint REFERENCES tb_author;
UPDATE tb_post SET fk_author = 1 + pk_post % 2;
SELECT pg_tviews_create('tv_post', $$
    SELECT p.pk_post, p.id, p.fk_author,
           jsonb_build_object('title', p.title, 'author', a.name) AS data
    FROM tb_post p JOIN tb_author a ON a.pk_author = p.fk_author
$$);
SELECT pk_post, fk_author, data FROM tv_post ORDER BY pk_post;
SELECT ARRAY(SELECT d::regclass::text FROM unnest(dependencies) d ORDER BY 1) AS dependencies,
       root_table::regclass AS root_table,
       fk_columns
FROM pg_tview_meta;
SELECT tgrelid::regclass AS on_table, tgname FROM pg_trigger
WHERE tgname LIKE 'tview\_%' ORDER BY tgrelid::regclass::text, tgname;
SELECT pg_tviews_drop('tv_post');
SELECT * FROM leftovers;

DROP VIEW leftovers;
DROP TABLE tb_post, tb_author;
