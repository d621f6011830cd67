-- TRUNCATE of a TVIEW's root table is applied as a full refresh: the TVIEW empties, and later
-- inserts reach it.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_post (
    pk_post bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id      uuid NOT NULL,
    title   text NOT NULL
);
INSERT INTO tb_post (id, title)
SELECT md5('post' || i)::uuid, 'post ' || i FROM generate_series(1, 100) i;
SELECT pg_tviews_create('tv_post', $$
    SELECT pk_post, id, jsonb_build_object('title', title) AS data FROM tb_post
$$);

-- Compares the TVIEW with its view, both directions.
CREATE VIEW diff AS
SELECT (SELECT count(*) FROM (TABLE tv_post EXCEPT ALL TABLE v_post) a) AS stale_rows,
       (SELECT count(*) FROM (TABLE v_post EXCEPT ALL TABLE tv_post) b) AS missing_rows;
SELECT pg_tviews_wait('5s');

-- TRUNCATE is applied as a full refresh.
TRUNCATE tb_post;
SELECT pg_tviews_wait('5s');
SELECT count(*) AS rows FROM tv_post;
INSERT INTO tb_post (id, title)
SELECT md5('post' || i)::uuid, 'post ' || i FROM generate_series(1, 10) i;
SELECT pg_tviews_wait();
SELECT * FROM diff;

DROP VIEW diff;
SELECT pg_tviews_drop('tv_post');
DROP TABLE tb_post;
