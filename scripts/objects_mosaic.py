"""Do tiling and Dask change the objects? `fcnseg infer --instances` on a 4096 x 4096 mosaic of HeLa frames,
tiled at 256 (overlap 64), tiled at 1024 (overlap 128), and on 2 Dask workers (tiled at 1024, overlap 128, the
image streamed tile by tile), compared object by object.

    .venv/bin/python scripts/objects_mosaic.py RUN data/hela_raw/hela_images.tif OUT_DIR

Prints, for each pair of ways, the object counts, how many objects are identical (same pixels), matched at
IoU > 0.5 and > 0.9, and the pixels whose object membership differs; writes OUT_DIR/mosaic_objects.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from fcnseg.object_metrics import matched, overlaps

SIDE = 4096


def mosaic(stack: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Frames laid side by side, row after row, cropped to side x side."""
    h, w = stack.shape[1:]
    rows, cols = -(-side // h), -(-side // w)
    out = np.zeros((rows * h, cols * w), stack.dtype)
    for i in range(rows * cols):
        out[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = stack[i % len(stack)]
    return out[:side, :side]


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """How the objects of two id images agree."""
    table = overlaps(a, b)
    identical = int(np.sum((table.pair_shared == table.true_areas[table.pair_true])
                           & (table.pair_shared == table.pred_areas[table.pair_pred])))
    # Pixels in a different object: foreground in one only, or in objects that are not each other's match.
    pairs = matched(table, 0.5)
    mapping = np.zeros(int(a.max()) + 1, np.int64)
    mapping[table.true_ids[table.pair_true[pairs]]] = table.pred_ids[table.pair_pred[pairs]]
    differ = int(np.count_nonzero(mapping[a] != b))
    return {"objects": [len(table.true_ids), len(table.pred_ids)], "identical": identical,
            "matched_iou_0.5": int(len(pairs)), "matched_iou_0.9": int(len(matched(table, 0.9))),
            "pixels_differing": differ}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("stack")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    image = mosaic(tifffile.imread(args.stack))
    source = args.out / "mosaic.tif"
    tifffile.imwrite(source, image)  # uncompressed: the Dask path streams it tile by tile
    fcnseg = str(Path(sys.executable).with_name("fcnseg"))
    ways = {"tile 256": ["--tile", "256", "--tile-overlap", "64"],
            "tile 1024": ["--tile", "1024", "--tile-overlap", "128"],
            "2 Dask workers (tile 1024)": ["--tile", "1024", "--tile-overlap", "128", "--workers", "2"]}
    ids, seconds = {}, {}
    for name, extra in ways.items():
        out = args.out / name.split(" (")[0].replace(" ", "_")
        start = time.perf_counter()
        subprocess.run([fcnseg, "infer", "--run", args.run, str(source), "-o", str(out), "--instances", *extra],
                       check=True, stdout=subprocess.DEVNULL)
        seconds[name] = round(time.perf_counter() - start, 1)
        ids[name] = tifffile.imread(out / "mosaic_instances.tif")
        print(f"{name}: {int(ids[name].max())} objects, {ids[name].dtype}, {seconds[name]} s", flush=True)
    names = list(ways)
    report = {"side": SIDE, "seconds": seconds, "pairs": {}}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            result = compare(ids[a], ids[b])
            report["pairs"][f"{a} vs {b}"] = result
            print(f"{a} vs {b}: {result}")
    (args.out / "mosaic_objects.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
