#!/usr/bin/env bash
# Every GPU check of the training path in one short run (benchmarks/gpu_check.py says what and why).
#   bash benchmarks/gpu_check.sh           on a single-GPU machine (no network needed)
#   bash benchmarks/gpu_check.sh --cpu     anywhere: the same steps on the CPU, up to the GPU-specific parts
# GPU_CHECK_TIMEOUT (seconds, default 480) bounds the run. WHEELS=DIR installs the project's dependencies from wheels in DIR (offline) into .venv first when it lacks them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
if [[ -n "${WHEELS:-}" ]] && ! "$PY" -c "import ardiff_scale, deepspeed" 2>/dev/null; then
  python3 -m venv --system-site-packages .venv  # the machine's CUDA torch stays visible
  .venv/bin/pip install --no-index --find-links "$WHEELS" -e . 
  PY=.venv/bin/python
fi
export PATH="$(dirname "$PY"):$PATH"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$@"
