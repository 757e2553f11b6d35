"""BatchNorm, Scale, ReLU and max pooling on the patched pycaffe's CPU path, against numpy.

scripts/caffe_patches/0006 replaces BVLC's CPU BatchNorm (about ten whole-blob BLAS and powx passes)
with one OpenMP pass per statistic, threads Scale with its bias fused in, and makes ReLU's backward
pass branch-free. The contracts they must keep are BVLC's. BatchNorm:
- TRAIN (batch statistics): top = (x - mean) / sqrt(var + eps) over each channel's values in the
  batch, var biased; the stored sums become mean + f*sum_mean, m/(m-1)*var + f*sum_var and
  f*weight + 1 (f = moving_average_fraction, m = values per channel); bottom_diff =
  (dy - mean(dy) - mean(dy*y)*y) / sqrt(var + eps).
- use_global_stats (TEST, or frozen): mean and var are the stored sums over their weight;
  bottom_diff = dy / sqrt(var + eps).
In place or not, and with an in-place ReLU after it clobbering its top before the backward pass.
Scale (with or without bias, scale a parameter or a second bottom): top = bottom * scale + bias per
channel; parameter gradients accumulate (scale: sum of dy * bottom, bias: sum of dy), a bottom's is
overwritten; bottom_diff = dy * scale. ReLU: bottom_diff = dy where bottom > 0, else slope * dy.
"""
import numpy as np
import pytest

caffe = pytest.importorskip("caffe")

EPS = 1e-5
FRACTION = 0.9


def net_file(tmp_path, shape, in_place, global_stats=None, relu=False):
    top = "data" if in_place else "bn"
    stats = "" if global_stats is None else f"use_global_stats: {str(global_stats).lower()}"
    relu_layer = f'layer {{ name: "relu" type: "ReLU" bottom: "{top}" top: "{top}" }}' if relu else ""
    proto = tmp_path / "bn.prototxt"
    proto.write_text(f"""
force_backward: true
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {" ".join(f"dim: {d}" for d in shape)} }} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "data" top: "{top}"
  batch_norm_param {{ moving_average_fraction: {FRACTION} eps: {EPS} {stats} }} }}
{relu_layer}
""")
    return proto, top


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _setup(tmp_path, shape, in_place, phase, global_stats=None, relu=False, seed=0):
    proto, top = net_file(tmp_path, shape, in_place, global_stats, relu)
    net = caffe.Net(str(proto), phase)
    rng = np.random.default_rng(seed)
    c = shape[1]
    # Channels with their own offsets and scales, so a wrong axis or a missing mean shows.
    x = (rng.standard_normal(shape) * _per_channel(rng.uniform(0.5, 3, c), np.empty(shape))
         + _per_channel(rng.uniform(-4, 4, c), np.empty(shape))).astype(np.float32)
    stored = [rng.uniform(-1, 1, c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32),
              np.array([1.7], np.float32)]
    for blob, value in zip(net.params["bn"], stored):
        blob.data[...] = value
    net.blobs["data"].data[...] = x
    return net, top, x.astype(np.float64), [s.astype(np.float64) for s in stored], rng


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("shape", [(4, 5, 9, 7), (3, 16, 33, 20), (6, 3)], ids=str)
def test_batch_statistics_forward_backward_and_running_sums(tmp_path, shape, in_place):
    net, top, x, (s_mean, s_var, s_weight), rng = _setup(tmp_path, shape, in_place, caffe.TRAIN)
    net.forward()
    axes = _axes(x)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    sd = np.sqrt(var + EPS)
    y = (x - _per_channel(mean, x)) / _per_channel(sd, x)
    np.testing.assert_allclose(net.blobs[top].data, y, rtol=1e-4, atol=1e-4)
    m = x.size // shape[1]
    np.testing.assert_allclose(net.params["bn"][0].data, mean + FRACTION * s_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.params["bn"][1].data, m / (m - 1) * var + FRACTION * s_var, rtol=1e-4)
    np.testing.assert_allclose(net.params["bn"][2].data, FRACTION * s_weight + 1, rtol=1e-6)

    dy = rng.standard_normal(x.shape)
    net.blobs[top].diff[...] = dy
    net.backward()
    dx = (dy - _per_channel(dy.mean(axis=axes), x) - _per_channel((dy * y).mean(axis=axes), x) * y) / _per_channel(sd, x)
    np.testing.assert_allclose(net.blobs["data"].diff, dx, rtol=1e-4, atol=1e-4 * np.abs(dx).max())


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("phase,global_stats", [(caffe.TEST, None), (caffe.TRAIN, True)], ids=["test", "frozen"])
def test_global_statistics_forward_and_backward(tmp_path, in_place, phase, global_stats):
    shape = (2, 6, 11, 13)
    net, top, x, (s_mean, s_var, s_weight), rng = _setup(tmp_path, shape, in_place, phase, global_stats, seed=1)
    net.forward()
    mean, sd = s_mean / s_weight, np.sqrt(s_var / s_weight + EPS)
    y = (x - _per_channel(mean, x)) / _per_channel(sd, x)
    np.testing.assert_allclose(net.blobs[top].data, y, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(net.params["bn"][2].data, np.float32(1.7))  # the sums are left alone
    dy = rng.standard_normal(x.shape)
    net.blobs[top].diff[...] = dy
    net.backward()
    np.testing.assert_allclose(net.blobs["data"].diff, dy / _per_channel(sd, x), rtol=1e-4, atol=1e-6)


def test_an_in_place_relu_after_it_does_not_change_its_gradient(tmp_path):
    # The ReLU overwrites BatchNorm's top before the backward pass; the backward pass must use the
    # normalised values kept from the forward one.
    shape = (2, 4, 10, 10)
    net, top, x, _, rng = _setup(tmp_path, shape, True, caffe.TRAIN, relu=True, seed=2)
    net.forward()
    axes = _axes(x)
    y = (x - _per_channel(x.mean(axis=axes), x)) / _per_channel(np.sqrt(x.var(axis=axes) + EPS), x)
    np.testing.assert_allclose(net.blobs[top].data, np.maximum(y, 0), rtol=1e-4, atol=1e-4)
    dz = rng.standard_normal(x.shape)
    net.blobs[top].diff[...] = dz
    net.backward()
    dy = dz * (y > 0)
    dx = (dy - _per_channel(dy.mean(axis=axes), x) - _per_channel((dy * y).mean(axis=axes), x) * y) \
        / _per_channel(np.sqrt(x.var(axis=axes) + EPS), x)
    np.testing.assert_allclose(net.blobs["data"].diff, dx, rtol=1e-4, atol=1e-4 * np.abs(dx).max())


def scale_net(tmp_path, shape, in_place, bias, scale_bottom=False):
    top = "data" if in_place else "out"
    second = 'bottom: "s"' if scale_bottom else ""
    s_input = f'layer {{ name: "s" type: "Input" top: "s" input_param {{ shape {{ dim: {shape[1]} }} }} }}' \
        if scale_bottom else ""
    proto = tmp_path / "scale.prototxt"
    proto.write_text(f"""
force_backward: true
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {" ".join(f"dim: {d}" for d in shape)} }} }} }}
{s_input}
layer {{ name: "scale" type: "Scale" bottom: "data" {second} top: "{top}" scale_param {{ bias_term: {str(bias).lower()} }} }}
""")
    return caffe.Net(str(proto), caffe.TRAIN), top


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 17, 9), (2, 16, 40, 33), (4, 7)], ids=str)
def test_scale_forward_and_backward_with_its_parameters(tmp_path, shape, in_place, bias):
    net, top = scale_net(tmp_path, shape, in_place, bias)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.uniform(-2, 2, shape[1]).astype(np.float32)
    beta = rng.uniform(-2, 2, shape[1]).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.params["scale"][0].data[...] = gamma
    if bias:
        net.params["scale"][1].data[...] = beta
    net.forward()
    x64 = x.astype(np.float64)
    y = x64 * _per_channel(gamma, x64) + (_per_channel(beta, x64) if bias else 0)
    np.testing.assert_allclose(net.blobs[top].data, y, rtol=1e-5, atol=1e-5)

    dy = rng.standard_normal(shape)
    net.blobs[top].diff[...] = dy
    net.params["scale"][0].diff[...] = 0.5  # parameter gradients accumulate onto what is there
    if bias:
        net.params["scale"][1].diff[...] = -0.25
    net.backward()
    axes = _axes(x64)
    np.testing.assert_allclose(net.params["scale"][0].diff, 0.5 + (dy * x64).sum(axis=axes), rtol=1e-4, atol=1e-4)
    if bias:
        np.testing.assert_allclose(net.params["scale"][1].diff, -0.25 + dy.sum(axis=axes), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.blobs["data"].diff, dy * _per_channel(gamma, x64), rtol=1e-5, atol=1e-5)


def test_scale_from_a_second_bottom_overwrites_its_gradient(tmp_path):
    shape = (2, 6, 9, 11)
    net, top = scale_net(tmp_path, shape, False, True, scale_bottom=True)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.uniform(-2, 2, shape[1]).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.blobs["s"].data[...] = gamma
    net.forward()
    beta = net.params["scale"][0].data  # the bias is the only parameter (zero-initialised)
    np.testing.assert_allclose(net.blobs[top].data, x * _per_channel(gamma, x) + _per_channel(beta, x), rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(shape).astype(np.float32)
    net.blobs[top].diff[...] = dy
    net.blobs["s"].diff[...] = 100.0
    net.backward()
    np.testing.assert_allclose(net.blobs["s"].diff, (dy.astype(np.float64) * x).sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_backward_on_mixed_signs(tmp_path, in_place, slope):
    shape = (2, 8, 300, 301)  # above the 65,536 elements where the loops go parallel
    top = "data" if in_place else "out"
    proto = tmp_path / "relu.prototxt"
    proto.write_text(f"""
force_backward: true
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {" ".join(f"dim: {d}" for d in shape)} }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "data" top: "{top}" relu_param {{ negative_slope: {slope} }} }}
""")
    net = caffe.Net(str(proto), caffe.TRAIN)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::97] = 0  # x == 0 takes the slope, as in BVLC
    net.blobs["data"].data[...] = x
    net.forward()
    np.testing.assert_allclose(net.blobs[top].data, np.where(x > 0, x, slope * x), rtol=1e-6)
    dy = rng.standard_normal(shape).astype(np.float32)
    net.blobs[top].diff[...] = dy
    net.backward()
    # In place, the forward pass overwrote x with the output, whose sign is x's (slope >= 0; 0 stays 0).
    np.testing.assert_allclose(net.blobs["data"].diff, np.where(x > 0, dy, np.float32(slope) * dy), rtol=1e-6)


def test_max_pooling_of_nan_windows_keeps_every_index_inside_its_window(tmp_path):
    # A diverged net feeds NaN into pooling. BVLC's loop never takes a NaN as the maximum, left the index at -1, and
    # the backward pass scattered into bottom_diff[-1]: heap corruption, a random abort later (patch 0005 fixes it).
    proto = tmp_path / "pool.prototxt"
    proto.write_text("""
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
""")
    net = caffe.Net(str(proto), caffe.TRAIN)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    x[0, 0] = np.nan  # a whole plane, the first in memory: its windows have no comparable maximum
    x[1, 2, :2, :2] = np.nan  # one window of a later plane
    net.blobs["data"].data[...] = x
    net.forward()
    mask = net.blobs["mask"].data
    rows, cols = np.divmod(mask.astype(np.int64), 6)
    window_rows, window_cols = np.meshgrid(np.arange(3) * 2, np.arange(3) * 2, indexing="ij")
    assert (rows >= window_rows).all() and (rows < window_rows + 2).all()
    assert (cols >= window_cols).all() and (cols < window_cols + 2).all()
    assert np.isnan(net.blobs["pool"].data[0, 0]).all() and np.isnan(net.blobs["pool"].data[1, 2, 0, 0])
    finite = np.isfinite(x).reshape(2, 3, 3, 2, 3, 2).all(axis=(3, 5))
    np.testing.assert_array_equal(net.blobs["pool"].data[finite], x.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5))[finite])
    net.blobs["pool"].diff[...] = 1.0
    net.backward()
    diff = net.blobs["data"].diff
    assert diff.reshape(6, -1).sum(axis=1).tolist() == [9.0] * 6  # every plane gets its own 9 gradients back
