"""The fuzz campaign over fcnseg's readers (issue 39): `make fuzz`, or

    nice -n 10 .venv/bin/python scripts/fuzz.py --runs 6000 --out .fuzz

Each target of tests/fuzz_targets.py (TIFF, PNG, JPEG, .npy, DICOM, NIfTI, HDF5, Zarr, Caffe Datums, train_val
and solver prototxt through doctor, solverstate, caffemodel, Keras HDF5, safetensors, ONNX weights, ONNX models
for `infer --onnx`, config / dataset / inference YAML, `doctor --log`) runs in its own child process, seeded
from real files (fuzz_targets.make_seeds), with a time limit per input (--timeout, 10 s) and a memory cap
(--memory-mb, address space of the child). Engines:

- `atheris` (coverage-guided, libFuzzer; fcnseg and the pure-Python parsers instrumented): stops a target
  at its first finding and keeps the input as OUT/TARGET/crash-*, timeout-* or oom-*;
- `mutate` (the seeded mutator of fuzz_targets.mutate; no extra package): goes on after a finding and
  keeps every finding's input and traceback in OUT/TARGET/.

The summary (inputs run and findings per target, engine, seconds: the latest run of each target) goes to
OUT/summary.json and every run is appended to OUT/history.jsonl; one line per target to stdout; exit 1 when
anything was found. A finding is any exception but FcnsegError, a hang
past the time limit, or the child's death (signal, out of memory).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# Instrumented for coverage under atheris: fcnseg itself and the parsers written in Python.
INSTRUMENT = ["fcnseg", "tifffile", "pydicom", "nibabel", "yaml", "zarr", "numcodecs", "safetensors", "onnx",
              "h5py", "PIL"]


class Hang(Exception):
    """An input that ran past the time limit."""


def _quiet() -> None:
    logging.disable(logging.CRITICAL)  # tifffile, nibabel and zarr log every oddity they meet
    warnings.simplefilter("ignore")
    os.environ.setdefault("GLOG_minloglevel", "3")


def _cap_memory(mb: int) -> None:
    if mb:
        limit = mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def child_mutate(name: str, seeds: Path, out: Path, runs: int, seed: int, timeout: int, memory_mb: int) -> dict:
    """The `mutate` engine for one target, in this process: {runs, findings, seconds}."""
    import fuzz_targets as ft  # noqa: PLC0415 - in the child only, after tests/ is on the path
    from fcnseg import images  # noqa: PLC0415 - likewise

    images.MAX_DECODED_BYTES = min(images.MAX_DECODED_BYTES, (memory_mb << 20) // 4)  # the guard fires before the cap
    work = out / name / "work"
    ft.prepare(name, seeds, work)
    inputs = ft.seed_inputs(name, seeds)
    for data in inputs:  # warm the imports (pycaffe, onnxruntime) before the cap and the clock
        try:
            ft.run_one(name, data, work)
        except Exception:  # noqa: BLE001 - a seed that fails is reported by the loop below
            pass
    _cap_memory(memory_mb)

    def alarm(*_):
        raise Hang(f"over {timeout} s")

    signal.signal(signal.SIGALRM, alarm)
    rng, findings, started = random.Random(f"{name}-{seed}"), {}, time.monotonic()
    for i in range(runs):
        data = inputs[i] if i < len(inputs) else ft.mutate(rng.choice(inputs), rng, rng.choice(inputs))
        signal.alarm(timeout)
        try:
            ft.run_one(name, data, work)
        except BaseException as exc:  # every escape but FcnsegError is a finding
            if isinstance(exc, KeyboardInterrupt):
                raise
            key = f"{type(exc).__name__}: {_frame(exc)}"
            if key not in findings:
                digest = hashlib.sha1(data).hexdigest()[:12]
                (out / name / f"finding-{digest}").write_bytes(data)
                (out / name / f"finding-{digest}.txt").write_text("".join(traceback.format_exception(exc)))
                findings[key] = {"input": f"finding-{digest}", "count": 0, "message": str(exc)[:300]}
            findings[key]["count"] += 1
        finally:
            signal.alarm(0)
    return {"runs": runs, "findings": findings, "seconds": round(time.monotonic() - started, 1)}


def _frame(exc: BaseException) -> str:
    """Where the exception was raised: the innermost frame in fcnseg, else the innermost one."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/fcnseg/" in f.filename] or frames
    f = ours[-1] if ours else None
    return f"{Path(f.filename).name}:{f.lineno}" if f else "?"


def child_atheris(name: str, seeds: Path, out: Path, runs: int, seed: int, timeout: int, memory_mb: int) -> None:
    """The `atheris` engine for one target: libFuzzer over a copy of the seeds; never returns."""
    import atheris  # noqa: PLC0415 - optional: only the atheris engine needs it

    with atheris.instrument_imports(include=INSTRUMENT):  # imported here so that they are instrumented
        import fuzz_targets as ft  # noqa: PLC0415
        from fcnseg import images  # noqa: PLC0415
        images.MAX_DECODED_BYTES = min(images.MAX_DECODED_BYTES, (memory_mb << 20) // 4)
        work = out / name / "work"
        ft.prepare(name, seeds, work)
        for data in ft.seed_inputs(name, seeds):  # the readers import their modules lazily: instrument them too
            ft.run_one(name, data, work)
    corpus = out / name / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for data in ft.seed_inputs(name, seeds):
        (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)

    def one(data: bytes) -> None:
        ft.run_one(name, data, work)

    args = [sys.argv[0], str(corpus), f"-runs={runs}", f"-seed={seed + 1}", f"-timeout={timeout}",
            f"-rss_limit_mb={memory_mb}", f"-max_len={1 << 20}", f"-artifact_prefix={out / name}/",
            "-print_final_stats=1"]
    atheris.Setup(args, one)
    atheris.Fuzz()


def run_target(name: str, args) -> dict:
    """One target in a child process (niced by the caller); its result as the child reported it."""
    (args.out / name).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", name, "--engine", args.engine, "--seeds", str(args.seeds),
           "--out", str(args.out), "--runs", str(args.runs), "--seed", str(args.seed),
           "--timeout", str(args.timeout), "--memory-mb", str(args.memory_mb)]

    def artifacts() -> set[str]:  # libFuzzer's inputs of a finding (crash-*, timeout-*, oom-*, leak-*)
        kinds = ("crash", "timeout", "oom", "leak")
        return {p.name for p in (args.out / name).iterdir() if p.name.split("-")[0] in kinds}

    earlier = artifacts()  # from an earlier run into the same folder, fixed or not: not this run's
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = round(time.monotonic() - started, 1)
    log = proc.stdout + proc.stderr
    (args.out / name / "log.txt").write_text(log)
    if args.engine == "mutate":
        result_file = args.out / name / "result.json"
        if proc.returncode == 0 and result_file.is_file():
            return json.loads(result_file.read_text())
        return {"runs": None, "findings": {f"child died (exit {proc.returncode})": {"message": log[-2000:]}},
                "seconds": seconds}
    done = re.findall(r"Done (\d+) runs", log) or re.findall(r"#(\d+)\s", log)
    found = {a: {"message": _python_error(log)} for a in sorted(artifacts() - earlier)}
    if proc.returncode != 0 and not found:
        found[f"exit {proc.returncode}"] = {"message": log[-2000:]}
    return {"runs": int(done[-1]) if done else None, "findings": found, "seconds": seconds}


def _python_error(log: str) -> str:
    match = re.search(r"=== Uncaught Python exception: ===\n(.*?)\n", log)
    return match.group(1) if match else log[-600:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="all", help="comma-separated names of tests/fuzz_targets.py, or all")
    parser.add_argument("--runs", type=int, default=6000, help="inputs per target")
    parser.add_argument("--engine", choices=["mutate", "atheris"], default="mutate")
    parser.add_argument("--seeds", type=Path, default=ROOT / ".fuzz" / "seeds")
    parser.add_argument("--out", type=Path, default=ROOT / ".fuzz" / "campaign")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=10, help="seconds per input")
    parser.add_argument("--memory-mb", type=int, default=3072, help="address-space cap of each target's process")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.seeds, args.out = args.seeds.resolve(), args.out.resolve()
    _quiet()
    if args.child:
        if args.engine == "atheris":
            child_atheris(args.child, args.seeds, args.out, args.runs, args.seed, args.timeout, args.memory_mb)
        result = child_mutate(args.child, args.seeds, args.out, args.runs, args.seed, args.timeout, args.memory_mb)
        (args.out / args.child / "result.json").write_text(json.dumps(result, indent=1))
        return 0
    import fuzz_targets as ft  # noqa: PLC0415 - after tests/ is on the path
    ft.make_seeds(args.seeds)
    names = list(ft.TARGETS) if args.targets == "all" else args.targets.split(",")
    summary_file = args.out / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    for name in names:
        result = dict(run_target(name, args), engine=args.engine, seed=args.seed)
        summary[name] = result
        args.out.mkdir(parents=True, exist_ok=True)
        summary_file.write_text(json.dumps(summary, indent=1))
        with open(args.out / "history.jsonl", "a") as history:  # every run of every target, for the totals
            history.write(json.dumps(dict(result, target=name, runs_asked=args.runs)) + "\n")
        print(f"{name}: {result['runs']} inputs, {len(result['findings'])} finding(s), {result['seconds']} s"
              + "".join(f"\n  {k}: {v.get('message', '')[:200]}" for k, v in result["findings"].items()), flush=True)
    total = sum(r["runs"] or 0 for r in summary.values())
    found = sum(len(r["findings"]) for r in summary.values())
    print(f"total: {total} inputs over {len(summary)} targets, {found} open finding(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
