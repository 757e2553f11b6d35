"""The folder layout shared by make-proto, train, eval, infer and export.

A definition folder (what `fcnseg make-proto` writes) holds the resolved `config.yaml` and the three
prototxts, plus `inference.yaml` when the dataset is known. A run folder (what `fcnseg train` writes) is a
definition folder plus caffe.log, metrics.jsonl, plots, snapshots/, best.caffemodel and
final.caffemodel. Everything is written under a temporary name and renamed (`write_atomic`, the one
writer every module uses), so an interrupted write never leaves a half file behind. Snapshots are
snapshots/train_iter_N.{caffemodel,solverstate}; `snapshot_stem` writes and `snapshot_iteration` reads
those names, here only.

`inference.yaml` holds every fact inference needs besides the deploy net and the weights (classes,
intensity window, mean, scale, padding ...), copied from the config and the dataset when training
starts, so a run folder works on its own: moved, copied, or with its dataset deleted.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import yaml

from . import __version__
from .config import Config, load_config, read_yaml
from .dataset import DatasetInfo, input_mean, read_dataset, resolve_config
from .errors import ConfigError, DataError, RunError

CONFIG_FILE = "config.yaml"
TRAIN_VAL_FILE = "train_val.prototxt"
SOLVER_FILE = "solver.prototxt"
DEPLOY_FILE = "deploy.prototxt"
METRICS_FILE = "metrics.jsonl"
CAFFE_LOG = "caffe.log"
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_PREFIX = f"{SNAPSHOT_DIR}/train"  # Caffe appends _iter_N.caffemodel / _iter_N.solverstate
BEST_WEIGHTS = "best.caffemodel"
FINAL_WEIGHTS = "final.caffemodel"
EVAL_FILE = "eval.json"
INFERENCE_FILE = "inference.yaml"


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` for a temporary path next to `path`, then rename it to `path`.

    The temporary name (.NAME.tmpPID.SUFFIX) keeps the suffix, so writers that pick a format from it
    (matplotlib, numpy, PIL) write the right one. When `write` raises, the exception propagates and
    neither `path` nor the temporary file is left changed or behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename."""
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, then rename."""
    write_bytes_atomic(path, text.encode())


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 16 MiB blocks: a 553 MB caffemodel stays out of memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def deploy_size(config: Config, info: Optional[DatasetInfo] = None) -> tuple[int, int]:
    """The H, W written into deploy.prototxt: the dataset's tile, else model.deploy_size (the net is
    reshaped per image at inference anyway)."""
    if info is not None and info.tile:
        return info.tile, info.tile
    return tuple(config.model.deploy_size)


def val_batches(config: Config, info: Optional[DatasetInfo]) -> int:
    """Batches per pass over the val split, from the dataset's stored count (1 without a dataset)."""
    if info is None:
        return 1
    return max(1, math.ceil(info.samples("val") / config.data.batch_size))


def write_definition(config: Config, out_dir: str | Path, info: Optional[DatasetInfo] = None) -> dict[str, Path]:
    """Write config.yaml, train_val.prototxt, solver.prototxt and deploy.prototxt into `out_dir`, and
    inference.yaml when the dataset (`info`, from `read_dataset`) is given.

    `config` must be resolved (num_classes known). Both nets are checked with `geometry` (every crop
    offset, the score aligned with the input) before anything is written. Returns {file kind: path}.
    Raises ConfigError for geometry the net cannot support.
    """
    from .geometry import geometry_problems, phase_net  # noqa: PLC0415
    from .nets import deploy_net, train_val_net  # noqa: PLC0415 - these need pycaffe
    from .solver import solver_param  # noqa: PLC0415

    out = Path(out_dir)
    h, w = deploy_size(config, info)
    train_val, deploy = train_val_net(config), deploy_net(config, h, w)
    for name, net in ((TRAIN_VAL_FILE, phase_net(train_val, "TRAIN")), (DEPLOY_FILE, deploy)):
        problems = geometry_problems(net)
        if problems:
            raise ConfigError(f"model: the {name} fcnseg built is not aligned with its input "
                              f"({'; '.join(problems)}); use the default model.pad")
    texts = {
        TRAIN_VAL_FILE: str(train_val),
        SOLVER_FILE: str(solver_param(config, val_batches(config, info), TRAIN_VAL_FILE)),
        DEPLOY_FILE: str(deploy),
        CONFIG_FILE: yaml.safe_dump(config.to_dict(), sort_keys=False),
    }
    if info is not None:
        texts[INFERENCE_FILE] = yaml.safe_dump(inference_facts(config, info).to_dict(), sort_keys=False)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in texts.items():
        write_text_atomic(out / name, text)
        paths[name] = out / name
    return paths


# ---------------------------------------------------------------- what input a weights file expects

@dataclass(frozen=True)
class ExpectedInput:
    """The input a weights file was trained (or converted) for: (gray - mean) * scale, gray on 0-255."""

    mean: float
    scale: float
    source: str  # for reports: where mean and scale were found


def run_folder_of(weights: str | Path) -> Optional[Path]:
    """The run folder holding `weights` (RUN/best.caffemodel, RUN/snapshots/x.caffemodel), or None."""
    path = Path(weights).resolve()
    for folder in (path.parent, path.parent.parent):
        if (folder / CONFIG_FILE).is_file() and (folder / TRAIN_VAL_FILE).is_file():
            return folder
    return None


def expected_input(weights: str | Path) -> Optional[ExpectedInput]:
    """What input the caffemodel at `weights` expects, or None when nothing says.

    A model converted by `fcnseg weights convert` records its gray mean M (scale 1); weights trained by
    `fcnseg train` expect what their run's inference.yaml (else config.yaml) says. Raises WeightsError for an
    unreadable file, RunError for a broken inference.yaml.
    """
    from .caffemodel import recorded_gray_mean  # noqa: PLC0415 - needs pycaffe's caffe_pb2

    recorded = recorded_gray_mean(weights)
    if recorded is not None:
        return ExpectedInput(recorded, 1.0, f"recorded in {weights} by `fcnseg weights convert`")
    run = run_folder_of(weights)
    if run is None:
        return None
    if (run / INFERENCE_FILE).is_file():
        facts = read_inference(run)
        return ExpectedInput(facts.mean, facts.scale, f"the mean of the run {run} that trained it")
    data = load_config(run / CONFIG_FILE).data
    if isinstance(data.mean, str):
        return None
    return ExpectedInput(float(data.mean), float(data.scale), f"data.mean of the run {run} that trained it")

# ---- what inference needs ------------------------------------------------------------------------------

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

    def to_dict(self) -> dict:
        """Plain data for YAML or ONNX metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: object, where: str) -> "InferenceFacts":
        """Parse `to_dict`'s output (other keys are ignored); RunError naming `where` when a key is missing
        or malformed."""
        names = list(cls.__dataclass_fields__)
        missing = [n for n in names if n != "reader" and (not isinstance(raw, dict) or n not in raw)]
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


def inference_facts(config: Config, info: DatasetInfo) -> InferenceFacts:
    """The facts for a resolved `config` trained on the dataset `info` (from `read_dataset`)."""
    from .nets import input_multiple  # noqa: PLC0415

    model, k = config.model, config.model.num_classes
    return InferenceFacts(
        num_classes=k, classes=info.class_names(), ignore_label=config.data.ignore_label,
        window=info.window, mean=input_mean(config), scale=float(config.data.scale),
        input_channels=model.input_channels, pad=model.pad, arch=model.arch, stages=model.stages,
        net_stride=model.net_stride, input_multiple=input_multiple(model),
        dataset=None if config.data.root is None else str(config.data.root), reader=info.reader)


def read_inference(run_dir: Path) -> InferenceFacts:
    """The run's inference.yaml. A run written before it existed falls back to its dataset (RunError
    naming where it looked when that is gone too)."""
    path = run_dir / INFERENCE_FILE
    if path.is_file():
        try:
            raw = read_yaml(path, INFERENCE_FILE)
        except ConfigError as exc:
            raise RunError(str(exc)) from None
        return InferenceFacts.from_dict(raw, str(path))
    _, config = load_run(run_dir)
    root = config.data.root
    if root is None or not Path(root).is_dir():
        where = "it has no data.root" if root is None else \
            f"its dataset {root} (data.root in {run_dir / CONFIG_FILE}) is not found"
        raise RunError(f"{run_dir}: no {INFERENCE_FILE} (written by `fcnseg train` and by `make-proto` with a "
                       f"dataset), and {where}; write it with `fcnseg make-proto {run_dir / CONFIG_FILE} "
                       f"--set data.root=DATASET -o {run_dir}`")
    config = resolve_config(config)
    return inference_facts(config, read_dataset(root))


# ---- reading a run folder ------------------------------------------------------------------------------

def load_run(run_dir: str | Path) -> tuple[Path, Config]:
    """(run folder, its config) for a folder written by `fcnseg train` or `make-proto`; relative paths
    in its config.yaml are relative to the run folder. RunError when it is not a run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: not a run folder (no {CONFIG_FILE}); pass the folder `fcnseg train` wrote")
    return run_dir, load_config(run_dir / CONFIG_FILE)


def snapshot_stem(iteration: int) -> str:
    """The file stem Caffe gives the snapshot of `iteration` under SNAPSHOT_PREFIX (train_iter_N)."""
    return f"{Path(SNAPSHOT_PREFIX).name}_iter_{iteration}"


def snapshot_iteration(path: str | Path) -> Optional[int]:
    """The iteration in a snapshot's name (…_iter_N.caffemodel / .solverstate), None for other names."""
    _, sep, number = Path(path).stem.rpartition("_iter_")
    return int(number) if sep and number.isdigit() else None


def newest_snapshot(run_dir: Path, suffix: str) -> Optional[Path]:
    """The snapshot with the highest iteration in run_dir/snapshots ending in `suffix` (".caffemodel" or
    ".solverstate"; complete ones only, the partial ones live in a hidden subfolder), or None."""
    found = [(it, p) for p in (Path(run_dir) / SNAPSHOT_DIR).glob(f"*_iter_*{suffix}")
             if (it := snapshot_iteration(p)) is not None]
    return max(found)[1] if found else None


def newest_solverstate(run_dir: Path) -> Optional[Path]:
    """The solverstate with the highest iteration in run_dir/snapshots (what --resume continues from)."""
    return newest_snapshot(run_dir, ".solverstate")


def run_weights(run_dir: Path) -> Path:
    """best.caffemodel, else final.caffemodel, else the newest snapshot; RunError when none exist."""
    for name in (BEST_WEIGHTS, FINAL_WEIGHTS):
        if (run_dir / name).is_file():
            return run_dir / name
    snap = newest_snapshot(run_dir, ".caffemodel")
    if snap is not None:
        return snap
    raise RunError(f"{run_dir}: no weights (best.caffemodel, final.caffemodel or snapshots/); "
                   "train first, or pass --weights")


def load_deploy_net(run_dir: Path, weights: Optional[str | Path] = None, gpu: Optional[int] = None):
    """(pycaffe TEST net of the run's deploy.prototxt with its weights, the weights' path).

    The weights are `weights`, else the run's best, else final, else newest snapshot. Everything is
    checked before Caffe reads a file (a Caffe CHECK aborts the process): RunError for a missing or
    broken deploy.prototxt or weights file; WeightsError when the weights do not fit the net;
    CaffeUnavailableError for a `gpu` this Caffe cannot use.
    """
    from google.protobuf import text_format  # noqa: PLC0415

    from .caffe_env import caffe_pb2, set_device  # noqa: PLC0415
    from .caffemodel import load_trained  # noqa: PLC0415
    from .nets import fixed_layers  # noqa: PLC0415

    run_dir, config = load_run(run_dir)
    deploy = run_dir / DEPLOY_FILE
    if not deploy.is_file():
        raise RunError(f"{run_dir}: no {DEPLOY_FILE}; write it with `fcnseg make-proto {run_dir / CONFIG_FILE} "
                       f"-o {run_dir}`")
    weights_path = Path(weights) if weights is not None else run_weights(run_dir)
    if not weights_path.is_file():
        raise RunError(f"{weights_path}: weights file not found; pass an existing --weights or leave it out")
    try:
        text_format.Parse(deploy.read_text(), caffe_pb2().NetParameter())
    except text_format.ParseError as exc:
        raise RunError(f"{deploy}: not a valid prototxt ({exc}); rewrite it with `fcnseg make-proto`") from None
    caffe = set_device(gpu)
    net = caffe.Net(str(deploy), caffe.TEST)
    if "score" not in net.blobs or net.blobs["data"].data.shape[1] != config.model.input_channels:
        raise RunError(f"{deploy}: expected an input blob `data` with {config.model.input_channels} channel(s) "
                       "and an output blob `score`; rewrite it with `fcnseg make-proto`")
    load_trained(net, weights_path, fixed_layers(config.model))
    return net, weights_path
