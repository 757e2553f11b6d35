"""Checks on BatchNorm layers: statistics given a learning rate, statistics frozen with nothing to freeze, a
BatchNorm without the Scale that gives it back a scale and shift, and batch statistics of one image."""
from __future__ import annotations

from typing import Optional

from .facts import Finding, NetFacts, name_list


def _frozen(layer) -> bool:
    p = layer.batch_norm_param
    return p.HasField("use_global_stats") and p.use_global_stats


def check_batchnorm(n: NetFacts, shapes: Optional[dict], batch: Optional[int], solver) -> list[Finding]:
    """Findings for the TRAIN phase's BatchNorm layers; [] for a net without them. `shapes` are the weights'
    blob shapes ({layer: [shape]}, None without weights), `batch` the TRAIN batch size when known."""
    layers = n.layers("BatchNorm")
    if not layers:
        return []
    out = []
    learned = [layer.name for layer in layers if any(p.HasField("lr_mult") and p.lr_mult != 0 for p in layer.param)]
    if learned:
        out.append(Finding(
            "error", "batchnorm-lr", f"BatchNorm {name_list(learned)} give{'s' if len(learned) == 1 else ''} its "
            "statistics (mean, variance, moving-average factor) a nonzero lr_mult: BVLC Caffe aborts while setting "
            "up the net ('Cannot configure batch normalization statistics as layer parameters'), and older Caffes "
            "let SGD move the statistics as if they were weights.",
            "Give each BatchNorm three param { lr_mult: 0 } (or none: BVLC Caffe adds them).", ", ".join(learned)))
    frozen = [layer for layer in layers if _frozen(layer)]
    unloaded = [layer.name for layer in frozen if shapes is None or layer.name not in shapes]
    if unloaded:
        out.append(Finding(
            "error", "batchnorm-frozen",
            f"BatchNorm {name_list(unloaded)} use{'s' if len(unloaded) == 1 else ''} use_global_stats: true in the "
            "TRAIN phase, and no weights given hold its statistics: it normalises with a mean and variance of 0 "
            "(every value multiplied by 1/sqrt(eps), ~316x) and never computes better ones.",
            "Leave use_global_stats out of train_val (Caffe then uses the batch's statistics in TRAIN and the "
            "running averages in TEST); freeze statistics only when fine-tuning from weights that hold them.",
            ", ".join(unloaded)))
    elif frozen:
        out.append(Finding(
            "info", "batchnorm-frozen",
            f"BatchNorm {name_list([layer.name for layer in frozen])} keep the statistics of the weights given "
            "(use_global_stats: true in TRAIN): right for fine-tuning with small batches, as long as the new "
            "images resemble the ones those statistics came from.",
            "Nothing to do; leave use_global_stats out to learn new statistics.", None))
    tops = {blob for layer in n.layers("Scale") for blob in layer.bottom}
    bare = [layer.name for layer in layers if layer.top[0] not in tops]
    if bare:
        out.append(Finding(
            "warning", "batchnorm-no-scale",
            f"BatchNorm {name_list(bare)} {'is' if len(bare) == 1 else 'are'} not followed by a Scale layer: Caffe's "
            "BatchNorm only normalises, so every channel stays at mean 0 and variance 1, and a ReLU after it "
            "zeroes half of every channel.",
            "Add Scale { bias_term: true } on the BatchNorm's top (in place), as ResNet's Caffe models do.",
            ", ".join(bare)))
    iter_size = solver.iter_size if solver is not None else 1
    if batch == 1 and len(frozen) < len(layers):
        accumulated = f", iter_size {iter_size}, which does not pool them" if iter_size > 1 else ""
        out.append(Finding(
            "info", "batchnorm-batch-one",
            f"BatchNorm computes its statistics over one image per step (batch_size 1{accumulated}). Over a "
            "dense image's pixels that still works, but the statistics "
            "jump from image to image and the TEST phase's running averages follow them.",
            "Raise batch_size (equal-size tiles: `fcnseg data import --tile`).", None))
    return out
