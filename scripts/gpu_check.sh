#!/usr/bin/env bash
# The device check in one go (at most 8 minutes): GPU vs CPU forward/backward of the demo net and the full
# FCN-32s, 20 GPU training iterations of each with seconds per iteration, GPU memory; JSON on stdout and
# in OUT (default gpu_check.json). Exit 0 only when a GPU worked and every comparison agreed (1e-3 rel).
#
# Usage: scripts/gpu_check.sh [OUT.json] [GPU]
# Interpreter: $FCNSEG_PY, else .venv/bin/python after `make setup CAFFE=cuda`. For a GPU machine without
# registries or Python 3.11, the whole check (this plus speed against PyTorch, train and infer --gpu) travels
# as the bundle of `make gpu-bundle`: bash .gpu/run.sh (docs/gpu-check.md).
# Needs an NVIDIA driver >= 580 (CUDA 13.0) on the machine; nothing else.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-gpu_check.json}
DEVICE=${2:-0}
PY=${FCNSEG_PY:-$ROOT/.venv/bin/python}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export GLOG_minloglevel=2 OMP_WAIT_POLICY=PASSIVE
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv >&2 || true
exec timeout 480 "$PY" "$ROOT/scripts/gpu_check.py" --device "$DEVICE" --out "$OUT"
