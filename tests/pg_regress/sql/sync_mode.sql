-- Sync mode, per session (SET pg_tviews_bgw.mode) and per TVIEW (pg_tviews_set_mode): the
-- TVIEW shows a change inside the writing transaction; unknown modes and TVIEWs are refused.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_user (pk_user int PRIMARY KEY, name text NOT NULL);
CREATE TABLE tb_post (pk_post int PRIMARY KEY, fk_user int REFERENCES tb_user, title text NOT NULL);
INSERT INTO tb_user VALUES (1, 'ada'), (2, 'grace');
INSERT INTO tb_post VALUES (1, 1, 'one'), (2, 1, 'two'), (3, 2, 'three');
CREATE TABLE tv_post AS
SELECT p.pk_post, p.fk_user, jsonb_build_object('title', p.title, 'author', u.name) AS data
FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_user;
-- Let the worker finish whatever the creation queued before the checks below.
SELECT pg_tviews_wait('5s');

-- Sync mode: the TVIEW shows the change inside the writing transaction.
SET pg_tviews_bgw.mode = sync;
BEGIN;
UPDATE tb_user SET name = 'ada lovelace' WHERE pk_user = 1;
SELECT pk_post, data->>'author' AS author FROM tv_post ORDER BY pk_post;
COMMIT;
RESET pg_tviews_bgw.mode;
-- The author's change reaches tv_post through a lineage rule, whose keys still go to the
-- worker; let it finish so the DDL below does not race it.
SELECT pg_tviews_wait('5s');
SHOW pg_tviews_bgw.mode;

-- Sync mode of one TVIEW: every session sees its own writes in tv_post, without SET.
SELECT pg_tviews_set_mode('tv_post', 'sync');
SELECT mode FROM pg_tview_meta WHERE entity = 'post';
SELECT count(*) AS sync_triggers FROM pg_trigger
WHERE tgname LIKE 'tview\_%' AND encode(tgargs, 'escape') LIKE '%:sync:public.tv\_post%';
BEGIN;
UPDATE tb_post SET title = 'one, edited' WHERE pk_post = 1;
SELECT pk_post, data->>'title' AS title FROM tv_post WHERE pk_post = 1;
ROLLBACK;
SELECT pg_tviews_set_mode('post', 'ASYNC');
SELECT pg_tviews_set_mode('tv_post', 'eventually');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_set_mode('tv_nope', 'sync');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_wait('5s');

DROP TABLE tv_post;
DROP TABLE tb_post, tb_user;
