"""Tiles: cutting an image and its labels into tiles (`cut_tiles`), and for sparse foreground which train tiles are
written and with which flips and rotations (`plan_train_tiles`, `TilePlan`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..geometry import tile_origins
from ..recipes import MIN_CLASS_FRACTION, sparse_classes
from .options import ImportOptions


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
