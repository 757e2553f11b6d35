"""The dataset folder written by `fcnseg data import`, as every later stage reads it.

Layout: DIR/{train,val}_{images,labels}_lmdb/ and DIR/dataset.yaml. `dataset_paths(root)` gives the
LMDB paths (placeholders when root is None, so prototxts can be written without data on disk);
`read_dataset(root)` the parsed dataset.yaml (a dict, as written; `DatasetInfo.from_meta(meta)` is the
typed view of what later stages read from it: classes, window, mean, tile, per-split samples and sizes);
`resolve_config(config)` fills num_classes and mean from it and refuses disagreements. The LMDB records
are Caffe Datums: `datum_bytes(array)` encodes one, `datum_array(raw)` decodes one. No Caffe needed to
import this module; the Datum functions need pycaffe.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .caffe_env import caffe_pb2
from .config import Config, read_yaml
from .errors import ConfigError, DataError

DATASET_FILE = "dataset.yaml"
PLACEHOLDER_ROOT = "DATA_ROOT"  # written into prototxts when no data.root is set
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Split:
    """One split of an imported dataset: its sample (tile) count, source names and image sizes (H, W)."""

    samples: Optional[int] = None  # None: not recorded
    sources: tuple[str, ...] = ()
    sizes: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class DatasetInfo:
    """What the stages after import (train, eval, infer, doctor, make-proto) read from dataset.yaml, typed.

    The file holds more (class pixel counts, tile plan, provenance) for `fcnseg data show`. An absent key
    reads as None (or no splits, mean 0), as for a definition written without a dataset.
    """

    num_classes: Optional[int] = None
    classes: Optional[tuple[str, ...]] = None
    window: Optional[dict] = None  # None: 8-bit data, used as it is
    mean: float = 0.0  # the train split's mean on 0-255
    tile: Optional[int] = None  # None: whole images
    splits: dict[str, Split] = field(default_factory=dict)

    @classmethod
    def from_meta(cls, meta: Optional[dict]) -> "DatasetInfo":
        """The typed view of a parsed dataset.yaml (`read_dataset`); None or {} gives the empty one."""
        meta = meta or {}
        splits = {name: Split(None if s.get("samples") is None else int(s["samples"]),
                              tuple(s.get("sources") or ()), tuple(tuple(x) for x in s.get("sizes") or ()))
                  for name, s in (meta.get("splits") or {}).items()}
        return cls(num_classes=None if meta.get("num_classes") is None else int(meta["num_classes"]),
                   classes=tuple(str(c) for c in meta["classes"]) if meta.get("classes") else None,
                   window=meta.get("window"), mean=float(meta.get("mean", 0.0)),
                   tile=int(meta["tile"]) if meta.get("tile") else None, splits=splits)

    def samples(self, split: str) -> int:
        """Samples (tiles) in `split`, 0 when the split or its count is not recorded."""
        return self.splits.get(split, Split()).samples or 0

    @property
    def sizes(self) -> set[tuple[int, ...]]:
        """The distinct image sizes (H, W) over all splits."""
        return {size for split in self.splits.values() for size in split.sizes}


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


def read_dataset(root: str | Path) -> dict:
    """Parsed DIR/dataset.yaml. Raises DataError when the folder is not an imported dataset."""
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


def input_mean_choice(config: Config, meta: Optional[dict] = None) -> tuple[Optional[float], str]:
    """The mean the net subtracts from its input, and where it comes from (one line for reports).

    A number in data.mean is used as it is. `auto` (the default) takes the mean the init.weights
    expect (the gray mean a converted VGG16 records, or the data.mean of the run that trained them),
    else the dataset's; `dataset` always takes the train mean stored in `meta` (dataset.yaml).
    Without a dataset that mean is 0. Raises WeightsError when init.weights is not a caffemodel.
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
    if meta is not None:
        return DatasetInfo.from_meta(meta).mean, f"train mean of {config.data.root}/{DATASET_FILE}{note}"
    return None, f"0: no dataset to take a mean from{note}"


def describe_input(config: Config, meta: Optional[dict] = None) -> str:
    """One line for reports: what the net's input is and where its mean comes from, for the config as
    loaded (before `resolve_config`), e.g. `input: (image - 114.452) * 1; mean: recorded in ...`."""
    mean, source = input_mean_choice(config, meta)
    return f"input: (image - {mean or 0.0:.6g}) * {config.data.scale:g}; mean: {source}"


def resolve_config(config: Config) -> Config:
    """Return a copy of `config` with num_classes and the input mean decided (see `input_mean_choice`).

    num_classes comes from data.root's dataset.yaml. Raises ConfigError when model.num_classes disagrees
    with the dataset, or when num_classes is known from neither; DataError when data.root is not a
    dataset; WeightsError when init.weights is not a caffemodel.
    """
    config = config.model_copy(deep=True)
    meta = None
    if config.data.root is not None:
        meta = read_dataset(config.data.root)
        k = int(meta["num_classes"])
        if config.model.num_classes is not None and config.model.num_classes != k:
            raise ConfigError(f"model.num_classes is {config.model.num_classes} but {config.data.root}/"
                              f"{DATASET_FILE} says {k}; remove model.num_classes or set it to {k}")
        config.model.num_classes = k
    if isinstance(config.data.mean, str):
        mean, _ = input_mean_choice(config, meta)
        if mean is not None:
            config.data.mean = mean
    if config.model.num_classes is None:
        raise ConfigError("model.num_classes is not set; set it, or point data.root at a dataset "
                          "imported with `fcnseg data import`")
    return config


def class_names(meta: dict, num_classes: int) -> list[str]:
    """The dataset's class names (dataset.yaml `classes`), else 'class 0', 'class 1', ..."""
    return list(DatasetInfo.from_meta(meta).classes or [f"class {i}" for i in range(num_classes)])


def input_mean(config: Config) -> float:
    """The mean subtracted from the input of a resolved config; `auto`/`dataset` left unresolved (no
    dataset, no weights that say) mean 0 (documented)."""
    return 0.0 if isinstance(config.data.mean, str) else float(config.data.mean)
