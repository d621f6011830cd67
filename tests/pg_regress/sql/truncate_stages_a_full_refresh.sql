-- TRUNCATE of the root table, or of a joined table, stages a full refresh (kind full, key 0).
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
INSERT INTO tb_author (name) VALUES ('ada');
INSERT INTO tb_post (id, fk_author, title)
SELECT md5('post' || i)::uuid, 1, 'post ' || i FROM generate_series(1, 5) i;
SET client_min_messages = error;  -- WARNINGs of joined sources are covered by joined
SELECT pg_tviews_create('tv_post', $$
    SELECT p.pk_post, p.id, jsonb_build_object('title', p.title, 'author', a.name) AS data
    FROM tb_post p JOIN tb_author a ON a.pk_author = p.fk_author
$$);
RESET client_min_messages;

-- Shows what the current transaction staged, for tv_post.
CREATE VIEW staged AS
SELECT kind, key FROM pg_tviews_staged_keys()
WHERE table_oid = 'tv_post'::regclass
ORDER BY kind, key;

-- TRUNCATE of the root table stages a full refresh (key 0).
BEGIN;
TRUNCATE tb_post;
SELECT * FROM staged;
ROLLBACK;

-- So does TRUNCATE of a joined table (other writes to joined tables: see joined.sql).
BEGIN;
TRUNCATE tb_author CASCADE;
SELECT * FROM staged;
ROLLBACK;

DROP VIEW staged;
SELECT pg_tviews_drop('tv_post');
DROP TABLE tb_post, tb_author;
