"""`fcnseg doctor TRAIN_VAL [SOLVER] --write-config OUT.yaml` (fcnseg/doctor/write_config.py): on the seed, the
FCN reference's own nets (tests/fcn_reference.py) and every case in tests/fixtures/doctor_cases/."""
from pathlib import Path

import pytest
import yaml

import fcn_reference as reference
from conftest import SEED_DIR

caffe = pytest.importorskip("caffe")

from fcnseg import doctor, recipes  # noqa: E402
from fcnseg.caffemodel import convert_hint  # noqa: E402
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


def test_dataset_gives_classes_channels_and_ignore_label(tmp_path):
    """--data: the 21-class RGB post on a 1-channel, 2-class dataset whose unlabelled pixels are 254."""
    from test_caffe_lmdb import import_args, lmdb_set

    paths, _ = lmdb_set(tmp_path / "src")
    assert main([str(a) for a in import_args(paths, tmp_path / "ds", "--ignore-label", "254", "--tile", "16")]) == 0
    net, solver = hand_written(tmp_path / "post", 3)
    out = tmp_path / "post.yaml"
    written = write_config(net, solver, out, data_root=tmp_path / "ds")
    cfg = load_config(out)
    assert (cfg.model.num_classes, cfg.model.input_channels, cfg.data.ignore_label) == (2, 1, 254)
    assert (cfg.model.arch, cfg.model.stages, cfg.model.norm) == ("fcn8s", 5, "batch")
    # BatchNorm added on a tiled dataset: the recipe's batch of tiles, not one image per step
    assert cfg.data.batch_size == recipes.SCRATCH_NORM_BATCH and "data.batch_size: 4" in written.summary
    assert "doctor batchnorm-batch-one" in comments(out)["data.batch_size"]
    notes = comments(out)
    assert notes["model.input_channels"].endswith("was: 3, now: 1, because: the dataset "
                                                  f"{tmp_path / 'ds'} holds 1-channel images")
    assert notes["data.ignore_label"].endswith("was: 255, now: 254, because: the dataset "
                                               f"{tmp_path / 'ds'} marks pixels of no class with it")
    # the advice now names the 1-channel conversion: the net takes the dataset's one channel
    assert "vgg16_1ch" in written.summary
    assert not [f for f in diagnose_config(cfg) if f.severity == "error"]


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


@pytest.mark.parametrize("name", ["voc-fcn32s", "voc-fcn8s"])
def test_reference_without_weights_moves_to_the_from_scratch_recipe(tmp_path, capsys, name):
    """A weightless 5-stage VGG FCN keeps its arch and depth and gets BatchNorm and the from-scratch solver,
    each change commented, and one line says what keeping the original needs."""
    net, solver = reference.write_reference(tmp_path, name)
    out = tmp_path / "x.yaml"
    assert main(["doctor", str(net), str(solver), "--write-config", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    summary = [line for line in printed if line.startswith("no --weights:")]
    assert len(summary) == 1, printed
    assert f"kept {name[4:]} with 5 stages" in summary[0] and "model.norm: batch" in summary[0]
    assert "model.pad: minimal, Adam base_lr 0.001 momentum 0.9, poly power 1 on a normalized loss" in summary[0]
    assert "data.batch_size" not in summary[0]  # the image size is unknown without --data: batch kept
    # the original needs weights: for this 3-channel net, not the 1-channel conversion's file
    assert "no BatchNorm, SGD 1e-" in summary[0] and "--weights" in summary[0] and "3 input channels" in summary[0]
    assert "vgg16_1ch" not in summary[0]
    cfg = load_config(out)
    assert (cfg.model.arch, cfg.model.stages, cfg.model.norm, cfg.model.input_channels) == (name[4:], 5, "batch", 3)
    assert (cfg.solver.type, cfg.solver.base_lr, cfg.solver.momentum, cfg.loss.normalize) == \
        ("Adam", recipes.SCRATCH_NORM.base_lr, recipes.SCRATCH_NORM.momentum, True)
    assert (cfg.solver.lr_policy, cfg.solver.power, cfg.model.pad, cfg.data.batch_size) == ("poly", 1.0, "minimal", 1)
    notes = comments(out)
    assert notes["solver.lr_policy"].startswith("was: fixed, now: poly, because: the from-scratch recipe with BatchNorm")
    assert "was: 100, now: minimal, because:" in notes["model.pad"]
    assert notes["model.norm"].startswith("was: none (no normalisation layers), now: batch, because: no pretrained "
                                          "weights, and 5 pooling stages (stride 32)")
    assert notes["solver.type"].startswith("was: SGD base_lr 1e-")
    assert "was: false, now: true, because:" in notes["loss.normalize"]
    assert main(["make-proto", str(out), "-o", str(tmp_path / "net")]) == 0
    assert sum(layer.type == "BatchNorm" for layer in train_val_net(cfg).layer) == 15  # 13 convs, fc6, fc7
    capsys.readouterr()
    assert main(["doctor", "--config", str(out)]) == 0
    assert not [f for f in diagnose_config(cfg) if f.severity == "error"]


def hand_written(folder: Path, channels: int) -> tuple[Path, Path]:
    """The issue's post: the reference FCN-8s with LMDB data and gaussian fillers, trained without weights."""
    folder.mkdir(parents=True, exist_ok=True)
    text = reference.voc_net("8s", channels, lmdb=True).replace(
        "convolution_param { num_output: ", 'convolution_param { weight_filler { type: "gaussian" std: 0.01 } '
        "num_output: ")
    mean = " ".join(f"mean_value: {m}" for m in (reference.BGR_MEAN if channels == 3 else reference.GRAY_MEAN))
    text = text.replace('data_param { source: "train_data_lmdb"', f'transform_param {{ {mean} }} '
                        'data_param { source: "train_data_lmdb"')
    (folder / "train_val.prototxt").write_text(text)
    (folder / "solver.prototxt").write_text(reference.solver("8s", "train_val.prototxt"))
    return folder / "train_val.prototxt", folder / "solver.prototxt"


def test_from_scratch_advice_names_the_conversion_for_the_channels(tmp_path):
    """doctor's from-scratch fix: the 1-channel conversion for a 1-channel net, ImageNet VGG16 as it is for 3 (not
    a file named vgg16_1ch), and both when the channels are unknown."""
    net, solver = hand_written(tmp_path, 3)
    found = {f.code: f for f in diagnose_files(net, solver)}
    assert found["from-scratch"].severity == "error"
    assert "keeps its 3 input channels" in found["from-scratch"].fix and "vgg16_1ch" not in found["from-scratch"].fix
    assert "to 1 input channel with `fcnseg weights convert" in convert_hint(1) and "vgg16_1ch" in convert_hint(1)
    assert "your input channels" in convert_hint(None) and "takes 3" in convert_hint(None)
    # --write-config on the post: a config, not the refusal
    out = tmp_path / "post.yaml"
    written = write_config(net, solver, out)
    assert written.summary and "3 input channels" in written.summary
    assert load_config(out).model.norm == "batch"


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


def case_files(case: str):
    spec = yaml.safe_load((CASES / case / "case.yaml").read_text())
    folder = CASES / case
    return spec, folder / spec["train_val"], folder / spec["solver"] if spec.get("solver") else None


@pytest.mark.parametrize("with_weights", [False, True])
@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if (p / "case.yaml").is_file()))
def test_doctor_cases_build_or_refuse(monkeypatch, tmp_path, case, with_weights):
    """Every VGG-trunk case gets a config that builds and passes doctor, with and without weights (the case's own,
    else VGG16's for the net's channels); the others are refused in one line naming the first layer."""
    spec, net, solver = case_files(case)
    weights = None
    if with_weights:
        channels = load_config(write_config(net, solver, tmp_path / "probe.yaml").path).model.input_channels \
            if case not in REFUSED else 3
        fake_weights(monkeypatch, spec.get("weights") or reference.vgg16_shapes(channels))
        weights = tmp_path / "given.caffemodel"
    out = tmp_path / "out.yaml"
    try:
        written = write_config(net, solver, out, weights=weights)
    except (NotExpressible, ConfigError) as exc:
        message = str(exc)
        assert "\n" not in message and not out.exists()
        assert case in REFUSED, message
        assert f"layer {REFUSED[case]}" in message and "does not map" in message, message
        return
    assert case not in REFUSED
    cfg = load_config(out)
    train_val_net(cfg)  # builds
    errors = [f for f in diagnose_config(cfg) if f.severity == "error"]
    assert not errors, format_findings(errors)
    found = diagnose_files(net, solver, weights)
    text = out.read_text()
    assert all(f.code in text for f in found), [f.code for f in found if f.code not in text]
    if weights is not None:
        assert written.summary is None
    elif cfg.model.stages > recipes.SCRATCH_MAX_STAGES:  # deeper than trains from scratch without BatchNorm
        assert cfg.model.norm == "batch" and "model.norm: batch" in written.summary


def test_seed_with_weights_keeps_its_solver_and_depth(monkeypatch, tmp_path, capsys):
    fake_weights(monkeypatch, reference.vgg16_shapes(1))
    out = tmp_path / "seed.yaml"
    written = write_config(SEED_NET, SEED_SOLVER, out, weights=tmp_path / "vgg16_1ch.caffemodel")
    cfg = load_config(out)
    assert written.summary is None and cfg.model.norm == "none" and cfg.model.stages == 3
    assert cfg.init.weights == str((tmp_path / "vgg16_1ch.caffemodel").resolve())
    assert not [f for f in diagnose_config(cfg) if f.severity == "error"]
    assert main(["make-proto", str(out), "-o", str(tmp_path / "net")]) == 0


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
