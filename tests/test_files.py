"""fcnseg/files.py: the folder names, the one atomic writer, the file hash (no Caffe needed)."""
import hashlib

import pytest

from fcnseg import files


def test_write_atomic_publishes_whole_files_only(tmp_path):
    target = tmp_path / "metrics.png"
    target.write_text("old")
    seen = []

    def failing(tmp):
        seen.append(tmp)
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.write_atomic(target, failing)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.png"]
    assert seen[0].suffix == ".png" and seen[0].parent == tmp_path  # the writer sees the suffix it writes
    files.write_text_atomic(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.png"]


def test_file_sha256(tmp_path):
    path = tmp_path / "w.caffemodel"
    path.write_bytes(b"\x00weights" * 1000)
    assert files.file_sha256(path) == hashlib.sha256(b"\x00weights" * 1000).hexdigest()


def test_snapshot_names_round_trip():
    assert files.snapshot_stem(40) == "train_iter_40"
    assert files.snapshot_iteration(f"snapshots/{files.snapshot_stem(40)}.solverstate") == 40
    assert files.snapshot_iteration("best.caffemodel") is None
    assert files.snapshot_iteration("train_iter_x.caffemodel") is None


def test_dataset_paths_with_and_without_a_root():
    assert files.dataset_paths("/data/hela")["val_labels"] == "/data/hela/val_labels_lmdb"
    assert files.dataset_paths(None)["train_images"] == f"{files.PLACEHOLDER_ROOT}/train_images_lmdb"
    assert sorted(files.dataset_paths(None)) == ["train_images", "train_labels", "val_images", "val_labels"]


def test_run_folder_of(tmp_path):
    run = tmp_path / "run"
    (run / files.SNAPSHOT_DIR).mkdir(parents=True)
    assert files.run_folder_of(run / files.BEST_WEIGHTS) is None  # not a run folder yet
    (run / files.CONFIG_FILE).write_text("{}")
    (run / files.TRAIN_VAL_FILE).write_text("")
    assert files.run_folder_of(run / files.BEST_WEIGHTS) == run.resolve()
    assert files.run_folder_of(run / files.SNAPSHOT_DIR / "train_iter_2.caffemodel") == run.resolve()
