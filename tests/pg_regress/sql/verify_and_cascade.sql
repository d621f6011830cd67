-- pg_tviews_verify lists the rows that differ from the defining query; pg_tviews_cascade
-- re-queues exactly the rows fed by a source row, and the worker repairs them; both refuse
-- what is not a TVIEW or has no key.
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

-- verify: nothing differs; then damage two rows behind the extension's back.
SELECT * FROM pg_tviews_verify('tv_post');
UPDATE tv_post SET data = '{}' WHERE pk_post = 2;
DELETE FROM tv_post WHERE pk_post = 3;
SELECT * FROM pg_tviews_verify('post');
-- cascade re-queues exactly the rows fed by a source row; the worker repairs them.
SELECT pg_tviews_cascade('tb_post'::regclass::oid, 2) AS staged_from_post,
       pg_tviews_cascade('tb_user'::regclass::oid, 2) AS staged_from_user;
SELECT pg_tviews_wait('5s');
SELECT * FROM pg_tviews_verify('tv_post');

-- Errors.
SELECT * FROM pg_tviews_verify('tv_nothing');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE no_key (x int);
SELECT pg_tviews_cascade('no_key'::regclass::oid, 1);
\echo :LAST_ERROR_SQLSTATE
DROP TABLE no_key;

DROP TABLE tv_post;
DROP TABLE tb_post, tb_user;
