"""fcnseg.bioimageio_package: `fcnseg export RUN --bioimageio -o NAME.zip`.

The package's contents are checked here against Caffe (its test outputs are what the run's net computes on its
test input); the slow test validates it with the format's own library, bioimageio.core with onnxruntime, in a
virtual environment of their own without fcnseg (cached under ~/.cache/fcnseg/, keyed by the pinned versions).
"""
import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from conftest import K, WINDOW, make_run, raw_image, synthetic_pairs, write_lmdb
from fcnseg.cli import main

caffe = pytest.importorskip("caffe")

# What the validating environment installs from PyPI (bioimageio.spec 0.5.12.0, which bioimageio.core 0.11.0
# pins, fails on pydantic 2.14's serializer calls, hence the pydantic pin).
VALIDATOR = ("bioimageio.core==0.11.0", "onnxruntime==1.32.0", "pydantic==2.12.5")
CACHE = Path(os.environ.get("FCNSEG_CACHE", Path.home() / ".cache" / "fcnseg"))


@pytest.fixture
def run(tmp_path) -> Path:
    """A 3-class run with random weights (conftest.make_run, window 100..4000) and a val split of 40x40 tiles."""
    run = make_run(tmp_path, stages=2)
    images, labels = synthetic_pairs(3, 40, seed=5)
    labels[1][0, :10, :10] = 2  # the second tile holds all three classes: it is the one chosen
    write_lmdb(tmp_path / "data" / "val_images_lmdb", images)
    write_lmdb(tmp_path / "data" / "val_labels_lmdb", labels)
    return run


def package(path: Path) -> tuple[dict, dict]:
    """(rdf, {member name: bytes}) of a package zip."""
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    return yaml.safe_load(members["rdf.yaml"]), members


def npy(members: dict, name: str) -> np.ndarray:
    return np.load(io.BytesIO(members[name]))


def caffe_scores(run: Path, raw: np.ndarray) -> np.ndarray:
    """The run's Caffe net on one raw 2-D image, through fcnseg's own preprocessing (what `infer --run` does)."""
    from fcnseg.predict import load_predictor
    predictor = load_predictor(run)
    _, x = predictor.network_input(raw)
    return predictor.score(x)


def test_package_describes_the_run_and_its_test_outputs_are_caffes(tmp_path, run, capsys):
    out = tmp_path / "model.zip"
    assert main(["export", str(run), "--bioimageio", "-o", str(out), "--author", "Ada Lovelace", "--author", "Alan",
                 "--license", "MIT", "--cite", "Doe et al. 2024: HeLa nuclei|10.1234/abcd"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "1 x 1 x 40 x 40 from val tile 00000001" in printed
    rdf, members = package(out)
    assert set(members) == {"rdf.yaml", "model.onnx", "test_input.npy", "test_scores.npy", "test_probabilities.npy",
                            "cover.png", "README.md"}
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    assert [a["name"] for a in rdf["authors"]] == ["Ada Lovelace", "Alan"] and rdf["license"] == "MIT"
    assert [c.get("doi") for c in rdf["cite"]] == ["10.1109/CVPR.2015.7298965", "10.1145/2647868.2654889",
                                                   "10.1234/abcd"]  # FCN, Caffe, then --cite
    [image] = rdf["inputs"]
    assert [a["type"] for a in image["axes"]] == ["batch", "channel", "space", "space"]
    assert [a["size"] for a in image["axes"][2:]] == [{"min": 4, "step": 4}] * 2  # stride 4, pad: minimal
    # the window, mean and scale are in the graph; the rdf only casts to float32
    assert image["preprocessing"] == [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    assert [o["id"] for o in rdf["outputs"]] == ["scores", "probabilities"]
    for o in rdf["outputs"]:
        assert o["axes"][1] == {"type": "channel", "channel_names": [f"class {i}" for i in range(K)]}
        assert o["axes"][2]["size"] == {"tensor_id": "image", "axis_id": "y"}
    assert rdf["weights"]["onnx"]["opset_version"] == 17 and rdf["covers"] == ["cover.png"]
    assert rdf["weights"]["onnx"]["sha256"] == hashlib.sha256(members["model.onnx"]).hexdigest()
    # the test input is the chosen val tile on the original intensity scale: windowing it gives the tile back
    from fcnseg.images import apply_window
    images, _ = synthetic_pairs(3, 40, seed=5)
    x = npy(members, "test_input.npy")
    assert x.shape == (1, 1, 40, 40) and x.dtype == np.float32
    assert np.array_equal(apply_window(x[0, 0], WINDOW), images[1][0])
    scores, probs = npy(members, "test_scores.npy"), npy(members, "test_probabilities.npy")
    assert scores.shape == probs.shape == (1, K, 40, 40)
    expected = caffe_scores(run, x[0, 0])
    assert np.abs(scores[0] - expected).max() <= 1e-4 * np.abs(expected).max()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert "## Validation" in members["README.md"].decode()


def test_test_image_option_and_the_cut_to_the_input_multiple(tmp_path, run, capsys):
    raw = raw_image(43, 50)  # uint16, cut to 40 x 48 (multiples of 4)
    tifffile.imwrite(tmp_path / "frame.tif", raw)
    out = tmp_path / "model.zip"
    assert main(["export", str(run), "--bioimageio", "-o", str(out), "--test-image", str(tmp_path / "frame.tif")]) == 0
    _, members = package(out)
    x = npy(members, "test_input.npy")
    assert x.shape == (1, 1, 40, 48) and np.array_equal(x[0, 0], raw[:40, :48].astype(np.float32))
    expected = caffe_scores(run, raw[:40, :48])
    assert np.abs(npy(members, "test_scores.npy")[0] - expected).max() <= 1e-4 * np.abs(expected).max()


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, run, capsys):
    out = tmp_path / "model.zip"
    assert main(["export", str(run), "--bioimageio", "-o", str(out), "--cite", "no reference"]) == 2
    assert "--cite 'no reference': expected 'TEXT|DOI'" in one_error(capsys)
    assert main(["export", str(run), "--bioimageio", "-o", str(out), "--cite", "Doe|example.org"]) == 2
    assert "neither a DOI" in one_error(capsys)
    assert main(["export", str(run), "-o", str(tmp_path / "m.onnx"), "--author", "Ada"]) == 2
    assert "go with --bioimageio" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "data" / "val_images_lmdb")  # the dataset is gone: the test image must be given
    assert main(["export", str(run), "--bioimageio", "-o", str(out)]) == 2
    assert "pass one with --test-image IMAGE" in one_error(capsys)
    assert main(["export", str(run), "--bioimageio", "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err  # click's check of -o
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def validator_venv() -> Path:
    """A virtual environment with VALIDATOR installed from PyPI and no fcnseg, made once per version set (a venv
    holds its own absolute path, so it is made where it stays; `.complete` marks a finished one)."""
    key = "-".join(v.replace("==", "") for v in VALIDATOR)
    venv = CACHE / f"bioimageio-venv-{key}"
    if (venv / ".complete").is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *VALIDATOR], check=True)
    (venv / ".complete").write_text("\n".join(VALIDATOR) + "\n")
    return venv


@pytest.mark.slow
def test_bioimageio_core_validates_the_package(tmp_path, run):
    out = tmp_path / "model.zip"
    assert main(["export", str(run), "--bioimageio", "-o", str(out), "--author", "Ada Lovelace"]) == 0
    venv = validator_venv()
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import fcnseg"], capture_output=True, cwd=tmp_path)
    assert check.returncode != 0  # the validating environment has no fcnseg
    result = bioimageio_test(venv, out)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-4000:]
    assert "Reproduce test outputs from test inputs (onnx)" in text and "passed" in text
    # The check can fail: the same package with test scores that the model does not reproduce (their sha256
    # updated, so only the reproduction is wrong) is refused.
    rdf, members = package(out)
    scores = npy(members, "test_scores.npy")
    scores[0, 0, :8] += 1.0
    buffer = io.BytesIO()
    np.save(buffer, scores)
    members["test_scores.npy"] = buffer.getvalue()
    rdf["outputs"][0]["test_tensor"]["sha256"] = hashlib.sha256(members["test_scores.npy"]).hexdigest()
    members["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False).encode()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    assert bioimageio_test(venv, bad).returncode != 0


def bioimageio_test(venv: Path, package_zip: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "bioimageio"), "test", str(package_zip)], capture_output=True,
                          text=True, cwd=package_zip.parent, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
