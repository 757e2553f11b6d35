"""Class probabilities into labelled objects: the stage between `predict` (the net on one image) and the
commands that write or score objects (`infer --instances`, `eval --instances`).

A net trained on data imported with `--instances` gives three classes (`fcnseg.data.instances`): background,
object interior, object boundary. `label_objects(probs, roles)` splits them into objects:

1. foreground: the pixels whose likeliest class is not background (the pixels `infer` labels interior or
   boundary);
2. seeds: the 4-connected regions of P(interior) > 0.5 of at least `min_area` pixels, each one object;
3. a seeded watershed (scikit-image) on -P(interior), inside the foreground, grows each seed out over its
   boundary band; a foreground region that holds no seed becomes one object of its own;
4. objects under `min_area` pixels are dropped, and objects touching the image border under `border_min_area`
   pixels when the training masks leave out objects cut by the border (`data.instances.ObjectCounts.border_rule`);
   ids are 1..N in raster order of each object's first pixel.

It runs on a whole image's probabilities: a tiled or streamed image is stitched first (`predict.tile_bands`),
so an object cut by a tile edge comes out whole and the objects do not depend on who ran the tiles. The same
probabilities give the same ids, bit for bit.

`object_table(ids, image, probs, roles)` measures them (the columns of OBJECT_COLUMNS) and
`write_objects(...)` writes <stem>_instances.tif, <stem>_objects.csv and <stem>_instances_overlay.png.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import tifffile
from PIL import Image

from .errors import RunError
from .files import write_atomic, write_text_atomic

INSTANCES_SUFFIX, OBJECTS_SUFFIX, INSTANCES_OVERLAY_SUFFIX = "_instances.tif", "_objects.csv", "_instances_overlay.png"
OBJECT_COLUMNS = ("id", "area_px", "centroid_row", "centroid_col", "min_row", "min_col", "max_row", "max_col",
                  "mean_intensity", "mean_probability")
DEFAULT_MIN_AREA = 16  # pixels; a dataset's recorded smallest object sets it (`ObjectRoles.from_facts`)
OUTLINE_COLOURS = np.array([[255, 64, 64], [64, 255, 64], [64, 160, 255], [255, 220, 0], [255, 0, 255],
                            [0, 255, 255]], np.uint8)


@dataclass(frozen=True)
class ObjectRoles:
    """Which class ids are the object interior and boundary (background is 0), and the smallest object kept."""

    interior: int
    boundary: int
    min_area: int = DEFAULT_MIN_AREA
    border_min_area: int = 0  # objects touching the image border under this many pixels are dropped

    @classmethod
    def from_facts(cls, objects: Optional[dict], num_classes: int, where: str) -> "ObjectRoles":
        """The roles recorded in a run's inference facts (`objects`, from dataset.yaml `instances`).
        Raises RunError naming `where` when the net was not trained for objects."""
        if not objects:
            raise RunError(f"{where}: this net was not trained for objects (no class roles); import the data "
                           "with `fcnseg data import --instances` and train on it, or leave --instances out")
        roles = cls(int(objects["interior"]), int(objects["boundary"]),
                    int(objects.get("min_area", DEFAULT_MIN_AREA)), int(objects.get("border_min_area", 0)))
        if not (0 < roles.interior < num_classes and 0 < roles.boundary < num_classes):
            raise RunError(f"{where}: object classes {roles.interior}, {roles.boundary} outside the net's "
                           f"{num_classes} classes")
        return roles


def label_objects(probs: np.ndarray, roles: ObjectRoles) -> np.ndarray:
    """Object ids (uint32, 0 background, 1..N) from K x H x W class probabilities (see the module docstring)."""
    from skimage.measure import label as connected_regions  # noqa: PLC0415 - heavy: only --instances needs scipy/scikit-image's labelling (keeps infer's import small)
    from skimage.segmentation import watershed  # noqa: PLC0415 - heavy: only --instances needs scipy/scikit-image's labelling (keeps infer's import small)
    interior = probs[roles.interior]
    foreground = probs.argmax(axis=0) != 0
    seeds = connected_regions(foreground & (interior > 0.5), connectivity=1)
    seeds[np.bincount(seeds.ravel())[seeds] < roles.min_area] = 0  # specks: their pixels go to a neighbour
    ids = watershed(-interior, markers=seeds, mask=foreground) if seeds.any() else np.zeros(interior.shape, np.int64)
    orphans = connected_regions(foreground & (ids == 0), connectivity=1)
    if orphans.any():
        ids = np.where(orphans > 0, orphans + ids.max(), ids)
    if roles.border_min_area:
        edge = np.unique(np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]]))
        small = edge[(edge > 0) & (np.bincount(ids.ravel())[edge] < roles.border_min_area)]
        ids = np.where(np.isin(ids, small), 0, ids)
    return _renumber(ids, roles.min_area)


def _renumber(ids: np.ndarray, min_area: int) -> np.ndarray:
    """Drop objects under `min_area` pixels; ids 1..N in raster order of each object's first pixel."""
    flat = ids.ravel()
    values, first = np.unique(flat, return_index=True)
    areas = np.bincount(flat)
    kept = (values > 0) & (areas[values] >= min_area)
    order = values[kept][np.argsort(first[kept], kind="stable")]
    mapping = np.zeros(areas.size, np.uint32)
    mapping[order] = np.arange(1, order.size + 1, dtype=np.uint32)
    return mapping[ids]


def object_table(ids: np.ndarray, image: np.ndarray, probs: np.ndarray) -> list[tuple]:
    """One row per object (OBJECT_COLUMNS) in the image's pixel coordinates: area, centroid, the inclusive
    bounding box, the mean of `image` (the input's own values) and the mean foreground probability
    (1 - P(background)) over the object."""
    n = int(ids.max(initial=0))
    if n == 0:
        return []
    flat = ids.ravel()
    rows, cols = np.indices(ids.shape)
    area = np.bincount(flat, minlength=n + 1)[1:]
    mean = lambda values: np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=n + 1)[1:] / area  # noqa: E731
    row_c, col_c = mean(rows), mean(cols)
    intensity, probability = mean(np.asarray(image)), mean(1.0 - probs[0])
    from scipy import ndimage  # noqa: PLC0415 - heavy: only --instances needs scipy/scikit-image's labelling (keeps infer's import small)
    boxes = ndimage.find_objects(ids)
    return [(i + 1, int(area[i]), round(float(row_c[i]), 2), round(float(col_c[i]), 2), boxes[i][0].start,
             boxes[i][1].start, boxes[i][0].stop - 1, boxes[i][1].stop - 1, round(float(intensity[i]), 4),
             round(float(probability[i]), 4)) for i in range(n)]


def id_dtype(count: int) -> type:
    """uint16 for up to 65,535 objects, uint32 above."""
    return np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32


def outline_overlay(gray: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """RGB picture: the windowed image in gray with each object's outline in one of OUTLINE_COLOURS."""
    from skimage.segmentation import find_boundaries  # noqa: PLC0415 - heavy: only --instances needs scipy/scikit-image's labelling (keeps infer's import small)
    picture = np.repeat(np.asarray(gray, np.uint8)[..., None], 3, axis=2)
    edge = find_boundaries(ids, mode="inner")
    picture[edge] = OUTLINE_COLOURS[(ids[edge].astype(np.int64) - 1) % len(OUTLINE_COLOURS)]
    return picture


def write_objects(out_dir: Path, stem: str, image: np.ndarray, gray: np.ndarray, ids: np.ndarray,
                  probs: np.ndarray) -> list[Path]:
    """Write <stem>_instances.tif (ids, uint16 or uint32 by `id_dtype`), <stem>_objects.csv (`object_table`)
    and <stem>_instances_overlay.png (`outline_overlay`) into `out_dir`, each atomically. Returns the paths."""
    count = int(ids.max(initial=0))
    paths = [out_dir / (stem + suffix) for suffix in (INSTANCES_SUFFIX, OBJECTS_SUFFIX, INSTANCES_OVERLAY_SUFFIX)]
    write_atomic(paths[0], lambda p: tifffile.imwrite(p, ids.astype(id_dtype(count)), compression="zlib"))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(OBJECT_COLUMNS)
    writer.writerows(object_table(ids, image, probs))
    write_text_atomic(paths[1], text.getvalue())
    picture = outline_overlay(gray, ids)
    write_atomic(paths[2], lambda p: Image.fromarray(picture).save(p, format="PNG"))
    return paths
