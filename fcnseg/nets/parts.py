"""The NetSpec pieces every arch is made of: a convolution block (Convolution, then BatchNorm + Scale when
`model.norm` is batch, then ReLU), fixed bilinear upsampling, score layers and coord_map crops.

Fillers are written into every learnable layer: Caffe's default is constant 0, which leaves a ReLU net dead
when no pretrained weights overwrite it (the seed's failure).

BatchNorm: its three blobs (mean, variance, the moving-average factor) are statistics, not parameters, so they
carry `lr_mult: 0` explicitly (BVLC Caffe aborts on any other value; Caffes before 2016 would otherwise let SGD
move them). train_val leaves `use_global_stats` unset, so Caffe uses the batch's statistics in the TRAIN phase
and the running averages in the TEST phase (validation); deploy sets it true, so the net computes the same
whichever phase it is loaded in. The convolution before a BatchNorm keeps its bias (the normalisation cancels
it, and keeping it lets an ImageNet VGG16 without BatchNorm transplant unchanged).
"""
from __future__ import annotations

import numpy as np

from ..caffe_env import import_caffe
from ..config import ModelConfig
from ..errors import ConfigError

TRUNK_FILLER = dict(type="msra")
BIAS_FILLER = dict(type="constant", value=0)
# The reference starts score layers at zero: with pretrained features the first steps then move only the
# classifier, and nothing random is added to the large VGG activations.
SCORE_FILLER = dict(type="constant", value=0)
LEARN = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
FROZEN = [dict(lr_mult=0)]
STATISTICS = [dict(lr_mult=0, decay_mult=0)] * 3  # BatchNorm's mean, variance and moving-average factor
# The running averages' decay per iteration (PyTorch's default momentum 0.1): the TEST phase then uses statistics
# of the last ~10 batches. Caffe's default 0.999 averages over the first thousand iterations, when the weights
# were far from the final ones: a short from-scratch run validated with it scores far below its training.
MOVING_AVERAGE_FRACTION = 0.9
BN_EPS = 1e-5


def L():
    """caffe.layers (pycaffe is imported on first use)."""
    return import_caffe().layers


def P():
    """caffe.params."""
    return import_caffe().params


def bilinear_kernel(size: int):
    """The (size x size) bilinear interpolation kernel Caffe's "bilinear" filler writes per filter."""

    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


def conv_block(n, bottom, name: str, relu: str, num_output: int, kernel: int, pad: int, model: ModelConfig):
    """Add `name` (Convolution), with `model.norm: batch` `{name}_bn` (BatchNorm) and `{name}_scale` (Scale,
    with bias), then `relu` (ReLU), to NetSpec `n`; all but the convolution in place. Returns the top."""
    conv = L().Convolution(bottom, num_output=num_output, kernel_size=kernel, pad=pad, param=LEARN,
                           weight_filler=TRUNK_FILLER, bias_filler=BIAS_FILLER)
    setattr(n, name, conv)
    if model.norm == "batch":
        bn_param = dict(moving_average_fraction=MOVING_AVERAGE_FRACTION, eps=BN_EPS)
        setattr(n, f"{name}_bn", L().BatchNorm(conv, in_place=True, param=STATISTICS, batch_norm_param=bn_param))
        setattr(n, f"{name}_scale", L().Scale(conv, in_place=True, scale_param=dict(
            bias_term=True, filler=dict(type="constant", value=1), bias_filler=BIAS_FILLER)))
    setattr(n, relu, L().ReLU(conv, in_place=True))
    return conv


def freeze_statistics(net) -> None:
    """Set `use_global_stats: true` on every BatchNorm of NetParameter `net` (a deploy net), in place."""
    for layer in net.layer:
        if layer.type == "BatchNorm":
            layer.batch_norm_param.use_global_stats = True


def score(bottom, k: int):
    """A 1x1 score Convolution to `k` classes, starting at zero."""
    return L().Convolution(bottom, num_output=k, kernel_size=1, pad=0, param=LEARN,
                           weight_filler=SCORE_FILLER, bias_filler=BIAS_FILLER)


def upsample(bottom, k: int, factor: int):
    """A fixed bilinear Deconvolution by `factor` of `k` channels (kernel 2f, stride f, group k, lr_mult 0)."""
    return L().Deconvolution(bottom, param=FROZEN, convolution_param=dict(
        num_output=k, group=k, kernel_size=2 * factor, stride=factor, bias_term=False,
        weight_filler=dict(type="bilinear")))


def coord_map_from_to(top_from, top_to):
    """(axis, scale, shift) mapping `top_from`'s coordinates to `top_to`'s: Caffe's coord_map walk, which also
    passes through Concat (by its first bottom, as `geometry` does); pycaffe's own stops there, so a U-Net
    decoder level after the first could not be aligned with it."""
    from caffe.coord_map import UndefinedMapException, compose, coord_map, inverse  # noqa: PLC0415 - needs pycaffe

    def walk(start, stop_at=None):
        maps, frontier = {start: (None, 1, 0)}, [start]
        while frontier:
            top = frontier.pop()
            if stop_at is not None and top in stop_at:
                return compose(maps[top], inverse(stop_at[top]))
            kind = top.fn.type_name
            try:
                step = (None, 1, 0) if kind == "Concat" else coord_map(top.fn)
            except UndefinedMapException:
                continue
            for bottom in top.fn.inputs[:1] if kind in ("Crop", "Concat") else top.fn.inputs:
                maps[bottom] = compose(maps[top], step)
                frontier.append(bottom)
        return maps if stop_at is None else None

    found = walk(top_to, stop_at=walk(top_from))
    if found is None:
        raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")
    return found


def crop(top_from, top_to):
    """Caffe's coord_map crop of `top_from` to `top_to`; ConfigError when no valid offset exists.

    coord_map's own `crop` checks the offset with `assert`s, which `python -O` drops (a negative offset
    then reaches protobuf as a traceback); the same three checks are made here as plain conditions.
    """
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
    return L().Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=list(-np.round(shift).astype(int))))


def align(n, a, b, name_a: str, name_b: str, same_size: bool = False):
    """Bring tops `a` and `b` onto one grid: the one that overhangs the other is cropped to it (coord_map
    decides which, from the geometry) and named `{name}c`. Returns the two tops, in the order given.

    `same_size`: the caller guarantees both have one size (input sizes a multiple of the stride, same
    padding), so a zero offset adds no Crop (Caffe's CPU Crop copies row by row: a third of a U-Net's time)."""
    _, _, shift = coord_map_from_to(b, a)
    if same_size and (shift == 0).all():
        return a, b
    if (shift <= 0).all():
        cropped = crop(b, a)
        setattr(n, f"{name_b}c", cropped)
        return a, cropped
    cropped = crop(a, b)
    setattr(n, f"{name_a}c", cropped)
    return cropped, b


def name_of(n, top) -> str:
    """The name NetSpec `n` holds `top` under."""
    return next(name for name, t in n.tops.items() if t is top)
