"""fcnseg/conventions.py: folding each framework's input convention into a one-channel conv1_1."""
from __future__ import annotations

import numpy as np
import pytest

from fcnseg.conventions import CAFFE, CONVENTIONS, KERAS, TORCHVISION, fold_into_conv1, preprocess_gray


def conv3x3_valid(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Plain cross-correlation without padding (C x H x W, O x C x 3 x 3) -> O x (H-2) x (W-2), float64."""
    h, wd = x.shape[1] - 2, x.shape[2] - 2
    out = np.zeros((w.shape[0], h, wd)) + b[:, None, None]
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("oc,chw->ohw", w[:, :, dy, dx], x[:, dy:dy + h, dx:dx + wd])
    return out


@pytest.mark.parametrize("name", list(CONVENTIONS))
@pytest.mark.parametrize("gray_mean,gray_scale", [(None, 1.0), (0.0, 1.0), (128.0, 1 / 255)])
def test_folded_conv1_equals_the_source_on_the_replicated_gray_image(name, gray_mean, gray_scale):
    convention = CONVENTIONS[name]
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    m = convention.default_gray_mean() if gray_mean is None else gray_mean
    gray = rng.uniform(0, 255, (12, 15))
    w1, b1 = fold_into_conv1(w, b, convention, m, gray_scale)
    assert w1.shape == (8, 1, 3, 3) and b1.shape == (8,) and w1.dtype == b1.dtype == np.float32
    source = conv3x3_valid(preprocess_gray(gray, convention), w.astype(np.float64), b.astype(np.float64))
    mine = conv3x3_valid(((gray - m) * gray_scale)[None], w1.astype(np.float64), b1.astype(np.float64))
    np.testing.assert_allclose(mine, source, rtol=1e-5, atol=1e-5 * np.abs(source).max())


def test_conventions_are_the_frameworks_own():
    gray = np.full((1, 1), 255.0)
    # torchvision: RGB/255 then (x - mean)/std, so white is (1 - 0.485)/0.229 in the R channel
    assert preprocess_gray(gray, TORCHVISION)[:, 0, 0] == pytest.approx([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                                                        (1 - 0.406) / 0.225])
    assert preprocess_gray(gray, KERAS)[:, 0, 0] == pytest.approx([255 - 103.939, 255 - 116.779, 255 - 123.68])
    assert preprocess_gray(gray, CAFFE)[:, 0, 0] == pytest.approx([255 - 104.00699, 255 - 116.66877, 255 - 122.67892])
    assert TORCHVISION.default_gray_mean() == pytest.approx(255 * (0.485 + 0.456 + 0.406) / 3)
    assert "scaled to [0, 1]" in TORCHVISION.describe() and KERAS.describe().startswith("BGR 0-255 minus mean")


def test_a_wrong_convention_is_detectably_wrong():
    """Folding torchvision's convention into Keras weights gives another net: the test above can fail."""
    rng = np.random.default_rng(4)
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    gray = rng.uniform(0, 255, (8, 8))
    w1, b1 = fold_into_conv1(w, b, TORCHVISION, 114.0)
    source = conv3x3_valid(preprocess_gray(gray, KERAS), w, b)
    mine = conv3x3_valid((gray - 114.0)[None], w1.astype(np.float64), b1.astype(np.float64))
    assert not np.allclose(mine, source, rtol=1e-3)
