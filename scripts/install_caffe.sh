#!/usr/bin/env bash
# Build pycaffe (CPU, or CUDA + CPU) from the PyPI sdist brocolli-caffe==9.0.2 into a cache outside the
# repository, prove the result works, and print the folder that must go on sys.path.
#
# Usage: scripts/install_caffe.sh PYTHON [--print-key]
#   --print-key  print the cache key of this recipe and exit (nothing is built)
#   PYTHON  the interpreter pycaffe is built for (the project's .venv/bin/python); it needs numpy,
#           protobuf, pip, setuptools and wheel.
# Environment:
#   FCNSEG_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/fcnseg)
#   FCNSEG_JOBS   parallel compile jobs (default: number of cores)
#   FCNSEG_CAFFE  cpu (default) or cuda: cuda also compiles Caffe's CUDA kernels with a CUDA 13 toolkit
#                 made of PyPI's NVIDIA wheels (installed into $FCNSEG_CACHE/cuda-toolkit/KEY, no driver or
#                 GPU needed to build), applies caffe_patches/cuda/*.patch too, and links cuBLAS, cuRAND and
#                 the CUDA runtime. The result runs in CPU mode on machines without a GPU as well.
#   FCNSEG_CUDA_ARCHS  CMake CUDA architectures of the cuda build (default: SASS for sm_75 80 86 89 90
#                 and PTX of sm_90, which newer GPUs JIT-compile)
# Output: the last line on stdout is the python folder holding the importable `caffe` package.
# Exit: 0 when the cached or fresh build passed scripts/check_caffe.py, 1 otherwise.
set -euo pipefail

PY=${1:?usage: install_caffe.sh PYTHON}
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${FCNSEG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fcnseg}
JOBS=${FCNSEG_JOBS:-$(nproc)}
VARIANT=${FCNSEG_CAFFE:-cpu}
case "$VARIANT" in cpu|cuda) ;; *) echo "[install_caffe] ERROR: FCNSEG_CAFFE must be cpu or cuda, not '$VARIANT'" >&2; exit 1;; esac
# CUDA 13.0 wheels: the level of the 580 drivers seen on GPU machines (a newer runtime needs a newer driver).
CUDA_WHEELS="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96
nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35"
CUDA_ARCHS=${FCNSEG_CUDA_ARCHS:-75-real;80-real;86-real;89-real;90-real;90-virtual}

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
# -fopenmp: the patches in caffe_patches/ thread im2col/col2im, ReLU, max pooling, crop, BatchNorm and
# Scale (BLAS is threaded already). -ldnnl: 0004/0006 run Convolution/Deconvolution on the CPU through
# oneDNN (libdnnl-dev): Winograd for 3x3 layers, direct kernels, and its sgemm for FCN's fc6.
OPT_FLAGS="-O3 -DNDEBUG -fopenmp"
DEFINES="-DUSE_LMDB"
CXX_FLAGS="$OPT_FLAGS $DEFINES -I/usr/include/hdf5/serial -I$NUMPY_INC -I$PY_INC"
LINK_LIBS="-l$BOOST_PY -L$LIBDIR/hdf5/serial -lhdf5_serial_hl -lhdf5_serial -llmdb -ldnnl -fopenmp"
PATCH_DIR=$HERE/caffe_patches
# Paths (the venv's numpy headers, the interpreter prefix) stay out of the key so that every clone
# of the repository on this machine shares one build; their versions are in it.
RECIPE="sdist=$SDIST_SHA256
python=$PY_VER numpy=$NUMPY_MAJOR arch=$ARCH
cxx=$(g++ --version | head -n1)
protoc=$(protoc --version)
boost=$(dpkg-query -W -f='${Version}' libboost-python-dev 2>/dev/null || true)
openblas=$(dpkg-query -W -f='${Version}' libopenblas-dev 2>/dev/null || true)
dnnl=$(dpkg-query -W -f='${Version}' libdnnl-dev 2>/dev/null || true)
cxxflags=$OPT_FLAGS $DEFINES
libs=$LINK_LIBS
patches=$(cd "$PATCH_DIR" 2>/dev/null && find . -maxdepth 1 -name '*.patch' -type f | sort | xargs -r sha256sum | sha256sum | cut -c1-16)"
if [ "$VARIANT" = cuda ]; then
  CUDA_KEY=$(printf '%s' "$CUDA_WHEELS" | sha256sum | cut -c1-16)
  RECIPE="$RECIPE
variant=cuda
cuda_wheels=$(echo $CUDA_WHEELS)
cuda_archs=$CUDA_ARCHS
cuda_patches=$(cd "$PATCH_DIR/cuda" && find . -maxdepth 1 -name '*.patch' -type f | sort | xargs -r sha256sum | sha256sum | cut -c1-16)"
fi
KEY=$(printf '%s' "$RECIPE" | sha256sum | cut -c1-16)
[ "$VARIANT" = cuda ] && KEY=cuda-$KEY
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

# ---- cuda: the toolkit from PyPI's NVIDIA wheels, laid out as one root FindCUDAToolkit accepts ---------
CMAKE_CUDA_ARGS=()
if [ "$VARIANT" = cuda ]; then
  TK_HOME=$CACHE/cuda-toolkit/$CUDA_KEY
  TK=$TK_HOME/nvidia/cu13
  if [ ! -f "$TK_HOME/OK" ]; then
    log "installing the CUDA 13 toolkit wheels into $TK_HOME"
    mkdir -p "$CACHE/cuda-toolkit"
    TK_WORK=$(mktemp -d "$CACHE/cuda-toolkit/.build-$CUDA_KEY.XXXXXX")
    # One pip call: separate --target installs into one folder silently skip what already exists.
    "$PY" -m pip install -q --no-deps --target "$TK_WORK" $CUDA_WHEELS >&2 \
      || { rm -rf "$TK_WORK"; die "pip could not install the CUDA wheels: $(echo $CUDA_WHEELS)"; }
    T=$TK_WORK/nvidia/cu13
    [ -x "$T/bin/nvcc" ] && [ -x "$T/nvvm/bin/cicc" ] || { rm -rf "$TK_WORK"; die "the CUDA wheels lack nvcc or cicc under $T"; }
    ln -sfn lib "$T/lib64"   # nvcc.profile and FindCUDAToolkit look in lib64
    # The wheels carry only the versioned runtime names; the linker wants the plain ones.
    for so in cudart:13 cublas:13 cublasLt:13 curand:10; do
      ln -sfn "lib${so%%:*}.so.${so##*:}" "$T/lib/lib${so%%:*}.so"
    done
    touch "$TK_WORK/OK"
    rm -rf "$TK_HOME"
    mv "$TK_WORK" "$TK_HOME"
  fi
  "$TK/bin/nvcc" --version | tail -n 2 >&2
  # Same defines and include dirs as the C++ sources: the .cu files share their headers.
  CMAKE_CUDA_ARGS=(-DCPU_ONLY=OFF -DCMAKE_CUDA_COMPILER="$TK/bin/nvcc" -DCUDAToolkit_ROOT="$TK"
                   -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" -DCMAKE_CUDA_RUNTIME_LIBRARY=Shared
                   -DCMAKE_BUILD_RPATH="$TK/lib")
fi

# ---- build in a scratch folder, publish by rename ---------------------------------------------------
mkdir -p "$CACHE/caffe"
WORK=$(mktemp -d "$CACHE/caffe/.build-$KEY.XXXXXX")
# FCNSEG_KEEP_BUILD=1 keeps the scratch folder of a failed build (to read its logs or resume make there).
if [ -n "${FCNSEG_KEEP_BUILD:-}" ]; then trap '[ -f "$PREFIX/OK" ] && rm -rf "$WORK"' EXIT; else trap 'rm -rf "$WORK"' EXIT; fi
log "building pycaffe ($VARIANT) in $WORK ($JOBS jobs; cpu: about 13 minutes on 2 cores)"
tar -xzf "$TARBALL" -C "$WORK"
SRC=$WORK/$SDIST_NAME-$SDIST_VERSION
for p in "$PATCH_DIR"/*.patch; do
  [ -f "$p" ] || continue
  log "applying $(basename "$p")"
  patch -d "$SRC" -p1 --quiet < "$p" || die "patch $p does not apply"
done
if [ "$VARIANT" = cuda ]; then
  for p in "$PATCH_DIR"/cuda/*.patch; do
    log "applying cuda/$(basename "$p")"
    patch -d "$SRC" -p1 --quiet < "$p" || die "patch $p does not apply"
  done
fi
# The fork links Anaconda's library names; Debian names them differently and lacks -llmdb.
sed -i "s|-lboost_python -lhdf5_hl -lhdf5|$LINK_LIBS|" "$SRC/python/CMakeLists.txt"
grep -q -- "-llmdb" "$SRC/python/CMakeLists.txt" || die "could not patch the link line of python/CMakeLists.txt"

mkdir -p "$SRC/build"
( cd "$SRC/build" &&
  cmake .. -DCMAKE_BUILD_TYPE=Release \
        -DANACONDA_HOME="$PY_PREFIX" -DPYTHON_VERSION="python$PY_VER" \
        -DCMAKE_CXX_FLAGS="$CXX_FLAGS -I$SRC/src" \
        -DCMAKE_CUDA_FLAGS="-O3 -DNDEBUG $DEFINES -I/usr/include/hdf5/serial -I$NUMPY_INC -I$PY_INC -I$SRC/src" \
        "${CMAKE_CUDA_ARGS[@]}" >"$WORK/cmake.log" 2>&1 ) \
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
# The applied patches by name (not part of the key, whose recipe has their hash): `fcnseg info` lists them.
( cd "$PATCH_DIR" && ls -1 *.patch && if [ "$VARIANT" = cuda ]; then ls -1 cuda/*.patch; fi ) > "$STAGE/PATCHES"

log "checking the build"
"$PY" "$HERE/check_caffe.py" "$STAGE/python" >&2 || die "the fresh build fails its check (above)"
touch "$STAGE/OK"
rm -rf "$PREFIX"
mv "$STAGE" "$PREFIX"
log "pycaffe ready in $PREFIX"
echo "$CAFFE_PY"
