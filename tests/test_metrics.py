"""fcnseg.metrics: the FCN score definitions on hand-computed confusion matrices."""
import math

import numpy as np
import pytest

from fcnseg.metrics import confusion, format_table, predicted_classes, scores


def test_confusion_counts_and_ignores():
    gt = np.array([[0, 0, 1, 255], [1, 1, 2, 0]])
    pr = np.array([[0, 1, 1, 0], [1, 0, 2, 2]])
    h = confusion(gt, pr, 3)
    assert h.tolist() == [[1, 1, 1], [1, 2, 0], [0, 0, 1]]
    assert h.sum() == 7  # the 255 pixel is not counted


def test_scores_match_hand_computation():
    h = np.array([[3, 1], [2, 4]])
    s = scores(h)
    assert s["pixel_acc"] == pytest.approx(7 / 10)
    assert s["mean_acc"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    iu0, iu1 = 3 / (4 + 5 - 3), 4 / (6 + 5 - 4)
    assert s["per_class_iu"] == pytest.approx([iu0, iu1])
    assert s["mean_iu"] == pytest.approx((iu0 + iu1) / 2)
    assert s["fw_iu"] == pytest.approx(0.4 * iu0 + 0.6 * iu1)


def test_absent_class_is_nan_and_left_out_of_means():
    h = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 0]])
    s = scores(h)
    assert s["per_class_iu"][2] is None and s["mean_iu"] == 1.0 and s["fw_iu"] == 1.0


def test_one_class_predictions_detected():
    h = confusion(np.array([0, 1, 1, 0]), np.zeros(4, int), 2)
    assert predicted_classes(h) == 1
    assert scores(h)["mean_iu"] == pytest.approx(0.25)


def test_empty_matrix_is_nan():
    assert math.isnan(scores(np.zeros((2, 2)))["mean_iu"])


def test_table_lists_classes_and_summary():
    text = format_table(scores(np.array([[3, 1], [2, 4]])), ["background", "nucleus"])
    assert "nucleus" in text and "mean IU" in text and "0.5714" in text
