"""The training recipes fcnseg knows to work: the one place their numbers are written.

- `SUMMED`: the FCN reference's VGG recipe. The loss is summed over every pixel (loss.normalize false),
  so base_lr is tiny, 1e-10 at momentum 0.99, tuned on PASCAL VOC images of ~500 x 500
  (`REFERENCE_PIXELS`). Each skip stage added by staged fine-tuning divides it by 100
  (`STAGE_LR_FACTOR`: 16s at 1e-12, 8s at 1e-14).
- `NORMALIZED`: the FCN-AlexNet reference. The loss is averaged over pixels, 1e-4 at momentum 0.9.
- `SCRATCH`: no pretrained weights. Adam at ~1e-4 on a normalized loss, at most 3 pooling stages, msra
  fillers (measured on the HeLa demo's FCN).
- `SCRATCH_NORM`: no pretrained weights, BatchNorm after every convolution: Adam at 1e-3 decaying linearly to 0
  (poly, `SCRATCH_NORM_POWER`), `SCRATCH_NORM_BATCH` tiles per step, any depth (measured on the HeLa demo's U-Net).

Used by config (the solver defaults), doctor (the effective-step check and its advice), train (the
messages when a run does not learn or diverges) and weights (the from-scratch warning); `sparse_classes` by
data (tiling, `data show`) and resolve (`loss.foreground_weight: auto`). Imports nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

REFERENCE_PIXELS = 500 * 500  # the VGG recipe's lr was tuned on PASCAL VOC images, ~500x500
STAGE_LR_FACTOR = 0.01  # the reference divides lr by 100 per skip stage: 1e-10, 1e-12, 1e-14


@dataclass(frozen=True)
class Recipe:
    """A solver setting known to train: `solver` type at `base_lr` and `momentum`, on a loss normalized
    over pixels or summed (`normalize`)."""

    solver: str
    base_lr: float
    momentum: float
    normalize: bool

    @property
    def step(self) -> float:
        """The effective step lr / (1 - momentum) (per pixel-averaged gradient for a normalized loss)."""
        return self.base_lr / (1 - self.momentum)

    @property
    def lr(self) -> str:
        """base_lr as people write it: 1e-10, 1e-4."""
        return sci(self.base_lr)


def sci(x: float) -> str:
    """A one-digit power-of-ten text, as learning rates are written: 1e-10, 1e-4, 2e-4."""
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


SUMMED = Recipe("SGD", 1e-10, 0.99, normalize=False)
NORMALIZED = Recipe("SGD", 1e-4, 0.9, normalize=True)
SCRATCH = Recipe("Adam", 1e-4, 0.9, normalize=True)
# With BatchNorm after every convolution (model.norm: batch) a from-scratch net trains at 10x the step, at any depth
# (measured on the HeLa demo's U-Net, configs/demo_hela.yaml).
SCRATCH_NORM = Recipe("Adam", 1e-3, 0.9, normalize=True)
# ... with the rate decaying linearly to 0 at max_iter (lr_policy poly, power 1) and 4 equal-size tiles per step, so
# that BatchNorm's statistics (and the running averages validation uses) do not jump from one image to the next.
SCRATCH_NORM_POWER = 1.0
SCRATCH_NORM_BATCH = 4
# Classes below this fraction of the labelled train pixels are sparse: the import keeps empty tiles and augments
# for them, `data show` warns, and `loss.foreground_weight: auto` weights the loss towards them.
MIN_CLASS_FRACTION = 0.02
# The foreground weight `auto` picks for a sparse dataset (measured on the 0.6 %-foreground bacteria), else 0.
SPARSE_FOREGROUND_WEIGHT = 1.0
# `loss.foreground_weight: auto` for data imported with --instances. Measured on the HeLa demo (docs/training.md,
# "Objects"): at 0 the 3-class U-Net still labels every val pixel background after 180 of its 300 iterations (the
# object pixels split between interior and boundary); at 1 it separates all three classes by iteration 30.
OBJECT_FOREGROUND_WEIGHT = 1.0
SCRATCH_MAX_STAGES = 3  # pooling stages (stride 8) measured to learn from scratch


def sparse_classes(class_pixels, names) -> list[str]:
    """The names of the classes below MIN_CLASS_FRACTION of the labelled pixels `class_pixels` (one count per class
    id, `names` as long): the one test behind the import's tiling, `data show`'s warning and
    `loss.foreground_weight: auto`."""
    labelled = sum(int(c) for c in class_pixels)
    return [names[i] for i, c in enumerate(class_pixels) if labelled and int(c) / labelled < MIN_CLASS_FRACTION]
