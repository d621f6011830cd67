-- The health check's rows, pg_tviews_check_jsonb_ivm(), and the metrics for scrapers.
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
-- One change applied by the worker, so the TVIEW has applied keys to report.
UPDATE tb_user SET name = 'ada lovelace' WHERE pk_user = 1;
SELECT pg_tviews_wait('5s');

-- The health check's rows (statuses depend on timing, so only names here; refresh_errors
-- and enabled only appear when there is something to report).
SELECT check_name FROM pg_tviews_health_check()
WHERE check_name NOT IN ('refresh_errors', 'enabled') ORDER BY 1;
SELECT pg_tviews_check_jsonb_ivm();

-- Metrics for scrapers: stable names, labels identify the TVIEW or database.
SELECT name, labels ? 'tview' AS per_tview FROM pg_tviews_metrics GROUP BY 1, 2 ORDER BY 1;
SELECT value FROM pg_tviews_metrics WHERE name = 'pg_tviews_pending_keys' AND labels->>'tview' = 'post';
SELECT entity, pending, applied > 0 AS applied FROM pg_tviews_queue_realtime;

DROP TABLE tv_post;
DROP TABLE tb_post, tb_user;
