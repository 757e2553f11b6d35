"""Input conventions of pretrained networks, and folding one into a one-channel conv1_1.

Every framework feeds its VGG16 differently: Caffe's ImageNet model takes B,G,R on 0-255 minus a
per-channel mean; Keras's `vgg16` the same with its own mean values; torchvision (and timm's
`vgg16.tv_in1k`) R,G,B scaled to [0, 1], then (x - mean) / std per channel. An `InputConvention` says
what channel c of conv1_1's input is, given the pixel value g on 0-255:

    x_c = (g * scale - mean[c]) / std[c]        (mean/std listed in conv1_1's own channel order)

`fold_into_conv1` turns a 3-channel conv1_1 into the one-channel conv1_1 that, fed (g - M) * s, computes
exactly what the source conv1_1 computes on the gray image g replicated into its three channels and
preprocessed its own way, at every pixel whose window misses the zero padding (fcn-facts.md,
"Single-channel conversion"). Needs numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Caffe's ImageNet VGG16 expects BGR 0-255 minus this per-channel mean.
VGG16_MEAN_BGR = (104.00699, 116.66877, 122.67892)
# keras.applications.vgg16.preprocess_input ('caffe' mode): RGB -> BGR, minus this mean.
KERAS_MEAN_BGR = (103.939, 116.779, 123.68)
# torchvision's ImageNet normalisation, R,G,B, applied after scaling to [0, 1].
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputConvention:
    """How a framework turns pixels g (0-255) into conv1_1's input: x_c = (g * scale - mean[c]) / std[c]."""

    name: str
    channels: str  # conv1_1's input channel order, "BGR" or "RGB"
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def describe(self) -> str:
        """One line, e.g. 'BGR 0-255 minus mean (104.007, 116.669, 122.679)'."""
        mean = ", ".join(f"{m:g}" for m in self.mean)
        if self.scale == 1.0 and self.std == (1.0, 1.0, 1.0):
            return f"{self.channels} 0-255 minus mean ({mean})"
        std = ", ".join(f"{s:g}" for s in self.std)
        return f"{self.channels} scaled to [0, 1], then (x - ({mean})) / ({std})"

    def default_gray_mean(self) -> float:
        """The gray level M whose replicated pixel is closest to the framework's zero input: mean(mean)/scale."""
        return float(np.mean(self.mean) / self.scale)

    def with_mean(self, mean: Sequence[float]) -> "InputConvention":
        """The same convention with another per-channel mean (in conv1_1's channel order)."""
        return InputConvention(self.name, self.channels, self.scale, tuple(float(m) for m in mean), self.std)


CAFFE = InputConvention("caffe", "BGR", 1.0, VGG16_MEAN_BGR)
KERAS = InputConvention("keras", "BGR", 1.0, KERAS_MEAN_BGR)
TORCHVISION = InputConvention("torchvision", "RGB", 1 / 255, TORCHVISION_MEAN_RGB, TORCHVISION_STD_RGB)
CONVENTIONS = {c.name: c for c in (CAFFE, TORCHVISION, KERAS)}


def fold_into_conv1(weight: np.ndarray, bias: np.ndarray, convention: InputConvention, gray_mean: float,
                    gray_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """conv1_1 for one input channel: (weight O x3xKxK, bias O) -> (O x1xKxK, O), float32.

    The source sees x_c = a_c g + b_c with a_c = scale / std_c and b_c = -mean_c / std_c; the new net sees
    u = (g - M) * s, i.e. g = u / s + M. So W' = sum_c (a_c / s) W_c and
    b' = b + sum_c (a_c M + b_c) sum_taps W_c make W' * u + b' equal sum_c W_c * x_c + b wherever the
    kernel window sees no zero padding. Computed in float64.
    """
    w = weight.astype(np.float64)
    std = np.asarray(convention.std, dtype=np.float64)
    gain = convention.scale / std
    offset = -np.asarray(convention.mean, dtype=np.float64) / std
    new_weight = np.einsum("ochw,c->ohw", w, gain / gray_scale)[:, None]
    new_bias = bias.astype(np.float64) + np.einsum("ochw,c->o", w, gain * gray_mean + offset)
    return new_weight.astype(np.float32), new_bias.astype(np.float32)


def preprocess_gray(gray: np.ndarray, convention: InputConvention) -> np.ndarray:
    """The 3 x H x W input the source net gets for gray image `gray` (0-255) replicated: its own preprocessing."""
    g = np.asarray(gray, dtype=np.float64)
    return np.stack([(g * convention.scale - m) / s for m, s in zip(convention.mean, convention.std)])
