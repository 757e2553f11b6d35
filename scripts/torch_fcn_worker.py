"""PyTorch eager twin of fcnseg's FCN (VGG trunk + FCN-32s head) for timing training iterations on a GPU.

Run by scripts/gpu_device_check.py with the GPU machine's own Python (the one that has torch), never with
fcnseg's: it needs torch alone. It builds the net, then answers one JSON line per command read on stdin:
  `steps N`  N SGD iterations (forward, loss, backward, update), CUDA synchronised around them:
             {"iters": N, "s_per_iter": ...}
  `mem`      {"max_allocated_mib": ..., "max_reserved_mib": ...} (PyTorch's caching allocator)
  `quit`     exits.
The first line it prints says what it built: {"ready": true, "torch": VERSION, "device": NAME, ...}.

The architecture is fcnseg's for `model.arch: fcn32s` (configs/fcn32_1ch.yaml): conv1_1 padded by --pad,
every other 3x3 convolution by 1, max pooling 2x2/2 rounding up as Caffe does, fc6 7x7 (pad 0) and fc7 1x1
with --fc channels, each followed by ReLU and dropout, a 1x1 score layer, a 2*stride deconvolution (no bias),
the crop that brings the output back to the input size, and softmax cross-entropy averaged over pixels.
Float32 throughout with TF32 off (cuBLAS and cuDNN), since Caffe's GEMMs are plain FP32.

    python3 scripts/torch_fcn_worker.py --size 500 --batch 1 --classes 2 --stages 5 --fc 4096 --pad 100
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn


def fcn(stages: int, fc: int, pad: int, classes: int, dropout: float, channels: int) -> tuple[nn.Module, nn.Module]:
    """(body, upsampling) of an FCN-32s-style net with `stages` VGG stages."""
    layers, cin = [], channels
    convs, chans = (2, 2, 3, 3, 3), (64, 128, 256, 512, 512)
    for s in range(stages):
        for i in range(convs[s]):
            layers += [nn.Conv2d(cin, chans[s], 3, padding=pad if (s, i) == (0, 0) else 1), nn.ReLU(inplace=True)]
            cin = chans[s]
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    layers += [nn.Conv2d(cin, fc, 7), nn.ReLU(inplace=True), nn.Dropout(dropout),
               nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout(dropout),
               nn.Conv2d(fc, classes, 1)]
    stride = 2 ** stages
    up = nn.ConvTranspose2d(classes, classes, 2 * stride, stride, bias=False)
    up.weight.requires_grad_(False)  # FCN's upsampling is fixed (lr_mult 0)
    return nn.Sequential(*layers), up


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--stages", type=int, default=5)
    ap.add_argument("--fc", type=int, default=4096)
    ap.add_argument("--pad", type=int, default=100)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--crop", type=int, default=19, help="offset of the crop after upsampling (Caffe's coord_map)")
    ap.add_argument("--device", type=int, default=0)
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    dev = torch.device("cuda", args.device)
    body, up = fcn(args.stages, args.fc, args.pad, args.classes, args.dropout, args.channels)
    body, up = body.to(dev).train(), up.to(dev)
    opt = torch.optim.SGD(body.parameters(), lr=1e-4, momentum=0.99, weight_decay=5e-4)
    x = torch.rand(args.batch, args.channels, args.size, args.size, device=dev) * 2 - 1
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=dev)
    c, n = args.crop, args.size

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = up(body(x))[:, :, c:c + n, c:c + n]
        nn.functional.cross_entropy(out, y).backward()
        opt.step()

    step()  # warm-up: cuDNN algorithm choice, allocations
    torch.cuda.synchronize(dev)
    out_shape = list(up(body(x)).shape)
    print(json.dumps({"ready": True, "torch": torch.__version__, "cuda": torch.version.cuda,
                      "cudnn": torch.backends.cudnn.version(), "device": torch.cuda.get_device_name(dev),
                      "upsampled_shape": out_shape, "tf32": False}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "steps":
            iters = int(words[1])
            torch.cuda.synchronize(dev)
            t = time.perf_counter()
            for _ in range(iters):
                step()
            torch.cuda.synchronize(dev)
            reply = {"iters": iters, "s_per_iter": (time.perf_counter() - t) / iters}
        elif words[0] == "mem":
            reply = {"max_allocated_mib": torch.cuda.max_memory_allocated(dev) >> 20,
                     "max_reserved_mib": torch.cuda.max_memory_reserved(dev) >> 20}
        else:
            reply = {"error": f"unknown command {words[0]!r}"}
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
