"""Fixture generator: the FCN reference's own train nets and solvers (shelhamer/fcn.berkeleyvision.org), written
out as prototxt text from the facts published there, so doctor can be tested on them without copying files.

Facts reproduced (voc-fcn32s/16s/8s and siftflow-fcn16s `net.py`, `solver.prototxt`, `solve.py`):
- data from a Python layer (`voc_layers.SBDDSegDataLayer`, or `siftflow_layers.SIFTFlowSegDataLayer` with three
  tops data/sem/geo), the BGR mean in its param_str;
- VGG16 trunk, conv1_1 padded by 100, every convolution with two params (lr_mult 1 / decay_mult 1, lr_mult 2 /
  decay_mult 0) and no filler at all; fc6 kernel 7 pad 0, fc7 kernel 1, both 4096, Dropout 0.5 in place;
- score layers 1×1 with num_output K and the same two params, no filler;
- upsampling Deconvolutions without filler and without group, bias_term false, param { lr_mult: 0 } (solve.py
  fills them with `surgery.interp` after `copy_from` of the trained trunk);
- Crop offsets computed by caffe.coord_map: 19 (32s); 5, 27 (16s); 5, 9, 31 (8s);
- SoftmaxWithLoss normalize: false, ignore_label 255;
- solver: fixed lr 1e-10 (32s), 1e-12 (16s), 1e-14 (8s), momentum 0.99, weight_decay 5e-4, iter_size 1,
  test_interval 999999999, snapshot_prefix "snapshot/train" (no `weights`: solve.py copies them).

`channels=1` writes the same net for a one-channel dataset (one mean value in the Python layer's param_str).
"""
from __future__ import annotations

from pathlib import Path

BGR_MEAN = (104.00699, 116.66877, 122.67892)
GRAY_MEAN = (114.45,)
LR = {"32s": 1e-10, "16s": 1e-12, "8s": 1e-14}
TRUNK = [(1, [64, 64]), (2, [128, 128]), (3, [256, 256, 256]), (4, [512, 512, 512]), (5, [512, 512, 512])]
TWO_PARAMS = "param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }"


def _layer(name, kind, bottoms, tops, body=""):
    lines = [f'layer {{\n  name: "{name}"\n  type: "{kind}"']
    lines += [f'  bottom: "{b}"' for b in bottoms]
    lines += [f'  top: "{t}"' for t in tops]
    if body:
        lines.append("  " + body)
    return "\n".join(lines) + "\n}"


def _conv(name, bottom, n, k=3, pad=1):
    return _layer(name, "Convolution", [bottom], [name],
                  f"{TWO_PARAMS} convolution_param {{ num_output: {n} pad: {pad} kernel_size: {k} stride: 1 }}")


def _relu(name, blob):
    return _layer(name, "ReLU", [blob], [blob])


def _upscore(name, bottom, k_classes, kernel, stride):
    return _layer(name, "Deconvolution", [bottom], [name],
                  f"param {{ lr_mult: 0 }} convolution_param {{ num_output: {k_classes} bias_term: false "
                  f"kernel_size: {kernel} stride: {stride} }}")


def _crop(name, bottom, reference, offset):
    return _layer(name, "Crop", [bottom, reference], [name], f"crop_param {{ axis: 2 offset: {offset} }}")


def _score(name, bottom, k_classes):
    return _layer(name, "Convolution", [bottom], [name],
                  f"{TWO_PARAMS} convolution_param {{ num_output: {k_classes} pad: 0 kernel_size: 1 }}")


def _head(arch, k, suffix=""):
    """The score/upsampling/crop/fuse layers of an FCN head; returns (layers, final score blob)."""
    s = suffix
    out = [_score(f"score_fr{s}", "fc7", k)]
    if arch == "32s":
        out += [_upscore(f"upscore{s}", f"score_fr{s}", k, 64, 32), _crop(f"score{s}", f"upscore{s}", "data", 19)]
        return out, f"score{s}"
    out += [_upscore(f"upscore2{s}", f"score_fr{s}", k, 4, 2), _score(f"score_pool4{s}", "pool4", k),
            _crop(f"score_pool4{s}c", f"score_pool4{s}", f"upscore2{s}", 5),
            _layer(f"fuse_pool4{s}", "Eltwise", [f"upscore2{s}", f"score_pool4{s}c"], [f"fuse_pool4{s}"],
                   "eltwise_param { operation: SUM }")]
    if arch == "16s":
        out += [_upscore(f"upscore16{s}", f"fuse_pool4{s}", k, 32, 16),
                _crop(f"score{s}", f"upscore16{s}", "data", 27)]
        return out, f"score{s}"
    out += [_upscore(f"upscore_pool4{s}", f"fuse_pool4{s}", k, 4, 2), _score(f"score_pool3{s}", "pool3", k),
            _crop(f"score_pool3{s}c", f"score_pool3{s}", f"upscore_pool4{s}", 9),
            _layer(f"fuse_pool3{s}", "Eltwise", [f"upscore_pool4{s}", f"score_pool3{s}c"], [f"fuse_pool3{s}"],
                   "eltwise_param { operation: SUM }"),
            _upscore(f"upscore8{s}", f"fuse_pool3{s}", k, 16, 8), _crop(f"score{s}", f"upscore8{s}", "data", 31)]
    return out, f"score{s}"


def _trunk():
    layers, bottom = [], "data"
    for stage, widths in TRUNK:
        for i, n in enumerate(widths, 1):
            name = f"conv{stage}_{i}"
            layers += [_conv(name, bottom, n, pad=100 if name == "conv1_1" else 1), _relu(f"relu{stage}_{i}", name)]
            bottom = name
        layers.append(_layer(f"pool{stage}", "Pooling", [bottom], [f"pool{stage}"],
                             "pooling_param { pool: MAX kernel_size: 2 stride: 2 }"))
        bottom = f"pool{stage}"
    for name, k, pad, src in (("fc6", 7, 0, "pool5"), ("fc7", 1, 0, "fc6")):
        layers += [_conv(name, src, 4096, k, pad), _relu(f"relu{name[2]}", name),
                   _layer(f"drop{name[2]}", "Dropout", [name], [name], "dropout_param { dropout_ratio: 0.5 }")]
    return layers


def _loss(name, score, label):
    return _layer(name, "SoftmaxWithLoss", [score, label], [name],
                  "loss_param { ignore_label: 255 normalize: false }")


def voc_net(arch: str, channels: int = 3, lmdb: bool = False) -> str:
    """voc-fcn{arch}/train.prototxt (arch '32s', '16s' or '8s'); 21 classes. `lmdb` swaps the Python layer
    for two LMDB Data layers (the layout people run with `caffe train`, where no script does surgery)."""
    mean = BGR_MEAN if channels == 3 else GRAY_MEAN
    params = {"sbdd_dir": "../data/sbdd/dataset", "seed": 1337, "split": "train", "mean": mean}
    data = _layer("data", "Python", [], ["data", "label"],
                  f"python_param {{ module: \"voc_layers\" layer: \"SBDDSegDataLayer\" param_str: \"{params}\" }}")
    if lmdb:
        data = "\n".join(_layer(top, "Data", [], [top], f"data_param {{ source: \"train_{top}_lmdb\" batch_size: 1 "
                                 "backend: LMDB }") for top in ("data", "label"))
    head, score = _head(arch, 21)
    return "\n".join([data, *_trunk(), *head, _loss("loss", score, "label")]) + "\n"


def siftflow_net(arch: str = "16s") -> str:
    """siftflow-fcn{arch}/trainval.prototxt: one trunk, two heads (33 semantic classes, 3 geometric)."""
    params = {"siftflow_dir": "../data/sift-flow", "split": "trainval", "seed": 1337}
    data = _layer("data", "Python", [], ["data", "sem", "geo"],
                  f"python_param {{ module: \"siftflow_layers\" layer: \"SIFTFlowSegDataLayer\" "
                  f"param_str: \"{params}\" }}")
    sem, sem_score = _head(arch, 33, "_sem")
    geo, geo_score = _head(arch, 3, "_geo")
    return "\n".join([data, *_trunk(), *sem, _loss("loss", sem_score, "sem"), *geo,
                      _loss("loss_geo", geo_score, "geo")]) + "\n"


def solver(arch: str, train_net: str = "train.prototxt", test_net: str = "val.prototxt") -> str:
    """The reference solver.prototxt of an FCN-{arch} (the 16s/8s ones fine-tune the previous stage)."""
    return (f'train_net: "{train_net}"\ntest_net: "{test_net}"\ntest_iter: 736\ntest_interval: 999999999\n'
            f'display: 20\naverage_loss: 20\nlr_policy: "fixed"\nbase_lr: {LR[arch]:g}\nmomentum: 0.99\n'
            'iter_size: 1\nmax_iter: 100000\nweight_decay: 0.0005\nsnapshot: 4000\n'
            'snapshot_prefix: "snapshot/train"\ntest_initialization: false\n')


def write_reference(folder: Path, name: str, channels: int = 3) -> tuple[Path, Path]:
    """Write `name` ('voc-fcn32s', 'voc-fcn16s', 'voc-fcn8s', 'siftflow-fcn16s') into folder/name/;
    returns (train net path, solver path)."""
    out = Path(folder) / name
    out.mkdir(parents=True, exist_ok=True)
    arch = name.rsplit("fcn", 1)[1]
    if name.startswith("siftflow"):
        net_file, text = "trainval.prototxt", siftflow_net(arch)
        solve = solver(arch, "trainval.prototxt", "test.prototxt")
    else:
        net_file, text, solve = "train.prototxt", voc_net(arch, channels), solver(arch)
    (out / net_file).write_text(text)
    (out / "solver.prototxt").write_text(solve)
    return out / net_file, out / "solver.prototxt"


def vgg16_shapes(channels: int = 3, fc_as_conv: bool = True) -> dict[str, tuple[int, ...]]:
    """Weight shapes of the VGG16 trunk the reference copies from (vgg16fc: fc6/fc7 already convolutions)."""
    shapes, cin = {}, channels
    for stage, widths in TRUNK:
        for i, n in enumerate(widths, 1):
            shapes[f"conv{stage}_{i}"] = (n, cin, 3, 3)
            cin = n
    shapes["fc6"] = (4096, 512, 7, 7) if fc_as_conv else (4096, 25088)
    shapes["fc7"] = (4096, 4096, 1, 1) if fc_as_conv else (4096, 4096)
    return shapes
