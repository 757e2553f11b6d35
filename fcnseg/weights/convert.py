"""`fcnseg weights convert` and `fcnseg weights inspect`: ImageNet VGG16 converted to one input channel.

`convert_vgg16(src, dst)` turns the ImageNet VGG16 caffemodel (old V1 `layers` or new `layer` format,
fc6/fc7 as InnerProduct or already convolutional) into a one-channel FCN trunk: conv1_1 summed over its
B,G,R inputs with the bias corrected for the mean (fcn-facts.md, "Single-channel conversion"), fc6 and
fc7 reshaped into convolutions, fc8 dropped. The gray mean M the converted trunk expects (input = gray - M,
gray on 0-255) is stored in the output as conv1_1's `transform_param { mean_value: M }`, a field Caffe
never reads on a Convolution layer; `caffemodel.recorded_gray_mean(path)` reads it back.

`convert_weights(src, dst, source_convention)` is `fcnseg weights convert` for every format: Caffe models go
through `convert_vgg16`; ONNX, Keras HDF5, safetensors and .pth files are read by `fcnseg.weight_formats`
(matched to VGG16 by order and shape) and their framework's input convention (`fcnseg.conventions`) is
folded into conv1_1. `inspect_weights(path)` is `fcnseg weights inspect`.
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from google.protobuf import text_format

from .. import diskspace, integrity, vgg16  # integrity: inspect checks, write_caffemodel records
from ..caffe_env import caffe_pb2
from ..caffemodel import (
    V1_TYPES,
    LayerRecord,
    load_blob,
    read_caffemodel_index,
    recorded_gray_mean,
    shape_text,
    write_caffemodel,
)
from ..conventions import CAFFE, CONVENTIONS, VGG16_MEAN_BGR, InputConvention, fold_into_conv1
from ..errors import WeightsError
from ..weight_formats import SourceModel, Vgg16Match, detect_format, fc6_as_convolution, match_vgg16, read_weights


@dataclass(frozen=True)
class DefinitionLayer:
    """A parameter layer of the source net's definition. None means 'whatever the caffemodel holds'."""

    name: str
    type: str
    num_output: Optional[int] = None
    kernel: Optional[int] = None


def vgg16_definition() -> list[DefinitionLayer]:
    """The built-in VGG16 parameter layers: conv1_1 ... conv5_3 (3x3), fc6, fc7, fc8; any channel counts."""
    convs = [DefinitionLayer(name, "Convolution", kernel=vgg16.CONV_KERNEL) for name in vgg16.CONVS]
    return convs + [DefinitionLayer(fc, "InnerProduct") for fc in (*vgg16.FC_LAYERS, vgg16.CLASSIFIER)]


def definition_from_prototxt(path: str | Path) -> list[DefinitionLayer]:
    """The Convolution/InnerProduct layers of a deploy prototxt (`layer` or V1 `layers`). Raises WeightsError."""

    pb, path = caffe_pb2(), Path(path)
    net = pb.NetParameter()
    try:
        text_format.Merge(path.read_text(), net)
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path}: cannot read the prototxt ({exc.__class__.__name__}); check --prototxt") from None
    except text_format.ParseError as exc:
        raise WeightsError(f"{path}: not a valid Caffe prototxt ({exc}); check --prototxt") from None
    layers = [(l.name, l.type, l) for l in net.layer] + \
        [(l.name, V1_TYPES.get(pb.V1LayerParameter.LayerType.Name(l.type), ""), l) for l in net.layers]
    out = []
    for name, type_name, layer in layers:
        if type_name == "Convolution":
            p = layer.convolution_param
            kernel = p.kernel_size[0] if len(p.kernel_size) else (p.kernel_h or None)
            out.append(DefinitionLayer(name, type_name, p.num_output or None, kernel))
        elif type_name == "InnerProduct":
            out.append(DefinitionLayer(name, type_name, layer.inner_product_param.num_output or None))
    if not out:
        raise WeightsError(f"{path}: no Convolution or InnerProduct layers; pass the model's deploy prototxt")
    return out


@dataclass
class _Step:
    record: LayerRecord
    out_shape: tuple[int, ...]
    transform: str  # "gray", "copy" or "reshape"
    text: str


def _plan_conversion(src: Path, index: dict[str, LayerRecord], definition: list[DefinitionLayer],
                     where: str) -> tuple[list[_Step], list[str]]:
    """Check the source against the definition before anything is written. Returns (steps, dropped)."""
    trunk = [d for d in definition if vgg16.TRUNK_CONV.match(d.name) or d.name in vgg16.FC_LAYERS]
    if not trunk or trunk[0].name != "conv1_1":
        raise WeightsError(f"{where}: the definition does not start with conv1_1; pass a VGG16 deploy prototxt")
    steps, prev_out = [], None
    for d in trunk:
        rec = index.get(d.name)
        if rec is None or not rec.blobs:
            raise WeightsError(f"{src}: no weights for layer {d.name}, which {where} lists; "
                               "is this the ImageNet VGG16 caffemodel?")
        if len(rec.blobs) != 2:
            raise WeightsError(f"{src}: layer {d.name} has {len(rec.blobs)} blobs, expected weights and bias")
        w_shape, b_shape = rec.blob_shape(0), rec.blob_shape(1)
        out = w_shape[0]
        if b_shape != (out,):
            raise WeightsError(f"{src}: layer {d.name} has a bias of shape {shape_text(b_shape)} for "
                               f"{out} outputs; the file is not VGG16-shaped")
        if d.num_output is not None and out != d.num_output:
            raise WeightsError(f"{src}: layer {d.name} has {out} outputs but {where} says num_output "
                               f"{d.num_output}; pass the prototxt that belongs to this model")
        if rec.type == "Convolution" and len(w_shape) == 4:
            _, channels, kh, kw = w_shape
            if d.kernel is not None and (kh, kw) != (d.kernel, d.kernel):
                raise WeightsError(f"{src}: layer {d.name} has {kh}x{kw} kernels but {where} says "
                                   f"kernel_size {d.kernel}")
            if d.name == "conv1_1":
                if channels != 3:
                    raise WeightsError(f"{src}: conv1_1 takes {channels} input channel(s) "
                                       f"({shape_text(w_shape)}), not 3 (B,G,R); nothing to convert"
                                       + ("; use this file directly as init.weights" if channels == 1 else ""))
                out_shape = (out, 1, kh, kw)
                steps.append(_Step(rec, out_shape, "gray", f"{shape_text(w_shape)} -> {shape_text(out_shape)}"
                                   " (folded to one gray channel; bias corrected for the input convention)"))
            elif channels != prev_out:
                raise WeightsError(f"{src}: layer {d.name} takes {channels} channels but the layer before "
                                   f"it gives {prev_out}; the file is not VGG16-shaped")
            else:
                steps.append(_Step(rec, w_shape, "copy", f"{shape_text(w_shape)} copied"))
        elif rec.type == "InnerProduct" and len(w_shape) == 2:
            inputs = w_shape[1]
            kernel = math.isqrt(inputs // prev_out) if inputs % prev_out == 0 else 0
            if kernel * kernel * prev_out != inputs or (d.kernel is not None and kernel != d.kernel):
                raise WeightsError(f"{src}: {d.name} is InnerProduct {shape_text(w_shape)}, which does not "
                                   f"read {prev_out} channels x k x k; the file is not VGG16-shaped")
            out_shape = (out, prev_out, kernel, kernel)
            steps.append(_Step(rec, out_shape, "reshape", f"InnerProduct {shape_text(w_shape)} -> "
                                                          f"Convolution {shape_text(out_shape)}"))
        else:
            raise WeightsError(f"{src}: layer {d.name} is {rec.type} with weights {shape_text(w_shape)}; "
                               "expected a Convolution or an InnerProduct")
        prev_out = out
    kept = {d.name for d in trunk}
    dropped = [f"{name}: dropped ({'the ImageNet classifier' if name == 'fc8' else 'not part of the VGG16 trunk'})"
               for name, rec in index.items() if rec.blobs and name not in kept]
    return steps, dropped


def _converted_layer(f, step: _Step, convention: InputConvention, gray_mean: float):
    pb, rec = caffe_pb2(), step.record
    header = pb.LayerParameter(name=rec.name, type="Convolution", bottom=rec.header.bottom, top=rec.header.top)
    if rec.type == "Convolution":
        header.convolution_param.CopyFrom(rec.header.convolution_param)
    else:
        header.convolution_param.num_output = step.out_shape[0]
        header.convolution_param.kernel_size.append(step.out_shape[2])
    weight, bias = load_blob(f, rec.blobs[0]), load_blob(f, rec.blobs[1]).reshape(-1)
    if step.transform == "gray":
        weight, bias = fold_into_conv1(weight, bias, convention, gray_mean)
        header.transform_param.mean_value.append(gray_mean)  # the input this trunk expects: gray - M
    return header, [weight.reshape(step.out_shape), bias]


@dataclass
class Conversion:
    """What a conversion did: per-layer lines, the input convention folded in and why, the gray mean M
    recorded, time and memory."""

    dst: Path
    gray_mean: float
    mean_bgr: tuple[float, float, float]  # the convention's per-channel mean (in conv1_1's channel order)
    lines: list[str]
    seconds: float
    peak_rss_mb: float
    size_bytes: int
    convention: InputConvention = CAFFE
    convention_reason: str = "a Caffe model: Caffe's VGG16 takes BGR 0-255 minus the ImageNet mean"
    source_format: str = "Caffe caffemodel"


def _check_gray_mean(convention: InputConvention, gray_mean: Optional[float]) -> float:
    # Rounded to float32 up front: the value used for the bias is exactly the one recorded in the file.
    value = float(np.float32(convention.default_gray_mean() if gray_mean is None else gray_mean))
    if not math.isfinite(value):
        raise WeightsError(f"--gray-mean {gray_mean}: expected a finite number")
    return value


def _check_paths(src: Path, dst: Path) -> None:
    if dst.resolve() == src.resolve():
        raise WeightsError(f"-o {dst}: the output must not overwrite the source model; choose another path")


def convert_vgg16(src: str | Path, dst: str | Path, prototxt: str | Path | None = None,
                  mean_bgr: Sequence[float] = VGG16_MEAN_BGR, gray_mean: Optional[float] = None,
                  convention: Optional[InputConvention] = None, convention_reason: Optional[str] = None) -> Conversion:
    """Convert a 3-channel (BGR) VGG16 caffemodel to a 1-channel FCN trunk at `dst`.

    conv1_1 is folded to one channel with its bias corrected so that the net fed (gray - M) computes what
    the RGB net computes on the gray image replicated to B,G,R minus `mean_bgr` (or, when `convention` is
    given, preprocessed by that convention instead); M defaults to the convention's gray mean and is
    recorded in the output (see `recorded_gray_mean`). fc6/fc7 become convolutions (same numbers), fc8
    and any other non-trunk layer is dropped. `prototxt` (the source's deploy prototxt) replaces the
    built-in VGG16 definition. Everything is checked before `dst` is written (under a temporary name,
    then renamed). Raises WeightsError.
    """
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    if convention is None:
        mean_bgr = tuple(float(m) for m in mean_bgr)
        if len(mean_bgr) != 3 or not all(math.isfinite(m) for m in mean_bgr):
            raise WeightsError(f"--mean-bgr {mean_bgr}: expected three numbers B,G,R")
        convention = CAFFE.with_mean(mean_bgr)
    gray_mean = _check_gray_mean(convention, gray_mean)
    _check_paths(src, dst)
    definition = definition_from_prototxt(prototxt) if prototxt else vgg16_definition()
    where = str(prototxt) if prototxt else "the built-in VGG16 definition"
    index = read_caffemodel_index(src)
    steps, dropped = _plan_conversion(src, index, definition, where)
    with open(src, "rb") as f:
        layers = (_converted_layer(f, step, convention, gray_mean) for step in steps)
        size = write_caffemodel(dst, f"{src.stem}-1ch", layers)
    lines = [f"{s.record.name}: {s.text}" for s in steps] + dropped
    result = Conversion(dst, gray_mean, convention.mean, lines, time.perf_counter() - started, _peak_rss_mb(),
                        size, convention)
    if convention_reason is not None:
        result.convention_reason = convention_reason
    return result


# ---------------------------------------------------------------------------------------------------
# Converting VGG16 from other frameworks (ONNX, Keras HDF5, PyTorch), detected from the file's content


def choose_convention(model: SourceModel, override: Optional[str] = None,
                      mean_bgr: Optional[Sequence[float]] = None) -> tuple[InputConvention, str]:
    """The input convention to fold into conv1_1 and why: `override` (caffe|torchvision|keras) when given,
    else what the file's framework implies. `mean_bgr` replaces a BGR convention's mean. Raises
    WeightsError when nothing says which convention applies, or for a mean with torchvision's."""
    if override is not None:
        if override not in CONVENTIONS:
            raise WeightsError(f"--source-convention {override}: choose one of {', '.join(CONVENTIONS)}")
        convention = CONVENTIONS[override]
        why = f"--source-convention {override}" + (f" (the file suggests {model.convention}: {model.convention_reason})"
                                                    if model.convention and model.convention != override else "")
    elif model.convention is None:
        raise WeightsError(f"{model.path}: {model.convention_reason}; say how its network was fed with "
                           "--source-convention caffe|torchvision|keras")
    else:
        convention, why = CONVENTIONS[model.convention], model.convention_reason
    if mean_bgr is not None:
        if convention.channels != "BGR":
            raise WeightsError(f"--mean-bgr applies to the caffe and keras conventions (BGR minus a mean), not to "
                               f"{convention.name}'s fixed mean/std; drop --mean-bgr")
        mean_bgr = tuple(float(m) for m in mean_bgr)
        if len(mean_bgr) != 3 or not all(math.isfinite(m) for m in mean_bgr):
            raise WeightsError(f"--mean-bgr {mean_bgr}: expected three numbers B,G,R")
        convention, why = convention.with_mean(mean_bgr), why + "; mean from --mean-bgr"
    return convention, why


def _conv_header(name: str, bottom: str, num_output: int, kernel: int, pad: int):
    pb = caffe_pb2()
    header = pb.LayerParameter(name=name, type="Convolution", bottom=[bottom], top=[name])
    header.convolution_param.num_output = num_output
    header.convolution_param.kernel_size.append(kernel)
    if pad:
        header.convolution_param.pad.append(pad)
    return header


def _foreign_layers(match: Vgg16Match, flatten: str, convention: InputConvention, gray_mean: float):
    """(header, arrays) of conv1_1 ... conv5_3 [, fc6, fc7], read and converted one layer at a time."""
    bottom = "data"
    for name, layer in zip(vgg16.CONVS, match.convs):
        weight, bias = layer.read()
        bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias
        header = _conv_header(name, bottom, weight.shape[0], 3, 1)
        if name == "conv1_1":
            weight, bias = fold_into_conv1(weight, bias, convention, gray_mean)
            header.transform_param.mean_value.append(gray_mean)  # the input this trunk expects: gray - M
        yield header, [weight, bias]
        bottom = f"pool{name[4]}" if vgg16.last_conv_of_stage(name) else name
    if match.fc6 is None:
        return
    channels = match.convs[-1].shape[0]
    for name, layer in zip(vgg16.FC_LAYERS, (match.fc6, match.fc7)):
        kernel = vgg16.FC_KERNELS[name]
        weight, bias = layer.read()
        out = weight.shape[0]
        weight = fc6_as_convolution(weight, channels, flatten) if name == "fc6" else weight.reshape(out, out, 1, 1)
        bias = np.zeros(out, np.float32) if bias is None else bias
        yield _conv_header(name, bottom, out, kernel, 0), [weight, bias]
        bottom = name


def _foreign_lines(model: SourceModel, match: Vgg16Match) -> list[str]:
    lines = []
    for name, layer in zip(vgg16.CONVS, match.convs):
        out = (layer.shape[0], 1) + layer.shape[2:] if name == "conv1_1" else layer.shape
        lines.append(f"{name} <- {layer.name}: {layer.origin + ', ' if layer.origin else ''}"
                     f"{shape_text(layer.shape)} -> {shape_text(out)}"
                     + (" (input convention folded in, one gray channel)" if name == "conv1_1" else ""))
    if match.fc6 is not None:
        c = match.convs[-1].shape[0]
        k = vgg16.FC_KERNELS["fc6"]
        order = f"C x {k} x {k}" if model.flatten == "chw" or match.fc6.kind == "conv" else f"{k} x {k} x C, reordered"
        fc = match.fc6.shape[0]
        lines.append(f"fc6 <- {match.fc6.name}: {match.fc6.origin + ', ' if match.fc6.origin else ''}"
                     f"{shape_text(match.fc6.shape)} ({order}) -> Convolution {shape_text((fc, c, k, k))}")
        lines.append(f"fc7 <- {match.fc7.name}: {match.fc7.origin + ', ' if match.fc7.origin else ''}"
                     f"{shape_text(match.fc7.shape)} -> Convolution {shape_text((fc, fc, 1, 1))}")
    else:
        lines.append(f"fc6, fc7: {match.top}")
    lines += [f"{layer.name}: dropped ({shape_text(layer.shape)}, not part of the VGG16 trunk)"
              for layer in match.unused]
    return lines


def convert_weights(src: str | Path, dst: str | Path, source_convention: Optional[str] = None,
                    mean_bgr: Optional[Sequence[float]] = None, gray_mean: Optional[float] = None,
                    prototxt: str | Path | None = None) -> Conversion:
    """Convert VGG16 weights from a Caffe, ONNX, Keras HDF5, safetensors or .pth file (told apart by content)
    into a 1-channel FCN trunk caffemodel at `dst`.

    The 13 convolutions are matched to VGG16's by order and shape, fc6/fc7 converted when present (with
    the file's flatten order), and the input convention (`source_convention`, else the file's framework's)
    folded into conv1_1 so the net fed (gray - M) equals the source net on the gray image replicated and
    preprocessed its own way, wherever conv1_1's window misses the padding. Caffe models go through
    `convert_vgg16` (which also takes a deploy `prototxt`). Checked before `dst` is written (temporary
    name, then rename). Raises WeightsError.
    """
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    fmt = detect_format(src)
    diskspace.require(dst.parent, diskspace.convert_bytes(src), f"the converted model {dst.name}",
                      "free some space there, or choose another -o")
    if fmt == "caffemodel":
        model = SourceModel(src, "Caffe caffemodel", [], "chw", "caffe",
                            "a Caffe model: Caffe's VGG16 takes BGR 0-255 minus the ImageNet mean")
        convention, why = choose_convention(model, source_convention, mean_bgr)
        return convert_vgg16(src, dst, prototxt, gray_mean=gray_mean, convention=convention, convention_reason=why)
    if prototxt is not None:
        raise WeightsError(f"--prototxt {prototxt}: only for Caffe models; {src} is {fmt}, whose layers are "
                           "found in the file itself")
    model = read_weights(src)
    try:
        convention, why = choose_convention(model, source_convention, mean_bgr)
        gray_mean = _check_gray_mean(convention, gray_mean)
        _check_paths(src, dst)
        match = match_vgg16(model)
        conv1 = match.convs[0].shape
        if conv1[1] != 3:
            raise WeightsError(f"{src}: conv1_1 ({match.convs[0].name}) takes {conv1[1]} input channel(s), not 3; "
                               "nothing to convert")
        size = write_caffemodel(dst, f"{src.stem}-1ch", _foreign_layers(match, model.flatten, convention, gray_mean))
    finally:
        model.close()
    return Conversion(dst, gray_mean, convention.mean, _foreign_lines(model, match), time.perf_counter() - started,
                      _peak_rss_mb(), size, convention, why, model.format)


def inspect_weights(path: str | Path) -> list[str]:
    """`fcnseg weights inspect`: what the file holds (format, layers in Caffe's layout, input convention)
    and which FCN layers it can initialise, as lines. Writes nothing. Raises WeightsError for files that
    cannot be read or differ from their recorded SHA-256 (`integrity`); a readable file that is not VGG16
    is reported, not raised."""
    notes: list[str] = []
    intact = integrity.check(path, note=notes.append)
    model = read_weights(path)
    try:
        try:
            match, refusal = match_vgg16(model), None
        except WeightsError as exc:
            match, refusal = None, str(exc)
        names = {id(layer): name for name, layer in zip(vgg16.CONVS, match.convs)} if match else {}
        if match and match.fc6 is not None:
            names.update({id(match.fc6): "fc6", id(match.fc7): "fc7"})
        lines = [f"{model.path}: {model.format}, {len(model.layers)} layers with weights"
                 + ("; SHA-256 equal to the one recorded when fcnseg wrote it" if intact else "")] + notes
        if model.convention:
            lines.append(f"input convention: {model.convention} "
                         f"({CONVENTIONS[model.convention].describe()}): {model.convention_reason}")
        else:
            lines.append(f"input convention: unknown ({model.convention_reason}); convert with "
                         "--source-convention caffe|torchvision|keras")
        lines += [f"note: {note}" for note in model.notes]
        lines.append("layers (weights in Caffe's layout, O x I [x kH x kW]) -> VGG16 layer:")
        table = [(layer.name, layer.kind, shape_text(layer.shape), names.get(id(layer), "-"), layer.origin)
                 for layer in model.layers]
        widths = [max([len(row[i]) for row in table] + [1]) for i in range(4)]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4]
                  for row in table]
        lines.append(_initialise_summary(model, match, refusal))
    finally:
        model.close()
    return [line.rstrip() for line in lines]


def _initialise_summary(model: SourceModel, match: Optional[Vgg16Match], refusal: Optional[str]) -> str:
    if match is None:
        if model.format == "Caffe caffemodel":  # e.g. a trained FCN of fewer stages: loaded by layer name
            named = [l.name for l in model.layers if vgg16.TRUNK_CONV.match(l.name) or l.name in vgg16.FC_LAYERS
                     or l.name.startswith("score")]
            if named and "conv1_1" in named:
                first = next(l for l in model.layers if l.name == "conv1_1")
                return (f"can initialise by layer name (init.weights; shapes are checked when training starts): "
                        f"{', '.join(named)}; conv1_1 takes {first.shape[1]} channel(s); not a full VGG16 "
                        f"({refusal.split(': ', 1)[-1]})")
        return f"can initialise: nothing ({refusal.split(': ', 1)[-1]})"
    trunk = "conv1_1 ... conv5_3" + (", fc6, fc7" if match.fc6 is not None else "")
    tail = "" if match.fc6 is not None else f"; {match.top}"
    if match.width_divisor != 1:
        return (f"can initialise: nothing in fcnseg's nets: a VGG16 layout at 1/{match.width_divisor} width "
                f"(fcnseg's trunk has VGG16's full widths){tail}")
    if match.convs[0].shape[1] == 1:
        mean = recorded_gray_mean(model.path) if model.format == "Caffe caffemodel" else None
        expects = f", input gray - {mean:.6g} (data.mean: {mean:.6g})" if mean is not None else ""
        return f"can initialise: {trunk} of a one-channel net, directly as init.weights{expects}{tail}"
    return (f"can initialise: {trunk} of a one-channel net after fcnseg weights convert {model.path} -o "
            f"vgg16_1ch.caffemodel{tail}")


def _peak_rss_mb() -> float:
    # VmHWM belongs to this program's address space; ru_maxrss also counts the parent's memory when a
    # big process (a test runner) forked us.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


