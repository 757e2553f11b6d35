"""`fcnseg data show`: the summary of a dataset folder and the risks worth a warning (`describe_dataset`)."""
from __future__ import annotations

from pathlib import Path

import lmdb

from .. import recipes
from ..dataset import DatasetInfo, read_dataset, read_dataset_yaml
from ..files import SPLITS, dataset_paths

# `data show` warns above these.
MAX_SATURATED_FRACTION = 0.05
MAX_IGNORE_FRACTION = 0.5


def summary_lines(meta: dict, info: DatasetInfo) -> list[str]:
    """Human-readable summary of a dataset: classes, window, tiling, per-split counts.

    `info` is what `read_dataset` reads from the dataset.yaml `meta`; `meta` adds what only this report
    prints (ignore label, tile overlap, z-slices, the train tile plan, pixel counts).
    """
    names = info.class_names()
    window = info.window
    if window is None:
        window_text = "8-bit data, passed through unchanged"
    elif window.get("method") == "percentile":
        lo, hi = window["percentiles"]
        window_text = f"percentiles {lo:g}-{hi:g} of train: {window['low']:g}..{window['high']:g} -> 0..255"
    else:
        window_text = f"fixed {window['low']:g}..{window['high']:g} -> 0..255"
    tile = info.tile
    lines = [f"{info.num_classes} classes ({', '.join(names)}), ignore label {meta.get('ignore_label')}",
             f"window: {window_text}; train mean {info.mean:.2f}",
             f"tiles: {tile}x{tile}, overlap {meta.get('tile_overlap', 0)}" if tile else "tiles: none (whole images)"]
    slices = meta.get("source", {}).get("z_slices")
    if slices:
        sources = sum(len(info.split(split).sources) for split in SPLITS)
        lines.append(f"4-D stacks: {sources // slices} time points x {slices} z-slices; every slice is one "
                     "image, train/val split by time point")
    plan = meta.get("train_tiles")
    if plan:
        lines.append(f"train tiles: all {plan['foreground']} holding foreground, {plan['empty_kept']} of "
                     f"{plan['empty']} empty (--empty-tiles {plan['empty_fraction']:.3g}), "
                     + (f"each in {plan['copies']} flips/rotations (--augment)" if plan["augment"]
                        else "no augmentation")
                     + f"; {plan['chosen']}")
    lines += object_lines(meta.get("instances"))
    for split in SPLITS:
        s, recorded = meta.get("splits", {}).get(split, {}), info.split(split)
        counts = s.get("class_pixels", [])
        labelled = sum(counts) or 1
        shares = ", ".join(f"{names[i] if i < len(names) else i} {100 * c / labelled:.1f} %"
                           for i, c in enumerate(counts))
        sizes = ", ".join(f"{h}x{w}" for h, w in recorded.sizes[:3]) + (", ..." if len(recorded.sizes) > 3 else "")
        lines.append(f"{split}: {info.samples(split)} samples from {len(recorded.sources)} source(s) "
                     f"({sizes}); {shares}; ignore {s.get('ignore_pixels', 0)} px")
    return lines


def object_lines(instances: dict | None) -> list[str]:
    """What an --instances import recorded: objects per split, the boundary width, how ids were read, and the
    interpretations it made (dataset.yaml `instances`)."""
    if not instances:
        return []
    parts = []
    for split, s in (instances.get("splits") or {}).items():
        area = s.get("area_px") or [0, 0, 0]
        parts.append(f"{split} {s['objects']} in {s['frames']} frame(s) ({s['per_frame'][0]}-{s['per_frame'][1]} "
                     f"a frame, {area[0]}/{area[1]}/{area[2]} px min/median/max)")
    return ([f"objects (--instances): {'; '.join(parts)}; boundary band {instances.get('boundary_width')} px; "
             "ids read per frame (the same id in two frames is two objects)"]
            + [f"note: {note}" for note in instances.get("notes") or []])


def dataset_warnings(meta: dict, info: DatasetInfo) -> list[str]:
    """The risks in a dataset.yaml worth a warning: rare or missing classes, a clipping window, mostly
    ignored pixels, mixed sizes without tiles, a tiny val split (`meta` and `info` as in `summary_lines`)."""
    k, names = info.num_classes, info.class_names()
    found = [meta["instance_hint"]] if meta.get("instance_hint") else []
    for split in SPLITS:
        s = meta.get("splits", {}).get(split, {})
        counts = s.get("class_pixels", [0] * k)
        labelled = sum(counts)
        sparse = set(recipes.sparse_classes(counts, names)) if split == "train" else set()
        for i, c in enumerate(counts):
            if c == 0:
                found.append(f"{split}: {names[i]} has no pixels; "
                             + ("the net cannot learn it" if split == "train" else "its val IU is undefined"))
            elif names[i] in sparse:
                found.append(f"train: {names[i]} is only {100 * c / labelled:.2f} % of the labelled pixels; "
                             "expect the net to predict the majority class at first: judge it by per-class "
                             "IU, not pixel accuracy")
        ignored = s.get("ignore_pixels", 0)
        if labelled + ignored and ignored / (labelled + ignored) > MAX_IGNORE_FRACTION:
            found.append(f"{split}: {100 * ignored / (labelled + ignored):.0f} % of the stored pixels are ignored; "
                         "check the ignore label, or use a smaller --tile")
        if split == "train" and s.get("saturated_fraction", 0.0) > MAX_SATURATED_FRACTION:
            found.append(f"train: {100 * s['saturated_fraction']:.1f} % of the pixels are 0 or 255 after "
                         "windowing, detail is clipped away; widen --window-percentiles or --window-values")
        if not info.tile and len(info.split(split).sizes) > 1:
            found.append(f"{split}: images of {len(info.split(split).sizes)} different sizes and no tiling: train with "
                         "data.batch_size: 1, or re-import with --tile N")
    sparse = (meta.get("train_tiles") or {}).get("sparse_classes")
    if sparse:
        found.append(f"train: {', '.join(sparse)} below {100 * recipes.MIN_CLASS_FRACTION:g} % of the source pixels; "
                     "besides the tiling above, loss.foreground_weight auto (the default) weights the loss "
                     f"towards it ({recipes.SPARSE_FOREGROUND_WEIGHT:g})")
    if len(info.split("val").sources) == 1:
        found.append("val: one source image only; val scores will be noisy")
    return found


def describe_dataset(root: str | Path) -> tuple[list[str], list[str]]:
    """`fcnseg data show`: (summary lines, warnings) for the dataset folder `root`; the warnings include
    LMDBs that are missing or disagree with dataset.yaml. Raises DataError when root is not a dataset."""

    info = read_dataset(root)
    meta = read_dataset_yaml(root)
    warnings = dataset_warnings(meta, info)
    for name, path in dataset_paths(str(root)).items():
        expected = info.split(name.split("_")[0]).samples
        try:
            with lmdb.open(path, readonly=True, lock=False, subdir=True) as env:
                entries = env.stat()["entries"]
        except lmdb.Error:
            warnings.append(f"{path}: missing or unreadable; re-import with `fcnseg data import`")
            continue
        if expected is not None and entries != expected:
            warnings.append(f"{path}: {entries} entries but dataset.yaml says {expected}; re-import")
    lines = [f"{root}: imported by fcnseg {meta.get('fcnseg_version', '?')}"] + summary_lines(meta, info)
    return lines, warnings


