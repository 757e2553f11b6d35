"""fcnseg.diskspace: a disk that fills up stops fcnseg with one line before Caffe writes (issue 27).

The issue's first row, "disk fills during a snapshot", runs on a real small file system: a tmpfs
mounted by the test (`mount -t tmpfs -o size=N`, which needs root). Where the machine refuses the
mount, the same test runs with `diskspace.free_bytes` patched to report the size of that small disk
minus what the run folder holds (the test says which in its output). Python-side writes meeting a full
disk are simulated with a write wrapper raising ENOSPC.
"""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import one_error_line, write_tiny_dataset
from conftest import run_main as run
from fcnseg import diskspace, files, verify
from fcnseg.cli import main

caffe = pytest.importorskip("caffe")

from test_train import write_cfg  # noqa: E402 - after the importorskip, like test_train itself




class SmallDisk:
    """A file system of `size` bytes at `path`: a real tmpfs when mounting is allowed, else a patched
    free-space probe that counts the bytes under `path` against `size`."""

    def __init__(self, path: Path, size: int, monkeypatch):
        self.path, self.size, self.monkeypatch = path, size, monkeypatch
        path.mkdir(parents=True)
        self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                      capture_output=True).returncode == 0
        if not self.mounted:
            real = diskspace.free_bytes

            def free(where):
                if Path(diskspace.existing_folder(where)).is_relative_to(self.path):
                    used = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
                    return max(0, self.size - used)
                return real(where)
            monkeypatch.setattr(diskspace, "free_bytes", free)
        print(f"small disk at {path}: {'tmpfs mounted' if self.mounted else 'patched free-space probe'}",
              file=sys.__stderr__)  # past capsys: pytest -s shows which one ran

    def grow(self, size: int) -> None:
        self.size = size
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    disks = []

    def make(size: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / "disk", size, monkeypatch))
        return disks[-1]
    yield make
    for disk in disks:
        disk.close()


def net_weights_bytes(cfg: Path, where: Path) -> int:
    """Bytes of the parameters of the net `cfg` builds (from its deploy net; nothing trained)."""
    assert main(["make-proto", cfg, "-o", where]) == 0
    return diskspace.weights_bytes(caffe.Net(str(where / files.DEPLOY_FILE), caffe.TEST))


def test_disk_full_at_a_snapshot_stops_with_one_line_and_resumes(tmp_path, small_disk, capsys):
    ds = write_tiny_dataset(tmp_path / "ds", n_train=4, n_val=4)
    cfg = write_cfg(tmp_path / "c.yaml", ds, solver__max_iter=4, train__snapshot_interval=2,
                    train__val_interval=100, train__display_interval=1)
    w = net_weights_bytes(cfg, tmp_path / "proto")
    snap = diskspace.snapshot_bytes(caffe.Net(str(tmp_path / "proto" / files.DEPLOY_FILE), caffe.TEST), "Adam")
    assert snap == 3 * w  # Adam keeps two history blobs per parameter
    # Room for the start, the snapshot of iteration 2 and best.caffemodel at 4, not for the snapshot of 4.
    size = snap + diskspace.margin(snap) + w + diskspace.margin(w) + (4 << 20)
    assert 3 * w > 4 << 20, "the net is too small for this test's arithmetic"
    disk = small_disk(size)
    run_dir = disk.path / "run"
    capsys.readouterr()
    rc, out, err = run(capsys, "train", cfg, "--out", run_dir)
    line = one_error_line(err)
    assert rc == 2
    assert "not enough free space for the snapshot of iteration 4" in line
    assert f"the last good snapshot is {run_dir / 'snapshots' / 'train_iter_2.solverstate'}" in line
    stopped = [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
               if e["event"] == "stopped"]
    assert stopped and stopped[-1]["iter"] == 4 and stopped[-1]["reason"] == "disk full"
    assert verify.snapshot_problem(run_dir / "snapshots" / "train_iter_2.solverstate") is None
    assert not [p for p in (run_dir / "snapshots" / ".partial").iterdir()]  # no half snapshot left
    assert not (run_dir / "snapshots" / "train_iter_4.caffemodel").exists()
    # a resume on the still-full disk is refused the same way, before Caffe writes anything
    rc, out, err = run(capsys, "train", cfg, "--resume", run_dir)
    assert rc == 2 and "not enough free space for a snapshot of this net" in one_error_line(err)
    assert verify.snapshot_problem(run_dir / "snapshots" / "train_iter_2.solverstate") is None
    disk.grow(size + 2 * snap)
    rc, out, err = run(capsys, "train", cfg, "--resume", run_dir)
    assert rc == 0, err
    assert "resumed from train_iter_2.solverstate at iteration 2" in out
    assert [it for it, _ in verify.snapshot_states(run_dir)] == [4, 2]
    assert verify.snapshot_problem(run_dir / "snapshots" / "train_iter_4.solverstate") is None


def test_the_estimate_is_what_caffe_writes(tmp_path):
    ds = write_tiny_dataset(tmp_path / "ds", n_train=4, n_val=4)
    for solver in ("SGD", "Adam"):
        cfg = write_cfg(tmp_path / f"{solver}.yaml", ds, solver__type=solver, solver__max_iter=1,
                        solver__momentum=0.9, train__snapshot_interval=1)
        run_dir = tmp_path / solver
        assert main(["train", cfg, "--out", run_dir, "--force"]) == 0  # SGD at Adam's rate: doctor objects
        net = caffe.Net(str(run_dir / files.DEPLOY_FILE), caffe.TEST)
        estimate = diskspace.snapshot_bytes(net, solver)
        written = sum(p.stat().st_size for p in (run_dir / "snapshots").glob("train_iter_1.*"))
        assert estimate <= written <= estimate + diskspace.margin(estimate), (solver, estimate, written)
        best = (run_dir / files.BEST_WEIGHTS).stat().st_size
        assert diskspace.weights_bytes(net) <= best <= diskspace.weights_bytes(net) + diskspace.MARGIN_BYTES


def test_require_names_what_was_needed_free_and_where(tmp_path, monkeypatch):
    monkeypatch.setattr(diskspace, "free_bytes", lambda where: 3 << 20)
    diskspace.require(tmp_path, 1 << 20, "a small file")  # 1 MiB + 1 MiB margin fits in 3 MiB
    with pytest.raises(diskspace.DiskFullError) as exc:
        diskspace.require(tmp_path / "not" / "yet", 5 << 20, "the snapshot of iteration 40")
    assert str(exc.value) == (f"{tmp_path}: not enough free space for the snapshot of iteration 40: it needs "
                              "6.1 MiB (5.0 MiB + 1.1 MiB margin) and 3.0 MiB are free; free some space there, "
                              "or choose another folder")


def test_an_enospc_met_by_a_python_write_is_one_line(tmp_path, capsys, monkeypatch):
    """A write wrapper raising ENOSPC (the disk filled between the check and a small write)."""
    ds = write_tiny_dataset(tmp_path / "ds", n_train=4, n_val=4)
    cfg = write_cfg(tmp_path / "c.yaml", ds, solver__max_iter=2, train__display_interval=1)

    def full(path, line):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(files, "append_line", full)
    rc, _, err = run(capsys, "train", cfg, "--out", tmp_path / "run")
    assert rc == 2 and "metrics.jsonl: no space left on the device" in one_error_line(err)


def test_data_import_and_export_check_space_first(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from conftest import make_run, synthetic_pairs
    images, labels = synthetic_pairs(3, 32)
    for folder, arrays in (("img", images), ("lab", labels)):
        (tmp_path / folder).mkdir()
        for i, a in enumerate(arrays):
            Image.fromarray(a[0]).save(tmp_path / folder / f"s{i}.png")
    monkeypatch.setattr(diskspace, "free_bytes", lambda where: 2 << 20)
    rc, _, err = run(capsys, "data", "import", "--images", tmp_path / "img", "--labels", tmp_path / "lab",
                     "--val", "s2", "-o", tmp_path / "ds")
    assert rc == 2 and "not enough free space for the dataset ds" in one_error_line(err)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.*"))
    pytest.importorskip("onnx")
    run_dir = make_run(tmp_path / "r")
    monkeypatch.setattr(diskspace, "free_bytes", lambda where: 0)
    rc, _, err = run(capsys, "export", run_dir, "-o", tmp_path / "m.onnx")
    assert rc == 2 and "not enough free space for the ONNX model m.onnx" in one_error_line(err)
    assert not (tmp_path / "m.onnx").exists()


def test_convert_estimate_is_the_one_channel_vgg16_trunk(tmp_path):
    # VGG16 without fc8 holds 134,260,544 floats; conv1_1 reading one channel instead of three: 1,152 fewer
    assert diskspace.vgg16_trunk_params() == 134_260_544 - 64 * 2 * 9
    small = tmp_path / "w.safetensors"
    small.write_bytes(b"x" * 1000)
    assert diskspace.convert_bytes(small) == 2000  # never more than twice the source (float16 -> float32)


def test_import_estimate_bounds_the_lmdbs(tmp_path, capsys):
    from PIL import Image

    from conftest import synthetic_pairs
    images, labels = synthetic_pairs(4, 64)
    for folder, arrays in (("img", images), ("lab", labels)):
        (tmp_path / folder).mkdir()
        for i, a in enumerate(arrays):
            Image.fromarray(a[0]).save(tmp_path / folder / f"s{i}.png")
    rc, _, err = run(capsys, "data", "import", "--images", tmp_path / "img", "--labels", tmp_path / "lab",
                     "--val", "s3", "--tile", 24, "--tile-overlap", 4, "--no-augment", "-o", tmp_path / "ds")
    assert rc == 0, err
    used = sum(p.stat().st_blocks * 512 for p in (tmp_path / "ds").rglob("*.mdb"))
    assert 0 < used <= diskspace.import_bytes([(64, 64)] * 4, 24, 4, 1)


def test_writes_are_fsynced_before_they_are_published(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "best.caffemodel"

    def write(tmp):
        tmp.write_bytes(b"weights")
        assert not synced
    files.write_atomic(target, write)
    assert synced[0].startswith(str(tmp_path / ".best.caffemodel.tmp")) and synced[1] == str(tmp_path)
    synced.clear()
    files.append_line(tmp_path / "metrics.jsonl", "{}")
    assert synced == [str(tmp_path / "metrics.jsonl")]
    assert target.read_bytes() == b"weights"
