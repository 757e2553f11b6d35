"""The dataset folder written by `fcnseg data import`, as every later stage reads it.

Layout: DIR/{train,val}_{images,labels}_lmdb/ and DIR/dataset.yaml. `dataset_paths(root)` gives the
LMDB paths (placeholders when root is None, so prototxts can be written without data on disk);
`read_dataset(root)` the parsed dataset.yaml; `resolve_config(config)` fills num_classes and mean from it
and refuses disagreements. No Caffe needed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .config import Config, read_yaml
from .errors import ConfigError, DataError

DATASET_FILE = "dataset.yaml"
PLACEHOLDER_ROOT = "DATA_ROOT"  # written into prototxts when no data.root is set
SPLITS = ("train", "val")


def dataset_paths(root: Optional[str]) -> dict[str, str]:
    """LMDB paths keyed 'train_images', 'train_labels', 'val_images', 'val_labels'."""
    base = root if root is not None else PLACEHOLDER_ROOT
    return {f"{split}_{kind}": str(Path(base) / f"{split}_{kind}_lmdb")
            for split in SPLITS for kind in ("images", "labels")}


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


def resolve_config(config: Config) -> Config:
    """Return a copy of `config` with num_classes and mean taken from data.root's dataset.yaml.

    Raises ConfigError when model.num_classes disagrees with the dataset, or when num_classes is known
    from neither; DataError when data.root is not a dataset.
    """
    config = config.model_copy(deep=True)
    if config.data.root is not None:
        meta = read_dataset(config.data.root)
        k = int(meta["num_classes"])
        if config.model.num_classes is not None and config.model.num_classes != k:
            raise ConfigError(f"model.num_classes is {config.model.num_classes} but {config.data.root}/"
                              f"{DATASET_FILE} says {k}; remove model.num_classes or set it to {k}")
        config.model.num_classes = k
        if config.data.mean == "dataset":
            config.data.mean = float(meta.get("mean", 0.0))
    if config.model.num_classes is None:
        raise ConfigError("model.num_classes is not set; set it, or point data.root at a dataset "
                          "imported with `fcnseg data import`")
    return config


def input_mean(config: Config) -> float:
    """The mean subtracted from the input; 'dataset' without a dataset means 0 (documented)."""
    return 0.0 if config.data.mean == "dataset" else float(config.data.mean)
