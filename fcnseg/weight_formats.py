"""Pretrained weight files of other frameworks, read into one neutral form, and matched to VGG16.

`read_weights(path)` tells the format from the file's content (never its name) and returns a
`SourceModel`: its parameter layers in network order, each with weights already in Caffe's layout
(convolutions O x I x kH x kW, dense layers O x I), the order in which a dense layer after the
convolutions reads the last feature map (`flatten`: "chw" for Caffe/PyTorch, "hwc" for Keras/TensorFlow),
and the input convention the file's framework implies (see `fcnseg.conventions`) with the reason.

Formats: Caffe `.caffemodel`; ONNX (Conv weights followed back through Identity/Transpose/Cast nodes, dense
layers as Gemm or MatMul + Add); Keras HDF5 (`model.save` full models and `save_weights` files, with or
without the top); PyTorch `.safetensors`; PyTorch `.pth`, read only by `torch.load(weights_only=True)`
when torch is installed (fcnseg never unpickles anything itself).

`match_vgg16(model)` finds VGG16's 13 convolutions by order and shape (not by name: every exporter names
them differently) and fc6/fc7 by shape, and refuses a file with the first mismatch named.

Every problem with a file raises WeightsError naming it. Needs numpy; h5py and onnx only for their formats.
"""
from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import vgg16
from .caffemodel import load_blob, read_caffemodel_index, shape_text
from .errors import WeightsError

FC6_KERNEL = vgg16.FC_KERNELS["fc6"]  # VGG16's fc6 reads pool5 as 512 x 7 x 7

PTH_HINT = ("convert it to safetensors where torch is installed: python -c \"import torch; "
            "from safetensors.torch import save_file; save_file(torch.load('{path}', weights_only=True), "
            "'{stem}.safetensors')\" and pass {stem}.safetensors")


@dataclass
class SourceLayer:
    """One parameter layer of a source file: weights in Caffe's layout, read on demand."""

    name: str
    kind: str  # "conv" (O x I x kH x kW) or "dense" (O x I)
    shape: tuple[int, ...]
    read: Callable[[], tuple[np.ndarray, Optional[np.ndarray]]]  # (float32 weights, float32 bias or None)
    origin: str = ""  # how the file stores it, e.g. "HWIO kernel" or "MatMul (in x out)"


@dataclass
class SourceModel:
    """What `read_weights` found in a file."""

    path: Path
    format: str
    layers: list[SourceLayer]
    flatten: str  # "chw" or "hwc": how a dense layer after the convolutions reads their feature map
    convention: Optional[str]  # "caffe", "torchvision", "keras", or None when the file does not tell
    convention_reason: str
    notes: list[str] = field(default_factory=list)
    close: Callable[[], None] = lambda: None


# ---------------------------------------------------------------------------------------------------
# Detecting the format


def detect_format(path: str | Path) -> str:
    """'caffemodel', 'onnx', 'keras-hdf5', 'safetensors' or 'pth', from the first bytes. Raises WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras-hdf5"
    if head.startswith(b"PK\x03\x04"):
        return "pth" if _is_torch_zip(path) else "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pth"  # a pickle: the legacy torch.save format
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:1] == b"\x08":
        return "onnx"  # ModelProto starts with ir_version (field 1, varint); a NetParameter never does
    return "caffemodel"


def _is_torch_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_weights(path: str | Path) -> SourceModel:
    """Read the weight file at `path` into a SourceModel (format from content). Raises WeightsError."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "zip":
        raise WeightsError(f"{path}: a zip archive that is not a PyTorch checkpoint (no data.pkl); for a Keras "
                           "3 .keras file, export the model to ONNX or save it as HDF5 (model.save('m.h5'))")
    reader = {"caffemodel": _read_caffemodel, "onnx": _read_onnx, "keras-hdf5": _read_keras_hdf5,
              "safetensors": _read_safetensors, "pth": _read_pth}[kind]
    return reader(path)


# ---------------------------------------------------------------------------------------------------
# Caffe


def _read_caffemodel(path: Path) -> SourceModel:
    index = read_caffemodel_index(path)
    layers = []
    for rec in index.values():
        if len(rec.blobs) not in (1, 2):
            continue
        shape = rec.blob_shape(0)
        kind = "conv" if len(shape) == 4 else "dense" if len(shape) == 2 else None
        if kind is None:
            continue

        def read(rec=rec):
            with open(path, "rb") as f:
                weight = load_blob(f, rec.blobs[0]).reshape(rec.blob_shape(0))
                bias = load_blob(f, rec.blobs[1]).reshape(-1) if len(rec.blobs) > 1 else None
            return weight, bias
        layers.append(SourceLayer(rec.name, kind, shape, read, rec.type))
    return SourceModel(path, "Caffe caffemodel", layers, "chw", "caffe",
                       "a Caffe model: Caffe's VGG16 takes BGR 0-255 minus the ImageNet mean")


# ---------------------------------------------------------------------------------------------------
# State dicts: safetensors and .pth


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _state_dict_layers(path: Path,
                       tensors: dict[str, tuple[tuple[int, ...], Callable[[], np.ndarray]]]) -> list[SourceLayer]:
    """Layers of a PyTorch state dict {key: (shape, read)}: X.weight (4-D conv or 2-D linear) with X.bias."""
    bn = [k for k in tensors if k.endswith(("running_mean", "running_var"))]
    if bn:
        raise WeightsError(f"{path}: holds batch normalisation ({bn[0]}): a vgg16_bn model, whose layers "
                           "do not map onto plain VGG16; use plain VGG16 weights")
    layers = []
    for key in sorted(tensors, key=_natural_key):
        if not key.endswith("weight"):
            continue
        shape, read_w = tensors[key]
        if len(shape) not in (2, 4):
            continue
        prefix = key[: -len("weight")]
        bias = tensors.get(prefix + "bias")
        if bias is not None and bias[0] != (shape[0],):
            raise WeightsError(f"{path}: {prefix}bias has shape {shape_text(bias[0])} for {shape[0]} outputs; "
                               "the file is damaged or not a VGG")

        def read(read_w=read_w, bias=bias):
            return read_w().astype(np.float32), None if bias is None else bias[1]().astype(np.float32)
        layers.append(SourceLayer(key, "conv" if len(shape) == 4 else "dense", tuple(shape), read,
                                  "Conv2d" if len(shape) == 4 else "Linear"))
    return layers


_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}
TORCH_REASON = ("PyTorch weights: torchvision's and timm's VGG16 (vgg16.tv_in1k) take RGB scaled to [0, 1], "
                "then the ImageNet mean/std")


def _read_safetensors(path: Path) -> SourceModel:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise WeightsError(f"{path}: not a valid safetensors file (header: {exc.__class__.__name__}); "
                           "save it again with safetensors' save_file") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a valid safetensors file (header is not a table)")
    base = 8 + n
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: not a valid safetensors file (entry {key} is malformed)") from None
        if dtype not in _SAFETENSORS_DTYPES:
            if len(shape) in (2, 4) or key.endswith("bias"):
                raise WeightsError(f"{path}: tensor {key} is {dtype}; only F32, F16, BF16 and F64 weights can "
                                   "be converted (dequantise the model first)")
            continue
        itemsize = np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
        if end - begin != math.prod(shape) * itemsize or begin < 0 or base + end > size:
            raise WeightsError(f"{path}: tensor {key} ({shape_text(shape)} {dtype}) lies outside the file or has "
                               "the wrong byte count; the file is truncated or damaged")

        def read(dtype=dtype, shape=shape, begin=begin):
            values = np.fromfile(path, dtype=_SAFETENSORS_DTYPES[dtype], count=math.prod(shape), offset=base + begin)
            if dtype == "BF16":
                values = (values.astype(np.uint32) << 16).view(np.float32)
            return values.astype(np.float32).reshape(shape)
        tensors[key] = (shape, read)
    return SourceModel(path, "PyTorch safetensors", _state_dict_layers(path, tensors), "chw", "torchvision",
                       TORCH_REASON)


def _read_pth(path: Path) -> SourceModel:
    try:
        import torch  # noqa: PLC0415 - optional; the only safe reader of torch's pickles
    except ImportError:
        raise WeightsError(f"{path}: a PyTorch pickle (.pth); fcnseg never unpickles files and torch, whose "
                           "torch.load(weights_only=True) reads them safely, is not installed; "
                           + PTH_HINT.format(path=path, stem=path.with_suffix(""))) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for damaged or unsafe files
        raise WeightsError(f"{path}: torch.load(weights_only=True) refused it ({exc.__class__.__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); pass a plain state dict")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict; save model.state_dict()")
    tensors = {k: (tuple(v.shape), lambda v=v: v.detach().float().numpy())
               for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return SourceModel(path, "PyTorch .pth (read with torch.load(weights_only=True))",
                       _state_dict_layers(path, tensors), "chw", "torchvision", TORCH_REASON)


# ---------------------------------------------------------------------------------------------------
# Keras HDF5


def _attr_strings(node, name: str) -> Optional[list[str]]:
    if name not in node.attrs:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in node.attrs[name]]


def _read_keras_hdf5(path: Path) -> SourceModel:
    import h5py  # noqa: PLC0415 - only Keras .h5 files need h5py
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0][:120]}); the file is "
                           "truncated or damaged") from None
    try:
        return _keras_layers(path, f)
    except WeightsError:
        f.close()
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError) as exc:  # h5py's, damaged file
        f.close()
        why = " ".join(str(exc).split())[:120]  # h5py's messages run over several lines
        raise WeightsError(f"{path}: a damaged Keras HDF5 file ({exc.__class__.__name__}: {why})") from None


def _keras_layers(path: Path, f) -> SourceModel:
    full = "model_weights" in f
    group = f["model_weights"] if full else f
    names = _attr_strings(group, "layer_names")
    if names is None:
        raise WeightsError(f"{path}: an HDF5 file without Keras's layer_names attribute (Keras 3 .weights.h5 "
                           "files and Caffe HDF5 models are not read); save the Keras model in the legacy HDF5 "
                           "format (model.save('m.h5')) or export it to ONNX")
    backend = (f.attrs.get("backend") or group.attrs.get("backend") or b"tensorflow")
    backend = backend.decode() if isinstance(backend, bytes) else str(backend)
    if backend == "theano":
        raise WeightsError(f"{path}: Keras weights for the Theano backend (flipped kernels); use the TensorFlow "
                           "file (vgg16_weights_tf_dim_ordering_tf_kernels*.h5)")
    flatten, notes = "hwc", []
    config = f.attrs.get("model_config")
    if config is not None and b"channels_first" in (config if isinstance(config, bytes) else str(config).encode()):
        flatten = "chw"
        notes.append("the model config says channels_first: a dense layer reads C x H x W")
    layers = []
    for name in names:
        node = group[name]
        weight_names = _attr_strings(node, "weight_names") or []
        if any("moving_mean" in w for w in weight_names):
            raise WeightsError(f"{path}: layer {name} is batch normalisation: not a plain VGG16; use plain "
                               "VGG16 weights")
        arrays = [node[w] for w in weight_names]
        if not arrays or len(arrays[0].shape) not in (2, 4):
            continue
        kernel, bias = arrays[0], arrays[1] if len(arrays) > 1 else None
        if bias is not None and bias.shape != (kernel.shape[-1],):
            raise WeightsError(f"{path}: layer {name} has a {shape_text(kernel.shape)} kernel and a "
                               f"{shape_text(bias.shape)} bias; the file is damaged")

        def read(kernel=kernel, bias=bias):
            k = np.asarray(kernel, dtype=np.float32)
            k = k.transpose(3, 2, 0, 1) if k.ndim == 4 else k.T  # HWIO -> OIHW, (in, out) -> (out, in)
            return np.ascontiguousarray(k), None if bias is None else np.asarray(bias, dtype=np.float32)
        shape = tuple(kernel.shape)
        caffe_shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else (shape[1], shape[0])
        layers.append(SourceLayer(name, "conv" if len(shape) == 4 else "dense", caffe_shape, read,
                                  f"{'HWIO kernel' if len(shape) == 4 else 'Dense kernel (in x out)'} "
                                  f"{shape_text(shape)}"))
    what = "full model" if full else "weights only"
    return SourceModel(path, f"Keras HDF5 ({what})", layers, flatten, "keras",
                       "a Keras file: keras.applications' VGG16 takes BGR 0-255 minus its mean ('caffe' mode)",
                       notes, f.close)


# ---------------------------------------------------------------------------------------------------
# ONNX


class _OnnxGraph:
    """Producers, consumers and constants of an ONNX graph, to follow a weight back to its initialiser."""

    def __init__(self, path: Path, model):
        from onnx import numpy_helper  # noqa: PLC0415 - optional at import: only export and ONNX weights need onnx

        self.path, self.helper = path, numpy_helper
        graph = model.graph
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def attr(self, node, name, default=None):
        from onnx import helper  # noqa: PLC0415 - optional at import: only export and ONNX weights need onnx

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def constant(self, name: str, user: str) -> tuple[tuple[int, ...], Callable[[], np.ndarray], str]:
        """(shape, read, how) of the constant tensor `name`, followed back through Identity/Transpose/Cast."""
        if name in self.inits:
            tensor = self.inits[name]
            return tuple(tensor.dims), lambda: self.helper.to_array(tensor).astype(np.float32), ""
        node = self.producer.get(name)
        if node is None:
            raise WeightsError(f"{self.path}: {user} takes its weights from graph input {name}, not from the file; "
                               "export the model with its weights as initialisers")
        if node.op_type == "Constant":
            value = self.attr(node, "value")
            if value is None:
                raise WeightsError(f"{self.path}: Constant node {node.name} feeding {user} holds no tensor")
            return tuple(value.dims), lambda: self.helper.to_array(value).astype(np.float32), ""
        if node.op_type in ("Identity", "Cast"):
            return self.constant(node.input[0], user)
        if node.op_type == "Transpose":
            shape, read, how = self.constant(node.input[0], user)
            perm = list(self.attr(node, "perm") or reversed(range(len(shape))))
            if sorted(perm) != list(range(len(shape))):
                raise WeightsError(f"{self.path}: Transpose {node.name!r}: perm {perm} for a {len(shape)}-D input")
            return (tuple(shape[p] for p in perm), lambda: np.ascontiguousarray(read().transpose(perm)),
                    f"behind Transpose {perm}" + (f", {how}" if how else ""))
        raise WeightsError(f"{self.path}: the weights of {user} are computed by a {node.op_type} node "
                           f"({node.name}); export the model without quantisation or weight folding")

    def following_add(self, output: str, size: int) -> Optional[str]:
        """The constant input of the Add that alone consumes `output`, when it is a bias of `size` values."""
        users = self.consumers.get(output, [])
        if len(users) != 1 or users[0].op_type != "Add":
            return None
        add = users[0]
        for name in add.input:
            if name == output:
                continue
            try:
                shape = self.constant(name, add.name)[0]
            except WeightsError:
                return None
            if math.prod(shape) == size and max(shape, default=1) == size:
                return name
        return None


def _read_onnx(path: Path) -> SourceModel:
    try:
        import onnx  # noqa: PLC0415 - optional at import: only export and ONNX weights need onnx
    except ImportError:
        raise WeightsError(f"{path}: an ONNX model, and reading ONNX needs the onnx package: "
                           "pip install onnx") from None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, external-data OSErrors, ...
        raise WeightsError(f"{path}: not a valid ONNX model ({exc.__class__.__name__}: "
                           f"{str(exc).splitlines()[0][:120] if str(exc) else 'does not parse'}); the file is "
                           "truncated, damaged, or not ONNX") from None
    if not model.graph.node:
        raise WeightsError(f"{path}: an ONNX model with an empty graph; nothing to convert")
    g = _OnnxGraph(path, model)
    layers: list[SourceLayer] = []
    first_dense = None
    for node in g.nodes:
        if node.op_type == "BatchNormalization" and not any(l.kind == "dense" for l in layers):
            raise WeightsError(f"{path}: node {node.name} is batch normalisation: a vgg16_bn-like model, which "
                               "does not map onto plain VGG16; use plain VGG16 weights")
        if node.op_type == "Conv":
            layers.append(_onnx_conv(g, node))
        elif node.op_type in ("Gemm", "MatMul"):
            layer = _onnx_dense(g, node)
            if layer is not None:
                first_dense = first_dense or node
                layers.append(layer)
    flatten = _onnx_flatten(g, first_dense) if first_dense is not None else "chw"
    convention, reason = _onnx_convention(model, layers)
    notes = [f"exported by {model.producer_name or 'an unknown tool'} {model.producer_version}".rstrip()]
    if first_dense is not None:
        order = "H x W x C" if flatten == "hwc" else "C x H x W"
        why = "a Transpose to NHWC precedes the flatten" if flatten == "hwc" else "no Transpose before the flatten"
        notes.append(f"the first dense layer reads the feature map as {order} ({why})")
    return SourceModel(path, "ONNX", layers, flatten, convention, reason, notes)


def _onnx_conv(g: _OnnxGraph, node) -> SourceLayer:
    user = f"Conv {node.name or node.output[0]}"
    if len(node.input) < 2:
        raise WeightsError(f"{g.path}: {user} has no weight input")
    group = g.attr(node, "group", 1)
    shape, read_w, how = g.constant(node.input[1], user)
    if len(shape) != 4:
        raise WeightsError(f"{g.path}: {user} has {len(shape)}-D weights; only 2-D convolutions are supported")
    if group != 1:
        raise WeightsError(f"{g.path}: {user} is a grouped convolution (group {group}); VGG16 has none")
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else g.following_add(node.output[0], shape[0])
    read_b = g.constant(bias_name, user)[1] if bias_name else None

    def read():
        bias = read_b().reshape(-1) if read_b else np.zeros(shape[0], np.float32)
        return read_w(), bias
    name = str(node.name or node.output[0])  # str(): protobuf hands a proto2 string that is not UTF-8 as bytes
    return SourceLayer(name, "conv", shape, read, f"Conv, OIHW {how}".rstrip(", ").strip())


def _onnx_dense(g: _OnnxGraph, node) -> Optional[SourceLayer]:
    user = f"{node.op_type} {node.name or node.output[0]}"
    try:
        shape, read_w, how = g.constant(node.input[1], user)
    except WeightsError:
        return None  # a product of two activations, not a layer
    if len(shape) != 2:
        return None
    if node.op_type == "Gemm":
        trans_a, trans_b = g.attr(node, "transA", 0), g.attr(node, "transB", 0)
        if trans_a:
            return None
        out_in = shape if trans_b else (shape[1], shape[0])
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        origin = f"Gemm, B {'(out x in)' if trans_b else '(in x out)'} {how}"
    else:
        trans_b, out_in = 0, (shape[1], shape[0])
        bias_name = g.following_add(node.output[0], shape[1])
        origin = f"MatMul, B (in x out) {how}"
    read_b = g.constant(bias_name, user)[1] if bias_name else None

    def read():
        w = read_w()
        w = w if trans_b else w.T
        bias = read_b().reshape(-1) if read_b else np.zeros(out_in[0], np.float32)
        return np.ascontiguousarray(w), bias
    return SourceLayer(str(node.name or node.output[0]), "dense", tuple(out_in), read, origin.strip())


def _onnx_flatten(g: _OnnxGraph, dense) -> str:
    """'hwc' when a Transpose to channels-last lies between the last convolution block and `dense`."""
    name, seen = dense.input[0], 0
    while seen < 50:
        node = g.producer.get(name)
        if node is None or node.op_type in ("Conv", "MaxPool", "Relu", "AveragePool"):
            return "chw"
        if node.op_type == "Transpose" and list(g.attr(node, "perm") or []) == [0, 2, 3, 1]:
            return "hwc"
        name, seen = node.input[0], seen + 1
    return "chw"


def _onnx_convention(model, layers) -> tuple[Optional[str], str]:
    producer = model.producer_name.lower()
    names = " ".join(l.name for l in layers)
    graph_input = model.graph.input[0] if model.graph.input else None
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim] if graph_input is not None else []
    if "block1_conv1" in names or producer in ("tf2onnx", "keras2onnx"):
        why = "layer names block1_conv1 ... are Keras's" if "block1_conv1" in names else f"exported by {producer}"
        return "keras", (f"an ONNX export of a Keras model ({why}): keras.applications' VGG16 takes BGR 0-255 "
                         "minus its mean")
    if len(dims) == 4 and dims[3] == 3 and dims[1] != 3:
        return "keras", ("an ONNX export from TensorFlow (channels-last input N x H x W x 3): Keras's VGG16 "
                         "takes BGR 0-255 minus its mean")
    if producer == "pytorch" or "features.0" in names:
        why = "layer names features.N are torchvision's" if "features.0" in names else "exported by pytorch"
        return "torchvision", f"an ONNX export of a PyTorch model ({why}): " + TORCH_REASON.split(": ", 1)[1]
    return None, f"the ONNX file (producer '{model.producer_name}') does not say which framework made it"


# ---------------------------------------------------------------------------------------------------
# Matching VGG16


@dataclass
class Vgg16Match:
    """Which layers of a SourceModel are VGG16's: convs[i] is conv<s>_<j> in vgg16.CONVS order."""

    convs: list[SourceLayer]
    fc6: Optional[SourceLayer]
    fc7: Optional[SourceLayer]
    width_divisor: int  # 1 for VGG16 itself; k for a uniformly narrowed copy (test models)
    top: str  # what happened to fc6/fc7, one line
    unused: list[SourceLayer]


def vgg16_conv_shapes(in_channels: int, divisor: int = 1) -> list[tuple[int, int, int, int]]:
    """VGG16's 13 convolution weight shapes (O, I, 3, 3), widths divided by `divisor`."""
    shapes, channels = [], in_channels
    for n, width in zip(vgg16.STAGE_CONVS, vgg16.STAGE_CHANNELS):
        for _ in range(n):
            shapes.append((width // divisor, channels, vgg16.CONV_KERNEL, vgg16.CONV_KERNEL))
            channels = width // divisor
    return shapes


def match_vgg16(model: SourceModel) -> Vgg16Match:
    """Match `model`'s convolutions to VGG16's by order and shape, and fc6/fc7 by shape.

    The first 13 convolutions must be VGG16's (conv1_1 taking 1 or 3 channels; widths may all be divided
    by one integer, which only test models do). fc6 is the first later layer reading 512 x 7 x 7 (dense
    or 7x7 convolution), fc7 the next one mapping fc6's outputs to as many; without both, fc6/fc7 are
    left to the net's fillers and `top` says why. Raises WeightsError naming the first mismatch.
    """
    convs = [l for l in model.layers if l.kind == "conv"]
    if not convs:
        raise WeightsError(f"{model.path}: no convolution weights found ({model.format}); is this a VGG16 model?")
    first = convs[0].shape
    out1, in1 = first[0], first[1]
    divisor = vgg16.STAGE_CHANNELS[0] // out1 if out1 and vgg16.STAGE_CHANNELS[0] % out1 == 0 else 0
    expected = vgg16_conv_shapes(in1 if in1 in (1, 3) else 3, divisor or 1)
    for i, (name, want) in enumerate(zip(vgg16.CONVS, expected)):
        if i >= len(convs):
            raise WeightsError(f"{model.path}: only {len(convs)} convolutions, VGG16 has 13 ({name}, "
                               f"{shape_text(want)}, is missing); this is not VGG16")
        got = convs[i].shape
        if got != want or not divisor:
            raise WeightsError(f"{model.path}: convolution #{i + 1} ({convs[i].name}) is {shape_text(got)} but "
                               f"VGG16's {name} is {shape_text(want)} (O x I x kH x kW); this is not VGG16"
                               + (" (or not at full width)" if i == 0 and not divisor else ""))
    trunk = convs[:13]
    rest = [l for l in model.layers if not any(l is t for t in trunk)]
    c5 = expected[-1][0]
    fc6 = fc7 = None
    for layer in rest:
        if fc6 is None and _reads_pool5(layer, c5):
            fc6 = layer
        elif fc6 is not None and _fc7_of(layer, fc6.shape[0]):
            fc7 = layer
            break
    if fc6 is not None and fc7 is not None:
        top = f"fc6 <- {fc6.name}, fc7 <- {fc7.name}"
    else:
        dense = [l for l in rest if l.kind == "dense" or l.shape[2:] != (3, 3)]
        if not dense:
            top = "no fc6/fc7 in the file (a 'notop' file): fc6/fc7 keep the net's fillers"
        else:
            found = ", ".join(f"{l.name} {shape_text(l.shape)}" for l in dense[:4])
            top = (f"the classifier is not VGG16's fc6 (reads {c5}x{FC6_KERNEL}x{FC6_KERNEL}) + fc7 (square) "
                   f"({found}{', ...' if len(dense) > 4 else ''}): fc6/fc7 keep the net's fillers")
        fc6 = fc7 = None
    used = trunk + [l for l in (fc6, fc7) if l is not None]
    unused = [l for l in model.layers if not any(l is u for u in used)]
    return Vgg16Match(trunk, fc6, fc7, divisor, top, unused)


def _reads_pool5(layer: SourceLayer, channels: int) -> bool:
    if layer.kind == "dense":
        return layer.shape[1] == channels * FC6_KERNEL * FC6_KERNEL
    return layer.shape[1:] == (channels, FC6_KERNEL, FC6_KERNEL)


def _fc7_of(layer: SourceLayer, width: int) -> bool:
    return layer.shape[:2] == (width, width) and (layer.kind == "dense" or layer.shape[2:] == (1, 1))


def fc6_as_convolution(weight: np.ndarray, channels: int, flatten: str) -> np.ndarray:
    """fc6's weights as a Caffe Convolution O x C x 7 x 7, from a dense O x (C*49) read in `flatten` order
    ('chw': Caffe/PyTorch, 'hwc': Keras/TensorFlow) or from a 7x7 convolution (unchanged)."""
    if weight.ndim == 4:
        return weight
    out = weight.shape[0]
    if flatten == "hwc":
        return np.ascontiguousarray(weight.reshape(out, FC6_KERNEL, FC6_KERNEL, channels).transpose(0, 3, 1, 2))
    return weight.reshape(out, channels, FC6_KERNEL, FC6_KERNEL)
