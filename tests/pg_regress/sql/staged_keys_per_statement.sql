-- The keys a transaction stages (pg_tviews_staged_keys) before they are published at COMMIT:
-- INSERT, UPDATE and DELETE stage each changed key once, a key change both keys, a statement
-- that touches no row nothing; nothing outside a writing transaction, and a rollback clears
-- them. Everything runs in a transaction that is rolled back.
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

-- Nothing outside a writing transaction.
SELECT * FROM staged;
SELECT count(*) AS staged_for_other_tviews FROM pg_tviews_staged_keys()
WHERE table_oid <> 'tv_post'::regclass;

BEGIN;
-- INSERT stages the new keys, UPDATE the changed ones, DELETE the removed ones; each key once.
INSERT INTO tb_post (id, fk_author, title) VALUES (md5('post6')::uuid, 1, 'post 6'), (md5('post7')::uuid, 1, 'post 7');
SELECT * FROM staged;
UPDATE tb_post SET title = title || '!' WHERE pk_post IN (1, 6);
DELETE FROM tb_post WHERE pk_post = 2;
SELECT * FROM staged;
-- A key change stages both the old and the new key (identity: the next value is 8).
UPDATE tb_post SET pk_post = DEFAULT WHERE pk_post = 3;
SELECT * FROM staged;
-- Statements that touch no row stage nothing.
UPDATE tb_post SET title = 'none' WHERE false;
SELECT count(*) FROM staged;
ROLLBACK;
-- Rollback clears everything.
SELECT * FROM staged;

DROP VIEW staged;
SELECT pg_tviews_drop('tv_post');
DROP TABLE tb_post, tb_author;
