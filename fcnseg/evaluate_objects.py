"""`fcnseg eval --instances`: the run's objects on the val frames, scored as the field scores them.

`evaluate_objects(run_dir, data, weights, gpu)` runs the run's net on each whole val frame that
`data import --instances` kept (`dataset.read_val_objects`: the windowed image and its true object ids),
tiled as `infer` tiles it, splits the probabilities into objects (`objects.label_objects`) and scores them
against the true ones (`object_metrics.score_objects`, pooled over frames by `pool_scores`). It also gives the
foreground-vs-background IU of the frames (interior and boundary counted as foreground). `add_to_eval` puts
the result into eval.json under `objects`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from . import files, runs
from .dataset import read_val_objects
from .errors import RunError
from .images import net_input
from .object_metrics import pool_scores, score_objects
from .objects import ObjectRoles, label_objects
from .predict import load_predictor, predict, tiling_for


def evaluate_objects(run_dir: str | Path, data: Optional[str] = None, weights: Optional[str] = None,
                     gpu: Optional[int] = None) -> dict:
    """Object scores of the run's weights on the val frames of its dataset (or of `data`): {'frames': {source
    name: scores}, 'overall': pooled scores, 'foreground_mean_iu', 'foreground_iu', 'background_iu'}.

    Raises RunError when the net was not trained for objects or the dataset is missing, DataError when the
    dataset was not imported with --instances.
    """
    run_dir, config = runs.load_run(run_dir)
    root = data if data is not None else config.data.root
    if root is None or not Path(root).is_dir():
        raise RunError(f"{root}: dataset not found; eval --instances needs the dataset imported with "
                       "--instances, pass --data DIR where it is now")
    predictor = load_predictor(run_dir, weights, gpu)
    roles = ObjectRoles.from_facts(predictor.facts.objects, predictor.num_classes, str(run_dir))
    facts = predictor.facts
    frames, confusion = {}, np.zeros((2, 2), np.int64)
    for name, gray, true_ids in read_val_objects(root):
        x = net_input(gray, facts.mean, facts.scale)
        probs = predict(predictor, x, tiling_for(x.shape, None, None, predictor.stride))
        frames[name] = score_objects(true_ids, label_objects(probs, roles))
        predicted = probs.argmax(axis=0) != 0
        confusion += np.bincount(2 * (true_ids > 0).ravel() + predicted.ravel(), minlength=4).reshape(2, 2)
    if not frames:
        raise RunError(f"{root}: no val frames to score")
    iu = np.diag(confusion) / np.maximum(confusion.sum(0) + confusion.sum(1) - np.diag(confusion), 1)
    return {"frames": frames, "overall": pool_scores(list(frames.values())), "background_iu": float(iu[0]),
            "foreground_iu": float(iu[1]), "foreground_mean_iu": float(iu.mean()), "data": str(root)}


def add_to_eval(eval_path: Path, objects: dict) -> None:
    """Put `objects` into the eval.json at `eval_path` (written by `evaluate`) under the key `objects`."""
    result = json.loads(Path(eval_path).read_text())
    result["objects"] = objects
    files.write_text_atomic(Path(eval_path), json.dumps(result, indent=2))
