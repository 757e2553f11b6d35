"""fcnseg.data.instances and `fcnseg data import --instances`: object ids kept, the 3-class target, the checks."""
import numpy as np
import pytest
import tifffile
import yaml

from fcnseg.cli import main
from fcnseg.data.instances import BOUNDARY, INTERIOR, instance_ids, instance_target
from fcnseg.dataset import read_dataset, read_val_objects
from fcnseg.errors import DataError

pytest.importorskip("caffe")  # the import writes Caffe Datums


def touching_masks(frames: int = 4, size: int = 48) -> np.ndarray:
    """Per frame two touching rectangles (ids 10 and 7: the ids of a tracking mask) and one apart (id 300)."""
    masks = np.zeros((frames, size, size), np.uint16)
    for f in range(frames):
        masks[f, 8:20, 5 + f:17 + f] = 10
        masks[f, 8:20, 17 + f:29 + f] = 7
        masks[f, 30:40, 30:42] = 300
    return masks


def images_for(masks: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (1000 + 2000 * (masks > 0) + rng.normal(0, 50, masks.shape)).astype(np.uint16)


def write_stacks(tmp_path, masks):
    tifffile.imwrite(tmp_path / "img.tif", images_for(masks), photometric="minisblack")
    tifffile.imwrite(tmp_path / "mask.tif", masks, photometric="minisblack")
    return tmp_path / "img.tif", tmp_path / "mask.tif"


def test_target_separates_touching_objects_with_a_boundary_band():
    ids = touching_masks(1)[0]
    target = instance_target(ids.astype(np.uint32), width=2)
    assert set(np.unique(target)) == {0, INTERIOR, BOUNDARY}
    assert (target[8:20, 15:19] == BOUNDARY).all()  # 2 px each side of where 10 meets 7
    assert (target[10:18, 7:15] == INTERIOR).all()
    assert (target[30:40, 30:32] == BOUNDARY).all() and target[35, 36] == INTERIOR
    edge = np.zeros((10, 10), np.uint32)
    edge[:, :5] = 1  # an object cut by the image edge has no boundary there
    assert instance_target(edge, 1)[5, 0] == INTERIOR and instance_target(edge, 1)[5, 4] == BOUNDARY


def test_instance_ids_checks_and_interpretations():
    ids, note = instance_ids(touching_masks(1)[0], "m.tif")
    assert note is None and set(np.unique(ids)) == {0, 7, 10, 300}
    binary = (touching_masks(1)[0] > 0).astype(np.uint8) * 255
    regions, note = instance_ids(binary, "b.tif")
    assert regions.max() == 2 and "read as a binary mask" in note and "b.tif" in note
    split = touching_masks(1)[0]
    split[44:46, 0:3] = 300
    with pytest.raises(DataError, match=r"s.tif: object id 300 is in 2 separate pieces .*row 45, column 2"):
        instance_ids(split, "s.tif")
    with pytest.raises(DataError, match="non-integer"):
        instance_ids(np.full((4, 4), 0.5, np.float32), "f.tif")


def test_import_keeps_objects_and_records_them(tmp_path, capsys):
    images, masks = write_stacks(tmp_path, touching_masks())
    out = tmp_path / "ds"
    code = main(["data", "import", "--images", images, "--labels", masks, "--instances", "--val", "3", "-o", out])
    printed = capsys.readouterr().out
    assert code == 0
    assert "3 classes (background, interior, boundary)" in printed
    assert "objects (--instances): train 9 in 3 frame(s) (3-3 a frame" in printed
    assert "ids read per frame" in printed
    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    assert meta["instances"]["boundary_width"] == 2
    assert meta["instances"]["splits"]["val"] == {"objects": 3, "frames": 1, "at_border": 0, "per_frame": [3, 3],
                                                  "area_px": [120, 144, 144]}
    # No train object touches the border, where 48 % would at random: border objects are dropped at inference.
    assert meta["instances"]["border"] == {"observed": 0.0, "expected": 0.4846, "drop_below_px": 144}
    assert read_dataset(out).object_roles == {"interior": 1, "boundary": 2}
    [(name, gray, ids)] = read_val_objects(out)
    assert name == "img.tif#3" and gray.dtype == np.uint8 and ids.shape == (48, 48)
    assert np.array_equal(ids, touching_masks()[3])


def test_bad_instance_masks_exit_2_with_one_line(tmp_path, capsys):
    masks = touching_masks()
    masks[2, 44:46, 0:3] = 7
    images, labels = write_stacks(tmp_path, masks)
    code = main(["data", "import", "--images", images, "--labels", labels, "--instances", "-o", tmp_path / "ds"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2 and len(err) == 1
    assert "mask.tif frame 2: object id 7 is in 2 separate pieces" in err[0]
    assert not (tmp_path / "ds").exists()
    code = main(["data", "import", "--images", images, "--labels", labels, "--instances", "--binarize",
                 "-o", tmp_path / "ds"])
    assert code == 2 and "drop --binarize" in capsys.readouterr().err


def test_binary_masks_are_read_as_regions_and_said_so(tmp_path, capsys):
    binary = (touching_masks() > 0).astype(np.uint8)
    images, labels = write_stacks(tmp_path, binary)
    code = main(["data", "import", "--images", images, "--labels", labels, "--instances", "-o", tmp_path / "ds"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "note: " in printed and "read as a binary mask, each connected region one object" in printed


def test_binarize_says_when_masks_look_like_instances(tmp_path, capsys):
    masks = np.zeros((3, 64, 64), np.uint16)
    for f in range(3):
        for i in range(40):
            masks[f, 8 * (i // 8) + 1:8 * (i // 8) + 6, 8 * (i % 8) + 1:8 * (i % 8) + 6] = i + 1 + 50 * f
    images, labels = write_stacks(tmp_path, masks)
    code = main(["data", "import", "--images", images, "--labels", labels, "--binarize", "-o", tmp_path / "ds"])
    assert code == 0
    assert "looks like instance labels" in capsys.readouterr().out
