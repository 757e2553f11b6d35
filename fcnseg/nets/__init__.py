"""The nets fcnseg builds with `caffe.NetSpec`, for single-channel (or C-channel) input: the FCN-32s/16s/8s on a
VGG16 trunk (`fcn`) and the U-Net (`unet`), from the same pieces (`parts`), with or without BatchNorm.

Public entry points: `train_val_net(config)`, `deploy_net(config, height, width)` (both return a
caffe_pb2.NetParameter), `upsampling_plan(model)` (the upsampling layers and their factors, for reports and
tests), `fixed_layers(model)` (the layers that never learn) and `input_multiple(model)`.
"""
from __future__ import annotations

from ..caffe_env import import_caffe
from ..config import UNET, Config, ModelConfig, foreground_weight, input_mean
from ..errors import ConfigError
from ..files import dataset_paths
from . import fcn, unet
from .fcn import fcn_head, vgg_trunk
from .parts import bilinear_kernel, freeze_statistics

__all__ = ["train_val_net", "deploy_net", "upsampling_plan", "fixed_layers", "input_multiple", "foreground_loss",
           "body", "bilinear_kernel", "fcn_head", "vgg_trunk"]


def upsampling_plan(model: ModelConfig) -> list[tuple[str, int]]:
    """(layer name, factor) of every upsampling Deconvolution, in order; the factors multiply to the stride."""
    return unet.upsampling_plan(model) if model.arch == UNET else fcn.upsampling_plan(model)


def fixed_layers(model: ModelConfig) -> set[str]:
    """Names of the layers that never learn (lr_mult 0): the FCNs' bilinear upsampling and at-once skip scales;
    none in a U-Net (its up-convolutions learn)."""
    return set() if model.arch == UNET else fcn.fixed_layers(model)


def body(n, data, model: ModelConfig) -> object:
    """Add the net of `model.arch` on `data` to NetSpec `n`; returns its `score` top (cropped to `data`)."""
    if model.arch == UNET:
        return unet.unet(n, data, model)
    pools, fc7 = vgg_trunk(n, data, model)
    return fcn_head(n, data, pools, fc7, model)


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
    score = body(n, n.data, config.model)
    norm = P.Loss.VALID if config.loss.normalize else P.Loss.NONE
    n.loss = L.SoftmaxWithLoss(score, n.label, loss_param=dict(ignore_label=config.data.ignore_label,
                                                               normalization=norm))
    if foreground_weight(config) > 0:
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
    n.loss_fg = L.SoftmaxWithLoss(score, n.label_fg, loss_weight=foreground_weight(config),
                                  loss_param=dict(ignore_label=config.data.ignore_label,
                                                  normalization=P.Loss.VALID))


def deploy_net(config: Config, height: int, width: int):
    """The inference NetParameter: Input 1xCxHxW, trunk, head; output blob `score`, no loss."""
    _check_complete(config)
    caffe = import_caffe()
    n = caffe.NetSpec()
    n.data = caffe.layers.Input(shape=dict(dim=[1, config.model.input_channels, height, width]))
    body(n, n.data, config.model)
    net = n.to_proto()
    net.name = f"{config.model.arch}-{config.model.stages}stages-deploy"
    freeze_statistics(net)
    return net


def input_multiple(model: ModelConfig) -> int:
    """Input sizes must be multiples of this (the stride) for `pad: minimal`; 1 otherwise."""
    return model.net_stride if model.pad == "minimal" else 1
