"""The dataset folder written by `fcnseg data import`, as every later stage reads it.

Layout: DIR/{train,val}_{images,labels}_lmdb/ and DIR/dataset.yaml. `dataset_paths(root)` gives the
LMDB paths (placeholders when root is None, so prototxts can be written without data on disk);
`read_dataset(root)` the typed, checked view every later stage reads (`DatasetInfo`: classes, window, mean,
tile, per-split samples and sizes; `DatasetInfo.from_meta` is the one parser of the file's dict);
`read_dataset_yaml(root)` the whole file as written, for `fcnseg data show`;
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
    sizes: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class DatasetInfo:
    """What the stages after import (train, eval, infer, doctor, make-proto) read from dataset.yaml, typed.

    `read_dataset(root)` builds it, checked once there; the file holds more (class pixel counts, tile plan,
    provenance) that only `fcnseg data show` prints (`read_dataset_yaml`). Keys absent from the file read
    as None (classes, window, tile, a split's samples), mean 0 and no splits.
    """

    num_classes: int
    classes: Optional[tuple[str, ...]] = None
    window: Optional[dict] = None  # None: 8-bit data, used as it is; else at least numeric low and high
    mean: float = 0.0  # the train split's mean on 0-255
    tile: Optional[int] = None  # None: whole images
    splits: dict[str, Split] = field(default_factory=dict)

    @classmethod
    def from_meta(cls, meta: dict, where: str) -> "DatasetInfo":
        """The typed view of a parsed dataset.yaml `meta` (the one place that reads the dict for the stages).

        Raises DataError naming `where` and the key when a value has the wrong type or range.
        """
        def malformed(key: str, value, expected: str):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            return DataError(f"{where}: {key} is {shown}, not {expected}; re-import the data with "
                             "`fcnseg data import`")

        def whole(key: str, value, minimum: int) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or (isinstance(value, float) and not value.is_integer()) or value < minimum:
                raise malformed(key, value, f"a whole number >= {minimum}")
            return int(value)

        def number(key: str, value) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise malformed(key, value, "a number")
            return float(value)

        def listing(key: str, value) -> list:
            if not isinstance(value, list):
                raise malformed(key, value, "a list")
            return value

        classes = meta.get("classes")
        if classes:
            if any(isinstance(c, (dict, list)) for c in listing("classes", classes)):
                raise malformed("classes", classes, "a list of names")
            classes = tuple(str(c) for c in classes)
        window = meta.get("window")
        if window is not None:
            if not isinstance(window, dict):
                raise malformed("window", window, "a mapping with low and high (or null)")
            for bound in ("low", "high"):
                number(f"window.{bound}", window.get(bound))
        raw_splits = meta.get("splits") or {}
        if not isinstance(raw_splits, dict):
            raise malformed("splits", raw_splits, "a mapping of split names")
        splits = {}
        for name, s in raw_splits.items():
            s = s or {}
            if not isinstance(s, dict):
                raise malformed(f"splits.{name}", s, "a mapping")
            sizes = []
            for size in listing(f"splits.{name}.sizes", s.get("sizes") or []):
                if not isinstance(size, list) or len(size) != 2:
                    raise malformed(f"splits.{name}.sizes", size, "[height, width]")
                sizes.append(tuple(whole(f"splits.{name}.sizes", x, 1) for x in size))
            splits[str(name)] = Split(
                None if s.get("samples") is None else whole(f"splits.{name}.samples", s["samples"], 0),
                tuple(str(x) for x in listing(f"splits.{name}.sources", s.get("sources") or [])), tuple(sizes))
        return cls(num_classes=whole("num_classes", meta.get("num_classes"), 1), classes=classes or None,
                   window=window, mean=number("mean", meta.get("mean", 0.0)),
                   tile=whole("tile", meta["tile"], 1) if meta.get("tile") else None, splits=splits)

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
