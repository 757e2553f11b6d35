"""The baseline the demo is compared with: Otsu's threshold per frame (scikit-image), scored with the
same confusion-matrix metrics as fcnseg eval, against the binarized reference masks; and its connected
components as objects, scored as `fcnseg eval --instances` scores objects (AP@0.5, SEG), against the masks' ids.

Usage: python scripts/otsu_baseline.py IMAGES.tif MASKS.tif [--frames 16-19]
"""
import argparse

import numpy as np
import tifffile
from skimage.filters import threshold_otsu
from skimage.measure import label

from fcnseg.metrics import confusion, scores
from fcnseg.object_metrics import pool_scores, score_objects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images"), ap.add_argument("masks")
    ap.add_argument("--frames", default="16-19", help="frame range, e.g. 16-19")
    args = ap.parse_args()
    lo, hi = (int(v) for v in args.frames.split("-"))
    images, masks = tifffile.imread(args.images), tifffile.imread(args.masks)
    hist = np.zeros((2, 2), np.int64)
    objects = []
    for i in range(lo, hi + 1):
        pred = (images[i] > threshold_otsu(images[i])).astype(np.int64)
        hist += confusion((masks[i] > 0).astype(np.int64), pred, 2)
        objects.append(score_objects(masks[i], label(pred, connectivity=1)))
    s, o = scores(hist), pool_scores(objects)
    print(f"Otsu baseline, frames {args.frames}: mean IU {s['mean_iu']:.4f}, pixel acc {s['pixel_acc']:.4f}; "
          f"connected components as objects: AP@0.5 {o['ap50']:.4f}, SEG {o['seg']:.4f}")


if __name__ == "__main__":
    main()
