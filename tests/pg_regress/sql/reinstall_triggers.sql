-- A dropped or disabled capture trigger makes the health check's triggers check fail;
-- pg_tviews_install_stmt_triggers() (or re-enabling it) restores it.
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

-- Reinstalling triggers after someone dropped one.
DROP TRIGGER tview_upd ON tb_user;
SELECT check_name, status FROM pg_tviews_health_check() WHERE check_name = 'triggers';
SELECT pg_tviews_install_stmt_triggers();
SELECT check_name, status FROM pg_tviews_health_check() WHERE check_name = 'triggers';
SELECT tgrelid::regclass AS on_table, count(*) FROM pg_trigger
WHERE tgname LIKE 'tview\_%' GROUP BY 1 ORDER BY tgrelid::regclass::text;
-- A disabled capture trigger is as bad as a missing one.
ALTER TABLE tb_user DISABLE TRIGGER tview_row;
SELECT check_name, status FROM pg_tviews_health_check() WHERE check_name = 'triggers';
ALTER TABLE tb_user ENABLE REPLICA TRIGGER tview_row;
SELECT check_name, status FROM pg_tviews_health_check() WHERE check_name = 'triggers';

DROP TABLE tv_post;
DROP TABLE tb_post, tb_user;
