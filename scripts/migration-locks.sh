#!/usr/bin/env bash
# Lists, for each Postgres migration in order, the locks it holds at its end on tables that
# existed before it, of a mode that blocks writes (ShareLock and stronger): what a migration
# could make publishing wait on while both releases run. Each one listed must be a brief,
# metadata-only change (docs/upgrading.md says which are); a rewrite of a large table is not
# allowed there. It applies the migrations to a fresh, empty database, as sqlx does (each in
# one transaction), and drops it after.
#
# Usage: scripts/migration-locks.sh [postgres admin URL]   (default: TIDINGS_TEST_POSTGRES_URL
# or postgres://postgres@127.0.0.1:5432/postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
admin=${1:-${TIDINGS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
db="tidings_locks_$$"
url="${admin%/*}/$db"
psql "$admin" -qAtc "CREATE DATABASE $db" >/dev/null
trap 'psql "$admin" -qAtc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
for f in migrations/postgres/*.sql; do
  locks=$(psql "$url" -v ON_ERROR_STOP=1 -qAt -F ' ' <<SQL
CREATE TEMP TABLE existing AS SELECT oid, relname FROM pg_class WHERE relkind IN ('r', 'p');
BEGIN;
\o /dev/null
\i $f
\o
-- By the names they had before: a table the migration dropped is listed too.
SELECT e.relname || ' ' || l.mode || ';' FROM pg_locks l JOIN existing e ON e.oid = l.relation
 WHERE l.pid = pg_backend_pid() AND l.granted
   AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
 ORDER BY 1;
COMMIT;
SQL
)
  printf '%s: %s\n' "$(basename "$f")" "$(echo ${locks:-no lock that blocks writes on an existing table})"
done
