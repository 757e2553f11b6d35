"""What input a set of weights expects, and everything that turns a raw image into a net's input.

`expected_input(weights)`: the input a caffemodel was trained or converted for ((gray - mean) * scale on
0-255), from the gray mean `fcnseg weights convert` records in it or from the run folder that trained it;
`input_mean_mismatch` compares that with a config's. `InferenceFacts`: what inference needs besides the deploy
net and the weights (classes, intensity window, mean, scale, padding ...), as a run's inference.yaml and an
exported ONNX model's metadata hold them (`read_inference_file`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

from . import __version__
from .caffemodel import recorded_gray_mean
from .config import Config, input_mean, load_config, read_yaml
from .errors import ConfigError, RunError
from .files import CONFIG_FILE, INFERENCE_FILE, run_folder_of


@dataclass(frozen=True)
class ExpectedInput:
    """The input a weights file was trained (or converted) for: (gray - mean) * scale, gray on 0-255."""

    mean: float
    scale: float
    source: str  # for reports: where mean and scale were found


def expected_input(weights: str | Path) -> Optional[ExpectedInput]:
    """What input the caffemodel at `weights` expects, or None when nothing says.

    A model converted by `fcnseg weights convert` records its gray mean M (scale 1); weights trained by
    `fcnseg train` expect what their run's inference.yaml (else config.yaml) says. Raises WeightsError for an
    unreadable file, RunError for a broken inference.yaml.
    """
    recorded = recorded_gray_mean(weights)
    if recorded is not None:
        return ExpectedInput(recorded, 1.0, f"recorded in {weights} by `fcnseg weights convert`")
    run = run_folder_of(weights)
    if run is None:
        return None
    if (run / INFERENCE_FILE).is_file():
        facts = read_inference_file(run / INFERENCE_FILE)
        return ExpectedInput(facts.mean, facts.scale, f"the mean of the run {run} that trained it")
    data = load_config(run / CONFIG_FILE).data
    if isinstance(data.mean, str):
        return None
    return ExpectedInput(float(data.mean), float(data.scale), f"data.mean of the run {run} that trained it")


@dataclass(frozen=True)
class InferenceFacts:
    """Everything that turns a raw image into the net's input and its output into labels.

    The net input is `apply_window(image, window)` (uint8 0-255), then (x - mean) * scale, as the
    training Data layer saw it; input sizes must be multiples of `input_multiple` (the net stride for
    `pad: minimal`, else 1). `classes` names the class ids 0..num_classes-1.
    """

    num_classes: int
    classes: list[str]
    ignore_label: int
    window: Optional[dict]  # None: 8-bit data, used as it is
    mean: float
    scale: float
    input_channels: int
    pad: Union[str, int]
    arch: str
    stages: int
    net_stride: int
    input_multiple: int
    dataset: Optional[str]  # the dataset the facts were copied from, for the record only
    fcnseg_version: str = __version__
    reader: Optional[dict] = None  # how the training volumes were read (fcnseg.volumes); optional in files
    objects: Optional[dict] = None  # trained for objects (--instances): interior/boundary class ids, min_area

    def to_dict(self) -> dict:
        """Plain data for YAML or ONNX metadata (`reader` only for volumes: image data writes what it always did)."""
        facts = asdict(self)
        for optional in ("reader", "objects"):
            if facts[optional] is None:
                del facts[optional]
        return facts

    @classmethod
    def from_dict(cls, raw: object, where: str) -> "InferenceFacts":
        """Parse `to_dict`'s output (other keys are ignored); RunError naming `where` when a key is missing
        or malformed."""
        names = list(cls.__dataclass_fields__)
        missing = [n for n in names if n not in ("reader", "objects") and (not isinstance(raw, dict) or n not in raw)]
        if missing:
            raise RunError(f"{where}: missing {', '.join(missing)}; write it again (`fcnseg make-proto` for a "
                           "run folder, `fcnseg export` for an ONNX model)")
        try:
            window = raw["window"]
            if window is not None:
                window = {**window, "low": float(window["low"]), "high": float(window["high"])}
            facts = cls(**{**{n: raw[n] for n in names if n in raw}, "num_classes": int(raw["num_classes"]),
                           "classes": [str(c) for c in raw["classes"]],
                           "ignore_label": int(raw["ignore_label"]), "window": window, "mean": float(raw["mean"]),
                           "scale": float(raw["scale"]), "input_channels": int(raw["input_channels"]),
                           "stages": int(raw["stages"]), "net_stride": int(raw["net_stride"]),
                           "input_multiple": int(raw["input_multiple"])})
        except (TypeError, ValueError, KeyError) as exc:
            raise RunError(f"{where}: malformed inference facts ({exc!r})") from None
        if len(facts.classes) != facts.num_classes:
            raise RunError(f"{where}: {len(facts.classes)} class names for {facts.num_classes} classes")
        return facts


# How far (grey levels on 0-255) the net's input mean may sit from what pretrained weights expect before
# train and doctor warn: a few levels shift conv1_1's response by less than its bias noise.
MEAN_TOLERANCE = 3.0


def input_mean_mismatch(config: Config, path: str | Path) -> Optional[str]:
    """A one-line warning when the net's input ((image - data.mean) * data.scale of the resolved
    `config`) is more than MEAN_TOLERANCE grey levels (or any scale) away from what the weights at
    `path` expect (`expected_input`); None when it matches or the weights do not say."""
    expected = expected_input(path)
    if expected is None:
        return None
    mean, scale = input_mean(config), config.data.scale
    if abs(mean - expected.mean) <= MEAN_TOLERANCE and math.isclose(scale, expected.scale, rel_tol=1e-6):
        return None
    return (f"{path} expects input (gray - {expected.mean:.6g}) * {expected.scale:g} on 0-255 "
            f"({expected.source}), but this net subtracts data.mean {mean:.6g} and scales by {scale:g}; "
            f"set data.mean: {expected.mean:.6g} (or auto) and data.scale: {expected.scale:g} so the "
            "pretrained filters see what they were trained on")


def read_inference_file(path: Path) -> InferenceFacts:
    """The InferenceFacts in the YAML file `path` (a run's inference.yaml); RunError naming it when it is
    not valid YAML or lacks a key."""
    try:
        raw = read_yaml(path, INFERENCE_FILE)
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    return InferenceFacts.from_dict(raw, str(path))
