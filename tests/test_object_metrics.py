"""fcnseg.object_metrics: objects matched one-to-one and scored (AP, F1, SEG, count error, error types)."""
import numpy as np
import pytest

from fcnseg.object_metrics import THRESHOLDS, matched, object_lines, overlaps, pool_scores, score_objects


def boxes(shape, *rects, ids=None) -> np.ndarray:
    out = np.zeros(shape, np.uint32)
    for i, (r0, r1, c0, c1) in enumerate(rects):
        out[r0:r1, c0:c1] = ids[i] if ids else i + 1
    return out


def test_identical_objects_score_one_whatever_their_ids():
    true = boxes((40, 40), (0, 10, 0, 10), (20, 30, 5, 15), (5, 15, 25, 35))
    pred = boxes((40, 40), (0, 10, 0, 10), (20, 30, 5, 15), (5, 15, 25, 35), ids=[70000, 3, 9])
    r = score_objects(true, pred)
    assert (r["ap50"], r["ap75"], r["ap_mean"], r["f1_50"], r["seg"], r["count_error"]) == (1, 1, 1, 1, 1, 0)
    assert r["mean_matched_iou"] == 1.0
    assert r["tp"] == [3] * len(THRESHOLDS) and sum(r["errors"].values()) == 0


def test_a_shifted_object_matches_up_to_its_iou():
    true = boxes((20, 20), (0, 10, 0, 10))
    pred = boxes((20, 20), (0, 10, 1, 11))  # IoU 90 / 110 = 0.818
    r = score_objects(true, pred)
    assert r["ap50"] == 1 and r["ap75"] == 1
    assert r["ap"] == [1.0] * 7 + [0.0] * 3  # 0.50 .. 0.80 match, 0.85 .. 0.95 do not
    assert r["mean_matched_iou"] == pytest.approx(90 / 110)
    assert r["seg"] == pytest.approx(90 / 110)


def test_merged_neighbours_are_counted_as_merged():
    true = boxes((20, 30), (0, 10, 0, 10), (0, 10, 10, 20))
    pred = boxes((20, 30), (0, 10, 0, 20))  # IoU 0.5 with each: not above 0.5
    r = score_objects(true, pred)
    assert (r["tp"][0], r["fp"][0], r["fn"][0]) == (0, 1, 2)
    assert r["ap50"] == 0 and r["count_error"] == 0.5
    assert r["seg"] == pytest.approx(0.5)  # the merged object covers each whole: Jaccard 0.5
    assert r["errors"] == {"missed": 0, "merged": 2, "split": 0, "poor": 0, "false": 0, "extra": 0}


def test_split_missed_and_false_objects():
    true = boxes((40, 40), (0, 10, 0, 20), (20, 30, 20, 30))
    pred = boxes((40, 40), (0, 10, 0, 10), (0, 10, 10, 20), (32, 38, 0, 6))  # halves of 1; 2 missed; one false
    r = score_objects(true, pred)
    assert r["ap50"] == 0 and r["seg"] == 0
    assert r["errors"] == {"missed": 1, "merged": 0, "split": 1, "poor": 0, "false": 1, "extra": 2}


def test_pooled_scores_sum_the_frames_counts():
    a = score_objects(boxes((20, 20), (0, 10, 0, 10)), boxes((20, 20), (0, 10, 0, 10)))
    b = score_objects(boxes((20, 20), (0, 10, 0, 10), (12, 18, 12, 18)), np.zeros((20, 20), np.uint16))
    pooled = pool_scores([a, b])
    assert (pooled["true_objects"], pooled["pred_objects"], pooled["tp"][0]) == (3, 1, 1)
    assert pooled["ap50"] == pytest.approx(1 / 3)
    assert pooled["seg"] == pytest.approx(1 / 3)
    assert pooled["errors"]["missed"] == 2
    lines = object_lines({"a": a, "b": b}, pooled)
    assert len(lines) == 4 and lines[-1].startswith("overall") and "missed 2" in lines[-1]


def test_empty_frames_and_bad_input():
    empty = np.zeros((5, 5), np.uint8)
    r = score_objects(empty, empty)
    assert r["ap50"] == 1 and r["seg"] == 1 and r["count_error"] == 0
    with pytest.raises(ValueError, match="one-to-one"):
        matched(overlaps(empty, empty), 0.3)
    with pytest.raises(ValueError, match="shapes"):
        overlaps(empty, np.zeros((5, 6), np.uint8))
