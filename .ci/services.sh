#!/usr/bin/env bash
# Start/stop the real servers the integration tests use: PostgreSQL 15 and an
# S3-compatible moto_server, both on 127.0.0.1. Idempotent; for CI and developers.
#
#   eval "$(.ci/services.sh start)"   # start (or reuse) both, export the env vars
#   .ci/services.sh env               # print the export lines of running services
#   .ci/services.sh status
#   .ci/services.sh stop              # stop both and delete their data
#
# Exports MTA_TEST_PG_URL (SQLAlchemy URL of database mta_test, user mta/mta, which
# may create databases) and MTA_TEST_S3_ENDPOINT. Logs go to stderr; stdout carries
# only the export lines. Settings (env): MTA_SERVICES_DIR (state folder, default
# /tmp/mta-services), MTA_PG_PORT (55432), MTA_S3_PORT (55000), MTA_VENV (.venv);
# a busy port moves to the next free one.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${MTA_SERVICES_DIR:-/tmp/mta-services}"
VENV="${MTA_VENV:-$REPO/.venv}"
PG_USER=mta
PG_PASSWORD=mta
PG_DB=mta_test
PGDATA="$STATE/pgdata"
PGSOCK="$STATE/pgsock"
PGLOG="$PGSOCK/postgres.log"

log() { echo "services: $*" >&2; }
die() { log "error: $*"; exit 1; }

# initdb refuses to run as root, so the cluster belongs to the postgres user then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local port=$1
  while port_busy "$port"; do
    port=$((port + 1))
    [ "$port" -lt $(($1 + 200)) ] || die "no free port in $1..$port"
  done
  echo "$port"
}

find_pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/15/bin $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return 0
  fi
  return 1
}

install_postgres() {
  log "PostgreSQL server not found; installing it from the Debian packages"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  local apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get -q -y)
  "${apt[@]}" update >&2
  # Our cluster lives in STATE: stop the package from creating and starting its own.
  "${apt[@]}" install --no-install-recommends postgresql-common >&2
  $sudo sed -ri 's/^#? *create_main_cluster.*/create_main_cluster = false/' \
    /etc/postgresql-common/createcluster.conf
  "${apt[@]}" install postgresql >&2
}

pg_running() { [ -f "$PGDATA/PG_VERSION" ] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

moto_running() {
  local pid
  [ -f "$STATE/moto.pid" ] || return 1
  pid="$(cat "$STATE/moto.pid")"
  # The pid alone could have been reused by an unrelated process.
  kill -0 "$pid" 2>/dev/null && grep -q moto_server "/proc/$pid/cmdline" 2>/dev/null
}

start_postgres() {
  PG_BIN="$(find_pg_bin)" || { install_postgres; PG_BIN="$(find_pg_bin)" || die "initdb not found after installing postgresql"; }
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
  if pg_running; then
    log "PostgreSQL already running on port $(cat "$STATE/pg.port")"
    return 0
  fi
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    rm -rf "$PGDATA"
    mkdir -p "$PGDATA" "$PGSOCK"
    [ "$(id -u)" = 0 ] && chown postgres "$PGDATA" "$PGSOCK"
    chmod 700 "$PGDATA"
    log "initdb $PGDATA ($("$PG_BIN/postgres" --version))"
    as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$STATE/initdb.log" 2>&1 \
      || { cat "$STATE/initdb.log" >&2 || true; die "initdb failed"; }
  fi
  local port
  port="$(free_port "${MTA_PG_PORT:-55432}")"
  # Test data is disposable: skipping fsync makes the many CREATE DATABASEs fast.
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 \
    -o "-p $port -k $PGSOCK -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off" \
    start >&2 9>&- || { tail -n 20 "$PGLOG" >&2 || true; die "PostgreSQL did not start"; }
  echo "$port" >"$STATE/pg.port"
  local psql=(as_pg "$PG_BIN/psql" -h "$PGSOCK" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
  if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" ]; then
    "${psql[@]}" -c "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" >&2
  fi
  if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
    "${psql[@]}" -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >&2
  fi
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" || die "PostgreSQL does not answer on 127.0.0.1:$port"
  log "PostgreSQL ready on 127.0.0.1:$port"
}

start_moto() {
  if moto_running; then
    log "moto_server already running on port $(cat "$STATE/s3.port")"
    return 0
  fi
  [ -x "$VENV/bin/moto_server" ] || die "$VENV/bin/moto_server missing; run 'make setup' first"
  local port i
  port="$(free_port "${MTA_S3_PORT:-55000}")"
  setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$STATE/moto.log" 2>&1 </dev/null 9>&- &
  echo $! >"$STATE/moto.pid"
  echo "$port" >"$STATE/s3.port"
  for i in $(seq 1 120); do
    if curl -sf -o /dev/null "http://127.0.0.1:$port/"; then
      log "moto_server ready on 127.0.0.1:$port"
      return 0
    fi
    moto_running || { cat "$STATE/moto.log" >&2 || true; die "moto_server exited"; }
    sleep 0.5
  done
  die "moto_server does not answer on 127.0.0.1:$port"
}

print_env() {
  [ -f "$STATE/pg.port" ] && [ -f "$STATE/s3.port" ] || die "services are not started"
  echo "export MTA_TEST_PG_URL=postgresql+psycopg://$PG_USER:$PG_PASSWORD@127.0.0.1:$(cat "$STATE/pg.port")/$PG_DB"
  echo "export MTA_TEST_S3_ENDPOINT=http://127.0.0.1:$(cat "$STATE/s3.port")"
}

stop_all() {
  if [ -f "$PGDATA/PG_VERSION" ]; then
    PG_BIN="$(find_pg_bin)" || die "pg_ctl not found"
    if pg_running; then
      as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >&2
    fi
  fi
  if moto_running; then
    kill "$(cat "$STATE/moto.pid")"
    log "moto_server stopped"
  fi
  rm -rf "$STATE"
}

start_all() {
  start_postgres
  start_moto
  print_env
}

# One start or stop at a time: several developers' shells or test runs may share STATE.
locked() {
  mkdir -p "$STATE"
  # The postgres user must reach its data folder inside the state folder.
  chmod 755 "$STATE"
  exec 9>"$STATE/lock"
  flock 9
  "$@"
  exec 9>&-
}

case "${1:-start}" in
  start) locked start_all ;;
  env) print_env ;;
  status)
    PG_BIN="$(find_pg_bin 2>/dev/null || true)"
    if [ -n "$PG_BIN" ] && pg_running; then log "PostgreSQL: running"; else log "PostgreSQL: stopped"; fi
    if moto_running; then log "moto_server: running"; else log "moto_server: stopped"; fi ;;
  stop) [ -d "$STATE" ] && locked stop_all; log "stopped" ;;
  *) die "usage: $0 [start|env|status|stop]" ;;
esac
