#!/usr/bin/env bash
# Stop what cluster/start-local.sh started: the MLflow server (by the pid file it wrote) and the Ray head.
# Note: `ray stop` stops every Ray process of this user on this machine, not only the head start-local started.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
if [[ -x "$VENV/bin/ray" ]]; then BIN="$(cd "$VENV/bin" && pwd)/"; else BIN=""; fi
PID_FILE=runs/mlflow/server.pid

if [[ -f "$PID_FILE" ]]; then
    pid=$(cat "$PID_FILE")
    if kill -0 "$pid" 2>/dev/null; then
        echo "== stopping the MLflow server (process group $pid)"
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
    fi
    rm -f "$PID_FILE"
else
    echo "== no MLflow pid file ($PID_FILE): nothing to stop"
fi

echo "== stopping Ray"
"${BIN}ray" stop 2>&1 | tail -n 1
