"""The baseline the demo is compared with: Otsu's threshold per frame (scikit-image), scored with the
same confusion-matrix metrics as fcnseg eval, against the binarized reference masks.

Usage: python scripts/otsu_baseline.py IMAGES.tif MASKS.tif [--frames 16-19]
"""
import argparse

import numpy as np
import tifffile
from skimage.filters import threshold_otsu

from fcnseg.metrics import confusion, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images"), ap.add_argument("masks")
    ap.add_argument("--frames", default="16-19", help="frame range, e.g. 16-19")
    args = ap.parse_args()
    lo, hi = (int(v) for v in args.frames.split("-"))
    images, masks = tifffile.imread(args.images), tifffile.imread(args.masks)
    hist = np.zeros((2, 2), np.int64)
    for i in range(lo, hi + 1):
        pred = (images[i] > threshold_otsu(images[i])).astype(np.int64)
        hist += confusion((masks[i] > 0).astype(np.int64), pred, 2)
    s = scores(hist)
    print(f"Otsu baseline, frames {args.frames}: mean IU {s['mean_iu']:.4f}, pixel acc {s['pixel_acc']:.4f}")


if __name__ == "__main__":
    main()
