"""fcnseg/inputs.py: what input a set of weights expects (a converted VGG16's recorded mean, a run's mean), and
the warning when a config's input differs. The caffemodels come from the `models` fixture (tests/conftest.py)."""

from fcnseg import caffemodel, inputs
from fcnseg.config import validate_config



def test_input_mean_mismatch(tmp_path, models):
    m = caffemodel.recorded_gray_mean(models["loadable_1ch"])
    ok = validate_config({"model": {"num_classes": 2}, "data": {"mean": float(m)}})
    assert inputs.input_mean_mismatch(ok, models["loadable_1ch"]) is None
    off = validate_config({"model": {"num_classes": 2}, "data": {"mean": 30.0}})
    assert "set data.mean: 114.452" in inputs.input_mean_mismatch(off, models["loadable_1ch"])
    assert inputs.input_mean_mismatch(off, models["loadable"]) is None


def test_mismatch_tolerates_a_few_grey_levels(models):
    m = caffemodel.recorded_gray_mean(models["loadable_1ch"])
    near = validate_config({"model": {"num_classes": 2}, "data": {"mean": m + inputs.MEAN_TOLERANCE - 0.5}})
    assert inputs.input_mean_mismatch(near, models["loadable_1ch"]) is None
    far = validate_config({"model": {"num_classes": 2}, "data": {"mean": m + inputs.MEAN_TOLERANCE + 1}})
    assert "set data.mean: 114.452" in inputs.input_mean_mismatch(far, models["loadable_1ch"])


def test_weights_of_a_run_expect_the_runs_mean(tmp_path, models):
    from fcnseg.inputs import expected_input
    from fcnseg.resolve import resolve
    from fcnseg.runs import build_definition, write_definition
    run = tmp_path / "run"
    trained = validate_config({"model": {"num_classes": 2, "fc_channels": 64}, "data": {"mean": 97.5, "scale": 0.5}})
    write_definition(build_definition(resolve(trained)), run)
    (run / "snapshots").mkdir()
    for path in (run / "best.caffemodel", run / "snapshots" / "train_iter_2.caffemodel"):
        path.write_bytes(models["loadable"].read_bytes())  # any caffemodel without a recorded mean
        got = expected_input(path)
        assert (got.mean, got.scale) == (97.5, 0.5) and str(run.resolve()) in got.source
    nxt = validate_config({"model": {"num_classes": 2}, "init": {"weights": str(run / "best.caffemodel")}})
    assert resolve(nxt).config.data.mean == 97.5
    assert "scales by 1" in inputs.input_mean_mismatch(resolve(nxt).config, run / "best.caffemodel")
    assert expected_input(models["loadable"]) is None  # outside any run, nothing recorded
