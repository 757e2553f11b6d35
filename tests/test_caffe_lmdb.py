"""`fcnseg data import` from Caffe LMDBs written the way hand-written Caffe FCN users write them (pycaffe's
own `caffe.io.array_to_datum`, one image per key, labels in a parallel LMDB), and caffe.io under numpy 2."""
import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

caffe = pytest.importorskip("caffe")

from fcnseg.cli import main  # noqa: E402
from fcnseg.dataset import read_dataset  # noqa: E402

RNG = np.random.default_rng(3)


# ---- helpers -------------------------------------------------------------------------------------------

def write_caffe_lmdb(path: Path, arrays, encoded: bool = False, keys=None) -> Path:
    """One Datum per key as users write them: caffe.io.array_to_datum of a (C, H, W) array (uint8 -> data,
    anything else -> float_data), or a PNG in Datum.data with encoded set (convert_imageset --encoded)."""
    import lmdb

    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for i, arr in enumerate(arrays):
            if encoded:
                chw = np.asarray(arr)
                buf = io.BytesIO()
                Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)).save(buf, "PNG")
                datum = caffe.proto.caffe_pb2.Datum(channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2],
                                                    data=buf.getvalue(), encoded=True)
            else:
                datum = caffe.io.array_to_datum(arr)
            key = keys[i] if keys is not None else b"%08d" % i
            txn.put(key, datum.SerializeToString())
    env.close()
    return path


def write_mean(path: Path, mean: np.ndarray) -> Path:
    """A mean .binaryproto as users write one: caffe.io.array_to_blobproto of a 1xCxHxW array."""
    path.write_bytes(caffe.io.array_to_blobproto(mean[None]).SerializeToString())
    return path


def samples(n, size=(24, 30), channels=1, dtype=np.uint8, seed=0):
    """(images, labels): bright squares (label 1) on a noisy dark background, images (C, H, W)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        label = np.zeros(size, np.uint8)
        y, x = rng.integers(2, size[0] - 10), rng.integers(2, size[1] - 10)
        label[y:y + 8, x:x + 8] = 1
        gray = np.clip(30 + 160 * label + rng.normal(0, 10, size), 0, 255)
        image = np.repeat(gray[None], channels, axis=0)
        images.append(image.astype(dtype))
        labels.append(label[None])
    return images, labels


def lmdb_set(root: Path, n_train=4, n_val=2, **kw):
    """train/val image and label LMDBs in the seed's layout; returns their paths and arrays."""
    root.mkdir(parents=True, exist_ok=True)
    encoded = kw.pop("encoded", False)
    ti, tl = samples(n_train, seed=1, **kw)
    vi, vl = samples(n_val, seed=2, **kw)
    paths = {name: write_caffe_lmdb(root / f"{name}_lmdb", arrays, encoded)
             for name, arrays in (("train", ti), ("train_label", tl), ("val", vi), ("val_label", vl))}
    return paths, (ti, tl, vi, vl)


def import_args(paths, out, *extra):
    return ["data", "import", "--images", paths["train"], "--labels", paths["train_label"],
            "--val-images", paths["val"], "--val-labels", paths["val_label"], "-o", out, *extra]


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def stored(path: Path) -> list[np.ndarray]:
    """The (H, W) uint8 records fcnseg wrote, in key order."""
    import lmdb

    out = []
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        for _, value in txn.cursor():
            out.append(caffe.io.datum_to_array(caffe.io.caffe_pb2.Datum.FromString(value))[0])
    return out


# ---- caffe.io itself under numpy 2 (scripts/caffe_patches/0003-caffe-io-numpy2.patch) --------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_caffe_io_datum_round_trip(dtype):
    arr = (RNG.random((3, 5, 7)) * 255).astype(dtype)
    datum = caffe.io.array_to_datum(arr, label=4)
    back = caffe.io.datum_to_array(caffe.io.caffe_pb2.Datum.FromString(datum.SerializeToString()))
    assert back.shape == (3, 5, 7) and datum.label == 4
    if dtype == np.uint8:
        assert back.dtype == np.uint8 and np.array_equal(back, arr) and len(datum.data) == arr.size
        back[0, 0, 0] = 1  # writable, as fromstring's copy was
    else:
        assert len(datum.data) == 0 and np.allclose(back, arr, rtol=1e-6)


def test_caffe_io_blobproto_round_trip():
    mean = RNG.random((1, 3, 4, 5))
    assert np.allclose(caffe.io.blobproto_to_array(caffe.io.array_to_blobproto(mean)), mean)
    vec = caffe.io.arraylist_to_blobprotovector_str([mean, 2 * mean])
    assert [a.shape for a in caffe.io.blobprotovector_str_to_arraylist(vec)] == [(1, 3, 4, 5)] * 2


def test_caffe_io_load_image_gray(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray((RNG.random((6, 9)) * 255).astype(np.uint8)).save(path)
    assert caffe.io.load_image(str(path), color=False).shape == (6, 9, 1)  # skimage's as_gray keyword
    assert caffe.io.load_image(str(path)).shape == (6, 9, 3)


# ---- data import from LMDBs ---------------------------------------------------------------------------

@pytest.mark.parametrize("encoded", [False, True])
def test_import_lmdb_pairs(capsys, tmp_path, encoded):
    paths, (ti, tl, vi, vl) = lmdb_set(tmp_path / "src", encoded=encoded)
    rc, out, err = run(capsys, *import_args(paths, tmp_path / "ds"))
    assert rc == 0, err
    info = read_dataset(tmp_path / "ds")
    assert info.num_classes == 2 and info.window is None  # uint8 Datums: stored unchanged
    assert info.samples("train") == 4 and info.samples("val") == 2
    assert info.split("train").sources[0] == "train_lmdb#00000000"
    assert [np.array_equal(a, b[0]) for a, b in zip(stored(tmp_path / "ds/train_images_lmdb"), ti)] == [True] * 4
    assert [np.array_equal(a, b[0]) for a, b in zip(stored(tmp_path / "ds/val_labels_lmdb"), vl)] == [True] * 2
    assert info.mean == pytest.approx(np.mean([t.astype(float).mean() for t in ti]), abs=0.01)


def test_import_lmdb_float_datums_are_windowed(capsys, tmp_path):
    paths, _ = lmdb_set(tmp_path / "src", dtype=np.float32)  # array_to_datum: float_data
    rc, _, err = run(capsys, *import_args(paths, tmp_path / "ds"))
    assert rc == 0, err
    window = read_dataset(tmp_path / "ds").window
    assert window["method"] == "percentile" and 0 < window["low"] < window["high"] < 256


def test_import_lmdb_mismatched_key(capsys, tmp_path):
    paths, (ti, tl, _, _) = lmdb_set(tmp_path / "src")
    bad = write_caffe_lmdb(tmp_path / "src/shifted_label_lmdb", tl,
                           keys=[b"%08d" % i for i in range(len(tl) - 1)] + [b"00000099"])
    paths["train_label"] = bad
    rc, _, err = run(capsys, *import_args(paths, tmp_path / "ds"))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "train_lmdb key '00000003': no record with this key in" in err and "shifted_label_lmdb" in err
    assert not (tmp_path / "ds").exists()


def test_import_lmdb_three_channels_needs_to_gray(capsys, tmp_path):
    paths, (ti, *_rest) = lmdb_set(tmp_path / "src", channels=3)
    rc, _, err = run(capsys, *import_args(paths, tmp_path / "ds"))
    assert rc == 2 and "--to-gray" in err and "train_lmdb key '00000000'" in err
    assert "R, G and B are identical" in err
    rc, _, err = run(capsys, *import_args(paths, tmp_path / "ds", "--to-gray"))
    assert rc == 0, err
    assert np.array_equal(stored(tmp_path / "ds/train_images_lmdb")[0], ti[0][0])  # equal channels: luma = gray


def test_import_lmdb_bgr_luma(tmp_path):
    """Raw 3-channel Datums are BGR (Caffe's order): luma weighs the last channel as red."""
    from fcnseg.data.caffe_lmdb import datum_plane

    bgr = np.zeros((3, 2, 2), np.uint8)
    bgr[2] = 200  # red in BGR
    plane = datum_plane(caffe.io.array_to_datum(bgr).SerializeToString(), "x", "image", to_gray=True)
    assert plane[0, 0] == round(0.299 * 200)


def test_import_lmdb_0_255_labels(capsys, tmp_path):
    paths, (ti, tl, vi, vl) = lmdb_set(tmp_path / "src")
    for name, labels in (("train_label", tl), ("val_label", vl)):
        paths[name] = write_caffe_lmdb(tmp_path / f"src/{name}_255_lmdb", [lab * 255 for lab in labels])
    rc, _, err = run(capsys, *import_args(paths, tmp_path / "ds"))
    assert rc == 2 and "hold only 0 and 255" in err and "--label-map 255:1" in err
    rc, _, err = run(capsys, *import_args(paths, tmp_path / "ds", "--binarize"))
    assert rc == 0, err
    assert set(np.unique(np.concatenate([a.ravel() for a in stored(tmp_path / "ds/train_labels_lmdb")]))) == {0, 1}


def test_import_lmdb_label_range_checked(capsys, tmp_path):
    paths, (_, tl, _, _) = lmdb_set(tmp_path / "src")
    paths["train_label"] = write_caffe_lmdb(tmp_path / "src/big_lmdb", [lab * 3 for lab in tl])
    rc, _, err = run(capsys, *import_args(paths, tmp_path / "ds", "--num-classes", "2"))
    assert rc == 2 and "label values 3 are outside [0, 2)" in err and "big_lmdb key '00000000'" in err


def test_import_lmdb_mean_file(capsys, tmp_path):
    paths, (ti, *_rest) = lmdb_set(tmp_path / "src")
    mean = write_mean(tmp_path / "mean.binaryproto", np.full((1, 24, 30), 77.5))
    rc, out, err = run(capsys, *import_args(paths, tmp_path / "ds", "--mean-file", mean))
    assert rc == 0, err
    assert read_dataset(tmp_path / "ds").mean == pytest.approx(77.5)
    meta = yaml.safe_load((tmp_path / "ds/dataset.yaml").read_text())
    assert meta["source"]["mean_file"]["channels"] == 1 and meta["source"]["mean_file"]["measured_train_mean"] > 0
    assert "averages 77.5" in out
    # data.mean: auto (no weights) takes it: the net subtracts the user's mean
    from fcnseg.config import Config
    from fcnseg.resolve import resolve
    cfg = Config()
    cfg.data.root = str(tmp_path / "ds")
    assert resolve(cfg).config.data.mean == pytest.approx(77.5)


def test_import_lmdb_mean_file_wrong_channels(capsys, tmp_path):
    paths, _ = lmdb_set(tmp_path / "src")
    mean = write_mean(tmp_path / "rgb_mean.binaryproto", np.full((3, 24, 30), 100.0))
    rc, _, err = run(capsys, *import_args(paths, tmp_path / "ds", "--mean-file", mean))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "rgb_mean.binaryproto: 3 channel(s), but the Datums of" in err and "have 1" in err
    assert not (tmp_path / "ds").exists()


def test_import_lmdb_single_pair_random_split(capsys, tmp_path):
    paths, _ = lmdb_set(tmp_path / "src", n_train=5)
    rc, _, err = run(capsys, "data", "import", "--images", paths["train"], "--labels", paths["train_label"],
                     "--val", "00000002", "-o", tmp_path / "ds")
    assert rc == 0, err
    assert read_dataset(tmp_path / "ds").split("val").sources == ("train_lmdb#00000002",)


def test_import_lmdb_with_folder_refused(capsys, tmp_path):
    paths, _ = lmdb_set(tmp_path / "src")
    (tmp_path / "masks").mkdir()
    rc, _, err = run(capsys, "data", "import", "--images", paths["train"], "--labels", tmp_path / "masks",
                     "-o", tmp_path / "ds")
    assert rc == 2 and "not an LMDB folder" in err


def test_val_images_need_val_labels(capsys, tmp_path):
    paths, _ = lmdb_set(tmp_path / "src")
    rc, _, err = run(capsys, "data", "import", "--images", paths["train"], "--labels", paths["train_label"],
                     "--val-images", paths["val"], "-o", tmp_path / "ds")
    assert rc == 2 and "--val-images and --val-labels go together" in err


def test_val_images_for_folders_keep_shared_names_apart(capsys, tmp_path):
    """--val-images/--val-labels take any source kind; a.png in both splits stays two sources."""
    images, labels = samples(4, seed=5)
    for split, index in (("train", (0, 1)), ("val", (2, 3))):
        for kind, arrays in (("img", images), ("lab", labels)):
            (tmp_path / split / kind).mkdir(parents=True)
            for name, i in zip(("a", "b"), index):
                Image.fromarray(arrays[i][0]).save(tmp_path / split / kind / f"{name}.png")
    rc, _, err = run(capsys, "data", "import", "--images", tmp_path / "train/img", "--labels", tmp_path / "train/lab",
                     "--val-images", tmp_path / "val/img", "--val-labels", tmp_path / "val/lab", "-o", tmp_path / "ds")
    assert rc == 0, err
    info = read_dataset(tmp_path / "ds")
    assert info.split("train").sources == ("a.png", "b.png") and info.split("val").sources == ("val/a.png", "val/b.png")
    assert np.array_equal(stored(tmp_path / "ds/val_images_lmdb")[0], images[2][0])
