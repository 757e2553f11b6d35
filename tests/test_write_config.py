"""`fcnseg doctor TRAIN_VAL [SOLVER] --write-config OUT.yaml` (fcnseg/doctor/write_config.py): on the seed, the
FCN reference's own nets (tests/fcn_reference.py) and every case in tests/fixtures/doctor_cases/."""
from pathlib import Path

import pytest
import yaml

import fcn_reference as reference
from conftest import SEED_DIR

caffe = pytest.importorskip("caffe")

from fcnseg import doctor  # noqa: E402
from fcnseg.cli import main  # noqa: E402
from fcnseg.config import load_config  # noqa: E402
from fcnseg.doctor import diagnose_config, diagnose_files, format_findings  # noqa: E402
from fcnseg.doctor import write_config as write_config_module  # noqa: E402
from fcnseg.doctor.write_config import NotExpressible, write_config  # noqa: E402
from fcnseg.errors import ConfigError  # noqa: E402
from fcnseg.nets import train_val_net  # noqa: E402

CASES = Path(__file__).parent / "fixtures" / "doctor_cases"
SEED_NET, SEED_SOLVER = SEED_DIR / "train_val.prototxt", SEED_DIR / "solver.prototxt"


def fake_weights(monkeypatch, shapes):
    """doctor and --write-config read `shapes` ({layer: shape}) as the caffemodel's blob shapes (a real VGG16 is
    500 MB)."""
    fake = lambda path: {k: [tuple(v)] for k, v in shapes.items()}  # noqa: E731
    monkeypatch.setattr(doctor, "caffemodel_shapes", fake)
    monkeypatch.setattr(write_config_module, "caffemodel_shapes", fake)


def crop_offsets(cfg) -> dict:
    return {layer.name: list(layer.crop_param.offset) for layer in train_val_net(cfg).layer if layer.type == "Crop"}


def comments(path: Path) -> dict:
    """{dotted key: its comment} of a written config."""
    out, section = {}, None
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            section = line.rstrip(":")
        elif line.startswith("  ") and "  # " in line:
            key = line.strip().split(":", 1)[0]
            out[f"{section}.{key}"] = line.split("  # ", 1)[1]
    return out


# ---- the seed --------------------------------------------------------------------------------------

def test_seed_config_corrects_every_fault(tmp_path):
    out = tmp_path / "seed.yaml"
    written = write_config(SEED_NET, SEED_SOLVER, out)
    cfg = load_config(out)
    assert (cfg.model.arch, cfg.model.stages, cfg.model.num_classes, cfg.model.fc_channels) == ("fcn32s", 3, 5, 4096)
    assert (cfg.model.pad, cfg.model.dropout, cfg.data.batch_size, cfg.data.ignore_label) == (100, 0.5, 1, 255)
    assert (cfg.solver.lr_policy, cfg.solver.stepsize, cfg.solver.gamma, cfg.solver.max_iter) == ("step", 2000, 0.1, 10000)
    assert (cfg.solver.weight_decay, cfg.train.snapshot_interval, cfg.solver.iter_size) == (0.0005, 2000, 1)
    # the step doctor calls 10x too large becomes the from-scratch recipe (no weights)
    assert (cfg.solver.type, cfg.solver.base_lr, cfg.solver.momentum, cfg.loss.normalize) == ("Adam", 1e-4, 0.9, True)
    notes = comments(out)
    assert notes["solver.momentum"].startswith("was: 0.99, now: 0.9, because:")
    assert "was: 'upscore' kernel 64 stride 32" in notes["model.arch"] and "upsampling-stride" in notes["model.arch"]
    assert notes["data.mean"].startswith("was: mean_file /jjj/FCN32_mean.binaryproto, now: auto, because:")
    assert "was: zero-init on conv1_1" in notes["init.weights"]
    # every fault doctor finds in the seed is named beside a key
    text = out.read_text()
    found = diagnose_files(SEED_NET, SEED_SOLVER)
    assert {f.code for f in found} >= {"upsampling-stride", "zero-init", "from-scratch", "solver-step"}
    for f in found:
        assert f"{f.code}" in text, f.code
    # what is printed is what is written
    printed = "\n".join(written.lines())
    assert notes["solver.type"] in printed and notes["model.arch"] in printed
    # the net it builds passes doctor and crops by the geometry, not the seed's 19
    assert not [f for f in diagnose_config(cfg) if f.severity == "error"], format_findings(diagnose_config(cfg))
    assert crop_offsets(cfg) == {"score": [79]}


def test_seed_cli_and_make_proto(tmp_path, capsys):
    out = tmp_path / "seed.yaml"
    assert main(["doctor", str(SEED_NET), str(SEED_SOLVER), "--write-config", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "solver.type: was: SGD base_lr 0.0001 momentum 0.99" in printed and f"wrote {out}" in printed
    assert main(["make-proto", str(out), "-o", str(tmp_path / "net")]) == 0
    capsys.readouterr()
    assert main(["doctor", "--config", str(out)]) == 0


def test_seed_with_dataset_takes_its_classes(tmp_path):
    from test_caffe_lmdb import import_args, lmdb_set

    paths, _ = lmdb_set(tmp_path / "src")
    assert main([str(a) for a in import_args(paths, tmp_path / "ds")]) == 0
    out = tmp_path / "seed.yaml"
    write_config(SEED_NET, SEED_SOLVER, out, data_root=tmp_path / "ds")
    cfg = load_config(out)
    assert cfg.model.num_classes == 2 and cfg.data.root == str((tmp_path / "ds").resolve())
    assert comments(out)["model.num_classes"].endswith("was: 5 (the prototxt's head), now: 2, because: the dataset "
                                                       f"{tmp_path / 'ds'} holds 2 classes")


# ---- the reference nets: their own geometry back ----------------------------------------------------

@pytest.mark.parametrize("name,offsets", [
    ("voc-fcn32s", {"score": [19]}),
    ("voc-fcn16s", {"score_pool4c": [5], "score": [27]}),
    ("voc-fcn8s", {"score_pool4c": [5], "score_pool3c": [9], "score": [31]}),
])
def test_reference_geometry_comes_back(monkeypatch, tmp_path, name, offsets):
    fake_weights(monkeypatch, reference.vgg16_shapes(3))
    arch = name.rsplit("fcn", 1)[1]
    net, solver = reference.write_reference(tmp_path, name)
    out = tmp_path / f"{name}.yaml"
    write_config(net, solver, out, weights=tmp_path / "vgg16fc.caffemodel")
    cfg = load_config(out)
    assert (cfg.model.arch, cfg.model.stages, cfg.model.num_classes) == (f"fcn{arch}", 5, 21)
    assert (cfg.model.pad, cfg.model.input_channels, cfg.loss.normalize) == (100, 3, False)
    assert (cfg.solver.type, cfg.solver.base_lr, cfg.solver.momentum) == ("SGD", reference.LR[arch], 0.99)
    assert cfg.data.mean == pytest.approx(sum(reference.BGR_MEAN) / 3, abs=1e-3)
    assert crop_offsets(cfg) == offsets
    assert not [f for f in diagnose_config(cfg) if f.severity == "error"]


def test_reference_without_weights_is_refused_in_one_line(tmp_path, capsys):
    net, solver = reference.write_reference(tmp_path, "voc-fcn32s")
    out = tmp_path / "x.yaml"
    assert main(["doctor", str(net), str(solver), "--write-config", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "from-scratch" in err and "--weights" in err
    assert not out.exists()


def test_two_heads_refused(tmp_path):
    net, solver = reference.write_reference(tmp_path, "siftflow-fcn16s")
    with pytest.raises(NotExpressible, match="layer 'loss_geo' \\(SoftmaxWithLoss\\) does not map"):
        write_config(net, solver, tmp_path / "x.yaml")


# ---- every doctor case ------------------------------------------------------------------------------

REFUSED = {  # case -> the layer the refusal names
    "caffe-3906-bilinear-without-group": "'conv1'",  # 16 outputs: not VGG16's 64
    "digits-1525-fc6-shape": "'conv1'",
    "digits-913-gray-data-rgb-weights": "'conv1'",
    "longjon-caffe-3-constant-loss": "'conv1'",
}


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if (p / "case.yaml").is_file()))
def test_doctor_cases_build_or_refuse(monkeypatch, tmp_path, case):
    spec = yaml.safe_load((CASES / case / "case.yaml").read_text())
    folder = CASES / case
    net = folder / spec["train_val"]
    solver = folder / spec["solver"] if spec.get("solver") else None
    weights = None
    if spec.get("weights"):
        fake_weights(monkeypatch, spec["weights"])
        weights = tmp_path / "given.caffemodel"
    out = tmp_path / "out.yaml"
    try:
        write_config(net, solver, out, weights=weights)
    except (NotExpressible, ConfigError) as exc:
        message = str(exc)
        assert "\n" not in message and not out.exists()
        if case in REFUSED:
            assert f"layer {REFUSED[case]}" in message and "does not map" in message, message
        else:  # the only other refusal: a net that needs the weights the case does not give
            assert case == "pytorch-fcn-17-nan-lr" and "from-scratch" in message and "--weights" in message, message
        return
    assert case not in REFUSED
    cfg = load_config(out)
    train_val_net(cfg)  # builds
    errors = [f for f in diagnose_config(cfg) if f.severity == "error"]
    assert not errors, format_findings(errors)
    found = diagnose_files(net, solver, weights)
    text = out.read_text()
    assert all(f.code in text for f in found), [f.code for f in found if f.code not in text]


def test_head_classes_case_unifies_k(monkeypatch, tmp_path):
    case = CASES / "train-crf-rnn-31-head-classes"
    fake_weights(monkeypatch, yaml.safe_load((case / "case.yaml").read_text())["weights"])
    out = tmp_path / "crf.yaml"
    write_config(case / "train_val.prototxt", None, out, weights=tmp_path / "w.caffemodel")
    cfg = load_config(out)
    assert cfg.model.arch == "fcn16s" and cfg.model.num_classes == 3
    note = comments(out)["model.num_classes"]
    assert note.startswith("was: head layers disagree (") and "now: 3, because: doctor head-classes" in note
    assert "crop-offset" in comments(out)["model.arch"]
    assert crop_offsets(cfg)["score_pool4c"] == [5]
