"""The *Train* widget: `fcnseg data import` of painted layers (or of files), then `fcnseg train` into a run folder.

Painted layers follow napari's convention: label 0 is unpainted and ignored in the loss, label L is class L - 1
(paint background with 1, the first object class with 2, ...). `painted_tiles` cuts the image and its labels
into tiles with `data.tiles.cut_tiles` (the import's own cutting) and keeps the tiles that hold a painted pixel,
written as two TIFF stacks whose frames `data.import_dataset` pairs, so `val_fraction` holds back that fraction of
the tiles; a second image/labels pair gives the val split instead. The dataset goes beside the run folder
(RUN_data, the painted stacks in RUN_painted).

Training runs `python -m fcnseg.cli train` in a child process: a Caffe CHECK failure or a NaN loss ends that
process, never the viewer, and Stop sends it SIGINT, which ends training exactly as Ctrl-C does (a snapshot, a
resumable run); Resume runs `train RUN/config.yaml --resume RUN`. The widget shows the loss and val mean IU from
the run's metrics.jsonl, and the child's `error: ...` line as a notification.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import napari
import numpy as np
import tifffile
import yaml
from magicgui.widgets import (CheckBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton,
                              SpinBox, create_widget)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from .. import files
from ..data import ImportOptions, import_dataset
from ..data.tiles import cut_tiles
from ..errors import DataError, FcnsegError
from ..metrics import read_events

IGNORE = 255  # what unpainted pixels are stored as (the import's default ignore label, confirmed)
DEFAULT_TILE = 256


def default_config() -> Path:
    """configs/demo_hela.yaml of this checkout: the default config."""
    return Path(__file__).resolve().parents[2] / "configs" / "demo_hela.yaml"


def painted_classes(labels: np.ndarray, name: str) -> np.ndarray:
    """napari labels (0 unpainted, L >= 1 class L - 1) as stored class ids (unpainted = IGNORE), uint8.
    DataError naming the layer when fewer than two classes are painted or a label is above 255."""
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    if top > 255 or (labels.size and labels.min() < 0):
        raise DataError(f"{name}: labels {labels.min()}..{top}; paint with labels 1..255 (1 = background)")
    if top < 2:
        raise DataError(f"{name}: paint at least two labels: 1 for background and 2 for the objects "
                        "(0 is unpainted and ignored)")
    return np.where(labels == 0, IGNORE, labels - 1).astype(np.uint8)


def painted_tiles(image, labels, tile: int, name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(image tiles, class-id tiles, tiles cut) of a 2-D image or a stack and its painted labels: each frame cut
    with `cut_tiles` (the import's cutting, labels beyond the edge ignored), only tiles holding a painted pixel
    kept. DataError naming the layers for mismatched shapes, too few labels or nothing painted."""
    image, labels = np.asarray(image), np.asarray(labels)
    if image.shape != labels.shape or image.ndim not in (2, 3):
        raise DataError(f"{name}: the image is {image.shape} and its labels {labels.shape}; paint a Labels layer "
                        "of the image's shape (a 2-D image or a stack)")
    classes = painted_classes(labels, labels_name)
    frames = zip(image[None], classes[None]) if image.ndim == 2 else zip(image, classes)
    kept_images, kept_labels, cut = [], [], 0
    for frame, frame_labels in frames:
        for image_tile, label_tile in cut_tiles(frame, frame_labels, tile, 0, IGNORE):
            cut += 1
            if np.any(label_tile != IGNORE):
                kept_images.append(image_tile)
                kept_labels.append(label_tile)
    if not kept_images:
        raise DataError(f"{name}: no painted pixel; paint some of the image first")
    return np.stack(kept_images), np.stack(kept_labels), cut


def write_stack(path: Path, frames: np.ndarray) -> Path:
    """A multi-page TIFF, one page per frame, written atomically (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, lambda tmp: tifffile.imwrite(tmp, frames, photometric="minisblack"))
    return path


@dataclass
class TrainingData:
    """Where the training data comes from: painted layers (`image`, `labels`, optional `val_image`,
    `val_labels`: (layer name, array) pairs) or files as `fcnseg data import --images/--labels` takes them."""

    image: Optional[tuple[str, np.ndarray]] = None
    labels: Optional[tuple[str, np.ndarray]] = None
    val_image: Optional[tuple[str, np.ndarray]] = None
    val_labels: Optional[tuple[str, np.ndarray]] = None
    image_file: Optional[str] = None
    labels_file: Optional[str] = None
    val_image_file: Optional[str] = None
    val_labels_file: Optional[str] = None
    binarize: bool = False


def dataset_folder(run_dir: Path) -> Path:
    """RUN_data beside the run folder."""
    return run_dir.with_name(run_dir.name + "_data")


def import_training_data(source: TrainingData, run_dir: Path, tile: int, val_fraction: float) -> list[str]:
    """Import `source` into `dataset_folder(run_dir)` with `data.import_dataset`; returns the lines to show
    (the painted tiles kept and the import's report). Replaces an earlier dataset of that name only while the
    run folder is empty (no run depends on it then). Raises DataError/ConfigError as the import does."""
    out = dataset_folder(run_dir)
    overwrite = not (run_dir.exists() and any(run_dir.iterdir()))
    lines = []
    if source.image is not None:
        painted = run_dir.with_name(run_dir.name + "_painted")
        name, image = source.image
        images, labels, cut = painted_tiles(image, source.labels[1], tile, name, source.labels[0])
        k = int(labels[labels != IGNORE].max()) + 1
        paths = [write_stack(painted / "images.tif", images), write_stack(painted / "labels.tif", labels)]
        val = {}
        if source.val_image is not None:
            val_name, val_image = source.val_image
            val_images, val_labels, val_cut = painted_tiles(val_image, source.val_labels[1], tile, val_name,
                                                            source.val_labels[0])
            k = max(k, int(val_labels[val_labels != IGNORE].max()) + 1)
            val = {"val_images": str(write_stack(painted / "val_images.tif", val_images)),
                   "val_labels": str(write_stack(painted / "val_labels.tif", val_labels))}
            lines.append(f"{len(images)} of {cut} tiles of {name} painted (train); {len(val_images)} of {val_cut} "
                         f"tiles of {val_name} (val)")
        else:
            held = max(1, round(val_fraction * len(images)))
            if len(images) < 2:
                raise DataError(f"{name}: only one {tile}-pixel tile holds painted pixels; paint a second tile "
                                "(validation holds back a fraction of the tiles) or give a val image and labels")
            lines.append(f"{len(images)} of {cut} tiles of {name} painted: about {len(images) - held} train, "
                         f"{held} val (val fraction {val_fraction:g})")
            val = {"val_fraction": val_fraction}
        options = ImportOptions(ignore_label=IGNORE, num_classes=max(k, 2), overwrite=overwrite, **val)
        result = import_dataset(paths[0], paths[1], out, options, progress=False)
    else:
        if not source.image_file or not source.labels_file:
            raise DataError("choose an image layer and a painted Labels layer, or an images file and a labels file")
        val = ({"val_images": source.val_image_file, "val_labels": source.val_labels_file}
               if source.val_image_file else {"val_fraction": val_fraction})
        options = ImportOptions(binarize=source.binarize, tile=tile, overwrite=overwrite, **val)
        result = import_dataset(source.image_file, source.labels_file, out, options, progress=False)
    return lines + result.lines()


def train_command(config: str, run_dir: Path, overrides: list[str], resume: bool) -> list[str]:
    """The `fcnseg train` command line the widget runs: a new run from `config` on dataset_folder(run_dir), or
    `--resume` of the run with its own config."""
    cli = [sys.executable, "-m", "fcnseg.cli", "train"]
    if resume:
        return cli + [str(run_dir / files.CONFIG_FILE), "--resume", str(run_dir)]
    sets = [arg for kv in overrides for arg in ("--set", kv)]
    return cli + [str(config), "--data", str(dataset_folder(run_dir)), "--out", str(run_dir)] + sets


@dataclass
class Progress:
    """The latest training facts in a run's metrics.jsonl."""

    iteration: int = 0
    loss: Optional[float] = None
    val_iter: Optional[int] = None
    mean_iu: Optional[float] = None

    @classmethod
    def read(cls, run_dir: Path) -> "Progress":
        path = run_dir / files.METRICS_FILE
        p = cls()
        for event in read_events(path.read_text().splitlines()) if path.is_file() else []:
            if event.get("event") == "train":
                p.iteration, p.loss = event["iter"], event["loss"]
            elif event.get("event") == "val":
                p.iteration, p.val_iter, p.mean_iu = max(p.iteration, event["iter"]), event["iter"], event["mean_iu"]
            elif event.get("event") in ("stopped", "done"):
                p.iteration = event["iter"]
        return p

    def line(self) -> str:
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        val = "-" if self.mean_iu is None else f"{self.mean_iu:.4f} (iteration {self.val_iter})"
        return f"iteration {self.iteration}: loss {loss}, val mean IU {val}"


def max_iter(run_dir: Path) -> Optional[int]:
    """solver.max_iter of the run's config.yaml, once training has written it."""
    path = run_dir / files.CONFIG_FILE
    try:
        return int(yaml.safe_load(path.read_text())["solver"]["max_iter"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


class TrainWidget(Container):
    """Train (or Resume) a run from painted layers or files, with live loss and val mean IU; Stop is SIGINT."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        self.image = create_widget(annotation=Optional[napari.layers.Image], label="image")
        self.labels = create_widget(annotation=Optional[napari.layers.Labels], label="painted labels")
        self.val_image = create_widget(annotation=Optional[napari.layers.Image], label="val image")
        self.val_labels = create_widget(annotation=Optional[napari.layers.Labels], label="val labels")
        self.image_file = FileEdit(label="or images file", mode="r", value="")
        self.labels_file = FileEdit(label="labels file", mode="r", value="")
        self.binarize = CheckBox(label="binarize (files)", value=False)
        self.val_fraction = FloatSpinBox(label="val fraction of tiles", value=0.2, min=0.05, max=0.9, step=0.05)
        self.tile = SpinBox(label="tile", value=DEFAULT_TILE, min=16, max=4096, step=16)
        self.config = FileEdit(label="config", mode="r", filter="*.yaml", value=str(default_config()))
        self.overrides = LineEdit(label="--set", value="", tooltip="KEY=VALUE ..., as `fcnseg train --set`")
        self.run = FileEdit(label="run folder", mode="d", value="runs/napari")
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.resume_button = PushButton(text="Resume")
        self.bar = ProgressBar(label="iterations", value=0, min=0, max=1)
        self.progress_line = Label(value="")
        self.status = Label(value="")
        self.extend([self.image, self.labels, self.val_image, self.val_labels, self.image_file, self.labels_file,
                     self.binarize, self.val_fraction, self.tile, self.config, self.overrides, self.run,
                     self.train_button, self.stop_button, self.resume_button, self.bar, self.progress_line,
                     self.status])
        for combo in (self.image, self.labels, self.val_image, self.val_labels):
            self.viewer.layers.events.inserted.connect(combo.reset_choices)
            self.viewer.layers.events.removed.connect(combo.reset_choices)
        self.train_button.clicked.connect(lambda: self.start(resume=False))
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.stop_button.clicked.connect(self.stop)
        self.worker = None
        self.run_dir: Optional[Path] = None
        self.exit_code: Optional[int] = None
        self.lines: list[str] = []
        self._proc: Optional[subprocess.Popen] = None
        self._stop = threading.Event()
        self._timer = QTimer()
        self._timer.setInterval(500)
        self._timer.timeout.connect(self._poll)

    def source(self) -> TrainingData:
        """The chosen layers (as name and array pairs), or the files when no image layer is chosen."""
        image, labels = self.image.value, self.labels.value
        if image is not None:
            if labels is None:
                raise DataError(f"{image.name}: choose the Labels layer painted on it")
            val_image, val_labels = self.val_image.value, self.val_labels.value
            if (val_image is None) != (val_labels is None):
                raise DataError("choose both a val image and its val labels, or neither")
            # copies: painting may go on while the import runs
            pair = lambda layer: None if layer is None else (layer.name, np.array(layer.data))  # noqa: E731
            return TrainingData(pair(image), pair(labels), pair(val_image), pair(val_labels))
        named = [str(f.value) if str(f.value) not in ("", ".") else None for f in (self.image_file, self.labels_file)]
        return TrainingData(image_file=named[0], labels_file=named[1], binarize=self.binarize.value)

    def start(self, resume: bool = False):
        """Import and train (or resume) in a worker thread; returns the worker (None when busy or refused)."""
        if self.worker is not None:
            return None
        run_dir = Path(str(self.run.value)).resolve()
        try:
            source = None if resume else self.source()
        except FcnsegError as exc:
            self._error(f"error: {exc}")
            return None
        command = train_command(str(self.config.value), run_dir, self.overrides.value.split(), resume)
        tile, fraction = self.tile.value, self.val_fraction.value
        self._stop.clear()
        self.exit_code, self.lines = None, []
        self.run_dir = run_dir

        def job():
            if source is not None:
                for line in import_training_data(source, run_dir, tile, fraction):
                    yield line
            if self._stop.is_set():
                yield "stopped before training started"
                return None
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, env=env)
            for raw in self._proc.stdout:  # bytes: the progress bar's redraws keep their \r, and are left out
                if b"\r" not in raw and raw.strip():  # (the widget shows progress from metrics.jsonl)
                    yield raw.decode(errors="replace").rstrip()
            return self._proc.wait()

        # errored handled here: napari would otherwise re-raise the exception in the main thread
        self.worker = create_worker(job, _start_thread=False, _connect={
            "yielded": self._line, "returned": self._returned, "errored": self._failed, "finished": self._finished})
        self.train_button.enabled = self.resume_button.enabled = False
        self.stop_button.enabled = True
        self.status.value = f"{'resuming' if resume else 'importing and training'} {run_dir.name} ..."
        self._timer.start()
        self.worker.start()
        return self.worker

    def stop(self):
        """End training as Ctrl-C does: SIGINT to `fcnseg train`, which snapshots and exits 130."""
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        self.status.value = "stopping (a snapshot is written) ..."

    def _line(self, line: str):
        self.lines.append(line)
        if line.startswith("error:"):
            self.status.value = line

    def _poll(self):
        progress = Progress.read(self.run_dir)
        total = max_iter(self.run_dir)
        if total:
            self.bar.max = total
            self.bar.value = min(progress.iteration, total)
        self.progress_line.value = progress.line()

    def _returned(self, code: Optional[int]):
        self.exit_code = code
        self._poll()
        if code is None:
            self.status.value = "stopped before training started"
        elif code == 0:
            self.status.value = f"done: {self.run_dir} (infer, eval and export work on it)"
            show_info(self.status.value)
        elif code == 130:
            self.status.value = f"stopped at iteration {Progress.read(self.run_dir).iteration}; Resume continues"
            show_info(self.status.value)
        else:
            errors = [line for line in self.lines if line.startswith("error:")]
            self._error(errors[-1] if errors else f"fcnseg train exited with code {code}; see the console")

    def _failed(self, exc: BaseException):
        if isinstance(exc, FcnsegError):
            self._error(f"error: {exc}")
        else:
            traceback.print_exception(exc)
            self._error("fcnseg: internal error (the traceback on the console is a bug; please report it)")

    def _error(self, line: str):
        self.status.value = line
        show_error(line)

    def _finished(self):
        self._timer.stop()
        self.worker, self._proc = None, None
        self.train_button.enabled = self.resume_button.enabled = True
        self.stop_button.enabled = False
