"""Benchmark fcnseg's nets on this machine and print JSON.

For one config and input size, each padding mode (`--pads`, default 100 and minimal) gets: forward ms,
training-iteration seconds, MACs and FLOPs per iteration (3x the forward MACs, x2 for FLOPs, as in
the notes), achieved GFLOP/s, and the machine's numpy sgemm GFLOP/s (the limit). Optional parts:
`--launcher` (per-iteration time inside `fcnseg train` against a bare `solver.step` loop on the same
prototxt, over a synthetic LMDB), `--torch` (the same architecture in PyTorch eager on the CPU,
alternated with Caffe in the same run), `--import-mpix` (data-import pixels per second on a synthetic
16-bit stack), `--layers` (forward + backward seconds of the slowest layers, and each convolution's
GFLOP/s and percentage of the run's sgemm). Each run also reports the process's peak resident memory
(`peak_rss_mib`); for one net's peak, run one padding per process. FCNSEG_CAFFE_DNNL=0 runs Caffe's
own im2col+GEMM instead of oneDNN (scripts/caffe_patches/0004), FCNSEG_CAFFE_WINOGRAD=0 oneDNN's direct
kernels instead of Winograd on the 3x3 layers (0006), for a before/after on one build. GFLOP/s count the
direct convolution's FLOPs, so Winograd layers can exceed sgemm's rate.

Examples:
  .venv/bin/python scripts/bench.py --config configs/fcn32_1ch.yaml --size 500 --pads 100 --rounds 1
  .venv/bin/python scripts/bench.py --config configs/fcn32_1ch.yaml --size 256 --iters 3
  .venv/bin/python scripts/bench.py --config configs/demo_hela.yaml --size 256 --batch 4 --launcher
Keep the machine quiet while it runs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fcnseg.caffe_env import import_caffe
from fcnseg.config import load_config
from fcnseg.nets import body
from fcnseg.solver import solver_param


def sgemm_gflops(n: int = 2048, reps: int = 5) -> float:
    """numpy float32 matmul throughput: the practical ceiling for im2col+GEMM convolution."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def layer_macs(net) -> dict:
    """Forward multiply-accumulates of each Convolution/Deconvolution layer, from the blob shapes."""
    macs = {}
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type not in ("Convolution", "Deconvolution"):
            continue
        w = net.params[name][0].data.shape  # (out, in/group, kh, kw) or deconv (in, out/group, kh, kw)
        top = net.blobs[net.top_names[name][0]].data.shape
        bottom = net.blobs[net.bottom_names[name][0]].data.shape
        per_position = w[1] * w[2] * w[3]
        macs[name] = int(np.prod(top if layer.type == "Convolution" else bottom)) * per_position
    return macs


def forward_macs(net) -> int:
    """Multiply-accumulates of one forward pass, from the blob shapes of a loaded net."""
    return sum(layer_macs(net).values())


def input_solver(config, size: int, batch: int, workdir: Path, base_lr: float = 1e-12):
    """An SGD solver over `config`'s net with Input layers (data, label) filled with seeded random values.

    Writes its prototxts into `workdir`; the caller picks the mode (CPU/GPU) before calling. Returns
    (solver, net prototxt path).
    """
    caffe = import_caffe()
    caffe.set_random_seed(0)
    n = caffe.NetSpec()
    c = config.model.input_channels
    n.data, n.label = caffe.layers.Input(shape=[dict(dim=[batch, c, size, size]),
                                                dict(dim=[batch, 1, size, size])], ntop=2)
    score = body(n, n.data, config.model)
    n.loss = caffe.layers.SoftmaxWithLoss(score, n.label, loss_param=dict(ignore_label=255, normalize=True))
    net_path = workdir / f"bench_{config.model.pad}.prototxt"
    net_path.write_text(str(n.to_proto()))
    sp = solver_param(config, 1, str(net_path))
    sp.base_lr, sp.type = base_lr, "SGD"
    sp_path = workdir / f"bench_{config.model.pad}_solver.prototxt"
    sp_path.write_text(str(sp))
    solver = caffe.get_solver(str(sp_path))
    rng = np.random.default_rng(0)
    solver.net.blobs["data"].data[...] = rng.uniform(-1, 1, solver.net.blobs["data"].data.shape)
    solver.net.blobs["label"].data[...] = rng.integers(0, config.model.num_classes, (batch, 1, size, size))
    return solver, net_path


def bench_net(config, size: int, batch: int, iters: int, workdir: Path, sgemm: float = 0.0) -> dict:
    """Forward ms and training-iteration seconds of `config` on random input of size x size."""
    import_caffe().set_mode_cpu()
    solver, _ = input_solver(config, size, batch, workdir)
    solver.step(1)  # warm-up (allocations)
    fwd = min(_timed(solver.net.forward) for _ in range(iters))
    step = min(_timed(lambda: solver.step(1)) for _ in range(iters))
    macs = forward_macs(solver.net)
    first = next(name for name, layer in zip(solver.net._layer_names, solver.net.layers) if layer.type == "Convolution")
    conv1 = solver.net.blobs[solver.net.top_names[first][0]].data.shape  # conv1_1 (enc1_1 in a U-Net)
    layers = layer_times(solver.net, sgemm) if LAYER_TIMES else {}
    return {**({"layer_seconds": layers} if layers else {}), "pad": config.model.pad,
            "forward_ms": round(fwd * 1e3, 1), "train_iter_s": round(step, 3),
            "forward_gmac": round(macs / 1e9, 2), "train_gflop": round(6 * macs / 1e9, 1),
            "train_gflops_per_s": round(6 * macs / step / 1e9, 1), "conv1_1_hw": list(conv1[2:]),
            "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> int:
    """This process's peak resident memory so far (MiB). It never goes down, so measure one net per
    process (`--pads 100 --rounds 1`) for that net's peak."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


LAYER_TIMES = False  # set by --layers


def layer_times(net, sgemm: float, top: int = 12) -> dict:
    """Forward + backward seconds of the slowest layers (one pass each, after the warm-up), and for
    every convolution its GFLOP/s (3 x forward MACs x 2, as for the whole net) and the percentage of
    the run's sgemm that is."""
    times = {}
    for i, name in enumerate(net._layer_names):
        t = time.perf_counter()
        net._forward(i, i)
        times[name] = time.perf_counter() - t
    for i in reversed(range(len(net.layers))):
        name = net._layer_names[i]
        t = time.perf_counter()
        net._backward(i, i)
        times[name] += time.perf_counter() - t
    total = sum(times.values())
    slowest = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    convs = {name: {"s": round(times[name], 4), "gflops": round(6 * macs / times[name] / 1e9, 1),
                    "pct_of_sgemm": round(100 * 6 * macs / times[name] / 1e9 / sgemm, 1)}
             for name, macs in layer_macs(net).items()}
    return {"total": round(total, 3), **{k: round(v, 3) for k, v in slowest}, "convolutions": convs}


def bench_torch(config, size: int, batch: int, iters: int) -> dict:
    """The same FCN architecture in PyTorch eager (CPU): training-iteration seconds."""
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    m = config.model
    pad1 = 1 if m.pad == "minimal" else m.pad
    layers, cin = [], m.input_channels
    convs, chans = (2, 2, 3, 3, 3), (64, 128, 256, 512, 512)
    for s in range(m.stages):
        for i in range(convs[s]):
            layers += [nn.Conv2d(cin, chans[s], 3, padding=pad1 if (s, i) == (0, 0) else 1), nn.ReLU(True)]
            cin = chans[s]
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    layers += [nn.Conv2d(cin, m.fc_channels, 7, padding=3 if m.pad == "minimal" else 0), nn.ReLU(True),
               nn.Conv2d(m.fc_channels, m.fc_channels, 1), nn.ReLU(True),
               nn.Conv2d(m.fc_channels, m.num_classes, 1)]
    f = 2 ** m.stages
    up = nn.ConvTranspose2d(m.num_classes, m.num_classes, 2 * f, f, groups=m.num_classes, bias=False)
    up.weight.requires_grad_(False)
    body = nn.Sequential(*layers)
    opt = torch.optim.SGD(body.parameters(), lr=1e-12, momentum=0.9)
    x = torch.rand(batch, m.input_channels, size, size)
    y = torch.randint(0, m.num_classes, (batch, size, size))

    def step():
        opt.zero_grad()
        out = up(body(x))[:, :, :size, :size]
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
    step()
    return {"torch_train_iter_s": round(min(_timed(step) for _ in range(iters)), 3),
            "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__}


def bench_launcher(config_path: str, size: int, iters: int, workdir: Path) -> dict:
    """Seconds per iteration inside `fcnseg train` against a bare solver.step loop, same prototxt."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_tiny_dataset  # noqa: PLC0415

    from fcnseg.train import train  # noqa: PLC0415
    data = write_tiny_dataset(workdir / "lmdb", n_train=8, n_val=2, size=size)
    config = load_config(config_path, [f"data.root={data}", f"solver.max_iter={iters + 1}",
                                       f"train.val_interval={10 ** 6}", f"train.snapshot_interval={10 ** 6}",
                                       "train.display_interval=1", "init.weights=null", "data.mean=0"])
    run = workdir / "run"
    t = time.time()
    train(config, run, force=True, out=lambda *_: None)
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "train"]
    # Steady state, as for the bare loop: from the end of iteration 1 (warm-up) to the last one.
    inside = (steps[-1]["elapsed"] - steps[0]["elapsed"]) / (steps[-1]["iter"] - steps[0]["iter"])
    caffe = import_caffe()
    solver = caffe.get_solver(str(run / ".solver.abs.prototxt"))
    solver.step(1)
    bare = _timed(lambda: solver.step(iters)) / iters
    return {"launcher_iter_s": round(inside, 3), "bare_step_iter_s": round(bare, 3),
            "launcher_overhead_pct": round(100 * (inside - bare) / bare, 1), "wall_s": round(time.time() - t, 1)}


def bench_import(workdir: Path, frames: int = 8, size: int = 512) -> dict:
    """Pixels per second of `fcnseg data import` on a synthetic 16-bit stack with instance masks."""
    import tifffile  # noqa: PLC0415

    from fcnseg.data import ImportOptions, import_dataset  # noqa: PLC0415
    rng = np.random.default_rng(0)
    images = rng.integers(30000, 36000, (frames, size, size), dtype=np.uint16)
    masks = (rng.random((frames, size, size)) > 0.9).astype(np.uint16) * 3
    tifffile.imwrite(workdir / "img.tif", images, photometric="minisblack")
    tifffile.imwrite(workdir / "msk.tif", masks, photometric="minisblack")
    options = ImportOptions.from_cli(binarize=True, tile=256, val="0")
    t = time.perf_counter()
    import_dataset(workdir / "img.tif", workdir / "msk.tif", workdir / "ds", options, progress=False)
    dt = time.perf_counter() - t
    return {"import_mpix_per_s": round(frames * size * size / dt / 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/fcn32_1ch.yaml")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--pads", default="100,minimal")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of Caffe (and PyTorch)")
    ap.add_argument("--torch", action="store_true", help="also time PyTorch eager, alternated")
    ap.add_argument("--launcher", action="store_true")
    ap.add_argument("--import-mpix", action="store_true")
    ap.add_argument("--layers", action="store_true", help="time forward+backward of each layer")
    args = ap.parse_args()
    global LAYER_TIMES
    LAYER_TIMES = args.layers
    result = {"config": args.config, "size": args.size, "batch": args.batch, "cpus": os.cpu_count(),
              "sgemm_gflops": round(sgemm_gflops(), 1), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for r in range(args.rounds):
            for pad in args.pads.split(","):
                sets = ["data.root=null", "data.mean=0", f"model.pad={pad}", "init.weights=null"]
                cfg = load_config(args.config, sets)
                if cfg.model.num_classes is None:
                    cfg.model.num_classes = 2
                entry = {"round": r, **bench_net(cfg, args.size, args.batch, args.iters, tmp, result["sgemm_gflops"])}
                entry["pct_of_sgemm"] = round(100 * entry["train_gflops_per_s"] / result["sgemm_gflops"], 1)
                if args.torch:
                    entry.update(bench_torch(cfg, args.size, args.batch, args.iters))
                result["runs"].append(entry)
                print(json.dumps(entry), file=sys.stderr)
        if args.launcher:
            result["launcher"] = bench_launcher(args.config, args.size, 10, tmp)
        if args.import_mpix:
            result["import"] = bench_import(tmp)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
