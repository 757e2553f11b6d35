"""fcnseg.train / fcnseg.evaluate on small synthetic data (seconds each)."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fcnseg.caffe_env import caffe_pb2
import yaml

from conftest import one_error_line, write_tiny_dataset
from fcnseg.cli import main
from fcnseg.config import load_config, validate_config
from fcnseg.cpu_kernels import kernel_report
from fcnseg.runs import newest_solverstate
from fcnseg.train import learning_rate, one_class_verdict, zero_weight_layers

caffe = pytest.importorskip("caffe")

# A small net that learns the synthetic discs in ~100 iterations on a CPU.
TINY = {"model": {"arch": "fcn8s", "stages": 3, "fc_channels": 16, "dropout": 0, "pad": "minimal"},
        "data": {"batch_size": 4, "scale": 0.02},
        "loss": {"normalize": True},
        "solver": {"type": "Adam", "base_lr": 1e-3, "momentum": 0.9, "max_iter": 60, "weight_decay": 0,
                   "random_seed": 1},
        "train": {"val_interval": 20, "snapshot_interval": 20, "display_interval": 5, "smoothing": 5}}


def write_cfg(path: Path, data_root: Path, **changes) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["data"]["root"] = str(data_root)
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def events(run: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


@pytest.fixture
def data(tmp_path):
    return write_tiny_dataset(tmp_path / "data", n_train=8, n_val=4, size=32)


def test_learning_rate_policies():
    c = validate_config({"solver": {"base_lr": 0.1, "lr_policy": "step", "gamma": 0.5, "stepsize": 10}})
    assert [learning_rate(c, i) for i in (0, 9, 10, 25)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    c = validate_config({"solver": {"base_lr": 0.1, "lr_policy": "poly", "power": 1, "max_iter": 100}})
    assert learning_rate(c, 50) == pytest.approx(0.05)


def test_training_learns_and_writes_the_run_folder(tmp_path, data, capsys):
    run = tmp_path / "run"
    rc = main(["train", write_cfg(tmp_path / "c.yaml", data), "--out", run])
    assert rc == 0
    for name in ("config.yaml", "train_val.prototxt", "solver.prototxt", "deploy.prototxt", "caffe.log",
                 "metrics.jsonl", "loss.png", "val.png", "best.caffemodel", "final.caffemodel"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "snapshots").glob("*.solverstate")) == [
        f"train_iter_{i}.solverstate" for i in (20, 40, 60)]
    train, val = events(run, "train"), events(run, "val")
    assert {"iter", "loss", "lr", "elapsed"} <= set(train[0])
    assert {"loss", "pixel_acc", "mean_acc", "mean_iu", "fw_iu", "per_class_iu", "confusion"} <= set(val[0])
    assert [v["iter"] for v in val] == [20, 40, 60]
    assert train[-1]["loss"] < train[0]["loss"]
    assert val[-1]["mean_iu"] > 0.7 and val[-1]["mean_iu"] >= val[0]["mean_iu"]
    assert np.sum(val[-1]["confusion"]) == 4 * 32 * 32
    out = capsys.readouterr().out
    assert "best val mean IU" in out
    assert out.count("3x3 convolutions: ") == 1 and kernel_report().line() in out  # said once, before training


def test_eval_prints_table_and_writes_eval_json(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert main(["train", write_cfg(tmp_path / "c.yaml", data, solver__max_iter=20), "--out", run]) == 0
    capsys.readouterr()
    assert main(["eval", run]) == 0
    out = capsys.readouterr().out
    assert "mean IU" in out and "class 1" in out
    result = json.loads((run / "eval.json").read_text())
    assert result["split"] == "val" and result["samples"] == 4
    best = max(v["mean_iu"] for v in events(run, "val"))
    assert result["mean_iu"] == pytest.approx(best, abs=1e-6)  # same weights, same data, same metric
    assert main(["eval", run, "--split", "train"]) == 0
    assert json.loads((run / "eval.json").read_text())["samples"] == 8
    from fcnseg.caffe_env import gpu_available
    capsys.readouterr()
    assert main(["eval", run, "--gpu", "99"]) == 2  # no machine has GPU 99; the probe says why
    assert "--gpu 99: " + gpu_available(99)[1] in capsys.readouterr().err
    assert json.loads((run / "eval.json").read_text())["samples"] == 8  # untouched
    other = tmp_path / "other.caffemodel"  # a real caffemodel of another net: refused, no scratch net left
    blob = {"shape": {"dim": [2, 1, 3, 3]}, "data": [0.0] * 18}
    other.write_bytes(caffe_pb2().NetParameter(name="other", layer=[
        {"name": "conv9", "type": "Convolution", "blobs": [blob]}]).SerializeToString())
    assert main(["eval", run, "--weights", other]) == 2
    assert "does not fit the run's net" in capsys.readouterr().err
    assert not list(run.glob(".eval.*"))


def test_resume_continues_numbering_and_matches_uninterrupted(tmp_path):
    # Deterministic setting: one training batch (so data order cannot differ), no dropout, fixed seed.
    d = write_tiny_dataset(tmp_path / "d", n_train=4, n_val=4)
    cfg = write_cfg(tmp_path / "c.yaml", d, solver__max_iter=40)
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", cfg, "--out", full]) == 0
    assert main(["train", cfg, "--out", part, "--set", "solver.max_iter=20"]) == 0
    # `part` stops at 20; resuming it with the full config trains it longer: only solver.max_iter differs,
    # which a resume may change without --force.
    assert main(["train", cfg, "--resume", part]) == 0
    assert load_config(part / "config.yaml").solver.max_iter == 40  # the run folder says what it ran
    assert [e["iter"] for e in events(part, "val")] == [20, 40]
    a = caffe.Net(str(full / "deploy.prototxt"), str(full / "final.caffemodel"), caffe.TEST)
    b = caffe.Net(str(part / "deploy.prototxt"), str(part / "final.caffemodel"), caffe.TEST)
    for name in a.params:
        for pa, pb in zip(a.params[name], b.params[name]):
            np.testing.assert_allclose(pa.data, pb.data, rtol=1e-5, atol=1e-6, err_msg=name)


def test_resume_refuses_a_changed_config_key_by_key(tmp_path, data, capsys):
    run = tmp_path / "run"
    cfg = write_cfg(tmp_path / "c.yaml", data, solver__max_iter=20)
    assert main(["train", cfg, "--out", run]) == 0
    capsys.readouterr()
    assert main(["train", cfg, "--resume", run, "--set", "solver.base_lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "solver.base_lr: 0.001 -> 0.5" in err and "--force" in err


def test_resume_may_change_max_iter_unless_the_schedule_depends_on_it(tmp_path, data, capsys):
    run = tmp_path / "run"
    cfg = write_cfg(tmp_path / "c.yaml", data, solver__max_iter=10, solver__lr_policy="poly", solver__power=1.0)
    assert main(["train", cfg, "--out", run]) == 0
    capsys.readouterr()
    assert main(["train", cfg, "--resume", run, "--set", "solver.max_iter=20"]) == 2
    err = one_error_line(capsys.readouterr().err)
    # why, and what to do: no "only solver.max_iter ... may change" that contradicts the refusal
    assert "solver.max_iter: 10 -> 20" in err and "lr_policy poly, because the rate decays to 0 at max_iter" in err
    assert "may change" not in err and "--force" in err
    assert "at iteration 10 the rate would go from 0 to 0.0005, then fall to 0 at 20" in err  # what --force does
    snapshot = re.search(r"--set init\.weights=(\S+?\.caffemodel)", err).group(1)
    assert Path(snapshot).is_file()
    # the first way on, as printed: a new run from the last snapshot's weights
    assert main(["train", cfg, "--out", tmp_path / "longer", "--set", "solver.max_iter=20",
                 "--set", f"init.weights={snapshot}"]) == 0
    assert main(["train", cfg, "--resume", run, "--set", "train.val_interval=5"]) == 0
    # the other: --force continues this run on the new schedule
    assert main(["train", cfg, "--resume", run, "--set", "solver.max_iter=20", "--force"]) == 0
    capsys.readouterr()


def test_resume_refusal_names_only_keys_that_may_change(tmp_path, data, capsys):
    run = tmp_path / "run"
    cfg = write_cfg(tmp_path / "c.yaml", data, solver__max_iter=10, solver__lr_policy="poly", solver__power=1.0)
    assert main(["train", cfg, "--out", run]) == 0
    capsys.readouterr()
    assert main(["train", cfg, "--resume", run, "--set", "solver.max_iter=20", "--set", "solver.base_lr=0.5"]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "only the train.*_interval keys may change" in err and "only solver.max_iter" not in err


def test_report_says_where_the_mean_comes_from(tmp_path, data, capsys):
    cfg = write_cfg(tmp_path / "c.yaml", data, solver__max_iter=1)
    assert main(["train", cfg, "--out", tmp_path / "a"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"input: \(image - 80\) \* 0.02; mean: train mean of .*dataset.yaml", out)
    assert main(["train", cfg, "--out", tmp_path / "b", "--set", "data.mean=12"]) == 0
    assert "input: (image - 12) * 0.02; mean: data.mean in the config" in capsys.readouterr().out
    # make-proto decides the same way, and weights from a run bring that run's mean
    best = tmp_path / "b" / "best.caffemodel"
    assert main(["make-proto", cfg, "-o", tmp_path / "p", "--set", f"init.weights={best}",
                 "--set", "data.mean=auto"]) == 0
    out = capsys.readouterr().out
    assert f"input: (image - 12) * 0.02; mean: the mean of the run {tmp_path / 'b'} that trained it" in out
    assert "mean_value: 12" in (tmp_path / "p" / "train_val.prototxt").read_text()


def test_sigint_snapshots_and_resumes(tmp_path, data):
    run = tmp_path / "run"
    cfg = write_cfg(tmp_path / "c.yaml", data, solver__max_iter=100000, train__snapshot_interval=100000,
                    train__val_interval=100000)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "fcnseg.cli", "train", str(cfg), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Wait until training has really started (the first train event is written at iteration 5).
    import time
    for _ in range(600):
        if (run / "metrics.jsonl").is_file() and events(run, "train"):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with: fcnseg train" in out
    state = newest_solverstate(run)
    assert state is not None
    stopped_at = int(state.stem.rsplit("_", 1)[1])
    assert main(["train", str(cfg), "--resume", str(run), "--set", f"solver.max_iter={stopped_at + 3}",
                 "--force"]) == 0
    assert (run / "final.caffemodel").is_file()


def test_huge_learning_rate_stops_with_nan_message(tmp_path, data):
    cfg = write_cfg(tmp_path / "c.yaml", data, solver__type="SGD", solver__base_lr=1e6, loss__normalize=False,
                    solver__max_iter=50, train__snapshot_interval=1)
    # A subprocess: after a NaN, Caffe's heap may be corrupt and fcnseg leaves with os._exit.
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "train", str(cfg), "--out", str(tmp_path / "run"),
                        "--force"], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "training stopped" in r.stdout and ("loss became nan" in r.stdout or "non-finite" in r.stdout)
    assert "learning rate is too high" in r.stdout and "the last good snapshot is" in r.stdout
    nan = events(tmp_path / "run", "nan")
    assert len(nan) == 1
    state = newest_solverstate(tmp_path / "run")
    assert int(state.stem.rsplit("_", 1)[1]) < nan[0]["iter"]  # the NaN weights were never snapshotted


def test_untrainable_setting_warns_one_class(tmp_path, data, capsys):
    # lr 0: nothing can move; zero-initialised score layers predict one class everywhere.
    cfg = write_cfg(tmp_path / "c.yaml", data, solver__base_lr=1e-30, solver__max_iter=20)
    assert main(["train", cfg, "--out", tmp_path / "run", "--force"]) == 0
    out = capsys.readouterr().out
    assert "predicts ONE class for every pixel" in out and "Likely causes" in out
    assert "DEAD: training loss 0.6931 at iteration 10 -> 0.6931 at 20: flat" in out
    val = events(tmp_path / "run", "val")[0]
    assert 0.0 < val["foreground_prob"] < 1.0


def test_one_class_verdict_tells_dead_from_not_learned_yet():
    falling = [(10, 0.66), (20, 0.54), (30, 0.34), (40, 0.25)]
    verdict, why = one_class_verdict(falling, [0.05, 0.12], [])
    assert verdict == "not learned yet"
    assert "0.5400 at iteration 20 -> 0.2500 at 40: still falling" in why
    assert "foreground probability rising (0.050 -> 0.120)" in why
    assert "not rising yet (0.120 -> 0.050)" in one_class_verdict(falling, [0.12, 0.05], [])[1]
    flat = [(10, 0.1385), (20, 0.1370), (30, 0.1372), (40, 0.1368)]  # < 2 % lower than at iteration 20
    verdict, why = one_class_verdict(flat, [0.05, 0.06], [])
    assert verdict == "dead" and "flat" in why
    verdict, why = one_class_verdict(falling, [0.05, 0.12], ["conv1_1", "conv1_2"])
    assert verdict == "dead" and "conv1_1, conv1_2 still have all-zero weights" in why
    assert one_class_verdict([(5, 0.7)], [], [])[0] == "not learned yet"


def test_zero_weight_layers_names_layers_left_at_caffes_default_filler(tmp_path):
    proto = tmp_path / "n.prototxt"
    proto.write_text("""
input: "data" input_shape { dim: 1 dim: 1 dim: 8 dim: 8 }
layer { name: "filled" type: "Convolution" bottom: "data" top: "a"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "msra" } } }
layer { name: "default" type: "Convolution" bottom: "a" top: "b" convolution_param { num_output: 2 kernel_size: 1 } }
""")
    assert zero_weight_layers(caffe.Net(str(proto), caffe.TEST)) == ["default"]


def test_gpu_that_cannot_run_exits_2_with_the_probe_reason(tmp_path, data, capsys):
    from fcnseg.caffe_env import gpu_available
    ok, reason = gpu_available(99)  # no machine has 100 GPUs: CPU-only build, no driver or no device 99
    assert not ok
    rc = main(["train", write_cfg(tmp_path / "c.yaml", data), "--out", tmp_path / "run", "--gpu", "99"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--gpu 99: " + reason in err
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_is_refused(tmp_path, data, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "something").write_text("x")
    assert main(["train", write_cfg(tmp_path / "c.yaml", data), "--out", run]) == 2
    assert "--resume" in capsys.readouterr().err


def test_doctor_errors_stop_training_before_anything_is_written(tmp_path, data, capsys):
    cfg = write_cfg(tmp_path / "c.yaml", data, solver__type="SGD", solver__base_lr=1e6, loss__normalize=False)
    run = tmp_path / "run"
    assert main(["train", cfg, "--out", run]) == 2
    captured = capsys.readouterr()
    assert "solver-step" in captured.out and "add --force to train anyway" in captured.err
    assert not run.exists()


def test_train_reads_dataset_yaml_and_builds_each_net_once(tmp_path, data):
    """From `fcnseg train` to the end of a one-step run: dataset.yaml is read once, the config resolved once,
    each net built once (doctor checks the nets that are written, it does not build its own)."""
    from fcnseg import dataset, nets, resolve, solver
    watched = {f.__code__: name for name, f in [
        ("read dataset.yaml", dataset.read_dataset_yaml), ("resolve", resolve.resolve),
        ("train_val_net", nets.train_val_net), ("deploy_net", nets.deploy_net), ("solver_param", solver.solver_param)]}
    calls = {name: 0 for name in watched.values()}

    def count(frame, event, _arg):
        if event == "call" and frame.f_code in watched:
            calls[watched[frame.f_code]] += 1

    cfg = write_cfg(tmp_path / "c.yaml", data, solver__max_iter=1, train__val_interval=1, train__snapshot_interval=1)
    sys.setprofile(count)
    try:
        code = main(["train", str(cfg), "--out", str(tmp_path / "run")])
    finally:
        sys.setprofile(None)
    assert code == 0
    assert calls == {"read dataset.yaml": 1, "resolve": 1, "train_val_net": 1, "deploy_net": 1, "solver_param": 1}
