#!/usr/bin/env bash
# Idempotent set-up: Debian build dependencies, .venv, pycaffe (cached build), fcnseg editable.
# A second run takes seconds. Usage: scripts/setup.sh   (run from anywhere; acts on the repository)
# FCNSEG_CAFFE=cuda points .venv at the CUDA pycaffe instead of the CPU one (built once, cached; docs/gpu.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=$ROOT/.venv
PYTHON=${PYTHON:-python3}
log() { echo "[setup] $*" >&2; }

# ---- 1. Debian packages the Caffe build needs ----------------------------------------------------------
DEBS="libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-regex-dev libboost-python-dev
libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev libhdf5-dev liblmdb-dev libopenblas-dev
libdnnl-dev cmake g++ make patch"
# What Qt and OpenGL load for the napari plugin (fcnseg[napari]): Mesa's GL/EGL, xcb, xkbcommon, fontconfig, fonts;
# and Xvfb, the X server its tests run a viewer in.
GUI_DEBS="libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libdbus-1-3 libfontconfig1 fonts-dejavu-core libxkbcommon0
libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 libx11-xcb1 xvfb xauth"
missing=""
for d in $DEBS $GUI_DEBS; do
  dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "install ok installed" || missing="$missing $d"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends $missing >&2
  else
    echo "setup: missing Debian packages; run as root: apt-get install -y$missing" >&2
    exit 2
  fi
fi

# ---- 2. the virtual environment with what the Caffe build itself needs --------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
VPY=$VENV/bin/python
# What the Caffe build and its check import (the rest comes with fcnseg in step 4).
if ! "$VPY" -c 'import numpy, google.protobuf, six, skimage, lmdb, wheel, setuptools' 2>/dev/null; then
  "$VPY" -m pip install -q --upgrade pip setuptools wheel numpy protobuf six scikit-image lmdb >&2
fi

# ---- 3. pycaffe (built once per machine and recipe, cached outside the repository) --------------------
CAFFE_PY=$(bash "$ROOT/scripts/install_caffe.sh" "$VPY" | tail -n 1)
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$CAFFE_PY" > "$SITE/fcnseg_pycaffe.pth"

# ---- 4. fcnseg itself, editable, with its dependencies -------------------------------------------------
STAMP=$VENV/.fcnseg-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  log "installing fcnseg (editable) and its dependencies"
  "$VPY" -m pip install -q -e ".[test]" >&2
  touch "$STAMP"
fi
"$VPY" -c 'import os; os.environ["GLOG_minloglevel"]="2"; import caffe, fcnseg' \
  || { echo "setup: fcnseg or caffe does not import in $VENV" >&2; exit 1; }
log "ready: $VENV (${FCNSEG_CAFFE:-cpu} pycaffe from $CAFFE_PY)"
