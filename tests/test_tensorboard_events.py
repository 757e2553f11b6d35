"""fcnseg.tensorboard_events: train's events as TensorBoard files, read back tag by tag with the EventAccumulator
TensorBoard's own server reads runs with (plugin_event_accumulator: every value a tensor, purges applied to all)."""
import json
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from conftest import write_tiny_dataset
from fcnseg.images import PALETTE
from fcnseg.tensorboard_events import Board, val_overlay

ALL = {"tensors": 0}  # keep every point (the default samples some away)
# test_train's tiny net, validating every 3 of 30 iterations: 10 points on each val curve
FAST = {"solver__max_iter": 30, "train__val_interval": 3, "train__snapshot_interval": 6,
        "train__display_interval": 3, "train__smoothing": 3}


class RunBoard:
    """A run's events as TensorBoard shows them: scalars, images and text by tag."""

    def __init__(self, run: Path):
        self.acc = EventAccumulator(str(run), size_guidance=ALL)
        self.acc.Reload()

    def tags(self, plugin: str) -> set[str]:
        return {t for t in self.acc.Tags()["tensors"] if self.acc.SummaryMetadata(t).plugin_data.plugin_name == plugin}

    def scalars(self, tag: str) -> list[tuple[int, float]]:
        assert tag in self.tags("scalars"), tag
        return [(e.step, float(make_ndarray(e.tensor_proto))) for e in self.acc.Tensors(tag)]

    def steps(self, tag: str) -> list[int]:
        return [step for step, _ in self.scalars(tag)]

    def values(self, tag: str) -> list[float]:
        return [value for _, value in self.scalars(tag)]

    def images(self, tag: str) -> list[tuple[int, int, int]]:
        """(step, width, height) of each picture."""
        assert tag in self.tags("images"), tag
        return [(e.step, int(e.tensor_proto.string_val[0]), int(e.tensor_proto.string_val[1]))
                for e in self.acc.Tensors(tag)]

    def texts(self, tag: str) -> list[tuple[int, str]]:
        assert tag in self.tags("text"), tag
        return [(e.step, e.tensor_proto.string_val[0].decode()) for e in self.acc.Tensors(tag)]


def jsonl(run: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def test_board_writes_each_event_under_its_tags(tmp_path):
    board = Board(tmp_path, 0, ["background", "nucleus"], "solver:\n  max_iter: 20\n")
    board.event({"event": "train", "iter": 10, "loss": 0.5, "raw_loss": 0.6, "lr": 1e-3, "elapsed": 2.0})
    board.event({"event": "train", "iter": 20, "loss": 0.4, "raw_loss": 0.3, "lr": 5e-4, "elapsed": 6.0})
    board.event({"event": "val", "iter": 20, "loss": 0.45, "pixel_acc": 0.9, "mean_acc": 0.8, "mean_iu": 0.7,
                 "fw_iu": 0.85, "per_class_iu": [0.9, None], "foreground_prob": None})
    board.event({"event": "done", "iter": 20, "best_mean_iu": 0.7})
    board.image(20, np.full((4, 12, 3), 7, np.uint8))
    board.close()
    acc = RunBoard(tmp_path)
    assert acc.scalars("train/loss") == [(10, 0.5), (20, pytest.approx(0.4))]
    assert acc.values("train/lr") == pytest.approx([1e-3, 5e-4])
    # 10 iterations in 2 s from the start, then 10 in 4 s
    assert acc.values("train/iterations_per_s") == pytest.approx([5.0, 2.5])
    assert acc.scalars("val/mean_iu") == [(20, pytest.approx(0.7))]
    assert acc.values("val/iu/background") == pytest.approx([0.9])
    scalars = acc.tags("scalars")
    assert "val/iu/nucleus" not in scalars and "val/foreground_prob" not in scalars  # no value, no point
    assert acc.images("val/overlay") == [(20, 12, 4)]
    [(step, text)] = acc.texts("config/text_summary")
    assert step == 0 and "max_iter: 20" in text


def test_val_overlay_shows_input_prediction_and_truth():
    net_input = ((np.full((1, 4, 4), 100, np.float32) - 80) * 0.5)  # gray 100 after (x - 80) * 0.5
    labels = np.zeros((4, 4))
    labels[0, 0], labels[3, 3] = 1, 255
    scores = np.zeros((2, 4, 4))
    scores[1, :2] = 1  # predicted class 1 on the top two rows
    picture = val_overlay(net_input, labels, scores, mean=80, scale=0.5)
    assert picture.shape == (4, 12, 3) and picture.dtype == np.uint8
    assert (picture[:, :4] == 100).all()  # the input, gray
    tint = np.rint(0.5 * 100 + 0.5 * np.array(PALETTE[1])).astype(np.uint8)
    assert (picture[0, 4] == tint).all() and (picture[3, 4] == 100).all()  # prediction: rows 0-1 class 1
    assert (picture[0, 8] == tint).all() and (picture[0, 9] == 100).all()  # truth: one pixel class 1
    assert (picture[3, 11] == 178).all()  # the ignore label, white at half opacity over gray 100


caffe = pytest.importorskip("caffe")


@pytest.fixture
def cfg(tmp_path):
    """A config file of test_train's tiny net on a tiny dataset, FAST, with `changes` (train__tensorboard=...)."""
    from test_train import write_cfg
    data = write_tiny_dataset(tmp_path / "data", n_train=8, n_val=4, size=32)
    return lambda **changes: str(write_cfg(tmp_path / "c.yaml", data, **{**FAST, **changes}))


def test_training_writes_curves_overlays_and_config(tmp_path, cfg):
    from fcnseg.cli import main
    run = tmp_path / "run"
    assert main(["train", cfg(), "--out", str(run)]) == 0
    assert list(run.glob("events.out.tfevents.*"))
    acc = RunBoard(run)
    val, train = jsonl(run, "val"), jsonl(run, "train")
    assert len(val) == 10
    for tag, key in (("val/mean_iu", "mean_iu"), ("val/loss", "loss"), ("val/pixel_acc", "pixel_acc"),
                     ("val/fw_iu", "fw_iu")):
        assert acc.scalars(tag) == [(v["iter"], pytest.approx(v[key], rel=1e-6)) for v in val], tag
    for c in (0, 1):
        assert acc.values(f"val/iu/class_{c}") == pytest.approx([v["per_class_iu"][c] for v in val], rel=1e-6)
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr")):
        assert acc.scalars(tag) == [(t["iter"], pytest.approx(t[key], rel=1e-6)) for t in train], tag
    assert acc.steps("train/iterations_per_s") == [t["iter"] for t in train]
    assert all(rate > 0 for rate in acc.values("train/iterations_per_s"))
    assert acc.images("val/overlay") == [(v["iter"], 3 * 32, 32) for v in val]
    [(step, text)] = acc.texts("config/text_summary")
    assert step == 0 and "max_iter: 30" in text and "tensorboard: true" in text


def test_resumed_runs_continue_their_curves_without_repeated_steps(tmp_path, cfg):
    from fcnseg.cli import main
    cfg = cfg()
    run = tmp_path / "run"
    assert main(["train", cfg, "--out", str(run), "--set", "solver.max_iter=12"]) == 0
    assert main(["train", cfg, "--resume", str(run), "--set", "solver.max_iter=18"]) == 0  # 12 -> 18
    # back to the snapshot of iteration 6: 7..18 are trained (and logged) a second time
    assert main(["train", cfg, "--resume", str(run), "--from-iter", "6", "--set", "solver.max_iter=18"]) == 0
    assert len(list(run.glob("events.out.tfevents.*"))) == 3
    acc = RunBoard(run)
    val = jsonl(run, "val")
    assert [v["iter"] for v in val].count(9) == 2  # metrics.jsonl holds both passes over 7..18
    for tag in ("train/loss", "train/lr", "val/mean_iu", "val/loss", "val/iu/class_1"):
        assert acc.steps(tag) == list(range(3, 19, 3)), tag
    latest = {v["iter"]: v["mean_iu"] for v in val}  # the last pass's value of each iteration
    assert acc.values("val/mean_iu") == pytest.approx([latest[i] for i in range(3, 19, 3)], rel=1e-6)
    assert [step for step, _, _ in acc.images("val/overlay")] == list(range(3, 19, 3))
    assert [step for step, _ in acc.texts("config/text_summary")] == [0, 7]  # the second resume's purged


def test_tensorboard_false_writes_no_events(tmp_path, cfg):
    from fcnseg.cli import main
    run = tmp_path / "run"
    assert main(["train", cfg(train__tensorboard=False), "--out", str(run), "--set", "solver.max_iter=10"]) == 0
    assert not list(run.glob("events.out.tfevents.*")) and (run / "metrics.jsonl").is_file()
