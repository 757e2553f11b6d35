"""Coordinate maps of a Caffe NetParameter: where each blob's pixels sit relative to the input.

The same arithmetic as Caffe's python/caffe/coord_map.py, but over a parsed prototxt (caffe_pb2), so it
serves both `make-proto` (checking its own output) and `doctor` (reading someone else's files).

A map (scale, shift) says blob coordinate y = scale * x + shift for input coordinate x.
Convolution/Pooling (kernel k, stride s, pad p): y = (x + p - (k-1)/2) / s.
Deconvolution: y = s * x + (k-1)/2 - p.  Crop by offset o: y = x - o.
A Crop of blob A to reference R is valid when scale_A == scale_R, and its offset must be
shift_A - shift_R (an integer >= 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

PASS_THROUGH = {"ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "Dropout", "BatchNorm", "Scale", "Bias",
                "Power", "AbsVal", "BNLL", "Exp", "Log", "Threshold", "Split", "Softmax", "LRN", "MVN",
                "Eltwise", "Concat", "Silence"}
SOURCES = {"Data", "Input", "ImageData", "HDF5Data", "MemoryData", "DummyData", "Python", "WindowData"}


@dataclass(frozen=True)
class Map:
    """y = scale * x + shift (exact fractions)."""

    scale: Fraction
    shift: Fraction

    def then(self, scale: Fraction, shift: Fraction) -> "Map":
        """This map followed by the layer map y' = scale * y + shift."""
        return Map(self.scale * scale, self.shift * scale + shift)


IDENTITY = Map(Fraction(1), Fraction(0))


@dataclass
class CropCheck:
    """What a Crop layer should do. `offset` is None when no valid offset exists (see `problem`)."""

    layer: str
    bottom: str
    reference: str
    scale: Optional[Fraction]  # scale of bottom relative to reference
    offset: Optional[int]      # the computed offset
    given: Optional[list[int]] # the prototxt's offsets (None for a layer not yet written)
    axis: int
    problem: str = ""


def _first(values, default):
    return values[0] if len(values) else default


def conv_geometry(layer) -> tuple[int, int, int]:
    """(kernel, stride, pad) of a Convolution/Deconvolution/Pooling layer along height."""
    if layer.type == "Pooling":
        p = layer.pooling_param
        if p.global_pooling:
            return 0, 0, 0
        k = p.kernel_h if p.HasField("kernel_h") else p.kernel_size
        s = p.stride_h if p.HasField("stride_h") else p.stride
        pad = p.pad_h if p.HasField("pad_h") else p.pad
        return k, s, pad
    c = layer.convolution_param
    # Some Caffe forks give stride_h a default of 1, so only an explicitly set field counts.
    k = c.kernel_h if c.HasField("kernel_h") else _first(c.kernel_size, 1)
    s = c.stride_h if c.HasField("stride_h") else _first(c.stride, 1)
    pad = c.pad_h if c.HasField("pad_h") else _first(c.pad, 0)
    dil = _first(c.dilation, 1)
    return (k - 1) * dil + 1, s, pad


def layer_map(layer) -> Optional[tuple[Fraction, Fraction]]:
    """(scale, shift) of one spatial layer, or None when the layer has no coordinate map."""
    if layer.type in ("Convolution", "Pooling"):
        k, s, p = conv_geometry(layer)
        if s == 0:
            return None
        return Fraction(1, s), (Fraction(p) - Fraction(k - 1, 2)) / s
    if layer.type == "Deconvolution":
        k, s, p = conv_geometry(layer)
        return Fraction(s), Fraction(k - 1, 2) - p
    if layer.type in PASS_THROUGH:
        return Fraction(1), Fraction(0)
    return None


def crop_offsets(layer) -> list[int]:
    return list(layer.crop_param.offset)


def blob_maps(net, input_blob: str = "data") -> tuple[dict[str, Map], list[CropCheck]]:
    """Follow every layer in order; return ({blob: Map relative to input_blob}, [CropCheck per Crop]).

    Blobs that do not descend from `input_blob` through mappable layers are absent from the dict.
    Crops are checked against the computed offset; a Crop with a mismatched given offset still maps its
    top with the *given* offset, so later crops are judged on what the net really does.
    """
    maps: dict[str, Map] = {}
    checks: list[CropCheck] = []
    for layer in net.layer:
        if layer.type in SOURCES:
            for top in layer.top:
                if top == input_blob:
                    maps[top] = IDENTITY
            continue
        if layer.type == "Crop":
            if len(layer.bottom) < 2:
                continue
            a, r = layer.bottom[0], layer.bottom[1]
            check = CropCheck(layer.name, a, r, None, None, crop_offsets(layer), layer.crop_param.axis)
            checks.append(check)
            if a not in maps or r not in maps:
                check.problem = f"no coordinate map from '{input_blob}' to " + \
                    (f"'{a}'" if a not in maps else f"'{r}'")
                continue
            ma, mr = maps[a], maps[r]
            check.scale = ma.scale / mr.scale
            if check.scale != 1:
                check.problem = "scale mismatch"
                continue
            shift = ma.shift - mr.shift
            if shift.denominator != 1:
                check.problem = f"non-integer offset {float(shift):g}"
            elif shift < 0:
                check.problem = f"negative offset {int(shift)}"
            else:
                check.offset = int(shift)
            used = check.given[0] if check.given else 0
            for top in layer.top:
                maps[top] = Map(ma.scale, ma.shift - used)
            continue
        lm = layer_map(layer)
        bottoms = [b for b in layer.bottom if b in maps]
        if lm is None or not bottoms:
            continue
        base = maps[bottoms[0]]
        for top in layer.top:
            maps[top] = base.then(*lm)
    return maps, checks


def trunk_stride(net, input_blob: str = "data") -> Optional[int]:
    """Net stride: 1 / the smallest scale reached by any blob before the first Deconvolution."""
    maps: dict[str, Map] = {input_blob: IDENTITY}
    smallest = Fraction(1)
    for layer in net.layer:
        if layer.type == "Deconvolution":
            continue
        lm = layer_map(layer)
        bottoms = [b for b in layer.bottom if b in maps]
        if lm is None or not bottoms or layer.type == "Crop":
            continue
        for top in layer.top:
            maps[top] = maps[bottoms[0]].then(*lm)
            smallest = min(smallest, maps[top].scale)
    return int(1 / smallest) if smallest > 0 and (1 / smallest).denominator == 1 else None
