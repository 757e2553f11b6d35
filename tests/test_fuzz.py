"""The fuzz harness (tests/fuzz_targets.py, scripts/fuzz.py): every reader has a target seeded from real files,
each input a past campaign found is kept here and now ends in a one-line error, and a short campaign of the real
driver (child processes, time limit, memory cap) finds nothing."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import fuzz_targets as ft

caffe = pytest.importorskip("caffe")

ROOT = Path(__file__).resolve().parents[1]
REGRESSIONS = ROOT / "tests" / "fixtures" / "fuzz_regressions"
READERS = {"tiff", "png", "jpeg", "npy", "dicom", "nifti", "hdf5", "zarr", "datum", "prototxt", "solver",
           "solverstate", "caffemodel", "keras_hdf5", "safetensors", "onnx_weights", "onnx_model", "config_yaml",
           "dataset_yaml", "inference_yaml", "doctor_log"}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    return ft.make_seeds(tmp_path_factory.mktemp("fuzz") / "seeds")


def test_every_reader_has_a_target_with_real_seeds_that_read_cleanly(seeds, tmp_path):
    assert READERS <= set(ft.TARGETS)
    for name in ft.TARGETS:
        inputs = ft.seed_inputs(name, seeds)
        assert inputs and all(inputs), name
        ft.prepare(name, seeds, tmp_path / name)
        for data in inputs:
            ft.run_one(name, data, tmp_path / name)  # a seed is a good file: nothing but the contract


def test_a_reader_error_other_than_fcnseg_error_escapes_the_harness(tmp_path, monkeypatch):
    def broken(data, work):
        raise ValueError("a reader's bug")

    monkeypatch.setitem(ft.TARGETS, "broken", broken)
    with pytest.raises(ValueError):
        ft.run_one("broken", b"x", tmp_path)


def test_the_mutator_is_seeded_and_edits():
    data = bytes(range(256)) * 8
    a = [ft.mutate(data, random.Random(5)) for _ in range(3)]
    assert a == [ft.mutate(data, random.Random(5)) for _ in range(3)]
    outs = {ft.mutate(data, random.Random(i)) for i in range(50)}
    assert data not in outs or len(outs) > 40


@pytest.mark.parametrize("path", sorted(p for p in REGRESSIONS.glob("*/*") if p.is_file()),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_inputs_the_campaign_found_now_keep_the_contract(path, seeds, tmp_path):
    name = path.parent.name
    ft.prepare(name, seeds, tmp_path)
    ft.run_one(name, path.read_bytes(), tmp_path)  # each made a reader raise something else than FcnsegError


@pytest.mark.slow
def test_a_short_campaign_of_every_reader_finds_nothing(seeds, tmp_path):
    out = tmp_path / "campaign"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz.py"), "--runs", "120", "--seeds", str(seeds),
                           "--out", str(out)], capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == set(ft.TARGETS)
    assert all(r["runs"] == 120 for r in summary.values()), summary
    assert proc.returncode == 0 and not any(r["findings"] for r in summary.values()), proc.stdout
