-- An aborted transaction stages nothing for the next one; a committed one publishes and
-- clears its keys.
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

-- An aborted transaction stages nothing for the next one.
BEGIN;
UPDATE tb_post SET title = 'lost' WHERE pk_post = 1;
SELECT 1 / 0;
ROLLBACK;
SELECT * FROM staged;

-- A committed transaction publishes and clears its keys.
BEGIN;
UPDATE tb_post SET title = 'committed' WHERE pk_post = 1;
SELECT * FROM staged;
COMMIT;
SELECT * FROM staged;
SELECT pg_tviews_wait('5s');

DROP VIEW staged;
SELECT pg_tviews_drop('tv_post');
DROP TABLE tb_post, tb_author;
