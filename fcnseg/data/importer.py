"""`fcnseg data import`: `import_dataset(images, labels, out, options)` turns images and masks into the dataset
folder every later stage reads (layout in `fcnseg.dataset`): train/val image and label LMDBs of uint8 Caffe Datums,
a `dataset.yaml` and a `preview.png`. It works in two passes over the sources: the first checks every pair (sizes,
colour, label values) and measures the train intensity distribution, so bad input fails before anything is
written; the second windows, tiles and writes into a temporary folder next to `out`, renamed to `out` only when
complete.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import lmdb
import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from .. import __version__, diskspace, verify
from ..dataset import DatasetInfo, datum_bytes, read_dataset, save_val_objects
from ..errors import DataError
from ..files import DATASET_FILE, SPLITS, VAL_OBJECTS_FILE, dataset_paths
from ..images import WindowEstimator, apply_window, overlay
from ..volumes import volume_sources
from . import caffe_lmdb
from .instances import INSTANCE_CLASSES, ObjectCounts, instance_hint, instance_ids, instance_target
from .options import ImportOptions
from .show import dataset_warnings, summary_lines
from .sources import Pair, list_pairs, split_pairs
from .tiles import TilePlan, cut_tiles, dihedral, holds_foreground, plan_train_tiles, tile_starts

PREVIEW_FILE = "preview.png"
# More classes than this, inferred from the masks alone, almost always means instance ids.
MAX_INFERRED_CLASSES = 32

_COMMIT_EVERY = 256
_PREVIEW_PER_SPLIT = 2
_PREVIEW_SIDE = 384


def _values(array: np.ndarray) -> np.ndarray:
    if array.size and 0 <= array.min() and array.max() < 1 << 16:
        return np.flatnonzero(np.bincount(array.ravel()))
    return np.unique(array)


def _listing(values, limit: int = 10) -> str:
    values = [int(v) for v in values]
    text = ", ".join(map(str, values[:limit]))
    return text + (f", ... ({len(values)} values)" if len(values) > limit else "")


@dataclass
class _Scan:
    """What the checking pass learned: label values per pair, sizes, the train intensity distribution."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    dtypes: dict[str, np.dtype] = field(default_factory=dict)
    train_intensities: WindowEstimator = field(default_factory=WindowEstimator)
    train_label_pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    foreground_tiles: dict[str, list[bool]] = field(default_factory=dict)  # train pairs: per tile, in cut order
    objects: ObjectCounts = field(default_factory=ObjectCounts)  # --instances: objects per split
    instance_hint: Optional[str] = None  # a mask that looks like instance labels (for --binarize's note)


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


def source_pairs(images: Path, labels: Path, to_gray: bool) -> tuple[list[Pair], bool]:
    """The source pairs of --images/--labels and whether they are stack frames: two Caffe LMDBs paired by key
    (`caffe_lmdb.lmdb_pairs`), else two folders or two stacks (`sources.list_pairs`)."""
    if caffe_lmdb.is_caffe_lmdb(images) or caffe_lmdb.is_caffe_lmdb(labels):
        return caffe_lmdb.lmdb_pairs(images, labels, to_gray), False
    return list_pairs(images, labels, to_gray)


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
        pairs, frames = source_pairs(Path(images), Path(labels), options.to_gray)
    else:
        pairs, frames = [Pair(*pair) for pair in volumes.pairs], True
    if options.val_images is not None:
        val_pairs, _ = source_pairs(Path(options.val_images), Path(options.val_labels), options.to_gray)
        train, val = caffe_lmdb.separate_val(pairs, val_pairs)
        pairs = train + val
    else:
        train, val = split_pairs(pairs, frames, options)
    user_mean = caffe_lmdb.read_mean_file(options.mean_file, images, options.to_gray) if options.mean_file else None
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
    diskspace.require(out.parent, diskspace.import_bytes([scan.sizes[p.name] for p in train + val], options.tile,
                                                         options.tile_overlap, plan.copies),
                      f"the dataset {out.name}", "free some space there, or choose another -o")
    tmp = out.parent / f".{out.name}.importing-{os.getpid()}"
    try:
        tmp.mkdir()
        previews, splits, means = [], {}, {}
        val_objects = [] if options.instances else None
        with _bar(len(pairs), "writing", progress) as bar:
            for split, chosen, split_plan in (("train", train, plan), ("val", val, None)):
                splits[split], means[split] = _write_split(tmp, split, chosen, scan, window, num_classes,
                                                           options, previews, bar, split_plan,
                                                           val_objects if split == "val" else None)
        meta = _dataset_meta(images, labels, options, num_classes, window, means["train"], splits)
        if options.instances:
            meta["instances"] = scan.objects.record(options.boundary_width)
            save_val_objects(tmp / VAL_OBJECTS_FILE, val_objects)
        elif scan.instance_hint is not None:
            meta["instance_hint"] = scan.instance_hint
        meta["train_tiles"] = plan.record()
        meta["checksums"] = verify.dataset_checksums(tmp)  # what `fcnseg data check` compares against
        if user_mean is not None:
            caffe_lmdb.record_mean(meta, user_mean, window)
        if volumes is not None:
            meta["reader"] = volumes.reader
        if options.val_images is not None:
            meta["source"].update(val_images=str(options.val_images), val_labels=str(options.val_labels))
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
            labels = _labels(pair, mask, options, scan, "train" if pair.name in train_names else "val")
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


def _labels(pair: Pair, mask: np.ndarray, options: ImportOptions, scan: Optional[_Scan] = None,
            split: str = "") -> np.ndarray:
    """The class ids stored for `mask`: --label-map/--binarize applied, or with --instances the 3-class target
    of its objects (`instances.instance_target`). With `scan`, the objects are counted and a mask that looks
    like instance labels under --binarize is noted."""
    if not options.instances:
        if scan is not None and options.binarize and scan.instance_hint is None and instance_hint(mask):
            scan.instance_hint = (f"{pair.mask_where} looks like instance labels (one id per object); --binarize "
                                  "keeps only foreground/background, --instances keeps the objects apart")
        return options.map_labels(mask)
    ids, note = instance_ids(mask, pair.mask_where)
    if scan is not None:
        scan.objects.add(split, ids, note)
    return instance_target(ids, options.boundary_width).astype(np.int32)


def _num_classes(pairs: list[Pair], scan: _Scan, options: ImportOptions) -> int:
    """K from --classes/--num-classes or the masks; then every mask value must be in [0, K) or ignore."""
    ignore = options.ignore
    everything = set(np.concatenate(list(scan.values.values())).tolist())
    if 255 in everything and everything <= {0, 255} and options.ignore_label != 255:
        where = next(p.mask_where for p in pairs if 255 in scan.values[p.name])
        raise DataError(f"the masks hold only 0 and 255 (e.g. {where}): 255 is usually the foreground of a "
                        "binary mask saved as white, but it is also the default ignore label; map it with "
                        "--label-map 255:1 (or --binarize), or pass --ignore-label 255 if it marks pixels to ignore")
    explicit = options.num_classes or (len(options.classes) if options.classes else None) \
        or (len(INSTANCE_CLASSES) if options.instances else None)
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
                            "Use --instances to keep the objects apart, --binarize for foreground/background, "
                            "or confirm the class count with --num-classes K")
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
                 options: ImportOptions, previews: list, bar, plan: Optional[TilePlan] = None,
                 objects: Optional[list] = None) -> tuple[dict, float]:
    """Window, tile and write one split's LMDBs; returns (its dataset.yaml entry, mean stored intensity).
    With a `plan`, only its tiles are written, in its orientations and record order (the train split).
    The first pairs' windowed images and labels are appended to `previews`; with --instances, the whole
    windowed images and their object ids to `objects` (the val objects `fcnseg eval --instances` scores)."""
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
            mask = pair.mask()
            labels = _labels(pair, mask, options).astype(np.uint8)
            if objects is not None:
                objects.append((pair.name, gray, instance_ids(mask, pair.mask_where)[0]))
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
        "classes": list(options.classes) if options.classes else (list(INSTANCE_CLASSES) if options.instances
                                                                  else None),
        "input_channels": 1,
        "ignore_label": int(options.ignore),
        "window": window,
        "mean": round(float(mean), 4),
        "tile": options.tile,
        "tile_overlap": int(options.tile_overlap),
        "splits": splits,
        "source": {"images": str(images), "labels": str(labels),
                   "label_map": {int(k): int(v) for k, v in options.label_map.items()} or None,
                   "binarize": bool(options.binarize), "instances": bool(options.instances)},
        "fcnseg_version": __version__,
    }


def _save_preview(path: Path, previews: list, ignore_label: int) -> None:
    """Rows of (windowed image | image with labels overlaid), scaled down to _PREVIEW_SIDE pixels."""

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


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an old dataset at `out` is moved aside first, then removed."""
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


