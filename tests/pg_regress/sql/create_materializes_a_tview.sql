-- pg_tviews_create materializes tv_<entity> from its backing view v_<entity>, records its
-- catalog row and statement-level capture triggers, and refuses a second create by either
-- spelling.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_post (
    pk_post bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id      uuid NOT NULL,
    title   text NOT NULL
);
INSERT INTO tb_post (id, title)
SELECT md5('post' || i)::uuid, 'post ' || i FROM generate_series(1, 3) i;

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

-- Let the worker finish the full refresh the creation queued.
SELECT pg_tviews_wait('30s') AS drained;
SELECT pg_tviews_drop('tv_post');
DROP TABLE tb_post;
