"""Loading weights into a net before training: the transplant.

`initialize(net, config, weights_path)` copies a caffemodel into a pycaffe net by layer name and blob
index (the rule per layer: `vgg16.transplant_rule`) and returns one `TransplantRow` per parameter blob;
`format_report(rows)` renders them; `scratch_warning(config)` says what a from-scratch setup does
differently from what is known to train. Caffemodel files are read by `fcnseg.caffemodel`, one layer at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import vgg16
from ..caffemodel import LayerRecord, convert_hint, load_blob, read_caffemodel_index, shape_text
from ..config import Config
from ..errors import WeightsError
from ..nets import deploy_net
from ..recipes import SCRATCH, SCRATCH_MAX_STAGES, SCRATCH_NORM


@dataclass(frozen=True)
class TransplantRow:
    """What happened to one parameter blob of the net: action is 'copied', 'reshaped' or 'filler'."""

    layer: str
    blob: int
    shape: tuple[int, ...]
    action: str
    detail: str = ""


def _describe_filler(filler) -> str:
    if filler.type == "constant":
        return f"constant {filler.value:g}"
    return "msra (He)" if filler.type == "msra" else filler.type


def net_fillers(net_param) -> dict[str, list[tuple[str, bool]]]:
    """{layer: [(filler description, fixed)] per blob} of the net definition `net_param` (a NetParameter)."""
    out = {}
    for layer in net_param.layer:
        if layer.type in ("Convolution", "Deconvolution"):
            p = layer.convolution_param
            fillers = [p.weight_filler] + ([p.bias_filler] if p.bias_term else [])
        elif layer.type == "Scale":
            p = layer.scale_param
            fillers = [p.filler] + ([p.bias_filler] if p.bias_term else [])
        else:
            continue
        fixed = [i < len(layer.param) and layer.param[i].lr_mult == 0 for i in range(len(fillers))]
        out[layer.name] = [(_describe_filler(f), fx) for f, fx in zip(fillers, fixed)]
    return out


def _file_stages(index: dict[str, LayerRecord]) -> int:
    return max((int(m.group(1)) for m in map(vgg16.TRUNK_CONV.match, index) if m), default=0)


def _trunk_conv_error(path, name: str, rec: Optional[LayerRecord], shapes, config: Config) -> WeightsError:
    if rec is None or not rec.blobs:
        return WeightsError(f"{path}: no weights for {name}, which the trunk needs (model.stages "
                            f"{config.model.stages}); use a VGG16-derived caffemodel or fewer model.stages")
    file_shape = rec.blob_shape(0)
    net_shape = shapes[0]
    if name == "conv1_1" and len(file_shape) == 4 and file_shape[0] == net_shape[0] and file_shape[2:] == net_shape[2:]:
        if file_shape[1] == 3 and net_shape[1] == 1:
            return WeightsError(f"{path}: conv1_1 takes 3 channels (BGR, {shape_text(file_shape)}) but the net "
                                f"takes 1 ({shape_text(net_shape)}); convert it first: fcnseg weights convert "
                                f"{path} -o vgg16_1ch.caffemodel, and use that as init.weights")
        return WeightsError(f"{path}: conv1_1 takes {file_shape[1]} channel(s) but model.input_channels is "
                            f"{net_shape[1]}; set model.input_channels: {file_shape[1]} or use weights made "
                            f"for {net_shape[1]} channel(s)")
    net_shapes = " + ".join(shape_text(s) for s in shapes)
    return WeightsError(f"{path}: {name} is {_file_shapes(rec)} in the file but {net_shapes} in the net; "
                        "the trunk must be VGG16-shaped (don't change the trunk, or use weights trained for it)")


def _file_shapes(rec: LayerRecord) -> str:
    return " + ".join(shape_text(rec.blob_shape(i)) for i in range(len(rec.blobs)))


def _fits(rec: Optional[LayerRecord], shapes: list[tuple[int, ...]], fc: bool) -> bool:
    """Whether the file's layer `rec` can fill blobs of `shapes`: equal shapes, or for fc6/fc7 (`fc`)
    an ImageNet InnerProduct O x (C*k*k), which is the convolution O x C x k x k with the same numbers."""
    if rec is None or len(rec.blobs) != len(shapes):
        return False
    for i, shape in enumerate(shapes):
        file_shape = rec.blob_shape(i)
        as_conv = fc and i == 0 and len(file_shape) == 2 and len(shape) == 4 and \
            file_shape[0] == shape[0] and file_shape[1] == math.prod(shape[1:])
        if file_shape != tuple(shape) and not as_conv:
            return False
    return True


def _fc_reason(name: str, rec: Optional[LayerRecord], index, config: Config, fc6_missing: bool) -> str:
    if name == "fc7" and fc6_missing:
        return "fc6 is not loaded, so fc7's weights would read features they were not trained on"
    if rec is None or not rec.blobs:
        return "absent from the file"
    stages, file_stages = config.model.stages, _file_stages(index)
    if stages < file_stages:
        return (f"model.stages {stages} < {file_stages}: fc6 reads pool{stages} "
                f"({vgg16.STAGE_CHANNELS[stages - 1]} channels), not the pool{file_stages} features it was "
                "trained on")
    file_out = rec.blob_shape(0)[0]
    if config.model.fc_channels != file_out:
        return f"model.fc_channels {config.model.fc_channels} != {file_out} in the file"
    return f"shape mismatch: file {_file_shapes(rec)}"


def _absent_reason(name: str, index: dict[str, LayerRecord]) -> str:
    """Why a head layer the file lacks keeps its filler; names the staged-training case (a 16s/8s net
    started from a trained 32s/16s FCN, whose score_fr is in the file but the new skip is not)."""
    if name.startswith("score_pool") and "score_fr" in index:
        return ("new skip, not in the file (an FCN without it): starts at zero, so it adds nothing at "
                "first and the net starts from the loaded FCN's prediction")
    return "absent from the file"


def initialize(net, config: Config, weights_path: str | Path | None = None, net_param=None) -> list[TransplantRow]:
    """Load the caffemodel `weights_path` (default `config.init.weights`) into pycaffe `net` by layer name.

    `net_param` is the NetParameter `net` was built from, for the fillers its layers start from (default: the
    deploy net `nets` builds for `config`; train passes the definition it built, so nothing is built twice).

    Applies `vgg16.transplant_rule` to every layer, checking all before copying any: a REQUIRED layer
    (trunk convolution) that is missing or mismatched raises WeightsError and nothing is copied (a
    3-channel conv1_1 in a 1-channel net says to run `fcnseg weights convert`); an FC layer that does not
    fit, or that model.stages / model.fc_channels rule out, keeps its filler with the reason; fixed layers
    (lr_mult 0: upscore*, scale_pool*) are never loaded. With no weights every blob keeps its filler
    (print `scratch_warning(config)`). Returns one TransplantRow per parameter blob of `net`.
    """
    path = weights_path if weights_path is not None else config.init.weights
    params = net.params
    fillers = net_fillers(net_param if net_param is not None else deploy_net(config, *config.model.deploy_size))

    def filler(name, i, why):
        known = fillers.get(name, [])
        desc, fixed = known[i] if i < len(known) else ("filler from the net definition", False)
        return f"{desc} (fixed, lr_mult 0): never loaded" if fixed else f"{desc}: {why}"

    if path is None:
        return [TransplantRow(name, i, tuple(b.data.shape), "filler",
                              filler(name, i, "init.weights is null (training from scratch)"))
                for name, blobs in params.items() for i, b in enumerate(blobs)]
    index = read_caffemodel_index(path)
    keep: dict[str, Optional[str]] = {}  # layer -> None to load it, else why it keeps its filler
    for name, blobs in params.items():  # everything is checked before anything is copied
        shapes = [tuple(b.data.shape) for b in blobs]
        rec = index.get(name)
        rule = vgg16.transplant_rule(name)
        if all(fixed for _, fixed in fillers.get(name, [("", False)])):
            keep[name] = "fixed"
        elif rule == vgg16.REQUIRED:
            if not _fits(rec, shapes, fc=False):
                raise _trunk_conv_error(path, name, rec, shapes, config)
            keep[name] = None
        elif rule == vgg16.FC:
            # fc7 without ImageNet fc6 would read features it never saw; stages < the file's can still
            # fit fc6's shape by accident (pool4 has pool5's 512 channels).
            fc6_missing = name == "fc7" and keep.get("fc6") is not None
            usable = not fc6_missing and _fits(rec, shapes, fc=True) and config.model.stages >= _file_stages(index)
            keep[name] = None if usable else _fc_reason(name, rec, index, config, fc6_missing)
        elif _fits(rec, shapes, fc=False):
            keep[name] = None
        elif rec is None or not rec.blobs:
            keep[name] = _absent_reason(name, index)
        else:
            keep[name] = f"shape mismatch: file {_file_shapes(rec)}"
    rows = []
    with open(path, "rb") as f:
        for name, blobs in params.items():
            reason, rec = keep[name], index.get(name)
            for i, blob in enumerate(blobs):
                shape = tuple(blob.data.shape)
                if reason is not None:
                    rows.append(TransplantRow(name, i, shape, "filler", filler(name, i, reason)))
                    continue
                values = load_blob(f, rec.blobs[i])
                blob.data[...] = values.reshape(shape)
                moved = tuple(rec.blob_shape(i)) != shape
                rows.append(TransplantRow(name, i, shape, "reshaped" if moved else "copied",
                                          f"from {rec.type} {shape_text(rec.blob_shape(i))}" if moved else ""))
    return rows


def format_report(rows: list[TransplantRow]) -> str:
    """The transplant report: one line per parameter blob, then a count per action."""
    table = [("layer", "blob", "shape", "action", "source / reason")] + \
        [(r.layer, str(r.blob), shape_text(r.shape), r.action, r.detail) for r in rows]
    widths = [max(len(row[c]) for row in table) for c in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in table]
    counts = {a: sum(r.action == a for r in rows) for a in ("copied", "reshaped", "filler")}
    lines.append(f"{len(rows)} blobs: " + ", ".join(f"{n} {a}" for a, n in counts.items()))
    return "\n".join(line.rstrip() for line in lines)


def scratch_recipe(config: Config):
    """The recipe a from-scratch `config` is held to: recipes.SCRATCH_NORM with `model.norm: batch`, else
    recipes.SCRATCH."""
    return SCRATCH_NORM if config.model.norm == "batch" else SCRATCH


def scratch_differences(config: Config) -> list[str]:
    """Where a from-scratch `config` differs from the setup known to train from scratch (`scratch_recipe`: a
    normalized loss, Adam within 10x of its base_lr, and without BatchNorm at most SCRATCH_MAX_STAGES pooling
    stages); [] when it follows it."""
    m, s, found = config.model, config.solver, []
    recipe = scratch_recipe(config)
    if m.stages > SCRATCH_MAX_STAGES and m.norm == "none":
        convs = 2 * m.stages + 2 if m.arch == "unet" else sum(vgg16.STAGE_CONVS[:m.stages]) + 2
        found.append(f"model.stages is {m.stages} ({convs} convolutions on the way down, no normalisation; at most "
                     f"{SCRATCH_MAX_STAGES} stages are known to train from scratch without model.norm: batch)")
    if not config.loss.normalize:
        found.append("loss.normalize is false (a loss summed over every pixel)")
    if s.type != recipe.solver:
        found.append(f"solver.type is {s.type}, not {recipe.solver}")
    if not recipe.base_lr / 10 <= s.base_lr <= recipe.base_lr * 10:
        why = " (the reference's fine-tuning rate for a summed loss: random weights barely move)" \
            if s.base_lr < 1e-6 else ""
        found.append(f"solver.base_lr is {s.base_lr:g}, far from {recipe.lr}{why}")
    return found


def scratch_warning(config: Config) -> Optional[str]:
    """The warning printed when init.weights is null and the setup differs from what is known to train from
    scratch (`scratch_differences`), naming each difference; None when it follows that recipe."""
    differences = scratch_differences(config)
    if not differences:
        return None
    return ("warning: init.weights is null: training from scratch (msra/He fillers, score layers at 0), "
            "and this setup differs from what is known to train from scratch: " + "; ".join(differences)
            + ". The FCN reference never trains from scratch: it fine-tunes ImageNet VGG16 and calls training its "
            "VGG-depth nets from scratch 'not feasible'. Use VGG16 weights "
            f"({convert_hint(config.model.input_channels)}) and set init.weights, or "
            f"train from scratch with model.norm: batch, loss.normalize: true and {SCRATCH_NORM.solver} around "
            f"{SCRATCH_NORM.lr} (configs/demo_hela.yaml), or without BatchNorm with at most {SCRATCH_MAX_STAGES} "
            f"model.stages and {SCRATCH.solver} around {SCRATCH.lr}.")
