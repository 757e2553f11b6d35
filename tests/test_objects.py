"""fcnseg.objects: class probabilities into objects (seeded watershed), their table and their files."""
import csv

import numpy as np
import pytest
import tifffile
from PIL import Image

from fcnseg.data.instances import instance_target
from fcnseg.errors import RunError
from fcnseg.object_metrics import score_objects
from fcnseg.objects import ObjectRoles, id_dtype, label_objects, object_table, write_objects

ROLES = ObjectRoles(interior=1, boundary=2, min_area=10)


def discs(shape, centres, radius) -> np.ndarray:
    """Object ids: discs of `radius` at `centres`, later ones on top where they overlap (so they touch)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    ids = np.zeros(shape, np.uint32)
    for i, (cy, cx) in enumerate(centres):
        ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = i + 1
    return ids


def soft_probabilities(ids: np.ndarray, width: int = 2, sharp: float = 0.9) -> np.ndarray:
    """A net's probabilities for the target of `ids`: the right class at `sharp`, the others share the rest."""
    target = instance_target(ids, width)
    probs = np.full((3,) + ids.shape, (1 - sharp) / 2, np.float32)
    for k in range(3):
        probs[k][target == k] = sharp
    return probs


def test_touching_objects_come_apart_across_a_tile_and_a_block_border():
    # Four discs overlapping pairwise, centred on both sides of row 64 and column 64 (a tile edge and a Dask
    # block edge of a 64-pixel grid): touching objects cut by the grid, labelled on the stitched map.
    true = discs((128, 128), [(54, 54), (54, 74), (74, 54), (74, 74)], 11)
    assert len(np.unique(true)) == 5
    ids = label_objects(soft_probabilities(true), ROLES)
    assert ids.dtype == np.uint32 and ids.max() == 4
    r = score_objects(true, ids)
    assert r["ap75"] == 1.0 and r["seg"] > 0.95
    assert set(np.unique(ids[true == 0])) == {0}


def test_ids_are_one_to_n_in_raster_order_and_small_objects_dropped():
    true = discs((60, 60), [(40, 40), (10, 10), (45, 10)], 6)
    true[0:2, 55:58] = 9  # 6 px: under min_area
    ids = label_objects(soft_probabilities(true, width=1), ROLES)
    assert ids.max() == 3
    assert ids[10, 10] == 1 and ids[40, 40] == 2 and ids[45, 10] == 3
    assert ids[0:2, 55:58].max() == 0


def test_a_foreground_region_without_a_seed_is_one_object():
    true = discs((40, 40), [(20, 20)], 5)
    probs = soft_probabilities(true)
    probs[1][true > 0], probs[2][true > 0] = 0.2, 0.75  # all boundary, no interior above 0.5
    ids = label_objects(probs, ROLES)
    assert ids.max() == 1 and np.array_equal(ids > 0, true > 0)


def test_small_objects_cut_by_the_border_are_dropped_when_the_masks_leave_them_out():
    true = discs((60, 60), [(30, 30), (2, 30), (30, 60)], 8)  # whole; cut by the top (~120 px); half (~100 px)
    probs = soft_probabilities(true, width=1)
    assert label_objects(probs, ROLES).max() == 3
    kept = label_objects(probs, ObjectRoles(1, 2, 10, border_min_area=150))
    assert kept.max() == 1 and kept[30, 30] == 1 and kept[2, 30] == 0 and kept[30, 58] == 0


def test_object_table_measures_in_input_coordinates():
    ids = np.zeros((20, 30), np.uint32)
    ids[2:5, 10:14] = 1  # 12 px, centroid (3, 11.5), box rows 2-4, cols 10-13
    ids[10:12, 0:2] = 2
    image = np.arange(600, dtype=np.uint16).reshape(20, 30)
    probs = np.zeros((3, 20, 30), np.float32)
    probs[0] = 0.25
    rows = object_table(ids, image, probs)
    assert rows[0] == (1, 12, 3.0, 11.5, 2, 10, 4, 13, round(float(image[2:5, 10:14].mean()), 4), 0.75)
    assert rows[1][:8] == (2, 4, 10.5, 0.5, 10, 0, 11, 1)


def test_write_objects_files(tmp_path):
    true = discs((50, 60), [(20, 20), (20, 40)], 9)
    probs = soft_probabilities(true)
    ids = label_objects(probs, ROLES)
    image = np.full(true.shape, 7, np.uint16)
    paths = write_objects(tmp_path, "frame", image, np.zeros(true.shape, np.uint8), ids, probs)
    assert [p.name for p in paths] == ["frame_instances.tif", "frame_objects.csv", "frame_instances_overlay.png"]
    written = tifffile.imread(paths[0])
    assert written.dtype == np.uint16 and np.array_equal(written, ids)
    with open(paths[1]) as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["id"]) for r in table] == [1, 2]
    assert list(table[0]) == ["id", "area_px", "centroid_row", "centroid_col", "min_row", "min_col", "max_row",
                              "max_col", "mean_intensity", "mean_probability"]
    assert float(table[0]["mean_intensity"]) == 7.0
    with Image.open(paths[2]) as picture:
        rgb = np.asarray(picture.convert("RGB"))
    assert rgb.shape == (50, 60, 3) and rgb[20, 20].tolist() == [0, 0, 0] and rgb[20, 11].any()
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_id_type_widens_above_65535_objects():
    assert id_dtype(65535) is np.uint16 and id_dtype(65536) is np.uint32


def test_roles_of_a_net_not_trained_for_objects_are_refused():
    with pytest.raises(RunError, match="not trained for objects"):
        ObjectRoles.from_facts(None, 2, "runs/x")
    with pytest.raises(RunError, match="outside"):
        ObjectRoles.from_facts({"interior": 1, "boundary": 2}, 2, "runs/x")
    assert ObjectRoles.from_facts({"interior": 1, "boundary": 2, "min_area": 30}, 3, "r") == ObjectRoles(1, 2, 30)
