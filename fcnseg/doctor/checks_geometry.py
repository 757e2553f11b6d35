"""Checks on geometry: upsampling factor against the net stride at every Crop, computed against given crop offsets."""
from __future__ import annotations

from fractions import Fraction
from typing import Optional

from ..geometry import CropCheck, blob_traces, conv_geometry
from .facts import Finding, NetFacts, exact_log2, name_list, num_text, plural

# ---------------------------------------------------------------------------------------------------
# The checks, in the order of the issue (one function per finding family)

def check_geometry(n: NetFacts) -> list[Finding]:
    """Findings 1-2: upsampling factor vs net stride at every Crop, computed vs given crop offsets."""
    out = []
    for c in n.crops:
        if c.problem == "scale mismatch":
            out.append(_scale_mismatch(n, c))
        elif c.problem.startswith("no coordinate map"):
            out.append(Finding("warning", "crop-uncomputable", f"Crop '{c.layer}': {c.problem} (a layer "
                               "type doctor cannot follow), so its offset cannot be checked.",
                               "Check the offset by hand, or build the net with `fcnseg make-proto`, which "
                               "computes every offset.", c.layer))
        elif c.problem:
            out.append(_uncomputable(c))
        elif not c.matches:
            given = c.spatial[0] if c.spatial[0] == c.spatial[1] else f"{c.spatial[0]} (height), " \
                f"{c.spatial[1]} (width)"
            out.append(Finding(
                "error", "crop-offset",
                f"Crop '{c.layer}' cuts '{c.bottom}' at offset {given}, but the geometry puts '{c.bottom}' "
                f"{plural(c.offset, 'pixel')} beyond '{c.reference}': the scores are shifted against the "
                f"{'labels' if c.reference == n.input_blob else 'map they are fused with'} "
                f"(offsets copied from another net do not carry over).",
                f"Set crop_param {{ axis: 2 offset: {c.offset} }}.", c.layer))
    if n.loss is not None and not any(f.severity == "error" for f in out):
        trace = n.traces.get(n.loss.bottom[0])
        if trace is not None and trace.map.scale != 1:
            out.append(Finding(
                "error", "upsampling-stride",
                f"'{n.loss.bottom[0]}' reaches the loss at {num_text(trace.map.scale)}× the input's resolution: "
                f"the trunk's stride is {num_text(trace.stride)} but the upsampling is {num_text(trace.upsampling)}×.",
                f"Upsample by the net stride ({num_text(trace.stride)}×) and crop to '{n.input_blob}'.",
                n.loss.name))
        elif trace is not None and trace.map.shift != 0 and not n.crops:
            out.append(Finding(
                "error", "crop-offset",
                f"'{n.loss.bottom[0]}' reaches the loss shifted {num_text(-trace.map.shift)} pixels against "
                f"'{n.input_blob}' and no Crop aligns it.",
                f"Add a Crop of '{n.loss.bottom[0]}' to '{n.input_blob}' with the offset the geometry gives "
                "(fcnseg make-proto computes it).", n.loss.name))
    return out


def _scale_mismatch(n: NetFacts, c: CropCheck) -> Finding:
    ta, tr = n.traces[c.bottom], n.traces[c.reference]
    if tr.map.scale != 1:
        return Finding(
            "error", "upsampling-stride",
            f"Crop '{c.layer}' aligns '{c.bottom}' (at {num_text(ta.map.scale)} of the input's resolution) with "
            f"'{c.reference}' (at {num_text(tr.map.scale)}): a crop can only align maps of the same scale.",
            "Upsample so both sides have the same stride (each skip is one 2× step from the next).", c.layer)
    pools = [name for name, s in ta.resampling if s < 1]
    deconvs = [name for name, s in ta.resampling if s > 1]
    stride, up = ta.stride, ta.upsampling
    layers = {layer.name: layer for layer in n.train.layer}
    described = ", ".join(f"'{d}': kernel {conv_geometry(layers[d])[0]}, stride {conv_geometry(layers[d])[1]}"
                          for d in deconvs) or "none"
    message = (f"The trunk's stride is {num_text(stride)} ({len(pools)} downsampling layers: {name_list(pools)}) but "
               f"the upsampling is {num_text(up)}× ({described}), so '{c.bottom}' comes out {num_text(c.scale)}× "
               f"the size of '{c.reference}' where Crop '{c.layer}' cuts it: the scores no longer line up "
               f"with the pixels. The upsampling must equal the net stride.")
    fix = f"Upsample by {num_text(stride)}× in total."
    factor = Fraction(dict(ta.resampling)[deconvs[-1]]) / c.scale if deconvs else Fraction(0)
    if factor.denominator == 1 and factor >= 1:
        last, f = deconvs[-1], int(factor)
        offset = _offset_after_refactor(n, c.layer, last, f)
        then = f"; the crop offset then becomes {offset}" if offset is not None else ""
        keep = f" Or keep {num_text(up)}× and give the trunk {exact_log2(up)} pooling stages." if exact_log2(up) else ""
        fix = (f"Make '{last}' {'an' if str(f).startswith('8') or f in (11, 18) else 'a'} {f}× upsampling: "
               f"kernel_size {2 * f}, stride {f} (bilinear, group = num_output){then}.{keep} "
               "`fcnseg make-proto` derives both from model.stages.")
    return Finding("error", "upsampling-stride", message, fix, ", ".join(deconvs + [c.layer]))


def _offset_after_refactor(n: NetFacts, crop: str, deconv: str, factor: int) -> Optional[int]:
    """The offset Crop `crop` would need if Deconvolution `deconv` upsampled by `factor` (kernel 2f)."""
    net = type(n.train)()
    net.CopyFrom(n.train)
    layer = next(layer for layer in net.layer if layer.name == deconv)
    p = layer.convolution_param
    for key in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w"):
        p.ClearField(key)
    del p.kernel_size[:], p.stride[:], p.pad[:]
    p.kernel_size.append(2 * factor)
    p.stride.append(factor)
    _, checks = blob_traces(net, n.input_blob)
    return next((c.offset for c in checks if c.layer == crop), None)


def _uncomputable(c: CropCheck) -> Finding:
    if c.problem.startswith("negative"):
        what = (f"'{c.bottom}' does not cover '{c.reference}': it would have to start "
                f"{plural(int(c.problem.split()[-1].lstrip('-')), 'pixel')} before it ({c.problem})")
        fix = ("Pad the first convolution more (the reference pads conv1_1 by 100) so the score map "
               "covers the whole input, then use the offset the geometry gives.")
    else:
        what = (f"'{c.bottom}' sits a fraction of a pixel off '{c.reference}' ({c.problem}): no integer "
                "offset aligns them")
        fix = ("Use kernel 2f, stride f, pad 0 for an f× upsampling, and odd kernels with pad (k−1)/2 in "
               "the trunk (or let `fcnseg make-proto` build the net).")
    return Finding("error", "crop-uncomputable", f"Crop '{c.layer}' cannot be computed: {what}.", fix, c.layer)


