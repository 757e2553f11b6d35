"""The folder layout shared by make-proto, train, eval and infer.

A definition folder (what `fcnseg make-proto` writes) holds the resolved `config.yaml` and the three
prototxts. A run folder (what `fcnseg train` writes) is a definition folder plus caffe.log,
metrics.jsonl, plots, snapshots/, best.caffemodel and final.caffemodel. Everything is written under a
temporary name and renamed, so an interrupted write never leaves a half file behind.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from .config import Config
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
