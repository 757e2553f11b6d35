"""VGG16-shaped weight files of other frameworks, built for tests from tests/vgg_fixture.py's arrays.

`layer_arrays(spec, name)` gives every layer in Caffe's layout (convolutions O x I x 3 x 3, fc6 an
InnerProduct O x (C*7*7) read C x H x W). The writers here store those same numbers the way each framework
does: torchvision / timm state dicts (safetensors), Keras 2 HDF5 (HWIO kernels, Dense kernels in x out,
flatten H x W x C; full model or weights only, with or without the top) and runnable ONNX graphs in a
Keras/tf2onnx style (NHWC input, Transposes, MatMul + Add) or a PyTorch style (NCHW, Gemm). Also a Caffe
prototxt of the VGG16 trunk at any width with each convolution's output kept before its ReLU, and the
mask of the pixels whose receptive field misses the zero padding.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from vgg_fixture import STAGE_CONVS, Vgg16Spec, layer_arrays

TRUNK = [f"conv{s}_{i}" for s, n in enumerate(STAGE_CONVS, 1) for i in range(1, n + 1)]
# torchvision's vgg16.features indices of the 13 convolutions (ReLUs and pools in between).
TORCHVISION_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
KERAS_CONVS = [f"block{s}_conv{i}" for s, n in enumerate(STAGE_CONVS, 1) for i in range(1, n + 1)]


def fc6_chw(spec: Vgg16Spec) -> np.ndarray:
    """fc6 as the Caffe convolution O x C x 7 x 7 that every format must end up with."""
    w, _ = layer_arrays(spec, "fc6")
    return w.reshape(spec.fc, spec.widths[-1], 7, 7)


def fc6_hwc(spec: Vgg16Spec) -> np.ndarray:
    """fc6 as Keras stores it: a Dense kernel (7*7*C) x O reading the feature map H x W x C."""
    return fc6_chw(spec).transpose(2, 3, 1, 0).reshape(-1, spec.fc)


# ---- PyTorch state dicts --------------------------------------------------------------------------------

def torchvision_state(spec: Vgg16Spec, top: bool = True) -> dict[str, np.ndarray]:
    out = {}
    for index, name in zip(TORCHVISION_FEATURES, TRUNK):
        out[f"features.{index}.weight"], out[f"features.{index}.bias"] = layer_arrays(spec, name)
    if top:
        for index, name in zip((0, 3, 6), ("fc6", "fc7", "fc8")):
            out[f"classifier.{index}.weight"], out[f"classifier.{index}.bias"] = layer_arrays(spec, name)
    return out


def timm_state(spec: Vgg16Spec) -> dict[str, np.ndarray]:
    """timm's vgg16.tv_in1k layout: pre_logits.fc1/fc2 are 7x7 and 1x1 convolutions, head.fc a Linear."""
    out = {k: v for k, v in torchvision_state(spec, top=False).items()}
    out["pre_logits.fc1.weight"], out["pre_logits.fc1.bias"] = fc6_chw(spec), layer_arrays(spec, "fc6")[1]
    w7, b7 = layer_arrays(spec, "fc7")
    out["pre_logits.fc2.weight"], out["pre_logits.fc2.bias"] = w7.reshape(spec.fc, spec.fc, 1, 1), b7
    out["head.fc.weight"], out["head.fc.bias"] = layer_arrays(spec, "fc8")
    return out


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype=np.float32) -> Path:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=dtype) for k, v in tensors.items()}, str(path))
    return path


def write_torch_zip(path: Path) -> Path:
    """A file laid out like torch.save's zip (archive/data.pkl + storages); its pickle is never read."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", bytes(16))
        archive.writestr("archive/version", b"3\n")
    return path


# ---- Keras HDF5 ---------------------------------------------------------------------------------------------

def keras_layers(spec: Vgg16Spec, top: bool = True) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """[(layer name, [(weight name, array in Keras's layout)])] in model order, layers without weights too."""
    out = [("input_1", [])]
    for (keras, caffe), i in zip(zip(KERAS_CONVS, TRUNK), range(13)):
        w, b = layer_arrays(spec, caffe)
        out.append((keras, [("kernel:0", w.transpose(2, 3, 1, 0)), ("bias:0", b)]))
        if caffe.endswith(f"_{STAGE_CONVS[int(caffe[4]) - 1]}"):
            out.append((f"block{caffe[4]}_pool", []))
    if top:
        out.append(("flatten", []))
        out.append(("fc1", [("kernel:0", fc6_hwc(spec)), ("bias:0", layer_arrays(spec, "fc6")[1])]))
        for keras, caffe in (("fc2", "fc7"), ("predictions", "fc8")):
            w, b = layer_arrays(spec, caffe)
            out.append((keras, [("kernel:0", w.T), ("bias:0", b)]))
    return out


def write_keras_h5(path: Path, spec: Vgg16Spec, full: bool = True, top: bool = True) -> Path:
    """Keras 2's HDF5 layout: model.save (full: model_config + model_weights) or save_weights."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.13.1"
        group = f
        if full:
            f.attrs["model_config"] = json.dumps({"class_name": "Functional", "config": {"name": "vgg16"}}).encode()
            group = f.create_group("model_weights")
            group.attrs["backend"] = b"tensorflow"
        layers = keras_layers(spec, top)
        group.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        for name, weights in layers:
            node = group.create_group(name)
            node.attrs["weight_names"] = np.array([f"{name}/{w}".encode() for w, _ in weights], dtype="S")
            for wname, array in weights:
                node.create_dataset(f"{name}/{wname}", data=np.asarray(array, np.float32))
    return path


# ---- ONNX ------------------------------------------------------------------------------------------------

def write_onnx(path: Path, spec: Vgg16Spec, style: str = "keras", top: bool = True, size: int = 224) -> Path:
    """A runnable VGG16 graph. style 'keras': NHWC input and a Transpose, half the kernels stored HWIO behind
    Transpose nodes, some biases as a following Add, a Transpose to NHWC before the flatten, MatMul + Add.
    style 'torch': NCHW input, OIHW initialisers named features.N.weight, Flatten, Gemm(transB=1).
    The output of convolution i (before its ReLU) is tensor f'conv_out_{i}'; of fc6/fc7 'fc6_out'/'fc7_out'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    keras = style == "keras"
    if keras:
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, size, size, 3])
        nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2], name="in_transpose"))
        cur = "nchw"
    else:
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
        cur = "input"
    for i, name in enumerate(TRUNK):
        w, b = layer_arrays(spec, name)
        wname = KERAS_CONVS[i] if keras else f"features.{TORCHVISION_FEATURES[i]}"
        if keras and i % 2:
            nodes.append(helper.make_node("Transpose", [init(f"{wname}/kernel_hwio", w.transpose(2, 3, 1, 0))],
                                          [f"{wname}/kernel_oihw"], perm=[3, 2, 0, 1], name=f"{wname}/transpose"))
            weight = f"{wname}/kernel_oihw"
        else:
            weight = init(f"{wname}.weight", w)
        out = f"conv_out_{i}"
        if keras and i % 3 == 1:
            nodes.append(helper.make_node("Conv", [cur, weight], [f"{out}_nobias"], kernel_shape=[3, 3],
                                          pads=[1, 1, 1, 1], name=f"{wname}/Conv"))
            nodes.append(helper.make_node("Add", [f"{out}_nobias", init(f"{wname}/bias", b.reshape(1, -1, 1, 1))],
                                          [out], name=f"{wname}/BiasAdd"))
        else:
            nodes.append(helper.make_node("Conv", [cur, weight, init(f"{wname}.bias", b)], [out],
                                          kernel_shape=[3, 3], pads=[1, 1, 1, 1], name=f"{wname}/Conv"))
        nodes.append(helper.make_node("Relu", [out], [f"relu_{i}"]))
        cur = f"relu_{i}"
        if name.endswith(f"_{STAGE_CONVS[int(name[4]) - 1]}"):
            nodes.append(helper.make_node("MaxPool", [cur], [f"pool{name[4]}"], kernel_shape=[2, 2], strides=[2, 2]))
            cur = f"pool{name[4]}"
    outputs = []
    if top:
        if keras:
            nodes.append(helper.make_node("Transpose", [cur], ["nhwc"], perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Reshape", ["nhwc", init("flat_shape", np.array([1, -1], np.int64))],
                                          ["flat"]))
        else:
            nodes.append(helper.make_node("Flatten", [cur], ["flat"], axis=1))
        cur = "flat"
        for caffe, label in (("fc6", "fc1"), ("fc7", "fc2"), ("fc8", "predictions")):
            w, b = layer_arrays(spec, caffe)
            w = fc6_hwc(spec) if (caffe == "fc6" and keras) else w.T if keras else w
            out = f"{caffe}_out"
            if keras:
                nodes.append(helper.make_node("MatMul", [cur, init(f"{label}/kernel", w)], [f"{out}_mm"]))
                nodes.append(helper.make_node("Add", [f"{out}_mm", init(f"{label}/bias", b)], [out]))
            else:
                index = {"fc6": 0, "fc7": 3, "fc8": 6}[caffe]
                nodes.append(helper.make_node("Gemm", [cur, init(f"classifier.{index}.weight", w),
                                                       init(f"classifier.{index}.bias", b)], [out], transB=1))
            if caffe != "fc8":
                nodes.append(helper.make_node("Relu", [out], [f"{out}_relu"]))
                cur = f"{out}_relu"
        outputs.append(helper.make_tensor_value_info("fc8_out", TensorProto.FLOAT, [1, spec.classes]))
    else:
        outputs.append(helper.make_tensor_value_info(cur, TensorProto.FLOAT, [1, spec.widths[-1], size // 32,
                                                                                 size // 32]))
    graph = helper.make_graph(nodes, "vgg16", [x], outputs, inits)
    model = helper.make_model(graph, producer_name="tf2onnx" if keras else "pytorch",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def onnx_outputs(path: Path, image_nchw: np.ndarray, names: list[str], nhwc: bool) -> dict[str, np.ndarray]:
    """Run the ORIGINAL graph at `path` with onnxruntime, adding `names` as outputs; NCHW arrays back."""
    import onnx
    import onnxruntime

    model = onnx.load(str(path))
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = image_nchw.transpose(0, 2, 3, 1) if nhwc else image_nchw
    values = session.run(names, {session.get_inputs()[0].name: np.ascontiguousarray(feed, dtype=np.float32)})
    return dict(zip(names, values))


# ---- Caffe side ----------------------------------------------------------------------------------------------

def trunk_prototxt(widths, fc: int | None, height: int, width: int) -> str:
    """VGG16 conv trunk (+ fc6/fc7 as convolutions when `fc`) on a 1-channel Input; every convolution's top
    keeps its pre-ReLU values (the ReLU writes relu<name>)."""
    lines = [f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1 '
             f'dim: {height} dim: {width} }} }} }}']
    bottom = "data"

    def conv(name, out, kernel, pad):
        nonlocal bottom
        lines.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                     f'convolution_param {{ num_output: {out} kernel_size: {kernel} pad: {pad} }} }}')
        lines.append(f'layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "relu_{name}" }}')
        bottom = f"relu_{name}"

    for name in TRUNK:
        stage = int(name[4])
        conv(name, widths[stage - 1], 3, 1)
        if name.endswith(f"_{STAGE_CONVS[stage - 1]}"):
            lines.append(f'layer {{ name: "pool{stage}" type: "Pooling" bottom: "{bottom}" top: "pool{stage}" '
                         'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')
            bottom = f"pool{stage}"
    if fc:
        conv("fc6", fc, 7, 0)
        conv("fc7", fc, 1, 0)
    return "\n".join(lines) + "\n"


def interior_mask(height: int, width: int, upto: str) -> np.ndarray:
    """True where the blob `upto` (a trunk conv) depends on no zero-padded pixel of any convolution."""
    bad = np.zeros((height, width), bool)
    for name in TRUNK:
        grown = np.ones((bad.shape[0] + 2, bad.shape[1] + 2), bool)
        grown[1:-1, 1:-1] = bad
        bad = np.zeros_like(bad)
        for dy in range(3):
            for dx in range(3):
                bad |= grown[dy:dy + bad.shape[0], dx:dx + bad.shape[1]]
        if name == upto:
            return ~bad
        if name.endswith(f"_{STAGE_CONVS[int(name[4]) - 1]}"):
            bad = bad.reshape(bad.shape[0] // 2, 2, bad.shape[1] // 2, 2).any(axis=(1, 3))
    raise ValueError(upto)
