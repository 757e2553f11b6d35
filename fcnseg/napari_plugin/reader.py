"""The reader: a run folder opened in napari shows the val images of its dataset, their labels and the run's
predictions (the labels `fcnseg eval` scores)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import lmdb
import numpy as np

from .. import files, runs
from ..dataset import datum_array
from ..errors import RunError
from ..images import net_input
from ..predict import load_predictor, predict

MAX_IMAGES = 64  # a val split larger than this shows its first MAX_IMAGES records


def get_reader(path) -> Optional[Callable]:
    """`read_run` for a run folder (config.yaml and inference.yaml in it), None for anything else."""
    path = Path(path[0] if isinstance(path, list) else path)
    if path.is_dir() and (path / files.CONFIG_FILE).is_file() and (path / files.INFERENCE_FILE).is_file():
        return read_run
    return None


def lmdb_arrays(path: str, limit: int) -> list[np.ndarray]:
    """The first `limit` records of a dataset LMDB as 2-D uint8 arrays, in key order."""
    env = lmdb.open(path, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            out = []
            for _, raw in txn.cursor():
                if len(out) == limit:
                    break
                out.append(datum_array(raw)[0])
            return out
    finally:
        env.close()


def read_run(path) -> list[tuple]:
    """Layers for a run folder: its dataset's val images, their labels, and the run's predicted labels (the val
    images are stored windowed, so they go to the net as training's Data layer feeds them). RunError naming the
    dataset when it is not where the run's config says."""
    run_dir, config = runs.load_run(Path(path[0] if isinstance(path, list) else path))
    root = config.data.root
    lmdbs = files.dataset_paths(root)
    if root is None or not Path(lmdbs["val_images"]).is_dir():
        raise RunError(f"{run_dir}: the val split of its dataset ({lmdbs['val_images']}; data.root in "
                       f"{run_dir / files.CONFIG_FILE}) is not found; the reader shows that split")
    predictor = load_predictor(run_dir)
    images = lmdb_arrays(lmdbs["val_images"], MAX_IMAGES)
    truth = lmdb_arrays(lmdbs["val_labels"], MAX_IMAGES)
    facts = predictor.facts
    predicted = [predict(predictor, net_input(g, facts.mean, facts.scale)).argmax(axis=0).astype(np.uint8)
                 for g in images]
    name = run_dir.name
    if len({a.shape for a in images}) == 1:
        return [(np.stack(images), {"name": f"{name} val images"}, "image"),
                (np.stack(truth), {"name": f"{name} val labels", "opacity": 0.4, "visible": False}, "labels"),
                (np.stack(predicted), {"name": f"{name} predictions"}, "labels")]
    out = []
    for i, (g, t, p) in enumerate(zip(images, truth, predicted)):  # images of different sizes: one set each
        out += [(g, {"name": f"{name} val {i}"}, "image"),
                (t, {"name": f"{name} val {i} labels", "visible": False}, "labels"),
                (p, {"name": f"{name} val {i} predictions"}, "labels")]
    return out
