"""The U-Net (Ronneberger et al. 2015, first published as a Caffe model for single-channel microscopy).

`model.stages` levels, each two 3x3 convolutions then a 2x2 max pooling; a bottom of two 3x3 convolutions;
then per level, deepest first, a learned 2x2 up-convolution (Deconvolution, stride 2) to the level's width,
the level's encoder output cropped onto it (coord_map's offset), a Concat (skip first, as in the paper), and
two 3x3 convolutions; a 1x1 convolution to the classes, `score` (with valid padding `score_conv`, cropped to
the input as `score`). Widths are `model.base_channels` times 1, 2, 4 ... per level. With `model.norm: batch`
every 3x3 convolution is followed by BatchNorm + Scale.

Names: encoder `enc<l>_1`, `enc<l>_2`, `pool<l>` (the bottom is level stages+1), decoder `up<l>`, `concat<l>`
(with valid padding after `enc<l>_2c`, the skip cropped onto the up-convolution), `dec<l>_1`, `dec<l>_2`; each
convolution's ReLU is `relu_<name>`.

Padding: `pad: minimal` pads every 3x3 convolution by 1 (the "same" variant: input sizes are multiples of the
stride, every offset is 0 and no Crop is needed); an integer pad is the paper's valid convolutions, with that
pad on enc1_1 alone so the output still covers the input (92 is the least for 4 levels), and every skip
cropped by its computed offset (4, 16, 40, 88 for 4 levels, as in the paper).
"""
from __future__ import annotations

from ..config import ModelConfig
from .parts import BIAS_FILLER, LEARN, TRUNK_FILLER, L, P, align, conv_block, crop, score

KERNEL = 3


def level_widths(model: ModelConfig) -> list[int]:
    """Channels of each level, the bottom last: base_channels * 2**i for i = 0 .. stages."""
    return [model.base_channels * 2 ** i for i in range(model.stages + 1)]


def upsampling_plan(model: ModelConfig) -> list[tuple[str, int]]:
    """(layer name, factor) of every up-convolution, deepest first: up<stages> ... up1, each 2x and learned."""
    return [(f"up{level}", 2) for level in range(model.stages, 0, -1)]


def _pads(model: ModelConfig) -> tuple[int, int]:
    """(enc1_1's pad, every other 3x3 convolution's pad)."""
    return (1, 1) if model.pad == "minimal" else (int(model.pad), 0)


def _two_convs(n, bottom, prefix: str, width: int, first_pad: int, pad: int, model: ModelConfig):
    for i, p in ((1, first_pad), (2, pad)):
        name = f"{prefix}_{i}"
        bottom = conv_block(n, bottom, name, f"relu_{name}", width, KERNEL, p, model)
    return bottom


def unet(n, data, model: ModelConfig) -> object:
    """Add the U-Net on `data` to NetSpec `n`; returns the `score` top (cropped to `data`)."""
    widths = level_widths(model)
    first_pad, pad = _pads(model)
    skips, bottom = {}, data
    for level in range(1, model.stages + 1):
        skips[level] = _two_convs(n, bottom, f"enc{level}", widths[level - 1], first_pad if level == 1 else pad,
                                  pad, model)
        bottom = L().Pooling(skips[level], pool=P().Pooling.MAX, kernel_size=2, stride=2)
        setattr(n, f"pool{level}", bottom)
    bottom = _two_convs(n, bottom, f"enc{model.stages + 1}", widths[-1], pad, pad, model)
    for level in range(model.stages, 0, -1):
        up = L().Deconvolution(bottom, param=LEARN, convolution_param=dict(
            num_output=widths[level - 1], kernel_size=2, stride=2, weight_filler=TRUNK_FILLER,
            bias_filler=BIAS_FILLER))
        setattr(n, f"up{level}", up)
        a, b = align(n, skips[level], up, f"enc{level}_2", f"up{level}", same_size=model.pad == "minimal")
        setattr(n, f"concat{level}", L().Concat(a, b))
        bottom = _two_convs(n, getattr(n, f"concat{level}"), f"dec{level}", widths[level - 1], pad, pad, model)
    if model.pad == "minimal":  # same padding: the score map is the input's size already
        n.score = score(bottom, model.num_classes)
    else:
        n.score_conv = score(bottom, model.num_classes)
        n.score = crop(n.score_conv, data)
    return n.score
