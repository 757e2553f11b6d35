"""Resolving a config once: the config as loaded, completed from its dataset and its weights.

`resolve(config)` reads data.root's dataset.yaml once and decides what the config leaves open: the class
count and the input mean. The result, `Resolved`, is what every stage after loading receives (make-proto,
train, eval, doctor --config), so no stage reads dataset.yaml again or decides the mean a second time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import recipes
from .config import Config, foreground_weight, input_mean
from .dataset import DatasetInfo, read_dataset
from .errors import ConfigError
from .files import DATASET_FILE
from .inputs import expected_input

MEAN_FROM_CONFIG = "data.mean in the config"  # `mean_source` of a mean the user wrote as a number

@dataclass(frozen=True)
class Resolved:
    """A config with everything decided, and the facts it was decided from.

    `config.model.num_classes` is set; `config.data.mean` is a number unless nothing could decide it (no
    dataset, no weights that say: the net then subtracts 0). `dataset` is data.root's dataset.yaml, None
    without data.root; `mean_source` says in one line where the mean came from.
    """

    config: Config
    dataset: Optional[DatasetInfo]
    mean_source: str
    foreground_source: Optional[str] = None  # why `loss.foreground_weight: auto` became its number

    def describe_loss(self) -> Optional[str]:
        """One line on the foreground weight `auto` chose, e.g. `loss.foreground_weight 1 (auto: ...)`; None when
        the config gave a number."""
        if self.foreground_source is None:
            return None
        return f"loss.foreground_weight {foreground_weight(self.config):g} (auto: {self.foreground_source})"

    def describe_input(self) -> str:
        """One line for reports, e.g. `input: (image - 114.452) * 1; mean: recorded in ...`."""
        return (f"input: (image - {input_mean(self.config):.6g}) * {self.config.data.scale:g}; "
                f"mean: {self.mean_source}")


def input_mean_choice(config: Config, info: Optional[DatasetInfo] = None) -> tuple[Optional[float], str]:
    """The mean the net subtracts from its input, and where it comes from (one line for reports).

    A number in data.mean is used as it is. `auto` (the default) takes the mean the init.weights
    expect (the gray mean a converted VGG16 records, or the data.mean of the run that trained them),
    else the dataset's; `dataset` always takes the dataset's train mean (`info`, from dataset.yaml).
    Without a dataset (`info` None) that mean is None. Raises WeightsError when init.weights is not a
    caffemodel.
    """
    mean, weights = config.data.mean, config.init.weights
    if not isinstance(mean, str):
        return float(mean), MEAN_FROM_CONFIG
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


def resolve(config: Config) -> Resolved:
    """`config` (as loaded) with num_classes and the input mean decided (see `input_mean_choice`).

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
    mean, source = input_mean_choice(config, info)
    if mean is not None and isinstance(config.data.mean, str):
        config.data.mean = mean
    if config.model.num_classes is None:
        raise ConfigError("model.num_classes is not set; set it, or point data.root at a dataset "
                          "imported with `fcnseg data import`")
    weight_source = None
    if config.loss.foreground_weight == "auto" and info is not None:
        config.loss.foreground_weight, weight_source = foreground_weight_choice(info)
    return Resolved(config, info, source, weight_source)


def foreground_weight_choice(info: DatasetInfo) -> tuple[float, str]:
    """(weight, why) for `loss.foreground_weight: auto`: recipes.SPARSE_FOREGROUND_WEIGHT when the import found a
    class sparse in the source images (dataset.yaml's train_tiles.sparse_classes) or a foreground class is under
    recipes.MIN_CLASS_FRACTION of the labelled train pixels (its class_pixels), or the data was imported with
    --instances (OBJECT_FOREGROUND_WEIGHT: interior against boundary is learnt from the object pixels), else 0."""
    if info.object_roles is not None:
        return recipes.OBJECT_FOREGROUND_WEIGHT, "objects (data imported with --instances): the interior and " \
            "boundary pixels weighted up, as the U-Net paper weights its separation borders"
    if info.sparse_classes:
        return recipes.SPARSE_FOREGROUND_WEIGHT, (f"{', '.join(info.sparse_classes)} under "
                                                  f"{100 * recipes.MIN_CLASS_FRACTION:g} % of the source pixels, "
                                                  "as the import found")
    pixels = info.split("train").class_pixels
    labelled = sum(pixels)
    if not labelled:
        return 0.0, "the dataset records no class pixels"
    names = info.class_names()
    names = [names[i] if i < len(names) else f"class {i}" for i in range(len(pixels))]
    fractions = {names[i]: c / labelled for i, c in enumerate(pixels) if i > 0}  # the foreground classes
    sparse = set(recipes.sparse_classes(pixels, names)) & set(fractions)
    shares = ", ".join(f"{name} {100 * f:.2g} %" for name, f in fractions.items() if name in sparse or not sparse)
    if sparse:
        return recipes.SPARSE_FOREGROUND_WEIGHT, (f"{shares} of the train pixels, under "
                                                  f"{100 * recipes.MIN_CLASS_FRACTION:g} %")
    return 0.0, f"{shares} of the train pixels, none under {100 * recipes.MIN_CLASS_FRACTION:g} %"
