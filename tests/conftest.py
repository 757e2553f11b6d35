"""Shared test fixtures: quiet Caffe, tiny LMDB datasets, and a CLI runner."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")

REPO = Path(__file__).resolve().parents[1]
SEED_DIR = REPO / "tests" / "fixtures" / "seed"   # a copy of shared/fixtures/seed: the seed's own files


def write_lmdb(path: Path, arrays: list[np.ndarray]) -> None:
    """Write uint8 arrays (C,H,W) as Caffe Datums into a new LMDB at `path`."""
    import lmdb

    from fcnseg.dataset import datum_bytes
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i, arr in enumerate(arrays):
            txn.put(b"%08d" % i, datum_bytes(arr))
    env.close()


def synthetic_pairs(n: int, size: int = 32, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Bright discs on a dark noisy background; labels 1 inside the discs. Learnable in a few steps."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n):
        label = np.zeros((size, size), np.uint8)
        for _ in range(3):
            cy, cx, r = rng.integers(4, size - 4, 2).tolist() + [int(rng.integers(3, 6))]
            label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        image = np.clip(40 + 150 * label + rng.normal(0, 15, label.shape), 0, 255).astype(np.uint8)
        images.append(image[None])
        labels.append(label[None])
    return images, labels


def write_tiny_dataset(root: Path, n_train: int = 8, n_val: int = 4, size: int = 32, seed: int = 0) -> Path:
    """A dataset folder in the layout of `fcnseg data import` (LMDBs + dataset.yaml)."""
    import yaml
    root.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1)):
        images, labels = synthetic_pairs(n, size, s)
        write_lmdb(root / f"{split}_images_lmdb", images)
        write_lmdb(root / f"{split}_labels_lmdb", labels)
    meta = {"num_classes": 2, "mean": 80.0, "tile": size,
            "splits": {"train": {"samples": n_train}, "val": {"samples": n_val}}}
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "tiny")


@pytest.fixture
def run_cli():
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from fcnseg.cli import main

    def run(*args, capsys=None):
        return main([str(a) for a in args])
    return run


# ---- tiny run folders with random weights (infer, export) ---------------------------------------------

WINDOW = {"low": 100.0, "high": 4000.0, "method": "fixed"}
K = 3


def make_run(root: Path, weights: bool = True, seed: int = 0, window=WINDOW, bias_std: float = 0.0,
             **model) -> Path:
    """A run folder (config, prototxts, inference.yaml, best.caffemodel with random He-scaled weights and
    N(0, bias_std) biases) and its dataset.yaml (no LMDBs)."""
    import caffe
    import yaml

    from fcnseg import files, integrity, runs
    from fcnseg.config import validate_config
    from fcnseg.resolve import resolve
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "dataset.yaml").write_text(yaml.safe_dump(
        {"num_classes": K, "mean": 90.0, "window": window, "input_channels": 1}))
    model = {"arch": "fcn32s", "stages": 2, "fc_channels": 8, "dropout": 0, "pad": "minimal",
             "deploy_size": [64, 64], **model}
    resolved = resolve(validate_config({"model": model, "data": {"root": str(data), "scale": 0.02}}))
    run = root / "run"
    runs.write_definition(runs.build_definition(resolved), run)
    if weights:
        net = caffe.Net(str(run / files.DEPLOY_FILE), caffe.TEST)
        rng = np.random.default_rng(seed)
        for name, blobs in net.params.items():
            if name.startswith("upscore"):
                continue  # fixed bilinear kernels
            for b in blobs:
                fan_in = int(np.prod(b.data.shape[1:])) if b.data.ndim > 1 else 0
                b.data[...] = rng.normal(0, (2.0 / fan_in) ** 0.5, b.data.shape) if fan_in else \
                    (rng.normal(0, bias_std, b.data.shape) if bias_std else 0.0)
        net.save(str(run / files.BEST_WEIGHTS))
        integrity.record(run / files.BEST_WEIGHTS)  # as train records what it writes (fcnseg.integrity)
    return run


def make_objects_run(root: Path) -> Path:
    """`make_run` (random weights, biases drawn so that all K = 3 classes occur) whose inference.yaml says it was
    trained for objects (interior 1, boundary 2, min_area 4), as a dataset imported with --instances makes it."""
    import yaml

    from fcnseg import files
    run = make_run(root, bias_std=1.0, seed=3)
    facts = yaml.safe_load((run / files.INFERENCE_FILE).read_text())
    facts["objects"] = {"interior": 1, "boundary": 2, "min_area": 4}
    (run / files.INFERENCE_FILE).write_text(yaml.safe_dump(facts))
    return run


def raw_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint16 blobs and noise spanning the test window."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    smooth = np.sin(yy / 9.0) * np.cos(xx / 7.0)
    return np.clip(2000 + 1500 * smooth + rng.normal(0, 200, (h, w)), 0, 65535).astype(np.uint16)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """VGG16-shaped caffemodels written by tests/vgg_fixture.py: {'narrow': 3-ch V1 with channels / 16 and fc 64,
    'loadable': 3-ch V1 with the real conv widths and fc 64, 'loadable_1ch': its `fcnseg weights convert`}."""
    from fcnseg import weights
    from vgg_fixture import NARROW_WIDTHS, Vgg16Spec, write_vgg16_caffemodel
    root = tmp_path_factory.mktemp("vgg")
    out = {"narrow": write_vgg16_caffemodel(root / "narrow.caffemodel",
                                            Vgg16Spec(widths=NARROW_WIDTHS, fc=64, classes=10)),
           "loadable": write_vgg16_caffemodel(root / "loadable.caffemodel", Vgg16Spec(fc=64, classes=10))}
    weights.convert_vgg16(out["loadable"], root / "loadable_1ch.caffemodel")
    out["loadable_1ch"] = root / "loadable_1ch.caffemodel"
    return out


def run_main(capsys, *args):
    """`fcnseg ARGS` in-process: (exit code, stdout, stderr)."""
    from fcnseg.cli import main
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    """The single `error: ...` line a refused command prints on stderr (progress bars aside), no traceback."""
    import re
    lines = [line for line in err.splitlines() if line.strip() and not re.search(r"\d+%\|", line)]  # not tqdm
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]
