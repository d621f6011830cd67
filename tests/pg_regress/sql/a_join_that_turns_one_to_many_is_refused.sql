-- A TVIEW holds one row per key. When a join in its definition starts matching several rows
-- for one key, the refresh raises 21000 naming the TVIEW instead of keeping one of the rows:
-- in sync mode the write itself fails; in async mode the key is set aside with that SQLSTATE.
-- Keys whose row left the view are deleted (the same refresh counts both).
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_owner (pk_owner int PRIMARY KEY, name text NOT NULL);
-- No unique constraint on fk_owner: nothing stops a second badge per owner.
CREATE TABLE tb_badge (pk_badge int PRIMARY KEY, fk_owner int NOT NULL REFERENCES tb_owner,
                       label text NOT NULL);
INSERT INTO tb_owner VALUES (1, 'ada'), (2, 'grace'), (3, 'edsger');
INSERT INTO tb_badge VALUES (1, 1, 'gold'), (2, 2, 'silver'), (3, 3, 'bronze');
CREATE TABLE tv_owner AS
SELECT o.pk_owner, jsonb_build_object('name', o.name, 'badge', b.label) AS data
FROM tb_owner o JOIN tb_badge b ON b.fk_owner = o.pk_owner;
SELECT pg_tviews_wait('5s');

-- Sync mode: the statement that makes the join one-to-many fails, and with it the write.
SELECT pg_tviews_set_mode('tv_owner', 'sync');
INSERT INTO tb_badge VALUES (4, 1, 'platinum');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS badges_of_ada FROM tb_badge WHERE fk_owner = 1;
SELECT pk_owner, data->>'badge' AS badge FROM tv_owner ORDER BY pk_owner;

-- A key whose row left the view is deleted from the TVIEW, other keys of the statement kept.
BEGIN;
DELETE FROM tb_badge WHERE pk_badge = 3;
UPDATE tb_owner SET name = 'grace hopper' WHERE pk_owner = 2;
SELECT pk_owner, data->>'name' AS name, data->>'badge' AS badge FROM tv_owner ORDER BY pk_owner;
ROLLBACK;

-- Async mode: the write commits; the worker sets the key aside with 21000 and leaves the
-- TVIEW row as it was, never one of the two rows.
SELECT pg_tviews_set_mode('tv_owner', 'async');
INSERT INTO tb_badge VALUES (4, 1, 'platinum');
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN EXISTS (SELECT FROM pg_tview_deferred WHERE sqlstate = '21000');
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT key, sqlstate, last_error FROM pg_tview_deferred ORDER BY key;
SELECT pk_owner, data->>'badge' AS badge FROM tv_owner ORDER BY pk_owner;

-- Making the join unique again and retrying applies the key.
DELETE FROM tb_badge WHERE pk_badge = 4;
SELECT pg_tviews_retry_failed() > 0 AS retried;
SELECT pg_tviews_wait('5s');
SELECT count(*) AS set_aside FROM pg_tview_deferred;
SELECT count(*) AS differ FROM (
    (SELECT * FROM tv_owner EXCEPT ALL
     SELECT o.pk_owner, jsonb_build_object('name', o.name, 'badge', b.label)
     FROM tb_owner o JOIN tb_badge b ON b.fk_owner = o.pk_owner)
    UNION ALL
    (SELECT o.pk_owner, jsonb_build_object('name', o.name, 'badge', b.label)
     FROM tb_owner o JOIN tb_badge b ON b.fk_owner = o.pk_owner
     EXCEPT ALL SELECT * FROM tv_owner)) d;

DROP TABLE tv_owner;
DROP TABLE tb_badge, tb_owner;
