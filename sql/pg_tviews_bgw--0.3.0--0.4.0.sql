-- pg_tviews_bgw 0.3.0 -> 0.4.0: never silently stale (2)
\echo Use "ALTER EXTENSION pg_tviews_bgw UPDATE TO '0.4.0'" to load this file. \quit
