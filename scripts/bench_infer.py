"""Measure `fcnseg infer` speed on a run: milliseconds per megapixel, whole image and tiled, as JSON.

Times only the net (fcnseg.infer.predict: reshape, forward, softmax, stitching), after one warm-up
pass per mode, on one frame of an image or stack. With --onnx MODEL (written by `fcnseg export` from
the run) the same is timed for onnxruntime, and the label agreement of the two on --compare-frames
is reported.

    .venv/bin/python scripts/bench_infer.py --run runs/demo data/hela_raw/hela_images.tif --frame 16
    .venv/bin/python scripts/bench_infer.py --run runs/demo --onnx demo.onnx data/hela_raw/hela_images.tif \
        --frame 16 --compare-frames 16-19
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fcnseg.images import read_stack
from fcnseg.predict import load_onnx_predictor, load_predictor, make_tiling, predict


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
    parser.add_argument("--onnx", default=None, help="Also time this exported model (onnxruntime, CPU)")
    parser.add_argument("--compare-frames", default=None, metavar="A-B",
                        help="Frames on which to compare Caffe's and onnxruntime's labels (with --onnx)")
    args = parser.parse_args()

    stack = read_stack(args.image)
    predictors = {"caffe": load_predictor(args.run)}
    if args.onnx:
        predictors["onnxruntime"] = load_onnx_predictor(args.onnx)
    report = {"run": args.run, "weights": str(predictors["caffe"].weights), "image": f"{args.image}#{args.frame}"}
    for name, predictor in predictors.items():
        _, x = predictor.network_input(stack[args.frame], args.image)
        tiling = make_tiling(args.tile, args.tile_overlap, predictor.stride)
        report.update({"height": int(x.shape[0]), "width": int(x.shape[1]), "tile": tiling.tile,
                       "overlap": tiling.overlap})
        report[f"{name}_untiled_ms_per_mpx"] = round(ms_per_megapixel(predictor, x, None, args.repeats), 1)
        report[f"{name}_tiled_ms_per_mpx"] = round(ms_per_megapixel(predictor, x, tiling, args.repeats), 1)
    if args.onnx and args.compare_frames:
        first, last = (int(v) for v in args.compare_frames.split("-"))
        same = total = 0
        for frame in range(first, last + 1):
            labels = [predict(p, p.network_input(stack[frame])[1]).argmax(0) for p in predictors.values()]
            same, total = same + int((labels[0] == labels[1]).sum()), total + labels[0].size
        report["label_agreement"] = {"frames": args.compare_frames, "pixels": total, "same": same,
                                     "fraction": same / total}
    report.update({"repeats": args.repeats, "cpu_count": os.cpu_count(), "device": "cpu"})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
