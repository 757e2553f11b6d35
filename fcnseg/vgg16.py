"""The VGG16 table: the one place fcnseg states VGG16's shape (Simonyan & Zisserman, configuration D).

Five stages of 3x3 convolutions, each followed by a 2x2 max pool: `STAGE_CONVS` convolutions of
`STAGE_CHANNELS` outputs, named conv<stage>_<i> (`CONVS`, matched by `TRUNK_CONV`). Then fc6 (reading
pool5 as 512 x 7 x 7) and fc7 (4096 -> 4096), which FCN turns into 7x7 and 1x1 convolutions
(`FC_KERNELS`). The ImageNet release's BGR mean lives with the other input conventions in
`conventions.VGG16_MEAN_BGR`. Used by config (defaults), nets (the trunk), weights and weight_formats
(matching and converting pretrained models) and doctor (weight shapes); it imports nothing.
"""
from __future__ import annotations

import re

STAGE_CONVS = (2, 2, 3, 3, 3)  # convolutions per stage
STAGE_CHANNELS = (64, 128, 256, 512, 512)  # their output channels
CONV_KERNEL = 3
FC_CHANNELS = 4096  # fc6 and fc7 outputs
FC_KERNELS = {"fc6": 7, "fc7": 1}  # as convolutions: fc6 reads pool5 as 512 x 7 x 7 (224 x 224 input)
FC_LAYERS = tuple(FC_KERNELS)  # ("fc6", "fc7")
CLASSIFIER = "fc8"  # the ImageNet classifier, never transplanted into an FCN

# The trunk's convolutions by name, conv<stage>_<index>: the layers fcnseg always loads from weights.
TRUNK_CONV = re.compile(r"conv(\d+)_(\d+)$")

# How `fcnseg train` transplants pretrained weights into a net, layer by layer (`transplant_rule`).
REQUIRED, FC, OPTIONAL = "required", "fc", "optional"


def transplant_rule(name: str) -> str:
    """The transplant policy for the net's learnable layer `name`, stated once for weights.initialize (which
    applies it) and doctor (which checks a net against it):

    REQUIRED  trunk convolutions (conv<s>_<i>): loaded with equal shapes, else training is refused;
    FC        fc6/fc7: loaded when the file's layer fits (an ImageNet InnerProduct O x (C*k*k) is the
              convolution O x C x k x k), else they keep their fillers and the report says why;
    OPTIONAL  every other layer (score*, skips): loaded only when the file has it with equal shapes.

    Fixed layers (lr_mult 0: bilinear upsampling) are never loaded, whatever their name.
    """
    if TRUNK_CONV.match(name):
        return REQUIRED
    return FC if name in FC_LAYERS else OPTIONAL


def stage_convs(stage: int) -> list[str]:
    """Names of the convolutions of `stage` (1-5), in order: conv<stage>_1 ... conv<stage>_<n>."""
    return [f"conv{stage}_{i}" for i in range(1, STAGE_CONVS[stage - 1] + 1)]


CONVS = tuple(name for stage in range(1, len(STAGE_CONVS) + 1) for name in stage_convs(stage))  # 13 names


def last_conv_of_stage(name: str) -> bool:
    """Whether trunk convolution `name` (conv<s>_<i>) is the last of its stage, the one a pool follows."""
    stage, index = map(int, TRUNK_CONV.match(name).groups())
    return index == STAGE_CONVS[stage - 1]
