"""fcnseg.integrity: the SHA-256 of every model file fcnseg writes, recorded once and compared before use;
and `infer`, `export`, `weights inspect`, `doctor --weights` refusing a copy with one flipped bit (issue 39)."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import make_run, one_error_line, raw_image
from conftest import run_main as run
from fcnseg import files, integrity
from fcnseg.errors import WeightsError


def fake_run(root: Path) -> Path:
    """A folder `files.run_folder_of` takes for a run folder."""
    (root / files.SNAPSHOT_DIR).mkdir(parents=True)
    (root / files.CONFIG_FILE).write_text("model: {}\n")
    (root / files.TRAIN_VAL_FILE).write_text("name: 'x'\n")
    return root


def flip_bit(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_standalone_file_gets_a_sidecar_and_a_changed_byte_is_refused(tmp_path):
    model = tmp_path / "w" / "vgg16_1ch.caffemodel"
    model.parent.mkdir()
    model.write_bytes(b"weights" * 100)
    digest = integrity.record(model)
    assert (tmp_path / "w" / "vgg16_1ch.caffemodel.sha256").read_text() == f"{digest}  vgg16_1ch.caffemodel\n"
    assert integrity.check(model) is True and integrity.problem(model) is None
    flip_bit(model, 300)
    with pytest.raises(WeightsError, match=r"vgg16_1ch.caffemodel: its SHA-256 differs from the one recorded in "
                                           r".*vgg16_1ch.caffemodel.sha256"):
        integrity.check(model)
    assert "differs" in integrity.problem(model)


def test_run_files_share_one_manifest_that_sha256sum_and_a_moved_copy_accept(tmp_path):
    run_dir = fake_run(tmp_path / "run")
    for rel in ("best.caffemodel", "snapshots/train_iter_2.caffemodel", "snapshots/train_iter_2.solverstate"):
        (run_dir / rel).write_bytes(rel.encode() * 50)
        integrity.record(run_dir / rel)
    manifest = (run_dir / integrity.MANIFEST_FILE).read_text().splitlines()
    assert [line.split("  ")[1] for line in manifest] == ["best.caffemodel", "snapshots/train_iter_2.caffemodel",
                                                        "snapshots/train_iter_2.solverstate"]
    assert not list(run_dir.rglob("*.sha256")) or list(run_dir.rglob("*.sha256")) == [run_dir / "checksums.sha256"]
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", integrity.MANIFEST_FILE], cwd=run_dir, capture_output=True)
        assert check.returncode == 0, check.stdout
    moved = Path(shutil.copytree(run_dir, tmp_path / "elsewhere" / "run"))
    assert integrity.check(moved / "snapshots" / "train_iter_2.caffemodel") is True
    integrity.record(moved / "best.caffemodel")  # rewriting one record keeps the others
    assert len((moved / integrity.MANIFEST_FILE).read_text().splitlines()) == 3


def test_no_record_is_a_note_and_a_damaged_record_line_costs_only_itself(tmp_path):
    run_dir = fake_run(tmp_path / "run")
    best = run_dir / "best.caffemodel"
    best.write_bytes(b"mine")
    notes = []
    assert integrity.check(best, note=notes.append) is False
    assert len(notes) == 1 and notes[0].startswith(f"note: {best}: no SHA-256 recorded")
    (run_dir / integrity.MANIFEST_FILE).write_text("not a line\n" + "ab" * 10 + "  best.caffemodel\n")
    assert integrity.recorded(best) is None


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    pytest.importorskip("caffe")
    run_dir = make_run(tmp_path_factory.mktemp("integrity"))
    integrity.record(run_dir / files.BEST_WEIGHTS)
    return run_dir


def _float_offset(path: Path) -> int:
    """A byte inside conv1_1's first weight: the protobuf still parses when it flips."""
    from fcnseg.caffemodel import read_caffemodel_index
    blob = next(rec for rec in read_caffemodel_index(path).values() if rec.blobs).blobs[0]
    return blob.segments[0][0] + 2


def test_one_flipped_weight_bit_is_refused_by_every_command_that_uses_the_weights(tmp_path, recorded_run, capsys):
    run_dir = Path(shutil.copytree(recorded_run, tmp_path / "copy"))
    image = tmp_path / "frame.tif"
    tifffile.imwrite(image, raw_image(64, 64))
    rc, _, err = run(capsys, "infer", "--run", run_dir, image, "-o", tmp_path / "ok")
    assert rc == 0 and "note:" not in err, err
    best = run_dir / files.BEST_WEIGHTS
    flip_bit(best, _float_offset(best))
    for args in (("infer", "--run", run_dir, image, "-o", tmp_path / "out"),
                 ("export", run_dir, "-o", tmp_path / "m.onnx"),
                 ("weights", "inspect", best),
                 ("doctor", run_dir / files.TRAIN_VAL_FILE, "--weights", best)):
        rc, _, err = run(capsys, *args)
        line = one_error_line(err)
        assert rc == 2 and f"{best}: its SHA-256 differs" in line, (args, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()


def test_a_run_without_records_is_used_with_a_note_and_export_records_its_model(tmp_path, recorded_run, capsys):
    run_dir = Path(shutil.copytree(recorded_run, tmp_path / "old"))
    (run_dir / integrity.MANIFEST_FILE).unlink()  # a run trained before records existed
    image = tmp_path / "frame.tif"
    tifffile.imwrite(image, raw_image(64, 64))
    rc, out, err = run(capsys, "infer", "--run", run_dir, image, "-o", tmp_path / "out")
    assert rc == 0 and f"note: {run_dir / files.BEST_WEIGHTS}: no SHA-256 recorded" in err
    assert (tmp_path / "out" / "frame.png").is_file()
    rc, _, err = run(capsys, "export", run_dir, "-o", tmp_path / "m.onnx")
    assert rc == 0
    digest = (tmp_path / "m.onnx.sha256").read_text().split()[0]
    assert digest == files.file_sha256(tmp_path / "m.onnx")
    rc, _, err = run(capsys, "infer", "--onnx", tmp_path / "m.onnx", image, "-o", tmp_path / "onnx_out")
    assert rc == 0 and "note:" not in err
    flip_bit(tmp_path / "m.onnx", (tmp_path / "m.onnx").stat().st_size - 100)
    rc, _, err = run(capsys, "infer", "--onnx", tmp_path / "m.onnx", image, "-o", tmp_path / "onnx_bad")
    assert rc == 2 and "m.onnx: its SHA-256 differs" in one_error_line(err)
    assert np.array_equal(np.asarray(tifffile.imread(image)), raw_image(64, 64))
