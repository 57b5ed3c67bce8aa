#!/usr/bin/env bash
# Start Debian's PostgreSQL cluster on loopback and create the test role (idempotent).
set -euo pipefail
version=$(ls /etc/postgresql | sort -n | tail -1)
pg_ctlcluster "$version" main start 2>/dev/null || true
for _ in $(seq 30); do pg_isready -h 127.0.0.1 -q && break; sleep 1; done
su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='optimstudy'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"CREATE ROLE optimstudy LOGIN CREATEDB PASSWORD 'optimstudy'\""
# CREATEROLE: tests/test_secrets.py makes a role of its own with a password that appears nowhere
# else, then looks for it in everything optimstudy prints, writes and starts
su postgres -c "psql -qc 'ALTER ROLE optimstudy CREATEROLE'"
