"""File names and file writing: the names of a run folder and a dataset folder, the one atomic writer,
and the file hash. Every module may import this one; it imports nothing from fcnseg.

A definition folder (what `fcnseg make-proto` writes) holds the resolved `config.yaml` and the three
prototxts, plus `inference.yaml` when the dataset is known. A run folder (what `fcnseg train` writes) is a
definition folder plus caffe.log, metrics.jsonl, plots, snapshots/, best.caffemodel and final.caffemodel.
Snapshots are snapshots/train_iter_N.{caffemodel,solverstate}; `snapshot_stem` writes and
`snapshot_iteration` reads those names, here only. A dataset folder (what `fcnseg data import` writes) holds
dataset.yaml and one LMDB per split and kind (`dataset_paths`).

Everything is written under a temporary name, fsync'd and renamed (`write_atomic`), so an interrupted write
never leaves a half file behind and a power loss leaves the old file or the new one; logs grow by whole,
fsync'd lines (`append_line`).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Optional

# ---- the run folder
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

# ---- the dataset folder
DATASET_FILE = "dataset.yaml"
VAL_OBJECTS_FILE = "val_objects.npz"  # --instances: the whole val images and their object ids (eval --instances)
PLACEHOLDER_ROOT = "DATA_ROOT"  # written into prototxts when no data.root is set
SPLITS = ("train", "val")


def dataset_paths(root: Optional[str]) -> dict[str, str]:
    """LMDB paths keyed 'train_images', 'train_labels', 'val_images', 'val_labels' (under PLACEHOLDER_ROOT
    when `root` is None, so prototxts can be written without data on disk)."""
    base = root if root is not None else PLACEHOLDER_ROOT
    return {f"{split}_{kind}": str(Path(base) / f"{split}_{kind}_lmdb")
            for split in SPLITS for kind in ("images", "labels")}


def snapshot_stem(iteration: int) -> str:
    """The file stem Caffe gives the snapshot of `iteration` under SNAPSHOT_PREFIX (train_iter_N)."""
    return f"{Path(SNAPSHOT_PREFIX).name}_iter_{iteration}"


def snapshot_iteration(path: str | Path) -> Optional[int]:
    """The iteration in a snapshot's name (…_iter_N.caffemodel / .solverstate), None for other names."""
    _, sep, number = Path(path).stem.rpartition("_iter_")
    return int(number) if sep and number.isdigit() else None


def run_folder_of(weights: str | Path) -> Optional[Path]:
    """The run folder holding `weights` (RUN/best.caffemodel, RUN/snapshots/x.caffemodel), or None."""
    path = Path(weights).resolve()
    for folder in (path.parent, path.parent.parent):
        if (folder / CONFIG_FILE).is_file() and (folder / TRAIN_VAL_FILE).is_file():
            return folder
    return None


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
        fsync_file(tmp)  # the bytes reach the disk before the rename publishes them (power loss: old or new)
        tmp.replace(path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk (os.fsync), whoever wrote it (Caffe, PIL, numpy)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def append_line(path: str | Path, line: str) -> None:
    """Append one line (newline added) to a log such as metrics.jsonl, fsync'd before returning, so a
    power loss keeps every line written before it; a kill can only cut the line being written."""
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


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
