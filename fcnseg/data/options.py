"""The options of `fcnseg data import` (`ImportOptions`), the label mapping they ask for (`map_labels`), and the
thresholds its defaults are decided by."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import DataError
from ..images import DEFAULT_PERCENTILES
from ..volumes import VolumeOptions
from .instances import DEFAULT_BOUNDARY_WIDTH

DEFAULT_IGNORE_LABEL = 255
DEFAULT_VAL_FRACTION = 0.2


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
    val_images: Optional[str] = None  # a val split given as its own sources (caffe_lmdb.separate_val)
    val_labels: Optional[str] = None
    mean_file: Optional[str] = None  # a Caffe mean .binaryproto for LMDB sources (caffe_lmdb.read_mean_file)
    volume: VolumeOptions = VolumeOptions()  # DICOM / NIfTI / HDF5 / Zarr reading (fcnseg.volumes)
    instances: bool = False  # masks are instance ids: store the 3-class target of `fcnseg.data.instances`
    boundary_width: int = DEFAULT_BOUNDARY_WIDTH  # with instances: the boundary band's width in pixels

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
        if (self.val_images is None) != (self.val_labels is None):
            raise DataError("--val-images and --val-labels go together: the val images and their labels")
        if self.instances:
            given = [name for name, value in (("--binarize", self.binarize), ("--label-map", self.label_map),
                                              ("--num-classes", self.num_classes), ("--classes", self.classes))
                     if value]
            if given:
                raise DataError(f"--instances derives its own 3 classes (background, interior, boundary) from "
                                f"the object ids; drop {', '.join(given)}")
            if not 1 <= self.boundary_width <= 16:
                raise DataError(f"--boundary-width {self.boundary_width}: need 1..16 pixels")
        if self.val_images is not None and (self.val is not None or self.val_fraction is not None):
            raise DataError("--val-images/--val-labels give the val split; drop --val and --val-fraction")

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
