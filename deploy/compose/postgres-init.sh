#!/bin/sh
# First start of the compose file's PostgreSQL (the image runs /docker-entrypoint-initdb.d once, on an empty data
# directory): the owner role that migrations use, the application role the product uses, and the vector
# extension, which only a superuser may create (deploy/README.md, "Database roles").
set -eu
owner_password=$(cat /run/secrets/aios_owner_password)
app_password=$(cat /run/secrets/aios_app_password)
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner_password="$owner_password" -v app_password="$app_password" <<'SQL'
CREATE ROLE aios_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE aios_app LOGIN PASSWORD :'app_password';
ALTER DATABASE aios OWNER TO aios_owner;
ALTER SCHEMA public OWNER TO aios_owner;
CREATE EXTENSION IF NOT EXISTS vector;
SQL
