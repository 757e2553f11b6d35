#!/usr/bin/env bash
# Build pycaffe (CPU) from the PyPI sdist brocolli-caffe==9.0.2 into a cache outside the repository,
# prove the result works, and print the folder that must go on sys.path.
#
# Usage: scripts/install_caffe.sh PYTHON [--print-key]
#   --print-key  print the cache key of this recipe and exit (nothing is built)
#   PYTHON  the interpreter pycaffe is built for (the project's .venv/bin/python); it needs numpy,
#           protobuf, pip, setuptools and wheel.
# Environment:
#   FCNSEG_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/fcnseg)
#   FCNSEG_JOBS   parallel compile jobs (default: number of cores)
# Output: the last line on stdout is the python folder holding the importable `caffe` package.
# Exit: 0 when the cached or fresh build passed scripts/check_caffe.py, 1 otherwise.
set -euo pipefail

PY=${1:?usage: install_caffe.sh PYTHON}
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${FCNSEG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fcnseg}
JOBS=${FCNSEG_JOBS:-$(nproc)}

SDIST_NAME=brocolli-caffe
SDIST_VERSION=9.0.2
SDIST_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a

log() { echo "[install_caffe] $*" >&2; }
die() { echo "[install_caffe] ERROR: $*" >&2; exit 1; }

# ---- everything that reaches the compiler, linker or protoc goes into the cache key ----------------
PY_VER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PY_PREFIX=$("$PY" -c 'import sys; print(sys.base_prefix)')
PY_INC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NUMPY_INC=$("$PY" -c 'import numpy; print(numpy.get_include())')
NUMPY_MAJOR=$("$PY" -c 'import numpy; print(numpy.__version__.split(".")[0])')
ARCH=$(uname -m)
MULTIARCH=$(gcc -print-multiarch 2>/dev/null || echo "$ARCH-linux-gnu")
LIBDIR=/usr/lib/$MULTIARCH
BOOST_PY=boost_python${PY_VER/./}
# Portable flags only: the cache and the Docker image may land on other CPUs of the same arch.
# -fopenmp: the patches in caffe_patches/ thread im2col/col2im and ReLU (BLAS is threaded already).
OPT_FLAGS="-O3 -DNDEBUG -fopenmp"
DEFINES="-DUSE_LMDB"
CXX_FLAGS="$OPT_FLAGS $DEFINES -I/usr/include/hdf5/serial -I$NUMPY_INC -I$PY_INC"
LINK_LIBS="-l$BOOST_PY -L$LIBDIR/hdf5/serial -lhdf5_serial_hl -lhdf5_serial -llmdb -fopenmp"
PATCH_DIR=$HERE/caffe_patches
# Paths (the venv's numpy headers, the interpreter prefix) stay out of the key so that every clone
# of the repository on this machine shares one build; their versions are in it.
RECIPE="sdist=$SDIST_SHA256
python=$PY_VER numpy=$NUMPY_MAJOR arch=$ARCH
cxx=$(g++ --version | head -n1)
protoc=$(protoc --version)
boost=$(dpkg-query -W -f='${Version}' libboost-python-dev 2>/dev/null || true)
openblas=$(dpkg-query -W -f='${Version}' libopenblas-dev 2>/dev/null || true)
cxxflags=$OPT_FLAGS $DEFINES
libs=$LINK_LIBS
patches=$(cd "$PATCH_DIR" 2>/dev/null && find . -name '*.patch' -type f | sort | xargs -r sha256sum | sha256sum | cut -c1-16)"
KEY=$(printf '%s' "$RECIPE" | sha256sum | cut -c1-16)
PREFIX=$CACHE/caffe/$KEY
CAFFE_PY=$PREFIX/python

if [ "${1:-}" = --print-key ] || [ "${2:-}" = --print-key ]; then
  echo "$KEY"
  exit 0
fi
if [ -f "$PREFIX/OK" ]; then
  log "cached build $PREFIX"
  "$PY" "$HERE/check_caffe.py" "$CAFFE_PY" >&2 || die "cached build at $PREFIX fails its check; delete that folder and rerun"
  echo "$CAFFE_PY"
  exit 0
fi

# ---- fetch the sdist (pip, the registry's own client) and check it ----------------------------------
DL=$CACHE/downloads
TARBALL=$DL/$SDIST_NAME-$SDIST_VERSION.tar.gz
mkdir -p "$DL"
if [ ! -f "$TARBALL" ] || ! echo "$SDIST_SHA256  $TARBALL" | sha256sum -c --status; then
  log "downloading $SDIST_NAME==$SDIST_VERSION from PyPI"
  rm -f "$TARBALL"
  # --no-build-isolation: the sdist's setup.py wants conda; metadata alone builds with plain setuptools.
  "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
        "$SDIST_NAME==$SDIST_VERSION" -d "$DL" >&2 || die "pip could not download $SDIST_NAME==$SDIST_VERSION"
fi
echo "$SDIST_SHA256  $TARBALL" | sha256sum -c --status \
  || die "$TARBALL does not have sha256 $SDIST_SHA256; delete it and rerun"

# ---- build in a scratch folder, publish by rename ---------------------------------------------------
mkdir -p "$CACHE/caffe"
WORK=$(mktemp -d "$CACHE/caffe/.build-$KEY.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log "building pycaffe in $WORK ($JOBS jobs; about 13 minutes on 2 cores)"
tar -xzf "$TARBALL" -C "$WORK"
SRC=$WORK/$SDIST_NAME-$SDIST_VERSION
for p in "$PATCH_DIR"/*.patch; do
  [ -f "$p" ] || continue
  log "applying $(basename "$p")"
  patch -d "$SRC" -p1 --quiet < "$p" || die "patch $p does not apply"
done
# The fork links Anaconda's library names; Debian names them differently and lacks -llmdb.
sed -i "s|-lboost_python -lhdf5_hl -lhdf5|$LINK_LIBS|" "$SRC/python/CMakeLists.txt"
grep -q -- "-llmdb" "$SRC/python/CMakeLists.txt" || die "could not patch the link line of python/CMakeLists.txt"

mkdir -p "$SRC/build"
( cd "$SRC/build" &&
  cmake .. -DCMAKE_BUILD_TYPE=Release \
        -DANACONDA_HOME="$PY_PREFIX" -DPYTHON_VERSION="python$PY_VER" \
        -DCMAKE_CXX_FLAGS="$CXX_FLAGS -I$SRC/src" >"$WORK/cmake.log" 2>&1 ) \
  || { tail -n 30 "$WORK/cmake.log" >&2; die "cmake configure failed (log above)"; }
( cd "$SRC/build" && make -j"$JOBS" pycaffe >"$WORK/make.log" 2>&1 ) \
  || { grep -m 20 -B2 -A5 'error' "$WORK/make.log" >&2 || tail -n 40 "$WORK/make.log" >&2; die "compilation failed (errors above)"; }

# Copy the package with the real shared object (the build leaves a symlink into build/).
STAGE=$WORK/out
mkdir -p "$STAGE/python"
cp -rL "$SRC/python/caffe" "$STAGE/python/caffe"
rm -rf "$STAGE/python/caffe/test" "$STAGE/python/caffe/_caffe.cpp"
find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +
printf '%s\n' "$RECIPE" > "$STAGE/RECIPE"

log "checking the build"
"$PY" "$HERE/check_caffe.py" "$STAGE/python" >&2 || die "the fresh build fails its check (above)"
touch "$STAGE/OK"
rm -rf "$PREFIX"
mv "$STAGE" "$PREFIX"
log "pycaffe ready in $PREFIX"
echo "$CAFFE_PY"
