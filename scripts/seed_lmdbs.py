"""Write the HeLa demo frames as the seed's user keeps their data (tests/fixtures/seed/train_val.prototxt):
Caffe LMDBs `train_lmdb`, `train_label_lmdb`, `val_lmdb`, `val_label_lmdb` of one-channel uint8 Datums, one
tile per key, written with pycaffe's own `caffe.io.array_to_datum`, and the per-pixel mean of the train
tiles as `FCN32_mean.binaryproto` (what Caffe's compute_image_mean writes).

Frames 0-15 train, 16-19 val (split by frame). Each 700 x 1100 uint16 frame is cut into the whole TILE x TILE
tiles that fit (no padding), windowed to 8 bits with the 1st-99.8th percentiles of the train frames, and its
instance masks become 0/1 labels.

    .venv/bin/fcnseg data fetch-demo -o data/hela_raw
    .venv/bin/python scripts/seed_lmdbs.py data/hela_raw -o data/seed_lmdbs
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe
import lmdb
import tifffile


def tiles(frame: np.ndarray, size: int):
    h, w = frame.shape
    for y in range(0, h - size + 1, size):
        for x in range(0, w - size + 1, size):
            yield frame[y:y + size, x:x + size]


def write_lmdb(path: Path, arrays) -> int:
    env = lmdb.open(str(path), map_size=1 << 32)
    count = 0
    with env.begin(write=True) as txn:
        for count, arr in enumerate(arrays, 1):
            txn.put(b"%08d" % (count - 1), caffe.io.array_to_datum(arr[None]).SerializeToString())
    env.close()
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path,
                        help="folder with hela_images.tif and hela_masks.tif (fcnseg data fetch-demo)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for the four LMDBs and the mean")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--val-from", type=int, default=16, help="first val frame (default 16: frames 16-19)")
    args = parser.parse_args(argv)

    images = tifffile.imread(args.raw / "hela_images.tif")
    masks = tifffile.imread(args.raw / "hela_masks.tif")
    train, val = range(args.val_from), range(args.val_from, len(images))
    low, high = np.percentile(images[list(train)], (1, 99.8))
    eight = np.clip(np.rint((images.astype(np.float64) - low) * 255 / (high - low)), 0, 255).astype(np.uint8)
    labels = (masks > 0).astype(np.uint8)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, frames in (("train", train), ("val", val)):
        image_tiles = [t for i in frames for t in tiles(eight[i], args.tile)]
        label_tiles = [t for i in frames for t in tiles(labels[i], args.tile)]
        n = write_lmdb(args.out / f"{split}_lmdb", image_tiles)
        write_lmdb(args.out / f"{split}_label_lmdb", label_tiles)
        fg = np.mean([t.mean() for t in label_tiles])
        print(f"{split}: {n} tiles of {args.tile}x{args.tile} from frames {frames.start}-{frames.stop - 1}, "
              f"foreground {100 * fg:.1f} %")
        if split == "train":
            mean = np.mean(np.stack(image_tiles).astype(np.float64), axis=0)[None, None]
            (args.out / "FCN32_mean.binaryproto").write_bytes(caffe.io.array_to_blobproto(mean).SerializeToString())
            print(f"mean: {args.out / 'FCN32_mean.binaryproto'} (1x1x{args.tile}x{args.tile}, "
                  f"average {mean.mean():.3f})")
    print(f"window {low:.0f}..{high:.0f} -> 0..255; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
