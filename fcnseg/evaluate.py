"""`fcnseg eval`: score a run's weights on a split of its dataset (or another dataset).

`evaluate(run_dir, data=None, weights=None, split="val")` returns the metrics dict and writes
eval.json next to the weights' run (RUN_DIR/eval.json, or WEIGHTS.eval.json for outside weights).
It asks `nets` for the run's net with the TEST phase reading `split`, and scores it with `metrics.validate`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from . import files, integrity, runs, verify
from .caffe_env import CaffeLogRedirect, require_gpu, set_device
from .caffemodel import load_trained
from .errors import RunError
from .metrics import validate
from .nets import fixed_layers, train_val_net
from .resolve import resolve


def evaluate(run_dir: str | Path, data: Optional[str] = None, weights: Optional[str] = None,
             split: str = "val", gpu: Optional[int] = None) -> tuple[dict, Path]:
    """Metrics of the run's weights on `split` of its dataset (or of `data`). Returns (result, eval path).

    On the CPU, or GPU `gpu`; CaffeUnavailableError (before anything is written) for a GPU Caffe cannot use.
    """
    run_dir, config = runs.load_run(run_dir)
    if data is not None:
        config.data.root = str(data)
    if config.data.root is None:
        raise RunError(f"{run_dir}: the run has no data.root; pass --data DIR")
    if not Path(config.data.root).is_dir():
        where = "--data" if data is not None else f"data.root in {run_dir / files.CONFIG_FILE}"
        raise RunError(f"{config.data.root}: dataset not found ({where}); eval needs the dataset, "
                       "pass --data DIR where it is now")
    resolved = resolve(config)
    config, samples = resolved.config, resolved.dataset.samples(split)
    if samples < 1:
        raise RunError(f"{config.data.root}: the {split} split is empty")
    weights_path = Path(weights) if weights else runs.run_weights(run_dir)
    if not weights_path.is_file():
        raise RunError(f"{weights_path}: weights file not found")
    integrity.check(weights_path)
    verify.check_dataset(config.data.root, info=resolved.dataset)  # Caffe's Data layer aborts on a damaged LMDB
    require_gpu(gpu)

    net_param = train_val_net(config, val_split=split)
    proto = run_dir / f".eval.{split}.prototxt"
    files.write_text_atomic(proto, str(net_param))
    caffe = set_device(gpu)
    try:
        with CaffeLogRedirect(run_dir / files.CAFFE_LOG):
            net = caffe.Net(str(proto), caffe.TEST)
            load_trained(net, weights_path, fixed_layers(config.model))
            result = validate(net, config.model.num_classes, samples)
    finally:
        proto.unlink(missing_ok=True)  # a refused weights file leaves no scratch net behind
    result.update(split=split, weights=str(weights_path), data=str(config.data.root), samples=samples)
    out = run_dir / files.EVAL_FILE if weights is None or weights_path.parent == run_dir \
        else weights_path.with_name(weights_path.name + ".eval.json")
    files.write_text_atomic(out, json.dumps(result, indent=2))
    return result, out
