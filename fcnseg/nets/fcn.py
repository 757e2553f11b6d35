"""The FCN-32s/16s/8s nets: a VGG16 trunk cut after `model.stages` pooling stages, fc6/fc7 as convolutions,
and the reference's heads.

The trunk keeps the ImageNet layer names (conv1_1 ... conv5_3, fc6, fc7) so weights transplant by name. Heads
follow the FCN reference names (score_fr, upscore*, score_pool*, fuse_pool*, score). Every upsampling factor
is derived from the trunk's stride, every Deconvolution is a fixed bilinear interpolation (kernel 2f, stride f,
group K, lr_mult 0), and every Crop offset comes from Caffe's coord_map. Nothing geometric is ever read from
the user.
"""
from __future__ import annotations

from .. import vgg16
from ..config import SKIPS_BY_ARCH, ModelConfig
from .parts import FROZEN, L, P, align, conv_block, crop, score, upsample

AT_ONCE_SKIP_SCALE = {1: 0.01, 2: 0.0001}  # pool4-like skip, pool3-like skip (reference at-once FCN-8s)
MINIMAL_PAD_FC6 = 3  # keeps fc6's 7x7 window centred so the score map covers the input


def conv1_pad(model: ModelConfig) -> int:
    """conv1_1's padding: 100 as in the reference, 1 for `pad: minimal`, else the given number."""
    return 1 if model.pad == "minimal" else int(model.pad)


def fc6_pad(model: ModelConfig) -> int:
    """fc6's padding: 3 for `pad: minimal` (so no 100-pixel margin is needed), else 0 as in the reference."""
    return MINIMAL_PAD_FC6 if model.pad == "minimal" else 0


def upsampling_plan(model: ModelConfig) -> list[tuple[str, int]]:
    """(layer name, factor) of every upsampling Deconvolution, in order; the factors multiply to the stride.

    fcn32s: one upsampling by the stride. fcn16s: 2x to the previous pool, then stride/2. fcn8s: 2x, 2x,
    then stride/4. Names follow the reference (upscore, upscore2, upscore_pool4, upscore16, upscore8);
    a final 2x in a shallow net is named `upscore`.
    """
    stride, skips = model.net_stride, SKIPS_BY_ARCH[model.arch]
    if skips == 0:
        return [("upscore", stride)]
    plan = [("upscore2", 2)]
    if skips == 2:
        plan.append((f"upscore_pool{model.stages - 1}", 2))
    final = stride // 2 ** skips
    # A final factor of 2 (shallow nets) would collide with the first 2x layer's name.
    plan.append(("upscore" if final == 2 else f"upscore{final}", final))
    return plan


def fixed_layers(model: ModelConfig) -> set[str]:
    """Names of the layers that never learn (lr_mult 0): bilinear upsampling and at-once skip scales."""
    names = {name for name, _ in upsampling_plan(model)}
    if model.at_once:
        names |= {f"scale_pool{model.stages - 1 - i}" for i in range(SKIPS_BY_ARCH[model.arch])}
    return names


def vgg_trunk(n, data, model: ModelConfig) -> tuple[dict[int, object], object]:
    """Add VGG16 cut after `model.stages` stages, plus fc6/fc7 as convolutions, to NetSpec `n`.

    Returns ({stage: pool top}, fc7 top).
    """
    bottom, pools = data, {}
    for stage in range(1, model.stages + 1):
        for i, name in enumerate(vgg16.stage_convs(stage), 1):
            pad = conv1_pad(model) if (stage, i) == (1, 1) else 1
            bottom = conv_block(n, bottom, name, f"relu{stage}_{i}", vgg16.STAGE_CHANNELS[stage - 1],
                                vgg16.CONV_KERNEL, pad, model)
        pools[stage] = L().Pooling(bottom, pool=P().Pooling.MAX, kernel_size=2, stride=2)
        setattr(n, f"pool{stage}", pools[stage])
        bottom = pools[stage]
    fc = bottom
    for name, relu, drop, kernel, pad in (("fc6", "relu6", "drop6", vgg16.FC_KERNELS["fc6"], fc6_pad(model)),
                                          ("fc7", "relu7", "drop7", vgg16.FC_KERNELS["fc7"], 0)):
        fc = conv_block(n, fc, name, relu, model.fc_channels, kernel, pad, model)
        if model.dropout > 0:
            setattr(n, drop, L().Dropout(fc, dropout_ratio=model.dropout, in_place=True))
    return pools, fc


def fcn_head(n, data, pools, fc7, model: ModelConfig) -> object:
    """Add the FCN-32s/16s/8s head on top of the trunk; returns the `score` top (cropped to `data`)."""
    k = model.num_classes
    n.score_fr = score(fc7, k)
    plan = upsampling_plan(model)
    top = n.score_fr
    for i, (name, _factor) in enumerate(plan[:-1]):
        up = upsample(top, k, 2)
        setattr(n, name, up)
        stage = model.stages - 1 - i
        skip_in = pools[stage]
        if model.at_once:
            scaled = L().Scale(skip_in, param=FROZEN, filler=dict(type="constant", value=AT_ONCE_SKIP_SCALE[i + 1]))
            setattr(n, f"scale_pool{stage}", scaled)
            skip_in = scaled
        score_pool = score(skip_in, k)
        setattr(n, f"score_pool{stage}", score_pool)
        # With the reference's 100-pixel pad the skip is the larger map and is cropped (score_pool4c, offset
        # 5); with minimal padding the upsampled map overhangs the skip and is the one cropped (upscore2c).
        a, b = align(n, up, score_pool, name, f"score_pool{stage}")
        top = L().Eltwise(a, b, operation=P().Eltwise.SUM)
        setattr(n, f"fuse_pool{stage}", top)
    name, factor = plan[-1]
    up = upsample(top, k, factor)
    setattr(n, name, up)
    n.score = crop(up, data)
    return n.score
