#!/usr/bin/env bash
# Pack what scripts/gpu_check.sh needs on a GPU machine that has an NVIDIA driver but maybe another Python
# and no package registry: this machine's Python (stdlib), the venv's packages, the CUDA pycaffe with every
# shared library it loads except glibc's and the driver's libcuda (so boost, glog, protobuf, hdf5, OpenBLAS,
# cudart, cuBLAS, cuRAND travel with it), and fcnseg, configs/ and scripts/ of this checkout.
#
# Usage: scripts/gpu_bundle.sh OUT_DIR        (OUT_DIR must not exist; about 1.5 GB, mostly cuBLASLt)
#   then: tar -C OUT_DIR/.. -czf fcnseg-gpu.tar.gz "$(basename OUT_DIR)"; on the GPU machine:
#   tar -xzf fcnseg-gpu.tar.gz && fcnseg-gpu/scripts/gpu_check.sh gpu_check.json
# Environment: FCNSEG_PY the interpreter (default .venv/bin/python); the CUDA pycaffe comes from
# `FCNSEG_CAFFE=cuda scripts/install_caffe.sh` (cached; built when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: gpu_bundle.sh OUT_DIR}
PY=${FCNSEG_PY:-$ROOT/.venv/bin/python}
[ -e "$OUT" ] && { echo "gpu_bundle: $OUT exists; give a new folder" >&2; exit 2; }
log() { echo "[gpu_bundle] $*" >&2; }

CAFFE_PY=$(FCNSEG_CAFFE=cuda bash "$ROOT/scripts/install_caffe.sh" "$PY" | tail -n 1)
BASE=$("$PY" -c 'import sys; print(sys.base_prefix)')
VER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
B=$OUT/.bundle
mkdir -p "$B/python/bin" "$B/python/lib" "$B/site" "$B/lib"

log "fcnseg, configs, scripts"
(cd "$ROOT" && git ls-files -z fcnseg configs scripts pyproject.toml | xargs -0 cp --parents -t "$OUT")

log "Python $VER from $BASE"
cp -L "$BASE/bin/python$VER" "$B/python/bin/"
cp -L "$BASE"/lib/libpython"$VER"*.so* "$B/python/lib/" 2>/dev/null || true
tar -C "$BASE/lib" --exclude="python$VER/site-packages" --exclude="python$VER/test" \
    --exclude="python$VER/idlelib" --exclude="python$VER/tkinter" --exclude="python$VER/turtledemo" \
    --exclude="python$VER/ensurepip" -cf - "python$VER" | tar -C "$B/python/lib" -xf -

log "packages from $SITE (without onnx/onnxruntime, dask, pip, pytest)"
tar -C "$SITE" --exclude='onnx*' --exclude='dask*' --exclude='distributed*' --exclude='pip' --exclude='pip-*' \
    --exclude='_pytest' --exclude='pytest*' --exclude='*.pth' --exclude='__editable__*' -cf - . | tar -C "$B/site" -xf -

log "CUDA pycaffe from $CAFFE_PY and the shared libraries it and Python's extension modules load"
cp -r "$CAFFE_PY" "$B/caffe"
# Everything ldd resolves, except glibc's own libraries and the NVIDIA driver's (the GPU machine's).
for elf in "$CAFFE_PY/caffe/_caffe.so" "$BASE/bin/python$VER" "$BASE/lib/python$VER"/lib-dynload/*.so; do
  if ldd "$elf" | grep "not found" >&2; then echo "gpu_bundle: $elf misses libraries (above)" >&2; exit 1; fi
  ldd "$elf" | awk '$3 ~ /^\// {print $3}'
done | sort -u | grep -Ev '/(libc|libm|libpthread|libdl|librt|libutil|libcuda|ld-linux[^/]*)\.so' \
  | while read -r lib; do cp -L "$lib" "$B/lib/"; done
log "bundle ready: $OUT ($(du -sh "$OUT" | cut -f1)); run $OUT/scripts/gpu_check.sh there"
