#!/bin/sh
# First start on an empty data folder: a cluster whose superuser POSTGRES_USER has the password
# POSTGRES_PASSWORD (never on a command line: initdb reads it from a file that is removed at once),
# password logins (scram-sha-256) from any address the server listens on, and one database per word
# of POSTGRES_DATABASES. Every start: the server on POSTGRES_LISTEN_ADDRESSES and PGPORT, with any
# arguments given as `-c name=value` settings.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user=${POSTGRES_USER:-sentiment}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -A scram-sha-256 --auth-local=trust -E UTF8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    for db in ${POSTGRES_DATABASES:-mlflow optuna prefect}; do
        echo "CREATE DATABASE \"$db\" OWNER \"$user\";" | postgres --single -D "$PGDATA" postgres >/dev/null
    done
    echo "postgres-entrypoint: made the cluster in $PGDATA (databases: ${POSTGRES_DATABASES:-mlflow optuna prefect})"
fi
exec postgres -D "$PGDATA" -c listen_addresses="${POSTGRES_LISTEN_ADDRESSES:-*}" "$@"
