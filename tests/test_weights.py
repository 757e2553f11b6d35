"""fcnseg/weights.py: VGG16 -> one channel conversion, and loading weights into FCN nets.

The models are VGG16-shaped files the tests write themselves (tests/vgg_fixture.py): a narrow one
(channels / 16, fc 64) for the conversion itself, one with the real conv widths and fc 64 to load into
fcn32s/16s/8s nets, and the full-size 528 MB one under @pytest.mark.slow.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
import sys

import numpy as np
import pytest

from fcnseg import caffemodel, weights
from fcnseg.caffe_env import caffe_pb2, import_caffe
from fcnseg.config import validate_config
from fcnseg.errors import WeightsError
from fcnseg.nets import deploy_net
from vgg_fixture import NARROW_WIDTHS, Vgg16Spec, layer_arrays, write_vgg16_caffemodel

MEAN_BGR = (104.00699, 116.66877, 122.67892)
NARROW = Vgg16Spec(widths=NARROW_WIDTHS, fc=64, classes=10)
LOADABLE = Vgg16Spec(fc=64, classes=10)  # real conv widths, so fcnseg's nets take it; small fc for speed
TRUNK = [f"conv{s}_{i}" for s, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]


def expected_gray_conv1(spec, mean_bgr, gray_mean):
    """conv1_1 after conversion, computed here from the algebra in fcn-facts.md."""
    w, b = (a.astype(np.float64) for a in layer_arrays(spec, "conv1_1"))
    correction = sum((gray_mean - mean_bgr[c]) * w[:, c].sum(axis=(1, 2)) for c in range(3))
    return w.sum(axis=1, keepdims=True), b + correction


def expected_trunk(spec, name, shape, mean_bgr=MEAN_BGR, gray_mean=None):
    """(weights, bias) the converted trunk must hold for layer `name`, weights in `shape`."""
    if name == "conv1_1":
        return expected_gray_conv1(spec, mean_bgr, np.float32(np.mean(mean_bgr)) if gray_mean is None else gray_mean)
    w, b = layer_arrays(spec, name)
    return w.reshape(shape), b


def read_net_param(path):
    return caffe_pb2().NetParameter.FromString(path.read_bytes())


def new_style_layers(path):
    """[(LayerParameter header, arrays)] of a caffemodel's weighted layers, V1 legacy shapes as Caffe
    means them (fc6 O x I): material for hand-made files."""
    pb = caffe_pb2()
    with open(path, "rb") as f:
        return [(pb.LayerParameter(name=rec.name, type=rec.type),
                 [caffemodel.load_blob(f, b).reshape(rec.blob_shape(i)) for i, b in enumerate(rec.blobs)])
                for rec in caffemodel.read_caffemodel_index(path).values() if rec.blobs]


def make_config(**model):
    model = {"num_classes": 2, "input_channels": 1, **model}
    return validate_config({"model": model})


def build_net(tmp_path, config, weights_file=None):
    caffe = import_caffe()
    proto = tmp_path / f"{config.model.arch}-{config.model.stages}-{config.model.fc_channels}.prototxt"
    proto.write_text(str(deploy_net(config, 32, 32)))
    if weights_file is None:
        return caffe.Net(str(proto), caffe.TEST)
    return caffe.Net(str(proto), caffe.TEST, weights=str(weights_file))


# --- conversion ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [NARROW, Vgg16Spec(widths=NARROW_WIDTHS, fc=64, classes=10, v1=False),
                                  Vgg16Spec(widths=NARROW_WIDTHS, fc=64, v1=False, fcn_shaped=True)],
                         ids=["v1-innerproduct", "layer-innerproduct", "layer-fcn-shaped"])
def test_convert_checks_every_array_against_the_source(tmp_path, spec):
    src = write_vgg16_caffemodel(tmp_path / "src.caffemodel", spec)
    result = weights.convert_vgg16(src, tmp_path / "out" / "dst.caffemodel")
    net = read_net_param(tmp_path / "out" / "dst.caffemodel")
    assert not net.layers, "the output is new-style NetParameter (`layer`), never V1"
    assert [l.name for l in net.layer] == TRUNK + ["fc6", "fc7"]
    channels = 3
    for layer in net.layer:
        assert layer.type == "Convolution"
        shape = tuple(layer.blobs[0].shape.dim)
        w, b = expected_trunk(spec, layer.name, shape, gray_mean=result.gray_mean)
        got_w = np.array(layer.blobs[0].data, dtype=np.float32).reshape(shape)
        got_b = np.array(layer.blobs[1].data, dtype=np.float32)
        np.testing.assert_allclose(got_w, w, rtol=1e-6, atol=1e-6, err_msg=layer.name)
        np.testing.assert_allclose(got_b, b, rtol=1e-6, atol=1e-5, err_msg=layer.name)
        assert shape[1] == (1 if layer.name == "conv1_1" else channels), layer.name
        channels = shape[0]
    fc6, fc7 = net.layer[-2:]
    assert tuple(fc6.blobs[0].shape.dim) == (64, NARROW_WIDTHS[-1], 7, 7)
    assert fc6.convolution_param.kernel_size[0] == 7 and fc6.convolution_param.num_output == 64
    assert tuple(fc7.blobs[0].shape.dim) == (64, 64, 1, 1)
    dropped = "fc8: dropped" if not spec.fcn_shaped else "score_fr: dropped"
    assert any(line.startswith(dropped) for line in result.lines)


def test_gray_mean_is_recorded_and_read_back(tmp_path, models):
    dst = tmp_path / "m.caffemodel"
    result = weights.convert_vgg16(models["narrow"], dst, mean_bgr=(100, 110, 120), gray_mean=90.5)
    assert result.gray_mean == 90.5 and caffemodel.recorded_gray_mean(dst) == pytest.approx(90.5)
    default = weights.convert_vgg16(models["narrow"], tmp_path / "d.caffemodel")
    assert default.gray_mean == pytest.approx(np.mean(MEAN_BGR), abs=1e-5)
    assert caffemodel.recorded_gray_mean(tmp_path / "d.caffemodel") == default.gray_mean
    assert caffemodel.recorded_gray_mean(models["narrow"]) is None  # the 3-channel source records nothing


@pytest.mark.parametrize("mean_bgr,gray_mean", [(MEAN_BGR, None), (MEAN_BGR, 0.0), ((90.0, 120.0, 140.0), 128.0)],
                         ids=["default", "gray-mean-0", "custom"])
def test_conv1_equivalence_with_the_rgb_net(tmp_path, models, mean_bgr, gray_mean):
    """conv1_1 of the converted net on (g - M) == the RGB net on g replicated minus the BGR mean,
    wherever the 3x3 window sees no padding. Both nets load their file with Caffe's own reader."""
    caffe = import_caffe()
    dst = tmp_path / "gray.caffemodel"
    m = weights.convert_vgg16(models["loadable"], dst, mean_bgr=mean_bgr, gray_mean=gray_mean).gray_mean
    h, w = 16, 20

    def conv1_net(channels, weights_file):
        proto = tmp_path / f"conv1_{channels}.prototxt"
        proto.write_text(f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 '
                         f'dim: {channels} dim: {h} dim: {w} }} }} }}\n'
                         'layer { name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1" '
                         'convolution_param { num_output: 64 kernel_size: 3 pad: 1 } }\n')
        return caffe.Net(str(proto), caffe.TEST, weights=str(weights_file))

    gray = np.random.default_rng(1).uniform(0, 255, (h, w))
    rgb_net, gray_net = conv1_net(3, models["loadable"]), conv1_net(1, dst)
    rgb_net.blobs["data"].data[0] = np.stack([gray - mc for mc in mean_bgr])
    gray_net.blobs["data"].data[0, 0] = gray - m
    rgb, one = rgb_net.forward()["conv1_1"][0].copy(), gray_net.forward()["conv1_1"][0].copy()
    inner = (slice(None), slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(one[inner], rgb[inner], rtol=1e-4, atol=1e-4 * np.abs(rgb).max())
    # At the border the zero padding means different things in the two nets: the test can tell.
    assert not np.allclose(one[:, 0], rgb[:, 0], rtol=1e-4, atol=1e-4 * np.abs(rgb).max())


def test_convert_with_a_v1_deploy_prototxt(tmp_path, models):
    convs = "".join(f'layers {{ name: "{n}" type: CONVOLUTION bottom: "x" top: "{n}" convolution_param {{ '
                    f'num_output: {NARROW_WIDTHS[int(n[4]) - 1]} pad: 1 kernel_size: 3 }} }}\n' for n in TRUNK)
    fcs = "".join(f'layers {{ name: "{n}" type: INNER_PRODUCT bottom: "x" top: "{n}" inner_product_param {{ '
                  f'num_output: {k} }} }}\n' for n, k in (("fc6", 64), ("fc7", 64), ("fc8", 10)))
    proto = tmp_path / "VGG_ILSVRC_16_layers_deploy.prototxt"
    proto.write_text('name: "VGG_ILSVRC_16_layers"\ninput: "data"\ninput_dim: 10\ninput_dim: 3\n'
                     'input_dim: 224\ninput_dim: 224\n' + convs + fcs)
    weights.convert_vgg16(models["narrow"], tmp_path / "ok.caffemodel", prototxt=proto)
    proto.write_text(proto.read_text().replace("num_output: 64 }", "num_output: 4096 }"))
    with pytest.raises(WeightsError, match=r"fc6 has 64 outputs but .*num_output 4096"):
        weights.convert_vgg16(models["narrow"], tmp_path / "bad.caffemodel", prototxt=proto)


# --- conversion refusals -----------------------------------------------------------------------------

def test_convert_refuses_a_model_that_is_already_one_channel(tmp_path, models):
    with pytest.raises(WeightsError, match=r"conv1_1 takes 1 input channel.*use this file directly"):
        weights.convert_vgg16(models["loadable_1ch"], tmp_path / "again.caffemodel")


def test_convert_refuses_files_that_are_not_caffemodels(tmp_path, models):
    text = tmp_path / "deploy.prototxt"
    text.write_text('name: "VGG"\nlayer { name: "conv1_1" type: "Convolution" }\n')
    with pytest.raises(WeightsError, match=r"deploy.prototxt: not a valid Caffe binary model"):
        weights.convert_vgg16(text, tmp_path / "x.caffemodel")
    truncated = tmp_path / "cut.caffemodel"
    truncated.write_bytes(models["narrow"].read_bytes()[:200_000])
    with pytest.raises(WeightsError, match=r"cut.caffemodel: .*truncated"):
        weights.convert_vgg16(truncated, tmp_path / "x.caffemodel")
    h5 = tmp_path / "m.caffemodel.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(WeightsError, match="HDF5"):
        weights.convert_vgg16(h5, tmp_path / "x.caffemodel")
    with pytest.raises(WeightsError, match="not found"):
        weights.convert_vgg16(tmp_path / "missing.caffemodel", tmp_path / "x.caffemodel")
    assert not (tmp_path / "x.caffemodel").exists()
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file is left behind"


def test_convert_refuses_a_model_missing_a_trunk_layer(tmp_path, models):
    holey = tmp_path / "holey.caffemodel"
    caffemodel.write_caffemodel(holey, "holey", [layer for layer in new_style_layers(models["narrow"])
                                             if layer[0].name != "conv4_2"])
    with pytest.raises(WeightsError, match=r"no weights for layer conv4_2"):
        weights.convert_vgg16(holey, tmp_path / "x.caffemodel")


# --- loading into nets -------------------------------------------------------------------------------

def check_loaded(net, spec, before, gray_mean):
    """Every param array of `net` against the source model, or unchanged from its filler."""
    for name, blobs in net.params.items():
        got = [b.data for b in blobs]
        if name == "conv1_1":
            w, b = expected_trunk(spec, name, got[0].shape, gray_mean=gray_mean)
            np.testing.assert_allclose(got[0], w, rtol=1e-6, atol=1e-6, err_msg=name)
            np.testing.assert_allclose(got[1], b, rtol=1e-6, atol=1e-5, err_msg=name)
        elif name in TRUNK or name in ("fc6", "fc7"):  # the very same float32 numbers, reshaped
            w, b = expected_trunk(spec, name, got[0].shape)
            assert np.array_equal(got[0], w) and np.array_equal(got[1], b), name
        else:
            for g, old in zip(got, before[name]):
                np.testing.assert_array_equal(g, old, err_msg=name)


@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_initialize_loads_converted_vgg16_into_one_channel_nets(tmp_path, models, arch):
    config = make_config(arch=arch, fc_channels=64)
    net = build_net(tmp_path, config)
    before = {n: [b.data.copy() for b in bl] for n, bl in net.params.items() if n not in TRUNK}
    rows = weights.initialize(net, config, models["loadable_1ch"])
    gray_mean = caffemodel.recorded_gray_mean(models["loadable_1ch"])
    check_loaded(net, LOADABLE, before, gray_mean)
    by_layer = {(r.layer, r.blob): r for r in rows}
    assert len(rows) == sum(len(b) for b in net.params.values())
    assert all(by_layer[(n, i)].action == "copied" for n in TRUNK + ["fc6", "fc7"] for i in (0, 1))
    heads = [r for r in rows if r.layer not in TRUNK + ["fc6", "fc7"]]
    assert heads and all(r.action == "filler" for r in heads)
    assert by_layer[("score_fr", 0)].detail == "constant 0: absent from the file"
    upscore = [r for r in heads if r.layer.startswith("upscore")]
    assert upscore and all("bilinear (fixed, lr_mult 0): never loaded" == r.detail for r in upscore)
    # Caffe's own loader accepts the converted file for the same net and agrees with initialize().
    by_caffe = build_net(tmp_path, config, models["loadable_1ch"])
    for name in TRUNK + ["fc6", "fc7"]:
        for mine, theirs in zip(net.params[name], by_caffe.params[name]):
            np.testing.assert_array_equal(mine.data, theirs.data)


def test_initialize_reshapes_imagenet_innerproduct_fc(tmp_path, models):
    """A 1-channel file whose fc6/fc7 are still InnerProduct (converted elsewhere) is reshaped on load."""
    mixed = tmp_path / "mixed.caffemodel"
    caffemodel.write_caffemodel(mixed, "mixed", new_style_layers(models["loadable_1ch"])[:1] +
                             new_style_layers(models["loadable"])[1:])
    config = make_config(fc_channels=64)
    net = build_net(tmp_path, config)
    rows = weights.initialize(net, config, mixed)
    fc6 = next(r for r in rows if (r.layer, r.blob) == ("fc6", 0))
    assert fc6.action == "reshaped" and fc6.detail == "from InnerProduct 64x25088"
    w, _ = layer_arrays(LOADABLE, "fc6")
    np.testing.assert_array_equal(net.params["fc6"][0].data, w.reshape(64, 512, 7, 7))


def test_fc_layers_fall_back_to_fillers_with_the_reason(tmp_path, models):
    config = make_config(arch="fcn8s", stages=3, fc_channels=64, pad="minimal")
    net = build_net(tmp_path, config)
    rows = {(r.layer, r.blob): r for r in weights.initialize(net, config, models["loadable_1ch"])}
    assert rows[("fc6", 0)].action == "filler"
    assert rows[("fc6", 0)].detail.startswith("msra (He): model.stages 3 < 5: fc6 reads pool3 (256 channels)")
    assert rows[("fc6", 1)].detail.startswith("constant 0: model.stages 3 < 5")
    assert rows[("fc7", 0)].detail == \
        "msra (He): fc6 is not loaded, so fc7's weights would read features they were not trained on"
    assert rows[("conv3_3", 0)].action == "copied"

    config = make_config(fc_channels=32)
    rows = {(r.layer, r.blob): r for r in weights.initialize(build_net(tmp_path, config), config,
                                                             models["loadable_1ch"])}
    assert rows[("fc6", 0)].detail == "msra (He): model.fc_channels 32 != 64 in the file"
    assert rows[("fc7", 0)].action == "filler"


def test_stage_four_fc6_is_not_taken_even_though_its_shape_fits(tmp_path, models):
    config = make_config(arch="fcn16s", stages=4, fc_channels=64, pad="minimal")  # pool4 has 512 channels
    rows = {(r.layer, r.blob): r for r in weights.initialize(build_net(tmp_path, config), config,
                                                             models["loadable_1ch"])}
    assert rows[("fc6", 0)].action == "filler" and "model.stages 4 < 5" in rows[("fc6", 0)].detail


def test_report_and_scratch_rows(tmp_path, models):
    config = make_config(arch="fcn16s", at_once=True, fc_channels=64)
    net = build_net(tmp_path, config)
    scratch = weights.initialize(net, config)
    assert {r.action for r in scratch} == {"filler"}
    by_layer = {(r.layer, r.blob): r.detail for r in scratch}
    assert by_layer[("conv1_1", 0)] == "msra (He): init.weights is null (training from scratch)"
    assert by_layer[("conv1_1", 1)] == "constant 0: init.weights is null (training from scratch)"
    assert by_layer[("scale_pool4", 0)] == "constant 0.01 (fixed, lr_mult 0): never loaded"
    warning = weights.scratch_warning(config)
    assert "not feasible" in warning and "fcnseg weights convert" in warning
    assert "model.stages is 5" in warning and "solver.base_lr is 1e-10" in warning
    assert "loss.normalize is false" in warning and "solver.type is SGD" in warning

    report = weights.format_report(weights.initialize(net, config, models["loadable_1ch"]))
    lines = report.splitlines()
    assert lines[0].split() == ["layer", "blob", "shape", "action", "source", "/", "reason"]
    assert re.search(r"^conv1_1\s+0\s+64x1x3x3\s+copied$", report, re.M)
    assert re.search(r"^score_pool4\s+0\s+2x512x1x1\s+filler\s+constant 0: absent from the file$", report, re.M)
    assert lines[-1] == f"{len(lines) - 2} blobs: 30 copied, 0 reshaped, {len(lines) - 32} filler"


def test_scratch_warning_only_where_the_setup_differs_from_the_scratch_recipe():
    from fcnseg.config import load_config
    configs = Path(__file__).parents[1] / "configs"
    for name, lr, recipe_lr in (("demo_hela_fcn8s", 1e-2, "1e-4"), ("demo_hela", 1e-1, "1e-3")):
        demo = load_config(configs / f"{name}.yaml")
        assert weights.scratch_differences(demo) == [] and weights.scratch_warning(demo) is None
        demo.solver.base_lr = lr
        demo.loss.normalize = False
        warning = weights.scratch_warning(demo)
        assert f"solver.base_lr is {lr:g}, far from {recipe_lr}" in warning and "loss.normalize is false" in warning
        assert "model.stages is" not in warning and "solver.type is" not in warning


def test_without_batchnorm_only_three_stages_are_known_to_train_from_scratch():
    from fcnseg.config import load_config
    demo = load_config(Path(__file__).parents[1] / "configs" / "demo_hela.yaml")
    assert demo.model.stages == 4 and demo.model.norm == "batch"
    demo.model.norm = "none"
    demo.solver.base_lr = 1e-4
    [difference] = weights.scratch_differences(demo)
    assert difference.startswith("model.stages is 4 (10 convolutions on the way down, no normalisation")


def test_score_layers_of_an_fcn_snapshot_are_copied_when_shapes_match(tmp_path, models):
    config = make_config(fc_channels=64)
    net = build_net(tmp_path, config)
    weights.initialize(net, config, models["loadable_1ch"])
    net.params["score_fr"][0].data[...] = 0.5
    snapshot = tmp_path / "fcn32s.caffemodel"
    net.save(str(snapshot))  # Caffe writes the new format with shapes
    fresh = build_net(tmp_path, config)
    rows = {(r.layer, r.blob): r for r in weights.initialize(fresh, config, snapshot)}
    assert rows[("score_fr", 0)].action == "copied" and np.all(fresh.params["score_fr"][0].data == 0.5)
    three = make_config(fc_channels=64, num_classes=3)
    rows = {(r.layer, r.blob): r for r in weights.initialize(build_net(tmp_path, three), three, snapshot)}
    assert rows[("score_fr", 0)].detail == "constant 0: shape mismatch: file 2x64x1x1 + 2"


# --- loading refusals --------------------------------------------------------------------------------

def test_three_channel_vgg16_in_a_one_channel_net_says_convert(tmp_path, models):
    config = make_config(fc_channels=64)
    net = build_net(tmp_path, config)
    conv2 = net.params["conv1_2"][0].data.copy()
    with pytest.raises(WeightsError, match=r"loadable.caffemodel: conv1_1 takes 3 channels .*fcnseg weights convert"):
        weights.initialize(net, config, models["loadable"])
    np.testing.assert_array_equal(net.params["conv1_2"][0].data, conv2)  # nothing half-loaded


def test_one_channel_weights_in_a_three_channel_net(tmp_path, models):
    config = make_config(fc_channels=64, input_channels=3)
    with pytest.raises(WeightsError, match=r"conv1_1 takes 1 channel\(s\) but model.input_channels is 3"):
        weights.initialize(build_net(tmp_path, config), config, models["loadable_1ch"])


def test_missing_trunk_conv_is_an_error_not_a_filler(tmp_path, models):
    small = make_config(arch="fcn32s", stages=3, fc_channels=16, pad="minimal")
    net = build_net(tmp_path, small)
    weights.initialize(net, small, models["loadable_1ch"])
    three_stages = tmp_path / "three.caffemodel"
    net.save(str(three_stages))
    config = make_config(fc_channels=64)
    with pytest.raises(WeightsError, match=r"three.caffemodel: no weights for conv4_1, which the trunk needs"):
        weights.initialize(build_net(tmp_path, config), config, three_stages)


def test_missing_weights_file(tmp_path):
    config = make_config(fc_channels=64)
    with pytest.raises(WeightsError, match=r"nope.caffemodel: weights file not found"):
        weights.initialize(build_net(tmp_path, config), config, tmp_path / "nope.caffemodel")


# --- CLI ---------------------------------------------------------------------------------------------

def test_cli_convert(tmp_path, models, run_cli, capsys):
    dst = tmp_path / "w" / "vgg16_1ch.caffemodel"
    assert run_cli("weights", "convert", models["narrow"], "-o", dst, "--mean-bgr", "100,110,120") == 0
    out = capsys.readouterr().out
    assert "gray mean M = 110" in out and "data.mean: 110" in out and re.search(r"in \d+\.\d+ s", out)
    assert caffemodel.recorded_gray_mean(dst) == 110.0
    assert run_cli("weights", "convert", dst, "-o", tmp_path / "x.caffemodel") == 2
    assert "conv1_1 takes 1 input channel" in capsys.readouterr().err
    assert run_cli("weights", "convert", models["narrow"], "-o", dst, "--mean-bgr", "1,2") == 2


# --- full size ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_full_size_vgg16(tmp_path):
    """The real sizes (528 MB V1 file): conversion in a child process, its peak memory under twice the
    file, then every array of fcn32s/16s/8s one-channel nets checked against the source."""
    spec = Vgg16Spec()
    src = write_vgg16_caffemodel(tmp_path / "VGG_ILSVRC_16_layers.caffemodel", spec)
    dst = tmp_path / "vgg16_1ch.caffemodel"
    proc = subprocess.run([sys.executable, "-m", "fcnseg.cli", "weights", "convert", str(src), "-o", str(dst)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "fc6: InnerProduct 4096x25088 -> Convolution 4096x512x7x7" in proc.stdout
    peak_mb = float(re.search(r"peak memory (\d+) MB", proc.stdout).group(1))
    assert peak_mb < 2 * src.stat().st_size / 2**20
    gray_mean = caffemodel.recorded_gray_mean(dst)
    for arch in ("fcn32s", "fcn16s", "fcn8s"):
        config = make_config(arch=arch)
        net = build_net(tmp_path, config)
        before = {n: [b.data.copy() for b in bl] for n, bl in net.params.items() if n not in TRUNK + ["fc6", "fc7"]}
        rows = weights.initialize(net, config, dst)
        assert {r.layer for r in rows if r.action == "copied"} == set(TRUNK + ["fc6", "fc7"])
        check_loaded(net, spec, before, gray_mean)
        del net


def test_a_vgg16_without_batchnorm_initialises_a_batchnorm_nets_convolutions(tmp_path, models):
    config = make_config(fc_channels=64, norm="batch")
    net = build_net(tmp_path, config)
    rows = weights.initialize(net, config, models["loadable_1ch"])
    actions = {(r.layer, r.blob): r.action for r in rows}
    assert actions[("conv1_1", 0)] == "copied" and actions[("conv1_1", 1)] == "copied"
    assert actions[("conv5_3", 0)] == "copied"
    index = caffemodel.read_caffemodel_index(models["loadable_1ch"])
    with open(models["loadable_1ch"], "rb") as f:
        held = caffemodel.load_blob(f, index["conv2_1"].blobs[0])
    np.testing.assert_array_equal(net.params["conv2_1"][0].data.ravel(), np.ravel(held))
    for layer in ("conv1_1_bn", "conv3_2_bn", "fc6_bn"):
        assert {actions[(layer, i)] for i in range(3)} == {"filler"}
    assert {actions[("conv1_1_scale", i)] for i in range(2)} == {"filler"}
    np.testing.assert_array_equal(net.params["conv1_1_scale"][0].data, 1.0)
