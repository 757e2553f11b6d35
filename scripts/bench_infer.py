"""Measure `fcnseg infer` speed on a run: milliseconds per megapixel, whole image and tiled, as JSON.

Times only the net (fcnseg.infer.predict: reshape, forward, softmax, stitching), after one warm-up
pass per mode, on one frame of an image or stack.

    .venv/bin/python scripts/bench_infer.py --run runs/demo data/hela_raw/hela_images.tif --frame 16
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fcnseg.images import read_stack  # noqa: E402
from fcnseg.infer import load_predictor, make_tiling, predict  # noqa: E402


def ms_per_megapixel(predictor, x, tiling, repeats: int) -> float:
    predict(predictor, x, tiling)  # warm-up: allocations, first reshape
    start = time.perf_counter()
    for _ in range(repeats):
        predict(predictor, x, tiling)
    return 1000 * (time.perf_counter() - start) / repeats / (x.size / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="Image or stack to time on")
    parser.add_argument("--run", required=True, help="Run folder")
    parser.add_argument("--frame", type=int, default=0, help="Frame of a stack (default 0)")
    parser.add_argument("--tile", type=int, default=None, help="Tile side (default: fcnseg's)")
    parser.add_argument("--tile-overlap", type=int, default=None, help="Tile overlap (default: fcnseg's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    predictor = load_predictor(args.run)
    image = read_stack(args.image)[args.frame]
    _, x = predictor.network_input(image, args.image)
    tiling = make_tiling(args.tile, args.tile_overlap, predictor.stride)
    print(json.dumps({
        "run": args.run, "weights": str(predictor.weights), "image": f"{args.image}#{args.frame}",
        "height": int(x.shape[0]), "width": int(x.shape[1]), "tile": tiling.tile, "overlap": tiling.overlap,
        "untiled_ms_per_mpx": round(ms_per_megapixel(predictor, x, None, args.repeats), 1),
        "tiled_ms_per_mpx": round(ms_per_megapixel(predictor, x, tiling, args.repeats), 1),
        "repeats": args.repeats, "cpu_count": os.cpu_count(), "device": "cpu",
    }, indent=2))


if __name__ == "__main__":
    main()
