"""fcnseg.doctor on setups people really run: the FCN reference's own nets (written by tests/fcn_reference.py)
and broken setups reconstructed from public threads (tests/fixtures/doctor_cases/*/case.yaml)."""
from pathlib import Path

import pytest
import yaml

import fcn_reference as reference

caffe = pytest.importorskip("caffe")

from fcnseg import doctor  # noqa: E402
from fcnseg.doctor import (diagnose, diagnose_files, diagnose_log, format_findings, read_net,  # noqa: E402
                           read_solver)

CASES = Path(__file__).parent / "fixtures" / "doctor_cases"
REFERENCE = ["voc-fcn32s", "voc-fcn16s", "voc-fcn8s", "siftflow-fcn16s"]


def codes(findings, severity=None):
    return {f.code for f in findings if severity is None or f.severity == severity}


def fake_weights(monkeypatch, shapes):
    """Let doctor read `shapes` ({layer: shape}) as the caffemodel's blob shapes (a full VGG16 is 500 MB)."""
    monkeypatch.setattr(doctor, "caffemodel_shapes", lambda path: {k: [tuple(v)] for k, v in shapes.items()})


# --- the reference's own nets -----------------------------------------------------------------------

@pytest.mark.parametrize("name", REFERENCE)
def test_reference_nets_have_no_errors(tmp_path, name):
    net, solver = reference.write_reference(tmp_path, name)
    found = diagnose_files(net, solver)
    assert not codes(found, "error"), format_findings(found)
    ups = [f for f in found if f.code == "upsampling-filler"]
    deconvs = [layer.name for layer in read_net(net).layer if layer.type == "Deconvolution"]
    # one finding per upsampling layer, saying what must happen before the first step
    assert sorted(f.layer for f in ups) == sorted(deconvs)
    assert all(f.severity == "warning" and "surgery.interp" in f.message for f in ups)
    assert "upsampling-group" not in codes(found)  # no group, but surgery.interp does not mix classes
    zero = next(f for f in found if f.code == "zero-init")
    assert zero.severity == "warning" and "before the first step" in zero.message and "Python layer" in zero.message
    assert not codes(found) & {"crop-offset", "crop-uncomputable", "upsampling-stride", "head-classes",
                               "solver-step", "from-scratch"}


def test_reference_solver_facts(tmp_path):
    for name, lr in (("voc-fcn32s", 1e-10), ("voc-fcn16s", 1e-12), ("voc-fcn8s", 1e-14)):
        _, solver = reference.write_reference(tmp_path, name)
        s = read_solver(solver)
        assert (s.base_lr, s.momentum, s.iter_size, s.weight_decay) == pytest.approx((lr, 0.99, 1, 0.0005), rel=1e-6)
    net = read_net(reference.write_reference(tmp_path, "voc-fcn8s")[0])
    layers = {layer.name: layer for layer in net.layer}
    assert [layers[c].crop_param.offset[0] for c in ("score_pool4c", "score_pool3c", "score")] == [5, 9, 31]
    assert layers["data"].type == "Python" and not layers["upscore8"].convolution_param.HasField("weight_filler")
    assert layers["upscore8"].convolution_param.group == 1 and layers["upscore8"].param[0].lr_mult == 0
    assert not layers["loss"].loss_param.normalize


def test_reference_with_rgb_weights(monkeypatch, tmp_path):
    """The weights settle it: a 3-channel VGG16 covers the trunk of the 3-channel net (no zero-init left),
    and is the right error for the same net on a 1-channel dataset."""
    fake_weights(monkeypatch, reference.vgg16_shapes(3))
    net, solver = reference.write_reference(tmp_path / "rgb", "voc-fcn8s", channels=3)
    rgb = diagnose_files(net, solver, weights="vgg16fc.caffemodel")
    assert not codes(rgb, "error") and "zero-init" not in codes(rgb), format_findings(rgb)
    assert {f.layer for f in rgb if f.code == "upsampling-filler"} == {"upscore2", "upscore_pool4", "upscore8"}
    net, solver = reference.write_reference(tmp_path / "gray", "voc-fcn8s", channels=1)
    gray = diagnose_files(net, solver, weights="vgg16fc.caffemodel")
    assert codes(gray, "error") == {"weights-channels"}, format_findings(gray)
    f = next(f for f in gray if f.code == "weights-channels")
    assert f.layer == "conv1_1" and "3 input channels" in f.message and "has 1" in f.message
    assert "zero-init" not in codes(gray)


def test_reference_layout_under_caffe_train(monkeypatch, tmp_path):
    """The same fillerless head run by `caffe train --weights` on LMDBs (no script, no surgery): the weights
    lack the upsampling kernel and nothing else can supply it, so it is an error."""
    fake_weights(monkeypatch, reference.vgg16_shapes(3))
    path = tmp_path / "train_val.prototxt"
    path.write_text(reference.voc_net("32s", lmdb=True))
    found = diagnose(read_net(path), weights="vgg16fc.caffemodel", input_channels=3, base_dirs=[tmp_path])
    f = next(f for f in found if f.code == "upsampling-filler")
    assert f.severity == "error" and f.layer == "upscore" and "do not hold it" in f.message
    without = diagnose(read_net(path), input_channels=3, base_dirs=[tmp_path])  # no weights named: unknown
    assert {f.code: f.severity for f in without}["upsampling-filler"] == "warning"
    assert {f.code: f.severity for f in without}["zero-init"] == "warning"


# --- broken setups from public threads --------------------------------------------------------------

def load_case(name):
    case = yaml.safe_load((CASES / name / "case.yaml").read_text())
    for key in ("source", "title", "reported", "diagnosis", "diagnosis_by", "train_val", "expect"):
        assert case.get(key), f"{name}: case.yaml lacks {key}"
    return case


CASE_NAMES = sorted(p.name for p in CASES.iterdir() if (p / "case.yaml").exists())


def test_corpus_size_and_sources():
    assert len(CASE_NAMES) >= 8
    sources = [load_case(n)["source"] for n in CASE_NAMES]
    assert len(set(sources)) == len(sources) and all(s.startswith("https://") for s in sources)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_case_cause_is_reported(monkeypatch, name):
    case = load_case(name)
    folder = CASES / name
    weights = None
    if case.get("weights"):
        fake_weights(monkeypatch, case["weights"])
        weights = "weights.caffemodel"
    train_val = folder / case["train_val"]
    solver = folder / case["solver"] if case.get("solver") else None
    if case.get("log"):
        found = diagnose_log(folder / case["log"], train_val, solver, weights)
    else:
        found = diagnose(read_net(train_val), read_solver(solver) if solver else None, weights=weights,
                         input_channels=case.get("input_channels"), base_dirs=[folder],
                         check_snapshot_dir=False)
    text = format_findings(found)
    for code, severity in case["expect"].items():
        got = [f for f in found if f.code == code]
        assert got, f"{name}: {code} not reported\n{text}"
        assert any(f.severity == severity for f in got), f"{name}: {code} not {severity}\n{text}"
    for log_code, cause in (case.get("causes") or {}).items():
        f = next(f for f in found if f.code == log_code)
        assert "Likely causes" in f.message and cause in f.message.split("Likely causes", 1)[1], text
    wrongly = codes(found) & set(case.get("not_reported", []))
    assert not wrongly, f"{name}: correct parts called wrong: {wrongly}\n{text}"
