"""The napari plugin driven as a person would: a real viewer (napari's make_napari_viewer, in the Xvfb that
pytest-xvfb starts), its dock widgets, a real Caffe run folder, and `fcnseg train` in a child process."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import K, make_run, raw_image, run_main

from fcnseg import files
from fcnseg.images import read_mask

WAIT_MS = 240_000  # generous: the machine running the suite may be busy


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget("fcnseg", name)
    return widget


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_manifest_names_the_widgets_sample_and_reader():
    import npe2
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("fcnseg")
    assert [w.display_name for w in manifest.contributions.widgets] == ["Segment", "Train"]
    assert [s.key for s in manifest.contributions.sample_data] == ["hela"]
    assert manifest.contributions.readers[0].accepts_directories


# ---- Segment ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("napari"))


def test_segment_gives_infers_labels_and_probabilities(make_napari_viewer, qtbot, run, tmp_path, capsys):
    image = raw_image(150, 170, seed=3)
    stack = np.stack([raw_image(150, 170, seed=s) for s in (4, 5)])
    tifffile.imwrite(tmp_path / "one.tif", image)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    rc, _, _ = run_main(capsys, "infer", "--run", run, tmp_path / "one.tif", tmp_path / "stack.tif", "-o",
                        tmp_path / "out")
    assert rc == 0
    viewer = make_napari_viewer()
    one, many = viewer.add_image(image, name="one"), viewer.add_image(stack, name="stack")
    widget = dock(viewer, "Segment")
    widget.run.value, widget.probs.value = run, True
    for layer in (one, many):
        widget.image.value = layer
        assert widget.start() is not None
        wait_idle(qtbot, widget)
    labels = viewer.layers["one labels"].data
    assert labels.shape == image.shape and np.array_equal(labels, read_mask(tmp_path / "out" / "one.png"))
    for i in range(2):
        assert np.array_equal(viewer.layers["stack labels"].data[i], read_mask(tmp_path / "out" / f"stack_{i:03d}.png"))
    probs = viewer.layers["one probability"].data
    assert probs.shape == (K, *image.shape) and np.allclose(probs.sum(axis=0), 1, atol=1e-4)
    assert "3 classes" in widget.status.value


def test_segment_with_onnx_model_and_a_bad_run(make_napari_viewer, qtbot, run, tmp_path, capsys):
    rc, _, _ = run_main(capsys, "export", run, "-o", tmp_path / "m.onnx")
    assert rc == 0
    viewer = make_napari_viewer()
    viewer.add_image(raw_image(96, 80), name="img")
    widget = dock(viewer, "Segment")
    widget.source.value, widget.onnx.value = "ONNX model", tmp_path / "m.onnx"
    widget.start()
    wait_idle(qtbot, widget)
    assert viewer.layers["img labels"].data.shape == (96, 80)
    widget.source.value, widget.run.value = "run folder", tmp_path  # not a run folder: the CLI's line
    widget.start()
    wait_idle(qtbot, widget)
    assert widget.status.value == f"error: {tmp_path}: not a run folder (no config.yaml); pass the folder " \
                                  "`fcnseg train` wrote"
    assert [layer.name for layer in viewer.layers] == ["img", "img labels"]


def test_tile_hook_stops_before_the_next_tile(run):
    from fcnseg.napari_plugin.segment import Cancelled, segment_array
    from fcnseg.predict import load_predictor

    seen = []

    def hook(frame, frames, tile, tiles):
        seen.append((frame, frames, tile, tiles))
        if tile == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        segment_array(load_predictor(run), raw_image(150, 170), "img", tile=64, on_tile=hook)
    assert [s[2] for s in seen] == [0, 1, 2] and seen[0][3] > 3


def test_cancel_adds_nothing_and_the_viewer_stays_usable(make_napari_viewer, qtbot, run, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(raw_image(300, 300), name="big")
    before = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(run).iterdir())
    widget = dock(viewer, "Segment")
    widget.run.value, widget.tile.value = run, 64
    widget.start()
    widget.cancel()
    wait_idle(qtbot, widget)
    assert widget.status.value == "cancelled; nothing added"
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(run).iterdir()) == before
    assert "best.caffemodel" in [name for name, _, _ in before]
    widget.start()  # again, to the end
    wait_idle(qtbot, widget)
    assert viewer.layers["big labels"].data.shape == (300, 300)


# ---- Train -----------------------------------------------------------------------------------------------

TINY = "model.stages=2 model.base_channels=8 data.batch_size=2 train.display_interval=1 "


def painted_viewer(make_napari_viewer):
    """Discs on a noisy background (128 x 128, four in every 32-pixel tile); painted with 1 (background) and 2
    (disc) on most of the image, the rest left unpainted (0)."""
    yy, xx = np.mgrid[:128, :128]
    truth = (((yy % 16) - 8) ** 2 + ((xx % 16) - 8) ** 2 <= 25).astype(np.uint8)
    noise = np.random.default_rng(7).normal(0, 150, truth.shape)
    image = np.clip(400 + 1500.0 * truth + noise, 0, 65535).astype(np.uint16)
    painted = (truth + 1).astype(np.uint8)
    painted[:, 100:] = 0
    viewer = make_napari_viewer()
    viewer.add_image(image, name="discs")
    viewer.add_labels(painted, name="painted")
    widget = dock(viewer, "Train")
    widget.image.value, widget.labels.value = viewer.layers["discs"], viewer.layers["painted"]
    widget.tile.value = 32
    return viewer, widget


def test_train_from_painted_labels_writes_a_run_eval_scores(make_napari_viewer, qtbot, tmp_path, capsys):
    viewer, widget = painted_viewer(make_napari_viewer)
    widget.run.value = tmp_path / "painted_run"
    widget.overrides.value = TINY + "solver.max_iter=4 train.val_interval=2 train.snapshot_interval=2"
    widget.start()
    wait_idle(qtbot, widget)
    assert widget.exit_code == 0, widget.lines
    assert any("of 16 tiles of discs painted" in line for line in widget.lines)
    assert re.fullmatch(r"iteration 4: loss \d\.\d{4}, val mean IU \d\.\d{4} \(iteration 4\)", widget.progress_line.value)
    run_dir = tmp_path / "painted_run"
    dataset = json.dumps(__import__("yaml").safe_load((tmp_path / "painted_run_data" / "dataset.yaml").read_text()))
    assert '"num_classes": 2' in dataset and '"ignore_label": 255' in dataset
    rc, out, _ = run_main(capsys, "eval", run_dir)
    assert rc == 0 and json.loads((run_dir / files.EVAL_FILE).read_text())["mean_iu"] > 0

    layers = viewer.open(run_dir, plugin="fcnseg")  # the reader: val tiles, their labels, the run's predictions
    assert [layer.name for layer in layers] == ["painted_run val images", "painted_run val labels",
                                                "painted_run predictions"]
    images, truth, predicted = (layer.data for layer in layers)
    assert images.shape == truth.shape == predicted.shape and images.shape[1:] == (32, 32)
    assert set(np.unique(truth)) <= {0, 1, 255} and set(np.unique(predicted)) <= {0, 1}


def test_reader_refuses_other_folders_and_names_a_missing_val_split(tmp_path, run):
    from fcnseg.napari_plugin.reader import get_reader
    from fcnseg.errors import RunError

    assert get_reader(str(tmp_path)) is None
    reader = get_reader(str(run))  # a run whose dataset folder holds no LMDBs
    with pytest.raises(RunError, match=r"/data/val_images_lmdb; data.root in .*config.yaml\) is not found; the "
                                       "reader shows that split"):
        reader(str(run))


@pytest.mark.slow
def test_sample_data_is_the_hela_frame_painted_for_train(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("fcnseg", "hela")
    image, mask = viewer.layers
    assert image.data.shape == mask.data.shape == (700, 1100) and image.data.dtype == np.uint16
    assert set(np.unique(mask.data)) == {1, 2} and 0.05 < np.mean(mask.data == 2) < 0.3


def test_nothing_painted_is_one_line(make_napari_viewer, qtbot, tmp_path):
    viewer, widget = painted_viewer(make_napari_viewer)
    viewer.layers["painted"].data[...] = 0
    widget.run.value = tmp_path / "r"
    widget.start()
    wait_idle(qtbot, widget)
    assert widget.status.value == "error: painted: paint at least two labels: 1 for background and 2 for " \
                                  "the objects (0 is unpainted and ignored)"
    assert not (tmp_path / "r").exists() and not (tmp_path / "r_data").exists()


def test_stop_leaves_a_run_that_resume_continues(make_napari_viewer, qtbot, tmp_path):
    viewer, widget = painted_viewer(make_napari_viewer)
    run_dir = tmp_path / "stopped"
    widget.run.value = run_dir
    widget.overrides.value = TINY + "solver.max_iter=100000 solver.lr_policy=fixed train.val_interval=100000"

    def train_events():
        path = run_dir / files.METRICS_FILE
        return [e for e in map(json.loads, path.read_text().splitlines())
                if e["event"] == "train"] if path.is_file() else []

    widget.start()
    qtbot.waitUntil(lambda: len(train_events()) >= 2, timeout=WAIT_MS)
    widget.stop()
    wait_idle(qtbot, widget)
    assert widget.exit_code == 130, widget.lines
    stopped = json.loads((run_dir / files.METRICS_FILE).read_text().splitlines()[-1])
    assert stopped["event"] == "stopped" and stopped["signal"] == "SIGINT"
    assert (run_dir / files.SNAPSHOT_DIR / f"{files.snapshot_stem(stopped['iter'])}.solverstate").is_file()
    assert widget.status.value == f"stopped at iteration {stopped['iter']}; Resume continues"

    widget.start(resume=True)  # `fcnseg train RUN/config.yaml --resume RUN`
    qtbot.waitUntil(lambda: train_events()[-1]["iter"] > stopped["iter"], timeout=WAIT_MS)
    widget.stop()
    wait_idle(qtbot, widget)
    assert widget.exit_code == 130
    assert f"resumed from {files.snapshot_stem(stopped['iter'])}.solverstate at iteration {stopped['iter']}" \
        in widget.lines
    viewer.add_image(np.zeros((8, 8)), name="after")  # the viewer is still usable
    assert widget.image.choices[-1].name == "after"
