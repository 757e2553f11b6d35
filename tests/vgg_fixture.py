"""A VGG16-shaped caffemodel built for tests: real layer names and shapes, random values.

No registry ships the ImageNet VGG16 weights, so tests write their own. `Vgg16Spec` chooses widths (the
real 64 ... 512, or narrower for speed), fc size, file format (V1 `layers` with legacy
num/channels/height/width blobs, as in VGG_ILSVRC_16_layers.caffemodel, or new `layer` with shapes) and
whether fc6/fc7 are already convolutions. `layer_arrays(spec, name)` regenerates a layer's (weights, bias)
from the seed, so a test can check a 500 MB model without holding it. Files are written with caffe_pb2
messages, one layer at a time (a NetParameter's serialisation is the concatenation of its layers').
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fcnseg.caffe_env import caffe_pb2
from fcnseg.caffemodel import field_prefix
from fcnseg.vgg16 import FC_CHANNELS, STAGE_CONVS
from fcnseg.vgg16 import STAGE_CHANNELS as VGG16_WIDTHS
NARROW_WIDTHS = tuple(w // 16 for w in VGG16_WIDTHS)


@dataclass(frozen=True)
class Vgg16Spec:
    widths: tuple[int, ...] = VGG16_WIDTHS
    fc: int = FC_CHANNELS
    classes: int = 1000
    v1: bool = True  # V1 `layers` + legacy blob dims (the ImageNet release) vs new `layer` + shapes
    fcn_shaped: bool = False  # fc6/fc7 already Convolution, fc8 replaced by score_fr (21 classes)
    seed: int = 0

    def param_layers(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(name, type, weight shape) of every layer with weights, in order."""
        out, channels = [], 3
        for stage, (n, width) in enumerate(zip(STAGE_CONVS, self.widths), 1):
            for i in range(1, n + 1):
                out.append((f"conv{stage}_{i}", "Convolution", (width, channels, 3, 3)))
                channels = width
        if self.fcn_shaped:
            return out + [("fc6", "Convolution", (self.fc, channels, 7, 7)),
                          ("fc7", "Convolution", (self.fc, self.fc, 1, 1)),
                          ("score_fr", "Convolution", (21, self.fc, 1, 1))]
        return out + [("fc6", "InnerProduct", (self.fc, channels * 49)),
                      ("fc7", "InnerProduct", (self.fc, self.fc)),
                      ("fc8", "InnerProduct", (self.classes, self.fc))]


def layer_arrays(spec: Vgg16Spec, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The (weights, bias) the fixture writes for layer `name`: He-scaled normals, biases around 0.1."""
    layers = spec.param_layers()
    index = [n for n, _, _ in layers].index(name)
    shape = layers[index][2]
    rng = np.random.default_rng([spec.seed, index])
    weight = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / np.prod(shape[1:])))
    bias = rng.standard_normal(shape[0], dtype=np.float32) * np.float32(0.1)
    return weight, bias


def _blob(pb, values: np.ndarray, legacy_dims):
    blob = pb.BlobProto()
    if legacy_dims is None:
        blob.shape.dim.extend(values.shape)
    else:
        blob.num, blob.channels, blob.height, blob.width = legacy_dims
    # BlobProto.data is field 5, packed: merging its wire bytes is far faster than repeated.extend.
    packed = bytearray(field_prefix(5, values.nbytes))
    packed += memoryview(np.ascontiguousarray(values, dtype="<f4")).cast("B")
    blob.MergeFromString(packed)
    return blob


def _v1_layer(pb, name, type_name, bottom, top, arrays=None):
    T = pb.V1LayerParameter
    layer = T(name=name, type=getattr(T, type_name), bottom=[bottom], top=[top])
    if arrays is not None:
        weight, bias = arrays
        layer.blobs_lr.extend([1, 2])
        layer.weight_decay.extend([1, 0])
        if type_name == "CONVOLUTION":
            layer.convolution_param.num_output = weight.shape[0]
            layer.convolution_param.kernel_size.append(weight.shape[2])
            layer.convolution_param.pad.append(1)
            layer.blobs.append(_blob(pb, weight, weight.shape))
        else:
            layer.inner_product_param.num_output = weight.shape[0]
            layer.blobs.append(_blob(pb, weight, (1, 1) + weight.shape))
        layer.blobs.append(_blob(pb, bias, (1, 1, 1, bias.size)))
    return layer


def _new_layer(pb, name, type_name, bottom, top, arrays=None):
    layer = pb.LayerParameter(name=name, type=type_name, bottom=[bottom], top=[top])
    if arrays is not None:
        weight, bias = arrays
        if type_name == "Convolution":
            layer.convolution_param.num_output = weight.shape[0]
            layer.convolution_param.kernel_size.append(weight.shape[2])
            if weight.shape[2] == 3:
                layer.convolution_param.pad.append(1)
        else:
            layer.inner_product_param.num_output = weight.shape[0]
        layer.blobs.extend([_blob(pb, weight, None), _blob(pb, bias, None)])
    return layer


def write_vgg16_caffemodel(path: Path, spec: Vgg16Spec = Vgg16Spec()) -> Path:
    """Write the VGG16-shaped 3-channel caffemodel of `spec` to `path` (ReLU/pool/dropout/prob included)."""
    pb = caffe_pb2()
    v1_types = {"Convolution": "CONVOLUTION", "InnerProduct": "INNER_PRODUCT", "ReLU": "RELU",
                "Pooling": "POOLING", "Dropout": "DROPOUT", "Softmax": "SOFTMAX"}

    def layer(name, type_name, bottom, top, arrays=None):
        if spec.v1:
            return _v1_layer(pb, name, v1_types[type_name], bottom, top, arrays)
        return _new_layer(pb, name, type_name, bottom, top, arrays)

    with open(path, "wb") as out:
        out.write(pb.NetParameter(name="VGG_ILSVRC_16_layers").SerializeToString())

        def emit(*args):
            net = pb.NetParameter()
            (net.layers if spec.v1 else net.layer).append(layer(*args))
            out.write(net.SerializeToString())

        bottom = "data"
        for name, type_name, _ in spec.param_layers():
            emit(name, type_name, bottom, name, layer_arrays(spec, name))
            bottom = name
            if name.startswith(("fc8", "score")):
                continue
            relu = "relu" + name[4:] if name.startswith("conv") else "relu" + name[2:]
            emit(relu, "ReLU", name, name)
            if name.startswith("fc"):
                emit("drop" + name[2:], "Dropout", name, name)
            if name.startswith("conv") and int(name[-1]) == STAGE_CONVS[int(name[4]) - 1]:
                bottom = f"pool{name[4]}"
                emit(bottom, "Pooling", name, bottom)
        if not spec.fcn_shaped:
            emit("prob", "Softmax", "fc8", "prob")
    return path
