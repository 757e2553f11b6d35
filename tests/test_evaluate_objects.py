"""fcnseg.evaluate_objects: the run's objects on whole val frames, scored (tiny run, random weights)."""
import json

import numpy as np
import pytest
from conftest import make_objects_run, make_run, raw_image
from fcnseg import files
from fcnseg.dataset import save_val_objects
from fcnseg.errors import DataError, RunError
from fcnseg.evaluate_objects import add_to_eval, evaluate_objects
from fcnseg.images import apply_window, net_input
from fcnseg.object_metrics import score_objects
from fcnseg.objects import ObjectRoles, label_objects
from fcnseg.predict import load_predictor, predict

pytest.importorskip("caffe")


def test_scores_each_val_frame_and_pools_them(tmp_path):
    run = make_objects_run(tmp_path)
    predictor = load_predictor(run)
    frames = []
    for i in range(2):
        gray = apply_window(raw_image(60, 80, seed=i), predictor.facts.window)
        true = np.zeros((60, 80), np.uint16)
        true[10:30, 10:30], true[35:55, 40:70] = 4, 9
        frames.append((f"s.tif#{i}", gray, true))
    save_val_objects(tmp_path / "data" / files.VAL_OBJECTS_FILE, frames)
    result = evaluate_objects(run)
    assert list(result["frames"]) == ["s.tif#0", "s.tif#1"]
    for name, gray, true in frames:
        probs = predict(predictor, net_input(gray, predictor.facts.mean, predictor.facts.scale))
        assert result["frames"][name] == score_objects(true, label_objects(probs, ObjectRoles(1, 2, 4)))
    assert result["overall"]["true_objects"] == 4
    assert 0 <= result["foreground_mean_iu"] <= 1
    (run / "eval.json").write_text(json.dumps({"mean_iu": 0.5}))
    add_to_eval(run / "eval.json", result)
    written = json.loads((run / "eval.json").read_text())
    assert written["mean_iu"] == 0.5 and written["objects"]["overall"]["ap50"] == result["overall"]["ap50"]


def test_needs_an_instances_dataset_and_a_net_trained_for_objects(tmp_path):
    run = make_objects_run(tmp_path / "a")
    with pytest.raises(DataError, match="data import --instances"):
        evaluate_objects(run)
    plain = make_run(tmp_path / "b")
    with pytest.raises(RunError, match="not trained for objects"):
        evaluate_objects(plain)
