-- pg_tviews_create refuses invalid names and definitions (no integer pk_<entity> from a table,
-- no jsonb data column, an invalid query, duplicate keys) and never replaces an existing
-- tv_<entity> or v_<entity>; a failed create leaves nothing behind. Errors show message,
-- DETAIL and HINT, then their SQLSTATE.
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

DROP VIEW leftovers;
DROP TABLE tb_post;
