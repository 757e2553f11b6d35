#!/usr/bin/env python
"""Fault injection for `fcnseg train` (issue 27): SIGKILL a short run at random moments, resume each time.

Not a test: it takes minutes and its moments are random. It imports a small synthetic dataset with
`fcnseg data import`, starts `fcnseg train` on a tiny net and kills it with SIGKILL (the whole process
group, as `kill -9` of the job) --kills times, cycling through three targets:

  step        a random moment 0-0.5 s after the process logged its k-th training iteration, k drawn
              from 1..12 (so the run also gets past its next snapshots);
  validation  a random moment inside the first validation the process runs (after an iteration that
              is a multiple of train.val_interval; its length measured on the first one seen);
  snapshot    the moment a file appears in snapshots/.partial/ (Caffe writing the snapshot), at the
              process's first or second snapshot (drawn).

Each kill is classified by what the run folder shows at that moment (a killed validation or snapshot
that had already finished counts as a step). After each kill the run is continued with `--resume`
(a kill before the first snapshot starts it again in a fresh folder, counted as a restart). After the
last kill the run is resumed to the end (solver.max_iter set a few iterations past its newest
snapshot). Then every snapshot, best.caffemodel and final.caffemodel must pass `verify.snapshot_problem`
and load in Caffe (in a child process, so an abort is counted, not fatal), and every line of
metrics.jsonl must parse as JSON. A failure is any resume that does not continue (exit code other than
0 or the kill), any damaged or unloadable file, any unparseable line.

    nice -n 10 .venv/bin/python scripts/fault_inject.py --kills 20 --seed 1 --work /tmp/fault_inject

Prints a summary (kills by moment, resumes, restarts, failures) and writes it to WORK/summary.json.
Exit code 0 when there was no failure, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from fcnseg import verify

TARGETS = ("step", "validation", "snapshot")
CONFIG = {
    "model": {"arch": "fcn8s", "stages": 3, "fc_channels": 16, "dropout": 0, "pad": "minimal"},
    "data": {"batch_size": 4, "scale": 0.02},
    "loss": {"normalize": True},
    "solver": {"type": "Adam", "base_lr": 1e-3, "momentum": 0.9, "max_iter": 100000, "weight_decay": 0,
               "random_seed": 1},
    "train": {"val_interval": 10, "snapshot_interval": 5, "display_interval": 1, "smoothing": 5},
}
LOAD_CHILD = r"""
import sys, caffe
deploy = sys.argv[1]
for path in sys.argv[2:]:
    caffe.Net(deploy, path, caffe.TEST)
    print("ok", path, flush=True)
"""


def fcnseg(*args) -> list[str]:
    return [sys.executable, "-m", "fcnseg.cli", *map(str, args)]


def make_dataset(work: Path, seed: int) -> Path:
    """16 train and 16 val images of 32x32 bright discs, imported with `fcnseg data import`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    for folder in ("img", "lab"):
        (work / "src" / folder).mkdir(parents=True, exist_ok=True)
    for i in range(32):
        label = np.zeros((32, 32), np.uint8)
        for _ in range(3):
            cy, cx, r = *rng.integers(4, 28, 2), rng.integers(3, 6)
            label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        image = np.clip(40 + 150 * label + rng.normal(0, 15, label.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(work / "src" / "img" / f"s{i:02d}.png")
        Image.fromarray(label).save(work / "src" / "lab" / f"s{i:02d}.png")
    ds = work / "ds"
    val = ",".join(f"s{i:02d}" for i in range(16, 32))
    subprocess.run(fcnseg("data", "import", "--images", work / "src" / "img", "--labels", work / "src" / "lab",
                          "--val", val, "-o", ds), check=True,
                   capture_output=True)
    return ds


def read_events(run: Path) -> list[dict]:
    """The complete, parseable lines of metrics.jsonl (the last one may be mid-write)."""
    try:
        text = (run / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines()[: text.count("\n")]:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return events


def partial_files(run: Path) -> list[str]:
    """The snapshot files Caffe is writing now (not the restore file a resume puts there)."""
    folder = run / "snapshots" / ".partial"
    return [p.name for p in folder.glob("*_iter_*")] if folder.is_dir() else []


class Injector:
    def __init__(self, args):
        self.args, self.rng = args, random.Random(args.seed)
        self.work = Path(args.work)
        self.val_seconds = 0.5
        self.summary = {"kills": 0, "kills_by_moment": {t: 0 for t in TARGETS + ("startup",)},
                        "resumes": 0, "restarts": 0, "failures": [], "command": " ".join(sys.argv)}

    def fail(self, what: str) -> None:
        print(f"FAILURE: {what}", flush=True)
        self.summary["failures"].append(what)

    def start(self, cfg: Path, run: Path, resume: bool, extra=()) -> subprocess.Popen:
        args = fcnseg("train", cfg, *(("--resume", run) if resume else ("--out", run)), *extra)
        log = open(self.work / "train.log", "a")
        log.write(f"\n$ {' '.join(map(str, args))}\n")
        log.flush()
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def wait_for_moment(self, proc: subprocess.Popen, run: Path, target: str, seen: int) -> bool:
        """Sleep until the chosen moment of `target`; False when the process ended first."""
        deadline = time.monotonic() + 300
        val_every = CONFIG["train"]["val_interval"]
        steps, skip, writing = self.rng.randint(1, 12), self.rng.randint(0, 1), False
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if target == "snapshot":
                now = bool(partial_files(run))
                if now and not writing and skip == 0:
                    return True
                if writing and not now:
                    skip -= 1
                writing = now
                time.sleep(0.001)
                continue
            events = read_events(run)[seen:]
            trains = [e for e in events if e.get("event") == "train"]
            if target == "step" and len(trains) >= steps:
                time.sleep(self.rng.uniform(0, 0.5))
                return True
            if target == "validation" and trains and trains[-1]["iter"] % val_every == 0:
                time.sleep(self.rng.uniform(0.02, 0.9 * self.val_seconds))
                return True
            time.sleep(0.01)
        return False

    def classify(self, run: Path, seen: int) -> str:
        if partial_files(run):
            return "snapshot"
        events = read_events(run)[seen:]
        trains = [e for e in events if e.get("event") == "train"]
        if not trains:
            return "startup"
        last = events[-1]
        if last.get("event") == "train" and last["iter"] % CONFIG["train"]["val_interval"] == 0:
            return "validation"
        return "step"

    def measure_validation(self, run: Path) -> None:
        events = read_events(run)
        for val in (e for e in events if e.get("event") == "val"):
            train = [e for e in events if e.get("event") == "train" and e["iter"] == val["iter"]]
            if train:
                self.val_seconds = max(0.05, val["elapsed"] - train[-1]["elapsed"])
                return

    def run(self) -> int:
        started = time.monotonic()
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        ds = make_dataset(self.work, self.args.seed)
        config = {**CONFIG, "data": {**CONFIG["data"], "root": str(ds)}}
        cfg = self.work / "tiny.yaml"
        cfg.write_text(yaml.safe_dump(config))
        run = self.work / "run"
        resume = False
        for kill in range(self.args.kills):
            target = TARGETS[kill % len(TARGETS)]
            seen = len(read_events(run)) if resume else 0
            proc = self.start(cfg, run, resume)
            if not self.wait_for_moment(proc, run, target, seen):
                rc = proc.wait()
                self.fail(f"kill {kill + 1}: train ended with exit code {rc} before the {target} moment "
                          f"(see {self.work / 'train.log'})")
                if rc != 0:
                    return self.finish(started, run)
            else:
                moment = self.classify(run, seen)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                self.summary["kills"] += 1
                self.summary["kills_by_moment"][moment] += 1
                states = sorted((run / "snapshots").glob("*.solverstate")) if run.is_dir() else []
                print(f"kill {kill + 1:2d}: aimed at {target:10s} landed in {moment:10s} "
                      f"snapshots {len(states)}", flush=True)
                if self.val_seconds == 0.5:
                    self.measure_validation(run)
            if run.is_dir() and any((run / "snapshots").glob("*.solverstate")):
                resume = True
                self.summary["resumes"] += 1
            else:  # killed before its first snapshot: nothing to resume
                shutil.rmtree(run, ignore_errors=True)
                resume = False
                self.summary["restarts"] += 1
        # Finish: a few iterations past the newest snapshot, without a kill.
        newest = max((int(p.stem.rsplit("_", 1)[1]) for p in (run / "snapshots").glob("*.solverstate")),
                     default=0) if resume else 0
        end = newest + 2 * CONFIG["train"]["snapshot_interval"]
        proc = self.start(cfg, run, resume, ("--set", f"solver.max_iter={end}"))
        rc = proc.wait()
        if rc != 0:
            self.fail(f"the final resume ended with exit code {rc} (see {self.work / 'train.log'})")
        self.summary["final_iteration"] = end
        return self.finish(started, run)

    def finish(self, started: float, run: Path) -> int:
        states = [p for _, p in verify.snapshot_states(run)] if run.is_dir() else []
        for state in states:
            why = verify.snapshot_problem(state)
            if why:
                self.fail(f"{state}: {why}")
        weights = [p.with_suffix(".caffemodel") for p in states] + \
            [run / name for name in ("best.caffemodel", "final.caffemodel") if (run / name).is_file()]
        weights += [p for p in (run / "snapshots").glob("*.caffemodel") if p not in weights] if run.is_dir() else []
        loaded = self.load_all(run / "deploy.prototxt", weights) if weights else 0
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
        for number, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                self.fail(f"metrics.jsonl line {number} does not parse: {line[:80]!r}")
        self.summary.update(snapshots_checked=len(states), weights_loaded=loaded, weights_files=len(weights),
                            metrics_lines=len(lines), seconds=round(time.monotonic() - started, 1),
                            failure_count=len(self.summary["failures"]))
        (self.work / "summary.json").write_text(json.dumps(self.summary, indent=2))
        print(json.dumps(self.summary, indent=2))
        return 0 if not self.summary["failures"] else 1

    def load_all(self, deploy: Path, weights: list[Path]) -> int:
        """Load every weights file into the deploy net in child processes; an abort counts as a failure."""
        loaded, todo = 0, list(weights)
        while todo:
            proc = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(deploy), *map(str, todo)],
                                  capture_output=True, text=True, env=dict(os.environ, GLOG_minloglevel="2"))
            done = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("ok ")]
            loaded += len(done)
            todo = todo[len(done):]
            if todo:
                self.fail(f"{todo[0]}: does not load in Caffe (exit code {proc.returncode})")
                todo = todo[1:]
        return loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default="/tmp/fcnseg_fault_inject")
    return Injector(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
