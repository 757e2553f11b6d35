"""TensorBoard event files in the run folder: what `fcnseg train` logs to metrics.jsonl, as curves, pictures and
text, so `tensorboard --logdir runs` shows and compares runs.

A skin over train's own events, as cli.py is over the stages: `Board.event(e)` takes each event train appends to
metrics.jsonl and writes its numbers under fixed tags; it computes nothing train does not, apart from the
iteration rate between two logged training events. `val_overlay` draws the picture of each validation from what
the val net just computed, with `images.overlay` (the colours of `infer --overlay`).

Tags (each value at its training iteration):
- `train/loss` (smoothed, as metrics.jsonl), `train/raw_loss`, `train/lr`, `train/iterations_per_s` (wall
  clock between two logged training events, validation and snapshots included);
- `val/loss`, `val/mean_iu`, `val/pixel_acc`, `val/mean_acc`, `val/fw_iu`, `val/iu/<class name>` (characters
  other than letters, digits, `.`, `-` and `_` as `_`; a class absent from ground truth and prediction has no IU
  and no point), `val/foreground_prob`;
- `val/overlay`: one val sample at each validation: input | prediction | ground truth (white: ignored);
- `config`: the run's config.yaml as text (shown under `config/text_summary`).

Resume: a resumed run writes a new events file whose first record asks TensorBoard to purge every older event
past the snapshot it continued from (tensorboardX `purge_step`), so its curves continue with no repeated step,
after --resume and --resume --from-iter alike. Its config text goes at the first iteration it trains.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

import numpy as np

from .images import overlay

TRAIN_TAGS = {"loss": "train/loss", "raw_loss": "train/raw_loss", "lr": "train/lr"}
VAL_TAGS = {"loss": "val/loss", "mean_iu": "val/mean_iu", "pixel_acc": "val/pixel_acc", "mean_acc": "val/mean_acc",
            "fw_iu": "val/fw_iu", "foreground_prob": "val/foreground_prob"}
RATE_TAG = "train/iterations_per_s"
CLASS_IU_TAG = "val/iu/{}"
OVERLAY_TAG = "val/overlay"
CONFIG_TAG = "config"


class Board:
    """The TensorBoard events file of one `fcnseg train` invocation that starts at iteration `start` (0: a new
    run) in `run_dir`, classes named `classes`; `config_text` (the run's config.yaml) is written as text."""

    def __init__(self, run_dir: str | Path, start: int, classes: list[str], config_text: str):
        from tensorboardX import SummaryWriter  # noqa: PLC0415 - optional at import: only train writes events

        # The suffix keeps two invocations started in the same second (a quick resume) in two files.
        self.writer = SummaryWriter(str(run_dir), purge_step=start + 1 if start else None,
                                    filename_suffix=f".iter{start}")
        self.classes = list(classes)
        self.last_train: tuple[int, float] = (start, 0.0)  # (iteration, elapsed s) of the last training event
        # Markdown: indented lines are shown as they are.
        self.writer.add_text(CONFIG_TAG, "\n".join("    " + line for line in config_text.splitlines()),
                             start + 1 if start else 0)
        self.writer.flush()

    def event(self, event: dict) -> None:
        """Write the numbers of one metrics.jsonl event (`train` and `val`; the others carry no curve)."""
        it, kind = event.get("iter"), event.get("event")
        if kind == "train":
            self._scalars(TRAIN_TAGS, event, it)
            last_it, last_elapsed = self.last_train
            if event["elapsed"] > last_elapsed and it > last_it:
                self.writer.add_scalar(RATE_TAG, (it - last_it) / (event["elapsed"] - last_elapsed), it)
            self.last_train = (it, event["elapsed"])
        elif kind == "val":
            self._scalars(VAL_TAGS, event, it)
            for name, iu in zip(self.classes, event.get("per_class_iu") or []):
                if iu is not None:
                    self.writer.add_scalar(CLASS_IU_TAG.format(re.sub(r"[^\w.-]", "_", name)), iu, it)
        self.writer.flush()  # live curves, and nothing lost when a NaN ends the process at once

    def image(self, it: int, picture: np.ndarray) -> None:
        """Write the RGB uint8 picture (H x W x 3) of the validation at iteration `it`."""
        self.writer.add_image(OVERLAY_TAG, picture, it, dataformats="HWC")
        self.writer.flush()

    def _scalars(self, tags: dict[str, str], event: dict, it: int) -> None:
        for key, tag in tags.items():
            value = event.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, it)

    def close(self) -> None:
        self.writer.close()


def val_overlay(net_input: np.ndarray, labels: np.ndarray, scores: np.ndarray, mean: float, scale: float,
                ignore_label: Optional[int] = 255) -> np.ndarray:
    """The picture of one val sample: input | prediction | ground truth, side by side (RGB uint8, H x 3W x 3).

    `net_input` is what the net saw (C x H x W, (gray - mean) * scale; the first channel is shown),
    `labels` the ground truth (H x W), `scores` the net's K x H x W class scores.
    """
    gray = np.clip(np.rint(np.asarray(net_input[0], np.float32) / scale + mean), 0, 255).astype(np.uint8)
    truth = np.asarray(labels).astype(np.int64)
    truth[(truth < 0) | (truth > 255)] = ignore_label if ignore_label is not None and ignore_label <= 255 else 0
    pred = np.asarray(scores).argmax(0)
    return np.concatenate([np.repeat(gray[..., None], 3, axis=2), overlay(gray, pred, ignore_label=None),
                           overlay(gray, truth, ignore_label=ignore_label)], axis=1)
