"""Measure `fcnseg infer` images per second in one process and on a local Dask cluster, as JSON.

Writes the first --frames frames of STACK to a stack of its own, then times whole `fcnseg infer`
commands on it (wall clock, start-up and writing included), one after the other:
  single-1-thread   one process, OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1
  workers-1         --workers 1 (one single-threaded worker process, the same thread settings)
  workers-2         --workers 2
  single-default    one process with the default threads (OpenBLAS and Caffe's OpenMP use every core)
and says whether each one's outputs are byte-identical to single-1-thread's.

    .venv/bin/python scripts/bench_distribute.py --run runs/demo data/hela_raw/hela_images.tif --frames 6
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

import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fcnseg.distribute import MANIFEST_FILE, SINGLE_THREAD_ENV  # noqa: E402
from fcnseg.images import read_stack  # noqa: E402

CONFIGS = {
    "single-1-thread": (SINGLE_THREAD_ENV, []),
    "workers-1": ({}, ["--workers", "1"]),
    "workers-2": ({}, ["--workers", "2"]),
    "single-default": ({}, []),
}


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != MANIFEST_FILE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stack", help="Multi-page TIFF to take frames from")
    parser.add_argument("--run", required=True, help="Run folder")
    parser.add_argument("--frames", type=int, default=6, help="How many frames (default 6)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="Which of: " + ", ".join(CONFIGS))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_distribute_"))
    frames = read_stack(args.stack)[:args.frames]
    stack = work / "frames.tif"
    tifffile.imwrite(stack, frames, photometric="minisblack")
    base_env = {k: v for k, v in os.environ.items() if k not in SINGLE_THREAD_ENV}
    base_env["PYTHONPATH"] = str(REPO)
    report = {"run": args.run, "frames": len(frames), "frame_shape": list(frames.shape[1:]),
              "cpus": os.cpu_count(), "results": {}}
    reference = None
    for name in args.configs.split(","):
        env_extra, extra = CONFIGS[name]
        out = work / name
        command = [sys.executable, "-m", "fcnseg.cli", "infer", "--run", args.run, str(stack), "-o", str(out), *extra]
        start = time.perf_counter()
        done = subprocess.run(command, env={**base_env, **env_extra}, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{name}: exit {done.returncode}\n{done.stderr}")
        files = outputs(out)
        reference = files if reference is None else reference
        report["results"][name] = {"seconds": round(seconds, 1), "images_per_second": round(len(frames) / seconds, 3),
                                   "identical_to_first": files == reference, "summary": done.stdout.strip()}
        print(name, report["results"][name], file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
