"""`fcnseg doctor`: read a train_val (and solver) prototxt and say, in plain words, why it cannot learn.

Prototxts are parsed with caffe_pb2 (no net is instantiated); geometry comes from `fcnseg.geometry`,
caffemodel blob shapes from `fcnseg.caffemodel`, LMDB records from `fcnseg.dataset`.
Each check returns `Finding`s: a severity (error / warning / info), a short code, the layer(s), one
sentence on what is wrong and one on how to fix it.

Public entry points:
- `diagnose_files(train_val, solver=None, weights=None, data_check=False)` for someone else's files;
- `diagnose_config(config, data_check=False)` for the nets `fcnseg make-proto` / `fcnseg train` build;
- `diagnose(net, solver, ...)` for parsed protos;
- `format_findings(findings)` / `findings_json(findings)` / `has_errors(findings)` to report them.

Thresholds (each is explained where it is used):
- "VGG-depth": >= 8 learning layers followed by a ReLU (the seed's conv1_1..fc7; FCN-AlexNet has 7).
  Trained from scratch (no weights) without BatchNorm/MVN this is an error unless every one of them has
  a variance-scaled filler (msra / xavier) and the trunk has at most 3 pooling stages (stride <= 8): the
  envelope measured on the HeLa demo (msra, Adam 1e-4 to 2e-4: val mean IU 0.87 to 0.91). Inside it: a warning with a
  non-adaptive solver, else info.
- Effective step lr / (1 - momentum), per pixel: times the pixels a summed loss adds up. Compared with
  the reference for the loss in use (normalized: FCN-AlexNet 1e-4 at 0.9 = 1e-3; summed: VGG 1e-10 at
  0.99 over ~500x500 pixels = 2.5e-3): >= 8x is an error, >= 3x a warning, < 1/100 info.
- Class imbalance: a class under 1% of the labelled training pixels, or absent.
"""
from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .caffe_env import caffe_pb2
from .caffemodel import CONVERT_HINT, TRUNK_CONV, read_caffemodel_index
from .config import read_text
from .dataset import datum_array, read_dataset, resolve_config
from .errors import ConfigError, DataError, WeightsError
from .geometry import PASS_THROUGH, SOURCES, CropCheck, blob_traces, conv_geometry, phase_net, trunk_stride

SEVERITIES = ("error", "warning", "info")
VGG_DEPTH = 8                      # learning layers under ReLU; the seed has 8, FCN-AlexNet 7
SCRATCH_MAX_STRIDE = 8             # 3 pooling stages: the from-scratch setup measured to learn
SCALED_FILLERS = {"msra", "xavier"}
ADAPTIVE_SOLVERS = {"Adam", "AdaGrad", "RMSProp", "AdaDelta"}
NORMALISATION = {"BatchNorm", "MVN"}
REFERENCE_PIXELS = 500 * 500       # the VGG recipe's lr was tuned on PASCAL VOC images, ~500x500
ALEXNET_STEP = 1e-4 / (1 - 0.9)    # normalized loss: effective step per pixel-averaged gradient
VGG_STEP = 1e-10 / (1 - 0.99) * REFERENCE_PIXELS  # summed loss: per-pixel equivalent, 2.5e-3
STEP_ERROR, STEP_WARNING, STEP_SMALL = 8.0, 3.0, 0.01
RARE_CLASS = 0.01


@dataclass(frozen=True)
class Finding:
    """One problem: `severity` in SEVERITIES, `code` a short id, `layer` the layer(s) concerned."""

    severity: str
    code: str
    message: str
    fix: str
    layer: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# Reading files

def _parse_text(path: Path, message, what: str):
    from google.protobuf import text_format  # noqa: PLC0415
    text = read_text(path, what)
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line = exc.GetLine() if hasattr(exc, "GetLine") else None
        detail = str(exc).split(" : ", 1)[-1]
        at = f" line {line}:" if line else ""
        raise ConfigError(f"{path}:{at} not a valid {what}: {detail}") from None


def read_net(path: str | Path):
    """Parse a train_val/deploy prototxt into a NetParameter. Raises ConfigError naming file and line."""
    path = Path(path)
    net = _parse_text(path, caffe_pb2().NetParameter(), "net prototxt")
    if len(net.layers) and not len(net.layer):
        raise ConfigError(f"{path}: uses Caffe's old V1 'layers' format; upgrade it with Caffe's "
                          "tools/upgrade_net_proto_text, then run doctor on the result")
    return net


def read_solver(path: str | Path):
    """Parse a solver prototxt into a SolverParameter. Raises ConfigError naming file and line."""
    return _parse_text(Path(path), caffe_pb2().SolverParameter(), "solver prototxt")


def caffemodel_shapes(path: str | Path) -> dict[str, list[tuple[int, ...]]]:
    """{layer name: [shape of each parameter blob]} of a caffemodel, read without loading its floats.

    Uses caffemodel.read_caffemodel_index (current and V1 formats; legacy InnerProduct blobs as O×I).
    Raises WeightsError when the file is missing or not a caffemodel.
    """
    return {name: [rec.blob_shape(i) for i in range(len(rec.blobs))]
            for name, rec in read_caffemodel_index(path).items() if rec.blobs}


def _same_shape(a: Sequence[int], b: Sequence[int]) -> bool:
    # Caffe compares legacy 4-D blobs by their trailing axes; leading 1s carry no information.
    strip = lambda s: tuple(s)[next((i for i, d in enumerate(s) if d != 1), len(s)):]  # noqa: E731
    return strip(a) == strip(b)


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(d) for d in shape)


def _find(path: str, base_dirs: Sequence[Path]) -> Optional[Path]:
    """The file or folder `path` as Caffe would open it: absolute, or relative to one of base_dirs."""
    p = Path(path)
    candidates = [p] if p.is_absolute() else [Path(b) / p for b in base_dirs] or [p]
    return next((c for c in candidates if c.exists()), None)


def _open_lmdb(path: Path):
    import lmdb  # noqa: PLC0415
    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, max_readers=4)


@dataclass
class _Source:
    """One Data layer's LMDB as far as it could be read."""

    layer: str
    path: str
    found: Optional[Path] = None
    problem: str = ""
    count: Optional[int] = None
    first: Optional[tuple[int, ...]] = None   # (C, H, W) of the first record

    @classmethod
    def peek(cls, layer, base_dirs: Sequence[Path]) -> "_Source":
        """Entry count and first record's shape, when the source is a readable LMDB."""
        src = cls(layer.name, layer.data_param.source)
        if layer.data_param.backend != caffe_pb2().DataParameter.LMDB:
            src.problem = "not an LMDB (backend LEVELDB)"
            return src
        src.found = _find(src.path, base_dirs)
        if src.found is None:
            src.problem = "not found"
            return src
        try:
            env = _open_lmdb(src.found)
            src.count = env.stat()["entries"]
            with env.begin() as txn:
                raw = next(iter(txn.cursor().iternext(keys=False, values=True)), None)
            env.close()
            if raw is not None:
                src.first = tuple(datum_array(raw).shape)
        except Exception as exc:  # noqa: BLE001 - any unreadable database is reported, not raised
            src.problem = f"unreadable ({exc.__class__.__name__})"
        return src

    def arrays(self):
        """Yield every record as a (C, H, W) array, in key order (the order Caffe reads them)."""
        env = _open_lmdb(self.found)
        try:
            with env.begin() as txn:
                for raw in txn.cursor().iternext(keys=False, values=True):
                    yield datum_array(raw)
        finally:
            env.close()


# ---------------------------------------------------------------------------------------------------
# What the net is made of

@dataclass
class _Net:
    """Facts derived once from a NetParameter (TRAIN phase) for all checks."""

    net: object
    train: object = None
    test: object = None
    input_blob: str = "data"
    loss: object = None
    traces: dict = field(default_factory=dict)
    crops: list = field(default_factory=list)
    stride: Optional[int] = None
    channels: dict = field(default_factory=dict)
    num_classes: Optional[int] = None
    score_layer: Optional[str] = None
    producers: dict = field(default_factory=dict)

    @classmethod
    def build(cls, net, input_channels: Optional[int]) -> "_Net":
        n = cls(net, phase_net(net, "TRAIN"), phase_net(net, "TEST"))
        n.input_blob = _input_blob(n.train)
        losses = [layer for layer in n.train.layer if layer.type == "SoftmaxWithLoss"]
        n.loss = losses[0] if losses else None
        n.traces, n.crops = blob_traces(n.train, n.input_blob)
        n.stride = trunk_stride(n.train, n.input_blob)
        n.channels, n.producers = _channels(n.train, n.input_blob, input_channels)
        score = n.loss.bottom[0] if n.loss is not None else ("score" if "score" in n.channels else None)
        n.num_classes = n.channels.get(score)
        n.score_layer = _origin(n, score)
        return n

    @property
    def ignore_label(self) -> Optional[int]:
        lp = self.loss.loss_param if self.loss is not None else None
        return lp.ignore_label if lp is not None and lp.HasField("ignore_label") else None

    def layers(self, *types):
        return [layer for layer in self.train.layer if layer.type in types]

    def consumers(self, blob: str, after=None):
        """Layers reading `blob`, in order (only those after layer `after` when given)."""
        seen = after is None
        out = []
        for layer in self.train.layer:
            if not seen:
                seen = layer is after or layer.name == after.name
                continue
            if blob in layer.bottom:
                out.append(layer)
        return out

    def data_layers(self, phase: str) -> tuple[object, object]:
        """(image Data layer, label Data layer) of a phase; either may be None."""
        net = self.train if phase == "TRAIN" else self.test
        label = self.loss.bottom[1] if self.loss is not None and len(self.loss.bottom) > 1 else "label"
        data = [layer for layer in net.layer if layer.type == "Data"]
        image = next((i for i, layer in enumerate(data) if self.input_blob in layer.top), None)
        lab = next((i for i, layer in enumerate(data) if label in layer.top and i != image), None)
        return (data[image] if image is not None else None), (data[lab] if lab is not None else None)


def _input_blob(net) -> str:
    for layer in net.layer:
        if layer.type in SOURCES and layer.top:
            return layer.top[0]
    return net.input[0] if len(net.input) else "data"


def _origin(n: _Net, blob: Optional[str]) -> Optional[str]:
    """The layer with learnable weights that set `blob`'s channels (the score convolution)."""
    while blob is not None:
        layer = n.producers.get(blob)
        if layer is None:
            return None
        if layer.type in ("Convolution", "InnerProduct"):
            return layer.name
        blob = layer.bottom[0] if layer.bottom else None
    return None


def _channels(net, input_blob: str, input_channels: Optional[int]):
    """({blob: channel count}, {blob: last layer writing it}) following num_output through the net."""
    chans: dict[str, int] = {}
    producers: dict[str, object] = {}
    if input_channels:
        chans[input_blob] = input_channels
    for layer in net.layer:
        if layer.type == "Input" and layer.input_param.shape and len(layer.input_param.shape[0].dim) > 1:
            for i, top in enumerate(layer.top):
                shape = layer.input_param.shape[min(i, len(layer.input_param.shape) - 1)]
                chans.setdefault(top, int(shape.dim[1]))
        bottoms = [chans.get(b) for b in layer.bottom]
        if layer.type in ("Convolution", "Deconvolution"):
            out = layer.convolution_param.num_output
        elif layer.type == "InnerProduct":
            out = layer.inner_product_param.num_output
        elif layer.type == "Concat" and all(bottoms) and bottoms:
            out = sum(bottoms)
        elif layer.type in PASS_THROUGH | {"Pooling", "Crop"} and layer.bottom:
            out = bottoms[0]
        else:
            out = None
        for top in layer.top:
            producers[top] = layer
            if out:
                chans[top] = out
    return chans, producers


def _learns(layer) -> bool:
    return not layer.param or layer.param[0].lr_mult > 0


def _is_upsampling(layer) -> bool:
    return layer.type == "Deconvolution" and conv_geometry(layer)[1] > 1


def _weight_filler(layer):
    if layer.type == "InnerProduct":
        p = layer.inner_product_param
    else:
        p = layer.convolution_param
    return p.weight_filler if p.HasField("weight_filler") else None


def _starts_at_zero(layer) -> bool:
    f = _weight_filler(layer)
    return f is None or (f.type == "constant" and f.value == 0)


def _feeds_relu(n: _Net, layer) -> bool:
    """Whether `layer`'s output goes through a plain ReLU (zero gradient at 0) before anything learns."""
    for top in layer.top:
        for consumer in n.consumers(top, after=layer):
            if consumer.type == "ReLU" and consumer.relu_param.negative_slope == 0:
                return True
            if consumer.type in ("Dropout", "BatchNorm", "Scale") and consumer.top[0] == top:
                continue  # in place: keep looking at what reads the same blob
            break
    return False


def _hidden_layers(n: _Net) -> list:
    """Learning Convolution/InnerProduct layers followed by a ReLU: the depth that must be trained."""
    return [layer for layer in n.layers("Convolution", "InnerProduct")
            if _learns(layer) and _feeds_relu(n, layer)]


def _names(names: Sequence[str], most: int = 8) -> str:
    names = list(names)
    if len(names) <= most:
        return ", ".join(names)
    return ", ".join(names[:most - 2]) + f", … {names[-1]}"


def _num(x) -> str:
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    return f"1/{x.denominator}" if x.numerator == 1 else f"{float(x):g}"


def _log2(x) -> Optional[int]:
    """n when x == 2**n (n >= 1), else None."""
    x = Fraction(x)
    n = x.numerator.bit_length() - 1
    return n if x.denominator == 1 and n >= 1 and x.numerator == 1 << n else None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _times(ratio: float) -> str:
    return f"{ratio:.3g}×" if ratio < 1000 else f"{ratio:,.0f}×"


def _sci(x: float) -> str:
    return f"{x:.2g}".replace("e-0", "e-").replace("e+0", "e")


# ---------------------------------------------------------------------------------------------------
# The checks, in the order of the issue (one function per finding family)

def check_geometry(n: _Net) -> list[Finding]:
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
                f"{_plural(c.offset, 'pixel')} beyond '{c.reference}': the scores are shifted against the "
                f"{'labels' if c.reference == n.input_blob else 'map they are fused with'} "
                f"(offsets copied from another net do not carry over).",
                f"Set crop_param {{ axis: 2 offset: {c.offset} }}.", c.layer))
    if n.loss is not None and not any(f.severity == "error" for f in out):
        trace = n.traces.get(n.loss.bottom[0])
        if trace is not None and trace.map.scale != 1:
            out.append(Finding(
                "error", "upsampling-stride",
                f"'{n.loss.bottom[0]}' reaches the loss at {_num(trace.map.scale)}× the input's resolution: "
                f"the trunk's stride is {_num(trace.stride)} but the upsampling is {_num(trace.upsampling)}×.",
                f"Upsample by the net stride ({_num(trace.stride)}×) and crop to '{n.input_blob}'.",
                n.loss.name))
        elif trace is not None and trace.map.shift != 0 and not n.crops:
            out.append(Finding(
                "error", "crop-offset",
                f"'{n.loss.bottom[0]}' reaches the loss shifted {_num(-trace.map.shift)} pixels against "
                f"'{n.input_blob}' and no Crop aligns it.",
                f"Add a Crop of '{n.loss.bottom[0]}' to '{n.input_blob}' with the offset the geometry gives "
                "(fcnseg make-proto computes it).", n.loss.name))
    return out


def _scale_mismatch(n: _Net, c: CropCheck) -> Finding:
    ta, tr = n.traces[c.bottom], n.traces[c.reference]
    if tr.map.scale != 1:
        return Finding(
            "error", "upsampling-stride",
            f"Crop '{c.layer}' aligns '{c.bottom}' (at {_num(ta.map.scale)} of the input's resolution) with "
            f"'{c.reference}' (at {_num(tr.map.scale)}): a crop can only align maps of the same scale.",
            "Upsample so both sides have the same stride (each skip is one 2× step from the next).", c.layer)
    pools = [name for name, s in ta.resampling if s < 1]
    deconvs = [name for name, s in ta.resampling if s > 1]
    stride, up = ta.stride, ta.upsampling
    layers = {layer.name: layer for layer in n.train.layer}
    described = ", ".join(f"'{d}': kernel {conv_geometry(layers[d])[0]}, stride {conv_geometry(layers[d])[1]}"
                          for d in deconvs) or "none"
    message = (f"The trunk's stride is {_num(stride)} ({len(pools)} downsampling layers: {_names(pools)}) but "
               f"the upsampling is {_num(up)}× ({described}), so '{c.bottom}' comes out {_num(c.scale)}× "
               f"the size of '{c.reference}' where Crop '{c.layer}' cuts it: the scores no longer line up "
               f"with the pixels. The upsampling must equal the net stride.")
    fix = f"Upsample by {_num(stride)}× in total."
    factor = Fraction(dict(ta.resampling)[deconvs[-1]]) / c.scale if deconvs else Fraction(0)
    if factor.denominator == 1 and factor >= 1:
        last, f = deconvs[-1], int(factor)
        offset = _offset_after_refactor(n, c.layer, last, f)
        then = f"; the crop offset then becomes {offset}" if offset is not None else ""
        keep = f" Or keep {_num(up)}× and give the trunk {_log2(up)} pooling stages." if _log2(up) else ""
        fix = (f"Make '{last}' {'an' if str(f).startswith('8') or f in (11, 18) else 'a'} {f}× upsampling: "
               f"kernel_size {2 * f}, stride {f} (bilinear, group = num_output){then}.{keep} "
               "`fcnseg make-proto` derives both from model.stages.")
    return Finding("error", "upsampling-stride", message, fix, ", ".join(deconvs + [c.layer]))


def _offset_after_refactor(n: _Net, crop: str, deconv: str, factor: int) -> Optional[int]:
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
                f"{_plural(int(c.problem.split()[-1].lstrip('-')), 'pixel')} before it ({c.problem})")
        fix = ("Pad the first convolution more (the reference pads conv1_1 by 100) so the score map "
               "covers the whole input, then use the offset the geometry gives.")
    else:
        what = (f"'{c.bottom}' sits a fraction of a pixel off '{c.reference}' ({c.problem}): no integer "
                "offset aligns them")
        fix = ("Use kernel 2f, stride f, pad 0 for an f× upsampling, and odd kernels with pad (k−1)/2 in "
               "the trunk (or let `fcnseg make-proto` build the net).")
    return Finding("error", "crop-uncomputable", f"Crop '{c.layer}' cannot be computed: {what}.", fix, c.layer)


def check_upsampling(n: _Net, shapes: Optional[dict]) -> list[Finding]:
    """Finding 3: upsampling Deconvolutions that are not fixed, per-class bilinear interpolations."""
    out = []
    for layer in n.layers("Deconvolution"):
        if not _is_upsampling(layer):
            continue
        p = layer.convolution_param
        factor = conv_geometry(layer)[1]
        frozen = not _learns(layer)
        loaded = shapes is not None and layer.name in shapes
        filler = _weight_filler(layer)
        if not loaded and (filler is None or filler.type != "bilinear"):
            start = ("no weight_filler (Caffe's default: constant 0)" if filler is None
                     else f"a '{filler.type}' weight_filler")
            if frozen:
                what = (f"Upsampling '{layer.name}' is fixed (lr_mult 0) and has {start}: it never becomes "
                        "an interpolation" + (" and outputs zeros forever." if _starts_at_zero(layer) else "."))
            else:
                what = (f"Upsampling '{layer.name}' has {start}: it starts as no interpolation at all and "
                        "must learn one.")
            out.append(Finding("error" if frozen else "warning", "upsampling-filler", what,
                               f"weight_filler {{ type: \"bilinear\" }} with kernel_size {2 * factor}, stride "
                               f"{factor}, bias_term: false.", layer.name))
        if not frozen:
            lr_mult = layer.param[0].lr_mult if layer.param else 1
            out.append(Finding("info", "upsampling-learns",
                               f"Upsampling '{layer.name}' learns (lr_mult {lr_mult:g}); "
                               "the FCN authors found learning it made no significant difference, and fixed "
                               "it stays an exact bilinear interpolation.",
                               "param { lr_mult: 0 } to keep it fixed.", layer.name))
        k = p.num_output
        if p.group != k:
            out.append(Finding(
                "error" if frozen else "warning", "upsampling-group",
                f"Upsampling '{layer.name}' has group {p.group} for {k} channels: the bilinear filler "
                f"fills every input-output pair, so each output channel sums {k // max(p.group, 1)} class "
                "scores and the classes blur into one another.",
                f"group: {k} (= num_output), so each class is upsampled on its own.", layer.name))
    return out


def check_initialisation(n: _Net, shapes: Optional[dict], weights_given: bool) -> list[Finding]:
    """Finding 4: learning layers that start at zero under a ReLU (not loaded from weights)."""
    if weights_given and shapes is None:
        return []  # the weights could not be read: reported elsewhere, coverage unknown
    dead = [layer.name for layer in n.layers("Convolution", "InnerProduct", "Deconvolution")
            if not _is_upsampling(layer) and _learns(layer) and _starts_at_zero(layer)
            and not (shapes and layer.name in shapes) and _feeds_relu(n, layer)]
    if not dead:
        return []
    k = n.num_classes
    prior = f" (a loss stuck near ln {k} = {math.log(k):.4g})" if k else ""
    where = " and the weights given do not contain them" if weights_given else ""
    return [Finding(
        "error", "zero-init",
        f"{len(dead)} learning layer{'s' if len(dead) > 1 else ''} ({_names(dead)}) have no weight_filler"
        f"{where}: Caffe's default filler is constant 0, so they start at exactly zero. Under ReLU a zero "
        "layer outputs 0, passes back no gradient and never moves: the net can only learn the class "
        f"prior{prior}.",
        "Give each a weight_filler { type: \"msra\" } and bias_filler { type: \"constant\" }, or load "
        "pretrained weights that contain these layers (--weights).", ", ".join(dead))]


def check_from_scratch(n: _Net, solver_type: Optional[str], weights_given: bool) -> list[Finding]:
    """Finding 5 (no weights): VGG-depth nets without normalisation trained from scratch."""
    hidden = _hidden_layers(n)
    if weights_given or len(hidden) < VGG_DEPTH or n.layers(*NORMALISATION):
        return []
    unscaled = [layer.name for layer in hidden
                if (_weight_filler(layer) is None or _weight_filler(layer).type not in SCALED_FILLERS)]
    stride = n.stride or 1
    reasons = []
    if len(unscaled) == len(hidden):
        reasons.append("none of them starts from a variance-scaled filler (msra / xavier)")
    elif unscaled:
        reasons.append(f"{_names(unscaled, 4)} start{'s' if len(unscaled) == 1 else ''} without a "
                       "variance-scaled filler (msra / xavier)")
    if stride > SCRATCH_MAX_STRIDE:
        stages = f"{_log2(stride)} pooling stages (stride {stride})" if _log2(stride) else f"stride {stride}"
        reasons.append(f"its {stages} go beyond the 3 pooling stages known to train from scratch")
    names = _names([layer.name for layer in hidden], 4)
    chans = n.channels.get(n.input_blob)
    fix = (f"Convert ImageNet VGG16 to {_plural(chans, 'input channel') if chans else 'your input channels'} "
           f"with `{CONVERT_HINT}` and pass it (--weights, or init.weights in the config). "
           "From scratch, stay where it is known to work: at most 3 pooling stages, msra fillers on every "
           "layer, Adam at 1e-4 on a normalized loss (configs/seed_reduced_1ch.yaml).")
    if reasons:
        return [Finding(
            "error", "from-scratch",
            f"No pretrained weights: {len(hidden)} learning layers under ReLU ({names}) and no "
            f"normalisation layers would train from scratch, and {' and '.join(reasons)}. The FCN reference "
            "never does this: it fine-tunes from ImageNet VGG16, and calls training a VGG-depth FCN from "
            "scratch with its recipe not feasible.", fix, names)]
    if solver_type is not None and solver_type not in ADAPTIVE_SOLVERS:
        return [Finding(
            "warning", "from-scratch",
            f"No pretrained weights: {len(hidden)} learning layers ({names}) train from scratch with "
            f"{solver_type}. The from-scratch setup measured to learn at this depth used Adam (HeLa demo: "
            "3 stages, msra fillers, Adam 2e-4, val mean IU 0.91).",
            "Use type: \"Adam\" with base_lr 1e-4 on a normalized loss, or pretrained weights (" +
            f"`{CONVERT_HINT}`).", names)]
    return [Finding(
        "info", "from-scratch",
        f"No pretrained weights: {len(hidden)} learning layers ({names}) train from scratch; at this depth, "
        f"with msra fillers and {solver_type or 'an adaptive solver such as Adam'}, that is known to work "
        "(HeLa demo, configs/demo_hela.yaml: val mean IU 0.91).",
        f"Nothing to do; for deeper nets use pretrained weights (`{CONVERT_HINT}`).", names)]


def check_weights(n: _Net, weights: Path, shapes: Optional[dict], problem: str, loader: str) -> list[Finding]:
    """Finding 5 (weights given): unreadable weights, no shared layers, conv1_1 channels, other shapes.

    `loader` "caffe" (caffe train --weights: every same-named blob must match) or "fcnseg" (fcnseg train:
    trunk convolutions must match; fc6/fc7 are reshaped or keep their fillers, other layers keep theirs).
    """
    aborts = ("Caffe aborts with 'shape mismatch' when it copies" if loader == "caffe"
              else "fcnseg train refuses to load")
    if shapes is None:
        return [Finding("error", "weights-unreadable", problem,
                        "Point --weights / init.weights at an existing .caffemodel.")]
    learnable = [layer for layer in n.layers("Convolution", "InnerProduct", "Deconvolution") if _learns(layer)]
    shared = [layer for layer in learnable if layer.name in shapes]
    out = []
    if learnable and not shared:
        out.append(Finding(
            "error", "weights-unused",
            f"None of the net's learning layers ({_names([l.name for l in learnable], 4)}) is in {weights.name} "
            f"(it holds {_names(list(shapes), 4)}): Caffe copies weights by layer name, so nothing is loaded "
            "and the net trains from its fillers.",
            "Name the layers as in the weights (VGG16: conv1_1 … conv5_3, fc6, fc7).", None))
    mismatched = []
    for layer in shared:
        got = shapes[layer.name][0]
        if n.input_blob in layer.bottom and layer.type == "Convolution":
            want = n.channels.get(n.input_blob)
            if len(got) < 2:
                continue
            if want is None:
                out.append(Finding(
                    "info", "weights-channels",
                    f"'{layer.name}' in {weights.name} takes {_plural(got[1], 'input channel')}; the data's "
                    "channel count is unknown here (no Input shape, mean_value per channel or readable LMDB).",
                    f"Make sure the images have {_plural(got[1], 'channel')}.", layer.name))
            elif got[1] != want // max(layer.convolution_param.group, 1):
                out.append(Finding(
                    "error", "weights-channels",
                    f"'{layer.name}' in {weights.name} takes {got[1]} input channels but the data has {want}: "
                    f"{aborts} the weights.",
                    f"Convert the weights to {_plural(want, 'channel')}: `{CONVERT_HINT}` (sums conv1_1 over "
                    "RGB and corrects the bias for the mean).", layer.name))
            continue
        want = _expected_shape(n, layer)
        if loader == "fcnseg" and not TRUNK_CONV.match(layer.name):
            continue
        if want is not None and not _same_shape(got, want):
            mismatched.append(f"'{layer.name}' is {_shape_text(got)} in the weights but {_shape_text(want)} "
                              "in the net")
    if mismatched:
        out.append(Finding(
            "error", "weights-shape",
            f"{'; '.join(mismatched)}: {aborts} them.",
            ("ImageNet VGG16's fc6/fc7 are InnerProduct layers: `fcnseg weights convert` reshapes them into "
             "convolutions. " if any(m.startswith(("'fc6'", "'fc7'")) for m in mismatched) else "") +
            "Rename a layer that should train from its filler instead, or use weights made for this net.",
            ", ".join(m.split("'")[1] for m in mismatched)))
    return out


def _expected_shape(n: _Net, layer) -> Optional[tuple[int, ...]]:
    if layer.type not in ("Convolution", "Deconvolution"):
        return None  # InnerProduct's input size depends on the image size
    p = layer.convolution_param
    cin = n.channels.get(layer.bottom[0]) if layer.bottom else None
    if cin is None:
        return None
    kh = p.kernel_h or (p.kernel_size[0] if p.kernel_size else 1)
    kw = p.kernel_w or (p.kernel_size[-1] if p.kernel_size else 1)
    g = max(p.group, 1)
    if layer.type == "Convolution":
        return (p.num_output, cin // g, kh, kw)
    return (cin, p.num_output // g, kh, kw)


def _loss_mode(loss) -> str:
    """Caffe's normalization of a loss layer: FULL, VALID, BATCH_SIZE or NONE."""
    lp = loss.loss_param
    if not lp.HasField("normalization") and lp.HasField("normalize"):
        return "VALID" if lp.normalize else "BATCH_SIZE"
    return caffe_pb2().LossParameter.NormalizationMode.Name(lp.normalization)


def solver_type(solver) -> str:
    """The solver's type name ('SGD', 'Adam', ...), from `type` or the old `solver_type` enum."""
    if solver.HasField("type") or not solver.HasField("solver_type"):
        return solver.type
    names = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
             "ADADELTA": "AdaDelta", "ADAM": "Adam"}
    return names[caffe_pb2().SolverParameter.SolverType.Name(solver.solver_type)]


def check_solver(n: _Net, solver, image_size: Optional[tuple[int, int]], batch: Optional[int]) -> list[Finding]:
    """Finding 6: effective step lr / (1 - momentum) against the reference recipe for the loss in use."""
    kind = solver_type(solver)
    if n.loss is None or kind not in ("SGD", "Nesterov"):
        return []
    mode = _loss_mode(n.loss)
    lr, m = solver.base_lr, solver.momentum
    if lr <= 0 or not 0 <= m < 1:
        return [Finding("error", "solver-step", f"base_lr {lr:g} with momentum {m:g} cannot train.",
                        "Use base_lr > 0 and 0 <= momentum < 1.")]
    step = lr / (1 - m)
    summed = mode in ("BATCH_SIZE", "NONE")
    if summed:
        pixels = image_size[0] * image_size[1] if image_size else REFERENCE_PIXELS
        per = pixels * ((batch or 1) if mode == "NONE" else 1)
        size = f"{image_size[0]}×{image_size[1]}" if image_size else "~500×500 (assumed; image size unknown)"
        if per > pixels:
            size += f" × batch {batch}"
        ratio = step * per / VGG_STEP
        loss_text = (f"a loss summed over pixels (normalization {mode}), so every gradient is ~{per:,} times a "
                     f"pixel's for {size} images")
        ref = "the VGG reference for a summed loss (1e-10 at 0.99 on ~500×500 images)"
        mix = (f" An lr of {lr:g} belongs with a normalized loss (FCN-AlexNet: 1e-4), not a summed one."
               if lr >= 1e-6 else "")
    else:
        ratio = step / ALEXNET_STEP
        loss_text = f"a normalized loss (averaged over pixels, normalization {mode})"
        ref = "the FCN-AlexNet reference for a normalized loss (1e-4 at 0.9 = 1e-3)"
        mix = (" Momentum 0.99 belongs to the VGG recipe, whose loss is summed over pixels and whose lr is "
               "1e-10." if m >= 0.99 else "")
    if STEP_WARNING > ratio >= STEP_SMALL:
        return []
    ideal = (f"base_lr ≈ {_sci(1e-10 * REFERENCE_PIXELS / per)} with momentum 0.99 (normalize: false, as the "
             "VGG reference)" if summed else "base_lr 1e-4 with momentum 0.9 (FCN-AlexNet)")
    other = ("or switch to a normalized loss (normalization: VALID) with base_lr 1e-4, momentum 0.9"
             if summed else "or sum the loss (normalize: false) with base_lr ≈ 1e-10 × 250000 / (pixels per "
             "image), momentum 0.99 (the VGG recipe)")
    howmuch = f"{_times(ratio)} the step of" if ratio >= 1 else f"1/{_times(1 / ratio)[:-1]} of the step of"
    message = (f"{kind} at base_lr {lr:g}, momentum {m:g} takes effective steps lr/(1−momentum) = "
               f"{_sci(step)} on {loss_text}: {howmuch} {ref}.{mix}")
    if ratio >= STEP_WARNING:
        severity = "error" if ratio >= STEP_ERROR else "warning"
        message += " Steps that large overshoot: the loss jumps or the ReLUs die."
        return [Finding(severity, "solver-step", message, f"Pick one recipe: {ideal}, {other}.")]
    message += (" That is the size the reference uses only for fine-tuning an already trained net "
                "(16s/8s from 32s); otherwise the weights barely move.")
    return [Finding("info", "solver-step", message, f"For training from VGG16: {ideal}.")]


def check_batch(batch: Optional[int], solver) -> list[Finding]:
    """Finding 7: one image per step and no gradient accumulation."""
    iter_size = solver.iter_size if solver is not None else 1
    if batch != 1 or iter_size != 1:
        return []
    return [Finding(
        "info", "batch-one",
        "Each step sees one image (batch_size 1, iter_size 1). The VGG reference does this on purpose with "
        "momentum 0.99, which averages ~100 steps; with lower momentum or Adam the steps are noisy.",
        "Raise batch_size (equal-size tiles), or accumulate with iter_size (FCN-AlexNet uses 20).")]


def check_mean(n: _Net, base_dirs: Sequence[Path], weights_channels: Optional[int]) -> list[Finding]:
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
                f"Give {_plural(want, 'mean_value')}, or one for all channels.", image.name))
        if t.mean_file:
            found = _find(t.mean_file, base_dirs)
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


def check_data(n: _Net, sources: dict) -> list[Finding]:
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
            values = np.rint(lab).astype(np.int64).ravel() if lab.dtype != np.uint8 else lab.ravel()
            inside = (values >= 0) & (values < 256)
            hist += np.bincount(values[inside], minlength=256)[:256]
            out_of_byte.update(np.unique(values[~inside]).tolist()[:5])
        if bad_size:
            i, a, b = first_bad
            out.append(Finding(
                "error", "data-size",
                f"{phase}: {bad_size} of {total} image/label pairs differ in shape (first: #{i}, image "
                f"{_shape_text(a)}, label {_shape_text(b)}); a label must be 1×H×W for an image C×H×W.",
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


def check_housekeeping(n: _Net, solver, val_count: Optional[int], base_dirs: Sequence[Path],
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
            _find(str(folder), base_dirs) is None:
        out.append(Finding(
            "warning", "snapshot-dir",
            f"snapshot_prefix {solver.snapshot_prefix}: the folder {folder} does not exist, so the first "
            f"snapshot{f' (iteration {solver.snapshot})' if solver.snapshot else ''} fails after training "
            "that long.", f"mkdir -p {folder} where Caffe runs, or point snapshot_prefix at an existing folder.",
            None))
    return out


# ---------------------------------------------------------------------------------------------------
# Entry points

def diagnose(net, solver=None, *, weights: Optional[str | Path] = None, input_channels: Optional[int] = None,
             image_size: Optional[tuple[int, int]] = None, val_samples: Optional[int] = None,
             data_check: bool = False, base_dirs: Sequence[str | Path] = (".",),
             check_snapshot_dir: bool = True, loader: str = "caffe") -> list[Finding]:
    """All checks on a parsed NetParameter (train_val) and optional SolverParameter.

    `input_channels`, `image_size` (H, W) and `val_samples` are what the caller knows besides the files;
    whatever is missing is read from the Data layers' LMDBs when they exist (first record, entry count).
    `base_dirs` are where relative paths (LMDBs, mean file, snapshot folder) are looked up. `loader` says
    who copies `weights` into the net: "caffe" (caffe train --weights) or "fcnseg" (fcnseg train).
    Returns the findings, errors first. Never raises for problems in the files: they become findings.
    """
    base_dirs = tuple(Path(b) for b in base_dirs)
    weights = Path(weights) if weights else None
    probe = _Net.build(net, None)
    sources = {phase: tuple(_Source.peek(layer, base_dirs) if layer is not None else None
                            for layer in probe.data_layers(phase)) for phase in ("TRAIN", "TEST")}
    first = sources["TRAIN"][0].first if sources["TRAIN"][0] is not None else None
    n = _Net.build(net, input_channels or (first[0] if first else None) or _declared_channels(probe))
    image_size = image_size or _declared_size(n) or (tuple(first[1:]) if first else None)
    image_layer, _ = n.data_layers("TRAIN")
    batch = image_layer.data_param.batch_size if image_layer is not None else _declared_batch(n)
    val_source = sources["TEST"][0]
    val_count = val_samples or (val_source.count if val_source is not None else None)

    shapes, problem = None, ""
    if weights is not None:
        try:
            shapes = caffemodel_shapes(weights)
        except WeightsError as exc:
            problem = str(exc)
    first_conv = next((layer for layer in n.layers("Convolution") if n.input_blob in layer.bottom), None)
    weights_channels = None
    if shapes and first_conv is not None and len(shapes.get(first_conv.name, [()])[0]) > 1:
        weights_channels = shapes[first_conv.name][0][1]

    findings = check_geometry(n)
    findings += check_upsampling(n, shapes)
    if weights is not None:
        findings += check_weights(n, weights, shapes, problem, loader)
    if any(layer.type.endswith("Loss") for layer in n.train.layer):  # a net that trains, not a deploy net
        findings += check_initialisation(n, shapes, weights is not None)
        findings += check_from_scratch(n, solver_type(solver) if solver is not None else None,
                                       weights is not None)
        findings += check_batch(batch, solver)
        if solver is not None:
            findings += check_solver(n, solver, image_size, batch)
    findings += check_mean(n, base_dirs, weights_channels)
    if data_check:
        findings += check_data(n, sources)
    findings += check_housekeeping(n, solver, val_count, base_dirs, check_snapshot_dir)
    return _by_severity(findings)


def _declared_channels(n: _Net) -> Optional[int]:
    """Channels the prototxt itself states: net-level input_shape/input_dim, or one mean_value each."""
    net = n.train
    if len(net.input_shape) and len(net.input_shape[0].dim) > 1:
        return int(net.input_shape[0].dim[1])
    if len(net.input_dim) >= 2:
        return int(net.input_dim[1])
    image, _ = n.data_layers("TRAIN")
    if image is not None and len(image.transform_param.mean_value) > 1:
        return len(image.transform_param.mean_value)
    return None


def _declared_size(n: _Net) -> Optional[tuple[int, int]]:
    for layer in n.train.layer:
        if layer.type == "Input" and layer.input_param.shape and len(layer.input_param.shape[0].dim) == 4:
            return tuple(int(d) for d in layer.input_param.shape[0].dim[2:])
        if layer.type in SOURCES and layer.transform_param.crop_size:
            return (layer.transform_param.crop_size,) * 2
    return None


def _declared_batch(n: _Net) -> Optional[int]:
    for layer in n.train.layer:
        if layer.type == "Input" and layer.input_param.shape and len(layer.input_param.shape[0].dim):
            return int(layer.input_param.shape[0].dim[0])
    return None


def diagnose_files(train_val: str | Path, solver: Optional[str | Path] = None,
                   weights: Optional[str | Path] = None, data_check: bool = False) -> list[Finding]:
    """Checks on a train_val prototxt (and solver prototxt, and caffemodel) as a user has them.

    Relative paths inside the files are looked up from the current folder, then from the prototxt's.
    Raises ConfigError when a prototxt is missing or malformed (naming the file and line).
    """
    net = read_net(train_val)
    solver_param = read_solver(solver) if solver is not None else None
    bases = [Path("."), Path(train_val).parent]
    if solver is not None:
        bases.append(Path(solver).parent)
    return diagnose(net, solver_param, weights=weights, data_check=data_check, base_dirs=bases)


def diagnose_config(config, data_check: bool = False) -> list[Finding]:
    """The same checks on the nets fcnseg builds from `config` (train runs this before training).

    Builds train_val (fcnseg.nets) and solver (fcnseg.solver) from the resolved config and adds what the
    config knows: init.weights, input channels, the dataset's tile size and val count. Raises
    ConfigError / DataError for a config that cannot be built at all.
    """
    from .nets import train_val_net  # noqa: PLC0415
    from .runs import val_batches  # noqa: PLC0415
    from .solver import solver_param  # noqa: PLC0415

    findings = []
    meta = None
    try:
        config = resolve_config(config)
        meta = read_dataset(config.data.root) if config.data.root else None
    except DataError as exc:
        if config.model.num_classes is None:
            raise
        findings.append(Finding("error", "dataset", str(exc),
                                "Import the data with `fcnseg data import`, or fix data.root."))
    net = train_val_net(config)
    solver = solver_param(config, val_batches(config, meta))
    tile = (meta or {}).get("tile")
    val = (meta or {}).get("splits", {}).get("val", {}).get("samples")
    weights = config.init.weights
    findings += diagnose(net, solver, weights=weights, input_channels=config.model.input_channels,
                         image_size=(int(tile), int(tile)) if tile else None, val_samples=val,
                         data_check=data_check, check_snapshot_dir=False, loader="fcnseg")
    return _by_severity(findings)


def _by_severity(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def has_errors(findings: Sequence[Finding]) -> bool:
    """True when any finding is an error (the exit status of `fcnseg doctor` is then 1)."""
    return any(f.severity == "error" for f in findings)


def _summary(findings: Sequence[Finding]) -> str:
    counts = [(sum(f.severity == s for f in findings), s) for s in SEVERITIES]
    return ", ".join(f"{c} {s}{'s' if c != 1 and s != 'info' else ''}" for c, s in counts)


def format_findings(findings: Sequence[Finding], width: int = 100) -> str:
    """Findings as text for people: a header line per finding, its message, then 'fix:'."""
    if not findings:
        return "doctor: no problems found"
    lines = []
    for f in findings:
        head = f"{f.severity.upper():7} {f.code}" + (f"  [{f.layer}]" if f.layer else "")
        lines.append(head)
        lines += textwrap.wrap(f.message, width, initial_indent="    ", subsequent_indent="    ")
        lines += textwrap.wrap(f.fix, width, initial_indent="    fix: ", subsequent_indent="         ")
    lines.append(f"doctor: {_summary(findings)}")
    return "\n".join(lines)


def findings_json(findings: Sequence[Finding]) -> str:
    """Findings for machines: {"errors": n, "warnings": n, "infos": n, "findings": [{...}, ...]}."""
    counts = {f"{s}s": sum(f.severity == s for f in findings) for s in SEVERITIES}
    return json.dumps({**counts, "findings": [f.to_dict() for f in findings]}, indent=2, ensure_ascii=False)
