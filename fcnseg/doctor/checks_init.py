"""Checks on where the weights come from: upsampling layers, layers that start at zero, training from scratch,
and a weights file that does not fit the net."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .. import vgg16
from ..caffemodel import CONVERT_HINT, convert_hint
from ..geometry import conv_geometry
from ..recipes import SCRATCH, SCRATCH_NORM
from .facts import (
    ADAPTIVE_SOLVERS,
    NORMALISATION,
    SCALED_FILLERS,
    SCRATCH_MAX_STRIDE,
    VGG_DEPTH,
    Finding,
    NetFacts,
    exact_log2,
    feeds_relu,
    hidden_layers,
    is_upsampling,
    learns,
    name_list,
    plural,
    same_shape,
    shape_text,
    starts_at_zero,
    weight_filler,
)


def check_upsampling(n: NetFacts, shapes: Optional[dict]) -> list[Finding]:
    """Finding 3: upsampling Deconvolutions that do not start as per-class bilinear interpolations.

    At most one filler-or-group finding per layer. Weights that hold the layer settle it. A fixed layer with
    no filler is what the reference's surgery.interp fills (one bilinear kernel per class, so no group is
    needed): a warning where something outside the files can still do that, an error where nothing can.
    `upsampling-group` only where a bilinear filler really fills every class pair.
    """
    out = []
    evidence = n.outside_init(upsampling=False)
    for layer in n.layers("Deconvolution"):
        if not is_upsampling(layer):
            continue
        p = layer.convolution_param
        factor = conv_geometry(layer)[1]
        frozen = not learns(layer)
        filler = weight_filler(layer)
        bilinear_fix = (f"weight_filler {{ type: \"bilinear\" }} with group: {p.num_output}, kernel_size "
                        f"{2 * factor}, stride {factor}, bias_term: false")
        if shapes is not None and layer.name in shapes:
            pass  # its kernel comes from the weights file
        elif filler is None or filler.type != "bilinear":
            start = ("no weight_filler (Caffe's default: constant 0)" if filler is None
                     else f"a '{filler.type}' weight_filler")
            surgery_can = frozen and (n.script_driven or (shapes is None and bool(evidence)))
            if surgery_can:
                where = ("the weights given do not hold it, so " if shapes is not None else "")
                out.append(Finding(
                    "warning", "upsampling-filler",
                    f"Upsampling '{layer.name}' is fixed (lr_mult 0) with {start}: {where}it must be set to a "
                    "bilinear kernel, one per class, before the first step, as the reference's solve.py does "
                    "with surgery.interp on every layer named 'up…'. Without that it stays "
                    f"{'zero' if starts_at_zero(layer) else 'no interpolation'} and the loss never leaves "
                    "ln K.", f"Run bilinear surgery on it after loading the weights, or give it {bilinear_fix}.",
                    layer.name))
            elif frozen:
                where = " and the weights given do not hold it" if shapes is not None else ""
                out.append(Finding(
                    "error", "upsampling-filler",
                    f"Upsampling '{layer.name}' is fixed (lr_mult 0), has {start}{where}, and nothing in this "
                    "setup sets its kernel: it never becomes an interpolation"
                    + (" and outputs zeros forever." if starts_at_zero(layer) else "."),
                    f"Give it {bilinear_fix}.", layer.name))
            else:
                out.append(Finding(
                    "warning", "upsampling-filler",
                    f"Upsampling '{layer.name}' has {start}: it starts as no interpolation at all and must learn "
                    "one.", f"Give it {bilinear_fix}.", layer.name))
        elif p.group != p.num_output and p.num_output > 1 and n.channels.get(layer.bottom[0], 2) > 1:
            k = p.num_output
            out.append(Finding(
                "error" if frozen else "warning", "upsampling-group",
                f"Upsampling '{layer.name}' has group {p.group} for {k} channels: Caffe's bilinear filler fills "
                f"every input-output pair, so each output channel sums {k // max(p.group, 1)} class scores and "
                "the classes blur into one another" + ("" if frozen else " until it learns them apart") + ".",
                f"group: {k} (= num_output), so each class is upsampled on its own.", layer.name))
        if not frozen:
            lr_mult = layer.param[0].lr_mult if layer.param else 1
            out.append(Finding("info", "upsampling-learns",
                               f"Upsampling '{layer.name}' learns (lr_mult {lr_mult:g}); "
                               "the FCN authors found learning it made no significant difference, and fixed "
                               "it stays an exact bilinear interpolation.",
                               "param { lr_mult: 0 } to keep it fixed.", layer.name))
    return out


def check_initialisation(n: NetFacts, shapes: Optional[dict], weights_given: bool) -> list[Finding]:
    """Finding 4: learning layers that start at zero under a ReLU (no filler, not in the weights).

    A warning saying the transplant must happen first where the net is evidently initialised from outside
    and no weights file was named; an error where nothing can supply them (no such evidence, or a weights
    file that lacks them).
    """
    if weights_given and shapes is None:
        return []  # the weights could not be read: reported elsewhere, coverage unknown
    dead = [layer.name for layer in n.layers("Convolution", "InnerProduct", "Deconvolution")
            if not is_upsampling(layer) and learns(layer) and starts_at_zero(layer)
            and not (shapes and layer.name in shapes) and feeds_relu(n, layer)]
    if not dead:
        return []
    k = n.num_classes
    prior = f" (a loss stuck near ln {k} = {math.log(k):.4g})" if k else ""
    many = len(dead) > 1
    evidence = n.outside_init()
    if not weights_given and evidence:
        return [Finding(
            "warning", "zero-init",
            f"{len(dead)} learning layer{'s' if many else ''} ({name_list(dead)}) ha{'ve' if many else 's'} no "
            f"weight_filler, and this net is evidently initialised from outside ({'; '.join(evidence)}): "
            f"{'they' if many else 'it'} must be copied from a trained model before the first step. As written "
            f"{'they start' if many else 'it starts'} at exactly 0, and under ReLU a zero layer never moves: the "
            f"net would only learn the class prior{prior}.",
            "Load the weights before training: `caffe train --weights W`, net.copy_from(W) as the reference's "
            "solve.py does, or --weights W here to check them.", ", ".join(dead))]
    where = " and the weights given do not contain them" if weights_given else ""
    return [Finding(
        "error", "zero-init",
        f"{len(dead)} learning layer{'s' if many else ''} ({name_list(dead)}) ha{'ve' if many else 's'} no "
        f"weight_filler{where}: Caffe's default filler is constant 0, so they start at exactly zero. Under ReLU "
        "a zero layer outputs 0, passes back no gradient and never moves: the net can only learn the class "
        f"prior{prior}.",
        "Give each a weight_filler { type: \"msra\" } and bias_filler { type: \"constant\" }, or load "
        "pretrained weights that contain these layers (--weights).", ", ".join(dead))]


def check_from_scratch(n: NetFacts, solver_type: Optional[str], weights_given: bool) -> list[Finding]:
    """Finding 5 (no weights): VGG-depth nets without normalisation trained from scratch."""
    hidden = hidden_layers(n)
    if weights_given or len(hidden) < VGG_DEPTH or n.layers(*NORMALISATION):
        return []
    if n.outside_init() and all(weight_filler(layer) is None for layer in hidden):
        return []  # zero-init already says these must come from a trained model first
    unscaled = [layer.name for layer in hidden
                if (weight_filler(layer) is None or weight_filler(layer).type not in SCALED_FILLERS)]
    stride = n.stride or 1
    reasons = []
    if len(unscaled) == len(hidden):
        reasons.append("none of them starts from a variance-scaled filler (msra / xavier)")
    elif unscaled:
        reasons.append(f"{name_list(unscaled, 4)} start{'s' if len(unscaled) == 1 else ''} without a "
                       "variance-scaled filler (msra / xavier)")
    if stride > SCRATCH_MAX_STRIDE:
        stages = f"{exact_log2(stride)} pooling stages (stride {stride})" if exact_log2(stride) else f"stride {stride}"
        reasons.append(f"its {stages} go beyond the 3 pooling stages known to train from scratch")
    names = name_list([layer.name for layer in hidden], 4)
    chans = n.channels.get(n.input_blob)
    hint = convert_hint(chans)
    fix = (f"{hint[0].upper()}{hint[1:]}, and pass it (--weights, or init.weights in the config). "
           "From scratch, stay where it is known to work: at most 3 pooling stages, msra fillers on every "
           f"layer, {SCRATCH.solver} at {SCRATCH.lr} on a normalized loss (configs/seed_reduced_1ch.yaml); or put "
           f"BatchNorm + Scale after every convolution and use {SCRATCH_NORM.solver} at {SCRATCH_NORM.lr} "
           "(fcnseg's model.norm: batch, configs/demo_hela.yaml).")
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
            f"Use type: \"{SCRATCH.solver}\" with base_lr {SCRATCH.lr} on a normalized loss, or pretrained weights "
            f"({hint}).", names)]
    return [Finding(
        "info", "from-scratch",
        f"No pretrained weights: {len(hidden)} learning layers ({names}) train from scratch; at this depth, "
        f"with msra fillers and {solver_type or 'an adaptive solver such as Adam'}, that is known to work "
        "(HeLa FCN demo, configs/demo_hela_fcn8s.yaml: val mean IU 0.91).",
        f"Nothing to do; for deeper nets use pretrained weights ({hint}).", names)]


def check_weights(n: NetFacts, weights: Path, shapes: Optional[dict], problem: str, loader: str) -> list[Finding]:
    """Finding 5 (weights given): unreadable weights, no shared layers, conv1_1 channels, other shapes.

    `loader` "caffe" (caffe train --weights: every same-named blob must match) or "fcnseg" (fcnseg train,
    `vgg16.transplant_rule`: only the REQUIRED layers must match; the others keep their fillers).
    """
    aborts = ("Caffe aborts with 'shape mismatch' when it copies" if loader == "caffe"
              else "fcnseg train refuses to load")
    if shapes is None:
        return [Finding("error", "weights-unreadable", problem,
                        "Point --weights / init.weights at an existing .caffemodel.")]
    learnable = [layer for layer in n.layers("Convolution", "InnerProduct", "Deconvolution") if learns(layer)]
    shared = [layer for layer in learnable if layer.name in shapes]
    out = []
    if learnable and not shared:
        out.append(Finding(
            "error", "weights-unused",
            f"None of the net's learning layers ({name_list([l.name for l in learnable], 4)}) is in {weights.name} "
            f"(it holds {name_list(list(shapes), 4)}): Caffe copies weights by layer name, so nothing is loaded "
            "and the net trains from its fillers.",
            "Name the layers as in the weights (VGG16: conv1_1 … conv5_3, fc6, fc7).", None))
    missing = [layer.name for layer in learnable if layer.name not in shapes
               and vgg16.transplant_rule(layer.name) == vgg16.REQUIRED]
    if loader == "fcnseg" and shared and missing:
        out.append(Finding(
            "error", "weights-missing",
            f"{name_list(missing, 4)} {'is' if len(missing) == 1 else 'are'} not in {weights.name}: the trunk "
            f"convolutions must all load, so {aborts} it.",
            "Use a VGG16-derived caffemodel that holds the whole trunk, or fewer model.stages.", ", ".join(missing)))
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
                    f"'{layer.name}' in {weights.name} takes {plural(got[1], 'input channel')}; the data's "
                    "channel count is unknown here (no Input shape, mean_value per channel or readable LMDB).",
                    f"Make sure the images have {plural(got[1], 'channel')}.", layer.name))
            elif got[1] != want // max(layer.convolution_param.group, 1):
                out.append(Finding(
                    "error", "weights-channels",
                    f"'{layer.name}' in {weights.name} takes {got[1]} input channels but the data has {want}: "
                    f"{aborts} the weights.",
                    (f"Convert the weights to 1 channel: `{CONVERT_HINT}` (sums conv1_1 over RGB and corrects "
                     "the bias for the mean)." if want == 1 else
                     f"Use {convert_hint(want)}, or give the data {plural(got[1], 'channel')}."), layer.name))
            continue
        want = expected_shape(n, layer)
        if loader == "fcnseg" and vgg16.transplant_rule(layer.name) != vgg16.REQUIRED:
            continue
        if want is not None and not same_shape(got, want):
            mismatched.append(f"'{layer.name}' is {shape_text(got)} in the weights but {shape_text(want)} "
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


def expected_shape(n: NetFacts, layer) -> Optional[tuple[int, ...]]:
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


