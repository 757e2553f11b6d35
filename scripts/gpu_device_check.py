"""The device check of fcnseg's CUDA pycaffe on one GPU, in one call: one JSON file and a short summary.

Stages (each in child processes, each with a time limit; the whole stays under 6 minutes on an H100):
  1. probe     fcnseg's own `--gpu` probe (fcnseg.caffe_env.gpu_available): driver, device, a convolution.
               Without a usable GPU the check stops here with one line saying why (exit 1).
  2. agreement scripts/gpu_check.py per net: forward + backward of the demo net (256x256, batch 4) and of the
               full FCN-32s (configs/fcn32_1ch.yaml, 500x500, batch 1) in CPU and in GPU mode must agree
               within 1e-3 relative (loss, score blob, every parameter gradient).
  3. speed     seconds per SGD iteration of FCN-32s 500x500 batch 1 in Caffe on the GPU and in PyTorch eager
               (the machine's own torch, scripts/torch_fcn_worker.py, FP32 with TF32 off) on the same card:
               two resident worker processes, --rounds alternated rounds of --iters iterations each.
  4. train     `fcnseg train configs/demo_hela.yaml --gpu N` on the HeLa demo tiles (its own
               iterations and validations), with the val mean IU it reaches.
  5. infer     `fcnseg infer --run RUN frame17.tif --gpu N` and the same on the CPU: the label images must
               be identical.
Peak GPU memory of every stage's process comes from `nvidia-smi --query-compute-apps` sampled every 0.2 s
(it includes the CUDA context), Caffe's own share from cudaMemGetInfo, PyTorch's from its allocator.

    python scripts/gpu_device_check.py --out DIR [--device 0] [--data DIR]
writes DIR/gpu_check.json and DIR/gpu_check.txt (the summary, also printed). Exit 0 when every stage ran
and passed, 1 otherwise. `--rehearse-cpu` runs stages 4 and 5 on the CPU only (two iterations), whatever the
probe says: it proves, on a machine without a GPU, that everything those commands import is there.
Inside the bundle (scripts/gpu_bundle_run.sh) the interpreter is the bundle's; elsewhere run it with the
venv's Python after `make setup CAFFE=cuda`, with --data holding hela/ (an imported dataset) and frame17.tif.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from fcnseg.caffe_env import gpu_available  # noqa: E402

BUDGET_S = 330  # of the 6 minutes; unpacking and start-up take the rest
FCN32 = ("configs/fcn32_1ch.yaml", 500, 1)
TORCH_PYTHONS = ("/opt/torch/.venv/bin/python3", "python3", "/usr/bin/python3")


def say(msg: str) -> None:
    print(f"[gpu-check] {msg}", file=sys.stderr, flush=True)


def host_env() -> dict:
    """The environment of the machine's own programs (nvidia-smi, its torch): without the bundle's Python
    home, path and loader path, which run.sh saved in FCNSEG_HOST_LD_LIBRARY_PATH."""
    env = dict(os.environ)
    if "FCNSEG_BUNDLE" in env:
        for key in ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE"):
            env.pop(key, None)
        env["LD_LIBRARY_PATH"] = env.get("FCNSEG_HOST_LD_LIBRARY_PATH", "")
    return env


class GpuMemory(threading.Thread):
    """Peak GPU memory per process (MiB, nvidia-smi's per-process figure) while the stages run."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.peaks, self.peak_sum = interval, {}, 0
        self.smi = shutil.which("nvidia-smi", path=host_env().get("PATH"))
        self.error = None if self.smi else "nvidia-smi not found"
        self._stop = threading.Event()

    def sample(self) -> dict[int, int]:
        proc = subprocess.run([self.smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, env=host_env(), timeout=10)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip() or proc.stdout.strip())
        got = {}
        for line in proc.stdout.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                got[int(parts[0])] = int(parts[1])
        return got

    def run(self) -> None:
        while self.smi and not self._stop.is_set():
            try:
                now = self.sample()
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                self.error = f"nvidia-smi: {exc}"
                return
            for pid, mib in now.items():
                self.peaks[pid] = max(self.peaks.get(pid, 0), mib)
            self.peak_sum = max(self.peak_sum, sum(now.values()))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()

    def reset_sum(self) -> None:
        self.peak_sum = 0

    def of(self, pids) -> int | None:
        vals = [self.peaks[p] for p in pids if p in self.peaks]
        return max(vals) if vals else None


def run_timed(cmd: list[str], timeout: float, mem: GpuMemory | None = None, **kw) -> dict:
    """Run `cmd`; its exit code, seconds, last output lines and peak GPU MiB (whole device, all processes)."""
    if mem:
        mem.reset_sum()
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", f"{exc.stdout or ''}{exc.stderr or ''}" if isinstance(exc.stdout, str) else ""
    res = {"cmd": " ".join(cmd[1:] if cmd[0] == sys.executable else cmd), "exit": rc,
           "seconds": round(time.perf_counter() - t, 2)}
    if rc != 0:
        res["log"] = [ln for ln in out.strip().splitlines() if ln.strip()][-8:]
    else:
        res["stdout_last"] = (proc.stdout.strip().splitlines() or [""])[-1]
    if mem and mem.smi:
        res["peak_gpu_mib_all_processes"] = mem.peak_sum
    return res


# ---- stage 3: the two resident workers ------------------------------------------------------------------
def caffe_worker(device: int) -> int:
    """FCN-32s 500x500 batch 1 in Caffe on GPU `device`, driven by `steps N` / `mem` / `quit` on stdin."""
    from bench import input_solver  # noqa: PLC0415 - pulls in pycaffe; only the worker needs it
    from gpu_check import cuda_mem_used_mib  # noqa: PLC0415

    from fcnseg.caffe_env import import_caffe  # noqa: PLC0415
    from fcnseg.config import load_config  # noqa: PLC0415

    caffe = import_caffe()
    path, size, batch = FCN32
    config = load_config(str(ROOT / path), ["data.root=null", "data.mean=0", "init.weights=null"])
    caffe.set_device(device)
    caffe.set_mode_gpu()
    used0, _ = cuda_mem_used_mib()
    tmp = tempfile.mkdtemp()
    solver, net_path = input_solver(config, size, batch, Path(tmp), base_lr=1e-4)
    crop = [int(v) for v in re.findall(r"offset: (\d+)", Path(net_path).read_text())]
    solver.step(2)  # warm-up: allocations, cuBLAS handles
    m = config.model
    print(json.dumps({"ready": True, "crop": crop[0] if crop else 0, "stages": m.stages, "fc": m.fc_channels,
                      "pad": m.pad, "classes": m.num_classes, "channels": m.input_channels,
                      "dropout": m.dropout, "size": size, "batch": batch}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "steps":
            iters = int(words[1])
            t = time.perf_counter()
            solver.step(iters)
            float(solver.net.blobs["loss"].data)  # the loss is read back: the GPU has finished
            reply = {"iters": iters, "s_per_iter": (time.perf_counter() - t) / iters}
        elif words[0] == "mem":
            used, total = cuda_mem_used_mib()
            reply = {"caffe_net_mib": used - used0, "device_used_mib": used, "device_total_mib": total}
        else:
            reply = {"error": f"unknown command {words[0]!r}"}
        print(json.dumps(reply), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


class Worker:
    """A resident worker process answering one JSON line per command."""

    def __init__(self, cmd: list[str], env: dict, timeout: float):
        self.err = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe nobody reads while it runs
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     text=True, env=env, cwd=ROOT)
        self.timeout = timeout
        self.ready = self._read()

    def _read(self) -> dict:
        result = {}

        def read():
            line = self.proc.stdout.readline()
            result["line"] = line
        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(self.timeout)
        line = result.get("line")
        if not line:
            self.proc.kill()
            self.err.seek(0)
            tail = [ln for ln in self.err.read().strip().splitlines() if ln.strip()][-5:]
            raise RuntimeError(f"worker {'timed out' if t.is_alive() else 'ended'}: {' | '.join(tail)}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def torch_python() -> str | None:
    """The machine's own Python that imports torch with CUDA ($FCNSEG_TORCH_PYTHON first)."""
    env = host_env()
    for cand in ([os.environ["FCNSEG_TORCH_PYTHON"]] if os.environ.get("FCNSEG_TORCH_PYTHON") else []) + list(
            TORCH_PYTHONS):
        exe = shutil.which(cand, path=env.get("PATH"))
        if not exe:
            continue
        ok = subprocess.run([exe, "-c", "import torch; assert torch.cuda.is_available()"], capture_output=True,
                            env=env, timeout=120)
        if ok.returncode == 0:
            return exe
    return None


def speed(device: int, rounds: int, iters: int, mem: GpuMemory) -> dict:
    res: dict = {"net": FCN32[0], "input": [FCN32[2], 1, FCN32[1], FCN32[1]], "rounds": rounds,
                 "iters_per_round": iters, "caffe_s_per_iter": [], "torch_s_per_iter": []}
    caffe = torch = None
    try:
        caffe = Worker([sys.executable, __file__, "--caffe-worker", "--device", str(device)], dict(os.environ), 180)
        res["caffe_pid"] = caffe.proc.pid
        tpy = torch_python()
        if tpy is None:
            res["torch_error"] = "no Python with a CUDA torch found (set FCNSEG_TORCH_PYTHON)"
        else:
            a = caffe.ready
            torch = Worker([tpy, str(ROOT / "scripts/torch_fcn_worker.py"), "--size", str(a["size"]),
                            "--batch", str(a["batch"]), "--classes", str(a["classes"]),
                            "--channels", str(a["channels"]), "--stages", str(a["stages"]), "--fc", str(a["fc"]),
                            "--pad", str(a["pad"]), "--dropout", str(a["dropout"]), "--crop", str(a["crop"]),
                            "--device", str(device)], host_env(), 180)
            res["torch"] = {**torch.ready, "python": tpy, "pid": torch.proc.pid}
        for r in range(rounds):
            order = [("caffe", caffe), ("torch", torch)]
            if r % 2:
                order.reverse()
            for name, w in order:
                if w is not None:
                    res[f"{name}_s_per_iter"].append(round(w.ask(f"steps {iters}")["s_per_iter"], 5))
        res["caffe_memory"] = caffe.ask("mem")
        if torch:
            res["torch_memory"] = torch.ask("mem")
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        res["error"] = str(exc)
    finally:
        for w in (caffe, torch):
            if w:
                w.close()
    time.sleep(0.5)
    res["caffe_peak_gpu_mib"] = mem.of([caffe.proc.pid]) if caffe else None
    res["torch_peak_gpu_mib"] = mem.of([torch.proc.pid]) if torch else None
    for name in ("caffe", "torch"):
        vals = res[f"{name}_s_per_iter"]
        res[f"{name}_median_s"] = float(np.median(vals)) if vals else None
    if res["caffe_median_s"] and res["torch_median_s"]:
        res["caffe_over_torch"] = round(res["caffe_median_s"] / res["torch_median_s"], 2)
    return res


# ---- stages 4 and 5 --------------------------------------------------------------------------------------
def val_events(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("event") == "val"]


def train(data: Path, run: Path, gpu: list[str], extra: list[str], mem: GpuMemory | None) -> dict:
    cmd = [sys.executable, "-m", "fcnseg.cli", "train", "configs/demo_hela.yaml", "--data", str(data / "hela"),
           "--out", str(run), *gpu, *extra]
    res = run_timed(cmd, 200, mem, cwd=ROOT)
    res.pop("stdout_last", None)
    vals = val_events(run)
    res["val"] = [{"iter": e["iter"], "mean_iu": round(e["mean_iu"], 4)} for e in vals]
    if vals:
        res["val_mean_iu"] = round(vals[-1]["mean_iu"], 4)
        res["best_val_mean_iu"] = round(max(e["mean_iu"] for e in vals), 4)
    return res


def infer_both(data: Path, run: Path, tmp: Path, gpu: list[str], mem: GpuMemory | None) -> dict:
    from PIL import Image  # noqa: PLC0415 - only this stage reads images

    out = {}
    for name, flag in (("gpu", gpu), ("cpu", ["--cpu"])):
        if name == "gpu" and not gpu:
            continue
        cmd = [sys.executable, "-m", "fcnseg.cli", "infer", "--run", str(run), str(data / "frame17.tif"),
               "-o", str(tmp / f"infer_{name}"), *flag]
        out[name] = run_timed(cmd, 120, mem if name == "gpu" else None, cwd=ROOT)
        out[name].pop("stdout_last", None)
    labels = {k: tmp / f"infer_{k}" / "frame17.png" for k in out}
    if all(p.is_file() for p in labels.values()) and len(labels) == 2:
        g, c = (np.asarray(Image.open(labels[k])) for k in ("gpu", "cpu"))
        out["pixels"] = int(c.size)
        out["pixels_differing"] = int((g != c).sum()) if g.shape == c.shape else int(c.size)
        out["identical"] = bool(g.shape == c.shape and (g == c).all())
    return out


def summary(rep: dict) -> list[str]:
    if rep.get("rehearsal"):
        lines = [f"gpu check rehearsal on the CPU (no GPU stage): {'PASS' if rep['ok'] else 'FAIL'}; the probe said: "
                 f"{rep['probe']}"]
    else:
        lines = [f"gpu check: {'PASS' if rep['ok'] else 'FAIL'} - {rep['probe']}"]
    if rep.get("cuda_libraries"):
        lines.append("cuda libraries: " + ", ".join(f"{k} from {v or 'MISSING'}"
                                                    for k, v in rep["cuda_libraries"].items()))
    for name, r in rep.get("agreement", {}).items():
        if "max_rel_diff" in r:
            lines.append(f"agreement {name}: max rel diff {r['max_rel_diff']:.2e} ({r['worst_array']}, "
                         f"{r['arrays_compared']} arrays) {'ok' if r['agree'] else 'OVER 1e-3'}; "
                         f"Caffe GPU memory {r['gpu_mem_net_mib']} MiB")
        else:
            lines.append(f"agreement {name}: {r.get('error')} {r.get('log', '')}")
    s = rep.get("speed")
    if s:
        lines.append(f"FCN-32s 500x500 batch 1, s/iteration (median of {s['rounds']} alternated rounds of "
                     f"{s['iters_per_round']}): Caffe {s['caffe_median_s']}, PyTorch eager {s['torch_median_s']}"
                     + (f" (Caffe/PyTorch {s['caffe_over_torch']}x)" if s.get("caffe_over_torch") else "")
                     + f"; peak GPU MiB Caffe {s.get('caffe_peak_gpu_mib')}, PyTorch {s.get('torch_peak_gpu_mib')}"
                     + (f"; {s['error']}" if s.get("error") else "") + (f"; {s['torch_error']}"
                                                                         if s.get("torch_error") else ""))
    t = rep.get("train")
    if t:
        lines.append(f"train demo_hela: exit {t['exit']} in {t['seconds']} s, val mean IU {t.get('val_mean_iu')} "
                     f"(best {t.get('best_val_mean_iu')}), peak GPU MiB {t.get('peak_gpu_mib_all_processes')}")
    i = rep.get("infer")
    if i and rep.get("rehearsal"):
        lines.append(f"infer frame 17 on the CPU: exit {i['cpu']['exit']} in {i['cpu']['seconds']} s")
    elif i:
        lines.append(f"infer frame 17: identical to CPU: {i.get('identical')} ({i.get('pixels_differing')} of "
                     f"{i.get('pixels')} pixels differ); " + ", ".join(
                         f"{k} exit {v['exit']} {v['seconds']} s" for k, v in i.items() if isinstance(v, dict))
                     + f"; peak GPU MiB {i.get('gpu', {}).get('peak_gpu_mib_all_processes')}")
    if rep.get("skipped"):
        lines.append(f"skipped (time): {', '.join(rep['skipped'])}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for gpu_check.json and gpu_check.txt (required)")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--data", default=str(ROOT / "data"), help="folder with hela/ (imported) and frame17.tif")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rehearse-cpu", action="store_true",
                    help="no GPU stages: train 2 iterations and infer on the CPU (imports and data check)")
    ap.add_argument("--caffe-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.caffe_worker:
        return caffe_worker(args.device)
    if not args.out:
        ap.error("--out DIR is required")
    t0 = time.perf_counter()
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    rep: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": sys.version.split()[0],
                 "device": args.device, "bundle": os.environ.get("FCNSEG_BUNDLE")}
    found = os.environ.get("FCNSEG_CUDA_FOUND", "")
    rep["cuda_libraries"] = dict(p.split("=", 1) for p in found.split(";") if "=" in p)
    manifest = Path(rep["bundle"] or "", "MANIFEST.json")
    if rep["bundle"] and manifest.is_file():
        m = json.loads(manifest.read_text())
        rep["bundle_made"], rep["bundle_commit"], rep["caffe_variant"] = m["made"], m["commit"], m["caffe"]["variant"]
    ok, rep["probe"] = gpu_available(args.device)
    rep["probe_ok"] = ok
    mem = GpuMemory()
    if ok:
        mem.start()
        smi = subprocess.run([mem.smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader",
                              "-i", str(args.device)], capture_output=True, text=True, env=host_env()) \
            if mem.smi else None
        rep["nvidia_smi"] = smi.stdout.strip() if smi else None
    if not ok and not args.rehearse_cpu:
        rep["ok"] = False
        rep["stopped_at"] = "driver probe"
        return finish(out, rep, f"gpu check: stopped at the driver probe: {rep['probe']}")
    skipped = []

    def budget_left() -> float:
        return BUDGET_S - (time.perf_counter() - t0)

    if ok:
        rep["agreement"] = {}
        for name in ("demo", "fcn32"):
            r = run_timed([sys.executable, str(ROOT / "scripts/gpu_check.py"), "--one", name, "--device",
                           str(args.device), "--iters", "5"], 150, mem, cwd=ROOT)
            if r["exit"] == 0:
                r.update(json.loads(r.pop("stdout_last")))
            rep["agreement"][name] = r
        say(f"agreement done at {time.perf_counter() - t0:.0f} s")
    if ok and budget_left() > 200:
        rep["speed"] = speed(args.device, args.rounds, args.iters, mem)
        say(f"speed done at {time.perf_counter() - t0:.0f} s")
    elif ok:
        skipped.append("speed")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gpu = [] if args.rehearse_cpu else ["--gpu", str(args.device)]
        extra = ["--set", "solver.max_iter=2", "--set", "train.val_interval=2", "--set",
                 "train.snapshot_interval=2"] if args.rehearse_cpu else []
        if budget_left() > 100 or args.rehearse_cpu:
            rep["train"] = train(data, tmp / "run", gpu, extra, mem if ok else None)
            say(f"train done at {time.perf_counter() - t0:.0f} s")
            if rep["train"]["exit"] == 0:
                rep["infer"] = infer_both(data, tmp / "run", tmp, gpu, mem if ok else None)
        else:
            skipped += ["train", "infer"]
    mem.stop()
    rep["skipped"] = skipped
    rep["seconds"] = round(time.perf_counter() - t0, 1)
    if args.rehearse_cpu:
        rep["rehearsal"] = "CPU only: train 2 iterations and infer, no GPU stage"
        rep["ok"] = rep.get("train", {}).get("exit") == 0 and all(
            v.get("exit") == 0 for v in rep.get("infer", {}).values() if isinstance(v, dict)) and "infer" in rep
        return finish(out, rep, None)
    agree = rep.get("agreement", {})
    rep["ok"] = bool(
        ok and not skipped and len(agree) == 2 and all(r.get("agree") for r in agree.values())
        and rep.get("speed", {}).get("caffe_median_s") and rep.get("train", {}).get("exit") == 0
        and rep.get("infer", {}).get("identical"))
    if mem.error:
        rep["memory_error"] = mem.error
    return finish(out, rep, None)


def finish(out: Path, rep: dict, line: str | None) -> int:
    lines = [line] if line else summary(rep)
    text = "\n".join(lines)
    (out / "gpu_check.json").write_text(json.dumps(rep, indent=1) + "\n")
    (out / "gpu_check.txt").write_text(text + "\n")
    print(text, flush=True)
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
