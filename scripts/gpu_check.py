"""Device check of a CUDA pycaffe on one GPU, as JSON: GPU against CPU, GPU training speed and memory.

For each net (the HeLa demo net, configs/demo_hela.yaml at 256x256 batch 4; and the full FCN-32s,
configs/fcn32_1ch.yaml at 500x500 batch 1, the reference's size), in a child process of its own:
  - forward and backward of the same weights and input in CPU mode and in GPU mode (TEST phase, so no
    dropout masks): the loss, the score blob and every parameter gradient must agree within
    --rtol relative (max |gpu - cpu| / max |cpu| per array);
  - --iters SGD training iterations on the GPU after one warm-up: seconds per iteration;
  - GPU memory in use after training (cudaMemGetInfo, the whole device) and the part this net added
    (Caffe allocates its blobs once, so after the first iteration this is the peak).
Exit 0 when the probe found a working GPU and every comparison agreed, 1 otherwise (the JSON says why).

    python scripts/gpu_check.py --device 0 --out gpu_check.json
scripts/gpu_check.sh wraps it with the interpreter and a time limit.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench import input_solver  # noqa: E402

from fcnseg.caffe_env import gpu_available, import_caffe  # noqa: E402
from fcnseg.config import load_config  # noqa: E402

NETS = {"demo": ("configs/demo_hela.yaml", 256, 4), "fcn32": ("configs/fcn32_1ch.yaml", 500, 1)}


def cuda_mem_used_mib() -> tuple[int, int]:
    """(used, total) MiB of the current device, from the CUDA runtime the imported caffe loaded."""
    lib = [ln.split()[-1] for ln in open("/proc/self/maps") if "/libcudart.so" in ln][0]
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    ctypes.CDLL(lib).cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
    return (total.value - free.value) >> 20, total.value >> 20


def rel_diff(gpu: np.ndarray, cpu: np.ndarray) -> float:
    """max |gpu - cpu| / max |cpu| (0 for two all-zero arrays)."""
    scale = float(np.abs(cpu).max())
    err = float(np.abs(gpu.astype(np.float64) - cpu).max())
    return err / scale if scale > 0 else err


def forward_backward(net) -> dict:
    """Loss, score blob and all parameter gradients of one forward + backward (gradients zeroed first)."""
    for blobs in net.params.values():
        for b in blobs:
            b.diff[...] = 0
    out = net.forward()
    net.backward()
    score = net.bottom_names["loss"][0]
    got = {"loss": np.array(float(out["loss"])), score: net.blobs[score].data.astype(np.float64)}
    for name, blobs in net.params.items():
        for i, b in enumerate(blobs):
            got[f"{name}[{i}].diff"] = b.diff.astype(np.float64)
    return got


def check_one(name: str, device: int, iters: int, rtol: float) -> dict:
    """The checks of one net (run in its own process, so its memory is its own)."""
    caffe = import_caffe()
    path, size, batch = NETS[name]
    config = load_config(str(ROOT / path), ["data.root=null", "data.mean=0", "init.weights=null"])
    config.model.num_classes = config.model.num_classes or 2  # HeLa's: foreground and background
    caffe.set_device(device)
    caffe.set_mode_gpu()
    used0, total = cuda_mem_used_mib()
    with tempfile.TemporaryDirectory() as tmp:
        caffe.set_mode_cpu()
        solver, net_path = input_solver(config, size, batch, Path(tmp), base_lr=1e-4)
        net = caffe.Net(str(net_path), caffe.TEST)
        net.share_with(solver.net)
        for blob in ("data", "label"):
            net.blobs[blob].data[...] = solver.net.blobs[blob].data
        t = time.perf_counter()
        cpu = forward_backward(net)
        cpu_s = time.perf_counter() - t
        caffe.set_mode_gpu()
        forward_backward(net)  # warm-up
        t = time.perf_counter()
        gpu = forward_backward(net)
        gpu_s = time.perf_counter() - t
        diffs = {k: rel_diff(gpu[k], cpu[k]) for k in cpu}
        worst = max(diffs, key=diffs.get)
        del net
        solver.step(1)  # warm-up: allocations, cuBLAS handles
        t = time.perf_counter()
        solver.step(iters)
        iter_s = (time.perf_counter() - t) / iters
        used, _ = cuda_mem_used_mib()
    return {"net": path, "input": [batch, config.model.input_channels, size, size],
            "loss_cpu": float(cpu["loss"]), "loss_gpu": float(gpu["loss"]),
            "max_rel_diff": diffs[worst], "worst_array": worst, "arrays_compared": len(diffs),
            "agree": bool(diffs[worst] <= rtol),
            "cpu_forward_backward_s": round(cpu_s, 3), "gpu_forward_backward_s": round(gpu_s, 4),
            "gpu_train_iters": iters, "gpu_train_iter_s": round(iter_s, 4),
            "gpu_mem_used_mib": used, "gpu_mem_net_mib": used - used0, "gpu_mem_total_mib": total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--nets", default="demo,fcn32")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one net, JSON on stdout
    args = ap.parse_args()
    if args.one:
        print(json.dumps(check_one(args.one, args.device, args.iters, args.rtol)))
        return 0
    ok, probe = gpu_available(args.device)
    caffe = import_caffe()
    report = {"probe": probe, "caffe": os.path.dirname(caffe.__file__), "python": sys.version.split()[0],
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "nets": {}}
    if ok:
        for name in args.nets.split(","):
            proc = subprocess.run([sys.executable, __file__, "--one", name, "--device", str(args.device),
                                   "--iters", str(args.iters), "--rtol", str(args.rtol)],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                report["nets"][name] = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                report["nets"][name] = {"error": f"exit {proc.returncode}", "log": tail}
    report["ok"] = ok and bool(report["nets"]) and all(r.get("agree") for r in report["nets"].values())
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
