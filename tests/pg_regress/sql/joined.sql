-- A TVIEW that joins a parent table: writes to the parent stage the parent's key under a
-- lineage rule (resolved to the posts with that fk_author by the worker after COMMIT).
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_author (
    pk_author bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name      text NOT NULL
);
CREATE TABLE tb_post (
    pk_post   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id        uuid NOT NULL,
    fk_author bigint NOT NULL REFERENCES tb_author,
    title     text NOT NULL
);
INSERT INTO tb_author (name) VALUES ('ada'), ('grace');
INSERT INTO tb_post (id, fk_author, title)
SELECT md5('post' || i)::uuid, 1 + i % 2, 'post ' || i FROM generate_series(1, 4) i;
SELECT pg_tviews_create('tv_post', $$
    SELECT p.pk_post, p.id, p.fk_author,
           jsonb_build_object('title', p.title, 'author', a.name) AS data
    FROM tb_post p JOIN tb_author a ON a.pk_author = p.fk_author
$$);
SELECT source_oid::regclass AS source, capture_column, rule >= 2 AS resolved, resolve_sql
FROM pg_tview_lineage ORDER BY source_oid::regclass::text, capture_column;

CREATE VIEW staged AS
SELECT kind, key FROM pg_tviews_staged_keys()
WHERE table_oid = 'tv_post'::regclass
ORDER BY kind, key;

-- UPDATE, INSERT and DELETE on the parent each stage the parent's key.
BEGIN;
UPDATE tb_author SET name = 'ada lovelace' WHERE pk_author = 1;
SELECT * FROM staged;
ROLLBACK;
BEGIN;
INSERT INTO tb_author (name) VALUES ('barbara');
SELECT * FROM staged;
DELETE FROM tb_author WHERE name = 'barbara';
SELECT * FROM staged;
ROLLBACK;

-- Committed: the worker recomputes tv_post.
UPDATE tb_author SET name = 'ada lovelace' WHERE pk_author = 1;
SELECT pg_tviews_wait('5s');
SELECT pk_post, data->>'author' AS author FROM tv_post ORDER BY pk_post;
SELECT (SELECT count(*) FROM (TABLE tv_post EXCEPT ALL TABLE v_post) a) AS stale_rows,
       (SELECT count(*) FROM (TABLE v_post EXCEPT ALL TABLE tv_post) b) AS missing_rows;

DROP VIEW staged;
SELECT pg_tviews_drop('tv_post');
DROP TABLE tb_post, tb_author;

-- A table read by the query with no foreign-key path to the root: full refresh, with a WARNING.
CREATE TABLE tb_thing (pk_thing int PRIMARY KEY, name text);
CREATE TABLE tb_label (label text);
INSERT INTO tb_thing VALUES (1, 'a');
SELECT pg_tviews_create('tv_thing', $$
    SELECT t.pk_thing, jsonb_build_object('name', t.name, 'labels', (SELECT count(*) FROM tb_label)) AS data
    FROM tb_thing t
$$);
SELECT source_oid::regclass AS source, capture_column, rule FROM pg_tview_lineage ORDER BY source_oid::regclass::text;
INSERT INTO tb_label VALUES ('x');
SELECT pg_tviews_wait('5s');
SELECT data->>'labels' AS labels FROM tv_thing;
SELECT pg_tviews_drop('tv_thing');
DROP TABLE tb_thing, tb_label;
