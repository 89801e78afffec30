#!/usr/bin/env bash
# make mlflow-server / make mlflow-server-stop: a shared MLflow tracking server on 127.0.0.1:5050, its store in
# PostgreSQL (Debian's `postgresql`, installed if missing), artifacts served by the server itself (mlflow-artifacts:/),
# kept in .run/mlflow-artifacts. First use creates the PostgreSQL cluster `kdistill` (port 5433, listening on
# 127.0.0.1 only), its role and database; the role's password is generated once into .run/mlflow-pg.password (0600)
# and reaches the server through its environment, never its command line.
# Point the pipeline at it with `tracking: {mlflow_uri: http://127.0.0.1:5050}` in params.yaml.
# Overrides: KDISTILL_MLFLOW_SERVER_PORT, KDISTILL_PG_PORT, KDISTILL_PG_DB, KDISTILL_UI_RUN (pid, log, artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${KDISTILL_UI_RUN:-.run}
mkdir -p "$RUN"
PORT=${KDISTILL_MLFLOW_SERVER_PORT:-5050}
PG_PORT=${KDISTILL_PG_PORT:-5433}
DB=${KDISTILL_PG_DB:-kdistill}
ROLE=kdistill
CLUSTER=kdistill
BIN=$PWD/.venv/bin

as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sudo -u postgres sh -c "$*"; fi; }

ensure_postgres() {
  if ! command -v pg_createcluster >/dev/null; then
    echo "mlflow-server: installing Debian's postgresql"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null \
      || { echo "mlflow-server: could not install postgresql (apt-get, as root)" >&2; exit 2; }
  fi
  local ver; ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  if ! pg_lsclusters -h | awk '{print $2}' | grep -qx "$CLUSTER"; then
    echo "mlflow-server: creating PostgreSQL $ver cluster '$CLUSTER' on 127.0.0.1:$PG_PORT"
    pg_createcluster "$ver" "$CLUSTER" --port "$PG_PORT" >/dev/null
    # loopback only (pg_conftool writes this value unquoted, which PostgreSQL rejects)
    sed -i "s/^#\?listen_addresses = .*/listen_addresses = '127.0.0.1'/" "/etc/postgresql/$ver/$CLUSTER/postgresql.conf"
  fi
  if ! pg_lsclusters -h | awk -v c="$CLUSTER" '$2 == c {print $4}' | grep -qx online; then
    pg_ctlcluster "$ver" "$CLUSTER" start
  fi
  PG_PORT=$(pg_lsclusters -h | awk -v c="$CLUSTER" '$2 == c {print $3}')
  local pw_file=$RUN/mlflow-pg.password
  if [ ! -s "$pw_file" ]; then (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$pw_file"); fi
  local pw; pw=$(cat "$pw_file")
  # the role (its password set to this project's), then the database: both idempotent
  as_postgres "psql -qAt -p $PG_PORT -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN CREATE ROLE $ROLE LOGIN; END IF; END \\\$\\\$; ALTER ROLE $ROLE PASSWORD '$pw';\"" >/dev/null
  if ! as_postgres "psql -qAt -p $PG_PORT -c \"SELECT 1 FROM pg_database WHERE datname = '$DB'\"" | grep -qx 1; then
    as_postgres "createdb -p $PG_PORT -O $ROLE $DB"
  fi
  export MLFLOW_BACKEND_STORE_URI="postgresql://$ROLE:$pw@127.0.0.1:$PG_PORT/$DB"
}

case "${1:-}" in
  start)
    if [ -f "$RUN/mlflow-server.pid" ] && kill -0 "$(cat "$RUN/mlflow-server.pid")" 2>/dev/null; then
      echo "mlflow-server already running (pid $(cat "$RUN/mlflow-server.pid"))"; exit 0
    fi
    ensure_postgres
    export MLFLOW_SERVE_ARTIFACTS=true MLFLOW_ARTIFACTS_DESTINATION="$(cd "$RUN" && pwd)/mlflow-artifacts" MLFLOW_DISABLE_TELEMETRY=true
    nohup setsid "$BIN/mlflow" server --host 127.0.0.1 --port "$PORT" --workers 1 > "$RUN/mlflow-server.log" 2>&1 &
    echo $! > "$RUN/mlflow-server.pid"
    for _ in $(seq 1 120); do
      if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
        echo "mlflow-server: http://127.0.0.1:$PORT (PostgreSQL database '$DB' on 127.0.0.1:$PG_PORT; pid $(cat "$RUN/mlflow-server.pid"), log $RUN/mlflow-server.log)"
        exit 0
      fi
      kill -0 "$(cat "$RUN/mlflow-server.pid")" 2>/dev/null || break
      sleep 1
    done
    echo "mlflow-server did not answer on port $PORT; see $RUN/mlflow-server.log" >&2; exit 1
    ;;
  stop)
    [ -f "$RUN/mlflow-server.pid" ] || { echo "mlflow-server not running"; exit 0; }
    pid=$(cat "$RUN/mlflow-server.pid")
    kill -INT -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$RUN/mlflow-server.pid"; echo "mlflow-server stopped (PostgreSQL keeps running: pg_ctlcluster <version> $CLUSTER stop)"
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
