"""The sources of an import: two folders paired by file stem, or two stacks (multi-page TIFF / 3-D .npy) paired
by frame index (`list_pairs`); the train/val split (`split_pairs`); label values mapped to class ids (`map_labels`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from ..images import IMAGE_SUFFIXES, read_image, read_mask, read_time_stack
from .options import DEFAULT_VAL_FRACTION, ImportOptions


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


