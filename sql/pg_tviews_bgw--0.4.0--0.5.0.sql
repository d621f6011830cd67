-- pg_tviews_bgw 0.4.0 -> 0.5.0: read-your-writes tokens and the craft pass.
\echo Use "ALTER EXTENSION pg_tviews_bgw UPDATE TO '0.5.0'" to load this file. \quit

-- Read-your-writes tokens (api/tokens.rs), as a fresh install defines them.
CREATE  FUNCTION "_pg_tviews_wait_token_ms"(
	"token" TEXT, /* & str */
	"timeout_ms" bigint /* i64 */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, @extschema@
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_pg_tviews_wait_token_ms_wrapper';

CREATE  FUNCTION "pg_tviews_write_token"() RETURNS TEXT /* String */
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, @extschema@
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pg_tviews_write_token_wrapper';

-- Read-your-writes: the token of pg_tviews_write_token(), waited for from any session. An
-- untyped literal (pg_tviews_wait('5s')) resolves to this overload; a text that is an interval
-- rather than a token is taken as the timeout of the wait for everything.
CREATE FUNCTION pg_tviews_wait(token text, timeout interval DEFAULT interval '10 seconds')
RETURNS boolean
LANGUAGE sql VOLATILE STRICT
AS $$ SELECT @extschema@._pg_tviews_wait_token_ms(token, greatest(0, (extract(epoch FROM timeout) * 1000)::bigint)) $$;
COMMENT ON FUNCTION pg_tviews_wait(text, interval) IS
    'Waits until the TVIEW rows the token''s transaction changed (cascades included) are applied; false on timeout';

