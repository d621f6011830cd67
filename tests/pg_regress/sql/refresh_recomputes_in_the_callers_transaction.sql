-- pg_tviews_refresh recomputes a TVIEW in the caller's transaction, writing only the rows that
-- differ and returning how many; it accepts the entity name alone and refuses an unknown one.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_post (
    pk_post bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id      uuid NOT NULL,
    title   text NOT NULL
);
INSERT INTO tb_post (id, title)
SELECT md5('post' || i)::uuid, 'post ' || i FROM generate_series(1, 3) i;

SELECT pg_tviews_create('tv_post', $$
    SELECT pk_post, id, jsonb_build_object('title', title) AS data FROM tb_post;
$$);
-- Let the worker finish the full refresh the creation queued.
SELECT pg_tviews_wait('30s') AS drained;

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

SELECT pg_tviews_wait('30s') AS drained;
SELECT pg_tviews_drop('tv_post');
DROP TABLE tb_post;
