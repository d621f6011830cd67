-- The DDL spellings of a TVIEW's life cycle: CREATE TABLE tv_<entity> AS creates one (with
-- lineage and indexes), a column list is refused, and DROP TABLE tv_<entity> removes it with
-- its view, triggers, lineage and metadata.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_user (pk_user int PRIMARY KEY, name text NOT NULL);
CREATE TABLE tb_post (pk_post int PRIMARY KEY, fk_user int REFERENCES tb_user, title text NOT NULL);
INSERT INTO tb_user VALUES (1, 'ada'), (2, 'grace');
INSERT INTO tb_post VALUES (1, 1, 'one'), (2, 1, 'two'), (3, 2, 'three');

-- CREATE TABLE tv_<entity> AS is a TVIEW, with lineage and indexes.
CREATE TABLE tv_post AS
SELECT p.pk_post, p.fk_user, jsonb_build_object('title', p.title, 'author', u.name) AS data
FROM tb_post p JOIN tb_user u ON u.pk_user = p.fk_user;
SELECT entity, key_column, fk_columns FROM pg_tview_meta;
SELECT source_oid::regclass AS source, capture_column, rule >= 2 AS resolved
FROM pg_tview_lineage ORDER BY source_oid::regclass::text, capture_column;
SELECT indexname FROM pg_indexes WHERE tablename = 'tv_post' ORDER BY 1;

-- A column list cannot be kept by a TVIEW: refused, and no plain tv_ table is left.
CREATE TABLE tv_user (pk_user, data) AS SELECT pk_user, to_jsonb(name) FROM tb_user;
\echo :LAST_ERROR_SQLSTATE
SELECT to_regclass('tv_user') IS NULL AS no_plain_table;

SELECT pg_tviews_wait('5s');
-- DROP TABLE tv_<entity> removes the view, triggers, lineage and metadata too.
DROP TABLE tv_post;
SELECT (SELECT count(*) FROM pg_tview_meta) AS meta,
       (SELECT count(*) FROM pg_tview_lineage) AS lineage,
       (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tview\_%') AS triggers,
       to_regclass('v_post') IS NULL AS view_gone;
DROP TABLE tb_post, tb_user;
