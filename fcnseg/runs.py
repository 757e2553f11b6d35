"""The folder layout shared by make-proto, train, eval and infer.

A definition folder (what `fcnseg make-proto` writes) holds the resolved `config.yaml` and the three
prototxts. A run folder (what `fcnseg train` writes) is a definition folder plus caffe.log,
metrics.jsonl, plots, snapshots/, best.caffemodel and final.caffemodel. Everything is written under a
temporary name and renamed, so an interrupted write never leaves a half file behind.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from .config import Config, load_config
from .errors import DataError

CONFIG_FILE = "config.yaml"
TRAIN_VAL_FILE = "train_val.prototxt"
SOLVER_FILE = "solver.prototxt"
DEPLOY_FILE = "deploy.prototxt"
METRICS_FILE = "metrics.jsonl"
CAFFE_LOG = "caffe.log"
SNAPSHOT_DIR = "snapshots"
BEST_WEIGHTS = "best.caffemodel"
FINAL_WEIGHTS = "final.caffemodel"
EVAL_FILE = "eval.json"


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def deploy_size(config: Config, meta: dict | None = None) -> tuple[int, int]:
    """The H, W written into deploy.prototxt (the net is reshaped per image at inference anyway)."""
    if meta and meta.get("tile"):
        return int(meta["tile"]), int(meta["tile"])
    return tuple(config.model.deploy_size)


def val_batches(config: Config, meta: dict | None) -> int:
    """Batches per pass over the val split, from the dataset's stored count (1 without a dataset)."""
    if not meta:
        return 1
    count = int(meta.get("splits", {}).get("val", {}).get("samples", 0))
    return max(1, math.ceil(count / config.data.batch_size))


def write_definition(config: Config, out_dir: str | Path, meta: dict | None = None) -> dict[str, Path]:
    """Write config.yaml, train_val.prototxt, solver.prototxt and deploy.prototxt into `out_dir`.

    `config` must be resolved (num_classes known). Returns {file kind: path}. Raises ConfigError for
    geometry the net cannot support, before anything is written.
    """
    from .nets import deploy_net, train_val_net  # noqa: PLC0415 - these need pycaffe
    from .solver import solver_param  # noqa: PLC0415

    out = Path(out_dir)
    h, w = deploy_size(config, meta)
    texts = {
        TRAIN_VAL_FILE: str(train_val_net(config)),
        SOLVER_FILE: str(solver_param(config, val_batches(config, meta), TRAIN_VAL_FILE)),
        DEPLOY_FILE: str(deploy_net(config, h, w)),
        CONFIG_FILE: yaml.safe_dump(config.to_dict(), sort_keys=False),
    }
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
    `fcnseg train` expect what their run's config.yaml says. Raises WeightsError for an unreadable file.
    """
    from .caffemodel import recorded_gray_mean  # noqa: PLC0415 - needs pycaffe's caffe_pb2

    recorded = recorded_gray_mean(weights)
    if recorded is not None:
        return ExpectedInput(recorded, 1.0, f"recorded in {weights} by `fcnseg weights convert`")
    run = run_folder_of(weights)
    if run is None:
        return None
    data = load_config(run / CONFIG_FILE).data
    if isinstance(data.mean, str):
        return None
    return ExpectedInput(float(data.mean), float(data.scale), f"data.mean of the run {run} that trained it")
