"""Objects scored as the field scores them: two label images (0 background, one id per object) matched
one-to-one, no Caffe and no net.

- AP at IoU threshold t (Data Science Bowl 2018, the StarDist paper): a true and a predicted object match when
  their IoU exceeds t; AP = TP / (TP + FP + FN). For t >= 0.5 an object can overlap at most one other with IoU
  above t, so the matching is unique without an assignment solver; thresholds below 0.5 are refused.
- F1 at 0.5 = 2 TP / (2 TP + FP + FN); the mean IoU of the pairs matched at 0.5.
- SEG (Cell Tracking Challenge): per true object, the Jaccard index with the predicted object that covers more
  than half of it (0 if none), averaged over the true objects.
- count error |N_pred - N_true| / N_true.
- what the unmatched objects at 0.5 are (`error_types`): true objects missed, merged into one prediction with
  another, split into pieces, or found but too poorly (IoU <= 0.5); predictions that are false (mostly on
  background) or extra pieces of a true object.

`score_objects(true, pred)` scores one frame; `pool_scores(frames)` the frames together (TP, FP, FN summed
over frames, SEG over every true object); `object_lines(result)` the lines `fcnseg eval --instances` prints.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50, 0.55, ..., 0.95


@dataclass(frozen=True)
class Overlaps:
    """The overlap table of two label images: every (true id, predicted id) pair that shares pixels, with
    the shared pixel count, and the areas of all objects (ids 1.., background 0 left out)."""

    true_ids: np.ndarray  # (T,) the true object ids
    true_areas: np.ndarray  # (T,)
    pred_ids: np.ndarray  # (P,)
    pred_areas: np.ndarray  # (P,)
    pair_true: np.ndarray  # (M,) index into true_ids of each overlapping pair
    pair_pred: np.ndarray  # (M,) index into pred_ids
    pair_shared: np.ndarray  # (M,) pixels the pair shares

    @property
    def pair_iou(self) -> np.ndarray:
        union = self.true_areas[self.pair_true] + self.pred_areas[self.pair_pred] - self.pair_shared
        return self.pair_shared / np.maximum(union, 1)


def overlaps(true: np.ndarray, pred: np.ndarray) -> Overlaps:
    """The overlap table of label images `true` and `pred` of one shape (any integer dtype; 0 is
    background). Sparse: memory grows with the number of overlapping pairs, not objects squared.
    Raises ValueError when the shapes differ."""
    if true.shape != pred.shape:
        raise ValueError(f"label images of shapes {true.shape} and {pred.shape}")
    t, p = true.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    true_ids, true_areas = np.unique(t[t > 0], return_counts=True)
    pred_ids, pred_areas = np.unique(p[p > 0], return_counts=True)
    both = (t > 0) & (p > 0)
    ti = np.searchsorted(true_ids, t[both])
    pi = np.searchsorted(pred_ids, p[both])
    pairs, shared = np.unique(ti * max(len(pred_ids), 1) + pi, return_counts=True)
    return Overlaps(true_ids, true_areas, pred_ids, pred_areas,
                    pairs // max(len(pred_ids), 1), pairs % max(len(pred_ids), 1), shared)


def matched(table: Overlaps, threshold: float) -> np.ndarray:
    """Indices of the overlapping pairs that match at IoU > `threshold` (>= 0.5, so one-to-one)."""
    if threshold < 0.5:
        raise ValueError(f"IoU threshold {threshold}: one-to-one matching by threshold needs >= 0.5")
    return np.flatnonzero(table.pair_iou > threshold)


def seg_measure(table: Overlaps) -> float:
    """The Cell Tracking Challenge's SEG: the mean over true objects of the Jaccard index with the predicted
    object covering more than half of it (0 when none does); 1.0 for a frame without true objects."""
    if not len(table.true_ids):
        return 1.0
    covering = table.pair_shared > 0.5 * table.true_areas[table.pair_true]
    jaccard = np.zeros(len(table.true_ids))
    jaccard[table.pair_true[covering]] = table.pair_iou[covering]
    return float(jaccard.mean())


def error_types(table: Overlaps, threshold: float = 0.5) -> dict[str, int]:
    """The objects left unmatched at IoU > `threshold`, by cause.

    True objects: `merged` (the prediction covering more than half of it covers more than half of another
    true object too), `split` (two or more predictions lie mostly inside it), `missed` (no prediction covers
    half of it and none lies mostly inside it), `poor` (found, but IoU <= threshold). Predictions: `false`
    (at most half of it on true objects) and `extra` (mostly on objects, a piece or a poor fit; a prediction
    that merges objects is counted by them, as `merged`).
    """
    pairs = matched(table, threshold)
    true_ok = np.zeros(len(table.true_ids), bool)
    pred_ok = np.zeros(len(table.pred_ids), bool)
    true_ok[table.pair_true[pairs]] = True
    pred_ok[table.pair_pred[pairs]] = True
    # A prediction covering more than half of a true object; a prediction lying mostly inside a true object.
    covers = table.pair_shared > 0.5 * table.true_areas[table.pair_true]
    inside = table.pair_shared > 0.5 * table.pred_areas[table.pair_pred]
    covered_by = np.bincount(table.pair_pred[covers], minlength=len(table.pred_ids))  # true objects per pred
    pieces = np.bincount(table.pair_true[inside], minlength=len(table.true_ids))  # preds inside each true
    merging = np.zeros(len(table.true_ids), bool)
    merging[table.pair_true[covers & (covered_by[table.pair_pred] >= 2)]] = True
    has_cover = np.zeros(len(table.true_ids), bool)
    has_cover[table.pair_true[covers]] = True
    on_objects = np.bincount(table.pair_pred, weights=table.pair_shared, minlength=len(table.pred_ids))
    background = on_objects <= 0.5 * table.pred_areas
    merger = covered_by >= 2
    lost = ~true_ok
    merged = lost & merging
    split = lost & ~merging & (pieces >= 2)
    missed = lost & ~merging & ~split & ~has_cover & (pieces == 0)
    return {"missed": int(missed.sum()), "merged": int(merged.sum()), "split": int(split.sum()),
            "poor": int((lost & ~merged & ~split & ~missed).sum()),
            "false": int((~pred_ok & background).sum()), "extra": int((~pred_ok & ~background & ~merger).sum())}


def score_objects(true: np.ndarray, pred: np.ndarray) -> dict:
    """The object scores of one frame (see the module docstring) as plain data: counts, TP/FP/FN per
    threshold, AP@0.5, AP@0.75, mean AP over THRESHOLDS, F1@0.5, mean matched IoU, SEG, count error and
    the error types at 0.5."""
    table = overlaps(true, pred)
    n_true, n_pred = len(table.true_ids), len(table.pred_ids)
    tp = [int(len(matched(table, t))) for t in THRESHOLDS]
    ious = table.pair_iou[matched(table, 0.5)]
    result = {"true_objects": n_true, "pred_objects": n_pred, "tp": tp,
              "fp": [n_pred - m for m in tp], "fn": [n_true - m for m in tp],
              "seg": seg_measure(table), "matched_iou_sum": float(ious.sum()),
              "errors": error_types(table)}
    return _summary(result)


def _summary(counts: dict) -> dict:
    """Add the ratios to summed counts (tp/fp/fn per threshold, objects, matched_iou_sum)."""
    tp, fp, fn = (np.asarray(counts[k], float) for k in ("tp", "fp", "fn"))
    ap = np.divide(tp, tp + fp + fn, out=np.ones_like(tp), where=(tp + fp + fn) > 0)
    i50, i75 = THRESHOLDS.index(0.5), THRESHOLDS.index(0.75)
    f1_den = 2 * tp[i50] + fp[i50] + fn[i50]
    n_true = counts["true_objects"]
    return {**counts, "ap50": float(ap[i50]), "ap75": float(ap[i75]), "ap_mean": float(ap.mean()),
            "ap": [round(float(a), 6) for a in ap], "thresholds": list(THRESHOLDS),
            "f1_50": float(2 * tp[i50] / f1_den) if f1_den else 1.0,
            "mean_matched_iou": counts["matched_iou_sum"] / tp[i50] if tp[i50] else 0.0,
            "count_error": (abs(counts["pred_objects"] - n_true) / n_true if n_true
                            else float(counts["pred_objects"] > 0))}


def pool_scores(frames: list[dict]) -> dict:
    """The frames of `score_objects` scored together: objects and TP/FP/FN summed, so AP weighs every object
    alike; SEG the mean over all true objects; count error of the summed counts."""
    if not frames:
        raise ValueError("no frames to pool")
    counts = {key: int(sum(f[key] for f in frames)) for key in ("true_objects", "pred_objects")}
    for key in ("tp", "fp", "fn"):
        counts[key] = [int(v) for v in np.sum([f[key] for f in frames], axis=0)]
    counts["matched_iou_sum"] = float(sum(f["matched_iou_sum"] for f in frames))
    weights = [f["true_objects"] for f in frames]
    counts["seg"] = float(np.average([f["seg"] for f in frames], weights=weights)) if sum(weights) else 1.0
    counts["errors"] = {k: int(sum(f["errors"][k] for f in frames)) for k in frames[0]["errors"]}
    return _summary(counts)


def object_lines(frames: dict[str, dict], overall: dict) -> list[str]:
    """The table `fcnseg eval --instances` prints: one row per frame and the pooled one."""
    head = (f"{'frame':<24} {'true':>5} {'pred':>5} {'AP@0.5':>7} {'AP@0.75':>7} {'AP':>6} {'F1@0.5':>7} "
            f"{'IoU':>6} {'SEG':>6} {'count':>6}  unmatched at 0.5")
    rows = [head]
    for name, r in list(frames.items()) + [("overall", overall)]:
        e = r["errors"]
        rows.append(f"{name:<24} {r['true_objects']:>5} {r['pred_objects']:>5} {r['ap50']:>7.4f} {r['ap75']:>7.4f} "
                    f"{r['ap_mean']:>6.4f} {r['f1_50']:>7.4f} {r['mean_matched_iou']:>6.4f} {r['seg']:>6.4f} "
                    f"{100 * r['count_error']:>5.1f}%  missed {e['missed']}, merged {e['merged']}, split "
                    f"{e['split']}, poor {e['poor']}, false {e['false']}, extra {e['extra']}")
    return rows
