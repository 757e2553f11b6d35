"""Instance masks (one id per object, 0 background) as `data import --instances` reads them, and the training
target derived from them.

`instance_ids(mask, where)` checks one mask and returns its objects as ids 1..N with what it assumed:
- a mask whose object ids are not integers, or negative, is refused (DataError naming the file);
- a mask holding a single non-zero value over several separate regions is a binary mask: each connected
  region is read as one object, and the note says so (touching objects stay one);
- an id in several separate pieces (8-connected) is refused: it names the id and a pixel of a piece, since
  a net cannot learn to join pieces it sees apart; relabel them, or import without --instances;
- ids are read per frame (and per slice of a volume): the same id in two frames (a track) is two objects.

`instance_target(ids, width)` is the 3-class target: 0 background, 1 object interior, 2 object boundary, the
boundary being the object pixels within `width` pixels (chessboard distance) of a pixel of another id or of
background, so it separates touching objects and outlines free-standing ones. Pixels at the image edge are
not boundary (an object cut by the edge continues beyond it). `fcnseg.objects` turns the net's
probabilities of these classes back into objects.
`instance_hint(mask)`: whether a mask looks like instance labels (for `--binarize`'s note).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_regions

from ..errors import DataError

INSTANCE_CLASSES = ("background", "interior", "boundary")
INTERIOR, BOUNDARY = 1, 2
# Measured on the HeLa masks (docs/data.md, "Objects"): 2 pixels keeps every nucleus's interior (smallest 208 px)
# and splits every touching pair; the objects rebuilt from the ideal target match the masks at AP@0.5 = 1.
DEFAULT_BOUNDARY_WIDTH = 2
# More distinct non-zero values than this in one mask, each one connected region, reads as instance labels.
INSTANCE_HINT_VALUES = 32


def instance_ids(mask: np.ndarray, where: str) -> tuple[np.ndarray, Optional[str]]:
    """(ids, note): the objects of one instance mask as uint32 ids (0 background, ids as given, or 1..N
    for a binary mask's regions), and the interpretation made (None when the mask was read as it is).
    Raises DataError naming `where` for a mask that cannot be instance labels (see the module docstring)."""
    if mask.dtype.kind not in "ui":
        if mask.dtype.kind == "b":
            mask = mask.astype(np.uint8)
        elif mask.dtype.kind == "f" and np.all(np.isfinite(mask)) and np.array_equal(mask, np.round(mask)):
            mask = mask.astype(np.int64)
        else:
            raise DataError(f"{where}: {mask.dtype} mask with non-integer values; instance masks hold one "
                            "integer id per object (0 background)")
    if mask.size and mask.min() < 0:
        raise DataError(f"{where}: negative mask value {int(mask.min())}; instance masks hold ids >= 0 "
                        "(0 background)")
    values = np.unique(mask)
    values = values[values != 0]
    if values.size == 0:
        return np.zeros(mask.shape, np.uint32), None
    regions, count = connected_regions(mask, background=0, connectivity=2, return_num=True)
    if values.size == 1 and count > 1:
        return regions.astype(np.uint32), (f"{where}: one value ({int(values[0])}) over {count} separate regions: "
                                           "read as a binary mask, each connected region one object "
                                           "(touching objects stay one)")
    if count > values.size:
        ids_of_regions = np.zeros(count + 1, np.int64)
        ids_of_regions[regions.ravel()] = mask.ravel()
        pieces = np.bincount(ids_of_regions[1:])
        split = np.flatnonzero(pieces > 1)
        first = int(split[0])
        rows, cols = np.nonzero(mask == first)
        raise DataError(f"{where}: object id {first} is in {int(pieces[first])} separate pieces (one at row "
                        f"{int(rows[-1])}, column {int(cols[-1])}; {split.size} id(s) so split); an instance "
                        "mask needs one connected region per id: give each piece its own id, or import "
                        "without --instances")
    return mask.astype(np.uint32, copy=False), None


def instance_target(ids: np.ndarray, width: int = DEFAULT_BOUNDARY_WIDTH) -> np.ndarray:
    """The uint8 3-class target of an id image: 0 background, INTERIOR, BOUNDARY (see the module docstring)."""
    size = 2 * width + 1
    high = ndimage.maximum_filter(ids, size=size, mode="nearest")
    low = ndimage.minimum_filter(ids, size=size, mode="nearest")
    target = np.where(ids > 0, BOUNDARY, 0).astype(np.uint8)
    target[(ids > 0) & (high == ids) & (low == ids)] = INTERIOR
    return target


def instance_hint(mask: np.ndarray) -> bool:
    """Whether `mask` looks like instance labels: integer, more than INSTANCE_HINT_VALUES distinct non-zero
    values."""
    if mask.dtype.kind not in "ui" or mask.size == 0:
        return False
    if mask.max() < 1 << 16:
        return int(np.count_nonzero(np.bincount(mask.ravel())[1:])) > INSTANCE_HINT_VALUES
    return np.unique(mask).size - 1 > INSTANCE_HINT_VALUES


@dataclass
class ObjectCounts:
    """Objects per split seen by the import: per frame counts and every object's area, and the notes made."""

    counts: dict[str, list[int]] = field(default_factory=dict)
    areas: dict[str, list[np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    border: dict[str, int] = field(default_factory=dict)  # objects touching the image border, per split
    frame_sizes: list[tuple[int, int]] = field(default_factory=list)

    def add(self, split: str, ids: np.ndarray, note: Optional[str]) -> None:
        areas = np.bincount(ids.ravel())[1:]
        areas = areas[areas > 0]
        self.counts.setdefault(split, []).append(int(areas.size))
        self.areas.setdefault(split, []).append(areas)
        edge = np.unique(np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]]))
        self.border[split] = self.border.get(split, 0) + int(np.count_nonzero(edge))
        self.frame_sizes.append(ids.shape)
        if note is not None:
            self.notes.append(note)

    def border_rule(self) -> dict:
        """Whether the train masks leave out objects cut by the image border (as the Cell Tracking Challenge's
        do): the fraction of train objects touching the border against the fraction expected of objects of the
        median area placed at random (centre within one radius of the border). Under half of it, inference
        drops border objects smaller than the median train object (`drop_below_px`); else 0 (keeps them)."""
        counts, areas = self.counts.get("train", []), self.areas.get("train", [])
        objects = sum(counts)
        if not objects:
            return {"observed": None, "expected": None, "drop_below_px": 0}
        median = float(np.median(np.concatenate(areas)))
        radius = np.sqrt(median / np.pi)
        expected = float(np.mean([1 - max(h - 2 * radius, 0) * max(w - 2 * radius, 0) / (h * w)
                                  for h, w in self.frame_sizes]))
        observed = self.border.get("train", 0) / objects
        return {"observed": round(observed, 4), "expected": round(expected, 4),
                "drop_below_px": int(median) if observed < expected / 2 else 0}

    def record(self, width: int) -> dict:
        """The `instances` entry of dataset.yaml."""
        splits = {}
        for split, counts in self.counts.items():
            areas = np.concatenate(self.areas[split]) if self.areas[split] else np.zeros(0, np.int64)
            splits[split] = {"objects": int(sum(counts)), "frames": len(counts),
                             "at_border": self.border.get(split, 0),
                             "per_frame": [int(min(counts)), int(max(counts))],
                             "area_px": ([int(areas.min()), int(np.median(areas)), int(areas.max())]
                                         if areas.size else None)}
        border = self.border_rule()
        notes = list(self.notes[:20])
        if border["drop_below_px"]:
            notes.append(f"{100 * border['observed']:.1f} % of the train objects touch the image border, where "
                         f"{100 * border['expected']:.1f} % would at random: the masks leave out objects cut by the "
                         f"border, so `infer --instances` drops border objects under {border['drop_below_px']} px "
                         "(the median object)")
        return {"interior": INTERIOR, "boundary": BOUNDARY, "boundary_width": int(width), "ids": "per frame",
                "splits": splits, "border": border, "notes": notes}
