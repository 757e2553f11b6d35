"""Caffe LMDBs as sources of `fcnseg data import`: the LMDBs a hand-written Caffe FCN already trains on.

A Caffe LMDB is a folder holding `data.mdb` whose records are serialized Datums (how `caffe.io.array_to_datum`
or `convert_imageset` write them): raw uint8 bytes in `data`, floats in `float_data`, or an encoded PNG/JPEG
in `data` (`encoded: true`, decoded here with Pillow). Images and labels live in two LMDBs that Caffe reads in
step, so records are paired by key. `lmdb_pairs(images, labels, to_gray)` returns the same `data.Pair`s folder
and stack imports make, each reading its record on demand, so the import's checking and writing passes (and
every check they make) apply unchanged and an LMDB of many GB is streamed record by record.

Channels follow Caffe's convention: raw 3-channel Datums are BGR (what `convert_imageset` stores), encoded
ones are decoded as the image file's RGB; either way `--to-gray` takes BT.601 luma, and without it colour
is refused as for image files. Label Datums must hold one channel of integer class ids.

`read_mean_file(path, images, to_gray)` reads a Caffe mean `.binaryproto` (what `compute_image_mean`
writes, and `transform_param { mean_file }` names), checks its channel count against the image Datums, and
gives the one value per pixel fcnseg subtracts; `record_mean` writes it into dataset.yaml as the dataset's
mean, so `data.mean: auto` keeps it. `separate_val(train, val)` takes a validation split given as its own
pair of sources (`--val-images/--val-labels`).
"""
from __future__ import annotations

import io
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import lmdb
import numpy as np
from google.protobuf.message import DecodeError
from PIL import Image, UnidentifiedImageError

from .. import verify
from ..caffe_env import caffe_pb2
from ..errors import DataError
from ..images import LUMA, check_values, to_single_channel
from .sources import Pair

LMDB_FILE = "data.mdb"


def is_caffe_lmdb(path: str | Path) -> bool:
    """Whether `path` is an LMDB folder (it holds data.mdb)."""
    return (Path(path) / LMDB_FILE).is_file()


class LmdbSource:
    """One LMDB opened read-only for the whole import: its keys in Caffe's read order, records by key.
    `LmdbSource.open` shares the one open environment per folder (py-lmdb refuses a second in a process)."""

    _open: "weakref.WeakValueDictionary[str, LmdbSource]" = weakref.WeakValueDictionary()

    @classmethod
    def open(cls, path: str | Path, option: str) -> "LmdbSource":
        key = str(Path(path).resolve())
        source = cls._open.get(key)
        if source is None:
            source = cls(path, option)
            cls._open[key] = source
        return source

    def __init__(self, path: str | Path, option: str):

        self.path, self.option = Path(path), option
        verify.check_readable(self.path, option)  # a damaged page can crash the LMDB library: read it in a child
        try:
            self._env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, subdir=True,
                                  max_readers=8)
        except lmdb.Error as exc:
            raise DataError(f"{option} {self.path}: not a readable LMDB ({exc.__class__.__name__}: {exc})") from None

    def keys(self) -> list[bytes]:
        """Every key, in key order (the order Caffe's Data layer reads them); values are not read."""
        try:
            with self._env.begin() as txn:
                keys = list(txn.cursor().iternext(keys=True, values=False))
        except lmdb.Error as exc:
            raise DataError(f"{self.option} {self.path}: damaged ({exc}); copy the LMDB again") from None
        if not keys:
            raise DataError(f"{self.option} {self.path}: the LMDB holds no records")
        return keys

    def get(self, key: bytes) -> bytes:
        try:
            with self._env.begin() as txn:
                raw = txn.get(key)
        except lmdb.Error as exc:
            raise DataError(f"{self.where(key)}: damaged ({exc}); copy the LMDB again") from None
        if raw is None:
            raise DataError(f"{self.path}: key '{key_text(key)}' vanished while importing; is another program "
                            "writing this LMDB?")
        return raw

    def where(self, key: bytes) -> str:
        return f"{self.path} key '{key_text(key)}'"


def key_text(key: bytes) -> str:
    """An LMDB key as printable text (keys are bytes; Caffe's tools write ASCII like 00000012_name)."""
    return key.decode("utf-8", errors="backslashreplace")


def decode_datum(raw: bytes, where: str) -> tuple[np.ndarray, bool]:
    """A serialized Datum as ((C, H, W) array, encoded?): uint8 from raw bytes, float32 from float_data, the
    decoded file's dtype (uint8, or uint16/int32 for 16-bit PNGs) from an encoded image. DataError naming
    `where` when the record is not a Datum or its sizes disagree with its bytes."""

    datum = caffe_pb2().Datum()
    try:
        datum.ParseFromString(raw)
    except DecodeError:
        raise DataError(f"{where}: not a Caffe Datum; fcnseg reads LMDBs written by caffe.io.array_to_datum or "
                        "convert_imageset") from None
    if datum.encoded:

        try:
            with Image.open(io.BytesIO(datum.data)) as img:
                arr = np.asarray(img)
        except Exception as exc:  # noqa: BLE001 - any decoder failure (also a decompression bomb) is a bad record
            raise DataError(f"{where}: encoded Datum that Pillow cannot decode ({exc.__class__.__name__}: "
                            f"{str(exc)[:160]})") from None
        return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), True
    c, h, w = datum.channels, datum.height, datum.width
    if min(c, h, w) < 1:
        raise DataError(f"{where}: Datum says {c}x{h}x{w} (CxHxW); a damaged record")
    if datum.data:
        if len(datum.data) != c * h * w:
            raise DataError(f"{where}: Datum says {c}x{h}x{w} (CxHxW) but holds {len(datum.data)} bytes")
        return np.frombuffer(datum.data, np.uint8).reshape(c, h, w), False
    if len(datum.float_data) != c * h * w or not c * h * w:
        raise DataError(f"{where}: Datum says {c}x{h}x{w} (CxHxW) but holds {len(datum.float_data)} floats")
    return np.asarray(datum.float_data, np.float32).reshape(c, h, w), False


def datum_plane(raw: bytes, where: str, kind: str, to_gray: bool = False) -> np.ndarray:
    """One record as the (H, W) array a folder import reads from a file: one channel kept, colour images
    to BT.601 luma with `to_gray` (raw Datums are BGR, encoded ones RGB), refused otherwise exactly as
    image files are (`images.to_single_channel`); float values checked as files' are."""
    arr, encoded = decode_datum(raw, where)
    channels = arr.shape[0]
    if channels == 1:
        plane = arr[0]
    else:
        frames = arr.transpose(1, 2, 0)[None]
        if channels >= 3 and not encoded:  # Caffe's BGR(A) -> the RGB(A) order the luma weights expect
            frames = np.concatenate([frames[..., 2::-1], frames[..., 3:]], axis=-1)
        plane = to_single_channel(frames, channels, where, kind, to_gray,
                                   " (Datum of the LMDB)" if kind == "image" else "")[0]
    return check_values(plane, where, kind)


def _first_datum(source: LmdbSource) -> tuple[np.ndarray, bool, bytes]:
    key = source.keys()[0]
    arr, encoded = decode_datum(source.get(key), source.where(key))
    return arr, encoded, key


def lmdb_pairs(images: str | Path, labels: str | Path, to_gray: bool = False,
               options: tuple[str, str] = ("--images", "--labels")) -> list:
    """The `data.Pair`s of an image LMDB and its label LMDB, paired by key, in key order.

    Raises DataError when either is not an LMDB, is empty, or a key of one has no record in the other
    (naming the first such key). Records are read when the import asks for them, never all at once.
    """
    images, labels = Path(images), Path(labels)
    for path, option, other in ((images, options[0], labels), (labels, options[1], images)):
        if not is_caffe_lmdb(path):
            raise DataError(f"{option} {path}: not an LMDB folder (no {LMDB_FILE}), but {other} is one; give two "
                            "Caffe LMDBs (images and labels, paired by key)")
    image_db, label_db = LmdbSource.open(images, options[0]), LmdbSource.open(labels, options[1])
    image_keys, label_keys = image_db.keys(), label_db.keys()
    for mine, theirs, db, other in ((image_keys, set(label_keys), image_db, label_db),
                                    (label_keys, set(image_keys), label_db, image_db)):
        missing = [key for key in mine if key not in theirs]
        if missing:
            raise DataError(f"{db.where(missing[0])}: no record with this key in {other.path} ({len(missing)} "
                            "unpaired key(s)); Caffe reads the two LMDBs in step, so fcnseg pairs image and label "
                            "records by key: write both under the same keys")
    return [Pair(name=f"{images.name}#{key_text(key)}", key=key_text(key),
                 image=lambda k=key: datum_plane(image_db.get(k), image_db.where(k), "image", to_gray),
                 mask=lambda k=key: datum_plane(label_db.get(k), label_db.where(k), "mask"),
                 image_where=image_db.where(key), mask_where=label_db.where(key))
            for key in image_keys]


def separate_val(train: list, val: list) -> tuple[list, list]:
    """(train, val) when the val split comes as its own sources (--val-images/--val-labels). Names that
    the two splits share (a.png in both folders, the same key in two LMDBs of one name) get the val
    prefix 'val/' so dataset.yaml and the import's checks keep them apart."""
    taken = {p.name for p in train}
    return train, [replace(p, name=f"val/{p.name}") if p.name in taken else p for p in val]


# ---- the mean file ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MeanFile:
    """A Caffe mean .binaryproto: its path, channels, size (H, W), per-channel means (file order) and
    the one gray value fcnseg subtracts (`value`, on the Datums' own intensity scale)."""

    path: Path
    channels: int
    size: tuple[int, int]
    channel_means: tuple[float, ...]
    value: float

    def record(self, window: Optional[dict]) -> dict:
        """The dataset.yaml entry (`source.mean_file`); `stored_mean` is `value` on the stored 0-255 scale."""
        return {"path": str(self.path), "channels": self.channels, "size": list(self.size),
                "channel_means": [round(m, 4) for m in self.channel_means], "value": round(self.value, 4),
                "stored_mean": round(stored_mean(self.value, window), 4)}


def stored_mean(value: float, window: Optional[dict]) -> float:
    """A mean on the source's intensity scale as the stored uint8 pixels see it (the import's window is
    linear, so the mean of windowed pixels is the windowed mean, up to clipping)."""
    if window is None:
        return float(value)
    low, high = float(window["low"]), float(window["high"])
    return float(np.clip((value - low) * 255.0 / (high - low), 0, 255))


def read_mean_file(path: str | Path, images: str | Path, to_gray: bool = False) -> MeanFile:
    """Read the mean .binaryproto `path` for the image LMDB `images` and check it fits.

    Its channel count must be the image Datums' (a 3-channel mean for 3-channel Datums read with
    --to-gray, which then becomes the luma of its BGR channel means). fcnseg subtracts one value per
    pixel, not a mean image, so a per-pixel mean becomes its average. Raises DataError naming the file.
    """

    path, images = Path(path), Path(images)
    if not is_caffe_lmdb(images):
        raise DataError(f"--mean-file {path}: goes with Caffe LMDB sources (the mean was computed on their Datums), "
                        f"but --images {images} is not an LMDB; fcnseg measures the mean of other sources itself")
    if not path.is_file():
        raise DataError(f"--mean-file {path}: not found")
    blob = caffe_pb2().BlobProto()
    try:
        blob.ParseFromString(path.read_bytes())
    except DecodeError:
        raise DataError(f"--mean-file {path}: not a Caffe BlobProto (.binaryproto, as compute_image_mean "
                        "writes)") from None
    dims = [int(d) for d in blob.shape.dim] if blob.HasField("shape") else \
        [blob.num, blob.channels, blob.height, blob.width]
    values = np.asarray(blob.data if len(blob.data) else blob.double_data, np.float64)
    dims = dims[1:] if len(dims) == 4 else dims
    if len(dims) == 2:
        dims = [1, *dims]
    if len(dims) != 3 or int(np.prod(dims)) != values.size or not values.size:
        raise DataError(f"--mean-file {path}: shape {dims} does not match its {values.size} values; "
                        "expected a 1xCxHxW mean blob")
    channels = dims[0]
    first, encoded, key = _first_datum(LmdbSource.open(images, "--images"))
    wanted = first.shape[0]
    if channels != wanted:
        raise DataError(f"--mean-file {path}: {channels} channel(s), but the Datums of {images} have {wanted} "
                        f"(first key '{key_text(key)}'); use the mean computed from these LMDBs (Caffe's "
                        "compute_image_mean), or drop --mean-file to let fcnseg measure the train mean")
    means = values.reshape(channels, -1).mean(axis=1)
    if channels == 1:
        value = float(means[0])
    elif channels in (3, 4) and to_gray:
        rgb = means[:3] if encoded else means[2::-1]  # the mean is in the Datums' order: BGR when raw
        value = float(rgb @ LUMA)
    else:
        raise DataError(f"--mean-file {path}: {channels} channels; the images become one gray channel only with "
                        "--to-gray (3 or 4 channels), so add --to-gray")
    return MeanFile(path, channels, (dims[1], dims[2]), tuple(float(m) for m in means), value)


def record_mean(meta: dict, mean: MeanFile, window: Optional[dict]) -> None:
    """Make `mean` the dataset's mean in dataset.yaml `meta` (in place), keeping the measured one beside it."""
    entry = mean.record(window)
    entry["measured_train_mean"] = meta.get("mean")
    meta["mean"] = entry["stored_mean"]
    meta.setdefault("source", {})["mean_file"] = entry


def mean_lines(meta: dict) -> list[str]:
    """The import report's line about a --mean-file (none without one)."""
    entry = (meta.get("source") or {}).get("mean_file")
    if not entry:
        return []
    h, w = entry["size"]
    per = "" if entry["channels"] == 1 else f" (luma of its channel means {entry['channel_means']})"
    return [f"mean: {entry['path']} ({entry['channels']} channel(s), {h}x{w}) averages {entry['value']:g}{per}; "
            f"recorded as the dataset's mean {entry['stored_mean']:g} on the stored 0-255 scale (fcnseg subtracts "
            f"one value, not a mean image; the measured train mean was {entry['measured_train_mean']})"]
