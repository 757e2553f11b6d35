"""Check on the head: score, upsampling, fusion and loss layers must agree on the number of classes K."""
from __future__ import annotations

from collections import Counter

from .facts import Finding, NetFacts, loss_heads


def check_head_classes(n: NetFacts) -> list[Finding]:
    """`head-classes`: per loss, every layer that carries class scores with its K, when they disagree.

    Caffe aborts at start-up where an Eltwise adds maps of different channel counts ("bottom[0]->shape() ==
    bottom[i]->shape()") or a grouped Deconvolution gets channels its group does not divide; an ungrouped
    Deconvolution that changes the count silently mixes classes. Either way the head is wrong.
    """
    out = []
    for head in loss_heads(n):
        order = {layer.name: i for i, layer in enumerate(n.train.layer)}
        counts = sorted([(layer.name, k) for layer, k in head.scores] +
                        [(layer.name, k) for layer, _, k in head.upsampling], key=lambda c: order[c[0]])
        if len({k for _, k in counts}) <= 1 and all(cin in (None, k) for _, cin, k in head.upsampling):
            continue
        majority = Counter(k for _, k in counts).most_common(1)[0][0]
        listed = ", ".join(f"'{name}' {k}" for name, k in counts)
        aborts = [f"Eltwise '{layer.name}' adds " + " and ".join(f"'{b}' ({c} channels)" for b, c in bottoms)
                  for layer, bottoms in head.fusions if len({c for _, c in bottoms}) > 1]
        aborts += [f"Deconvolution '{layer.name}' takes {cin} channels and puts out {k}"
                   for layer, cin, k in head.upsampling if cin not in (None, k) and k != majority]
        out.append(Finding(
            "error", "head-classes",
            f"The layers feeding loss '{head.loss.name}' disagree on the number of classes K ({listed}): "
            f"{'; '.join(aborts) or 'the scores change class count on the way'}. Caffe aborts at start-up with "
            "a shape check, or the class scores are mixed.",
            f"Give every score and upsampling layer of this head num_output K = the number of classes (labels "
            f"0..K−1); most of them say {majority}.",
            ", ".join(name for name, _ in counts)))
    return out
