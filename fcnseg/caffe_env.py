"""Importing pycaffe quietly, and choosing CPU or GPU mode without letting Caffe abort the process.

`import_caffe()` returns the module (glog silenced unless FCNSEG_CAFFE_LOG says otherwise);
`set_device(gpu)` switches modes after probing, in a child process, that the build has CUDA and the
device exists: a CPU-only Caffe hit with a GPU call dies with SIGABRT, which Python cannot catch.
`CaffeLogRedirect(path)` sends Caffe's glog output to a run's caffe.log while Python keeps the terminal.
"""
from __future__ import annotations

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


_GPU_PROBE = ("import os,sys; os.environ['GLOG_minloglevel']='3'; import caffe; "
              "caffe.set_device(int(sys.argv[1])); caffe.set_mode_gpu(); print('ok')")


def gpu_available(device: int) -> tuple[bool, str]:
    """Probe in a child process whether Caffe can run on GPU `device`. Returns (ok, reason)."""
    proc = subprocess.run([sys.executable, "-c", _GPU_PROBE, str(device)], capture_output=True, text=True)
    if proc.returncode == 0 and proc.stdout.strip() == "ok":
        return True, ""
    text = proc.stderr + proc.stdout
    if "CPU-only" in text or "Cannot use GPU in CPU-only Caffe" in text or "NO_GPU" in text:
        return False, "this pycaffe was built CPU-only (no CUDA)"
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or [f"exit code {proc.returncode}"]
    return False, f"Caffe could not open GPU {device}: {last[0].strip()}"


def set_device(gpu: Optional[int]):
    """CPU mode when `gpu` is None, else GPU `gpu` after a safe probe. Returns the caffe module."""
    caffe = import_caffe()
    if gpu is None:
        caffe.set_mode_cpu()
        return caffe
    if gpu < 0:
        raise CaffeUnavailableError(f"--gpu {gpu}: a GPU index must be >= 0")
    ok, reason = gpu_available(gpu)
    if not ok:
        raise CaffeUnavailableError(f"--gpu {gpu}: {reason}; run on the CPU with --cpu "
                                    "(or build Caffe with CUDA: README, 'Docker and GPU')")
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
