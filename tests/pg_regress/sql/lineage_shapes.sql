-- How each read of a definition reaches TVIEW keys, as pg_tviews_explain shows it: a
-- self-reference followed both ways (bounded by how often the root is read, unbounded for
-- WITH RECURSIVE), a second read of the root without one (whole-TVIEW refresh, with a
-- WARNING), and two read models of one entity keyed by an alias of the root's key.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_node (pk_node int PRIMARY KEY, fk_parent_node int REFERENCES tb_node, name text NOT NULL);
INSERT INTO tb_node VALUES (1, NULL, 'root'), (2, 1, 'a'), (3, 2, 'b');

-- The parent's name and the children count: three reads of tb_node.
SELECT pg_tviews_create('tv_node', $$
    SELECT n.pk_node, jsonb_build_object('name', n.name, 'parent', p.name,
           'children', (SELECT count(*) FROM tb_node c WHERE c.fk_parent_node = n.pk_node)) AS data
    FROM tb_node n LEFT JOIN tb_node p ON p.pk_node = n.fk_parent_node$$);
SELECT source, capture, captured_column FROM pg_tviews_explain('tv_node');
-- Both the key and the parent column reach ancestors and descendants, two references each
-- way (one per extra read of the root).
SELECT capture_column, resolve_sql LIKE 'WITH RECURSIVE up(k, d) AS %' AS walks_the_tree,
       position('d < 2' IN resolve_sql) > 0 AS two_hops
FROM pg_tview_lineage WHERE tview_oid = 'tv_node'::regclass ORDER BY capture_column;

-- The path from the root, recursively: any depth.
SELECT pg_tviews_create('tv_node_path', $$
    WITH RECURSIVE up AS (
        SELECT pk_node, name::text AS path FROM tb_node WHERE fk_parent_node IS NULL
        UNION ALL
        SELECT n.pk_node, up.path || '/' || n.name FROM tb_node n JOIN up ON n.fk_parent_node = up.pk_node)
    SELECT up.pk_node AS pk_node_path, jsonb_build_object('path', up.path) AS data FROM up$$);
SELECT source, capture, captured_column, reaches LIKE '%any number of references%' AS unbounded
FROM pg_tviews_explain('tv_node_path');

-- Other rows of the root read through a column that is no reference: every change to the
-- root refreshes the whole TVIEW, and creation says so.
CREATE TABLE tb_item (pk_item int PRIMARY KEY, kind text NOT NULL);
INSERT INTO tb_item VALUES (1, 'x'), (2, 'x'), (3, 'y');
SELECT pg_tviews_create('tv_item', $$
    SELECT i.pk_item, jsonb_build_object('same_kind', (SELECT count(*) FROM tb_item o WHERE o.kind = i.kind)) AS data
    FROM tb_item i$$);
SELECT source, capture FROM pg_tviews_explain('tv_item');

-- Two read models of one entity: the second keyed by an alias of the root's key, created by
-- its bare entity name.
SELECT pg_tviews_create('node_card', $$
    SELECT n.pk_node AS pk_node_card, jsonb_build_object('n', left(n.name, 1)) AS data FROM tb_node n$$);
SELECT entity, key_column, root_table::regclass, root_key FROM pg_tview_meta
WHERE entity IN ('node', 'node_card') ORDER BY 1;
SELECT source, capture, captured_column FROM pg_tviews_explain('tv_node_card');
UPDATE tb_node SET name = 'ROOT' WHERE pk_node = 1;
INSERT INTO tb_node VALUES (4, 3, 'c');
SELECT pg_tviews_wait();
SELECT (SELECT count(*) FROM pg_tviews_verify('tv_node')) AS node_stale,
       (SELECT count(*) FROM pg_tviews_verify('tv_node_path')) AS path_stale,
       (SELECT count(*) FROM pg_tviews_verify('tv_node_card')) AS card_stale;
SELECT pk_node_path, data->>'path' AS path FROM tv_node_path ORDER BY 1;

SELECT pg_tviews_drop('tv_node'), pg_tviews_drop('tv_node_path'), pg_tviews_drop('tv_node_card'), pg_tviews_drop('tv_item');
DROP TABLE tb_node, tb_item;
