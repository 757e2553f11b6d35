"""The run folder: what make-proto, train, eval, infer and export read and write there.

A definition (`build_definition`) is the three nets of one resolved config, built once and checked with
`geometry`; `write_definition` writes it as config.yaml, train_val.prototxt, solver.prototxt,
deploy.prototxt and, when the dataset is known, inference.yaml (the file names: `files`). A run folder (what
`fcnseg train` writes) adds caffe.log, metrics.jsonl, plots, snapshots/, best.caffemodel and
final.caffemodel.

`inference.yaml` holds every fact inference needs besides the deploy net and the weights (classes,
intensity window, mean, scale, padding ...), copied from the config and the dataset when training
starts, so a run folder works on its own: moved, copied, or with its dataset deleted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml
from google.protobuf import text_format

from . import integrity
from .caffe_env import caffe_pb2, set_device
from .caffemodel import load_trained
from .config import Config, input_mean, load_config
from .dataset import DatasetInfo
from .errors import ConfigError, DataError, RunError
from .files import (
    BEST_WEIGHTS,
    CONFIG_FILE,
    DEPLOY_FILE,
    FINAL_WEIGHTS,
    INFERENCE_FILE,
    SNAPSHOT_DIR,
    SOLVER_FILE,
    TRAIN_VAL_FILE,
    snapshot_iteration,
    write_text_atomic,
)
from .geometry import geometry_problems, phase_net
from .inputs import InferenceFacts, read_inference_file
from .nets import deploy_net, fixed_layers, input_multiple, train_val_net
from .resolve import Resolved, resolve
from .solver import solver_param, val_batches


def deploy_size(config: Config, info: Optional[DatasetInfo] = None) -> tuple[int, int]:
    """The H, W written into deploy.prototxt: the dataset's tile, else model.deploy_size (the net is
    reshaped per image at inference anyway)."""
    if info is not None and info.tile:
        return info.tile, info.tile
    return tuple(config.model.deploy_size)


@dataclass(frozen=True)
class Definition:
    """The nets of one resolved config, built once: train_val and deploy (caffe_pb2.NetParameter) and the
    solver (caffe_pb2.SolverParameter, its net path the run folder's own train_val.prototxt)."""

    resolved: Resolved
    train_val: object
    solver: object
    deploy: object


def build_definition(resolved: Resolved) -> Definition:
    """Build train_val, solver and deploy for `resolved`; both nets are checked with `geometry` (every crop
    offset, the score aligned with the input). Raises ConfigError for geometry the net cannot support."""
    config, info = resolved.config, resolved.dataset
    h, w = deploy_size(config, info)
    train_val, deploy = train_val_net(config), deploy_net(config, h, w)
    for name, net in ((TRAIN_VAL_FILE, phase_net(train_val, "TRAIN")), (DEPLOY_FILE, deploy)):
        problems = geometry_problems(net)
        if problems:
            raise ConfigError(f"model: the {name} fcnseg built is not aligned with its input "
                              f"({'; '.join(problems)}); use the default model.pad")
    return Definition(resolved, train_val, solver_param(config, val_batches(config, info), TRAIN_VAL_FILE), deploy)


def write_definition(definition: Definition, out_dir: str | Path) -> dict[str, Path]:
    """Write config.yaml, train_val.prototxt, solver.prototxt and deploy.prototxt into `out_dir`, and
    inference.yaml when the dataset is known. Returns {file name: path}. Raises DataError when `out_dir` is a
    file."""
    config, info = definition.resolved.config, definition.resolved.dataset
    out = Path(out_dir)
    texts = {
        TRAIN_VAL_FILE: str(definition.train_val),
        SOLVER_FILE: str(definition.solver),
        DEPLOY_FILE: str(definition.deploy),
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


def inference_facts(config: Config, info: DatasetInfo) -> InferenceFacts:
    """The facts for a resolved `config` trained on the dataset `info` (from `read_dataset`)."""
    model, k = config.model, config.model.num_classes
    return InferenceFacts(
        num_classes=k, classes=info.class_names(), ignore_label=config.data.ignore_label,
        window=info.window, mean=input_mean(config), scale=float(config.data.scale),
        input_channels=model.input_channels, pad=model.pad, arch=model.arch, stages=model.stages,
        net_stride=model.net_stride, input_multiple=input_multiple(model),
        dataset=None if config.data.root is None else str(config.data.root), reader=info.reader,
        objects=object_facts(info))


def object_facts(info: DatasetInfo) -> Optional[dict]:
    """What `infer --instances` needs of a dataset imported with --instances: the interior and boundary class
    ids, the smallest object kept (half the smallest train object, at least 16 px) and the smallest kept where it
    touches the image border (dataset.yaml `instances.border`); None otherwise."""
    if info.object_roles is None:
        return None
    areas = ((info.instances.get("splits") or {}).get("train") or {}).get("area_px")
    border = int((info.instances.get("border") or {}).get("drop_below_px") or 0)
    return {**info.object_roles, "min_area": max(16, int(areas[0]) // 2) if areas else 16,
            "border_min_area": border}


def read_inference(run_dir: Path) -> InferenceFacts:
    """The run's inference.yaml. A run written before it existed falls back to its dataset (RunError
    naming where it looked when that is gone too)."""
    path = run_dir / INFERENCE_FILE
    if path.is_file():
        return read_inference_file(path)
    _, config = load_run(run_dir)
    root = config.data.root
    if root is None or not Path(root).is_dir():
        where = "it has no data.root" if root is None else \
            f"its dataset {root} (data.root in {run_dir / CONFIG_FILE}) is not found"
        raise RunError(f"{run_dir}: no {INFERENCE_FILE} (written by `fcnseg train` and by `make-proto` with a "
                       f"dataset), and {where}; write it with `fcnseg make-proto {run_dir / CONFIG_FILE} "
                       f"--set data.root=DATASET -o {run_dir}`")
    resolved = resolve(config)
    return inference_facts(resolved.config, resolved.dataset)


# ---- reading a run folder ------------------------------------------------------------------------------

def load_run(run_dir: str | Path) -> tuple[Path, Config]:
    """(run folder, its config) for a folder written by `fcnseg train` or `make-proto`; relative paths
    in its config.yaml are relative to the run folder. RunError when it is not a run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"{run_dir}: not a run folder (no {CONFIG_FILE}); pass the folder `fcnseg train` wrote")
    return run_dir, load_config(run_dir / CONFIG_FILE)


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
    run_dir, config = load_run(run_dir)
    deploy = run_dir / DEPLOY_FILE
    if not deploy.is_file():
        raise RunError(f"{run_dir}: no {DEPLOY_FILE}; write it with `fcnseg make-proto {run_dir / CONFIG_FILE} "
                       f"-o {run_dir}`")
    weights_path = Path(weights) if weights is not None else run_weights(run_dir)
    if not weights_path.is_file():
        raise RunError(f"{weights_path}: weights file not found; pass an existing --weights or leave it out")
    integrity.check(weights_path)
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
