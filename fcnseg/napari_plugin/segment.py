"""The *Segment* widget: `fcnseg infer` on an image layer, into layers instead of files.

`segment_array` is the whole computation (no Qt): each 2-D frame of the layer goes through `predict.label_image`,
the function `infer` calls for every image and frame, and its labels are the argmax `infer.write_outputs` saves,
so the Labels layer equals the PNGs `fcnseg infer` writes for the same image. The widget opens the predictor with
`predict.open_predictor` (a run folder, or an exported .onnx as `--onnx`), runs in a worker thread, shows napari's
progress bar per tile, and turns an FcnsegError into the CLI's `error: ...` line as a notification.
"""
from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox, create_widget
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from ..errors import DataError, FcnsegError
from ..predict import InferOptions, Predictor, label_image, open_predictor

SOURCES = ("run folder", "ONNX model")


class Cancelled(Exception):
    """Raised by the tile hook when Cancel was pressed: the prediction ends before its next tile."""


@dataclass
class Segmentation:
    """What Segment adds: class ids per pixel (uint8, the layer's shape) and, if asked, the class
    probabilities (float32, K x the layer's shape). Objects (instance ids) would be one more field here."""

    labels: np.ndarray
    probabilities: Optional[np.ndarray]
    num_classes: int


def frames_of(data, name: str) -> tuple[np.ndarray, bool]:
    """(N x H x W frames, whether the layer was a single 2-D image) for an image layer's data: a 2-D image,
    or a stack / volume labelled frame by frame along its first axis, as `fcnseg infer` labels a multi-page
    TIFF or a 3-D .npy. DataError naming the layer for anything else."""
    array = np.asarray(data)
    if array.ndim == 2:
        return array[None], True
    if array.ndim == 3:
        return array, False
    raise DataError(f"{name}: a {array.ndim}-D layer of shape {array.shape}; Segment takes a 2-D image, a stack "
                    "or a volume (frames along the first axis), as `fcnseg infer` does")


def segment_array(predictor: Predictor, data, name: str, tile: Optional[int] = None,
                  with_probabilities: bool = False,
                  on_tile: Optional[Callable[[int, int, int, int], None]] = None) -> Segmentation:
    """Label every frame of `data` (see `frames_of`) with `predictor`, as `fcnseg infer` does.

    `on_tile(frame, frames, tile, tiles)` is called before each run of the net; whatever it raises ends the
    segmentation there (nothing is returned). Raises DataError naming `name` (and the frame) for a bad image.
    """
    frames, single = frames_of(data, name)
    labels = np.empty(frames.shape, np.uint8)
    probs = np.empty((predictor.num_classes, *frames.shape), np.float32) if with_probabilities else None
    for i, frame in enumerate(frames):
        where = name if single else f"{name} (frame {i})"
        hook = None if on_tile is None else (lambda done, total, i=i: on_tile(i, len(frames), done, total))
        _, p, _ = label_image(predictor, frame, where, tile, None, hook)
        labels[i] = p.argmax(axis=0).astype(np.uint8)  # what infer.write_outputs saves
        if probs is not None:
            probs[:, i] = p
    if single:
        labels = labels[0]
        probs = None if probs is None else probs[:, 0]
    return Segmentation(labels, probs, predictor.num_classes)


def layers_of(result: Segmentation, name: str, like) -> list[tuple]:
    """napari layer tuples for `result`, placed like the image layer `like` (its scale and translation): the
    class ids as Labels, and the probabilities as an image (the foreground's for two classes, else all K along
    a first axis)."""
    place = {"scale": like.scale, "translate": like.translate}
    out = [(result.labels, {"name": f"{name} labels", **place}, "labels")]
    if result.probabilities is not None:
        probs = result.probabilities[1] if result.num_classes == 2 else result.probabilities
        placed = place if result.num_classes == 2 else {"scale": (1, *like.scale), "translate": (0, *like.translate)}
        out.append((probs, {"name": f"{name} probability", "colormap": "magma", "contrast_limits": (0.0, 1.0),
                            "blending": "additive", **placed}, "image"))
    return out


class _Relay(QObject):
    """Carries the worker thread's tile count to the widget, in the main thread."""

    tile = Signal(int, int, int, int)


class SegmentWidget(Container):
    """Choose a run folder or an .onnx model and an image layer; Segment adds its labels (and probability)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        self.source = ComboBox(label="model", choices=SOURCES, value=SOURCES[0])
        self.run = FileEdit(label="run folder", mode="d")
        self.onnx = FileEdit(label="ONNX model", mode="r", filter="*.onnx")
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.tile = SpinBox(label="tile (0: auto)", value=0, min=0, max=8192, step=32,
                            tooltip="as infer --tile: 0 tiles only images above 1024 x 1024 pixels")
        self.probs = CheckBox(label="add probability", value=False)
        self.segment_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.extend([self.source, self.run, self.onnx, self.image, self.tile, self.probs, self.segment_button,
                     self.cancel_button, self.status])
        self.source.changed.connect(self._show_source)
        self.segment_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self.image.reset_choices)
        self.viewer.layers.events.removed.connect(self.image.reset_choices)
        self._relay = _Relay()
        self._relay.tile.connect(self._on_tile)
        self._cancel = threading.Event()
        self._bar: Optional[progress] = None
        self.worker = None
        self._show_source()

    def _show_source(self, *_):
        self.run.visible = self.source.value == SOURCES[0]
        self.onnx.visible = not self.run.visible

    def options(self) -> tuple[Optional[str], InferOptions]:
        """(run folder, InferOptions) as `fcnseg infer --run RUN` or `--onnx MODEL` would build them."""
        if self.source.value == SOURCES[0]:
            return str(self.run.value), InferOptions(tile=self.tile.value or None)
        return None, InferOptions(tile=self.tile.value or None, onnx=str(self.onnx.value))

    def start(self):
        """Segment the chosen image layer in a worker thread (returns the worker; nothing when busy)."""
        layer = self.image.value
        if self.worker is not None:
            return None
        if layer is None:
            show_error("error: no image layer; open an image first")
            return None
        if layer.rgb:
            show_error(f"error: {layer.name}: an RGB layer; Segment reads single-channel images "
                       "(as `fcnseg infer` without --to-gray)")
            return None
        run_dir, options = self.options()
        data = layer.data[0] if layer.multiscale else layer.data  # a pyramid: its full resolution
        name, with_probs = layer.name, self.probs.value
        self._cancel.clear()

        def job():
            predictor = open_predictor(run_dir, options)
            try:
                return segment_array(predictor, data, name, options.tile, with_probs, self._check_tile)
            except Cancelled:
                return None

        # errored handled here: napari would otherwise re-raise the exception in the main thread
        self.worker = create_worker(job, _start_thread=False, _connect={
            "returned": lambda result: self._done(result, layer), "errored": self._failed,
            "finished": self._finished})
        self._bar = progress(total=0, desc=f"fcnseg: segmenting {name}")
        self.segment_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"segmenting {name} ..."
        self.worker.start()
        return self.worker

    def cancel(self):
        """Stop before the next tile; nothing is added."""
        self._cancel.set()
        self.status.value = "cancelling ..."

    def _check_tile(self, frame: int, frames: int, tile: int, tiles: int) -> None:
        if self._cancel.is_set():
            raise Cancelled()
        self._relay.tile.emit(frame, frames, tile, tiles)

    def _on_tile(self, frame: int, frames: int, tile: int, tiles: int):
        if self._bar is not None:
            self._bar.total = frames * tiles
            self._bar.n = frame * tiles + tile
            self._bar.set_description(f"fcnseg: frame {frame + 1}/{frames}, tile {tile + 1}/{tiles}")
            self._bar.refresh()

    def _done(self, result: Optional[Segmentation], layer):
        if result is None:
            self.status.value = "cancelled; nothing added"
            return
        for data, kwargs, kind in layers_of(result, layer.name, layer):
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self.status.value = f"added {layer.name} labels ({result.num_classes} classes)"
        show_info(self.status.value)

    def _failed(self, exc: BaseException):
        if isinstance(exc, FcnsegError):
            self.status.value = f"error: {exc}"
        else:  # an internal failure: the traceback is the bug report
            traceback.print_exception(exc)
            self.status.value = "fcnseg: internal error (the traceback on the console is a bug; please report it)"
        show_error(self.status.value)

    def _finished(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.worker = None
        self.segment_button.enabled, self.cancel_button.enabled = True, False

