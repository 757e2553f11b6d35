"""solver.prototxt from the `solver.*` keys.

`solver_param(config, val_batches)` returns a caffe_pb2.SolverParameter. The solver never tests or
snapshots on its own: fcnseg's launcher validates through the solver's test net (test_interval is set
beyond max_iter, exactly as the FCN reference does) and snapshots under temporary names.
"""
from __future__ import annotations

import math
from typing import Optional

from .caffe_env import caffe_pb2
from .config import Config
from .dataset import DatasetInfo
from .files import SNAPSHOT_PREFIX, TRAIN_VAL_FILE


def val_batches(config: Config, info: Optional[DatasetInfo]) -> int:
    """Batches per pass over the val split, from the dataset's stored count (1 without a dataset)."""
    if info is None:
        return 1
    return max(1, math.ceil(info.samples("val") / config.data.batch_size))


def solver_param(config: Config, val_batches: int = 1, net_path: str = TRAIN_VAL_FILE):
    """SolverParameter for `config`; `val_batches` batches make one pass over the val split."""
    pb = caffe_pb2()
    s = config.solver
    p = pb.SolverParameter()
    p.net = net_path
    p.type = s.type
    p.base_lr = s.base_lr
    p.lr_policy = s.lr_policy
    for key in ("gamma", "power"):
        if getattr(s, key) is not None:
            setattr(p, key, getattr(s, key))
    if s.stepsize is not None:
        p.stepsize = s.stepsize
    if s.stepvalue:
        p.stepvalue.extend(s.stepvalue)
    if s.type != "Adam" or s.momentum:
        p.momentum = s.momentum
    if s.type == "Adam":
        p.momentum2 = s.momentum2
        p.delta = 1e-8
    p.weight_decay = s.weight_decay
    p.iter_size = s.iter_size
    p.max_iter = s.max_iter
    if s.clip_gradients is not None:
        p.clip_gradients = s.clip_gradients
    if s.random_seed is not None:
        p.random_seed = s.random_seed
    # Validation runs through solver.test_nets[0] (it shares the training weights), driven by fcnseg.
    p.test_iter.append(max(1, int(val_batches)))
    p.test_interval = s.max_iter + 1
    p.test_initialization = False
    p.display = 0
    p.average_loss = config.train.smoothing
    p.snapshot = 0
    p.snapshot_prefix = SNAPSHOT_PREFIX
    p.solver_mode = pb.SolverParameter.CPU
    return p
