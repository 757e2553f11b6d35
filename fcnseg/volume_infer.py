"""`fcnseg infer` on volumes: label volumes written back in the input's own geometry.

Every slice is labelled exactly as `infer` labels a 2-D image (`infer.label_image`: the run's window,
mean and scale; tiles above the pixel budget). What is written depends on the input (`volumes.volume_format`):

- NIfTI: OUT/<stem>_labels.nii[.gz], uint8 class ids with the input's affine and header (qform/sform and
  their codes), so it overlays on the input in a viewer. A 4-D input gives the labels of the chosen volume.
- DICOM (file or series folder): OUT/<stem>_labels.nii.gz on the series' grid (i = column, j = row,
  k = slice in fcnseg's position order) with the affine from Image Position/Orientation Patient and Pixel
  Spacing (`dicom.DicomSeries.affine`, RAS).
- HDF5 / Zarr: OUT/<stem>_labels.zarr, a Zarr array of the input's spatial shape and axis order, chunked
  like the input, written block by block (`label_blocks`): a block is one storage chunk of the output,
  labelled from the input chunk plus a margin of HALO pixels (a multiple of the net stride, so the block
  sits on the whole slice's pooling grid; the margin is cut off again) and read from disk alone, so the
  volume is never whole in memory. The same blocks run in one process here and as Dask tasks with
  `--workers` (`fcnseg.distribute`), which records each finished block in its manifest and skips it on a
  rerun.

Blocks of the fill value: chunks never written to a Zarr/HDF5 volume read as its fill value. A block whose
input (with its margin) is the fill value everywhere is not run through the net. Its labels are the
*fill label*: the class the net gives to a constant image of the fill value (computed once per run,
`fill_label`), which is the output array's own fill value, so such chunks are never written and cost no
disk. The output's attributes record the fill label and the fraction of a constant block's pixels the
net gives that class (1.0: skipping is exact; below 1, the net labels a constant image unevenly at its
edges and the skipped blocks are the majority class).
"""
from __future__ import annotations

import gzip
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from . import files
from .errors import DataError, FcnsegError
from .geometry import ceil_to
from .predict import FrameOutcome, InferOptions, Predictor, label_image
from .volumes import VolumeOptions, open_volume, volume_format, volume_stem
from .volumes.arrays import ArrayVolume
from .volumes.dicom import DicomSeries
from .volumes.nifti import NiftiVolume

HALO = 64  # pixels of context around a block (rounded up to the net stride)
LABELS_SUFFIX = "_labels"
OUTPUT_ATTRIBUTE = "fcnseg"


def reading_options(options: InferOptions, predictor: Predictor, path: Path) -> VolumeOptions:
    """--axis/--volume/--dataset for `path`, each left out taken from the run's reader record when the
    training volumes had the same format."""
    return VolumeOptions(options.axis, options.volume, options.dataset).with_defaults(
        predictor.facts.reader, volume_format(path))


def output_path(path: Path, out_dir: Path) -> Path:
    """Where the labels of the volume `path` go (see the module docstring)."""
    fmt = volume_format(path)
    stem = volume_stem(path) + LABELS_SUFFIX
    if fmt == "nifti":
        return out_dir / (stem + (".nii.gz" if path.name.lower().endswith(".gz") else ".nii"))
    return out_dir / (stem + (".nii.gz" if fmt == "dicom" else ".zarr"))


def label_slice(predictor: Predictor, image: np.ndarray, where: str, options: InferOptions) -> tuple[np.ndarray, bool]:
    """(uint8 class ids, whether tiled) of one 2-D slice, as `infer` labels an image."""
    _, probs, tiled = label_image(predictor, image, where, options.tile, options.tile_overlap)
    return probs.argmax(axis=0).astype(np.uint8), tiled


def label_volume(predictor: Predictor, path: Path, out_dir: Path, options: InferOptions) -> FrameOutcome:
    """Label every slice of the volume `path` and write its label volume into `out_dir` (see the module
    docstring). DataError naming the input for unreadable input or --overlay/--probs (2-D outputs)."""
    if options.overlay or options.probs:
        raise DataError(f"{path}: --overlay and --probs write 2-D pictures; a volume gets its label volume "
                        f"({output_path(path, out_dir).name}) only: label it without them")
    start = time.perf_counter()
    volume = open_volume(path, reading_options(options, predictor, path))
    target = output_path(path, out_dir)
    if isinstance(volume, ArrayVolume):
        scratch = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            array = create_output(volume, scratch, *fill_label(predictor, volume, options))
            tiled = False
            for block in block_grid(volume):
                tiled |= label_block(predictor, volume, array, block, options)
            if target.exists():
                shutil.rmtree(target)
            scratch.rename(target)
        finally:
            volume.close()
            shutil.rmtree(scratch, ignore_errors=True)
        return FrameOutcome([target], tiled, time.perf_counter() - start, _megapixels(volume.shape))
    labels = np.empty(volume.shape, np.uint8)
    tiled = False
    for i in range(volume.shape[0]):
        labels[i], was_tiled = label_slice(predictor, volume.slice(i), volume.where(i), options)
        tiled |= was_tiled
    if isinstance(volume, NiftiVolume):
        volume.save_labels(volume.label_volume(labels), target)
    else:
        save_dicom_labels(volume, labels, target)
    return FrameOutcome([target], tiled, time.perf_counter() - start, _megapixels(volume.shape))


def _megapixels(shape) -> float:
    return shape[0] * shape[1] * shape[2] / 1e6


def save_dicom_labels(series: DicomSeries, labels: np.ndarray, target: Path) -> None:
    """(slices, rows, columns) labels of a DICOM series as NIfTI on the series' grid (i = column, j = row,
    k = slice), RAS affine from the DICOM geometry, qform and sform code 1 (scanner)."""

    import nibabel  # noqa: PLC0415 - optional dependency (fcnseg[formats])

    image = nibabel.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), series.affine())
    image.set_qform(series.affine(), 1)
    image.set_sform(series.affine(), 1)
    image.header.set_xyzt_units("mm")
    files.write_bytes_atomic(target, gzip.compress(image.to_bytes(), compresslevel=6))


# ---- HDF5 / Zarr: block by block -------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """One output chunk: slices z0..z1, rows y0..y1, columns x0..x1 (in slicing-axis-first order)."""

    index: int
    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int


def block_grid(volume: ArrayVolume) -> list[Block]:
    """The output chunks of `volume`, in storage order (slices, then rows, then columns)."""
    n, h, w = volume.shape
    cz, cy, cx = volume.chunks
    blocks = []
    for z in range(0, n, cz):
        for y in range(0, h, cy):
            for x in range(0, w, cx):
                blocks.append(Block(len(blocks), z, min(z + cz, n), y, min(y + cy, h), x, min(x + cx, w)))
    return blocks


def halo(predictor: Predictor) -> int:
    return ceil_to(HALO, predictor.stride)


def fill_label(predictor: Predictor, volume: ArrayVolume, options: InferOptions) -> tuple[int, float]:
    """(class, fraction of the pixels given it) that the net gives to a constant block of `volume`'s fill
    value, the size of one chunk plus its margins: the labels of blocks never written."""
    _, cy, cx = volume.chunks
    margin = halo(predictor)
    constant = np.full((min(cy + 2 * margin, volume.shape[1]), min(cx + 2 * margin, volume.shape[2])),
                       volume.fill_value, volume.dtype)
    labels, _ = label_slice(predictor, constant, f"{volume.name()} (fill value {volume.fill_value})", options)
    counts = np.bincount(labels.ravel(), minlength=predictor.num_classes)
    return int(counts.argmax()), round(float(counts.max() / labels.size), 6)


def create_output(volume: ArrayVolume, target: Path, fill: int, fraction: Optional[float],
                  attributes: Optional[dict] = None):
    """A new uint8 Zarr array at `target` (replacing one there): the input's spatial shape and axis order,
    its chunks, fill value `fill`, and the attributes that say how it was made."""
    import zarr  # noqa: PLC0415 - optional dependency (fcnseg[formats])

    if target.exists():
        shutil.rmtree(target)
    spatial = volume.array.shape[volume.lead:]
    chunks = (getattr(volume.array, "chunks", None) or spatial)[volume.lead:]
    record = {"source": volume.name(), "axis": volume.axis, "fill_label": fill,
              "fill_label_fraction": fraction, **(attributes or {})}
    return zarr.create_array(store=str(target), shape=tuple(spatial), chunks=tuple(chunks), dtype="uint8",
                             fill_value=fill, attributes={OUTPUT_ATTRIBUTE: record})


def open_output(target: Path):
    import zarr  # noqa: PLC0415 - optional dependency (fcnseg[formats])

    return zarr.open_array(store=str(target), mode="r+")


def _index(volume: ArrayVolume, z: slice, y: slice, x: slice) -> tuple:
    where = [y, x]
    where.insert(volume.axis, z)
    return tuple(where)


def label_block(predictor: Predictor, volume: ArrayVolume, output, block: Block, options: InferOptions) -> bool:
    """Label `block` of `volume` into the Zarr array `output`; returns whether any slice was tiled. A block
    whose input (with margins) is the fill value everywhere is left unwritten (the fill label)."""
    n, h, w = volume.shape
    margin = halo(predictor)
    ry0, ry1 = max(0, block.y0 - margin), min(h, block.y1 + margin)
    rx0, rx1 = max(0, block.x0 - margin), min(w, block.x1 + margin)
    out = np.empty((block.z1 - block.z0, block.y1 - block.y0, block.x1 - block.x0), np.uint8)
    tiled, empty = False, True
    for z in range(block.z0, block.z1):
        region = volume.region(z, slice(ry0, ry1), slice(rx0, rx1))
        if not np.any(region != volume.fill_value):
            out[z - block.z0] = output.fill_value
            continue
        empty = False
        labels, was_tiled = label_slice(predictor, region, f"{volume.where(z)} rows {ry0}-{ry1} columns {rx0}-{rx1}",
                                        options)
        tiled |= was_tiled
        out[z - block.z0] = labels[block.y0 - ry0:block.y1 - ry0, block.x0 - rx0:block.x1 - rx0]
    if not empty:
        output[_index(volume, slice(block.z0, block.z1), slice(block.y0, block.y1),
                      slice(block.x0, block.x1))] = np.moveaxis(out, 0, volume.axis)
    return tiled


# ---- HDF5 / Zarr on a Dask cluster (`fcnseg infer --workers`, fcnseg.distribute) ----------------------------

BLOCKS_PER_TASK = 16  # blocks labelled by one task: fewer tasks for mostly empty volumes, small redo on a kill
_VOLUME: dict[tuple, tuple] = {}  # the volume this worker process opened last, and its block grid


@dataclass
class VolumePlan:
    """What a worker found planning a volume: how to read it, its blocks, its output and fill label."""

    reading: VolumeOptions
    blocks: int
    target: str
    fill: int
    fill_fraction: float


@dataclass
class BlockResult:
    """What one block task sends back: the blocks done, time in the net and pixels, or a failure."""

    path: str
    blocks: list[int]
    seconds: float = 0.0
    megapixels: float = 0.0
    tiled: bool = False
    failure: Optional[str] = None


def _worker_volume(path: str, reading: VolumeOptions) -> tuple[ArrayVolume, list[Block]]:
    key = (path, reading)
    if key not in _VOLUME:
        for volume, _ in _VOLUME.values():
            volume.close()
        _VOLUME.clear()
        volume = open_volume(Path(path), reading)
        _VOLUME[key] = (volume, block_grid(volume))
    return _VOLUME[key]


def plan_volume(open_predictor, run_dir: Optional[str], options: InferOptions, path: str, out_dir: str,
                reuse: bool) -> VolumePlan | str:
    """Task: open the volume and the net, compute the fill label and create the output array (or keep the
    one a previous run of the same weights and options left, `reuse`); the failure message for a bad input.
    `open_predictor(run_dir, options)` is distribute.worker_predictor (the net cached per worker)."""
    try:
        if options.overlay or options.probs:
            raise DataError(f"{path}: --overlay and --probs write 2-D pictures; a volume gets its label volume "
                            "only: label it without them")
        predictor = open_predictor(run_dir, options)
        reading = reading_options(options, predictor, Path(path))
        volume, blocks = _worker_volume(path, reading)
        target = output_path(Path(path), Path(out_dir))
        fill, fraction = fill_label(predictor, volume, options)
        record = {"weights": str(predictor.weights)}
        if not (reuse and _matches(target, volume, fill, record)):
            create_output(volume, target, fill, fraction, record)
        return VolumePlan(reading, len(blocks), str(target), fill, fraction)
    except FcnsegError as exc:
        return str(exc) if str(exc).startswith(path) else f"{path}: {exc}"


def _matches(target: Path, volume: ArrayVolume, fill: int, record: dict) -> bool:
    if not target.is_dir():
        return False
    try:
        made = dict(open_output(target).attrs).get(OUTPUT_ATTRIBUTE, {})
    except Exception:  # noqa: BLE001 - an unreadable leftover output is simply made again
        return False
    return made.get("source") == volume.name() and made.get("axis") == volume.axis and \
        made.get("fill_label") == fill and made.get("weights") == record["weights"]


def label_blocks(open_predictor, run_dir: Optional[str], options: InferOptions, path: str, reading: VolumeOptions,
                 indices: list[int], target: str) -> BlockResult:
    """Task: label the blocks `indices` of the volume `path` into the output array `target`."""
    start = time.perf_counter()
    try:
        predictor = open_predictor(run_dir, options)
        volume, blocks = _worker_volume(path, reading)
        output = open_output(Path(target))
        tiled, pixels = False, 0
        for i in indices:
            b = blocks[i]
            tiled |= label_block(predictor, volume, output, b, options)
            pixels += (b.z1 - b.z0) * (b.y1 - b.y0) * (b.x1 - b.x0)
    except FcnsegError as exc:
        return BlockResult(path, indices, failure=str(exc) if str(exc).startswith(path) else f"{path}: {exc}")
    return BlockResult(path, indices, time.perf_counter() - start, pixels / 1e6, tiled)


class ClusterVolumes:
    """The client's side of HDF5/Zarr volumes on a cluster: plan each volume on a worker, submit its blocks
    not yet in the manifest as tasks of BLOCKS_PER_TASK, and record each finished task's blocks."""

    def __init__(self, client, open_predictor, run_dir: Optional[str], options: InferOptions, out_dir: Path,
                 manifest):
        self.client, self.open_predictor, self.run_dir = client, open_predictor, run_dir
        self.options, self.out_dir, self.manifest = options, out_dir, manifest
        self.remaining: dict[str, int] = {}  # input -> tasks not finished
        self.targets: dict[str, Path] = {}
        self.skipped_blocks = 0

    def submit(self, path: Path) -> list:
        """The futures of `path`'s block tasks (none when every block is done); raises DataError for a bad input."""
        # the input as the manifest saw it (a Zarr store by its folder's size and mtime: a store rewritten
        # in place without touching its top folder is not noticed; delete the manifest then)
        seen = self.manifest.files.get(str(path))
        stat = path.stat()
        reuse = seen is not None and [seen["size"], seen["mtime_ns"]] == [stat.st_size, stat.st_mtime_ns]
        plan = self.client.submit(plan_volume, self.open_predictor, self.run_dir, self.options, str(path),
                                  str(self.out_dir), reuse, pure=False).result()
        if isinstance(plan, str):
            raise DataError(plan)
        self.manifest.record_file(path, [(Path(plan.target).name, f"{plan.blocks} blocks, fill label {plan.fill} "
                                          f"({plan.fill_fraction:.4g} of a constant block)")])
        todo = [i for i in range(plan.blocks) if (str(path), i) not in self.manifest.done]
        self.skipped_blocks += plan.blocks - len(todo)
        self.targets[str(path)] = Path(plan.target)
        futures = [self.client.submit(label_blocks, self.open_predictor, self.run_dir, self.options, str(path),
                                      plan.reading, todo[k:k + BLOCKS_PER_TASK], plan.target, pure=False)
                   for k in range(0, len(todo), BLOCKS_PER_TASK)]
        self.remaining[str(path)] = len(futures)
        return futures

    def finished(self, task: BlockResult, result) -> bool:
        """Record a finished task's blocks in the manifest and its time in `result`; True when it was the
        volume's last task (the volume is complete)."""
        for i in task.blocks:
            self.manifest.record_done(task.path, i)
        result.seconds += task.seconds
        result.megapixels += task.megapixels
        result.tiled += int(task.tiled)
        self.remaining[task.path] -= 1
        if self.remaining[task.path]:
            return False
        result.images += 1
        result.written.append(self.targets[task.path])
        return True
