-- pg_tviews_wait(timeout) returns true once the worker applied every change committed before
-- the call (several transactions, a key changed twice in one), never waits for uncommitted
-- changes, and is STRICT (NULL gives NULL; a negative timeout does not wait).
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

-- Writes in several transactions; pg_tviews_wait returns once the worker applied them.
INSERT INTO tb_post (id, title)
SELECT md5('post' || i)::uuid, 'post ' || i FROM generate_series(101, 200) i;
UPDATE tb_post SET title = title || ' (edited)' WHERE pk_post % 3 = 0;
DELETE FROM tb_post WHERE pk_post % 10 = 0;
BEGIN;
UPDATE tb_post SET title = 'twice' WHERE pk_post = 1;
UPDATE tb_post SET title = 'thrice' WHERE pk_post = 1;
COMMIT;
SELECT pg_tviews_wait('5s');
SELECT * FROM diff;
SELECT count(*) AS rows, count(*) FILTER (WHERE data->>'title' LIKE '%(edited)') AS edited
FROM tv_post;
SELECT data FROM tv_post WHERE pk_post = 1;

-- Uncommitted changes are not applied (and not waited for).
BEGIN;
UPDATE tb_post SET title = 'uncommitted';
SELECT pg_tviews_wait('5s');
SELECT count(*) AS uncommitted_in_tview FROM tv_post WHERE data->>'title' = 'uncommitted';
ROLLBACK;

-- STRICT: a NULL timeout gives NULL; a negative one does not wait.
SELECT pg_tviews_wait(NULL);
SELECT pg_tviews_wait('-1s');

DROP VIEW diff;
SELECT pg_tviews_drop('tv_post');
DROP TABLE tb_post;
