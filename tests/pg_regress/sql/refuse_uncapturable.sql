-- Never silently stale: a definition that reads what no trigger can capture is refused at
-- creation (SQLSTATE 0A000, with a HINT), leaving nothing behind; with an explicit
-- reconcile_interval it is accepted with a WARNING naming the read, and shown as such.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_shop (pk_shop int PRIMARY KEY, name text NOT NULL);
INSERT INTO tb_shop VALUES (1, 'one'), (2, 'two');
CREATE VIEW refused_leftovers AS
SELECT 'relation ' || relname AS leftover FROM pg_class WHERE relname ~ '^(tv|v)_shop$'
UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE encode(tgargs, 'escape') LIKE '%public.tv\_shop%'
UNION ALL SELECT 'meta ' || entity FROM pg_tview_meta WHERE entity = 'shop'
ORDER BY 1;

-- A foreign table: changes on the remote server are never seen.
-- (A wrapper without handler: enough to declare a foreign table, on every build of PostgreSQL.)
CREATE FOREIGN DATA WRAPPER no_handler;
CREATE SERVER nowhere FOREIGN DATA WRAPPER no_handler;
CREATE FOREIGN TABLE ft_stock (fk_shop int, items int) SERVER nowhere;
SELECT pg_tviews_create('tv_shop', $$
    SELECT s.pk_shop, jsonb_build_object('name', s.name,
           'items', (SELECT sum(f.items) FROM ft_stock f WHERE f.fk_shop = s.pk_shop)) AS data
    FROM tb_shop s$$);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM refused_leftovers;

-- A materialized view: REFRESH MATERIALIZED VIEW fires no trigger.
CREATE MATERIALIZED VIEW mv_names AS SELECT pk_shop, upper(name) AS loud FROM tb_shop;
SELECT pg_tviews_create('tv_shop', $$
    SELECT s.pk_shop, jsonb_build_object('loud', m.loud) AS data
    FROM tb_shop s JOIN mv_names m USING (pk_shop)$$);
\echo :LAST_ERROR_SQLSTATE

-- A temporary table: the worker cannot read it (refused even with a reconcile interval).
CREATE TEMP TABLE tmp_flags (fk_shop int, flag text);
SELECT pg_tviews_create('tv_shop', $$
    SELECT s.pk_shop, jsonb_build_object('flag', (SELECT max(t.flag) FROM tmp_flags t WHERE t.fk_shop = s.pk_shop)) AS data
    FROM tb_shop s$$, reconcile_interval => '1 minute');
\echo :LAST_ERROR_SQLSTATE

-- A system catalog: catalog changes fire no trigger.
SELECT pg_tviews_create('tv_shop', $$
    SELECT s.pk_shop, jsonb_build_object('tables', (SELECT count(*) FROM pg_class)) AS data FROM tb_shop s$$);
\echo :LAST_ERROR_SQLSTATE

-- Volatile functions: the TVIEW could never equal its query.
SELECT pg_tviews_create('tv_shop', $$
    SELECT s.pk_shop, jsonb_build_object('lucky', random() < 0.5) AS data FROM tb_shop s$$);
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_create('tv_shop', $$
    SELECT s.pk_shop, jsonb_build_object('seen', clock_timestamp()) AS data FROM tb_shop s$$);
\echo :LAST_ERROR_SQLSTATE
-- ... also inside a nested view and a subquery.
CREATE VIEW v_noisy AS SELECT pk_shop, random() AS r FROM tb_shop;
SELECT pg_tviews_create('tv_shop', $$
    SELECT s.pk_shop, jsonb_build_object('r', (SELECT n.r FROM v_noisy n WHERE n.pk_shop = s.pk_shop)) AS data
    FROM tb_shop s$$);
\echo :LAST_ERROR_SQLSTATE

-- A user-defined function that is not IMMUTABLE may read tables the analysis cannot see.
CREATE FUNCTION shop_label(int) RETURNS text LANGUAGE sql STABLE
AS $$ SELECT 'shop ' || name FROM tb_shop WHERE pk_shop = $1 $$;
SELECT pg_tviews_create('tv_shop', $$
    SELECT s.pk_shop, jsonb_build_object('label', shop_label(s.pk_shop)) AS data FROM tb_shop s$$);
\echo :LAST_ERROR_SQLSTATE
-- An IMMUTABLE one is a pure function of its arguments, and accepted.
CREATE FUNCTION shout(text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT upper($1) || '!' $$;
SELECT pg_tviews_create('tv_shop', $$
    SELECT s.pk_shop, jsonb_build_object('name', shout(s.name)) AS data FROM tb_shop s$$);
SELECT pg_tviews_drop('tv_shop');
SELECT * FROM refused_leftovers;

-- Opting in: the materialized view and the volatile function are accepted with a WARNING,
-- shown by pg_tviews_explain, the status view and the health check; the worker recomputes the
-- whole TVIEW every reconcile_interval. (The foreign table would be too, but this one has no
-- server to read from.)
SELECT pg_tviews_create('tv_shop', $$
    SELECT s.pk_shop, jsonb_build_object('loud', m.loud, 'lucky', random() < 2) AS data
    FROM tb_shop s JOIN mv_names m USING (pk_shop)$$, reconcile_interval => '10 minutes');
SELECT * FROM pg_tviews_explain('tv_shop');
SELECT entity, reconcile_interval, last_reconciled_at IS NOT NULL AS reconciled
FROM pg_tviews_queue_status WHERE entity = 'shop';
SELECT status, detail FROM pg_tviews_health_check() WHERE check_name = 'uncaptured';
-- No capture trigger on what cannot be captured; the captured root keeps its triggers.
SELECT tgrelid::regclass AS on_table, count(*) FROM pg_trigger
WHERE encode(tgargs, 'escape') LIKE '%public.tv\_shop%' GROUP BY 1 ORDER BY 1;
SELECT pg_tviews_drop('tv_shop');
SELECT * FROM refused_leftovers;

DROP VIEW v_noisy, refused_leftovers;
DROP FUNCTION shop_label(int), shout(text);
DROP MATERIALIZED VIEW mv_names;
DROP FOREIGN TABLE ft_stock;
DROP SERVER nowhere;
DROP FOREIGN DATA WRAPPER no_handler;
DROP TABLE tb_shop;
