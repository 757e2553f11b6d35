"""`fcnseg export`: a run's deploy net and weights as an ONNX graph (see onnxmodel for its interface).

The graph is translated layer by layer from the run's deploy.prototxt, with the parameters Caffe loaded
from the weights, so it computes what Caffe computes rather than an approximation of it:

- Convolution -> Conv with Caffe's pads, strides, groups and dilation.
- Pooling MAX -> MaxPool with ceil_mode 1: Caffe rounds the output size up, so a 2x2/2 pooling of
  an odd-sized map keeps a last, partial window.
- Deconvolution -> ConvTranspose with the layer's own weights (fixed bilinear kernels, group K),
  output (H - 1) * stride + kernel - 2 * pad, as in Caffe.
- Crop -> Slice from the layer's offsets to offset + the reference blob's runtime size, so H and W
  stay free; the 100-pixel pad of conv1_1 is an ordinary Conv pad.
- Eltwise -> Add/Mul/Max (SUM coefficients as a Mul); Scale -> Mul (+ Add for a bias);
- BatchNorm -> BatchNormalization with Caffe's running averages (its sums over their weight), eps as given;
  Concat -> Concat;
  ReLU -> Relu/LeakyRelu; Dropout is the identity at inference, as in Caffe's TEST phase.

Any other layer type raises RunError rather than being guessed at.

The graph takes any H x W >= `input_multiple` (`pad_to_multiple`): a net that needs multiples of its
stride (`pad: minimal`) mirrors the net input at its bottom and right edges up to the next multiple
(Pad, mode reflect: numpy's `reflect`, as `predict.predict` pads) and slices its scores back to H x W,
so a client feeds the image it has. Only standard ops (Shape, Slice, Add, Div, Mul, Sub, Concat, Pad) are added.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from google.protobuf import text_format

from . import diskspace, integrity, runs
from .caffe_env import caffe_pb2
from .errors import DataError, RunError
from .files import DEPLOY_FILE, write_bytes_atomic
from .geometry import axis_crop_offsets
from .inputs import InferenceFacts
from .onnxmodel import INPUT, PROBABILITIES, SCORES, metadata
from .volumes import describe_reader

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17: runtimes from onnxruntime 1.13 on read it


@dataclass
class ExportResult:
    """What `export_onnx` wrote."""

    path: Path
    weights: Path
    raw_input: bool
    channels: int
    nodes: int
    size_bytes: int
    seconds: float
    reader: Optional[dict] = None  # how the training volumes were read (metadata `reader`)
    input_multiple: int = 1  # the smallest H, W; the graph pads other sizes to its multiples itself

    def lines(self) -> list[str]:
        """The summary the CLI prints."""
        takes = "the original pixel values (window, mean and scale inside)" if self.raw_input else \
            "the windowed 0-255 image"
        return [f"wrote {self.path} ({self.size_bytes / 2**20:.1f} MB, {self.nodes} nodes, opset {OPSET}) from "
                f"{self.weights} in {self.seconds:.1f} s",
                f"input `{INPUT}` (1 x {self.channels} x H x W float32, any H, W >= {self.input_multiple}): {takes}; "
                f"outputs `{SCORES}` (class scores) and `{PROBABILITIES}` (their softmax), 1 x K x H x W"] + \
            ([f"trained on volumes: {describe_reader(self.reader)}"] if self.reader else [])


class _Graph:
    """Nodes and initializers being built, and the current tensor of every Caffe blob."""

    def __init__(self):
        self.nodes, self.inits, self.tensor = [], [], {}
        self._names: set[str] = set()

    def fresh(self, name: str) -> str:
        out, i = name, 1
        while out in self._names:
            out, i = f"{name}_{i}", i + 1
        self._names.add(out)
        return out

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper  # noqa: PLC0415 - optional at import: only export and ONNX weights need onnx
        name = self.fresh(name)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        from onnx import helper  # noqa: PLC0415 - optional at import: only export and ONNX weights need onnx
        out = self.fresh(name)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _single(values, default: int, layer, what: str) -> int:
    """One value for both spatial axes; RunError for per-axis values fcnseg never writes."""
    values = list(values)
    if not values:
        return default
    if len(set(values)) != 1:
        raise RunError(f"layer {layer.name}: different {what} per axis are not supported by fcnseg export")
    return int(values[0])


def _conv_attrs(layer) -> dict:
    c = layer.convolution_param
    for field in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w"):
        if c.HasField(field):
            raise RunError(f"layer {layer.name}: {field} is not supported by fcnseg export; use kernel_size, "
                           "stride and pad")
    k = _single(c.kernel_size, 1, layer, "kernel sizes")
    s = _single(c.stride, 1, layer, "strides")
    p = _single(c.pad, 0, layer, "pads")
    d = _single(c.dilation, 1, layer, "dilations")
    return dict(kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], dilations=[d, d], group=int(c.group))


def _add_layer(g: _Graph, layer, params: dict[str, list[np.ndarray]]) -> None:
    kind, name = layer.type, layer.name
    bottoms = [g.tensor[b] for b in layer.bottom]
    blobs = params.get(name, [])

    def emit(tensor: str) -> None:
        g.tensor[layer.top[0]] = tensor

    if kind in ("Convolution", "Deconvolution"):
        inputs = bottoms[:1] + [g.const(f"{name}.weight", blobs[0].astype(np.float32))]
        if layer.convolution_param.bias_term:
            inputs.append(g.const(f"{name}.bias", blobs[1].astype(np.float32)))
        emit(g.node("Conv" if kind == "Convolution" else "ConvTranspose", inputs, name, **_conv_attrs(layer)))
    elif kind == "Pooling":
        p = layer.pooling_param
        # Caffe drops a last window that would start in the padding; runtimes disagree on that rule for
        # padded ceil-mode pooling, so only unpadded pooling (all fcnseg writes) is exported.
        if p.pool != p.MAX or p.global_pooling or p.pad or \
                any(p.HasField(f) for f in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w")):
            raise RunError(f"layer {name}: only square, unpadded MAX pooling is supported by fcnseg export")
        k, s = int(p.kernel_size), int(p.stride or 1)
        emit(g.node("MaxPool", bottoms, name, kernel_shape=[k, k], strides=[s, s], ceil_mode=1))
    elif kind == "ReLU":
        slope = float(layer.relu_param.negative_slope)
        emit(g.node("LeakyRelu", bottoms, name, alpha=slope) if slope else g.node("Relu", bottoms, name))
    elif kind == "Dropout":
        emit(bottoms[0])  # the identity at inference (Caffe's TEST phase)
    elif kind == "Crop":
        axis, offsets = axis_crop_offsets(layer)
        starts = g.const(f"{name}.starts", np.array(offsets, np.int64))
        ref = g.node("Shape", [bottoms[1]], f"{name}.reference_shape", start=axis)
        ends = g.node("Add", [starts, ref], f"{name}.ends")
        axes = g.const(f"{name}.axes", np.arange(axis, 4, dtype=np.int64))
        emit(g.node("Slice", [bottoms[0], starts, ends, axes], name))
    elif kind == "Eltwise":
        e = layer.eltwise_param
        op = {e.SUM: "Add", e.PROD: "Mul", e.MAX: "Max"}[e.operation]
        terms = bottoms
        if e.coeff and op == "Add":
            terms = [t if c == 1 else g.node("Mul", [t, g.const(f"{name}.coeff{i}", np.float32(c))], f"{name}.term{i}")
                     for i, (t, c) in enumerate(zip(bottoms, e.coeff))]
        out = terms[0]
        for i, t in enumerate(terms[1:]):
            out = g.node(op, [out, t], name if i == len(terms) - 2 else f"{name}.{i}")
        emit(out)
    elif kind == "Scale":
        if len(bottoms) != 1 or layer.scale_param.axis != 1 or layer.scale_param.num_axes != 1:
            raise RunError(f"layer {name}: only a learned per-channel Scale is supported by fcnseg export")
        shape = (1, -1, 1, 1)
        out = g.node("Mul", [bottoms[0], g.const(f"{name}.scale", blobs[0].astype(np.float32).reshape(shape))], name)
        if layer.scale_param.bias_term:
            out = g.node("Add", [out, g.const(f"{name}.bias", blobs[1].astype(np.float32).reshape(shape))],
                         f"{name}.biased")
        emit(out)
    elif kind == "BatchNorm":
        # Caffe keeps running sums and their weight: mean = blob0 / blob2, variance = blob1 / blob2 (0 when
        # the weight is 0). The Scale that follows is its own layer, so the affine part here is 1, 0.
        weight = float(blobs[2].ravel()[0])
        factor = 0.0 if weight == 0 else 1.0 / weight
        mean, var = (blobs[i].astype(np.float32) * np.float32(factor) for i in (0, 1))
        ones, zeros = np.ones_like(mean), np.zeros_like(mean)
        emit(g.node("BatchNormalization", [bottoms[0], g.const(f"{name}.gamma", ones), g.const(f"{name}.beta", zeros),
                                           g.const(f"{name}.mean", mean), g.const(f"{name}.var", var)],
                    name, epsilon=float(layer.batch_norm_param.eps)))
    elif kind == "Concat":
        axis = layer.concat_param.axis if layer.concat_param.HasField("axis") else 1
        emit(g.node("Concat", bottoms, name, axis=int(axis)))
    else:
        raise RunError(f"layer {name}: Caffe layer type {kind} is not supported by fcnseg export")


def _preprocessing(g: _Graph, facts: InferenceFacts, raw: str) -> str:
    """Nodes computing the net input from the original pixel values, in float32 as images.apply_window
    and the training Data layer do: window onto 0-255 (clip, round half to even), then (x - mean) * scale."""
    x = raw
    if facts.window is not None:
        low, high = float(facts.window["low"]), float(facts.window["high"])
        x = g.node("Sub", [x, g.const("window.low", np.float32(low))], "window.shift")
        x = g.node("Mul", [x, g.const("window.gain", np.float32(255.0 / (high - low)))], "window.scale")
        x = g.node("Clip", [x, g.const("window.min", np.float32(0)), g.const("window.max", np.float32(255))],
                   "window.clip")
        x = g.node("Round", [x], "window.round")
    x = g.node("Sub", [x, g.const("mean", np.float32(facts.mean))], "mean.subtract")
    return g.node("Mul", [x, g.const("scale", np.float32(facts.scale))], "scale.multiply")


def pad_to_multiple(g: _Graph, x: str, multiple: int) -> tuple[str, str]:
    """(x mirrored at its bottom and right edges up to the next multiple of `multiple` on H and W, the
    1-D int64 tensor [H, W] of x): the padding `predict.predict` does (numpy's reflect, no edge repeat),
    as graph nodes. Reflect padding needs the pad below the size, so H, W >= `multiple`."""
    shape = g.node("Shape", [x], "input.shape")
    size = g.node("Slice", [shape, g.const("input.hw_start", np.array([2], np.int64)),
                            g.const("input.hw_end", np.array([4], np.int64))], "input.size")
    m = g.const("input.multiple", np.array([multiple, multiple], np.int64))
    # ceil(size / m) * m - size in integer Div/Mul (Mod is less widely implemented): 0 for a multiple
    up = g.node("Add", [size, g.const("input.round_up", np.array([multiple - 1] * 2, np.int64))], "input.round")
    whole = g.node("Mul", [g.node("Div", [up, m], "input.tiles"), m], "input.padded_size")
    short = g.node("Sub", [whole, size], "input.pad")
    pads = g.node("Concat", [g.const("input.pad_begin", np.zeros(6, np.int64)), short], "input.pads", axis=0)
    return g.node("Pad", [x, pads], "input.padded", mode="reflect"), size


def onnx_model(net_param, params: dict[str, list[np.ndarray]], facts: InferenceFacts,
               raw_input: bool = False):
    """The onnx ModelProto of Caffe NetParameter `net_param` (a deploy net: one Input `data`, output
    blob `score`) with `params` ({layer: [blob arrays]}, as Caffe holds them).

    `raw_input`: the graph starts with the window, mean and scale of `facts`. Metadata is left to the
    caller. Raises RunError for a layer or setting it cannot translate exactly.
    """
    import onnx  # noqa: PLC0415 - optional at import: only export and ONNX weights need onnx
    from onnx import TensorProto, helper  # noqa: PLC0415 - optional at import: only export and ONNX weights need onnx

    g = _Graph()
    c = facts.input_channels
    dims = ["batch", c, "height", "width"]
    g.fresh(INPUT)
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, dims)]
    size = None  # [H, W] of the input when the graph pads it
    for layer in net_param.layer:
        if layer.type == "Input":
            x = _preprocessing(g, facts, INPUT) if raw_input else INPUT
            if facts.input_multiple > 1:
                x, size = pad_to_multiple(g, x, facts.input_multiple)
            g.tensor[layer.top[0]] = x
        else:
            _add_layer(g, layer, params)
    if "score" not in g.tensor:
        raise RunError("the deploy net has no `score` blob; rewrite it with `fcnseg make-proto`")
    score = g.tensor["score"]
    if size is not None:  # the padded margin off again: the scores have the input's size
        score = g.node("Slice", [score, g.const("score.starts", np.zeros(2, np.int64)), size,
                                 g.const("score.axes", np.array([2, 3], np.int64))], "score.cropped")
    k = facts.num_classes
    g.fresh(SCORES), g.fresh(PROBABILITIES)
    g.nodes.append(helper.make_node("Identity", [score], [SCORES], name=SCORES))
    g.nodes.append(helper.make_node("Softmax", [SCORES], [PROBABILITIES], name=PROBABILITIES, axis=1))
    out_dims = ["batch", k, "height", "width"]
    outputs = [helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, out_dims,
                                             doc_string="class scores (Caffe's `score` blob), before softmax"),
               helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, out_dims,
                                             doc_string="softmax of `scores` over the class axis")]
    takes = "original pixel values" if raw_input else "the windowed 0-255 image (images.apply_window)"
    inputs[0].doc_string = f"{takes}; any H, W >= {facts.input_multiple}" + (
        f" (mirrored up to a multiple of {facts.input_multiple} inside the graph)" if facts.input_multiple > 1 else "")
    graph = helper.make_graph(g.nodes, net_param.name or "fcn", inputs, outputs, g.inits,
                              doc_string=f"fcnseg {facts.arch}, {facts.stages} stages, pad {facts.pad}")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="fcnseg")
    onnx.checker.check_model(model)
    return model


def export_onnx(run_dir: str | Path, out: str | Path, weights: Optional[str | Path] = None,
                with_preprocessing: bool = False) -> ExportResult:
    """Write the run's net with its weights (`weights`, else best/final/newest snapshot) to `out`.

    The facts (classes, window, mean, scale ...) come from the run's inference.yaml and go into the
    file's metadata. Raises RunError/WeightsError for a bad run or weights (before anything is
    written), DataError for an `out` that is a folder. The file is written atomically.
    """


    start = time.perf_counter()
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out}: is a folder; give a file name for -o, e.g. {out / 'model.onnx'}")
    run_dir, _ = runs.load_run(run_dir)
    facts = runs.read_inference(run_dir)
    net, weights_path = runs.load_deploy_net(run_dir, weights)
    net_param = text_format.Parse((run_dir / DEPLOY_FILE).read_text(), caffe_pb2().NetParameter())
    params = {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}
    model = onnx_model(net_param, params, facts, with_preprocessing)
    for key, value in metadata(facts, with_preprocessing, run_dir, weights_path).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    data = model.SerializeToString()
    out.parent.mkdir(parents=True, exist_ok=True)
    diskspace.require(out.parent, len(data), f"the ONNX model {out.name}", "free some space, or choose another -o")
    write_bytes_atomic(out, data)
    integrity.record(out, hashlib.sha256(data).hexdigest())
    return ExportResult(out, weights_path, with_preprocessing, facts.input_channels, len(model.graph.node),
                        len(data), time.perf_counter() - start, facts.reader, facts.input_multiple)
