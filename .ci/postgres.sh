#!/usr/bin/env bash
# A PostgreSQL server on 127.0.0.1:5432 for the multi-worker tests: installs it from Debian's packages if
# missing, then starts it (or: restart, stop). Prints the URL the tests use.
set -euo pipefail
cd /  # su postgres cannot enter the caller's folder
action=${1:-start}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /etc/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $2}' | grep -qx main; then
  as_root pg_createcluster "$version" main >/dev/null
fi
running() { pg_lsclusters -h | awk '$2 == "main" {print $4}' | grep -qx online; }
case "$action" in
  start) running || as_root pg_ctlcluster "$version" main start ;;
  restart) as_root pg_ctlcluster "$version" main restart ;;
  stop) running && as_root pg_ctlcluster "$version" main stop; exit 0 ;;
  *) echo "usage: $0 [start|restart|stop]" >&2; exit 2 ;;
esac
as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'tunelab'\"" >/dev/null
echo "postgresql://postgres:tunelab@127.0.0.1:5432/postgres"
