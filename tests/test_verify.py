"""fcnseg.verify: damaged datasets and snapshots are named before Caffe reads them (issue 27).

Rows of the issue's table covered here: a train LMDB damaged on disk (bytes flipped inside a record,
where the Datum still parses, and across pages of data.mdb; a truncated data.mdb) and the newest
.solverstate truncated. Each ends in one line and exit 2 without a Caffe abort, and nothing good is
deleted; `--resume --from-iter N` continues with the same numbering. Also: the stale files a kill
leaves are cleared at the start of a resume.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import one_error_line, synthetic_pairs, write_tiny_dataset
from conftest import run_main as run
from fcnseg import files, verify
from fcnseg.caffe_env import caffe_pb2
from fcnseg.cli import main
from fcnseg.dataset import read_dataset
from fcnseg.errors import DataError

caffe = pytest.importorskip("caffe")

from test_train import write_cfg  # noqa: E402 - after the importorskip, like test_train itself


def checksummed_dataset(root: Path, **kw) -> Path:
    """`write_tiny_dataset` with the checksums `data import` records."""
    write_tiny_dataset(root, **kw)
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    meta["checksums"] = verify.dataset_checksums(root)
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return root




# ---- datasets ------------------------------------------------------------------------------------------

def test_import_records_checksums_and_a_sound_dataset_checks(tmp_path, capsys):
    from PIL import Image
    images, labels = synthetic_pairs(6, 32)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i, (im, lab) in enumerate(zip(images, labels)):
        Image.fromarray(im[0]).save(tmp_path / "img" / f"s{i}.png")
        Image.fromarray(lab[0]).save(tmp_path / "lab" / f"s{i}.png")
    ds = tmp_path / "ds"
    rc, out, err = run(capsys, "data", "import", "--images", tmp_path / "img", "--labels", tmp_path / "lab",
                       "--val", "s5", "-o", ds)
    assert rc == 0, err
    info = read_dataset(ds)
    assert set(info.checksums) == {"train_images_lmdb", "train_labels_lmdb", "val_images_lmdb", "val_labels_lmdb"}
    assert info.checksums["train_images_lmdb"].records == info.samples("train") == 5
    assert info.checksums["train_images_lmdb"] == read_dataset(ds).checksums["train_images_lmdb"]
    assert info.checksums["val_labels_lmdb"].sha256 == verify.lmdb_checksum(ds / "val_labels_lmdb")["sha256"]
    rc, out, err = run(capsys, "data", "check", ds)
    assert rc == 0, err
    assert "4 LMDBs, 12 records" in out and "checksums equal" in out


def test_a_dataset_without_checksums_still_loads_and_checks(tmp_path, capsys):
    ds = write_tiny_dataset(tmp_path / "old")  # written like an import before checksums existed
    assert read_dataset(ds).checksums is None
    rc, out, _ = run(capsys, "data", "check", ds)
    assert rc == 0 and "no checksums recorded" in out


def _record_offset(mdb: Path, pixels: bytes) -> int:
    data = mdb.read_bytes()
    at = data.find(pixels)
    assert at > 0 and data.find(pixels, at + 1) < 0, "the record's pixels are not found once in data.mdb"
    return at


def test_a_flipped_pixel_is_found_by_checksum_although_the_datum_parses(tmp_path, capsys):
    ds = checksummed_dataset(tmp_path / "ds", n_train=8, n_val=4)
    images, _ = synthetic_pairs(8, 32, 0)  # what write_tiny_dataset stored in train_images_lmdb
    mdb = ds / "train_images_lmdb" / "data.mdb"
    at = _record_offset(mdb, images[5].tobytes()) + 500
    raw = bytearray(mdb.read_bytes())
    raw[at] ^= 0x01  # one pixel one grey level off: the Datum still parses with the right size
    mdb.write_bytes(bytes(raw))
    with pytest.raises(DataError) as exc:
        verify.check_dataset(ds)
    text = str(exc.value)
    assert "train_images_lmdb" in text and "key 00000005" in text and "checksum" in text
    assert "the Datum still parses" in text
    rc, _, err = run(capsys, "data", "check", ds)
    assert rc == 2 and "train_images_lmdb: damaged at key 00000005" in one_error_line(err)


def test_bytes_flipped_across_pages_stop_train_before_caffe(tmp_path, capsys):
    ds = checksummed_dataset(tmp_path / "ds", n_train=8, n_val=4)
    mdb = ds / "train_labels_lmdb" / "data.mdb"
    raw = bytearray(mdb.read_bytes())
    rng = np.random.default_rng(3)
    pages = len(raw) // 4096
    for page in range(2, pages):  # every page after the two meta pages, header and contents
        for at in rng.integers(0, 4096, 24):
            raw[page * 4096 + int(at)] ^= 0xFF
    mdb.write_bytes(bytes(raw))
    rc, _, err = run(capsys, "data", "check", ds)
    line = one_error_line(err)
    assert rc == 2 and "train_labels_lmdb: damaged " in line
    # train checks the data before doctor and Caffe: one line, exit 2, no run folder
    cfg = write_cfg(tmp_path / "c.yaml", ds, solver__max_iter=2)
    rc, out, err = run(capsys, "train", cfg, "--out", tmp_path / "run")
    assert rc == 2 and "train_labels_lmdb: damaged " in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_a_truncated_lmdb_is_named(tmp_path, capsys):
    ds = checksummed_dataset(tmp_path / "ds", n_train=8, n_val=4)
    mdb = ds / "val_images_lmdb" / "data.mdb"
    mdb.write_bytes(mdb.read_bytes()[: 3 * 4096])  # an interrupted copy
    rc, _, err = run(capsys, "data", "check", ds)
    assert rc == 2 and "val_images_lmdb" in one_error_line(err)


def test_labels_out_of_range_are_named_by_key(tmp_path):
    from conftest import write_lmdb
    ds = write_tiny_dataset(tmp_path / "ds", n_train=4, n_val=2)
    images, labels = synthetic_pairs(4, 32, 0)
    labels[2][0, 0, 0] = 7  # not a class of a 2-class dataset, not the ignore label
    shutil.rmtree(ds / "train_labels_lmdb")
    write_lmdb(ds / "train_labels_lmdb", labels)
    with pytest.raises(DataError, match=r"train_labels_lmdb: damaged at key 00000002: label 7 is neither"):
        verify.check_dataset(ds)


def test_the_reader_crashing_is_a_finding_not_an_abort(tmp_path, monkeypatch):
    """A reader that dies of a signal (as the LMDB library can on a damaged page: SIGSEGV) is reported with
    the LMDB it was reading and its last good key; the reader here is a stand-in that reports its first
    256 records of train_images_lmdb and then crashes."""
    ds = checksummed_dataset(tmp_path / "ds", n_train=4, n_val=2)
    real_run = verify.subprocess.run
    images = str(ds / "train_images_lmdb")
    crash = (f"import json, os, signal; print(json.dumps({{'start': {images!r}}})); "
             "print(json.dumps({'at': '00000255'}), flush=True); os.kill(os.getpid(), signal.SIGSEGV)")

    def crashing(args, **kw):
        return real_run([args[0], "-c", crash], **kw)
    monkeypatch.setattr(verify.subprocess, "run", crashing)
    with pytest.raises(DataError, match="train_images_lmdb: damaged after key 00000255: reading it crashed the "
                                        r"reader \(killed by signal SIGSEGV\)"):
        verify.check_dataset(ds)


# ---- snapshots -----------------------------------------------------------------------------------------

def events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


@pytest.fixture(scope="module")
def two_snapshot_run(tmp_path_factory):
    """A run of 4 iterations with snapshots at 2 and 4 (trained once, copied by each test)."""
    root = tmp_path_factory.mktemp("snap")
    ds = write_tiny_dataset(root / "ds", n_train=4, n_val=4)
    cfg = write_cfg(root / "c.yaml", ds, solver__max_iter=4, train__snapshot_interval=2, train__val_interval=2,
                    train__display_interval=1)
    assert main(["train", cfg, "--out", root / "run"]) == 0
    return root / "run", cfg


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_truncated_solverstate_is_named_and_the_intact_one_resumed(tmp_path, two_snapshot_run, capsys):
    template, cfg = two_snapshot_run
    run_dir = copy_run(template, tmp_path / "run")
    snaps = run_dir / "snapshots"
    state4 = snaps / "train_iter_4.solverstate"
    state4.write_bytes(state4.read_bytes()[: state4.stat().st_size // 2])  # copied while training wrote it
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "metrics.jsonl"}
    capsys.readouterr()
    rc, out, err = run(capsys, "train", cfg, "--resume", run_dir, "--set", "solver.max_iter=6")
    line = one_error_line(err)
    assert rc == 2
    assert "train_iter_4.solverstate" in line and "damaged snapshot of iteration 4" in line
    assert "--from-iter 2" in line
    after = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "metrics.jsonl"}
    assert after == before  # refused before anything was written or deleted
    # resuming from the intact snapshot keeps the numbering; the damaged one is set aside, not deleted
    rc, out, err = run(capsys, "train", cfg, "--resume", run_dir, "--from-iter", 2, "--set", "solver.max_iter=6")
    assert rc == 0, err
    assert "resumed from train_iter_2.solverstate at iteration 2" in out
    assert (snaps / "set-aside" / "train_iter_4.solverstate").read_bytes() == before["train_iter_4.solverstate"]
    assert sorted(it for it, _ in verify.snapshot_states(run_dir)) == [2, 4, 6]
    assert all(verify.snapshot_problem(p) is None for _, p in verify.snapshot_states(run_dir))
    assert [e["iter"] for e in events(run_dir, "done")] == [4, 6]
    # and a plain --resume is happy again
    rc, out, err = run(capsys, "train", cfg, "--resume", run_dir, "--set", "solver.max_iter=8")
    assert rc == 0 and "resumed from train_iter_6.solverstate" in out


def test_snapshot_problems_named_without_caffe(tmp_path, two_snapshot_run):
    template, _ = two_snapshot_run
    run_dir = copy_run(template, tmp_path / "run")
    snaps = run_dir / "snapshots"
    state, model = snaps / "train_iter_4.solverstate", snaps / "train_iter_4.caffemodel"
    assert verify.snapshot_problem(state) is None
    # cut at a blob boundary: the file still parses, but its history no longer matches the weights
    pb = caffe_pb2().SolverState()
    pb.ParseFromString(state.read_bytes())
    del pb.history[-1]
    state.write_bytes(pb.SerializeToString())
    assert "history values" in verify.snapshot_problem(state)
    # a truncated caffemodel beside an intact solverstate
    shutil.copy(template / "snapshots" / state.name, state)
    model.write_bytes(model.read_bytes()[:-1000])
    assert "train_iter_4.caffemodel" in verify.snapshot_problem(state)
    model.unlink()
    assert "are missing" in verify.snapshot_problem(state)


def test_from_iter_must_name_an_existing_intact_snapshot(tmp_path, two_snapshot_run, capsys):
    template, cfg = two_snapshot_run
    run_dir = copy_run(template, tmp_path / "run")
    rc, _, err = run(capsys, "train", cfg, "--resume", run_dir, "--from-iter", 3)
    assert rc == 2 and "no snapshot of iteration 3 (snapshots of iterations: 4, 2)" in one_error_line(err)
    rc, _, err = run(capsys, "train", cfg, "--from-iter", 3, "--out", tmp_path / "new")
    assert rc == 2 and "--from-iter goes with --resume" in err


def test_a_resume_clears_what_a_kill_left(tmp_path, two_snapshot_run, capsys):
    template, cfg = two_snapshot_run
    run_dir = copy_run(template, tmp_path / "run")
    partial = run_dir / "snapshots" / ".partial"
    (partial / "train_iter_6.caffemodel").write_bytes(b"half a snapshot")
    (run_dir / f".{files.BEST_WEIGHTS}.tmp4242.caffemodel").write_bytes(b"half a copy")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "iter": 5, "lo')  # cut by the kill
    capsys.readouterr()
    rc, out, err = run(capsys, "train", cfg, "--resume", run_dir, "--set", "solver.max_iter=6")
    assert rc == 0, err
    assert "cleared 2 partial file(s)" in out and "dropped the last line of metrics.jsonl" in out
    assert not list(partial.iterdir()) and not list(run_dir.glob(".*.tmp*"))
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines].count("done") == 2  # every line parses


def test_quick_check_reads_counts_and_ends(tmp_path, capsys):
    ds = checksummed_dataset(tmp_path / "ds", n_train=8, n_val=4)
    rc, out, _ = run(capsys, "data", "check", ds, "--quick")
    assert rc == 0 and "record counts and the first and last record of each" in out
    assert f"run `fcnseg data check {ds}`" in out
    meta = yaml.safe_load((ds / "dataset.yaml").read_text())
    meta["checksums"]["val_labels_lmdb"]["records"] = 5  # one record lost on the way
    (ds / "dataset.yaml").write_text(yaml.safe_dump(meta))
    rc, _, err = run(capsys, "data", "check", ds, "--quick")
    assert rc == 2 and "val_labels_lmdb: damaged in its record count: 4 records, dataset.yaml checksums says 5" \
        in one_error_line(err)


# ---- issue 39: an LMDB damaged where the cursor starts, on every path that opens a dataset ----------------

def _flip_every_7th_page(mdb: Path) -> None:
    """64 bytes flipped at the start of every 7th page after the meta pages (the issue's mutation)."""
    raw = bytearray(mdb.read_bytes())
    for page in range(2, len(raw) // 4096, 7):
        raw[page * 4096:page * 4096 + 64] = bytes(b ^ 0xFF for b in raw[page * 4096:page * 4096 + 64])
    mdb.write_bytes(bytes(raw))


def test_a_damaged_branch_page_is_one_line_on_train_eval_and_import(tmp_path, two_snapshot_run, capsys):
    ds = checksummed_dataset(tmp_path / "ds", n_train=40, n_val=4, size=64)
    _flip_every_7th_page(ds / "train_images_lmdb" / "data.mdb")
    # before the fix: lmdb.CorruptedError (MDB_CORRUPTED: Located page was wrong type) escaped train's check
    with pytest.raises(DataError, match=r"--images .*train_images_lmdb: damaged .*MDB_CORRUPTED"):
        verify.check_readable(ds / "train_images_lmdb", "--images")
    for args in (("data", "check", ds),
                 ("train", write_cfg(tmp_path / "c.yaml", ds, solver__max_iter=2), "--out", tmp_path / "run"),
                 ("eval", copy_run(two_snapshot_run[0], tmp_path / "copy"), "--data", ds, "--split", "train"),
                 ("data", "import", "--images", ds / "train_images_lmdb", "--labels", ds / "train_labels_lmdb",
                  "-o", tmp_path / "imported")):
        rc, _, err = run(capsys, *args)
        assert rc == 2 and "train_images_lmdb" in one_error_line(err) and "damaged" in err, (args, err)
    assert not (tmp_path / "run").exists() and not (tmp_path / "imported").exists()


def test_train_records_every_model_file_and_resume_refuses_a_flipped_snapshot_bit(tmp_path, two_snapshot_run, capsys):
    from fcnseg import integrity
    from fcnseg.caffemodel import read_caffemodel_index
    template, cfg = two_snapshot_run
    names = [line.split("  ")[1] for line in (template / integrity.MANIFEST_FILE).read_text().splitlines()]
    assert set(names) >= {"best.caffemodel", "final.caffemodel", "snapshots/train_iter_2.caffemodel",
                          "snapshots/train_iter_2.solverstate", "snapshots/train_iter_4.caffemodel",
                          "snapshots/train_iter_4.solverstate"}
    assert all(integrity.check(template / name) for name in names)
    run_dir = copy_run(template, tmp_path / "run")
    model = run_dir / "snapshots" / "train_iter_4.caffemodel"
    blob = next(rec for rec in read_caffemodel_index(model).values() if rec.blobs).blobs[0]
    raw = bytearray(model.read_bytes())
    raw[blob.segments[0][0] + 1] ^= 0x10  # one bit of one weight: the file still parses with every shape
    model.write_bytes(bytes(raw))
    rc, _, err = run(capsys, "train", cfg, "--resume", run_dir, "--set", "solver.max_iter=6")
    line = one_error_line(err)
    assert rc == 2 and "train_iter_4.caffemodel: its SHA-256 differs" in line and "--from-iter 2" in line
