-- pg_tviews_drop removes the table, the view, the triggers and the catalog row; a second drop
-- is refused unless if_exists.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_post (
    pk_post bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id      uuid NOT NULL,
    title   text NOT NULL
);
INSERT INTO tb_post (id, title)
SELECT md5('post' || i)::uuid, 'post ' || i FROM generate_series(1, 3) i;

-- What a TVIEW leaves in the catalog: nothing once it is dropped.
CREATE VIEW leftovers AS
SELECT 'relation ' || relname AS leftover FROM pg_class
WHERE relname ~ '^(tv|v)_(post|nopk|x|y)$' AND relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE 'tview\_%'
UNION ALL
SELECT 'meta ' || entity FROM pg_tview_meta
ORDER BY 1;

SELECT pg_tviews_create('tv_post', $$
    SELECT pk_post, id, jsonb_build_object('title', title) AS data FROM tb_post;
$$);
-- Let the worker finish the full refresh the creation queued.
SELECT pg_tviews_wait('30s') AS drained;

-- Drop removes the table, the view, the triggers and the catalog row.
SELECT pg_tviews_drop('tv_post');
SELECT * FROM leftovers;
SELECT pg_tviews_drop('tv_post');
\echo :LAST_ERROR_SQLSTATE
SELECT pg_tviews_drop('tv_post', true);
SELECT pg_tviews_drop('post', if_exists => true);

DROP VIEW leftovers;
DROP TABLE tb_post;
