"""Every convolution and deconvolution shape of the shipped configs, on the patched pycaffe.

scripts/caffe_patches/0004 runs Convolution and Deconvolution on the CPU through oneDNN: Winograd
F(4x4, 3x3) for the 3x3 stride-1 layers (FCNSEG_CAFFE_WINOGRAD=0 gives oneDNN's direct kernels
instead), direct kernels for the other shapes, and im2col + oneDNN's sgemm for weight-bound layers
(FCN's fc6); 1x1 layers stay on Caffe's im2col+GEMM, and FCNSEG_CAFFE_DNNL=0 turns it all off. For
each shape that configs/*.yaml produce (channels, kernel, stride, pad, group as in the net; small
spatial size), the forward pass and both backward passes must equal a float64 numpy reference within
1e-4 relative, on every path (fcnseg's Winograd forced too); the weight and bias gradients must accumulate onto what was there,
as Caffe's contract is. Winograd is also checked on maps of many tiles with ragged edges, and each 3x3
layer shown to run the kernel fcnseg.cpu_kernels says this CPU allows (oneDNN's Winograd exists for
avx512_core only; `make test` runs this file again with ONEDNN_MAX_CPU_ISA=AVX2, as an AVX2-only CPU runs).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

caffe = pytest.importorskip("caffe")
from fcnseg import cpu_kernels  # noqa: E402
from fcnseg.config import load_config  # noqa: E402
from fcnseg.nets import deploy_net  # noqa: E402

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
LAYER_TYPES = ("Convolution", "Deconvolution")


def _one(values, default):
    return int(values[0]) if len(values) else default


def config_conv_shapes() -> list[tuple]:
    """(type, in channels, num_output, kernel, stride, pad, group, dilation, bias) of every
    Convolution/Deconvolution in the deploy nets of configs/*.yaml, each shape once."""
    shapes = set()
    for path in CONFIGS:
        config = load_config(path, ["data.root=null", "init.weights=null"])
        if config.model.num_classes is None:
            config.model.num_classes = 2
        channels = {}
        for layer in deploy_net(config, 64, 64).layer:
            if layer.type == "Input":
                channels[layer.top[0]] = layer.input_param.shape[0].dim[1]
                continue
            cin = channels[layer.bottom[0]]
            if layer.type in LAYER_TYPES:
                p = layer.convolution_param
                shapes.add((layer.type, cin, p.num_output, _one(p.kernel_size, 1), _one(p.stride, 1),
                            _one(p.pad, 0), p.group, _one(p.dilation, 1), int(p.bias_term)))
                cin = p.num_output
            for top in layer.top:
                channels[top] = cin
    return sorted(shapes)


def _taps(k, dil, stride, out):
    """(kernel row/col, slice of the padded input it reads for each output position)."""
    for i in range(k):
        yield i, slice(i * dil, i * dil + stride * (out - 1) + 1, stride)


def im2col(xp, k, stride, dil, oh, ow):
    """(n, c*k*k, oh*ow) columns of a padded input, rows ordered (c, ki, kj) as Caffe's weights."""
    n, c = xp.shape[:2]
    cols = np.empty((n, c, k, k, oh, ow))
    for i, rows in _taps(k, dil, stride, oh):
        for j, colsl in _taps(k, dil, stride, ow):
            cols[:, :, i, j] = xp[:, :, rows, colsl]
    return cols.reshape(n, c * k * k, oh * ow)


def col2im(cols, shape, k, stride, pad, dil, oh, ow):
    """Adjoint of im2col: scatter-add columns back onto an (n, c, h, w) image."""
    n, c, h, w = shape
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    cols = cols.reshape(n, c, k, k, oh, ow)
    for i, rows in _taps(k, dil, stride, oh):
        for j, colsl in _taps(k, dil, stride, ow):
            xp[:, :, rows, colsl] += cols[:, :, i, j]
    return xp[:, :, pad:pad + h, pad:pad + w]


def conv_reference(x, w, stride, pad, dil, group, gy=None, out_hw=None):
    """Convolution of image x (n, c, h, w) with Caffe weights w (o, c/group, k, k), float64.

    Returns y; with gy (the gradient of y) also (dx, dw)."""
    n, c, h, wd = x.shape
    o, k = w.shape[0], w.shape[2]
    ext = dil * (k - 1) + 1
    oh, ow = out_hw or ((h + 2 * pad - ext) // stride + 1, (wd + 2 * pad - ext) // stride + 1)
    cols = im2col(np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))), k, stride, dil, oh, ow)
    cg, og, kk = c // group, o // group, k * k
    y = np.empty((n, o, oh * ow))
    dcols, dw = np.empty_like(cols), np.empty_like(w)
    for g in range(group):
        wg = w[g * og:(g + 1) * og].reshape(og, cg * kk)
        colg = cols[:, g * cg * kk:(g + 1) * cg * kk]
        y[:, g * og:(g + 1) * og] = wg @ colg
        if gy is not None:
            gyg = gy.reshape(n, o, -1)[:, g * og:(g + 1) * og]
            dcols[:, g * cg * kk:(g + 1) * cg * kk] = wg.T @ gyg
            dw[g * og:(g + 1) * og] = np.einsum("nop,nqp->oq", gyg, colg).reshape(og, cg, k, k)
    y = y.reshape(n, o, oh, ow)
    if gy is None:
        return y
    return y, col2im(dcols, x.shape, k, stride, pad, dil, oh, ow), dw


def reference(kind, x, w, b, stride, pad, dil, group, gy_shape_rng):
    """Forward output, then (given the top gradient from gy_shape_rng(top shape)): dx, dw, db, float64."""
    if kind == "Convolution":
        y = conv_reference(x, w, stride, pad, dil, group)
        gy = gy_shape_rng(y.shape)
        _, dx, dw = conv_reference(x, w, stride, pad, dil, group, gy)
    else:  # the deconvolution is the convolution from its top (image side) to its bottom, reversed
        n, _, h, wd = x.shape
        ext = dil * (w.shape[2] - 1) + 1
        top = (n, w.shape[1] * group, stride * (h - 1) + ext - 2 * pad, stride * (wd - 1) + ext - 2 * pad)
        zeros = np.zeros(top)
        _, y, _ = conv_reference(zeros, w, stride, pad, dil, group, x, out_hw=(h, wd))
        gy = gy_shape_rng(y.shape)
        dx = conv_reference(gy, w, stride, pad, dil, group, out_hw=(h, wd))
        _, _, dw = conv_reference(gy, w, stride, pad, dil, group, x, out_hw=(h, wd))
    if b is not None:
        y = y + b[None, :, None, None]
    return y, gy, dx, dw, gy.sum(axis=(0, 2, 3))


def _input_hw(kind, kernel, stride, pad, dil):
    """A small input that gives a 3 x 4 output (convolution) or is 3 x 4 (deconvolution)."""
    if kind == "Deconvolution":
        return 3, 4
    ext = dil * (kernel - 1) + 1
    return tuple(max(stride * (out - 1) + ext - 2 * pad, 1) for out in (3, 4))


SHAPES = config_conv_shapes()


def test_the_configs_have_the_shapes_this_file_checks():
    kinds = {s[0] for s in SHAPES}
    assert kinds == {"Convolution", "Deconvolution"}
    kernels = {s[3] for s in SHAPES if s[0] == "Convolution"}
    assert {1, 3, 7} <= kernels  # 1x1 (GEMM), 3x3 trunk (Winograd), 7x7 fc6 (im2col + sgemm here)


# winograd: what this CPU runs by default; fcnseg: fcnseg's Winograd (patch 0008) on every layer Winograd may take.
PATHS = {"winograd": {}, "fcnseg": {"FCNSEG_CAFFE_WINOGRAD": "fcnseg"}, "direct": {"FCNSEG_CAFFE_WINOGRAD": "0"},
         "off": {"FCNSEG_CAFFE_DNNL": "0"}}


def _set_path(monkeypatch, path):
    for name in ("FCNSEG_CAFFE_DNNL", "FCNSEG_CAFFE_WINOGRAD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in PATHS[path].items():
        monkeypatch.setenv(name, value)


def _winograd_shape(shape) -> bool:
    kind, _, _, k, stride, *_ = shape
    return kind == "Convolution" and k == 3 and stride == 1


# FCNSEG_CAFFE_WINOGRAD changes only the 3x3 stride-1 convolutions; the other shapes run two paths.
SHAPE_PATHS = [(shape, path) for shape in SHAPES for path in PATHS
               if path not in ("direct", "fcnseg") or _winograd_shape(shape)]


@pytest.mark.parametrize("shape,dnnl", SHAPE_PATHS, ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else v)
def test_convolution_shape_matches_numpy(tmp_path, monkeypatch, shape, dnnl):
    kind, cin, cout, k, stride, pad, group, dil, bias = shape
    _set_path(monkeypatch, dnnl)
    check_against_numpy(tmp_path, shape, *_input_hw(kind, k, stride, pad, dil))


@pytest.mark.parametrize("dnnl", list(PATHS))
@pytest.mark.parametrize("cin,cout,pad,hw", [(16, 32, 1, (37, 41)), (64, 64, 1, (29, 22)), (32, 16, 0, (18, 27))])
def test_winograd_on_many_tiles_with_ragged_edges_matches_numpy(tmp_path, monkeypatch, cin, cout, pad, hw, dnnl):
    # F(4x4, 3x3) works in 4x4 output tiles: these maps are several tiles wide, with partial tiles at the
    # right and bottom edges, so every transform's boundary handling is exercised.
    _set_path(monkeypatch, dnnl)
    check_against_numpy(tmp_path, ("Convolution", cin, cout, 3, 1, pad, 1, 1, 1), *hw)


@pytest.mark.parametrize("dnnl", ["winograd", "fcnseg"])
def test_winograd_error_against_float64_is_within_3e_5_of_the_largest_value(tmp_path, monkeypatch, dnnl):
    # F(4x4, 3x3)'s transforms have coefficients up to 8 and 1/24: its float32 error is several times a direct
    # convolution's. Measured on this 64 -> 64 layer over 8 x 6 tiles (docs/performance.md): ~5e-6 of the
    # largest value for fcnseg's, forward and both backward passes (oneDNN's is of the same order).
    _set_path(monkeypatch, dnnl)
    errors = check_against_numpy(tmp_path, ("Convolution", 64, 64, 3, 1, 1, 1, 1, 1), 29, 22)
    assert set(errors) == {"y", "dx", "dw"} and max(errors.values()) < 3e-5, errors


WHICH_ALGORITHM = """
import sys
import numpy as np
import caffe
net = caffe.Net(sys.argv[1], caffe.TRAIN)
net.forward()
net.backward()
"""


KERNEL_NET = """
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 48 dim: 48 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 128 kernel_size: 3 pad: 1 } }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3" convolution_param { num_output: 128 kernel_size: 3 pad: 1 } }
layer { name: "pool" type: "Pooling" bottom: "c3" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "c4" type: "Convolution" bottom: "pool" top: "c4" convolution_param { num_output: 128 kernel_size: 3 pad: 1 } }
layer { name: "fc6" type: "Convolution" bottom: "c4" top: "fc6" convolution_param { num_output: 1400 kernel_size: 7 } }
"""
# (name in oneDNN's and fcnseg's verbose lines, input channels, output channels, output side) of its 3x3 layers
KERNEL_NET_3X3 = [("ic1oc16_ih48", 1, 16, 48), ("ic16oc128_ih48", 16, 128, 48), ("ic128oc128_ih48", 128, 128, 48),
                  ("ic128oc128_ih24", 128, 128, 24)]


@pytest.mark.parametrize("switch", [None, "0", "fcnseg"])
def test_each_3x3_layer_runs_the_kernel_this_cpu_allows_and_fc6_stays_on_gemm(tmp_path, switch):
    # oneDNN's verbose mode names each primitive it executes, and FCNSEG_CAFFE_VERBOSE=1 each pass of fcnseg's
    # Winograd (patch 0008). Each 3x3 layer's three passes must run what fcnseg.cpu_kernels.layer_kernel says
    # for this CPU, its build and the switch: oneDNN's Winograd where oneDNN has one (avx512_core), fcnseg's on
    # the large layers where it has none (128 -> 128 channels over 144 tiles here; over 36, or 16 -> 128, stay
    # direct) or everywhere with FCNSEG_CAFFE_WINOGRAD=fcnseg, oneDNN's direct kernels with =0. The 1-channel
    # layer stays direct (Winograd pads channels to 16); the 7x7 layer with 8.8 M weights over 324 positions
    # (fc6-like) must not be a oneDNN convolution at all (im2col + sgemm).
    (tmp_path / "net.prototxt").write_text(KERNEL_NET)
    (tmp_path / "run.py").write_text(WHICH_ALGORITHM)
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "FCNSEG_CAFFE_VERBOSE": "1", "GLOG_minloglevel": "2"}
    env.pop("FCNSEG_CAFFE_DNNL", None)
    env.pop("FCNSEG_CAFFE_WINOGRAD", None)
    if switch is not None:
        env["FCNSEG_CAFFE_WINOGRAD"] = switch
    out = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "net.prototxt")], env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    # This process has the child's environment, so oneDNN reads the same ONEDNN_MAX_CPU_ISA here.
    isa_code, build = cpu_kernels.onednn_isa_code(), cpu_kernels.caffe_build()
    isa = next(line for line in out if line.startswith("onednn_verbose,info,cpu,isa:"))
    assert ("AVX-512" in isa) == cpu_kernels.onednn_has_winograd(isa_code), isa  # oneDNN's own line agrees
    onednn = [line for line in out if line.startswith("onednn_verbose,exec,cpu,convolution,")]
    ours = [line for line in out if line.startswith("fcnseg_verbose,exec,cpu,winograd")]
    assert not any("oc1400" in line for line in onednn + ours), out  # fc6: im2col + sgemm
    for name, ic, oc, side in KERNEL_NET_3X3:
        expected = cpu_kernels.layer_kernel(ic, oc, cpu_kernels.tiles(1, side, side), isa_code, build, env)
        theirs = [line for line in onednn if re.search(rf"_{name}[a-z]", line)]  # ..._ic128oc128_ih48oh48...
        mine = [line for line in ours if re.search(rf"_{name}[a-z]", line)]  # ..._ic128oc128_ih48iw48...
        if expected == cpu_kernels.WINOGRAD_FCNSEG:
            assert theirs == [] and len(mine) == 3, (name, out)
            assert {line.split(",")[4] for line in mine} == {"forward_training", "backward_data", "backward_weights"}
        else:
            assert mine == [] and len(theirs) == 3, (name, expected, out)
            assert all(("wino" in line) == (expected == cpu_kernels.WINOGRAD_ONEDNN) for line in theirs), theirs
        if switch == "0" or ic == 1:
            assert expected == cpu_kernels.DIRECT_ONEDNN


def check_against_numpy(tmp_path, shape, h, w) -> dict:
    """Assert forward, backward-data and (accumulated) backward-weights against float64; return each one's
    largest error relative to the largest reference value."""
    kind, cin, cout, k, stride, pad, group, dil, bias = shape
    n = 1 if cin * cout * k * k > 4e6 else 2  # the 4096-wide fc6/fc7: one image keeps the reference quick
    proto = tmp_path / "conv.prototxt"
    proto.write_text(f"""
force_backward: true
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {n} dim: {cin} dim: {h} dim: {w} }} }} }}
layer {{ name: "conv" type: "{kind}" bottom: "data" top: "conv"
  convolution_param {{ num_output: {cout} kernel_size: {k} stride: {stride} pad: {pad} group: {group}
                      dilation: {dil} bias_term: {"true" if bias else "false"} }} }}
""")
    net = caffe.Net(str(proto), caffe.TEST)
    rng = np.random.default_rng(sum(shape[1:]))
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    params = net.params["conv"]
    wt = rng.standard_normal(params[0].data.shape).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    net.blobs["data"].data[...] = x
    params[0].data[...] = wt
    if bias:
        params[1].data[...] = b
    net.forward()
    gy_holder = {}

    def gradient(top_shape):
        gy_holder["gy"] = rng.standard_normal(top_shape).astype(np.float32)
        return gy_holder["gy"].astype(np.float64)

    y, gy, dx, dw, db = reference(kind, x.astype(np.float64), wt.astype(np.float64),
                                  None if b is None else b.astype(np.float64), stride, pad, dil, group, gradient)

    errors = {}

    def close(actual, expected, name=None):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        if name:
            errors[name] = float(np.abs(actual - expected).max() / np.abs(expected).max())

    close(net.blobs["conv"].data, y, "y")
    # Backward, onto gradients that are already there: Caffe accumulates parameter gradients.
    net.blobs["conv"].diff[...] = gy_holder["gy"]
    w0 = rng.standard_normal(wt.shape).astype(np.float32)
    params[0].diff[...] = w0
    if bias:
        params[1].diff[...] = 1.0
    net.backward()
    close(net.blobs["data"].diff, dx, "dx")
    close(params[0].diff - w0, dw, "dw")
    if bias:
        close(params[1].diff, 1.0 + db)
    return errors
