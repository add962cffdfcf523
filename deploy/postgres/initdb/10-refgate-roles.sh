#!/bin/sh
# First start of the postgres container (empty data directory): create the
# refgate roles. docker-entrypoint.sh runs this from /docker-entrypoint-initdb.d
# as the postgres user against a server on the local socket only; it sources
# the file instead when it is not executable, so no `exit` and no `set -u`.
# roles.sql is mounted outside initdb.d because it needs psql variables.
set -e

refgate_owner_password="$(cat /run/secrets/db_owner_password)"
refgate_app_password="$(cat /run/secrets/db_app_password)"

psql -X -v ON_ERROR_STOP=1 --no-password \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner_password="$refgate_owner_password" \
    -v app_password="$refgate_app_password" \
    -f /opt/refgate/sql/roles.sql

unset refgate_owner_password refgate_app_password
