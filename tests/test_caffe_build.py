"""The pycaffe build itself: convolution forward/backward against a numpy reference.

scripts/caffe_patches/ thread im2col/col2im and ReLU with OpenMP; these checks prove the patched
loops compute exactly what the serial ones did (multi-channel inputs, padding, stride, and the
backward pass that goes through col2im). The recipe's cache keys: the CUDA variant has its own, and
its patches never change the CPU one.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

caffe = pytest.importorskip("caffe")
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def conv_reference(x, w, b, pad, stride):
    """Direct cross-correlation, NCHW, float64."""
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


@pytest.mark.parametrize("channels,pad,stride", [(1, 1, 1), (5, 1, 1), (7, 2, 2), (16, 0, 1)])
def test_convolution_forward_and_backward_match_numpy(tmp_path, channels, pad, stride):
    rng = np.random.default_rng(channels)
    n, h, w, out, k = 2, 13, 11, 6, 3
    proto = tmp_path / "conv.prototxt"
    proto.write_text(f"""
force_backward: true
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {n} dim: {channels} dim: {h} dim: {w} }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: {out} kernel_size: {k} pad: {pad} stride: {stride} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "relu" }}
""")
    net = caffe.Net(str(proto), caffe.TEST)
    x = rng.standard_normal((n, channels, h, w)).astype(np.float32)
    wt = rng.standard_normal((out, channels, k, k)).astype(np.float32)
    b = rng.standard_normal(out).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.params["conv"][0].data[...] = wt
    net.params["conv"][1].data[...] = b
    net.forward()
    ref = conv_reference(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), pad, stride)
    np.testing.assert_allclose(net.blobs["conv"].data, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.blobs["relu"].data, np.maximum(ref, 0), rtol=1e-4, atol=1e-4)

    # Backward: with L = sum(relu * g), dL/dx and dL/dw follow from the reference by linearity.
    g = rng.standard_normal(ref.shape).astype(np.float32)
    net.blobs["relu"].diff[...] = g
    net.params["conv"][0].diff[...] = 0
    net.backward()
    gc = g * (ref > 0)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = ref.shape[2:]
    dw = np.zeros_like(wt, dtype=np.float64)
    dxp = np.zeros_like(xp)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            dw[:, :, i, j] = np.einsum("nchw,nohw->oc", patch, gc)
            dxp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += np.einsum("nohw,oc->nchw", gc, wt[:, :, i, j].astype(np.float64))
    dx = dxp[:, :, pad:pad + h, pad:pad + w]
    np.testing.assert_allclose(net.params["conv"][0].diff, dw, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(net.blobs["data"].diff, dx, rtol=1e-3, atol=1e-3)



def _install_key(tmp_path, variant, scripts=None):
    """`install_caffe.sh PY --print-key` for FCNSEG_CAFFE=variant (nothing is built), from `scripts`."""
    script = Path(scripts or SCRIPTS) / "install_caffe.sh"
    env = {**os.environ, "FCNSEG_CAFFE": variant, "FCNSEG_CACHE": str(tmp_path / "cache")}
    return subprocess.run(["bash", str(script), sys.executable, "--print-key"], env=env, capture_output=True,
                          text=True)


def test_cuda_build_has_its_own_cache_key_and_cpu_key_ignores_cuda_patches(tmp_path):
    cpu, cuda = _install_key(tmp_path, "cpu"), _install_key(tmp_path, "cuda")
    assert cpu.returncode == 0 and cuda.returncode == 0, cpu.stderr + cuda.stderr
    cpu_key, cuda_key = cpu.stdout.strip(), cuda.stdout.strip()
    assert len(cpu_key) == 16 and cuda_key.startswith("cuda-") and cuda_key[5:] != cpu_key
    # One more cuda patch: the cuda key changes, the CPU key (and so the CPU cache) does not.
    copy = tmp_path / "scripts"
    shutil.copytree(SCRIPTS, copy)
    (copy / "caffe_patches" / "cuda" / "0199-extra.patch").write_text("--- a/x\n+++ b/x\n")
    assert _install_key(tmp_path, "cpu", copy).stdout.strip() == cpu_key
    assert _install_key(tmp_path, "cuda", copy).stdout.strip() not in ("", cuda_key)
    bad = _install_key(tmp_path, "rocm")
    assert bad.returncode == 1
    assert "FCNSEG_CAFFE must be cpu or cuda, not 'rocm'" in bad.stderr
