"""The dataset folder written by `fcnseg data import`, as every later stage reads it.

Layout: DIR/{train,val}_{images,labels}_lmdb/ and DIR/dataset.yaml. `dataset_paths(root)` gives the
LMDB paths (placeholders when root is None, so prototxts can be written without data on disk);
`read_dataset(root)` the typed, checked view every later stage reads (`DatasetInfo`: classes, window, mean,
tile, per-split samples and sizes; `DatasetInfo.from_meta` is the one parser of the file's dict, a pydantic
model checked like the config);
`read_dataset_yaml(root)` the whole file as written, for `fcnseg data show`;
`resolve_config(config)` fills num_classes and mean from it and refuses disagreements. The LMDB records
are Caffe Datums: `datum_bytes(array)` encodes one, `datum_array(raw)` decodes one. No Caffe needed to
import this module; the Datum functions need pycaffe.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from .caffe_env import caffe_pb2
from .config import Config, read_yaml, validation_message
from .errors import ConfigError, DataError

DATASET_FILE = "dataset.yaml"
PLACEHOLDER_ROOT = "DATA_ROOT"  # written into prototxts when no data.root is set
SPLITS = ("train", "val")


class Split(BaseModel):
    """One split of an imported dataset: its sample (tile) count, source names and image sizes (H, W)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    samples: Optional[int] = Field(None, ge=0)  # None: not recorded
    sources: tuple[str, ...] = ()
    sizes: tuple[tuple[PositiveInt, PositiveInt], ...] = ()

    @field_validator("sources", "sizes", mode="before")
    @classmethod
    def _null_is_empty(cls, value):
        return () if value is None else value

    @field_validator("sources", mode="before")
    @classmethod
    def _names(cls, value):  # a source named 12 in hand-edited YAML is the name "12"
        return [str(v) if isinstance(v, (int, float)) else v for v in value] if isinstance(value, list) else value


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


def dataset_paths(root: Optional[str]) -> dict[str, str]:
    """LMDB paths keyed 'train_images', 'train_labels', 'val_images', 'val_labels'."""
    base = root if root is not None else PLACEHOLDER_ROOT
    return {f"{split}_{kind}": str(Path(base) / f"{split}_{kind}_lmdb")
            for split in SPLITS for kind in ("images", "labels")}


def datum_bytes(array: np.ndarray) -> bytes:
    """A (C, H, W) array as a serialized Caffe Datum of raw uint8 pixels (values cast to uint8)."""
    array = np.ascontiguousarray(array, np.uint8)
    channels, height, width = array.shape
    datum = caffe_pb2().Datum(channels=channels, height=height, width=width, data=array.tobytes())
    return datum.SerializeToString()


def datum_array(raw: bytes) -> np.ndarray:
    """A serialized Caffe Datum as a (C, H, W) array: raw uint8 bytes, float_data (float32), or an
    encoded image (PNG/JPEG, decoded with PIL)."""
    datum = caffe_pb2().Datum()
    datum.ParseFromString(raw)
    if datum.encoded:
        from PIL import Image  # noqa: PLC0415
        arr = np.asarray(Image.open(io.BytesIO(datum.data)))
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if datum.data:
        return np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width)
    return np.asarray(datum.float_data, np.float32).reshape(datum.channels, datum.height, datum.width)


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


def input_mean_choice(config: Config, info: Optional[DatasetInfo] = None) -> tuple[Optional[float], str]:
    """The mean the net subtracts from its input, and where it comes from (one line for reports).

    A number in data.mean is used as it is. `auto` (the default) takes the mean the init.weights
    expect (the gray mean a converted VGG16 records, or the data.mean of the run that trained them),
    else the dataset's; `dataset` always takes the dataset's train mean (`info`, from dataset.yaml).
    Without a dataset (`info` None) that mean is 0. Raises WeightsError when init.weights is not a caffemodel.
    """
    from .runs import expected_input  # noqa: PLC0415 - runs imports dataset

    mean, weights = config.data.mean, config.init.weights
    if not isinstance(mean, str):
        return float(mean), "data.mean in the config"
    if mean == "auto" and weights:
        if not Path(weights).is_file():
            note = f" (init.weights {weights} is not there yet, so its mean could not be read)"
        else:
            expected = expected_input(weights)
            if expected is not None:
                return expected.mean, expected.source
            note = f" ({weights} records no input mean)"
    else:
        note = ""
    if info is not None:
        return info.mean, f"train mean of {config.data.root}/{DATASET_FILE}{note}"
    return None, f"0: no dataset to take a mean from{note}"


def describe_input(config: Config, info: Optional[DatasetInfo] = None) -> str:
    """One line for reports: what the net's input is and where its mean comes from, for the config as
    loaded (before `resolve_config`), e.g. `input: (image - 114.452) * 1; mean: recorded in ...`."""
    mean, source = input_mean_choice(config, info)
    return f"input: (image - {mean or 0.0:.6g}) * {config.data.scale:g}; mean: {source}"


def resolve_config(config: Config) -> Config:
    """Return a copy of `config` with num_classes and the input mean decided (see `input_mean_choice`).

    num_classes comes from data.root's dataset.yaml. Raises ConfigError when model.num_classes disagrees
    with the dataset, or when num_classes is known from neither; DataError when data.root is not a
    dataset; WeightsError when init.weights is not a caffemodel.
    """
    config = config.model_copy(deep=True)
    info = None
    if config.data.root is not None:
        info = read_dataset(config.data.root)
        k = info.num_classes
        if config.model.num_classes is not None and config.model.num_classes != k:
            raise ConfigError(f"model.num_classes is {config.model.num_classes} but {config.data.root}/"
                              f"{DATASET_FILE} says {k}; remove model.num_classes or set it to {k}")
        config.model.num_classes = k
    if isinstance(config.data.mean, str):
        mean, _ = input_mean_choice(config, info)
        if mean is not None:
            config.data.mean = mean
    if config.model.num_classes is None:
        raise ConfigError("model.num_classes is not set; set it, or point data.root at a dataset "
                          "imported with `fcnseg data import`")
    return config


def input_mean(config: Config) -> float:
    """The mean subtracted from the input of a resolved config; `auto`/`dataset` left unresolved (no
    dataset, no weights that say) mean 0 (documented)."""
    return 0.0 if isinstance(config.data.mean, str) else float(config.data.mean)
