"""Segmentation metrics from one confusion matrix (FCN's score.py definitions). No Caffe needed.

hist[gt, pred] counts pixels; labels equal to the ignore label (or outside [0, K)) are dropped.
pixel acc = trace / sum; mean acc = nanmean(diag / rowsum); IU = diag / (rowsum + colsum - diag);
mean IU = nanmean(IU); fw IU = sum over classes with freq > 0 of freq * IU, freq = rowsum / sum.
`softmax` is the one softmax of class scores (train, eval, infer); `validate(net, ...)` accumulates that
matrix over one pass of a (pycaffe) val net, for train and eval. `read_events(lines)` reads the metrics.jsonl
that train writes them to (train on resume, doctor --log).
"""
from __future__ import annotations

import json
import math
from typing import Iterable

import numpy as np


def read_events(lines: Iterable[str]) -> list[dict]:
    """The events of a metrics.jsonl (one JSON object a line: train, val, nan, stopped, done), in order; a line
    cut by a kill, or anything else that is not a JSON object, is skipped."""
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """K x K int64 confusion matrix of ground truth (rows) against predictions (columns).

    `labels` and `preds` have the same shape; ground-truth values outside [0, K) (the ignore label)
    are not counted.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    preds = np.asarray(preds).astype(np.int64).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} differ in size")
    keep = (labels >= 0) & (labels < num_classes)
    return np.bincount(num_classes * labels[keep] + preds[keep],
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores(hist: np.ndarray) -> dict:
    """pixel_acc, mean_acc, mean_iu, fw_iu, per_class_iu, per_class_acc from a confusion matrix.

    Classes absent from both ground truth and predictions get IU NaN (JSON: null) and are left out of
    the means. An empty matrix gives NaN everywhere.
    """
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    diag, rows, cols = np.diag(hist), hist.sum(1), hist.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = diag / rows
        iu = diag / (rows + cols - diag)
        freq = rows / total
    pixel_acc = float(diag.sum() / total) if total else math.nan
    present = freq > 0
    return {
        "pixel_acc": pixel_acc,
        "mean_acc": _nanmean(acc),
        "mean_iu": _nanmean(iu),
        "fw_iu": float((freq[present] * np.nan_to_num(iu[present])).sum()) if total else math.nan,
        "per_class_iu": [_plain(v) for v in iu],
        "per_class_acc": [_plain(v) for v in acc],
    }


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _plain(v: float):
    return None if math.isnan(v) else float(v)


def predicted_classes(hist: np.ndarray) -> int:
    """How many distinct classes were predicted at all (1 means the net predicts one class everywhere)."""
    return int((np.asarray(hist).sum(0) > 0).sum())


def format_table(result: dict, class_names: list[str] | None = None) -> str:
    """A plain-text table: per-class IU and accuracy, then the four summary numbers."""
    ious, accs = result["per_class_iu"], result["per_class_acc"]
    names = class_names or [f"class {i}" for i in range(len(ious))]
    width = max(12, *(len(n) for n in names))
    fmt = lambda v: "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.4f}"  # noqa: E731
    lines = [f"{'class':<{width}}  {'IU':>6}  {'acc':>6}"]
    lines += [f"{n:<{width}}  {fmt(i)}  {fmt(a)}" for n, i, a in zip(names, ious, accs)]
    lines.append("")
    for key, label in (("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"), ("mean_iu", "mean IU"),
                       ("fw_iu", "fw IU")):
        lines.append(f"{label:<{width}}  {fmt(result[key])}")
    return "\n".join(lines)


def softmax(score: np.ndarray, axis: int = 0) -> np.ndarray:
    """Softmax over the class `axis` of a score (K x H x W; N x K x H x W with axis 1), in its dtype."""
    e = np.exp(score - score.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def validate(net, num_classes: int, samples: int) -> dict:
    """One pass over the val split through `net` (a TEST net sharing the training weights).

    Counts exactly `samples` images (the Data layer cycles, so a last partial batch is trimmed), and
    returns the metrics of one confusion matrix plus the mean loss, the confusion matrix itself and
    `foreground_prob`: the mean softmax probability of the true class at pixels labelled 1..K-1
    (None when there are none).
    """
    hist = np.zeros((num_classes, num_classes), np.int64)
    losses, seen = [], 0
    fg_prob, fg_pixels = 0.0, 0
    while seen < samples:
        out = net.forward()
        score, label = net.blobs["score"].data[:samples - seen], net.blobs["label"].data[:samples - seen, 0]
        take = score.shape[0]
        hist += confusion(label, score.argmax(1), num_classes)
        fg = (label > 0) & (label < num_classes)
        if fg.any():  # softmax probability of the true class at foreground pixels
            true_class = np.take_along_axis(softmax(score, axis=1),
                                            label.astype(np.intp)[:, None].clip(0, num_classes - 1), 1)[:, 0]
            fg_prob += float(true_class[fg].sum())
            fg_pixels += int(fg.sum())
        losses.append(float(out["loss"]))
        seen += take
    result = scores(hist)
    result["foreground_prob"] = fg_prob / fg_pixels if fg_pixels else None
    result["loss"] = float(np.mean(losses))
    result["confusion"] = hist.tolist()
    result["predicted_classes"] = predicted_classes(hist)
    return result
