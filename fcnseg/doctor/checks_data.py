"""Checks on the data: mean channels, the LMDBs' labels, counts, sizes and balance, val coverage, snapshots."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..caffe_env import caffe_pb2
from .facts import RARE_CLASS, Finding, NetFacts, plural, shape_text
from .sources import DataSource, find_file


def check_mean(n: NetFacts, base_dirs: Sequence[Path], weights_channels: Optional[int]) -> list[Finding]:
    """Finding 8: mean file / mean values whose channel count differs from the input's."""
    want = n.channels.get(n.input_blob) or weights_channels
    out, seen = [], set()
    for phase in ("TRAIN", "TEST"):
        image, _ = n.data_layers(phase)
        if image is None or not image.HasField("transform_param"):
            continue
        t = image.transform_param
        values = list(t.mean_value)
        key = (tuple(values), t.mean_file)
        if key in seen:
            continue
        seen.add(key)
        if len(values) > 1 and want and len(values) != want:
            out.append(Finding(
                "error", "mean-channels",
                f"'{image.name}' ({phase}) subtracts {len(values)} mean_values from a {want}-channel input: "
                "Caffe aborts ('Specify either 1 mean_value or as many as channels').",
                f"Give {plural(want, 'mean_value')}, or one for all channels.", image.name))
        if t.mean_file:
            found = find_file(t.mean_file, base_dirs)
            if found is None:
                out.append(Finding(
                    "info", "mean-file",
                    f"mean_file {t.mean_file} of '{image.name}' ({phase}) is not found here, so its channel "
                    "count is not checked; Caffe aborts at start if it is missing where training runs.",
                    "Run doctor where the files are, or use mean_value (one number per channel).", image.name))
                continue
            blob = caffe_pb2().BlobProto()
            try:
                blob.ParseFromString(found.read_bytes())
            except Exception:  # noqa: BLE001 - report, do not crash, on a foreign file
                out.append(Finding("error", "mean-file", f"mean_file {found} is not a BlobProto (binaryproto).",
                                   "Recompute it with Caffe's compute_image_mean, or use mean_value.", image.name))
                continue
            chans = blob.shape.dim[1] if len(blob.shape.dim) == 4 else blob.channels
            if want and chans != want:
                out.append(Finding(
                    "error", "mean-channels",
                    f"mean_file {t.mean_file} of '{image.name}' has {chans} channel(s) but the input has {want}: "
                    "Caffe aborts when it subtracts it.",
                    f"Recompute the mean on the {want}-channel data, or use mean_value.", image.name))
    return out


def check_data(n: NetFacts, sources: dict) -> list[Finding]:
    """Finding 9 (--data-check): label range, {0, 255} masks, counts, sizes, class balance."""
    out = []
    ignore = n.ignore_label
    k = n.num_classes
    for phase in ("TRAIN", "TEST"):
        image, label = sources.get(phase, (None, None))
        for src in (image, label):
            if src is not None and src.problem:
                out.append(Finding("warning", "data-unreadable", f"{phase} source {src.path} of '{src.layer}' is "
                                   f"{src.problem}: its data is not checked (Caffe aborts if it cannot open it).",
                                   "Run doctor where the LMDBs are, with the paths Caffe will use.", src.layer))
        if image is None or label is None or image.problem or label.problem:
            continue
        if image.count != label.count:
            out.append(Finding(
                "error", "data-count",
                f"{phase}: {image.path} holds {image.count} images but {label.path} holds {label.count} "
                "labels: Caffe pairs them by position, so images and labels drift apart.",
                "Rebuild both LMDBs from the same list of pairs (`fcnseg data import` does).", label.layer))
        bad_size, first_bad, total = 0, None, 0
        hist = np.zeros(256, np.int64)
        out_of_byte: set = set()
        for i, (img, lab) in enumerate(zip(image.arrays(), label.arrays())):
            total += 1
            if img.shape[1:] != lab.shape[1:] or lab.shape[0] != 1:
                bad_size += 1
                first_bad = first_bad or (i, img.shape, lab.shape)
                continue
            out_of_byte.update(_count_labels(lab, hist))
        if bad_size:
            i, a, b = first_bad
            out.append(Finding(
                "error", "data-size",
                f"{phase}: {bad_size} of {total} image/label pairs differ in shape (first: #{i}, image "
                f"{shape_text(a)}, label {shape_text(b)}); a label must be 1×H×W for an image C×H×W.",
                "Rebuild the label LMDB with one single-channel mask per image, same size.", label.layer))
        present = set(np.nonzero(hist)[0].tolist()) | out_of_byte
        if k is None or not present:
            continue
        if 255 in present and present <= {0, 255} and k < 255:
            lost = ("255 is the ignore label, so every foreground pixel is ignored and the net only ever "
                    "sees background" if ignore == 255 else f"255 is no class of a {k}-class net")
            out.append(Finding(
                "error", "mask-255",
                f"{phase}: the labels in {label.path} are only 0 and 255 (black/white masks): {lost}.",
                "Map 255 to 1 (label = mask > 0) when building the LMDB; `fcnseg data import` does this.",
                label.layer))
            continue
        bad = sorted(v for v in present if (v < 0 or v >= k) and v != ignore)
        if bad:
            out.append(Finding(
                "error", "label-range",
                f"{phase}: {label.path} holds label values {', '.join(map(str, bad[:8]))} outside 0..{k - 1} "
                f"(K = {k} from '{n.score_layer}' num_output) that are not the ignore label {ignore}: "
                "SoftmaxWithLoss reads scores that do not exist.",
                f"Remap the labels to 0..{k - 1} (and {ignore} for ignore), or set num_output to the number "
                "of classes.", label.layer))
        if phase == "TRAIN":
            counts = hist[:k] if k <= 256 else hist
            labelled = counts.sum()
            rare = [f"class {c}: {'absent' if counts[c] == 0 else f'{counts[c] / labelled:.2%}'}"
                    for c in range(len(counts)) if labelled and counts[c] < RARE_CLASS * labelled]
            if rare:
                out.append(Finding(
                    "warning", "class-imbalance",
                    f"TRAIN labels are imbalanced ({'; '.join(rare)} of the labelled pixels): the loss is "
                    "dominated by the common classes and pixel accuracy flatters the net.",
                    "Judge by mean IU, not pixel accuracy; cut training tiles around the rare class, or "
                    "merge classes that never occur.", label.layer))
    return out


def check_housekeeping(n: NetFacts, solver, val_count: Optional[int], base_dirs: Sequence[Path],
                       check_snapshot_dir: bool) -> list[Finding]:
    """Finding 10: test_iter × batch vs the val set, snapshot folder, ignore_label vs class ids."""
    out = []
    ignore = n.ignore_label
    if ignore is not None and n.num_classes and 0 <= ignore < n.num_classes:
        out.append(Finding(
            "error", "ignore-label",
            f"ignore_label {ignore} is also class {ignore} of the {n.num_classes} classes: those pixels are "
            "never learned.", "Use ignore_label: 255 (labels 0..K−1 for the classes).", n.loss.name))
    if solver is None:
        return out
    test_image, _ = n.data_layers("TEST")
    if solver.test_iter and test_image is not None and val_count:
        batch = test_image.data_param.batch_size or 1
        seen = solver.test_iter[0] * batch
        need = math.ceil(val_count / batch)
        if seen < val_count:
            out.append(Finding(
                "warning", "val-coverage",
                f"test_iter {solver.test_iter[0]} × batch {batch} = {seen} images per validation, but the val "
                f"set has {val_count}: {val_count - seen} are never validated.",
                f"test_iter: {need}.", test_image.name))
        elif seen >= val_count + batch:
            out.append(Finding(
                "info", "val-coverage",
                f"test_iter {solver.test_iter[0]} × batch {batch} = {seen} images per validation for a val set "
                f"of {val_count}: the Data layer wraps around, so some images count {seen / val_count:.1f} times.",
                f"test_iter: {need}.", test_image.name))
    folder = Path(solver.snapshot_prefix).parent if solver.snapshot_prefix else None
    if check_snapshot_dir and folder is not None and str(folder) not in ("", ".") and \
            find_file(str(folder), base_dirs) is None:
        out.append(Finding(
            "warning", "snapshot-dir",
            f"snapshot_prefix {solver.snapshot_prefix}: the folder {folder} does not exist, so the first "
            f"snapshot{f' (iteration {solver.snapshot})' if solver.snapshot else ''} fails after training "
            "that long.", f"mkdir -p {folder} where Caffe runs, or point snapshot_prefix at an existing folder.",
            None))
    return out


def _count_labels(lab, hist) -> list:
    """Add label array `lab`'s 0..255 values to `hist`; return up to 5 values outside that range."""
    values = np.rint(lab).astype(np.int64).ravel() if lab.dtype != np.uint8 else lab.ravel()
    inside = (values >= 0) & (values < 256)
    hist += np.bincount(values[inside], minlength=256)[:256]
    return np.unique(values[~inside]).tolist()[:5]


def majority_share(label: DataSource, ignore: Optional[int]) -> Optional[tuple[int, float]]:
    """(class, its share of the labelled pixels) of the most common class in a readable label LMDB, the
    ignore label left out; None when the source cannot be read or holds no labelled pixel."""
    if label is None or label.problem or label.found is None:
        return None
    hist = np.zeros(256, np.int64)
    for lab in label.arrays():
        _count_labels(lab, hist)
    if ignore is not None and 0 <= ignore < 256:
        hist[ignore] = 0
    total = int(hist.sum())
    return (int(hist.argmax()), float(hist.max() / total)) if total else None
