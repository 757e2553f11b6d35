"""fcnseg.infer and `fcnseg infer` on tiny runs made here (random weights; seconds each)."""
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from conftest import K, WINDOW, make_objects_run, make_run, raw_image, write_lmdb
from fcnseg import predict as predict_mod
from fcnseg import files
from fcnseg.cli import main
from fcnseg.cpu_kernels import kernel_report
from fcnseg.images import PALETTE, apply_window
from fcnseg.geometry import tile_origins
from fcnseg.predict import Tiling, load_predictor, predict, tiling_for

caffe = pytest.importorskip("caffe")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("infer"))


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "odd.tif", raw_image(97, 131))
    return folder


def label_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "P"
        return np.asarray(img)


# ---- outputs ---------------------------------------------------------------------------------------------

def test_odd_size_writes_label_overlay_and_probs(run, images, tmp_path):
    out = tmp_path / "out"
    code = main(["infer", "--run", run, images / "odd.tif", "-o", out, "--overlay", "--probs"])
    assert code == 0
    labels = label_png(out / "odd.png")
    assert labels.shape == (97, 131) and labels.max() < K
    with Image.open(out / "odd.png") as img:
        assert img.getpalette()[:3 * 256] == [c for rgb in PALETTE for c in rgb]
    with Image.open(out / "odd_overlay.png") as img:
        assert img.mode == "RGB" and img.size == (131, 97)
    probs = np.load(out / "odd_probs.npy")
    assert probs.dtype == np.float16 and probs.shape == (K, 97, 131)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=3e-3)
    assert (probs.argmax(0) == labels).mean() > 0.99  # float16 rounding may split near-ties


def test_overlay_tints_the_windowed_image(run, images, tmp_path):
    main(["infer", "--run", run, images / "odd.tif", "-o", tmp_path, "--overlay"])
    labels = label_png(tmp_path / "odd.png")
    picture = np.asarray(Image.open(tmp_path / "odd_overlay.png"))
    gray = apply_window(tifffile.imread(images / "odd.tif"), WINDOW).astype(np.float32)
    expected = np.repeat(gray[..., None], 3, axis=2)
    tinted = labels != 0
    expected[tinted] = 0.5 * expected[tinted] + 0.5 * np.array(PALETTE, np.float32)[labels[tinted]]
    np.testing.assert_array_equal(picture, np.rint(expected).astype(np.uint8))


@pytest.mark.parametrize("pad", ["minimal", 100])
@pytest.mark.parametrize("shape", [(97, 131), (1, 1), (5, 3), (33, 200)])
def test_any_size_gives_probabilities_of_that_size(tmp_path, pad, shape):
    predictor = load_predictor(make_run(tmp_path, pad=pad))
    _, x = predictor.network_input(raw_image(*shape))
    probs = predict(predictor, x)
    assert probs.shape == (K,) + shape
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


@pytest.mark.slow  # ~10-20 s on 2 CPU cores: VGG's 64-channel conv1 at 0.77 Mpx even in a tiny net
def test_full_hela_frame_keeps_its_size(run, tmp_path):
    tifffile.imwrite(tmp_path / "frame.tif", raw_image(700, 1100))
    assert main(["infer", "--run", run, tmp_path / "frame.tif", "-o", tmp_path / "out"]) == 0
    labels = label_png(tmp_path / "out" / "frame.png")
    assert labels.shape == (700, 1100) and labels.max() < K


def test_stack_and_folder_give_one_output_per_frame(run, images, tmp_path):
    stack = np.stack([raw_image(40, 50, seed) for seed in range(4)])
    tifffile.imwrite(images / "stack.tif", stack, photometric="minisblack")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["infer", "--run", run, images, "-o", out]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["odd.png"] + [f"stack_{i:03d}.png" for i in range(4)]
    assert label_png(out / "stack_002.png").shape == (40, 50)


def test_to_gray_accepts_rgb(run, tmp_path):
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(tmp_path / "rgb.png")
    assert main(["infer", "--run", run, tmp_path / "rgb.png", "-o", tmp_path / "out", "--to-gray"]) == 0
    assert label_png(tmp_path / "out" / "rgb.png").shape == (20, 30)


def test_network_input_is_what_training_data_layer_produced(tmp_path):
    """The training net's Data layer (LMDB of windowed uint8 + transform_param) vs network_input."""
    run = make_run(tmp_path)
    raw = raw_image(24, 40)
    data = tmp_path / "data"
    for split in ("train", "val"):
        write_lmdb(data / f"{split}_images_lmdb", [apply_window(raw, WINDOW)[None]])
        write_lmdb(data / f"{split}_labels_lmdb", [np.zeros((1, 24, 40), np.uint8)])
    from fcnseg.config import load_config
    from fcnseg.nets import train_val_net
    config = load_config(run / files.CONFIG_FILE)
    proto = tmp_path / "train_val.prototxt"
    proto.write_text(str(train_val_net(config)))
    net = caffe.Net(str(proto), caffe.TEST)
    net.forward()
    _, x = load_predictor(run).network_input(raw)
    np.testing.assert_allclose(net.blobs["data"].data[0, 0], x, rtol=0, atol=1e-6)


def test_eight_bit_dataset_passes_uint8_through(tmp_path):
    predictor = load_predictor(make_run(tmp_path, window=None))
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    gray, x = predictor.network_input(image)
    np.testing.assert_array_equal(gray, image)
    np.testing.assert_allclose(x, (image - 90.0) * 0.02, atol=1e-6)


# ---- tiling ----------------------------------------------------------------------------------------------

def test_tile_origins_are_stride_aligned_and_cover():
    for length in (64, 65, 100, 257, 1100):
        origins = tile_origins(length, 64, 48, 16)
        assert all(o % 16 == 0 for o in origins) and origins == sorted(set(origins))
        assert origins[0] == 0 and length <= origins[-1] + 64 < length + 16  # the last tile is cut at length
        assert all(b - a <= 48 for a, b in zip(origins, origins[1:]))


def test_tiling_options():
    assert tiling_for((700, 1100), None, None, 32) is None  # under the pixel budget
    assert tiling_for((1100, 1100), None, None, 32) == Tiling(512, 128)
    assert tiling_for((2000, 2000), 0, None, 32) is None
    assert tiling_for((150, 50), 100, 10, 32) == Tiling(128, 32)  # rounded up to the stride
    assert tiling_for((128, 50), 100, 10, 32) is None  # fits in one tile


def _trusted(length: int, tiling: Tiling, stride: int, margin: int) -> np.ndarray:
    """Pixels at least `margin` from every inner tile edge of every tile covering them."""
    ok = np.ones(length, bool)
    for o in tile_origins(length, tiling.tile, tiling.step, stride):
        end = min(o + tiling.tile, length)
        idx = np.arange(o, end)
        near = ((idx - o < margin) & (o > 0)) | ((end - idx < margin) & (end < length))
        ok[idx[near]] = False
    return ok


@pytest.mark.parametrize("pad", ["minimal", 100])
def test_tiled_agrees_with_whole_image(tmp_path, pad):
    """Away from tile edges (farther than the net's ~22-pixel receptive-field radius) tiled inference is
    whole-image inference, because tile origins keep the pooling grid; elsewhere it stays close."""
    predictor = load_predictor(make_run(tmp_path, pad=pad))
    _, x = predictor.network_input(raw_image(136, 170))
    whole = predict(predictor, x)
    tiling = Tiling(88, 40)
    tiled = predict(predictor, x, tiling)
    assert tiled.shape == whole.shape
    exact = _trusted(136, tiling, predictor.stride, 24)[:, None] & _trusted(170, tiling, predictor.stride, 24)[None]
    assert exact.mean() > 0.1
    np.testing.assert_allclose(tiled[:, exact], whole[:, exact], atol=1e-5)
    interior = (slice(None), slice(24, -24), slice(24, -24))
    assert np.abs(tiled[interior] - whole[interior]).mean() < 0.05


def test_large_images_tile_by_themselves(run, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict_mod, "PIXEL_BUDGET", 1000)
    monkeypatch.setattr(predict_mod, "DEFAULT_TILE", 64)
    assert main(["infer", "--run", run, images / "odd.tif", "-o", tmp_path]) == 0
    assert "(1 tiled)" in capsys.readouterr().out
    assert label_png(tmp_path / "odd.png").shape == (97, 131)


# ---- errors ----------------------------------------------------------------------------------------------

def test_only_input_bad_exits_2_naming_it(run, tmp_path, capsys):
    Image.fromarray(np.full((20, 30, 3), [10, 200, 30], np.uint8)).save(tmp_path / "colour.png")
    assert main(["infer", "--run", run, tmp_path / "colour.png", "-o", tmp_path / "out"]) == 2
    err = capsys.readouterr().err
    assert "colour.png" in err and "RGB" in err and "--to-gray" in err
    assert not list((tmp_path / "out").iterdir())


def test_batch_with_bad_inputs_exits_1_and_writes_the_rest(run, images, tmp_path, capsys):
    Image.fromarray(np.full((20, 30, 3), [10, 200, 30], np.uint8)).save(images / "colour.png")
    (images / "broken.tif").write_bytes(b"not a tiff")
    out = tmp_path / "out"
    code = main(["infer", "--run", run, images, tmp_path / "missing.png", "-o", out])
    captured = capsys.readouterr()
    assert code == 1
    assert (out / "odd.png").is_file() and sorted(p.name for p in out.iterdir()) == ["odd.png"]
    summary = captured.out[captured.out.index("3 input(s) failed"):]
    assert captured.err.count("3x3 convolutions: ") == 1 and kernel_report().line() in captured.err
    for name in ("colour.png", "broken.tif", "missing.png"):
        assert name in summary and name in captured.err


def test_out_of_range_image_for_8bit_dataset_is_a_bad_input(tmp_path, capsys):
    run = make_run(tmp_path, window=None)
    tifffile.imwrite(tmp_path / "deep.tif", raw_image(20, 20))
    assert main(["infer", "--run", run, tmp_path / "deep.tif", "-o", tmp_path / "out"]) == 2
    assert "deep.tif" in capsys.readouterr().err


def test_output_never_overwrites_an_input(run, tmp_path, capsys):
    Image.fromarray(np.full((20, 30), 50, np.uint8)).save(tmp_path / "a.png")
    assert main(["infer", "--run", run, tmp_path, "-o", tmp_path]) == 2
    assert "overwrite the input" in capsys.readouterr().err
    assert np.asarray(Image.open(tmp_path / "a.png")).max() == 50


def test_duplicate_output_names_are_refused(run, tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "x.tif", raw_image(20, 20))
    assert main(["infer", "--run", run, tmp_path / "a", tmp_path / "b", "-o", tmp_path / "out"]) == 1
    assert "would overwrite" in capsys.readouterr().err


def test_run_without_weights_exits_2(tmp_path, images, capsys):
    run = make_run(tmp_path, weights=False)
    assert main(["infer", "--run", run, images / "odd.tif", "-o", tmp_path / "out"]) == 2
    assert "no weights" in capsys.readouterr().err


def test_missing_weights_file_exits_2(run, images, tmp_path, capsys):
    assert main(["infer", "--run", run, images / "odd.tif", "-o", tmp_path,
                 "--weights", tmp_path / "nope.caffemodel"]) == 2
    assert "nope.caffemodel" in capsys.readouterr().err


def test_weights_of_another_net_exit_2_without_caffe_aborting(run, images, tmp_path, capsys):
    other = make_run(tmp_path, fc_channels=16)
    assert main(["infer", "--run", run, images / "odd.tif", "-o", tmp_path / "out",
                 "--weights", other / files.BEST_WEIGHTS]) == 2
    assert "fc6" in capsys.readouterr().err


def test_not_a_run_folder_exits_2(images, tmp_path, capsys):
    assert main(["infer", "--run", tmp_path, images / "odd.tif", "-o", tmp_path / "out"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_overlap_without_step_exits_2(run, images, tmp_path, capsys):
    assert main(["infer", "--run", run, images / "odd.tif", "-o", tmp_path, "--tile", "64",
                 "--tile-overlap", "64"]) == 2
    assert "--tile-overlap" in capsys.readouterr().err


def test_gpu_that_cannot_run_exits_2_with_the_probe_reason(run, images, tmp_path, capsys):
    from fcnseg.caffe_env import gpu_available
    ok, reason = gpu_available(99)  # no machine has GPU 99: CPU-only build, no driver, or no device 99
    assert not ok
    assert main(["infer", "--run", run, images / "odd.tif", "-o", tmp_path / "out", "--gpu", "99"]) == 2
    assert "--gpu 99: " + reason in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- a run folder is portable ----------------------------------------------------------------------------

def test_moved_run_without_its_dataset_gives_the_same_labels(tmp_path, monkeypatch, capsys):
    """Train a small run, move its folder, delete the dataset, infer from another folder."""
    import shutil

    from conftest import write_tiny_dataset
    from test_train import write_cfg

    work = tmp_path / "work"
    (work / "configs").mkdir(parents=True)
    write_tiny_dataset(work / "data", n_train=4, n_val=2, size=32)
    cfg = write_cfg(work / "configs" / "tiny.yaml", Path("../data"), solver__max_iter=6,
                    train__val_interval=3, train__snapshot_interval=3)
    monkeypatch.chdir(work)  # the config's data.root is relative to configs/, not to here
    assert main(["train", "configs/tiny.yaml", "--out", "runs/tiny"]) == 0
    facts = yaml.safe_load((work / "runs" / "tiny" / files.INFERENCE_FILE).read_text())
    assert facts["mean"] == 80.0 and facts["scale"] == 0.02 and facts["num_classes"] == 2
    assert facts["window"] is None and facts["classes"] == ["class 0", "class 1"] and facts["input_multiple"] == 8
    image = np.random.default_rng(0).integers(0, 256, (45, 61), dtype=np.uint8)
    Image.fromarray(image).save(work / "image.png")
    assert main(["infer", "--run", "runs/tiny", "image.png", "-o", "before", "--probs"]) == 0
    before = label_png(work / "before" / "image.png")
    assert cfg.is_file()

    moved = tmp_path / "elsewhere" / "copy of tiny"
    shutil.move(str(work / "runs" / "tiny"), str(moved))
    shutil.rmtree(work / "data")
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    capsys.readouterr()
    assert main(["infer", "--run", moved, work / "image.png", "-o", "after", "--probs"]) == 0
    np.testing.assert_array_equal(label_png(other / "after" / "image.png"), before)
    np.testing.assert_array_equal(np.load(other / "after" / "image_probs.npy"),
                                  np.load(work / "before" / "image_probs.npy"))
    assert main(["eval", moved]) == 2  # eval still needs the dataset, and says where it looked
    err = capsys.readouterr().err
    assert str(work / "data") in err and "data.root" in err and "--data" in err


def test_run_from_before_inference_yaml_falls_back_to_its_dataset(tmp_path, capsys):
    run = make_run(tmp_path)
    x = raw_image(20, 24)
    expected = predict(load_predictor(run), load_predictor(run).network_input(x)[1])
    (run / files.INFERENCE_FILE).unlink()
    predictor = load_predictor(run)
    np.testing.assert_array_equal(predict(predictor, predictor.network_input(x)[1]), expected)
    (tmp_path / "data" / "dataset.yaml").unlink()
    (tmp_path / "data").rmdir()
    assert main(["infer", "--run", run, tmp_path, "-o", tmp_path / "out"]) == 2
    err = capsys.readouterr().err
    assert files.INFERENCE_FILE in err and str(tmp_path / "data") in err


def test_malformed_inference_yaml_exits_2_naming_it(tmp_path, capsys):
    run = make_run(tmp_path)
    facts = yaml.safe_load((run / files.INFERENCE_FILE).read_text())
    del facts["window"]
    (run / files.INFERENCE_FILE).write_text(yaml.safe_dump(facts))
    tifffile.imwrite(tmp_path / "a.tif", raw_image(20, 20))
    assert main(["infer", "--run", run, tmp_path / "a.tif", "-o", tmp_path / "out"]) == 2
    err = capsys.readouterr().err
    assert files.INFERENCE_FILE in err and "window" in err


# ---- objects (--instances) -----------------------------------------------------------------------------

def test_instances_write_ids_table_and_outlines_per_frame(tmp_path):
    from fcnseg.objects import ObjectRoles, label_objects

    run = make_objects_run(tmp_path / "r")
    stack = np.stack([raw_image(70, 90, seed=1), raw_image(70, 90, seed=2)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    assert main(["infer", "--run", run, tmp_path / "stack.tif", "-o", out, "--instances", "--probs"]) == 0
    predictor = load_predictor(run)
    for i in range(2):
        stem = f"stack_{i:03d}"
        assert {p.name for p in out.glob(stem + "*")} == {stem + s for s in (
            ".png", "_probs.npy", "_instances.tif", "_objects.csv", "_instances_overlay.png")}
        ids = tifffile.imread(out / f"{stem}_instances.tif")
        _, x = predictor.network_input(stack[i])
        expected = label_objects(predict(predictor, x), ObjectRoles(1, 2, 4))
        assert ids.dtype == np.uint16 and np.array_equal(ids, expected)
        rows = (out / f"{stem}_objects.csv").read_text().splitlines()
        assert len(rows) == 1 + int(ids.max())
        assert ids.max() > 1 and set(np.unique(ids)) - {0} == set(range(1, int(ids.max()) + 1))


def test_instances_need_a_net_trained_for_objects(run, images, tmp_path, capsys):
    code = main(["infer", "--run", run, images, "-o", tmp_path / "out", "--instances"])
    err = capsys.readouterr().err
    assert code == 2 and "not trained for objects" in err and "data import --instances" in err
    assert not (tmp_path / "out").exists()


def test_instances_are_refused_for_volumes_in_one_line(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    run = make_objects_run(tmp_path / "r")
    nib.save(nib.Nifti1Image(np.stack([raw_image(40, 40)] * 3, axis=2).astype(np.int16), np.eye(4)),
             str(tmp_path / "v.nii.gz"))
    code = main(["infer", "--run", run, tmp_path / "v.nii.gz", "-o", tmp_path / "out", "--instances"])
    assert code == 2 and "not yet in volumes" in capsys.readouterr().err
