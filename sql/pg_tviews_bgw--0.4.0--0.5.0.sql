-- pg_tviews_bgw 0.4.0 -> 0.5.0: read-your-writes tokens and the craft pass.
\echo Use "ALTER EXTENSION pg_tviews_bgw UPDATE TO '0.5.0'" to load this file. \quit
