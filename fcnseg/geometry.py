"""Coordinate maps of a Caffe NetParameter: where each blob's pixels sit relative to the input.

The same arithmetic as Caffe's python/caffe/coord_map.py, but over a parsed prototxt (caffe_pb2), so it
serves both `make-proto` (checking its own output with `geometry_problems` before anything is written)
and `doctor` (reading someone else's files).

A map (scale, shift) says blob coordinate y = scale * x + shift for input coordinate x.
Convolution/Pooling (kernel k, stride s, pad p): y = (x + p - (k-1)/2) / s.
Deconvolution: y = s * x + (k-1)/2 - p.  Crop by offset o: y = x - o.
A Crop of blob A to reference R is valid when scale_A == scale_R, and its offset must be
shift_A - shift_R (an integer >= 0).

`tile_origins` is the tiling rule shared by import and infer (tiles on the net's pooling grid).

Only the height axis is followed; nets with different height and width geometry (kernel_w, pad_w ...)
are judged by their height. Where a layer has several mapped bottoms (Eltwise, Concat) the first one
is followed, as coord_map does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from math import prod
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


@dataclass(frozen=True)
class Trace:
    """How a blob is reached from the input: its Map and every resampling layer on the way.

    `resampling` holds (layer name, layer scale) for each layer whose scale is not 1, in order.
    """

    map: Map
    resampling: tuple[tuple[str, Fraction], ...] = ()

    @property
    def stride(self) -> Fraction:
        """Product of the downsampling factors on the path (8 after three 2x poolings)."""
        return prod((1 / s for _, s in self.resampling if s < 1), start=Fraction(1))

    @property
    def upsampling(self) -> Fraction:
        """Product of the upsampling factors on the path (32 after one 32x Deconvolution)."""
        return prod((s for _, s in self.resampling if s > 1), start=Fraction(1))

    def then(self, layer: str, scale: Fraction, shift: Fraction) -> "Trace":
        steps = self.resampling + (((layer, scale),) if scale != 1 else ())
        return Trace(self.map.then(scale, shift), steps)


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
    spatial: Optional[tuple[int, int]] = field(default=None)  # the given (height, width) offsets

    @property
    def matches(self) -> bool:
        """True when the given offsets equal the computed one on both spatial axes."""
        return self.offset is not None and self.spatial == (self.offset, self.offset)


def _first(values, default):
    return values[0] if len(values) else default


def _explicit(param, name: str):
    """The value of an optional field only when the prototxt sets it (some Caffe builds give stride_h
    a default of 1, which would otherwise hide `stride`)."""
    return getattr(param, name) if param.HasField(name) and getattr(param, name) else None


def conv_geometry(layer) -> tuple[int, int, int]:
    """(kernel extent, stride, pad) of a Convolution/Deconvolution/Pooling layer along height."""
    if layer.type == "Pooling":
        p = layer.pooling_param
        if p.global_pooling:
            return 0, 0, 0
        k = _explicit(p, "kernel_h") or p.kernel_size
        s = _explicit(p, "stride_h") or p.stride or 1
        pad = _explicit(p, "pad_h") or p.pad
        return k, s, pad
    c = layer.convolution_param
    k = _explicit(c, "kernel_h") or _first(c.kernel_size, 1)
    s = _explicit(c, "stride_h") or _first(c.stride, 1)
    pad = _explicit(c, "pad_h") or _first(c.pad, 0)
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
    """The Crop layer's offsets as written (empty: Caffe crops at 0)."""
    return list(layer.crop_param.offset)


def axis_crop_offsets(layer) -> tuple[int, list[int]]:
    """(the first axis cropped, the offset Caffe applies on each axis from it to the last of a 4-D blob):
    one offset given serves every axis from `axis` on; none means 0."""
    given, axis = crop_offsets(layer), layer.crop_param.axis % 4
    if len(given) == 1:
        return axis, given * (4 - axis)
    return axis, [given[i] if i < len(given) else 0 for i in range(4 - axis)]


def spatial_crop_offsets(layer) -> tuple[int, int]:
    """The (height, width) offsets Caffe applies (`axis_crop_offsets` on axes 2 and 3)."""
    axis, offsets = axis_crop_offsets(layer)
    return tuple(offsets[dim - axis] if dim >= axis else 0 for dim in (2, 3))


def in_phase(layer, phase: str) -> bool:
    """Whether Caffe keeps `layer` in `phase` ('TRAIN' or 'TEST'), from its include/exclude rules."""
    number = {"TRAIN": 0, "TEST": 1}[phase]
    if layer.include:
        return any(not rule.HasField("phase") or rule.phase == number for rule in layer.include)
    return not any(rule.HasField("phase") and rule.phase == number for rule in layer.exclude)


def phase_net(net, phase: str):
    """A copy of NetParameter `net` holding only the layers Caffe instantiates in `phase`."""
    out = type(net)()
    out.CopyFrom(net)
    del out.layer[:]
    out.layer.extend(layer for layer in net.layer if in_phase(layer, phase))
    return out


def blob_traces(net, input_blob: str = "data") -> tuple[dict[str, Trace], list[CropCheck]]:
    """Follow every layer in order; return ({blob: Trace relative to input_blob}, [CropCheck per Crop]).

    Blobs that do not descend from `input_blob` through mappable layers are absent from the dict.
    Crops are checked against the computed offset; a Crop with a mismatched given offset still maps its
    top with the *given* offset, so later crops are judged on what the net really does.
    """
    traces: dict[str, Trace] = {input_blob: Trace(IDENTITY)}
    checks: list[CropCheck] = []
    for layer in net.layer:
        if layer.type in SOURCES:
            for top in layer.top:
                if top == input_blob:
                    traces[top] = Trace(IDENTITY)
            continue
        if layer.type == "Crop":
            if len(layer.bottom) < 2:
                continue
            a, r = layer.bottom[0], layer.bottom[1]
            check = CropCheck(layer.name, a, r, None, None, crop_offsets(layer), layer.crop_param.axis,
                              spatial=spatial_crop_offsets(layer))
            checks.append(check)
            if a not in traces or r not in traces:
                check.problem = f"no coordinate map from '{input_blob}' to " + \
                    (f"'{a}'" if a not in traces else f"'{r}'")
                continue
            ta, tr = traces[a], traces[r]
            check.scale = ta.map.scale / tr.map.scale
            if check.scale != 1:
                check.problem = "scale mismatch"
                continue
            shift = ta.map.shift - tr.map.shift
            if shift.denominator != 1:
                check.problem = f"non-integer offset {float(shift):g}"
            elif shift < 0:
                check.problem = f"negative offset {int(shift)}"
            else:
                check.offset = int(shift)
            # The offset counts pixels of the cropped blob itself: y' = y - offset.
            for top in layer.top:
                traces[top] = Trace(Map(ta.map.scale, ta.map.shift - check.spatial[0]), ta.resampling)
            continue
        lm = layer_map(layer)
        bottoms = [b for b in layer.bottom if b in traces]
        if lm is None or not bottoms:
            continue
        base = traces[bottoms[0]]
        for top in layer.top:
            traces[top] = base.then(layer.name, *lm)
    return traces, checks


def blob_maps(net, input_blob: str = "data") -> tuple[dict[str, Map], list[CropCheck]]:
    """Like `blob_traces`, with only the Map of each blob: ({blob: Map}, [CropCheck per Crop])."""
    traces, checks = blob_traces(net, input_blob)
    return {blob: trace.map for blob, trace in traces.items()}, checks


def trunk_stride(net, input_blob: str = "data") -> Optional[int]:
    """Net stride: 1 / the smallest scale reached by any blob before the first Deconvolution.

    None when that is not an integer (a stride-3 pooling after a stride-2 one is fine; 2/3 is not).
    """
    traces, _ = blob_traces(net, input_blob)
    scales = [t.map.scale for t in traces.values() if t.upsampling == 1]
    smallest = min(scales, default=Fraction(1))
    return int(1 / smallest) if smallest > 0 and (1 / smallest).denominator == 1 else None


def geometry_problems(net, input_blob: str = "data", output: str = "score") -> list[str]:
    """What is wrong with the geometry of `net` (a NetParameter of one phase), one line each: every Crop
    whose offsets differ from those the coordinate maps require (or that has none), and an `output` that
    does not sit on `input_blob` pixel for pixel (scale 1, shift 0). Empty for a sound net.

    Plain arithmetic, no `assert`, so the check holds under `python -O`, where the asserts of Caffe's
    coord_map (which nets uses to place crops) are gone.
    """
    traces, checks = blob_traces(net, input_blob)
    problems = [f"Crop '{c.layer}': " + (c.problem or f"offsets {c.spatial}, the coordinate maps require {c.offset}")
                for c in checks if not c.matches]
    if output not in traces:
        problems.append(f"no coordinate map from '{input_blob}' to '{output}'")
    elif traces[output].map != IDENTITY:
        m = traces[output].map
        problems.append(f"'{output}' is not aligned with '{input_blob}' (y = {m.scale} x + {m.shift})")
    return problems


def sliced_shape(shape: tuple[int, int, int], axis: int) -> tuple[int, int, int]:
    """(slices, rows, columns) of a 3-D volume of `shape` read as 2-D slices along `axis`: the slicing axis
    first, the other two in stored order."""
    rest = [shape[i] for i in range(3) if i != axis]
    return shape[axis], rest[0], rest[1]


def ceil_to(n: int, m: int) -> int:
    """The smallest multiple of `m` that is >= `n`."""
    return -(-n // m) * m


def tile_origins(length: int, tile: int, step: int, stride: int) -> list[int]:
    """Origins of tiles of side `tile`, at most `step` apart, covering 0..length: the one tiling rule of
    import (`data.tile_starts`, stride = step: the last tile runs past the end and is padded) and infer
    (stride = the net stride: origins stay on the pooling grid and the last tile is cut off at `length`,
    up to stride - 1 pixels short). The last origin is the first multiple of `stride` at or beyond
    length - tile; one tile at 0 when the length fits in it."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, step)) + [ceil_to(length - tile, stride)]
