#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine, the GPU tests and the GPU benchmark, in one command (issue 14).
#   benchmarks/gpu_check.sh [OUT]   -> OUT/gpu-tests.log, OUT/bench-gpu.json, OUT/bench-gpu.png
# Runs on the machine's own python3 (PYTHON=...), which must have torch built for CUDA. Whatever else the
# runtime needs and that python lacks comes from the wheels in .whl/ (made with `make gpu-wheels` where a
# package index is reachable), installed into a private folder: nothing is downloaded here.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks}
py=${PYTHON:-python3}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  site=${TMPDIR:-/tmp}/ksdiff-gpu-site
  "$py" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site"
fi
export PYTHONPATH=".:sdk_python${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch sees no CUDA device')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
status=0
# the GPU tests (tests marked gpu), then the benchmark; each bounded so the whole stays within 8 minutes
timeout 150 "$py" -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$out/gpu-tests.log" || status=1
timeout 300 "$py" -m benchmarks.gpu_check --out "$out/bench-gpu.json" --plot "$out/bench-gpu.png" || status=1
exit $status
