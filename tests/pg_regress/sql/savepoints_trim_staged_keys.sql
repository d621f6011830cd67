-- Subtransactions and staged keys: ROLLBACK TO SAVEPOINT drops exactly the keys staged since
-- the savepoint, a released savepoint keeps them, nested savepoints (with a TRUNCATE) roll back
-- together, and a PL/pgSQL exception block or a failed statement in a savepoint leaves nothing
-- behind. Everything runs in a transaction that is rolled back.
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

BEGIN;
-- Staged before the savepoints: kept by every rollback below.
UPDATE tb_post SET title = title || '!' WHERE pk_post = 1;
SELECT * FROM staged;

-- ROLLBACK TO SAVEPOINT drops exactly the keys staged since the savepoint.
SAVEPOINT a;
UPDATE tb_post SET title = 'in a' WHERE pk_post = 4;
SELECT * FROM staged;
ROLLBACK TO SAVEPOINT a;
SELECT * FROM staged;
-- A released savepoint keeps its keys.
SAVEPOINT b;
UPDATE tb_post SET title = 'in b' WHERE pk_post = 4;
RELEASE SAVEPOINT b;
SELECT * FROM staged;
-- Nested savepoints, including a TRUNCATE (kind 'full'), roll back together.
SAVEPOINT c;
UPDATE tb_post SET title = 'in c' WHERE pk_post = 5;
SAVEPOINT d;
TRUNCATE tb_post;
SELECT * FROM staged;
ROLLBACK TO SAVEPOINT c;
SELECT * FROM staged;
-- A PL/pgSQL exception block is a subtransaction too.
DO $$
BEGIN
    UPDATE tb_post SET title = 'in block' WHERE pk_post = 5;
    RAISE EXCEPTION 'undo the block';
EXCEPTION WHEN raise_exception THEN
    NULL;
END
$$;
SELECT * FROM staged;
-- A failed statement in a savepoint leaves nothing behind either.
SAVEPOINT e;
UPDATE tb_post SET title = 'in e' WHERE pk_post = 5;
UPDATE tb_post SET fk_author = 999 WHERE pk_post = 5;
ROLLBACK TO SAVEPOINT e;
SELECT * FROM staged;
ROLLBACK;
-- Rollback clears everything.
SELECT * FROM staged;

DROP VIEW staged;
SELECT pg_tviews_drop('tv_post');
DROP TABLE tb_post, tb_author;
