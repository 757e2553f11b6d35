"""The one validated config object, loaded from YAML with `--set` overrides.

`load_config(path, overrides)` returns a `Config`; every command takes that object explicitly. Loading
uses `yaml.safe_load` only. Errors are `ConfigError`s whose single line names the file and the dotted key:
unknown keys come with the nearest valid key, wrong types with the expected type. No Caffe needed here.
"""
from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import recipes, vgg16
from .errors import ConfigError

# Which pooling outputs a head fuses: fcn32s none, fcn16s the one before the last, fcn8s two. The U-Net
# (`unet`) fuses every level, through its own decoder.
SKIPS_BY_ARCH = {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2}
FCN_ARCHS = tuple(SKIPS_BY_ARCH)
UNET = "unet"
# Config keys that hold file or folder paths (section, key).
PATH_KEYS = (("data", "root"), ("init", "weights"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    arch: Literal["fcn32s", "fcn16s", "fcn8s", "unet"] = "fcn32s"
    norm: Literal["none", "batch"] = "none"
    base_channels: int = Field(64, ge=1)
    at_once: bool = False
    stages: int = Field(5, ge=1, le=5)
    num_classes: Optional[int] = Field(None, ge=2)
    input_channels: int = Field(1, ge=1)
    fc_channels: int = Field(vgg16.FC_CHANNELS, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    pad: Union[Literal["minimal"], int] = 100
    deploy_size: list[int] = Field(default_factory=lambda: [512, 512], min_length=2, max_length=2)

    @field_validator("pad")
    @classmethod
    def _pad_non_negative(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError("must be 'minimal' or an integer >= 0")
        return v

    @model_validator(mode="after")
    def _depth_supports_arch(self):
        if self.arch == UNET:
            if self.at_once:
                raise ValueError("model.at_once scales FCN skips; a unet has none: remove it")
            least = unet_least_pad(self.stages)
            if isinstance(self.pad, int) and self.pad < least:
                raise ValueError(f"model.pad {self.pad} is too small for a valid-padded unet of {self.stages} levels: "
                                 f"its convolutions take {least} pixels off each side; use model.pad >= {least}, "
                                 "or pad: minimal")
            return self
        skips = SKIPS_BY_ARCH[self.arch]
        if self.stages <= skips:
            raise ValueError(
                f"model.arch {self.arch} fuses the outputs of {skips} pooling stage(s) before the last, "
                f"so it needs model.stages >= {skips + 1} (got {self.stages}); use fcn32s or more stages")
        return self

    @property
    def net_stride(self) -> int:
        """Total stride of the trunk: 2 ** stages."""
        return 2 ** self.stages


def unet_least_pad(stages: int) -> int:
    """The least enc1_1 pad of a valid-padded U-Net of `stages` levels: its 3x3 convolutions take 2 pixels per
    level and side, scaled by the level's stride, on the way down, at the bottom and on the way up:
    2 (2^S - 1) + 2^(S+1) + 2 (2^S - 1) = 6 * 2^S - 4 (92 for 4 levels, as in the paper)."""
    return 6 * 2 ** stages - 4


class DataConfig(_Section):
    root: Optional[str] = None
    batch_size: int = Field(1, ge=1)
    mean: Union[Literal["auto", "dataset"], float] = "auto"
    scale: float = Field(1.0, gt=0)
    ignore_label: int = Field(255, ge=0)


class LossConfig(_Section):
    normalize: bool = False
    foreground_weight: Union[Literal["auto"], float] = "auto"

    @field_validator("foreground_weight")
    @classmethod
    def _weight_non_negative(cls, v):
        if not isinstance(v, str) and v < 0:
            raise ValueError("must be 'auto' or a number >= 0")
        return v


class SolverConfig(_Section):
    type: Literal["SGD", "Nesterov", "Adam"] = "SGD"
    base_lr: float = Field(recipes.SUMMED.base_lr, gt=0)  # the defaults are the reference's summed-loss recipe
    lr_policy: Literal["fixed", "step", "multistep", "poly", "exp", "inv"] = "fixed"
    gamma: Optional[float] = None
    stepsize: Optional[int] = Field(None, ge=1)
    stepvalue: Optional[list[int]] = None
    power: Optional[float] = None
    momentum: float = Field(recipes.SUMMED.momentum, ge=0, lt=1)
    momentum2: float = Field(0.999, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    iter_size: int = Field(1, ge=1)
    max_iter: int = Field(100000, ge=1)
    clip_gradients: Optional[float] = Field(None, gt=0)
    random_seed: Optional[int] = None

    @model_validator(mode="after")
    def _policy_parameters(self):
        needs = {"step": ("gamma", "stepsize"), "multistep": ("gamma", "stepvalue"), "poly": ("power",),
                 "exp": ("gamma",), "inv": ("gamma", "power")}.get(self.lr_policy, ())
        for key in needs:
            if getattr(self, key) is None:
                raise ValueError(f"lr_policy '{self.lr_policy}' needs solver.{key}")
        return self


class InitConfig(_Section):
    weights: Optional[str] = None


class TrainConfig(_Section):
    val_interval: int = Field(500, ge=1)
    snapshot_interval: int = Field(1000, ge=1)
    display_interval: int = Field(20, ge=1)
    smoothing: int = Field(20, ge=1)
    dead_loss_iters: int = Field(200, ge=1)
    tensorboard: bool = True


class Config(_Section):
    """The whole validated config. `source` is the YAML path it came from (None when built in code)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    solver: SolverConfig = Field(default_factory=SolverConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """The resolved config as plain data, ready for `yaml.safe_dump`."""
        return self.model_dump(mode="json")


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
    "list": "a list", "dict": "a mapping", "literal": "one of", "model": "a mapping",
}


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at the level of `loc` (its parent path) in the Config tree."""
    cls = model
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        cls = field.annotation
    return list(cls.model_fields)


def validation_message(err: dict, where: str) -> str:
    """One line for pydantic error `err` (from `ValidationError.errors()`) in the file `where`, naming the
    dotted key and what it must be."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("int", "str"))))
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        loc = tuple(err["loc"])  # the unknown key as written, '[' and all
        key = ".".join(str(p) for p in loc)
        known = _known_keys(Config, loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
        hint = f"did you mean '{'.'.join(map(str, loc[:-1] + (close[0],)))}'?" if close else \
            f"valid keys here: {', '.join(known)}"
        return f"{where}: unknown key '{key}'; {hint}"
    got = err.get("input")
    if kind == "literal_error":
        return f"{where}: {key} must be {err['ctx']['expected']}, got {got!r}"
    for word, text in _TYPE_WORDS.items():
        if kind.startswith(word + "_") and kind.endswith(("_type", "_parsing", "_from_float", "_fraction")):
            return f"{where}: {key} must be {text}, got {got!r} ({type(got).__name__})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {key}: {msg} (got {got!r})" if kind != "value_error" or loc else f"{where}: {msg}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b.c=VALUE' into (['a','b','c'], VALUE parsed as YAML). Raises ConfigError."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. --set solver.base_lr=1e-4")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: empty part in key {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.problem})") from None
    return parts, _coerce_number(parsed)


def _coerce_number(value: Any) -> Any:
    # YAML 1.1 reads 1e-4 (no dot) as a string; users mean a number.
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if math.isfinite(number) and any(c in value.lower() for c in ".e"):
            return number
    return value


def _coerce_numbers(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _coerce_numbers(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_coerce_numbers(v) for v in tree]
    return _coerce_number(tree)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of `raw` with each 'dotted.key=value' override set (sections created as needed)."""
    out = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a section")
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def validate_config(raw: Any, where: str = "config") -> Config:
    """Validate a plain mapping into a Config. Raises ConfigError naming `where` and the key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections (model:, data:, ...)")
    try:
        return Config.model_validate(_coerce_numbers(raw))
    except ValidationError as exc:
        raise ConfigError(validation_message(exc.errors()[0], where)) from None


def read_text(path: str | Path, what: str) -> str:
    """The text of file `path`; ConfigError naming it as `what` when it is missing or unreadable."""
    path = Path(path)
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.__class__.__name__})") from None


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """`yaml.safe_load` of a file; ConfigError naming the file when missing or malformed."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load and validate a YAML config (None: all defaults), then apply `--set` overrides.

    Relative paths (PATH_KEYS: `data.root`, `init.weights`) written in the file are relative to the
    file's folder, so a config means the same from any working directory; paths given with `--set`
    are relative to the current directory, as typed on a command line. Both come back absolute.
    """
    raw = read_yaml(path, "config") if path is not None else {}
    where = str(path) if path is not None else "config"
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections (model:, data:, ...)")
    raw = raw or {}
    if path is not None:
        _absolute_paths(raw, Path(path).parent)
    merged = apply_overrides(raw, list(overrides))
    _absolute_paths(merged, Path.cwd())  # what the file gave is absolute already: only --set values change
    return validate_config(merged, where if not overrides else f"{where} (with --set)")


def _absolute_paths(raw: dict, base: Path) -> None:
    """Make the relative string values of PATH_KEYS in `raw` absolute against `base`, in place."""
    for section, key in PATH_KEYS:
        node = raw.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, str) and value:
            node[key] = os.path.abspath(os.path.join(base, os.path.expanduser(value)))


def config_differences(a: Config, b: Config) -> list[str]:
    """Lines 'key: old -> new' for every leaf that differs between two configs."""
    def leaves(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v
    left, right = dict(leaves(a.to_dict())), dict(leaves(b.to_dict()))
    return [f"{k}: {left.get(k)!r} -> {right.get(k)!r}" for k in sorted(set(left) | set(right))
            if left.get(k) != right.get(k)]


def foreground_weight(config: Config) -> float:
    """The weight of the foreground-only loss; `auto` left unresolved (no dataset) means 0."""
    w = config.loss.foreground_weight
    return 0.0 if isinstance(w, str) else float(w)


def input_mean(config: Config) -> float:
    """The mean subtracted from the input of a resolved config; `auto`/`dataset` left unresolved (no
    dataset, no weights that say) mean 0 (documented)."""
    return 0.0 if isinstance(config.data.mean, str) else float(config.data.mean)
