"""`fcnseg infer`: label single-channel images with a trained run, files in, files out.

`infer(run_dir, inputs, out_dir, options)` writes, per image (or per frame of a multi-page TIFF / 3-D
.npy), OUT_DIR/<stem>.png: the class ids as a palette PNG in `images.PALETTE` colours, the input's width
and height. `--overlay` adds <stem>_overlay.png, `--probs` <stem>_probs.npy (float16, K x H x W). A DICOM,
NIfTI, HDF5 or Zarr input becomes a label volume (`volume_infer`).

The net and what each image goes through (window, mean and scale, padding, tiles): `predict`. The net is
either the run's Caffe deploy net (facts from the run's inference.yaml, so a moved or copied run folder works
without its dataset) or an ONNX model written by `fcnseg export` (facts from the model's metadata);
everything after that is shared. `infer` adds files, outputs and the per-image error handling of the CLI.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from .cpu_kernels import kernel_report
from .errors import DataError, FcnsegError
from .files import write_atomic
from .images import IMAGE_SUFFIXES, overlay, read_stack, save_label_png
from .objects import (
    INSTANCES_OVERLAY_SUFFIX,
    INSTANCES_SUFFIX,
    OBJECTS_SUFFIX,
    ObjectRoles,
    label_objects,
    write_objects,
)
from .predict import FrameOutcome, InferOptions, Predictor, label_image, make_tiling, open_predictor
from .volume_infer import label_volume
from .volumes import volume_format

OVERLAY_ALPHA = 0.5


# ---- files in, files out ---------------------------------------------------------------------------------

@dataclass
class InferResult:
    """Outputs written, inputs that failed, and the time spent in the net."""

    out_dir: Path
    weights: Path
    written: list[Path] = field(default_factory=list)
    images: int = 0
    tiled: int = 0
    failures: list[str] = field(default_factory=list)  # one message per bad input, naming it
    seconds: float = 0.0
    megapixels: float = 0.0

    def record(self, frame: "FrameOutcome") -> None:
        """Count one labelled image or frame."""
        self.written += frame.written
        self.images += 1
        self.tiled += frame.tiled
        self.seconds += frame.seconds
        self.megapixels += frame.megapixels

    @property
    def completed(self) -> int:
        """Images and frames whose outputs exist now."""
        return self.images

    @property
    def exit_code(self) -> int:
        """0 when every input was labelled, 2 when none was, 1 when some of a batch failed."""
        if not self.failures:
            return 0
        return 2 if self.completed == 0 else 1

    def lines(self) -> list[str]:
        """The summary the CLI prints."""
        out = [f"labelled {self.images} image(s) into {self.out_dir} with {self.weights}"
               + (f" ({self.tiled} tiled)" if self.tiled else "")]
        if self.megapixels:
            out.append(f"{1000 * self.seconds / self.megapixels:.0f} ms per megapixel "
                       f"({self.megapixels:.2f} Mpx in {self.seconds:.1f} s)")
        if self.failures:
            out.append(f"{len(self.failures)} input(s) failed:")
            out += [f"  {message}" for message in self.failures]
        return out


def list_inputs(paths: list[str | Path]) -> list[Path]:
    """Files to label: each path as given, or a folder's image files (IMAGE_SUFFIXES, sorted, not
    recursive). Nothing is checked here; unreadable inputs fail one by one in `infer`."""
    files = []
    for path in map(Path, paths):
        if path.is_dir() and volume_format(path) is None:  # a DICOM series or a Zarr store is one input
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            files += found or [path]  # an empty folder is reported as a bad input
        else:
            files.append(path)
    return files


def read_frames(path: Path, to_gray: bool) -> list[tuple[str, str, np.ndarray]]:
    """(output stem, name for messages, 2-D image) per frame: <stem> for a single image,
    <stem>_<frame, 3 digits> for each frame of a stack. Raises DataError for an unreadable file."""
    if path.is_dir():
        raise DataError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    stack = read_stack(path, "image", to_gray)
    if stack.shape[0] == 1:
        return [(path.stem, str(path), stack[0])]
    width = max(3, len(str(stack.shape[0] - 1)))
    return [(f"{path.stem}_{i:0{width}d}", f"{path} (frame {i})", frame) for i, frame in enumerate(stack)]


# The outputs of one image or frame, named <stem><suffix>: class ids, --overlay, --probs.
LABELS_SUFFIX, OVERLAY_SUFFIX, PROBS_SUFFIX = ".png", "_overlay.png", "_probs.npy"


def output_names(stem: str, options: InferOptions) -> list[str]:
    """The file names `options` makes for one image or frame, in the order they are written."""
    return ([stem + LABELS_SUFFIX] + [stem + OVERLAY_SUFFIX] * options.overlay
            + [stem + PROBS_SUFFIX] * options.probs
            + [stem + s for s in (INSTANCES_SUFFIX, OBJECTS_SUFFIX, INSTANCES_OVERLAY_SUFFIX)] * options.instances)


def object_roles(predictor: Predictor, options: InferOptions) -> Optional[ObjectRoles]:
    """The net's object classes when `options.instances` asks for objects, else None; RunError when the net
    was not trained for objects (checked before any image is read)."""
    if not options.instances:
        return None
    return ObjectRoles.from_facts(predictor.facts.objects, predictor.num_classes, str(predictor.weights))


def prepare_output(out_dir: str | Path, options: InferOptions, stride: int) -> Path:
    """The output folder, created, after refusing what would fail on every image: tiling options that
    leave no step for this net's `stride` (ConfigError) and an `out_dir` that is a file (DataError)."""
    if options.tile != 0:
        make_tiling(options.tile, options.tile_overlap, stride)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    return out


class OutputClaims:
    """Which input each output stem in `out_dir` belongs to, so that no input overwrites another's
    outputs or itself."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.owner: dict[str, str] = {}  # stem -> the input (frame) it was given to

    def claim(self, path: Path, stem: str, where: str) -> None:
        """Give `stem` to `where` (read from `path`); DataError when another input has it or its label
        PNG would be the input file itself."""
        if stem in self.owner:
            raise DataError(f"{where}: its output {stem}{LABELS_SUFFIX} would overwrite that of "
                            f"{self.owner[stem]}; rename one of them")
        if (self.out_dir / (stem + LABELS_SUFFIX)).resolve() == path.resolve():
            raise DataError(f"{where}: its output would overwrite the input itself; choose another -o")
        self.owner[stem] = where

    def release(self, stem: str) -> None:
        """Give `stem` back (a file that turned out to be a stack: its frames claim their own stems)."""
        del self.owner[stem]


def write_labels(out_dir: Path, stem: str, gray: np.ndarray, labels: np.ndarray, with_overlay: bool) -> list[Path]:
    """Write <stem>.png (class ids `labels`, palette PNG) and, if asked, <stem>_overlay.png (the labels
    over `gray`, the windowed image) into `out_dir`. Returns the paths written."""

    paths = [out_dir / (stem + LABELS_SUFFIX)]
    write_atomic(paths[0], lambda p: save_label_png(p, labels))
    if with_overlay:
        paths.append(out_dir / (stem + OVERLAY_SUFFIX))
        picture = overlay(gray, labels, OVERLAY_ALPHA, ignore_label=None)
        write_atomic(paths[-1], lambda p: Image.fromarray(picture).save(p, format="PNG"))
    return paths


def write_outputs(out_dir: Path, stem: str, gray: np.ndarray, probs: np.ndarray,
                  with_overlay: bool, with_probs: bool) -> list[Path]:
    """Write <stem>.png (class ids, palette PNG) and, if asked, <stem>_overlay.png and <stem>_probs.npy
    (float16, K x H x W) into `out_dir`. Returns the paths written."""
    paths = write_labels(out_dir, stem, gray, probs.argmax(axis=0).astype(np.uint8), with_overlay)
    if with_probs:
        paths.append(out_dir / (stem + PROBS_SUFFIX))
        write_atomic(paths[-1], lambda p: np.save(p, probs.astype(np.float16)))
    return paths


def label_and_save(predictor: Predictor, image: np.ndarray, where: str, out_dir: Path, stem: str,
                   options: InferOptions) -> FrameOutcome:
    """Label one raw 2-D image (`label_image`) and write its outputs as <stem>* into `out_dir`
    (`write_outputs`). Raises DataError naming `where` for a bad image."""

    start = time.perf_counter()
    gray, probs, tiled = label_image(predictor, image, where, options.tile, options.tile_overlap)
    seconds = time.perf_counter() - start
    written = write_outputs(out_dir, stem, gray, probs, options.overlay, options.probs)
    roles = object_roles(predictor, options)
    if roles is not None:
        written += write_objects(out_dir, stem, image, gray, label_objects(probs, roles), probs)
    return FrameOutcome(written, tiled, seconds, gray.size / 1e6)


def refuse_volume_objects(path: Path, options: InferOptions) -> None:
    """DataError for --instances on a volume (DICOM, NIfTI, HDF5, Zarr): objects are written for 2-D images and
    stacks only so far."""
    if options.instances:
        raise DataError(f"{path}: --instances labels objects in 2-D images and stacks, not yet in volumes; "
                        "export the slices as a multi-page TIFF (objects per slice), or leave --instances out")


def failure_message(exc: FcnsegError, where: str) -> str:
    """The one line listing a bad input: the error's message, prefixed with `where` unless it names it."""
    return str(exc) if str(exc).startswith(where) else f"{where}: {exc}"


def infer(run_dir: Optional[str | Path], inputs: list[str | Path], out_dir: str | Path,
          options: Optional[InferOptions] = None, report: Callable[[str], None] = print) -> InferResult:
    """Label every image, folder of images and frame of a stack in `inputs` with the run's net (or
    the ONNX model `options.onnx`).

    Run-level problems (run folder, weights, dataset, GPU, tiling options, output folder) raise
    FcnsegError before any image is read. A bad input (unreadable, colour, outside the dataset's
    value range) is passed to `report` with its name and skipped; the result lists it, and its
    `exit_code` says whether none or only some failed.
    """

    options = options or InferOptions()
    predictor = open_predictor(run_dir, options)
    object_roles(predictor, options)
    if options.onnx is None and options.gpu is None:  # Caffe on the CPU: say which kernels run
        report(kernel_report().line())
    out = prepare_output(out_dir, options, predictor.stride)
    result = InferResult(out, predictor.weights)
    files = list_inputs(inputs)
    claims = OutputClaims(out)

    def fail(exc: FcnsegError, where: str) -> None:
        message = failure_message(exc, where)
        result.failures.append(message)
        with tqdm.external_write_mode(file=sys.stderr):
            report(f"error: {message}")

    with tqdm(total=len(files), desc="infer", unit="img", file=sys.stderr, leave=False, disable=None) as bar:
        for path in files:
            if volume_format(path) is not None:  # DICOM, NIfTI, HDF5, Zarr: a label volume (fcnseg.volume_infer)
                try:
                    refuse_volume_objects(path, options)
                    result.record(label_volume(predictor, path, out, options))
                except FcnsegError as exc:
                    fail(exc, str(path))
                bar.update()
                continue
            try:
                frames = read_frames(path, options.to_gray)
            except FcnsegError as exc:
                fail(exc, str(path))
                frames = []
            if len(frames) > 1:  # a stack: count its frames
                bar.total += len(frames) - 1
                bar.refresh()
            for stem, where, image in frames:
                try:
                    claims.claim(path, stem, where)
                    result.record(label_and_save(predictor, image, where, out, stem, options))
                except FcnsegError as exc:
                    fail(exc, where)
                bar.update()
            if not frames:
                bar.update()
    return result
