"""Peak memory of one large image labelled whole (`fcnseg infer`) and streamed tile by tile (a Dask
worker's `fcnseg.distribute.label_file`), as JSON.

Writes a synthetic uint16 SIZE x SIZE TIFF (uncompressed), then runs each way in a fresh single-threaded
process with --tile TILE and --probs, and reports its peak resident memory (ru_maxrss), wall time and
whether the two wrote the same bytes.

    .venv/bin/python scripts/bench_stream_memory.py --run runs/demo --size 2048 --tile 256
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fcnseg.distribute import SINGLE_THREAD_ENV  # noqa: E402

CHILD = """
import resource, sys
from pathlib import Path
from fcnseg.infer import label_and_save, read_frames
from fcnseg.predict import InferOptions, load_predictor
from fcnseg import distribute
run, image, out, tile, how = sys.argv[1:]
options = InferOptions(probs=True, tile=int(tile))
if how == "whole":
    stem, where, array = read_frames(Path(image), False)[0]
    label_and_save(load_predictor(run), array, where, Path(out), stem, options)
else:
    task = distribute.label_file(image, run, options, out)
    assert task.failure is None and not distribute._STACK, task.failure
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="Run folder")
    parser.add_argument("--size", type=int, default=2048, help="Image side in pixels (default 2048)")
    parser.add_argument("--tile", type=int, default=256, help="Tile side (default 256)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    yy, xx = np.mgrid[:args.size, :args.size]
    image = (20000 + 15000 * np.sin(yy / 23.0) * np.cos(xx / 17.0)).astype(np.uint16)
    tifffile.imwrite(work / "large.tif", image)
    env = {**os.environ, **SINGLE_THREAD_ENV, "PYTHONPATH": str(REPO)}
    report = {"run": args.run, "size": args.size, "tile": args.tile, "results": {}}
    for how in ("whole", "streamed"):
        out = work / how
        out.mkdir()
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CHILD, args.run, str(work / "large.tif"), str(out),
                               str(args.tile), how], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{how}: exit {done.returncode}\n{done.stderr}")
        report["results"][how] = {"peak_rss_mb": round(int(done.stdout.split()[-1]) / 1024),
                                  "seconds": round(time.perf_counter() - start, 1)}
        print(how, report["results"][how], file=sys.stderr, flush=True)
    report["identical"] = all((work / "whole" / name).read_bytes() == (work / "streamed" / name).read_bytes()
                              for name in ("large.png", "large_probs.npy"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
