"""The dataset folder written by `fcnseg data import`, as every later stage reads it.

Layout: DIR/{train,val}_{images,labels}_lmdb/ and DIR/dataset.yaml (the names: `files.dataset_paths`).
`read_dataset(root)` the typed, checked view every later stage reads (`DatasetInfo`: classes, window, mean,
tile, per-split samples and sizes; `DatasetInfo.from_meta` is the one parser of the file's dict, a pydantic
model checked like the config);
`read_dataset_yaml(root)` the whole file as written, for `fcnseg data show`. The LMDB records
are Caffe Datums: `datum_bytes(array)` encodes one, `datum_array(raw)` decodes one. No Caffe needed to
import this module; the Datum functions need pycaffe.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional

import numpy as np
from google.protobuf.message import DecodeError
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from .caffe_env import caffe_pb2
from .config import read_yaml, validation_message
from .errors import ConfigError, DataError
from .files import DATASET_FILE, VAL_OBJECTS_FILE


class Split(BaseModel):
    """One split of an imported dataset: its sample (tile) count, source names and image sizes (H, W)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    samples: Optional[int] = Field(None, ge=0)  # None: not recorded
    class_pixels: tuple[int, ...] = ()  # labelled pixels per class in the split's sources; () not recorded
    sources: tuple[str, ...] = ()
    sizes: tuple[tuple[PositiveInt, PositiveInt], ...] = ()

    @field_validator("sources", "sizes", "class_pixels", mode="before")
    @classmethod
    def _null_is_empty(cls, value):
        return () if value is None else value

    @field_validator("sources", mode="before")
    @classmethod
    def _names(cls, value):  # a source named 12 in hand-edited YAML is the name "12"
        return [str(v) if isinstance(v, (int, float)) else v for v in value] if isinstance(value, list) else value


class LmdbChecksum(BaseModel):
    """What `data import` records of one LMDB in dataset.yaml `checksums` (read by `fcnseg.verify`): its
    record count, the SHA-256 of every key and value in key order, and each record's CRC-32 of key + value
    (base64 of big-endian uint32s) so a check can name the first bad key."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    records: int = Field(ge=0)
    sha256: str
    crc32: str = ""


class DatasetInfo(BaseModel):
    """What the stages after import (train, eval, infer, doctor, make-proto) read from dataset.yaml, typed.

    `read_dataset(root)` builds it, checked once there (`from_meta`); the file holds more (class pixel
    counts, tile plan, provenance) that only `fcnseg data show` prints (`read_dataset_yaml`). Keys absent
    from the file read as None (classes, window, tile, a split's samples), mean 0 and no splits.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    num_classes: int = Field(ge=1)
    classes: Optional[tuple[str, ...]] = None
    window: Optional[dict] = None  # None: 8-bit data, used as it is; else at least numeric low and high
    mean: float = 0.0  # the train split's mean on 0-255
    tile: Optional[PositiveInt] = None  # None: whole images
    reader: Optional[dict] = None  # how volumes were read (fcnseg.volumes), None for image files
    splits: dict[str, Split] = {}
    checksums: Optional[dict[str, LmdbChecksum]] = None  # by LMDB folder name; None: imported before they were
    ignore_label: int = Field(255, ge=0)  # the label value of pixels that are no class
    input_channels: int = Field(1, ge=1)
    train_tiles: Optional[dict] = None  # the import's tile plan; `sparse_classes` names the sparse classes
    instances: Optional[dict] = None  # `data import --instances`: class roles (interior, boundary), objects

    @property
    def object_roles(self) -> Optional[dict]:
        """{'interior': id, 'boundary': id} for a dataset imported with --instances, else None."""
        if not self.instances:
            return None
        return {"interior": int(self.instances["interior"]), "boundary": int(self.instances["boundary"])}

    @property
    def sparse_classes(self) -> tuple[str, ...]:
        """The classes the import found under recipes.MIN_CLASS_FRACTION of the source pixels (() if none, or
        imported before it recorded them)."""
        return tuple(str(c) for c in (self.train_tiles or {}).get("sparse_classes") or ())

    @field_validator("tile", mode="before")
    @classmethod
    def _no_tile(cls, value):  # tile: 0 or null: whole images
        return value or None

    @field_validator("classes", mode="before")
    @classmethod
    def _class_names(cls, value):  # []: no names; a name 0 in hand-edited YAML is the name "0"
        if isinstance(value, list):
            return [str(v) if isinstance(v, (int, float)) else v for v in value] or None
        return value

    @field_validator("splits", mode="before")
    @classmethod
    def _null_splits(cls, value):
        if value is None:
            return {}
        return {k: v if v is not None else {} for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("window")
    @classmethod
    def _window_bounds(cls, window):
        for bound in ("low", "high") if window is not None else ():
            if isinstance(window.get(bound), bool) or not isinstance(window.get(bound), (int, float)):
                raise ValueError(f"window.{bound} must be a number")
        return window

    @classmethod
    def from_meta(cls, meta: dict, where: str) -> "DatasetInfo":
        """The typed view of a parsed dataset.yaml `meta` (the one place that reads the dict for the stages).

        Raises DataError naming `where` and the key when a value has the wrong type or range.
        """
        try:
            return cls.model_validate(meta)
        except ValidationError as exc:
            raise DataError(f"{validation_message(exc.errors()[0], where)}; re-import the data with "
                            "`fcnseg data import`") from None

    def split(self, name: str) -> Split:
        """The split `name` as recorded; an empty Split (nothing recorded) when the file has none."""
        return self.splits.get(name, Split())

    def samples(self, split: str) -> int:
        """Samples (tiles) in `split`, 0 when the split or its count is not recorded."""
        return self.split(split).samples or 0

    @property
    def sizes(self) -> set[tuple[int, int]]:
        """The distinct image sizes (H, W) over all splits."""
        return {size for split in self.splits.values() for size in split.sizes}

    def class_names(self) -> list[str]:
        """The names of class ids 0..num_classes-1: dataset.yaml `classes`, else 'class 0', 'class 1', ..."""
        return list(self.classes or [f"class {i}" for i in range(self.num_classes)])


def datum_bytes(array: np.ndarray) -> bytes:
    """A (C, H, W) array as a serialized Caffe Datum of raw uint8 pixels (values cast to uint8)."""
    array = np.ascontiguousarray(array, np.uint8)
    channels, height, width = array.shape
    datum = caffe_pb2().Datum(channels=channels, height=height, width=width, data=array.tobytes())
    return datum.SerializeToString()


def datum_array(raw: bytes, where: str = "an LMDB record") -> np.ndarray:
    """A serialized Caffe Datum as a (C, H, W) array: raw uint8 bytes, float_data (float32), or an
    encoded image (PNG/JPEG, decoded with PIL). DataError naming `where` when the bytes are not a Datum
    or its sizes disagree with its values."""
    datum = caffe_pb2().Datum()
    try:
        datum.ParseFromString(raw)
    except DecodeError:
        raise DataError(f"{where}: not a Caffe Datum (damaged record)") from None
    if datum.encoded:
        try:
            with Image.open(io.BytesIO(datum.data)) as img:
                arr = np.asarray(img)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a damaged record
            raise DataError(f"{where}: encoded Datum that Pillow cannot decode ({exc.__class__.__name__})") from None
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    shape = (datum.channels, datum.height, datum.width)
    values = np.frombuffer(datum.data, np.uint8) if datum.data else np.asarray(datum.float_data, np.float32)
    if min(shape) < 1 or values.size != math.prod(shape):
        raise DataError(f"{where}: Datum says {'x'.join(map(str, shape))} (CxHxW) but holds {values.size} values "
                        "(damaged record)")
    return values.reshape(shape)


def save_val_objects(path: Path, frames: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """Write the val frames of an --instances import: (source name, uint8 windowed image, object ids) each,
    as one compressed .npz (plain arrays, read back without pickle by `read_val_objects`)."""
    arrays = {"names": np.array([name for name, _, _ in frames], dtype=str)}
    for i, (_, gray, ids) in enumerate(frames):
        arrays[f"image_{i}"] = gray
        arrays[f"ids_{i}"] = ids.astype(np.uint16 if ids.max(initial=0) < 1 << 16 else np.uint32)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def read_val_objects(root: str | Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(source name, uint8 windowed image, object ids) per val frame of a dataset imported with --instances.
    Raises DataError when the file is missing or unreadable."""
    path = Path(root) / VAL_OBJECTS_FILE
    if not path.is_file():
        raise DataError(f"{root}: no {VAL_OBJECTS_FILE}; objects are scored on data imported with "
                        "`fcnseg data import --instances`")
    try:
        with np.load(path, allow_pickle=False) as data:
            return [(str(name), data[f"image_{i}"], data[f"ids_{i}"]) for i, name in enumerate(data["names"])]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); import the data again") from None


def read_dataset_yaml(root: str | Path) -> dict:
    """DIR/dataset.yaml as parsed, every key as written (what `fcnseg data show` prints).

    Raises DataError when the folder is missing, holds no dataset.yaml, the file is not valid YAML or
    lacks num_classes: when it is not a folder written by `fcnseg data import`.
    """
    root = Path(root)
    path = root / DATASET_FILE
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; create it with `fcnseg data import`")
    if not path.is_file():
        raise DataError(f"{root}: no {DATASET_FILE} here; is this a folder written by `fcnseg data import`?")
    try:
        meta = read_yaml(path, DATASET_FILE)
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    if not isinstance(meta, dict) or "num_classes" not in meta:
        raise DataError(f"{path}: missing num_classes; re-import the data with `fcnseg data import`")
    return meta


def read_dataset(root: str | Path) -> DatasetInfo:
    """What the stages read from DIR/dataset.yaml, typed and checked (`DatasetInfo`).

    Raises DataError as `read_dataset_yaml` does, and naming the key when a value is malformed.
    """
    return DatasetInfo.from_meta(read_dataset_yaml(root), str(Path(root) / DATASET_FILE))
