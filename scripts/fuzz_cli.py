"""CLI-level smoke run (issue 39): seeded mutations of a run's own files handed to the commands that read them.

    nice -n 10 .venv/bin/python scripts/fuzz_cli.py --run runs/demo --data data/hela --work /tmp/fuzz_cli

Each case copies one file of the run (or of its dataset), mutates it (tests/fuzz_targets.mutate: bit flips,
truncation, inserted bytes, zeroed runs, 64 bytes flipped every 4096, empty files) and runs `fcnseg ...` on it
in a new process. A run passes when it exits 0 or 2 (1 where the command documents it: doctor's findings,
infer's partial failures), prints no traceback, is not killed by a signal and ends within --timeout (60 s).
Besides the random cases: the train LMDB with 64 bytes flipped every 7th page given to `train`, `eval`,
`data import` and `data check`, and one flipped weight bit in best.caffemodel given to `infer` (exit 2 wanted,
on a run that has its checksum manifest). Not a test: minutes, and it needs a trained run. The summary goes to
WORK/summary.json; exit 1 when a run failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzz_targets as ft  # noqa: E402 - after tests/ is on the path
from fcnseg.caffemodel import read_caffemodel_index  # noqa: E402


def fcnseg(*args) -> list[str]:
    return [sys.executable, "-m", "fcnseg.cli", *map(str, args)]


class Smoke:
    def __init__(self, args):
        self.args, self.rows, self.failures = args, [], []
        self.rng = random.Random(args.seed)
        self.work = args.work
        self.env = dict(os.environ, GLOG_minloglevel="3")

    def run(self, case: str, cmd: list, allowed=(0, 2), want=None) -> None:
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.args.timeout, env=self.env,
                                  cwd=self.work)
            code, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            code, err = "timeout", ""
        seconds = time.monotonic() - started
        bad = []
        if code == "timeout":
            bad.append(f"over {self.args.timeout} s")
        elif code < 0:
            bad.append(f"killed by signal {-code}")
        elif code not in allowed or (want is not None and code != want):
            bad.append(f"exit {code}")
        if "Traceback" in err or "internal error" in err:
            bad.append("traceback")
        row = {"case": case, "exit": code, "seconds": round(seconds, 1), "problems": bad,
               "last_line": (err.strip().splitlines() or [""])[-1][:300]}
        self.rows.append(row)
        if bad:
            self.failures.append(row)
            print(f"FAIL {case}: {', '.join(bad)}\n  {' '.join(map(str, cmd))}\n  {err[-1500:]}", flush=True)

    def mutated(self, src: Path, dst: Path, i: int) -> Path:
        dst.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()
        dst.write_bytes(ft.mutate(data, random.Random(f"{src.name}-{self.args.seed}-{i}")))
        return dst


def copy_run(run: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("infer*", "*.onnx", "set-aside"))
    return dst


def flip_pages(mdb: Path, every: int, start: int = 2) -> None:
    raw = bytearray(mdb.read_bytes())
    for page in range(start, len(raw) // 4096, every):
        raw[page * 4096:page * 4096 + 64] = bytes(b ^ 0xFF for b in raw[page * 4096:page * 4096 + 64])
    mdb.write_bytes(bytes(raw))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder (runs/demo)")
    parser.add_argument("--data", type=Path, required=True, help="its dataset folder (data/hela)")
    parser.add_argument("--seeds", type=Path, default=ROOT / ".fuzz" / "seeds",
                        help="fuzz_targets.make_seeds folder (DICOM, NIfTI, HDF5, Keras, safetensors files; a tiny "
                             "run with its checksum manifest)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fcnseg_fuzz_cli"))
    parser.add_argument("--mutations", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=60)
    args = parser.parse_args()
    run, data = args.run.resolve(), args.data.resolve()
    seeds = ft.make_seeds(args.seeds.resolve())
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    s = Smoke(args)
    w, n = args.work, args.mutations
    frame = next(iter(sorted(run.glob("*.tif"))), None) or seeds / "tiff" / "stack.tif"
    inputs = {"TIFF frame": frame, "PNG frame": seeds / "png" / "gray.png", "DICOM (CT_small)": seeds / "dicom" /
              "CT_small.dcm", "NIfTI volume": seeds / "nifti" / "example4d_crop.nii", "HDF5 volume": seeds / "hdf5" /
              "plain.h5"}
    for label, src in inputs.items():
        for i in range(n):
            dst = s.mutated(src, w / "in" / f"{i}_{src.name}", i)
            extra = ("--volume", "0") if "nii" in src.name else ()
            out = w / "out" / f"{label}{i}"
            s.run(f"{label} -> infer --run", fcnseg("infer", "--run", run, dst, "-o", out, *extra), allowed=(0, 1, 2))
    for name in ("train_val.prototxt", "solver.prototxt"):
        for i in range(n):
            copy = {p: run / p for p in ("train_val.prototxt", "solver.prototxt")}
            copy[name] = s.mutated(run / name, w / "proto" / f"{i}_{name}", i)
            s.run(f"{name} -> doctor", fcnseg("doctor", copy["train_val.prototxt"], copy["solver.prototxt"]),
                  allowed=(0, 1, 2))
    for i in range(n):
        cfg = s.mutated(run / "config.yaml", w / "cfg" / f"{i}.yaml", i)
        s.run("config.yaml -> make-proto", fcnseg("make-proto", cfg, "-o", w / "cfg" / f"out{i}"))
    best = run / "best.caffemodel"
    for i in range(n):
        copy = copy_run(run, w / "runcopy")
        s.mutated(best, copy / "best.caffemodel", i)
        s.run("best.caffemodel -> weights inspect", fcnseg("weights", "inspect", copy / "best.caffemodel"))
        s.run("best.caffemodel -> infer --run (copied run)", fcnseg("infer", "--run", copy, frame, "-o", w / "o"),
              allowed=(0, 2))
    for src, label in ((seeds / "keras_hdf5" / "vgg.h5", "Keras HDF5"),
                       (seeds / "safetensors" / "vgg.safetensors", "safetensors")):
        for i in range(n):
            dst = s.mutated(src, w / "wt" / f"{i}_{src.name}", i)
            s.run(f"{label} -> weights inspect", fcnseg("weights", "inspect", dst))
    onnx = next(iter(sorted(run.glob("*.onnx"))), None) or seeds / "onnx_model" / "tiny.onnx"
    for i in range(n):
        s.run("model.onnx -> infer --onnx", fcnseg("infer", "--onnx", s.mutated(onnx, w / "onnx" / f"{i}.onnx", i),
                                                   frame, "-o", w / "onnx" / f"out{i}"), allowed=(0, 1, 2))
    for log in ("metrics.jsonl", "caffe.log"):
        if (run / log).is_file():
            for i in range(n):
                dst = s.mutated(run / log, w / "log" / f"{i}_{log}", i)
                s.run(f"{log} -> doctor --log", fcnseg("doctor", "--log", dst), allowed=(0, 1, 2))
    state = max(run.glob("snapshots/*.solverstate"), key=lambda p: p.stat().st_mtime, default=None)
    if state is not None:
        for i in range(min(n, 4)):  # a resume that passes the checks trains: few of these
            copy = copy_run(run, w / "resume")
            s.mutated(state, copy / "snapshots" / state.name, i)
            s.run("solverstate -> train --resume", fcnseg("train", copy / "config.yaml", "--resume", copy,
                                                          "--set", "solver.max_iter=1", "--data", data))
    for i in range(n):
        ds = w / "ds_yaml"
        shutil.rmtree(ds, ignore_errors=True)
        shutil.copytree(data, ds)
        s.mutated(data / "dataset.yaml", ds / "dataset.yaml", i)
        s.run("dataset.yaml -> data show", fcnseg("data", "show", ds))
    # the LMDB cases of the issue: overwritten pages, and 64 bytes flipped every 7th page
    for copy_i in range(3):
        ds = w / f"ds{copy_i}"
        shutil.rmtree(ds, ignore_errors=True)
        shutil.copytree(data, ds)
        mdb = ds / "train_images_lmdb" / "data.mdb"
        raw = bytearray(mdb.read_bytes())
        rng = random.Random(copy_i)
        for _ in range(8):
            at = rng.randrange(2 * 4096, len(raw) - 4096)
            raw[at:at + 4096] = bytes(rng.randrange(256) for _ in range(4096))
        mdb.write_bytes(bytes(raw))
        s.run("train LMDB, overwritten pages -> data check", fcnseg("data", "check", ds), want=2)
        ds7 = w / f"ds7_{copy_i}"
        shutil.rmtree(ds7, ignore_errors=True)
        shutil.copytree(data, ds7)
        flip_pages(ds7 / "train_images_lmdb" / "data.mdb", 7, 2 + copy_i)
        s.run("train LMDB, 64 B flipped every 7th page -> train",
              fcnseg("train", run / "config.yaml", "--data", ds7, "--out", w / f"train7_{copy_i}",
                     "--set", "solver.max_iter=1"), want=2)
        s.run("same -> eval", fcnseg("eval", run, "--data", ds7, "--split", "train"), want=2)
        s.run("same -> data import (Caffe LMDB)", fcnseg("data", "import", "--images", ds7 / "train_images_lmdb",
                                                         "--labels", ds7 / "train_labels_lmdb",
                                                         "-o", w / f"imp{copy_i}"), want=2)
        s.run("same -> data check", fcnseg("data", "check", ds7), want=2)
    # one flipped weight bit, on a run with its checksum manifest
    recorded = run if (run / "checksums.sha256").is_file() else seeds / "tiny" / "run"
    copy = copy_run(recorded, w / "flip")
    blob = next(rec for rec in read_caffemodel_index(copy / "best.caffemodel").values() if rec.blobs).blobs[0]
    raw = bytearray((copy / "best.caffemodel").read_bytes())
    raw[blob.segments[0][0] + 1] ^= 0x10
    (copy / "best.caffemodel").write_bytes(bytes(raw))
    s.run(f"one flipped weight bit in {recorded.name}/best.caffemodel -> infer", fcnseg(
        "infer", "--run", copy, frame if recorded == run else seeds / "png" / "gray.png", "-o", w / "flip_out"), want=2)
    by_case: dict[str, dict] = {}
    for row in s.rows:
        entry = by_case.setdefault(row["case"], {"runs": 0, "failures": 0, "exits": {}})
        entry["runs"] += 1
        entry["failures"] += bool(row["problems"])
        entry["exits"][str(row["exit"])] = entry["exits"].get(str(row["exit"]), 0) + 1
    (w / "summary.json").write_text(json.dumps({"cases": by_case, "rows": s.rows}, indent=1))
    for case, entry in by_case.items():
        print(f"{case}: {entry['runs']} runs, exits {entry['exits']}, {entry['failures']} failure(s)")
    print(f"total: {len(s.rows)} runs, {len(s.failures)} failure(s); the manifest case used {recorded}")
    return 1 if s.failures else 0


if __name__ == "__main__":
    sys.exit(main())
