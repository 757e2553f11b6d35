#!/usr/bin/env bash
# The GPU check from the bundle that `make gpu-bundle` writes (this file is its run.sh; docs/gpu-check.md).
#
# Usage: bash .gpu/run.sh [OUT_DIR] [GPU] [CHECK OPTIONS...]
#   OUT_DIR  where gpu_check.json and gpu_check.txt go (default: $OUT when set, else ./gpu_check_out)
#   GPU      the device index (default 0)
#   further options go to scripts/gpu_device_check.py (e.g. --rounds 5, or --rehearse-cpu without a GPU)
# Unpacks fcnseg-gpu.tar.xz beside it into $FCNSEG_GPU_WORK (default /tmp/fcnseg-gpu; reused when its
# checksum matches), finds the CUDA 13 runtime libraries of this machine, and runs the bundle's own Python
# 3.11 on scripts/gpu_device_check.py. Nothing is installed or written outside those two folders.
#
# CUDA libraries: libcudart.so.13, libcublas.so.13, libcublasLt.so.13 and libcurand.so.10 are looked up in
#   1. the directories of $FCNSEG_CUDA_LIBS (colon-separated; a `pip install --target` folder works too), then
#   2. nvidia/cu13/lib (and nvidia/{cuda_runtime,cublas,curand}/lib) in the site-packages of every Python
#      found: $FCNSEG_CUDA_PYTHONS, /opt/*/.venv/bin/python3, python3 on PATH, /usr/bin/python3, and the
#      folders /opt/*/.venv/lib/python3*/site-packages, /usr/local/lib/python3*/dist-packages, then
#   3. /usr/local/cuda*/lib64, /usr/local/cuda*/targets/x86_64-linux/lib, and the toolkit that
#      `make setup CAFFE=cuda` / `make gpu-bundle` installed (~/.cache/fcnseg/cuda-toolkit/*/nvidia/cu13/lib).
# It prints which file it uses for each, or which it misses (then it stops, exit 3). The NVIDIA driver's
# libcuda.so.1 is found the usual way (ld.so.conf, or $LD_LIBRARY_PATH, which is kept).
# Exit: the check's (0 all passed, 1 a check failed or no usable GPU), 2 usage, 3 CUDA libraries missing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUTDIR=${1:-${OUT:-$PWD/gpu_check_out}}
DEVICE=${2:-0}
ARCHIVE=$HERE/fcnseg-gpu.tar.xz
WORK=${FCNSEG_GPU_WORK:-/tmp/fcnseg-gpu}
say() { echo "[gpu-check] $*" >&2; }
[ -f "$ARCHIVE" ] || { say "no $ARCHIVE: make the bundle with \`make gpu-bundle\`"; exit 2; }
case "$DEVICE" in ''|*[!0-9]*) say "GPU must be a device index (0, 1, ...), not '$DEVICE'"; exit 2;; esac
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

# ---- unpack (once per archive) ----------------------------------------------------------------------
SUM=$(sha256sum "$ARCHIVE" | cut -c1-64)
B=$WORK/fcnseg-gpu
if [ "$(cat "$WORK/.sha256" 2>/dev/null || true)" != "$SUM" ]; then
  t=$(date +%s)
  rm -rf "$WORK"
  mkdir -p "$WORK"
  tar -C "$WORK" -xJf "$ARCHIVE"
  echo "$SUM" > "$WORK/.sha256"
  say "unpacked $(du -sm "$B" | cut -f1) MiB into $B in $(( $(date +%s) - t )) s"
fi

# ---- the CUDA 13 libraries of this machine ---------------------------------------------------------
NEEDED=$(cd "$B" && "$B/python/bin/python3.11" -c 'import json; print(" ".join(json.load(open("MANIFEST.json"))["cuda_needed"]))' 2>/dev/null) \
  || NEEDED="libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10"
CANDIDATES=()
IFS=: read -r -a fromenv <<< "${FCNSEG_CUDA_LIBS:-}"
SITES=()
for d in "${fromenv[@]}"; do [ -n "$d" ] && CANDIDATES+=("$d") && SITES+=("$d"); done
for py in ${FCNSEG_CUDA_PYTHONS:-} /opt/*/.venv/bin/python3 "$(command -v python3 || true)" /usr/bin/python3; do
  [ -x "$py" ] || continue
  while IFS= read -r s; do SITES+=("$s"); done < <(env -u PYTHONHOME -u PYTHONPATH "$py" -c \
    'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null || true)
done
for s in /opt/*/.venv/lib/python3*/site-packages /usr/local/lib/python3*/dist-packages /usr/lib/python3/dist-packages; do
  SITES+=("$s")
done
for s in "${SITES[@]}"; do
  for d in "$s/nvidia/cu13/lib" "$s/nvidia/cuda_runtime/lib" "$s/nvidia/cublas/lib" "$s/nvidia/curand/lib"; do
    CANDIDATES+=("$d")
  done
done
for d in /usr/local/cuda*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib \
         "${FCNSEG_CACHE:-${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/fcnseg}"/cuda-toolkit/*/nvidia/cu13/lib; do
  CANDIDATES+=("$d")
done
CUDA_DIRS=""
CUDA_REPORT=""
MISSING=""
for lib in $NEEDED; do
  found=""
  for d in "${CANDIDATES[@]}"; do
    if [ -f "$d/$lib" ]; then found=$(cd "$d" && pwd)/$lib; break; fi
  done
  if [ -n "$found" ]; then
    say "cuda: $lib from $found"
    CUDA_REPORT="$CUDA_REPORT$lib=$found;"
    dir=$(dirname "$found")
    case ":$CUDA_DIRS:" in *":$dir:"*) ;; *) CUDA_DIRS=${CUDA_DIRS:+$CUDA_DIRS:}$dir;; esac
  else
    say "cuda: $lib MISSING"
    CUDA_REPORT="$CUDA_REPORT$lib=;"
    MISSING="$MISSING $lib"
  fi
done
if [ -n "$MISSING" ]; then
  say "stopped: the CUDA 13 libraries$MISSING are not on this machine; install the pip packages nvidia-cuda-runtime, nvidia-cublas and nvidia-curand (CUDA 13) or name their folder in FCNSEG_CUDA_LIBS"
  printf '{"ok": false, "stage": "cuda-libraries", "missing": "%s", "searched_sites": %d}\n' "${MISSING# }" "${#SITES[@]}" > "$OUTDIR/gpu_check.json"
  exit 3
fi

# ---- the bundle's Python ----------------------------------------------------------------------------
export FCNSEG_HOST_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} FCNSEG_CUDA_FOUND=$CUDA_REPORT FCNSEG_BUNDLE=$B
export LD_LIBRARY_PATH=$B/lib:$B/python/lib${CUDA_DIRS:+:$CUDA_DIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONHOME=$B/python PYTHONPATH=$B/caffe:$B/site:$B/src PYTHONNOUSERSITE=1 PYTHONUNBUFFERED=1
export GLOG_minloglevel=2 OMP_WAIT_POLICY=PASSIVE MPLBACKEND=Agg MPLCONFIGDIR=$WORK/mpl
cd "$B/src"
exec "$B/python/bin/python3.11" scripts/gpu_device_check.py --out "$OUTDIR" --device "$DEVICE" --data "$B/data" "${@:3}"
