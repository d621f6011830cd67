-- Two-phase commit: PREPARE TRANSACTION writes the staged keys into pg_tview_deferred as part
-- of the prepared transaction; they appear only when it commits, and the worker applies them.
-- ROLLBACK PREPARED takes its keys with it; a prepared transaction that changed nothing
-- tracked writes nothing.
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

-- Two-phase commit: PREPARE TRANSACTION writes the staged keys into pg_tview_deferred as part
-- of the prepared transaction; they appear only when it commits.
BEGIN;
UPDATE tb_post SET title = 'prepared' WHERE pk_post = 1;
PREPARE TRANSACTION 'tview_2pc';
SELECT count(*) AS prepared FROM pg_prepared_xacts WHERE gid = 'tview_2pc';
SELECT count(*) AS visible_keys FROM pg_tview_deferred;
SELECT * FROM staged;
COMMIT PREPARED 'tview_2pc';
-- The worker applies them within a second.
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN (SELECT data->>'title' FROM tv_post WHERE pk_post = 1) = 'prepared'
              AND NOT EXISTS (SELECT 1 FROM pg_tview_deferred);
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT data->>'title' AS title, (SELECT count(*) FROM pg_tview_deferred) AS left_deferred
FROM tv_post WHERE pk_post = 1;
-- ROLLBACK PREPARED takes its keys with it.
BEGIN;
UPDATE tb_post SET title = 'never' WHERE pk_post = 2;
PREPARE TRANSACTION 'tview_2pc_rollback';
ROLLBACK PREPARED 'tview_2pc_rollback';
SELECT count(*) AS left_deferred FROM pg_tview_deferred;
CREATE TABLE untracked (x int);
-- A prepared transaction that changed nothing tracked writes nothing.
BEGIN;
SAVEPOINT a;
UPDATE tb_post SET title = 'rolled back' WHERE pk_post = 1;
ROLLBACK TO SAVEPOINT a;
INSERT INTO untracked VALUES (1);
PREPARE TRANSACTION 'tview_2pc_ok';
SELECT count(*) AS visible_keys FROM pg_tview_deferred;
COMMIT PREPARED 'tview_2pc_ok';
SELECT * FROM untracked;

DROP VIEW staged;
SELECT pg_tviews_drop('tv_post');
DROP TABLE tb_post, tb_author, untracked;
