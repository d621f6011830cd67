-- Maintenance commands next to the extension. PostgreSQL 17 and later run REFRESH MATERIALIZED
-- VIEW with search_path = pg_catalog, pg_temp; its CONCURRENTLY form creates and drops a
-- temporary table, which fires the extension's CREATE TABLE AS and DROP TABLE event triggers.
-- They must work whatever the caller's search_path is.
CREATE MATERIALIZED VIEW mv_maintenance AS SELECT g AS id FROM generate_series(1, 3) g;
CREATE UNIQUE INDEX ON mv_maintenance (id);
REFRESH MATERIALIZED VIEW CONCURRENTLY mv_maintenance;
REFRESH MATERIALIZED VIEW mv_maintenance;
SELECT count(*) AS rows FROM mv_maintenance;
-- The same restricted search_path, set by hand (what 17+ does inside the refresh).
BEGIN;
SET LOCAL search_path = pg_catalog, pg_temp;
CREATE TEMP TABLE maintenance_tmp AS SELECT 1 AS id;
DROP TABLE maintenance_tmp;
COMMIT;
DROP MATERIALIZED VIEW mv_maintenance;
