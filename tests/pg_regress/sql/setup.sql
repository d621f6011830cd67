-- Installs the extension for the whole regression run (later tests share this database).
CREATE EXTENSION pg_tviews_bgw;

-- The library's version is the extension's version.
SELECT pg_tviews_version() IS NOT NULL AS has_version,
       pg_tviews_version() = extversion AS matches_extversion
FROM pg_extension WHERE extname = 'pg_tviews_bgw';

-- Every object the extension owns (what DROP EXTENSION removes), in a stable order.
SELECT pg_describe_object(classid, objid, objsubid) AS object
FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_tviews_bgw')
  AND deptype = 'e'
ORDER BY 1;

-- Signatures of the user-facing functions: defaults and return types are part of the contract.
SELECT p.proname,
       pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_tviews_bgw'
WHERE p.proname NOT LIKE '\_%'
ORDER BY 1, 2;

-- Its catalog tables are dumped by pg_dump (extension configuration tables).
SELECT c::regclass AS config_table
FROM pg_extension, unnest(extconfig) c
WHERE extname = 'pg_tviews_bgw'
ORDER BY c::regclass::text;

-- The library is preloaded, so shared memory is attached.
SELECT shared_memory FROM pg_tviews_stats;
