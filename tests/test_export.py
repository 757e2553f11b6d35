"""fcnseg.export and `fcnseg infer --onnx`: the ONNX graph computes what Caffe computes.

Nets are small (fc6/fc7 with 8 channels, images of a few dozen pixels) with random weights, random
biases and non-zero score layers, so every layer type and every Crop offset changes the output.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from google.protobuf import text_format
from PIL import Image

from conftest import K, WINDOW, make_objects_run, make_run, raw_image
from fcnseg import files, integrity, runs
from fcnseg.cli import main
from fcnseg.caffe_env import caffe_pb2
from fcnseg.errors import RunError
from fcnseg.export import export_onnx, onnx_model
from fcnseg.predict import load_onnx_predictor, load_predictor, predict
from fcnseg.runs import InferenceFacts

caffe = pytest.importorskip("caffe")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

RELATIVE_TOLERANCE = 1e-4
LABEL_AGREEMENT = 0.9999


def caffe_score(run: Path, x: np.ndarray) -> np.ndarray:
    net, _ = runs.load_deploy_net(run)
    net.blobs["data"].reshape(1, 1, *x.shape)
    net.reshape()
    net.blobs["data"].data[0, 0] = x
    net.forward()
    return net.blobs["score"].data[0].copy()


def onnx_outputs(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, probs = session.run(["scores", "probabilities"], {"image": x[None, None].astype(np.float32)})
    return scores[0], probs[0]


def assert_parity(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert np.abs(reference).max() > 1e-3  # a net that outputs ~0 would agree with anything
    relative = np.abs(ours - reference).max() / np.abs(reference).max()
    assert relative <= RELATIVE_TOLERANCE, relative
    agree = (ours.argmax(0) == reference.argmax(0)).mean()
    assert agree >= LABEL_AGREEMENT, agree
    # Scores vary across the image, so a wrong crop offset or upsampling would show.
    assert reference.std(axis=(1, 2)).max() > 1e-2 * np.abs(reference).max()


def sizes(pad, stride: int) -> list[tuple[int, int]]:
    """An odd and an even input size: any size for pad 100, multiples of the stride for pad: minimal."""
    if pad == "minimal":
        return [(3 * stride, stride), (2 * stride, 4 * stride)] if stride < 32 else [(3 * stride, stride),
                                                                                      (2 * stride, 2 * stride)]
    return [(37, 45), (40, 54)]


@pytest.mark.parametrize("pad", [100, "minimal"])
@pytest.mark.parametrize("stages", [3, 4, 5])
@pytest.mark.parametrize("arch", ["fcn32s", "fcn16s", "fcn8s"])
def test_onnx_scores_match_caffe(tmp_path, arch, stages, pad):
    run = make_run(tmp_path, arch=arch, stages=stages, pad=pad, bias_std=0.1, seed=stages)
    model = tmp_path / "model.onnx"
    export_onnx(run, model)
    rng = np.random.default_rng(0)
    for h, w in sizes(pad, 2 ** stages):
        x = rng.normal(0, 1, (h, w)).astype(np.float32)
        reference = caffe_score(run, x)
        scores, probs = onnx_outputs(model, x)
        assert_parity(scores, reference)
        e = np.exp(reference - reference.max(0))
        np.testing.assert_allclose(probs, e / e.sum(0), atol=1e-5)


def test_at_once_skip_scales_are_exported(tmp_path):
    run = make_run(tmp_path, arch="fcn8s", stages=4, pad=100, at_once=True, bias_std=0.1)
    export_onnx(run, tmp_path / "m.onnx")
    x = np.random.default_rng(1).normal(0, 1, (33, 47)).astype(np.float32)
    assert_parity(onnx_outputs(tmp_path / "m.onnx", x)[0], caffe_score(run, x))


@pytest.mark.parametrize("crop", ["score_pool2c", "score_pool1c", "score"])
def test_a_crop_off_by_one_would_be_caught(tmp_path, crop):
    """The parity check is sharp: shifting one Crop by a pixel breaks it."""
    run = make_run(tmp_path, arch="fcn8s", stages=3, pad=100, bias_std=0.1)
    export_onnx(run, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    starts = next(t for t in model.graph.initializer if t.name == f"{crop}.starts")
    starts.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(starts) + 1, starts.name))
    onnx.save(model, str(tmp_path / "shifted.onnx"))
    x = np.random.default_rng(2).normal(0, 1, (37, 45)).astype(np.float32)
    reference = caffe_score(run, x)
    assert_parity(onnx_outputs(tmp_path / "m.onnx", x)[0], reference)
    with pytest.raises(AssertionError):
        assert_parity(onnx_outputs(tmp_path / "shifted.onnx", x)[0], reference)


FACTS = InferenceFacts(1, ["a"], 255, None, 0.0, 1.0, 1, 100, "fcn32s", 1, 2, 1, None)


def test_max_pooling_rounds_up_like_caffe(tmp_path):
    """On odd-sized maps Caffe's pooling keeps a last, partial window (ceil mode); so does the graph."""
    text = """layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 7 dim: 9 } } }
    layer { name: "pool" type: "Pooling" bottom: "data" top: "score"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 } }"""
    net_param = text_format.Parse(text, caffe_pb2().NetParameter())
    (tmp_path / "pool.prototxt").write_text(str(net_param))
    net = caffe.Net(str(tmp_path / "pool.prototxt"), caffe.TEST)
    x = np.random.default_rng(3).normal(0, 1, (7, 9)).astype(np.float32)
    net.blobs["data"].data[0, 0] = x
    reference = net.forward()["score"][0].copy()
    assert reference.shape == (1, 4, 5)
    model = onnx_model(net_param, {}, FACTS)
    onnx.save(model, str(tmp_path / "pool.onnx"))
    ours = ort.InferenceSession(str(tmp_path / "pool.onnx")).run(["scores"], {"image": x[None, None]})[0][0]
    np.testing.assert_array_equal(ours, reference)


def test_metadata_names_the_facts(tmp_path):
    run = make_run(tmp_path, arch="fcn16s", stages=3)
    assert main(["export", run, "-o", tmp_path / "m.onnx"]) == 0
    model = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["classes"] == ["class 0", "class 1", "class 2"] and meta["num_classes"] == K
    assert meta["window"] == WINDOW and meta["mean"] == 90.0 and meta["scale"] == 0.02
    assert meta["input"] == "windowed 0-255" and meta["input_multiple"] == 8
    # names and content, not this machine's paths
    assert meta["source_run"] == run.name and meta["fcnseg_version"] and meta["dataset"] == "data"
    assert meta["weights"] == files.BEST_WEIGHTS
    assert meta["weights_sha256"] == files.file_sha256(run / files.BEST_WEIGHTS)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "image" and dims == ["batch", 1, "height", "width"]
    assert [o.name for o in model.graph.output] == ["scores", "probabilities"]
    assert not list(tmp_path.glob(".m.onnx.tmp*"))


def strings(value):
    """Every string inside a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


@pytest.mark.parametrize("with_preprocessing", [False, True])
def test_no_absolute_path_in_the_metadata(tmp_path, monkeypatch, with_preprocessing):
    """Exported from another folder, through relative paths: no value names a path of this machine."""
    run = make_run(tmp_path / "work", arch="fcn8s", stages=3)
    monkeypatch.chdir(tmp_path / "work")
    args = ["--with-preprocessing"] if with_preprocessing else []
    assert main(["export", "run", "-o", "../m.onnx", *args]) == 0
    model = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    texts = list(strings(meta)) + [model.graph.doc_string, model.doc_string,
                                   *(i.doc_string for i in model.graph.input)]
    for text in texts:
        assert str(tmp_path) not in text and "/tmp" not in text and not Path(text).is_absolute(), text
    assert meta["dataset"] == "data" and meta["source_run"] == "run" and len(meta["weights_sha256"]) == 64
    assert (run / files.INFERENCE_FILE).is_file()


@pytest.mark.parametrize("with_preprocessing", [False, True])
@pytest.mark.parametrize("arch,stages,pad", [("fcn32s", 3, "minimal"), ("fcn16s", 4, "minimal"), ("fcn8s", 5, "minimal"),
                                             ("fcn8s", 3, 100), ("unet", 3, "minimal"), ("unet", 2, 44)])
def test_any_size_is_padded_and_cropped_inside_the_graph(tmp_path, arch, stages, pad, with_preprocessing):
    """Odd sizes and the smallest one, fed as they are: the graph mirrors up to the multiple and crops back as
    `fcnseg infer` does (predict.predict on the Caffe net), and the outputs have the input's size."""
    extra = {"norm": "batch", "base_channels": 4} if arch == "unet" else {}
    run = make_run(tmp_path, arch=arch, stages=stages, pad=pad, bias_std=0.1, seed=stages, **extra)
    if extra:
        with_batchnorm_statistics(run)
    model = tmp_path / "m.onnx"
    export_onnx(run, model, with_preprocessing=with_preprocessing)
    caffe_predictor = load_predictor(run)
    multiple = caffe_predictor.multiple
    assert multiple == (2 ** stages if pad == "minimal" else 1)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for h, w in [(37, 45), (2 ** stages + 1, 3 * 2 ** stages - 1), (max(multiple, 9), max(multiple, 9))]:
        image = raw_image(h, w, seed=h)
        _, x = caffe_predictor.network_input(image)
        reference = predict(caffe_predictor, x)
        feed = image.astype(np.float32) if with_preprocessing else x
        scores, probs = session.run(["scores", "probabilities"], {"image": feed[None, None]})
        assert scores.shape == probs.shape == (1, K, h, w)
        assert np.isfinite(reference).all()
        np.testing.assert_allclose(probs[0], reference, atol=2e-5)
        assert (probs[0].argmax(0) == reference.argmax(0)).mean() >= LABEL_AGREEMENT
        assert reference.std(axis=(1, 2)).max() > 1e-3  # scores that vary: a wrong pad or crop would show


@pytest.mark.parametrize("window", [WINDOW, None])
def test_with_preprocessing_takes_original_pixels(tmp_path, window):
    run = make_run(tmp_path, arch="fcn8s", stages=3, pad="minimal", bias_std=0.1, window=window)
    export_onnx(run, tmp_path / "raw.onnx", with_preprocessing=True)
    caffe_predictor = load_predictor(run)
    image = raw_image(48, 64) if window else raw_image(48, 64).astype(np.uint8)
    _, x = caffe_predictor.network_input(image)
    raw = image.astype(np.float32)
    assert_parity(onnx_outputs(tmp_path / "raw.onnx", raw)[0], caffe_score(run, x))


@pytest.mark.parametrize("with_preprocessing", [False, True])
@pytest.mark.parametrize("pad", [100, "minimal"])
def test_infer_onnx_matches_infer_run(tmp_path, pad, with_preprocessing):
    """Same tiling, outputs and overlays: odd sizes (mirrored up to the stride for pad: minimal), a
    tiled image and a stack."""
    run = make_run(tmp_path, arch="fcn16s", stages=3, pad=pad, bias_std=0.1)
    model = tmp_path / "m.onnx"
    args = ["--with-preprocessing"] if with_preprocessing else []
    assert main(["export", run, "-o", model, *args]) == 0
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "odd.tif", raw_image(61, 83))
    tifffile.imwrite(images / "stack.tif", np.stack([raw_image(40, 50, s) for s in range(2)]),
                     photometric="minisblack")
    common = [images, "--overlay", "--probs", "--tile", "32", "--tile-overlap", "8"]
    assert main(["infer", "--run", run, "-o", tmp_path / "caffe", *common]) == 0
    assert main(["infer", "--onnx", model, "-o", tmp_path / "onnx", *common]) == 0
    names = sorted(p.name for p in (tmp_path / "caffe").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "onnx").iterdir()) and len(names) == 9
    for name in names:
        if name.endswith(".npy"):
            np.testing.assert_allclose(np.load(tmp_path / "onnx" / name).astype(np.float32),
                                       np.load(tmp_path / "caffe" / name).astype(np.float32), atol=2e-3)
        else:
            a = np.asarray(Image.open(tmp_path / "onnx" / name))
            b = np.asarray(Image.open(tmp_path / "caffe" / name))
            assert a.shape == b.shape and (a == b).mean() >= LABEL_AGREEMENT


def test_predict_on_odd_size_agrees(tmp_path):
    run = make_run(tmp_path, arch="fcn8s", stages=4, pad="minimal", bias_std=0.1)
    export_onnx(run, tmp_path / "m.onnx")
    a, b = load_predictor(run), load_onnx_predictor(tmp_path / "m.onnx")
    _, x = a.network_input(raw_image(37, 53))
    pa, pb = predict(a, x), predict(b, x)
    assert pa.shape == pb.shape == (K, 37, 53)
    np.testing.assert_allclose(pb, pa, atol=1e-5)


# ---- errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", ['type: "Sigmoid" bottom: "data" top: "score"',
                                   'type: "Pooling" bottom: "data" top: "score" pooling_param { pool: AVE kernel_size: 2 }',
                                   'type: "Pooling" bottom: "data" top: "score" pooling_param { kernel_size: 2 pad: 1 }'])
def test_layers_it_cannot_reproduce_are_refused(layer):
    text = f"""layer {{ name: "input" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1 dim: 8 dim: 8 }} }} }}
    layer {{ name: "odd" {layer} }}"""
    with pytest.raises(RunError, match="layer odd"):
        onnx_model(text_format.Parse(text, caffe_pb2().NetParameter()), {}, FACTS)


def test_infer_needs_exactly_one_of_run_and_onnx(tmp_path, capsys):
    assert main(["infer", tmp_path, "-o", tmp_path / "out"]) == 2
    assert "--run" in capsys.readouterr().err


def test_missing_onnx_file_exits_2(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", raw_image(20, 20))
    assert main(["infer", "--onnx", tmp_path / "nope.onnx", tmp_path / "a.tif", "-o", tmp_path / "out"]) == 2
    assert "nope.onnx" in capsys.readouterr().err


def test_onnx_without_fcnseg_metadata_exits_2(tmp_path, capsys):
    run = make_run(tmp_path)
    export_onnx(run, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    tifffile.imwrite(tmp_path / "a.tif", raw_image(20, 20))
    assert main(["infer", "--onnx", tmp_path / "bare.onnx", tmp_path / "a.tif", "-o", tmp_path / "out"]) == 2
    assert "fcnseg export" in capsys.readouterr().err


def test_export_without_weights_exits_2_writing_nothing(tmp_path, capsys):
    run = make_run(tmp_path, weights=False)
    assert main(["export", run, "-o", tmp_path / "m.onnx"]) == 2
    assert "no weights" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_export_to_a_folder_exits_2(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["export", run, "-o", tmp_path]) == 2
    assert "is a directory" in capsys.readouterr().err


def with_batchnorm_statistics(run: Path, seed: int = 0) -> None:
    """Give the run's BatchNorm layers running sums and a weight as training leaves them (mean ~N(0, 0.5),
    variance in [0.5, 2], weight 3), and its Scale layers scales around 1, so normalisation changes the scores."""
    net = caffe.Net(str(run / files.DEPLOY_FILE), caffe.TEST)
    net.copy_from(str(run / files.BEST_WEIGHTS))
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        if name.endswith("_bn"):
            blobs[0].data[...] = 3.0 * rng.normal(0, 0.5, blobs[0].data.shape)
            blobs[1].data[...] = 3.0 * rng.uniform(0.5, 2.0, blobs[1].data.shape)
            blobs[2].data[...] = 3.0
        elif name.endswith("_scale"):
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            blobs[1].data[...] = rng.normal(0, 0.1, blobs[1].data.shape)
    net.save(str(run / files.BEST_WEIGHTS))
    integrity.record(run / files.BEST_WEIGHTS)  # as training records the weights it writes


@pytest.mark.parametrize("arch,pad", [("unet", "minimal"), ("unet", 92), ("fcn8s", "minimal")])
def test_batchnorm_nets_export_what_caffe_computes(tmp_path, arch, pad):
    run = make_run(tmp_path, arch=arch, norm="batch", stages=3, base_channels=4, pad=pad, bias_std=0.1, seed=1)
    with_batchnorm_statistics(run)
    model = tmp_path / "model.onnx"
    export_onnx(run, model)
    rng = np.random.default_rng(0)
    for h, w in sizes(pad, 8) if pad == "minimal" else [(37, 45), (40, 54)]:
        x = rng.normal(0, 1, (h, w)).astype(np.float32)
        assert_parity(onnx_outputs(model, x)[0], caffe_score(run, x))


def test_onnx_carries_the_object_roles_and_gives_the_same_objects(tmp_path):
    """A run trained for objects: the roles travel in the metadata, and `infer --onnx --instances` splits the
    ONNX probabilities into the objects the Caffe run gives (scores agree to 1e-4 relative)."""
    run = make_objects_run(tmp_path)
    export_onnx(run, tmp_path / "m.onnx")
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["objects"] == {"interior": 1, "boundary": 2, "min_area": 4}
    assert load_onnx_predictor(tmp_path / "m.onnx").facts.objects == meta["objects"]
    tifffile.imwrite(tmp_path / "a.tif", raw_image(64, 96, seed=4))
    for how in (["--run", run], ["--onnx", tmp_path / "m.onnx"]):
        assert main(["infer", *how, tmp_path / "a.tif", "-o", tmp_path / how[0][2:], "--instances"]) == 0
    caffe_ids = tifffile.imread(tmp_path / "run" / "a_instances.tif")
    onnx_ids = tifffile.imread(tmp_path / "onnx" / "a_instances.tif")
    assert caffe_ids.max() > 1 and np.array_equal(caffe_ids, onnx_ids)
