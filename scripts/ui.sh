#!/usr/bin/env bash
# make ui / make ui-stop: Prefect UI on 127.0.0.1:4200 and MLflow UI on 127.0.0.1:5000, in the background.
# KDISTILL_PREFECT_PORT, KDISTILL_MLFLOW_PORT, KDISTILL_MLFLOW_STORE and KDISTILL_UI_RUN (pid/log folder) override.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${KDISTILL_UI_RUN:-.run}
mkdir -p "$RUN"
BIN=$PWD/.venv/bin
PREFECT_PORT=${KDISTILL_PREFECT_PORT:-4200}
MLFLOW_PORT=${KDISTILL_MLFLOW_PORT:-5000}
MLFLOW_STORE=${KDISTILL_MLFLOW_STORE:-sqlite:///$PWD/mlflow.db}
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect} PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true
# the UI's pages call this API address from the browser: the server's own, whatever port it was given
export PREFECT_UI_API_URL=http://127.0.0.1:$PREFECT_PORT/api

start_one() {  # name, port, health path, command...
  local name=$1 port=$2 health=$3; shift 3
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$RUN/$name.pid"))"; return
  fi
  nohup setsid "$@" > "$RUN/$name.log" 2>&1 &
  echo $! > "$RUN/$name.pid"
  for _ in $(seq 1 60); do
    if curl -sf "http://127.0.0.1:$port/$health" >/dev/null 2>&1; then
      echo "$name: http://127.0.0.1:$port (pid $(cat "$RUN/$name.pid"), log $RUN/$name.log)"; return
    fi
    sleep 1
  done
  echo "$name did not answer on port $port within 60 s; see $RUN/$name.log" >&2; exit 1
}

stop_one() {
  local name=$1
  [ -f "$RUN/$name.pid" ] || { echo "$name not running"; return; }
  local pid; pid=$(cat "$RUN/$name.pid")
  # setsid gave it its own process group: stop the whole group (server workers included)
  kill -INT -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$RUN/$name.pid"; echo "$name stopped"
}

case "${1:-}" in
  start)
    start_one prefect "$PREFECT_PORT" api/health "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    start_one mlflow "$MLFLOW_PORT" health "$BIN/mlflow" ui --backend-store-uri "$MLFLOW_STORE" --host 127.0.0.1 \
      --port "$MLFLOW_PORT" --workers 1
    ;;
  stop) stop_one prefect; stop_one mlflow ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
