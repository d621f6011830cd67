-- A TVIEW that joins a second table: any write to the joined table stages a full refresh of
-- the TVIEW, which the worker applies after COMMIT.
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
SET client_min_messages = error;  -- the joined-table WARNING is covered by create_drop
SELECT pg_tviews_create('tv_post', $$
    SELECT p.pk_post, p.id, p.fk_author,
           jsonb_build_object('title', p.title, 'author', a.name) AS data
    FROM tb_post p JOIN tb_author a ON a.pk_author = p.fk_author
$$);
RESET client_min_messages;

CREATE VIEW staged AS
SELECT kind, key FROM pg_tviews_staged_keys()
WHERE table_oid = 'tv_post'::regclass
ORDER BY kind, key;

-- UPDATE, INSERT and DELETE on the joined table each stage a full refresh.
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
