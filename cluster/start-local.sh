#!/usr/bin/env bash
# Start a local Ray head and an MLflow tracking server, both listening on 127.0.0.1 only, for `ardiff submit`
# on this machine. Stop both with cluster/stop-local.sh.
#
# Settings (environment): RAY_PORT (GCS, default 6379), RAY_DASHBOARD_PORT (job API, 8265), MLFLOW_PORT (5000),
# RAY_NUM_CPUS (default: all cores), RAY_OBJECT_STORE_MB (default 1000), VENV (default .venv, else PATH).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

VENV=${VENV:-.venv}
if [[ -x "$VENV/bin/ray" ]]; then BIN="$(cd "$VENV/bin" && pwd)/"; else BIN=""; fi
RAY_PORT=${RAY_PORT:-6379}
RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
RAY_OBJECT_STORE_MB=${RAY_OBJECT_STORE_MB:-1000}
MLFLOW_DIR="$ROOT/runs/mlflow"

# Keep every Ray server on the loopback address (by default Ray also listens on the machine's other interfaces).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Ray 2.60 enables token authentication by default; this head is reachable from this machine only, so it runs
# without, and job clients need no token. Put a multi-user or networked head behind token auth instead.
export RAY_AUTH_MODE=disabled
# Jobs run `python` from PATH: make it this environment's python.
if [[ -n "$BIN" ]]; then export PATH="$BIN:$PATH"; fi
# Jobs inherit the head's environment: they track to the MLflow server below unless told otherwise.
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT

echo "== Ray head on 127.0.0.1:$RAY_PORT, job API on http://127.0.0.1:$RAY_DASHBOARD_PORT"
"${BIN}ray" start --head --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$RAY_DASHBOARD_PORT" --include-dashboard=true \
    ${RAY_NUM_CPUS:+--num-cpus "$RAY_NUM_CPUS"} --object-store-memory $((RAY_OBJECT_STORE_MB * 1024 * 1024)) \
    --disable-usage-stats >/dev/null

echo "== MLflow server on http://127.0.0.1:$MLFLOW_PORT (store: $MLFLOW_DIR)"
mkdir -p "$MLFLOW_DIR/artifacts"
if [[ -f "$MLFLOW_DIR/server.pid" ]] && kill -0 "$(cat "$MLFLOW_DIR/server.pid")" 2>/dev/null; then
    echo "already running (pid $(cat "$MLFLOW_DIR/server.pid"))"
else
    # One worker and no job-execution backend: 2 processes and ~0.5 GB instead of the default 15 and ~3 GB.
    # setsid: the server and its workers form one process group, which stop-local.sh ends.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "${BIN}mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
        --workers 1 --backend-store-uri "sqlite:///$MLFLOW_DIR/server.db" \
        --artifacts-destination "$MLFLOW_DIR/artifacts" >"$MLFLOW_DIR/server.log" 2>&1 </dev/null &
    echo $! >"$MLFLOW_DIR/server.pid"
    health="import urllib.request as u; u.urlopen('http://127.0.0.1:$MLFLOW_PORT/health', timeout=2)"
    for attempt in $(seq 121); do
        if "${BIN}python3" -c "$health" 2>/dev/null; then break; fi
        if ! kill -0 "$(cat "$MLFLOW_DIR/server.pid")" 2>/dev/null || [[ $attempt == 121 ]]; then
            echo "the mlflow server did not come up; its log ($MLFLOW_DIR/server.log):" >&2
            tail -n 30 "$MLFLOW_DIR/server.log" >&2
            exit 1
        fi
        sleep 0.5
    done
fi

cat <<MSG

Ray job API:  http://127.0.0.1:$RAY_DASHBOARD_PORT   (dashboard in a browser at the same address)
MLflow:       http://127.0.0.1:$MLFLOW_PORT

Export these, then submit jobs with \`ardiff submit -- COMMAND ...\`:
  export RAY_ADDRESS=http://127.0.0.1:$RAY_DASHBOARD_PORT
  export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT

Stop both with cluster/stop-local.sh.
MSG
