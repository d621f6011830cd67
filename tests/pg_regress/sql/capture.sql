-- Capture: the keys a transaction stages (pg_tviews_staged_keys) before they are published
-- at COMMIT. Everything runs in transactions that are rolled back, except where noted.
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
SET client_min_messages = error;  -- the joined-table WARNING is covered by create_drop
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
