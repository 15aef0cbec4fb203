#!/usr/bin/env bash
# Installs (from Debian) and starts a local PostgreSQL server on 127.0.0.1 for the ledger tests,
# creates the test database, and prints the URL to use as TRIAGE_TEST_POSTGRES_URL.
# Idempotent: an already running server is reused.
set -euo pipefail

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
read -r ver name port status _ < <(pg_lsclusters --no-header | head -n 1)
if [ "$status" != "online" ]; then
  pg_ctlcluster "$ver" "$name" start >&2
fi
runuser -u postgres -- psql -q -p "$port" -c "ALTER USER postgres PASSWORD 'triage-test'" >&2
runuser -u postgres -- psql -q -p "$port" -tc "SELECT 1 FROM pg_database WHERE datname = 'triage_test'" | grep -q 1 \
  || runuser -u postgres -- createdb -p "$port" triage_test >&2
echo "postgres://postgres:triage-test@127.0.0.1:$port/triage_test"
