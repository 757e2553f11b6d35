"""Reading a hand-written FCN's structure for `doctor --write-config`: `read_structure(net)` walks the TRAIN net
layer by layer (data layers, a VGG16 trunk cut after 1-5 pooling stages, fc6/fc7, one FCN head, one
SoftmaxWithLoss) into an `FcnStructure`, and raises `NotExpressible` naming the first layer fcnseg's
VGG-trunk FCN cannot express. Layer names do not matter, only what the layers are."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import vgg16
from ..errors import ConfigError
from ..geometry import SOURCES, conv_geometry
from .facts import NetFacts, loss_heads

# Layers that only report (never shape what is learned): left out of the config.
REPORTING = {"Accuracy", "Silence"}


class NotExpressible(ConfigError):
    """The net is not a VGG-trunk FCN fcnseg can build; the message names the first layer that does not map."""


def refuse(layer, why: str) -> NotExpressible:
    return NotExpressible(f"layer '{layer.name}' ({layer.type}) does not map to fcnseg's VGG-trunk FCN: {why}")


@dataclass
class FcnStructure:
    """The structure `net_choices` read: data layers, trunk, head, loss."""

    image_layer: Any = None
    stages: int = 0
    stage_convs: list = field(default_factory=list)   # per stage: [layer, ...]
    conv1_pad: int = 0
    fc6: Any = None
    fc7: Any = None
    dropout: list = field(default_factory=list)        # ratios after fc6, fc7
    head: Any = None
    loss: Any = None
    at_once: bool = False
    score_classes: dict = field(default_factory=dict)  # score conv name -> num_output


def read_structure(n: NetFacts) -> FcnStructure:
    """Walk the TRAIN net layer by layer; raise NotExpressible at the first layer fcnseg cannot express."""
    facts = FcnStructure()
    layers = list(n.train.layer)
    losses = [layer for layer in layers if layer.type == "SoftmaxWithLoss"]
    if not losses:
        raise NotExpressible("no SoftmaxWithLoss in the TRAIN phase: give the train_val prototxt (the one "
                             "with the loss), not a deploy net")
    if len(losses) > 1:
        raise refuse(losses[1], "a second loss (a second head); fcnseg builds one head with one loss")
    facts.loss = losses[0]
    image, _label = n.data_layers("TRAIN")
    facts.image_layer = image
    current = n.input_blob
    stage, convs = 1, []
    i = 0
    # the data layers
    while i < len(layers) and (layers[i].type in SOURCES and not layers[i].bottom):
        i += 1
    # the trunk: stages of 3x3 convolutions under ReLU, each closed by a 2x2 max pool
    while i < len(layers):
        layer = layers[i]
        if layer.type in REPORTING:
            i += 1
            continue
        if layer.type == "Convolution" and list(layer.bottom) == [current]:
            k, s, pad = conv_geometry(layer)
            if k == vgg16.FC_KERNELS["fc6"] and facts.stages >= 1 and not convs:
                break  # fc6
            if (k, s) != (vgg16.CONV_KERNEL, 1):
                raise refuse(layer, f"kernel {k}, stride {s}; a VGG trunk convolution is 3x3, stride 1, and "
                                     "fc6 is 7x7 after a pooling stage (FCN-AlexNet and other trunks are not built)")
            if stage > len(vgg16.STAGE_CONVS):
                raise refuse(layer, "a convolution after the fifth pooling stage other than fc6 (7x7)")
            width = layer.convolution_param.num_output
            if width != vgg16.STAGE_CHANNELS[stage - 1]:
                raise refuse(layer, f"{width} outputs in stage {stage}, where VGG16 has "
                                     f"{vgg16.STAGE_CHANNELS[stage - 1]} (fcnseg builds VGG16's widths)")
            if len(convs) == vgg16.STAGE_CONVS[stage - 1]:
                raise refuse(layer, f"convolution {len(convs) + 1} of stage {stage}, where VGG16 has "
                                     f"{vgg16.STAGE_CONVS[stage - 1]}")
            if stage == 1 and not convs:
                facts.conv1_pad = pad
            elif pad != 1:
                raise refuse(layer, f"pad {pad}; VGG16's 3x3 convolutions after conv1_1 pad by 1")
            convs.append(layer)
            current = layer.top[0]
        elif layer.type == "ReLU" and list(layer.bottom) == [current] and layer.relu_param.negative_slope == 0:
            current = layer.top[0]
        elif layer.type == "Pooling" and list(layer.bottom) == [current]:
            p = layer.pooling_param
            k, s, pad = conv_geometry(layer)
            if p.pool != p.MAX or (k, s, pad) != (2, 2, 0) or not convs:
                raise refuse(layer, "a VGG stage ends in a 2x2 max pool of stride 2 after its convolutions")
            facts.stage_convs.append(convs)
            facts.stages, stage, convs = stage, stage + 1, []
            current = layer.top[0]
        else:
            why = ("it does not continue the trunk" if layer.type in ("Convolution", "ReLU", "Pooling")
                   else "fcnseg's trunk has only 3x3 convolutions, ReLUs and 2x2 max pools (no "
                   f"{layer.type} layers)")
            if facts.stages and not convs and layer.type in ("Convolution", "Deconvolution", "Crop"):
                why = "fcnseg's trunk ends in fc6 (7x7) and fc7 (1x1) convolutions before the score layers"
            raise refuse(layer, why)
        i += 1
    if i >= len(layers) or not facts.stages:
        raise NotExpressible("no VGG trunk followed by fc6 found (3x3 convolutions, 2x2 max pools, then a 7x7 "
                             "convolution)")
    # fc6 / fc7 with ReLU and optional dropout
    for name, kernel in (("fc6", vgg16.FC_KERNELS["fc6"]), ("fc7", vgg16.FC_KERNELS["fc7"])):
        while layers[i].type in REPORTING:
            i += 1
        layer = layers[i]
        if layer.type != "Convolution" or list(layer.bottom) != [current] or conv_geometry(layer)[:2] != (kernel, 1):
            raise refuse(layer, f"fcnseg's {name} is a {kernel}x{kernel} convolution of stride 1 reading "
                                 f"'{current}'")
        setattr(facts, name, layer)
        current = layer.top[0]
        i += 1
        ratio = 0.0
        while i < len(layers) and layers[i].type in ("ReLU", "Dropout") and list(layers[i].bottom) == [current]:
            if layers[i].type == "Dropout":
                ratio = layers[i].dropout_param.dropout_ratio
            current = layers[i].top[0]
            i += 1
        facts.dropout.append(ratio)
    if facts.fc7.convolution_param.num_output != facts.fc6.convolution_param.num_output:
        raise refuse(facts.fc7, f"{facts.fc7.convolution_param.num_output} outputs but fc6 has "
                                 f"{facts.fc6.convolution_param.num_output}; fcnseg's model.fc_channels sets both")
    # the head
    heads = loss_heads(n)
    facts.head = heads[0]
    head_layers = {layer.name for layer, _ in facts.head.scores} | \
        {layer.name for layer, *_ in facts.head.upsampling} | {layer.name for layer, _ in facts.head.fusions}
    pool_tops = {}
    for layer in layers:
        if layer.type == "Pooling":
            pool_tops[layer.top[0]] = len(pool_tops) + 1
    for layer in layers[i:]:
        if layer.type in REPORTING or layer is facts.loss:
            continue
        if layer.type == "Scale" and layer.param and layer.param[0].lr_mult == 0 and layer.bottom[0] in pool_tops:
            facts.at_once = True
            continue
        if layer.type in ("Crop",) or layer.name in head_layers:
            if layer.type == "Eltwise" and layer.eltwise_param.operation != layer.eltwise_param.SUM:
                raise refuse(layer, "fcnseg fuses skips by Eltwise SUM")
            continue
        raise refuse(layer, "not part of an FCN-32s/16s/8s head (score convolutions, Deconvolution, Crop, "
                             "Eltwise SUM)")
    for layer, k in facts.head.scores:
        facts.score_classes[layer.name] = k
        if conv_geometry(layer)[:2] != (1, 1):
            raise refuse(layer, "fcnseg's score layers are 1x1 convolutions")
        source = skip_source(n, layer, pool_tops, facts)
        if source is None:
            raise refuse(layer, "a score convolution reading neither fc7 nor a pooling output")
    skips = facts.head.skips
    if skips > 2:
        raise refuse(facts.head.fusions[0][0], f"{skips} skip fusions; fcnseg builds FCN-32s, 16s or 8s (0-2)")
    wanted = set(range(facts.stages - skips, facts.stages))
    got = {skip_source(n, layer, pool_tops, facts) for layer, _ in facts.head.scores} - {"fc7"}
    if skips and got != wanted:
        layer = facts.head.scores[-1][0]
        raise refuse(layer, f"the skips read pool {sorted(got)}; fcnseg's FCN-{(32, 16, 8)[skips]}s fuses "
                             f"pool{', pool'.join(map(str, sorted(wanted, reverse=True)))}")
    return facts


def skip_source(n: NetFacts, layer, pool_tops: dict, facts: FcnStructure):
    """'fc7' or the pooling stage (1-based) whose output score convolution `layer` reads (through
    shape-keeping layers), else None."""
    blob, reader = layer.bottom[0], layer
    for _ in range(8):
        if blob in pool_tops:
            return pool_tops[blob]
        if blob in facts.fc7.top:
            return "fc7"
        writer = next((w for w in reversed(list(n.train.layer)[:list(n.train.layer).index(reader)])
                       if blob in w.top), None)
        if writer is None or not writer.bottom or writer.type not in ("Scale", "Dropout", "ReLU"):
            return None
        blob, reader = writer.bottom[0], writer
    return None
