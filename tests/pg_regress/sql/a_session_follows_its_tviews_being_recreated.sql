-- A session keeps its capture triggers' parsed arguments and the TVIEW each names
-- (capture::cache): a TVIEW dropped and re-created under the same name, a TVIEW table renamed,
-- and a TVIEW paused by a plain UPDATE of the catalog are all followed by the same session's
-- next write. Sync mode, so each write's effect shows at once.
\set SHOW_CONTEXT never
\set VERBOSITY default

CREATE TABLE tb_item (pk_item int PRIMARY KEY, name text NOT NULL);
INSERT INTO tb_item VALUES (1, 'one'), (2, 'two');
CREATE TABLE tv_item AS SELECT i.pk_item, jsonb_build_object('name', i.name) AS data FROM tb_item i;
SELECT pg_tviews_wait('5s');
SET pg_tviews_bgw.mode = sync;
UPDATE tb_item SET name = 'one, a' WHERE pk_item = 1;
SELECT pk_item, data->>'name' AS name FROM tv_item ORDER BY 1;
-- (Let the worker finish whatever was queued before each DDL.)
SELECT pg_tviews_wait('5s');

-- Dropped and re-created under the same name, with another shape: the new TVIEW is written.
SELECT pg_tviews_drop('tv_item');
CREATE TABLE tv_item AS SELECT i.pk_item, jsonb_build_object('label', upper(i.name)) AS data FROM tb_item i;
UPDATE tb_item SET name = 'two, b' WHERE pk_item = 2;
SELECT pk_item, data FROM tv_item ORDER BY 1;
SELECT pg_tviews_wait('5s');

-- Renamed: the trigger's name no longer resolves and its oid is used (writes still reach it;
-- the wait says the metadata names no live table until it has its name back).
ALTER TABLE tv_item RENAME TO tv_item_renamed;
UPDATE tb_item SET name = 'one, c' WHERE pk_item = 1;
SELECT pk_item, data FROM tv_item_renamed ORDER BY 1;
SELECT pg_tviews_wait('5s');
ALTER TABLE tv_item_renamed RENAME TO tv_item;
-- That false wait returned at once: the worker may have been refreshing under the old name
-- (a failure, retried a second later). Current again before the next step.
SELECT pg_tviews_wait('5s');

-- Paused behind the functions' back: the same session's next write parks its keys.
UPDATE pg_tview_meta SET paused = true WHERE entity = 'item';
UPDATE tb_item SET name = 'two, d' WHERE pk_item = 2;
SELECT pk_item, data FROM tv_item ORDER BY 1;
SELECT kind, key, reason, last_error FROM pg_tview_deferred WHERE tview_oid = 'tv_item'::regclass ORDER BY key;
UPDATE pg_tview_meta SET paused = false WHERE entity = 'item';
RESET pg_tviews_bgw.mode;
SELECT pg_tviews_wait('5s');
SELECT pk_item, data FROM tv_item ORDER BY 1;
SELECT count(*) AS deferred_left FROM pg_tview_deferred;

SELECT pg_tviews_drop('tv_item');
DROP TABLE tb_item;
