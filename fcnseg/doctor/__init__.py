"""`fcnseg doctor`: read a train_val (and solver) prototxt, a caffemodel, or a training log, and say in plain
words why it cannot learn.

Prototxts are parsed with caffe_pb2 (no net is instantiated); geometry comes from `fcnseg.geometry`,
caffemodel blob shapes from `fcnseg.caffemodel`, LMDB records from `fcnseg.dataset`.
Each check returns `Finding`s: a severity (error / warning / info), a stable code (docs/doctor.md: "Doctor findings"),
the layer(s), one sentence on what is wrong and one on how to fix it. Severity answers "as written, will
this fail?": what something outside the files can still supply (a transplant, bilinear surgery) is a warning
that says what must happen before the first step; an error is what nothing can supply.

The package, by topic: `facts` (Finding, thresholds, what a net is made of), `sources` (reading files),
`checks_geometry`, `checks_head`, `checks_init`, `checks_solver`, `checks_data`, `log` (Caffe/fcnseg training
logs), `report` (text and JSON). This module holds the entry points:
- `diagnose_files(train_val, solver=None, weights=None, data_check=False)` for someone else's files;
- `diagnose_config(config, data_check=False)` for the nets fcnseg builds from a config (`doctor --config`);
- `diagnose_definition(definition, data_check=False)` for nets already built (`fcnseg train` before training);
- `diagnose(net, solver, ...)` for parsed protos;
- `diagnose_log(log, findings=None)` for a training log (Caffe glog output or fcnseg's metrics.jsonl);
- `format_findings(findings)` / `findings_json(findings)` / `has_errors(findings)` to report them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from .. import integrity
from ..errors import ConfigError, DataError, WeightsError
from ..geometry import SOURCES
from ..inputs import expected_input, input_mean_mismatch
from ..resolve import MEAN_FROM_CONFIG, Resolved, resolve
from ..runs import build_definition
from .checks_data import check_data, check_housekeeping, check_mean, majority_share
from .checks_geometry import check_geometry
from .checks_head import check_head_classes
from .checks_norm import check_batchnorm
from .checks_init import check_from_scratch, check_initialisation, check_upsampling, check_weights, expected_shape
from .checks_solver import check_batch, check_solver, loss_mode, solver_type
from .facts import SEVERITIES, Finding, NetFacts
from .log import curve_findings, read_log, with_causes
from .report import by_severity, findings_json, format_findings, has_errors
from .sources import DataSource, caffemodel_shapes, read_net, read_solver

__all__ = ["SEVERITIES", "Finding", "diagnose", "diagnose_config", "diagnose_files", "diagnose_log", "read_log",
           "findings_json", "format_findings", "has_errors", "read_net", "read_solver", "caffemodel_shapes", "NetFacts",
           "expected_shape"]

def diagnose(net, solver=None, *, weights: Optional[str | Path] = None, input_channels: Optional[int] = None,
             image_size: Optional[tuple[int, int]] = None, val_samples: Optional[int] = None,
             data_check: bool = False, base_dirs: Sequence[str | Path] = (".",),
             check_snapshot_dir: bool = True, loader: str = "caffe") -> list[Finding]:
    """All checks on a parsed NetParameter (train_val) and optional SolverParameter.

    `input_channels`, `image_size` (H, W) and `val_samples` are what the caller knows besides the files;
    whatever is missing is read from the Data layers' LMDBs when they exist (first record, entry count).
    `base_dirs` are where relative paths (LMDBs, mean file, snapshot folder) are looked up. `loader` says
    who copies `weights` into the net: "caffe" (caffe train --weights) or "fcnseg" (fcnseg train).
    Returns the findings, errors first. Never raises for problems in the files: they become findings.
    """
    return _diagnose(NetFacts.build(net), solver, weights=weights, input_channels=input_channels,
                     image_size=image_size, val_samples=val_samples, data_check=data_check, base_dirs=base_dirs,
                     check_snapshot_dir=check_snapshot_dir, loader=loader)


def _diagnose(n: NetFacts, solver, *, weights, input_channels, image_size, val_samples, data_check, base_dirs,
              check_snapshot_dir, loader) -> list[Finding]:
    """`diagnose` on the facts `n` of the net, built once by the caller (channels still unknown)."""
    base_dirs = tuple(Path(b) for b in base_dirs)
    weights = Path(weights) if weights else None
    sources = {phase: tuple(DataSource.peek(layer, base_dirs) if layer is not None else None
                            for layer in n.data_layers(phase)) for phase in ("TRAIN", "TEST")}
    first = sources["TRAIN"][0].first if sources["TRAIN"][0] is not None else None
    n.with_input_channels(input_channels or (first[0] if first else None) or declared_channels(n))
    image_size = image_size or declared_size(n) or (tuple(first[1:]) if first else None)
    image_layer, _ = n.data_layers("TRAIN")
    batch = image_layer.data_param.batch_size if image_layer is not None else _declared_batch(n)
    val_source = sources["TEST"][0]
    val_count = val_samples or (val_source.count if val_source is not None else None)

    shapes, problem = None, ""
    if weights is not None:
        integrity.check(weights)  # a damaged copy of fcnseg's own weights is refused, not diagnosed
        try:
            shapes = caffemodel_shapes(weights)
        except WeightsError as exc:
            problem = str(exc)
    first_conv = next((layer for layer in n.layers("Convolution") if n.input_blob in layer.bottom), None)
    weights_channels = None
    if shapes and first_conv is not None and len(shapes.get(first_conv.name, [()])[0]) > 1:
        weights_channels = shapes[first_conv.name][0][1]

    findings = check_geometry(n)
    findings += check_head_classes(n)
    findings += check_upsampling(n, shapes)
    if weights is not None:
        findings += check_weights(n, weights, shapes, problem, loader)
    if any(layer.type.endswith("Loss") for layer in n.train.layer):  # a net that trains, not a deploy net
        findings += check_initialisation(n, shapes, weights is not None)
        findings += check_from_scratch(n, solver_type(solver) if solver is not None else None,
                                       weights is not None)
        findings += check_batch(batch, solver)
        findings += check_batchnorm(n, shapes, batch, solver)
        if solver is not None:
            findings += check_solver(n, solver, image_size, batch)
    findings += check_mean(n, base_dirs, weights_channels)
    if data_check:
        findings += check_data(n, sources)
    findings += check_housekeeping(n, solver, val_count, base_dirs, check_snapshot_dir)
    return by_severity(findings)


def declared_channels(n: NetFacts) -> Optional[int]:
    """Channels the prototxt itself states: net-level input_shape/input_dim, or one mean_value each."""
    net = n.train
    if len(net.input_shape) and len(net.input_shape[0].dim) > 1:
        return int(net.input_shape[0].dim[1])
    if len(net.input_dim) >= 2:
        return int(net.input_dim[1])
    image, _ = n.data_layers("TRAIN")
    if image is not None and len(image.transform_param.mean_value) > 1:
        return len(image.transform_param.mean_value)
    return _python_mean_channels(n)


def _python_mean_channels(n: NetFacts) -> Optional[int]:
    """Channels a Python data layer states by its param_str's 'mean' (the reference passes the BGR mean as a
    tuple: 3 values for 3 channels). Read as text, never evaluated."""
    for layer in n.train.layer:
        if layer.type == "Python" and n.input_blob in layer.top:
            found = re.search(r"""['"]mean['"]\s*:\s*(\(([^)]*)\)|\[([^\]]*)\]|[-+0-9.eE]+)""",
                              layer.python_param.param_str)
            if found:
                inner = found.group(2) if found.group(2) is not None else found.group(3)
                return 1 if inner is None else len([v for v in inner.split(",") if v.strip()])
    return None


def declared_size(n: NetFacts) -> Optional[tuple[int, int]]:
    for layer in n.train.layer:
        if layer.type == "Input" and layer.input_param.shape and len(layer.input_param.shape[0].dim) == 4:
            return tuple(int(d) for d in layer.input_param.shape[0].dim[2:])
        if layer.type in SOURCES and layer.transform_param.crop_size:
            return (layer.transform_param.crop_size,) * 2
    return None


def _declared_batch(n: NetFacts) -> Optional[int]:
    for layer in n.train.layer:
        if layer.type == "Input" and layer.input_param.shape and len(layer.input_param.shape[0].dim):
            return int(layer.input_param.shape[0].dim[0])
    return None


def diagnose_files(train_val: str | Path, solver: Optional[str | Path] = None,
                   weights: Optional[str | Path] = None, data_check: bool = False) -> list[Finding]:
    """Checks on a train_val prototxt (and solver prototxt, and caffemodel) as a user has them.

    Relative paths inside the files are looked up from the current folder, then from the prototxt's.
    Raises ConfigError when a prototxt is missing or malformed (naming the file and line).
    """
    return _diagnose_files(NetFacts.build(read_net(train_val)), train_val, solver, weights, data_check)


def _diagnose_files(n: NetFacts, train_val: str | Path, solver: Optional[str | Path], weights: Optional[str | Path],
                    data_check: bool) -> list[Finding]:
    """`diagnose_files` on the facts `n` of the net read from `train_val`."""
    solver_param = read_solver(solver) if solver is not None else None
    bases = [Path("."), Path(train_val).parent]
    if solver is not None:
        bases.append(Path(solver).parent)
    return _diagnose(n, solver_param, weights=weights, input_channels=None, image_size=None, val_samples=None,
                     data_check=data_check, base_dirs=bases, check_snapshot_dir=True, loader="caffe")


def diagnose_config(config, data_check: bool = False) -> list[Finding]:
    """The same checks on the nets fcnseg builds from `config` (as loaded; `fcnseg doctor --config`).

    Resolves the config (`resolve`) and checks what `diagnose_definition` checks. A data.root that is not a
    dataset becomes a `dataset` error when the config names its classes itself. Raises ConfigError /
    DataError for a config that cannot be built at all.
    """
    try:
        resolved = resolve(config)
    except DataError as exc:
        if config.model.num_classes is None:
            raise
        finding = Finding("error", "dataset", str(exc), "Import the data with `fcnseg data import`, or fix data.root.")
        # the nets as the config stands, without the dataset: the rest of the findings still hold
        source = MEAN_FROM_CONFIG if not isinstance(config.data.mean, str) else "unresolved"
        unresolved = build_definition(Resolved(config, None, source))
        return by_severity([finding] + diagnose_definition(unresolved, data_check))
    return diagnose_definition(build_definition(resolved), data_check)


def diagnose_definition(definition, data_check: bool = False) -> list[Finding]:
    """The checks on a `runs.Definition` (the nets built from a resolved config; train runs this before training).

    Adds what the config knows to the nets' own facts: init.weights, input channels, the dataset's tile size
    and val count, and (`weights-mean`) a numeric data.mean far from what the weights expect.
    """
    config, info = definition.resolved.config, definition.resolved.dataset
    tile, val = (info.tile, info.split("val").samples) if info is not None else (None, None)
    weights = config.init.weights
    findings = diagnose(definition.train_val, definition.solver, weights=weights,
                        input_channels=config.model.input_channels,
                        image_size=(int(tile), int(tile)) if tile else None, val_samples=val,
                        data_check=data_check, check_snapshot_dir=False, loader="fcnseg")
    if weights and definition.resolved.mean_source == MEAN_FROM_CONFIG:
        findings += check_input_mean(config, weights)
    return by_severity(findings)


def check_input_mean(config, weights: str | Path) -> list[Finding]:
    """`weights-mean`: a numeric data.mean more than inputs.MEAN_TOLERANCE grey levels from what the weights expect
    (the gray mean M recorded by `fcnseg weights convert`, or the mean of the run a snapshot came from), or
    a data.scale that differs: the pretrained filters see shifted input. [] when the weights say nothing
    or cannot be read (weights-unreadable says so)."""
    try:
        mismatch = input_mean_mismatch(config, weights)
    except (WeightsError, ConfigError):
        return []
    if mismatch is None:
        return []
    expected = expected_input(weights)
    return [Finding("warning", "weights-mean", mismatch + ".",
                    f"Set data.mean: {expected.mean:.6g} (or auto) and data.scale: {expected.scale:g}.")]


def diagnose_log(log: str | Path, train_val: Optional[str | Path] = None, solver: Optional[str | Path] = None,
                 weights: Optional[str | Path] = None, data_check: bool = False) -> list[Finding]:
    """What a training log shows (Caffe glog output or fcnseg's metrics.jsonl), then the prototxt findings.

    With `train_val` (and `solver`, `weights`), K, the loss normalisation and the image size come from the
    net, each curve finding names the prototxt findings that most likely explain it, and those findings
    follow; with `data_check` the val labels also say which class a stuck accuracy stands for. Returns curve
    findings first (errors first), then the prototxt's. Raises ConfigError for a missing or unreadable log or prototxt.
    """
    curve = read_log(log)
    if train_val is None:
        return by_severity(curve_findings(curve))
    n = NetFacts.build(read_net(train_val))
    net_findings = _diagnose_files(n, train_val, solver, weights, data_check)
    size = declared_size(n)
    summed = loss_mode(n.loss) in ("BATCH_SIZE", "NONE") if n.loss is not None else None
    majority = None
    if data_check:  # reading every val label is what --data-check is for
        _, label = n.data_layers("TEST")
        bases = [Path("."), Path(train_val).parent]
        majority = majority_share(DataSource.peek(label, bases) if label is not None else None, n.ignore_label)
    found = curve_findings(curve, n.num_classes, summed, size[0] * size[1] if size else None, majority)
    return by_severity(with_causes(found, net_findings)) + net_findings
