"""Importing pycaffe quietly, and choosing CPU or GPU mode without letting Caffe abort the process.

`import_caffe()` returns the module (glog silenced unless FCNSEG_CAFFE_LOG says otherwise);
`set_device(gpu)` switches modes after probing, in a child process, that the build has CUDA and the
device exists: a CPU-only Caffe hit with a GPU call dies with SIGABRT, which Python cannot catch.
`CaffeLogRedirect(path)` sends Caffe's glog output to a run's caffe.log while Python keeps the terminal.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from .errors import CaffeUnavailableError

_SETUP_HINT = "run `make setup` (it builds pycaffe) and use .venv/bin/fcnseg"


def import_caffe():
    """Return the `caffe` module with glog quiet (set GLOG_minloglevel before the first import)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    # Caffe's OpenMP loops (im2col, ReLU) alternate with OpenBLAS's own threads; spinning OpenMP
    # workers would steal the cores BLAS needs between regions.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import caffe  # noqa: PLC0415 - imported lazily so config-only commands never need Caffe
    except ImportError as exc:
        raise CaffeUnavailableError(f"pycaffe is not importable ({exc}); {_SETUP_HINT}") from None
    return caffe


def caffe_pb2():
    """The generated protobuf module of the installed Caffe."""
    return import_caffe().proto.caffe_pb2


# The child imports caffe, then looks at what the import loaded: a CUDA build links libcudart, a CPU-only
# one does not. It asks that same runtime (through ctypes, so nothing can CHECK-abort) for the driver and
# the device count before Caffe touches the GPU, and only then runs a small convolution on GPU `device`.
# It prints one line: `cpu-only`, `no-driver RUNTIME`, `cuda-error RUNTIME DRIVER CODE TEXT`,
# `no-device COUNT` or `ok NAME`.
_GPU_PROBE = r"""
import ctypes, os, sys, tempfile
os.environ["GLOG_minloglevel"] = "3"
device = int(sys.argv[1])
import caffe
libs = [ln.split()[-1] for ln in open("/proc/self/maps") if "/libcudart.so" in ln]
if not libs:
    print("cpu-only"); sys.exit(0)
rt = ctypes.CDLL(libs[0])
rt.cudaGetErrorString.restype = ctypes.c_char_p
runtime, driver, count = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
rt.cudaRuntimeGetVersion(ctypes.byref(runtime))
rt.cudaDriverGetVersion(ctypes.byref(driver))
if driver.value == 0:
    print("no-driver", runtime.value); sys.exit(0)
err = rt.cudaGetDeviceCount(ctypes.byref(count))
if err == 100:  # cudaErrorNoDevice: a driver, but no GPU visible to this process
    print("no-device 0"); sys.exit(0)
if err != 0:
    print("cuda-error", runtime.value, driver.value, err, rt.cudaGetErrorString(err).decode()); sys.exit(0)
if device >= count.value:
    print("no-device", count.value); sys.exit(0)
prop = ctypes.create_string_buffer(16384)  # cudaDeviceProp starts with char name[256]
get = getattr(rt, "cudaGetDeviceProperties_v2", None) or rt.cudaGetDeviceProperties
get(prop, device)
caffe.set_device(device)
caffe.set_mode_gpu()
with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
    f.write('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "d" top: "c" convolution_param { num_output: 2 '
            'kernel_size: 3 weight_filler { type: "constant" value: 1 } } }\n')
net = caffe.Net(f.name, caffe.TEST)
os.unlink(f.name)
net.blobs["d"].data[...] = 1
out = net.forward()["c"]
assert out.shape == (1, 2, 6, 6) and (out == 9).all(), out
print("ok", prop.value[:256].decode(errors="replace"))
"""


def _cuda_version(code: str) -> str:
    """CUDA's integer version (13000) as text (13.0)."""
    value = int(code)
    return f"{value // 1000}.{value % 1000 // 10}"


@functools.lru_cache(maxsize=None)
def gpu_available(device: int) -> tuple[bool, str]:
    """Probe, in a child process, whether Caffe can run on GPU `device`.

    Returns (True, "GPU N: NAME") when a small convolution ran there, else (False, reason) where the
    reason tells apart a CPU-only build, a CUDA build without an NVIDIA driver (or with one too old),
    a GPU index the driver does not have, and a Caffe failure on a device that exists.
    """
    proc = subprocess.run([sys.executable, "-c", _GPU_PROBE, str(device)], capture_output=True, text=True,
                          timeout=300)
    words = proc.stdout.strip().split()
    status = words[0] if proc.returncode == 0 and words else "failed"
    if status == "ok":
        return True, f"GPU {device}: {' '.join(words[1:])}"
    if status == "cpu-only":
        return False, "this pycaffe was built CPU-only (no CUDA); build the CUDA one with `make setup CAFFE=cuda`"
    if status == "no-driver":
        return False, (f"this pycaffe has CUDA {_cuda_version(words[1])} but no NVIDIA driver was found "
                       "(libcuda.so.1); install the NVIDIA driver, or in Docker run with --gpus all")
    if status == "cuda-error":
        return False, (f"the NVIDIA driver (CUDA {_cuda_version(words[2])}) refuses this pycaffe's CUDA "
                       f"{_cuda_version(words[1])} runtime: {' '.join(words[4:])} (error {words[3]}); "
                       "update the driver")
    if status == "no-device":
        count = int(words[1])
        seen = "no GPU" if count == 0 else f"{count} GPU(s), numbered 0-{count - 1}"
        return False, (f"there is no GPU {device}: the NVIDIA driver shows this process {seen} "
                       "(check CUDA_VISIBLE_DEVICES, or --gpus all in Docker)")
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    last = lines[-1] if lines else f"exit code {proc.returncode}"
    return False, f"Caffe failed on GPU {device}: {last}"


def require_gpu(gpu: Optional[int]) -> None:
    """Nothing for CPU mode (`gpu` None) or a GPU the probe ran on; else CaffeUnavailableError saying why."""
    if gpu is None:
        return
    if gpu < 0:
        raise CaffeUnavailableError(f"--gpu {gpu}: a GPU index must be >= 0")
    ok, reason = gpu_available(gpu)
    if not ok:
        raise CaffeUnavailableError(f"--gpu {gpu}: {reason}; or run on the CPU with --cpu (docs/gpu.md)")


def set_device(gpu: Optional[int]):
    """CPU mode when `gpu` is None, else GPU `gpu` after a safe probe. Returns the caffe module.

    Raises CaffeUnavailableError (from `require_gpu`) for a GPU this Caffe cannot use.
    """
    caffe = import_caffe()
    if gpu is None:
        caffe.set_mode_cpu()
        return caffe
    require_gpu(gpu)
    caffe.set_device(gpu)
    caffe.set_mode_gpu()
    return caffe


class CaffeLogRedirect:
    """Send file descriptor 2 (where glog writes) to caffe.log while Python's stderr keeps the terminal."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._log = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._old_stderr = sys.stderr
        sys.stderr = os.fdopen(os.dup(self._saved), "w", buffering=1)
        os.dup2(self._log, 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        sys.stderr.close()
        sys.stderr = self._old_stderr
        os.close(self._log)
        os.close(self._saved)
        return False
