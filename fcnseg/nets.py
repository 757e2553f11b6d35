"""FCN nets for single-channel (or C-channel) input, built with `caffe.NetSpec`.

The VGG16 trunk keeps the ImageNet layer names (conv1_1 ... conv5_3, fc6, fc7) so weights transplant by
name. Heads follow the FCN reference names (score_fr, upscore*, score_pool*, fuse_pool*, score). Every
upsampling factor is derived from the trunk's stride, every Deconvolution is a fixed bilinear
interpolation (kernel 2f, stride f, group K, lr_mult 0), and every Crop offset comes from Caffe's
coord_map. Nothing geometric is ever read from the user.

Public entry points: `train_val_net(config)`, `deploy_net(config, height, width)` (both return a
caffe_pb2.NetParameter) and `upsampling_plan(model)` (the factors, for reports and tests).
"""
from __future__ import annotations

import numpy as np

from . import vgg16
from .caffe_env import import_caffe
from .config import SKIPS_BY_ARCH, Config, ModelConfig, input_mean
from .errors import ConfigError
from .files import dataset_paths

# Fillers are written into every learnable layer: Caffe's default is constant 0, which leaves a
# ReLU trunk dead when no pretrained weights overwrite it (the seed's failure).
TRUNK_FILLER = dict(type="msra")
BIAS_FILLER = dict(type="constant", value=0)
# The reference starts score layers at zero: with pretrained features the first steps then move only the
# classifier, and nothing random is added to the large VGG activations.
SCORE_FILLER = dict(type="constant", value=0)
LEARN = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
FROZEN = [dict(lr_mult=0)]
AT_ONCE_SKIP_SCALE = {1: 0.01, 2: 0.0001}  # pool4-like skip, pool3-like skip (reference at-once FCN-8s)
MINIMAL_PAD_FC6 = 3  # keeps fc6's 7x7 window centred so the score map covers the input


def bilinear_kernel(size: int):
    """The (size x size) bilinear interpolation kernel Caffe's "bilinear" filler writes per filter."""

    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


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


def _conv_relu(n, bottom, name, relu, num_output, kernel, pad, filler):
    conv = _L().Convolution(bottom, num_output=num_output, kernel_size=kernel, pad=pad, param=LEARN,
                            weight_filler=filler, bias_filler=BIAS_FILLER)
    setattr(n, name, conv)
    setattr(n, relu, _L().ReLU(conv, in_place=True))
    return conv


def _L():
    return import_caffe().layers


def _P():
    return import_caffe().params


def vgg_trunk(n, data, model: ModelConfig) -> tuple[dict[int, object], object]:
    """Add VGG16 cut after `model.stages` stages, plus fc6/fc7 as convolutions, to NetSpec `n`.

    Returns ({stage: pool top}, fc7 top).
    """
    L, P = _L(), _P()
    bottom, pools = data, {}
    for stage in range(1, model.stages + 1):
        for i, name in enumerate(vgg16.stage_convs(stage), 1):
            pad = conv1_pad(model) if (stage, i) == (1, 1) else 1
            bottom = _conv_relu(n, bottom, name, f"relu{stage}_{i}",
                                vgg16.STAGE_CHANNELS[stage - 1], vgg16.CONV_KERNEL, pad, TRUNK_FILLER)
        pools[stage] = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        setattr(n, f"pool{stage}", pools[stage])
        bottom = pools[stage]
    fc = bottom
    for name, relu, drop, kernel, pad in (("fc6", "relu6", "drop6", vgg16.FC_KERNELS["fc6"], fc6_pad(model)),
                                          ("fc7", "relu7", "drop7", vgg16.FC_KERNELS["fc7"], 0)):
        fc = _conv_relu(n, fc, name, relu, model.fc_channels, kernel, pad, TRUNK_FILLER)
        if model.dropout > 0:
            setattr(n, drop, L.Dropout(fc, dropout_ratio=model.dropout, in_place=True))
    return pools, fc


def _score(bottom, k):
    return _L().Convolution(bottom, num_output=k, kernel_size=1, pad=0, param=LEARN,
                            weight_filler=SCORE_FILLER, bias_filler=BIAS_FILLER)


def _upsample(bottom, k, factor):
    return _L().Deconvolution(bottom, param=FROZEN, convolution_param=dict(
        num_output=k, group=k, kernel_size=2 * factor, stride=factor, bias_term=False,
        weight_filler=dict(type="bilinear")))


def _crop(top_from, top_to):
    """Caffe's coord_map crop of `top_from` to `top_to`; ConfigError when no valid offset exists.

    coord_map's own `crop` checks the offset with `assert`s, which `python -O` drops (a negative offset
    then reaches protobuf as a traceback); the same three checks are made here as plain conditions.
    """
    from caffe.coord_map import coord_map_from_to  # noqa: PLC0415 - needs pycaffe
    try:
        axis, scale, shift = coord_map_from_to(top_from, top_to)
    except (AssertionError, RuntimeError) as exc:  # tops without a common map
        problem = str(exc)
    else:
        problem = (f"scale mismatch on crop (a = {scale})" if not (scale == 1).all()
                   else f"cannot crop negative offset (b = {shift})" if not (shift <= 0).all()
                   else f"cannot crop noninteger offset (b = {shift})" if not (np.round(shift) == shift).all()
                   else None)
    if problem is not None:
        raise ConfigError(f"model: the net's geometry cannot be cropped back to the input ({problem}); "
                          "use the default model.pad")
    return _L().Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=list(-np.round(shift).astype(int))))


def _align_skip(n, up, score_pool, stage):
    """Bring the upsampled score and a skip's score onto one grid; returns the two tops to fuse.

    With the reference's 100-pixel pad the skip is the larger map and is cropped to the upsampled one
    (score_pool4c, offset 5). With minimal padding the upsampled map overhangs the skip instead, so it is
    the one cropped (upscore2c); coord_map decides which, from the geometry.
    """
    from caffe.coord_map import coord_map_from_to  # noqa: PLC0415 - needs pycaffe
    _, _, shift = coord_map_from_to(score_pool, up)
    if (shift <= 0).all():
        cropped = _crop(score_pool, up)
        setattr(n, f"score_pool{stage}c", cropped)
        return up, cropped
    cropped = _crop(up, score_pool)
    setattr(n, f"{_name_of(n, up)}c", cropped)
    return cropped, score_pool


def _name_of(n, top):
    return next(name for name, t in n.tops.items() if t is top)


def fcn_head(n, data, pools, fc7, model: ModelConfig) -> object:
    """Add the FCN-32s/16s/8s head on top of the trunk; returns the `score` top (cropped to `data`)."""
    L = _L()
    k = model.num_classes
    n.score_fr = _score(fc7, k)
    plan = upsampling_plan(model)
    top = n.score_fr
    for i, (name, _factor) in enumerate(plan[:-1]):
        up = _upsample(top, k, 2)
        setattr(n, name, up)
        stage = model.stages - 1 - i
        skip_in = pools[stage]
        if model.at_once:
            scaled = L.Scale(skip_in, param=FROZEN, filler=dict(type="constant", value=AT_ONCE_SKIP_SCALE[i + 1]))
            setattr(n, f"scale_pool{stage}", scaled)
            skip_in = scaled
        score_pool = _score(skip_in, k)
        setattr(n, f"score_pool{stage}", score_pool)
        a, b = _align_skip(n, up, score_pool, stage)
        top = L.Eltwise(a, b, operation=_P().Eltwise.SUM)
        setattr(n, f"fuse_pool{stage}", top)
    name, factor = plan[-1]
    up = _upsample(top, k, factor)
    setattr(n, name, up)
    n.score = _crop(up, data)
    return n.score


def _image_transform(config: Config) -> dict:
    t = dict(mean_value=[input_mean(config)] * config.model.input_channels)
    if config.data.scale != 1.0:
        t["scale"] = config.data.scale
    return t


def _data_layers(config: Config, phase: str, split: str):
    """(image top, label top) of LMDB Data layers reading `split` in `phase` ("TRAIN" or "TEST")."""
    caffe = import_caffe()
    L, P = caffe.layers, caffe.params
    paths = dataset_paths(config.data.root)
    include = dict(phase=getattr(caffe, phase))
    image = L.Data(name="data", include=include, transform_param=_image_transform(config),
                   data_param=dict(source=paths[f"{split}_images"], backend=P.Data.LMDB,
                                   batch_size=config.data.batch_size))
    label = L.Data(name="label", include=include,
                   data_param=dict(source=paths[f"{split}_labels"], backend=P.Data.LMDB,
                                   batch_size=config.data.batch_size))
    return image, label


def _check_complete(config: Config) -> None:
    if config.model.num_classes is None:
        raise ConfigError("model.num_classes is not set; set it, or point data.root at an imported dataset")
    if config.data.ignore_label < config.model.num_classes:
        raise ConfigError(f"data.ignore_label {config.data.ignore_label} collides with class ids "
                          f"0..{config.model.num_classes - 1}; use 255")


def train_val_net(config: Config, val_split: str = "val"):
    """The training/validation NetParameter: LMDB Data layers per phase, trunk, head, SoftmaxWithLoss.

    The TRAIN phase reads the dataset's train split, the TEST phase `val_split` (eval scores other splits).
    """
    _check_complete(config)
    caffe = import_caffe()
    L, P = caffe.layers, caffe.params
    n = caffe.NetSpec()
    n.data, n.label = _data_layers(config, "TRAIN", "train")
    pools, fc7 = vgg_trunk(n, n.data, config.model)
    score = fcn_head(n, n.data, pools, fc7, config.model)
    norm = P.Loss.VALID if config.loss.normalize else P.Loss.NONE
    n.loss = L.SoftmaxWithLoss(score, n.label, loss_param=dict(ignore_label=config.data.ignore_label,
                                                               normalization=norm))
    if config.loss.foreground_weight > 0:
        foreground_loss(n, score, n.label, config)
    net = n.to_proto()
    net.name = f"{config.model.arch}-{config.model.stages}stages"
    # The TEST-phase Data layers share the TRAIN ones' names and tops, which one NetSpec cannot hold.
    t = caffe.NetSpec()
    t.data, t.label = _data_layers(config, "TEST", val_split)
    test_layers = t.to_proto().layer
    merged = list(net.layer[:2]) + list(test_layers) + list(net.layer[2:])
    del net.layer[:]
    net.layer.extend(merged)
    return net


def foreground_loss(n, score, label, config: Config) -> None:
    """Add `loss_fg` to NetSpec `n`: the softmax loss of `score` at the foreground pixels only (labels
    1..K-1), averaged over them, with loss_weight loss.foreground_weight. Beside the loss over every
    pixel it weights each foreground pixel (1 + w * N / N_fg) times a background pixel (N pixels, N_fg
    foreground, in the batch), class balancing without a custom layer.

    Stock layers only: the foreground mask f = [label > 0.5] - [label > K - 0.5] (two Threshold, one
    Eltwise SUM), then label_fg = label * f + ignore * (1 - f) (Eltwise PROD, Power, Eltwise SUM), so
    background and ignored pixels carry the ignore label. A batch without foreground adds 0.
    """
    caffe = import_caffe()
    L, P = caffe.layers, caffe.params
    k, ignore = config.model.num_classes, float(config.data.ignore_label)
    n.label_above0 = L.Threshold(label, threshold_param=dict(threshold=0.5))
    n.label_abovek = L.Threshold(label, threshold_param=dict(threshold=k - 0.5))
    n.fg_mask = L.Eltwise(n.label_above0, n.label_abovek, eltwise_param=dict(operation=P.Eltwise.SUM,
                                                                             coeff=[1, -1]))
    n.fg_label_part = L.Eltwise(label, n.fg_mask, eltwise_param=dict(operation=P.Eltwise.PROD))
    n.fg_ignore_part = L.Power(n.fg_mask, power_param=dict(power=1, scale=-ignore, shift=ignore))
    n.label_fg = L.Eltwise(n.fg_label_part, n.fg_ignore_part, eltwise_param=dict(operation=P.Eltwise.SUM))
    n.loss_fg = L.SoftmaxWithLoss(score, n.label_fg, loss_weight=config.loss.foreground_weight,
                                  loss_param=dict(ignore_label=config.data.ignore_label,
                                                  normalization=P.Loss.VALID))


def deploy_net(config: Config, height: int, width: int):
    """The inference NetParameter: Input 1xCxHxW, trunk, head; output blob `score`, no loss."""
    _check_complete(config)
    caffe = import_caffe()
    n = caffe.NetSpec()
    n.data = caffe.layers.Input(shape=dict(dim=[1, config.model.input_channels, height, width]))
    pools, fc7 = vgg_trunk(n, n.data, config.model)
    fcn_head(n, n.data, pools, fc7, config.model)
    net = n.to_proto()
    net.name = f"{config.model.arch}-{config.model.stages}stages-deploy"
    return net


def input_multiple(model: ModelConfig) -> int:
    """Input sizes must be multiples of this (the stride) for `pad: minimal`; 1 otherwise."""
    return model.net_stride if model.pad == "minimal" else 1
