"""The `--gpu N` probe: which of CPU-only build / no driver / no such device / device works applies here.

The expected case is worked out independently of the probe: whether the imported `_caffe.so` links the
CUDA runtime (its bytes name libcudart), and whether the dynamic loader can find an NVIDIA driver.
"""
import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fcnseg.caffe_env import gpu_available, import_caffe, set_device
from fcnseg.errors import CaffeUnavailableError


def _build_has_cuda() -> bool:
    caffe = import_caffe()
    return b"libcudart.so" in Path(caffe._caffe.__file__).read_bytes()


def _driver_present() -> bool:
    return ctypes.util.find_library("cuda") is not None or Path("/dev/nvidiactl").exists()


def test_probe_names_what_is_missing_for_a_device_that_cannot_exist():
    ok, reason = gpu_available(99)
    assert not ok
    if not _build_has_cuda():
        assert reason.startswith("this pycaffe was built CPU-only (no CUDA)")
        assert "make setup CAFFE=cuda" in reason
    elif not _driver_present():
        assert reason.startswith("this pycaffe has CUDA 13.")
        assert "no NVIDIA driver was found" in reason
    else:
        assert reason.startswith("there is no GPU 99: the NVIDIA driver shows this process")


def test_probe_on_gpu_0_agrees_with_the_build_and_driver():
    ok, reason = gpu_available(0)
    if not _build_has_cuda() or not _driver_present():
        assert not ok
        assert "CPU-only" in reason or "no NVIDIA driver" in reason
    else:  # a driver: either GPU 0 ran the probe's convolution, or the reason says why not
        assert ok == reason.startswith("GPU 0: "), reason


def test_set_device_refuses_a_negative_index_and_an_unusable_gpu():
    with pytest.raises(CaffeUnavailableError, match=r"--gpu -1: a GPU index must be >= 0"):
        set_device(-1)
    with pytest.raises(CaffeUnavailableError, match=r"^--gpu 99: .*run on the CPU with --cpu"):
        set_device(99)


def test_gpu_check_script_without_a_usable_gpu_exits_1_naming_the_reason(tmp_path):
    ok, reason = gpu_available(0)
    if ok:
        pytest.skip("GPU 0 works here: the GPU check is the one to run (docs/gpu-check.md)")
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["nets"] == {}
    assert report["probe"] == reason
    assert json.loads(proc.stdout) == report
