"""What doctor knows about a net: the Finding record, thresholds, and facts derived once from a NetParameter
(blob channels, losses, traces, crops, heads, whether it is initialised from outside) that every
check reads. No file access, no Caffe net.

Thresholds (each is explained where it is used):
- "VGG-depth": >= 8 learning layers followed by a ReLU (the seed's conv1_1..fc7; FCN-AlexNet has 7).
  Trained from scratch (no weights) without BatchNorm/MVN this is an error unless every one of them has
  a variance-scaled filler (msra / xavier) and the trunk has at most 3 pooling stages (stride <= 8): the
  envelope measured on the HeLa demo (msra, Adam 1e-4 to 2e-4: val mean IU 0.87 to 0.91). Inside it: a
  warning with a non-adaptive solver, else info.
- Effective step lr / (1 - momentum), per pixel: times the pixels a summed loss adds up. Compared with
  the reference for the loss in use (fcnseg/recipes.py; normalized: FCN-AlexNet 1e-4 at 0.9 = 1e-3; summed: VGG 1e-10 at
  0.99 over ~500x500 pixels = 2.5e-3): >= 8x is an error, >= 3x a warning (overshoot); beyond 100x too
  small a warning, 10^4x an error, except the reference's staged fine-tuning steps (1e-12 for 16s, 1e-14
  for 8s): nothing in a net with those skips, info in one without.
- Class imbalance: a class under 1% of the labelled training pixels, or absent.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Optional, Sequence

from .. import caffemodel
from ..geometry import PASS_THROUGH, SOURCES, blob_traces, conv_geometry, phase_net, trunk_stride
from ..recipes import NORMALIZED, REFERENCE_PIXELS, SCRATCH_MAX_STAGES, SUMMED

SEVERITIES = ("error", "warning", "info")
VGG_DEPTH = 8                      # learning layers under ReLU; the seed has 8, FCN-AlexNet 7
SCRATCH_MAX_STRIDE = 2 ** SCRATCH_MAX_STAGES  # 3 pooling stages: the from-scratch setup measured to learn
SCALED_FILLERS = {"msra", "xavier"}
ADAPTIVE_SOLVERS = {"Adam", "AdaGrad", "RMSProp", "AdaDelta"}
NORMALISATION = {"BatchNorm", "MVN"}
ALEXNET_STEP = NORMALIZED.step    # normalized loss: effective step per pixel-averaged gradient, 1e-3
VGG_STEP = SUMMED.step * REFERENCE_PIXELS  # summed loss: per-pixel equivalent, 2.5e-3
STEP_ERROR, STEP_WARNING = 8.0, 3.0               # too large: measured overshoot
STEP_SMALL_WARNING, STEP_SMALL_ERROR = 1e-2, 1e-4  # too small: 100x / 10^4x below the recipe
STAGE_STEP_LOW = 0.1  # a staged 16s/8s step down to 1/10 of the reference's (e.g. 1e-12 on 256² tiles) is its recipe
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


def same_shape(a: Sequence[int], b: Sequence[int]) -> bool:
    # Caffe compares legacy 4-D blobs by their trailing axes; leading 1s carry no information.
    strip = lambda s: tuple(s)[next((i for i, d in enumerate(s) if d != 1), len(s)):]  # noqa: E731
    return strip(a) == strip(b)


def shape_text(shape: Sequence[int]) -> str:
    """A blob shape in doctor's prose: 64×1×3×3 (`caffemodel.shape_text` with ×)."""
    return caffemodel.shape_text(shape, "×")


# ---------------------------------------------------------------------------------------------------
# What the net is made of

@dataclass
class NetFacts:
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

    @classmethod
    def build(cls, net, input_channels: Optional[int] = None) -> "NetFacts":
        """The facts of NetParameter `net`: its phases, input, loss, coordinate traces and stride (one walk
        of the graph each), and the channels of every blob given `input_channels` (None: unknown)."""
        n = cls(net, phase_net(net, "TRAIN"), phase_net(net, "TEST"))
        n.input_blob = input_blob_of(n.train)
        losses = [layer for layer in n.train.layer if layer.type == "SoftmaxWithLoss"]
        n.loss = losses[0] if losses else None
        n.traces, n.crops = blob_traces(n.train, n.input_blob)
        n.stride = trunk_stride(n.train, n.input_blob)
        return n.with_input_channels(input_channels)

    def with_input_channels(self, input_channels: Optional[int]) -> "NetFacts":
        """These facts with the blob channels (and so K and the score layer) for `input_channels`; the
        geometry is not walked again. Returns self (changed)."""
        self.channels = input_channels_of(self.train, self.input_blob, input_channels)
        score = self.loss.bottom[0] if self.loss is not None else ("score" if "score" in self.channels else None)
        self.num_classes = self.channels.get(score)
        self.score_layer = origin_of(self, score, self.loss)
        return self

    @property
    def ignore_label(self) -> Optional[int]:
        lp = self.loss.loss_param if self.loss is not None else None
        return lp.ignore_label if lp is not None and lp.HasField("ignore_label") else None

    @property
    def script_driven(self) -> bool:
        """A Python data layer: the net is run by a script (the reference's solve.py), which can load
        weights and set upsampling kernels (surgery.interp) before the first step."""
        return any(layer.type == "Python" for layer in self.train.layer)

    def outside_init(self, upsampling: bool = True) -> list[str]:
        """Evidence, in words, that this net is meant to be initialised from outside the prototxt; [] if none.
        `upsampling` False leaves out the fillerless fixed upsampling layers (evidence about the trunk only)."""
        learning = [layer for layer in self.layers("Convolution", "Deconvolution", "InnerProduct") if learns(layer)]
        evidence = []
        if self.script_driven:
            evidence.append("its data comes from a Python layer, so a script drives it")
        if learning and all(weight_filler(layer) is None for layer in learning):
            evidence.append("no learning layer has a filler")
        if upsampling and any(is_upsampling(layer) and not learns(layer) and weight_filler(layer) is None
               for layer in self.layers("Deconvolution")):
            evidence.append("its fixed upsampling layers have no filler, as surgery.interp expects")
        return evidence

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


def input_blob_of(net) -> str:
    for layer in net.layer:
        if layer.type in SOURCES and layer.top:
            return layer.top[0]
    return net.input[0] if len(net.input) else "data"


def origin_of(n: NetFacts, blob: Optional[str], reader=None) -> Optional[str]:
    """The layer with learnable weights that set `blob`'s channels as `reader` sees it (the score
    convolution), walking back through the writer before each reader, so in-place layers end the walk."""
    layer = writer_of(n, blob, reader) if blob is not None else None
    while layer is not None:
        if layer.type in ("Convolution", "InnerProduct"):
            return layer.name
        layer = writer_of(n, layer.bottom[0], layer) if layer.bottom else None
    return None


def input_channels_of(net, input_blob: str, input_channels: Optional[int]):
    """{blob: channel count}, following num_output through the net."""
    chans: dict[str, int] = {}
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
            if out:
                chans[top] = out
    return chans


def learns(layer) -> bool:
    return not layer.param or layer.param[0].lr_mult > 0


def is_upsampling(layer) -> bool:
    """A Deconvolution that interpolates (stride > 1, windows overlapping: kernel > stride, as the bilinear 2f/f).
    A U-Net's learned up-convolution (kernel = stride, 2x2/2) is a learned layer like any convolution."""
    if layer.type != "Deconvolution":
        return False
    kernel, stride, _ = conv_geometry(layer)
    return stride > 1 and kernel > stride


def weight_filler(layer):
    if layer.type == "InnerProduct":
        p = layer.inner_product_param
    else:
        p = layer.convolution_param
    return p.weight_filler if p.HasField("weight_filler") else None


def starts_at_zero(layer) -> bool:
    f = weight_filler(layer)
    return f is None or (f.type == "constant" and f.value == 0)


def feeds_relu(n: NetFacts, layer) -> bool:
    """Whether `layer`'s output goes through a plain ReLU (zero gradient at 0) before anything learns."""
    for top in layer.top:
        for consumer in n.consumers(top, after=layer):
            if consumer.type == "ReLU" and consumer.relu_param.negative_slope == 0:
                return True
            if consumer.type in ("Dropout", "BatchNorm", "Scale") and consumer.top[0] == top:
                continue  # in place: keep looking at what reads the same blob
            break
    return False


def hidden_layers(n: NetFacts) -> list:
    """Learning Convolution/InnerProduct layers followed by a ReLU: the depth that must be trained."""
    return [layer for layer in n.layers("Convolution", "InnerProduct")
            if learns(layer) and feeds_relu(n, layer)]


def name_list(names: Sequence[str], most: int = 8) -> str:
    names = list(names)
    if len(names) <= most:
        return ", ".join(names)
    return ", ".join(names[:most - 2]) + f", … {names[-1]}"


def num_text(x) -> str:
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    return f"1/{x.denominator}" if x.numerator == 1 else f"{float(x):g}"


def exact_log2(x) -> Optional[int]:
    """n when x == 2**n (n >= 1), else None."""
    x = Fraction(x)
    n = x.numerator.bit_length() - 1
    return n if x.denominator == 1 and n >= 1 and x.numerator == 1 << n else None


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def times_text(ratio: float) -> str:
    return f"{ratio:.3g}×" if ratio < 1000 else f"{float(f'{ratio:.3g}'):,.0f}×"


def sci_text(x: float) -> str:
    return f"{x:.2g}".replace("e-0", "e-").replace("e+0", "e")



@dataclass
class Head:
    """The layers between a loss and the score convolutions that feed it: what must agree on K."""

    loss: object
    scores: list = field(default_factory=list)      # (layer, num_output) of the score Convolutions
    upsampling: list = field(default_factory=list)  # (layer, input channels, num_output) of Deconvolutions
    fusions: list = field(default_factory=list)     # (layer, [(bottom blob, channels), ...]) of Eltwise layers

    @property
    def skips(self) -> int:
        """Fused skip connections: 0 for FCN-32s, 1 for 16s, 2 for 8s."""
        return len(self.fusions)


def writer_of(n: NetFacts, blob: str, before=None):
    """The last layer writing `blob` (before layer `before`, for in-place layers), or None."""
    found = None
    for layer in n.train.layer:
        if before is not None and layer is before:
            break
        if blob in layer.top:
            found = layer
    return found


def loss_heads(n: NetFacts) -> list[Head]:
    """One Head per SoftmaxWithLoss, found by walking back from its score input through Crop, Eltwise,
    Deconvolution and shape-keeping layers to the Convolutions that make the scores."""
    heads = []
    for loss in n.layers("SoftmaxWithLoss"):
        head, seen = Head(loss), set()
        stack = [(loss.bottom[0], loss)]
        while stack:
            blob, reader = stack.pop()
            layer = writer_of(n, blob, reader)
            if layer is None or layer.name in seen:
                continue
            seen.add(layer.name)
            if layer.type in ("Convolution", "InnerProduct"):
                p = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
                head.scores.append((layer, p.num_output))
            elif layer.type == "Deconvolution":
                head.upsampling.append((layer, channels_before(n, layer), layer.convolution_param.num_output))
                stack.append((layer.bottom[0], layer))
            elif layer.type == "Eltwise":
                head.fusions.append((layer, [(b, channels_at(n, b, layer)) for b in layer.bottom]))
                stack += [(b, layer) for b in layer.bottom]
            elif layer.type == "Crop" or (layer.type in PASS_THROUGH and layer.bottom):
                stack.append((layer.bottom[0], layer))
        heads.append(head)
    return heads


def channels_at(n: NetFacts, blob: str, reader) -> Optional[int]:
    """Channels of `blob` as `reader` sees it, following the writers back to one with a channel count."""
    layer = writer_of(n, blob, reader)
    while layer is not None:
        if layer.type in ("Convolution", "Deconvolution"):
            return layer.convolution_param.num_output
        if layer.type == "InnerProduct":
            return layer.inner_product_param.num_output
        if layer.type in SOURCES or not layer.bottom or layer.type not in PASS_THROUGH | {"Crop", "Eltwise",
                                                                                          "Pooling"}:
            return n.channels.get(blob)
        blob = layer.bottom[0]
        layer = writer_of(n, blob, layer)
    return n.channels.get(blob)


def channels_before(n: NetFacts, layer) -> Optional[int]:
    return channels_at(n, layer.bottom[0], layer) if layer.bottom else None
