"""fcnseg.doctor.log: Caffe glog fixtures (tests/fixtures/doctor_logs, Caffe 1.0's line format) and fcnseg's
metrics.jsonl, one per curve pattern, a healthy curve that must stay quiet, and the CLI."""
import json
import math
from pathlib import Path

import pytest

from fcnseg.doctor.log import curve_findings, read_log, with_causes
from fcnseg.doctor.facts import Finding
from fcnseg.errors import ConfigError

from conftest import SEED_DIR

LOGS = Path(__file__).parent / "fixtures" / "doctor_logs"
CASES = Path(__file__).parent / "fixtures" / "doctor_cases"


def codes(findings):
    return {f.code for f in findings}


def test_reads_caffe_lines():
    log = read_log(LOGS / "uniform_ln21.log")
    assert log.kind == "caffe" and len(log.losses) == 12 and log.losses[1][0] == 20
    assert log.losses[0][1] == pytest.approx(math.log(21), rel=1e-5)
    assert [it for it, _ in log.outputs[("Test", "accuracy")]] == [0, 100, 200]
    assert log.outputs[("Test", "loss")][0][1] == pytest.approx(3.04452)


@pytest.mark.parametrize("name,expected", [
    ("uniform_ln21.log", {"log-uniform", "log-accuracy"}),
    ("summed_frozen.log", {"log-frozen"}),
    ("clamp_87.log", {"log-clamp"}),
    ("nan.log", {"log-nan"}),
    ("rising.log", {"log-rising"}),
    ("accuracy_majority.log", {"log-accuracy"}),
    ("healthy.log", set()),
])
def test_each_pattern(name, expected):
    assert codes(curve_findings(read_log(LOGS / name))) == expected


def test_messages_name_the_numbers():
    uniform = {f.code: f for f in curve_findings(read_log(LOGS / "uniform_ln21.log"))}
    assert "ln 21" in uniform["log-uniform"].message and "1/21" in uniform["log-accuracy"].message
    majority = curve_findings(read_log(LOGS / "accuracy_majority.log"))[0]
    assert "0.7539" in majority.message and "majority" in majority.message
    nan = curve_findings(read_log(LOGS / "nan.log"))[0]
    assert "iteration 80" in nan.message and "310000 at iteration 60" in nan.message
    clamp = curve_findings(read_log(LOGS / "clamp_87.log"))[0]
    assert "−ln(FLT_MIN)" in clamp.message and "iteration 60" in clamp.message


def test_known_k_and_summed_loss():
    """K from the prototxt: ln 2 is a dead binary net; with pixels known the per-pixel value is shown."""
    frozen = curve_findings(read_log(LOGS / "summed_frozen.log"), num_classes=6, summed=True, pixels=187500)
    f = next(f for f in frozen if f.code == "log-frozen")
    assert "pixels × ln K" in f.message and "ln 6" in f.message
    assert "log-uniform" not in codes(curve_findings(read_log(LOGS / "uniform_ln21.log"), num_classes=2))


def test_metrics_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    events = [{"event": "train", "iter": 20 * i, "loss": 0.6931, "raw_loss": math.log(2)} for i in range(6)]
    events += [{"event": "val", "iter": 100 * i, "loss": 0.69, "pixel_acc": 0.871, "mean_iu": 0.43} for i in range(3)]
    events.append({"event": "nan", "iter": 140, "loss": "nan"})
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n{\"event\": \"tra")  # cut by a kill
    log = read_log(path)
    assert log.kind == "fcnseg" and len(log.losses) == 7
    found = {f.code: f for f in curve_findings(log, num_classes=2)}
    assert set(found) == {"log-nan", "log-uniform", "log-accuracy"}
    assert "0.871" in found["log-accuracy"].message


def test_not_a_log(tmp_path):
    (tmp_path / "x.log").write_text("hello\n")
    with pytest.raises(ConfigError, match="no training curve"):
        read_log(tmp_path / "x.log")
    with pytest.raises(ConfigError, match="not found"):
        read_log(tmp_path / "missing.log")


def test_causes_pick_the_right_direction():
    log = curve_findings(read_log(LOGS / "nan.log"))
    small = Finding("error", "solver-step", "… barely move the weights …", "fix")
    large = Finding("error", "solver-step", "… Steps that large overshoot …", "fix")
    assert "The prototxt given shows none" in with_causes(log, [small])[0].message
    assert "Likely causes in the prototxt: solver-step" in with_causes(log, [large])[0].message


def test_cli_log_with_prototxt(run_cli, capsys):
    case = CASES / "longjon-caffe-3-constant-loss"
    assert run_cli("doctor", "--log", LOGS / "uniform_ln21.log", case / "train_val.prototxt",
                   case / "solver.prototxt") == 1
    out = capsys.readouterr().out
    assert out.index("ERROR   log-uniform") < out.index("WARNING zero-init")
    assert "Likely causes in the prototxt: zero-init" in " ".join(out.split())
    assert run_cli("doctor", "--log", LOGS / "uniform_ln21.log", SEED_DIR / "train_val.prototxt") == 1
    assert "log-uniform" not in capsys.readouterr().out  # the seed has K = 5: ln 21 is not its uniform loss
    assert run_cli("doctor", "--log", LOGS / "healthy.log") == 0
    assert "no problems found" in capsys.readouterr().out
    assert run_cli("doctor", "--log", LOGS / "healthy.log", "--config", "c.yaml") == 2


def test_stuck_accuracy_named_from_the_val_labels(tmp_path):
    """With --data-check the val label LMDB says which class the stuck accuracy (0.7539) stands for."""
    import numpy as np
    from conftest import write_lmdb
    from fcnseg.doctor import diagnose_log

    label = np.zeros((1, 8, 8), np.uint8)
    label.flat[:17] = 1          # 17 pixels class 1
    label.flat[17] = 255         # one ignored: class 0 holds 46 of the 63 labelled pixels = 0.7302
    for split in ("train", "val"):
        write_lmdb(tmp_path / f"{split}_images", [np.full((1, 8, 8), 9, np.uint8)] * 3)
        write_lmdb(tmp_path / f"{split}_labels", [label] * 3)
    layers = []
    for phase, split in (("TRAIN", "train"), ("TEST", "val")):
        for top, kind in (("data", "images"), ("label", "labels")):
            layers.append(f'layer {{ name: "{top}" type: "Data" top: "{top}" include {{ phase: {phase} }} '
                          f'data_param {{ source: "{tmp_path}/{split}_{kind}" batch_size: 1 backend: LMDB }} }}')
    layers += ['layer { name: "score" type: "Convolution" bottom: "data" top: "score" '
               'convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "msra" } } }',
               'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" '
               'loss_param { ignore_label: 255 } }']
    (tmp_path / "train_val.prototxt").write_text("\n".join(layers))
    log = (LOGS / "accuracy_majority.log").read_text().replace("accuracy = 0.7539", "accuracy = 0.730159")
    (tmp_path / "caffe.log").write_text(log)
    found = diagnose_log(tmp_path / "caffe.log", tmp_path / "train_val.prototxt", data_check=True)
    f = next(f for f in found if f.code == "log-accuracy")
    assert "the share of class 0 in the val labels (0.7302)" in f.message
    plain = diagnose_log(tmp_path / "caffe.log", tmp_path / "train_val.prototxt")
    assert "majority-class fraction" in next(f for f in plain if f.code == "log-accuracy").message
