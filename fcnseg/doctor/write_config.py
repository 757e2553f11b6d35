"""`fcnseg doctor TRAIN_VAL [SOLVER] --write-config OUT.yaml`: the fcnseg config that builds the net a
hand-written Caffe FCN meant, with what doctor finds wrong corrected.

`net_choices(net)` reads the prototxt structurally (layer names may differ from VGG16's): data layers, a
VGG16 trunk cut after 1-5 pooling stages (3x3 stride-1 convolutions of VGG16's widths under ReLU, 2x2 max
pools), fc6 (7x7) and fc7 (1x1) with optional dropout, then one FCN head (score convolutions, upsampling
Deconvolutions, Crops, Eltwise SUM fusions of pool skips) and one SoftmaxWithLoss. The first layer that
does not fit raises NotExpressible, which `write_config` turns into the one-line refusal.

`write_config(train_val, solver, out, weights, data_root)`:
1. runs doctor on the files (`diagnose_files`), so every finding is known;
2. reads the choices the files make (FCN variant from the skips, stages, fc width, dropout, conv1_1
   padding, classes, input channels, batch and iter_size, mean and scale, ignore label, loss
   normalisation; solver type, rates, momentum, weight decay, policy, iterations, snapshot interval);
3. corrects what doctor calls wrong: fillers (fcnseg writes its own), upsampling and crop (derived from
   model.stages by make-proto), an effective step outside the recipe (the recipe's instead), head
   classes (one K); every finding gets a YAML comment beside its key (`# was: ..., now: ..., because:
   ...` where something changed, `# doctor CODE: kept ...` where the config keeps the choice);
   without weights, moves the net to the from-scratch recipe (`_scratch_recipe`): keeps arch and stages,
   adds BatchNorm (model.norm: batch) to a net deeper than recipes.SCRATCH_MAX_STAGES and takes the
   recipe's solver, and says so in one line (`scratch_summary`) with what keeping the original needs;
   with a dataset (`data_root`), classes, input channels and ignore label are the dataset's;
4. validates the result with `fcnseg.config`, runs doctor on the nets it builds (`diagnose_config`), and
   refuses (writing nothing) when an error remains that no config key can fix (weights that do not fit
   the net, say);
5. writes the YAML atomically and returns the printed lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import __version__, recipes, vgg16
from ..config import Config, validate_config
from ..dataset import read_dataset, read_dataset_yaml
from ..errors import ConfigError
from ..files import write_atomic
from ..geometry import conv_geometry, phase_net
from . import caffemodel_shapes, declared_channels, declared_size, diagnose_config, diagnose_files
from ..caffemodel import convert_hint
from .checks_solver import loss_mode, solver_type
from .facts import ADAPTIVE_SOLVERS, Finding, NetFacts
from .fcn_structure import FcnStructure, NotExpressible, read_structure, skip_source
from .sources import DataSource, read_net, read_solver

POLICIES = ("fixed", "step", "multistep", "poly", "exp", "inv")
SOLVERS = ("SGD", "Nesterov", "Adam")


@dataclass
class Choices:
    """What the prototxt and solver say, as config keys, with the comments that go beside them."""

    values: dict = field(default_factory=dict)     # (section, key) -> value
    comments: dict = field(default_factory=dict)   # (section, key) -> [comment, ...]
    header: list = field(default_factory=list)     # comments for the top of the file

    def set(self, section: str, key: str, value: Any, comment: Optional[str] = None) -> None:
        self.values[(section, key)] = value
        if comment:
            self.note(section, key, comment)

    def note(self, section: str, key: str, comment: str) -> None:
        self.comments.setdefault((section, key), []).append(comment)

    def change(self, section: str, key: str, was: str, now: Any, because: str) -> None:
        """Set `key` to `now` with the comment `was: ..., now: ..., because: ...` (`kept` when equal)."""
        if str(was) == _text(now):
            self.set(section, key, now, f"kept ({because})")
        else:
            self.set(section, key, now, f"was: {was}, now: {_text(now)}, because: {because}")


def _text(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# ---- the choices -------------------------------------------------------------------------------------

def _python_mean(n: NetFacts) -> Optional[list[float]]:
    """The 'mean' a Python data layer's param_str states (read as text, never evaluated)."""
    for layer in n.train.layer:
        if layer.type == "Python" and n.input_blob in layer.top:
            found = re.search(r"""['"]mean['"]\s*:\s*(?:\(([^)]*)\)|\[([^\]]*)\]|([-+0-9.eE]+))""",
                              layer.python_param.param_str)
            if found:
                inner = next(g for g in found.groups() if g is not None)
                try:
                    return [float(v) for v in inner.split(",") if v.strip()]
                except ValueError:
                    return None
    return None


def _channels(n: NetFacts, facts: FcnStructure, bases, weights_shapes) -> tuple[int, str]:

    declared = declared_channels(n)
    if declared:
        return declared, "stated by the prototxt"
    if facts.image_layer is not None and facts.image_layer.type == "Data":
        src = DataSource.peek(facts.image_layer, bases)
        if src.first:
            return src.first[0], f"the first Datum of {src.found}"
    first = facts.stage_convs[0][0].name
    if weights_shapes and len(weights_shapes.get(first, [()])[0]) > 1:
        return weights_shapes[first][0][1], f"{first} of the weights"
    return 1, "assumed (the prototxt, its LMDB and the weights do not say)"


def _fmt(x: float) -> str:
    return f"{x:g}"


def _read_net(n: NetFacts, facts: FcnStructure, c: Choices, findings: list[Finding], bases, weights_shapes) -> None:
    codes = {f.code: f for f in findings}
    stride = 2 ** facts.stages
    arch = ("fcn32s", "fcn16s", "fcn8s")[facts.head.skips]
    ups = ", ".join(f"'{layer.name}' kernel {conv_geometry(layer)[0]} stride {conv_geometry(layer)[1]}"
                    for layer, *_ in facts.head.upsampling)
    geometry = [codes[k] for k in ("upsampling-stride", "crop-offset", "crop-uncomputable") if k in codes]
    c.set("model", "arch", arch, f"{('no skip fusions', 'one skip fusion', 'two skip fusions')[facts.head.skips]} "
                                 "in the head")
    if geometry:
        c.note("model", "arch", f"was: {ups or 'no upsampling'}, now: upsampling and crop offsets derived by "
                                f"make-proto from model.stages ({stride}x in total), because: doctor "
                                + "; ".join(f"{f.code}: {_first_sentence(f.message)}" for f in geometry))
    short = [i + 1 for i, convs in enumerate(facts.stage_convs) if len(convs) < vgg16.STAGE_CONVS[i]]
    if short:
        names = ", ".join(f"stage {s}: {len(facts.stage_convs[s - 1])} of {vgg16.STAGE_CONVS[s - 1]}" for s in short)
        c.change("model", "stages", f"{facts.stages} stages with fewer convolutions than VGG16 ({names})",
                 facts.stages, "fcnseg builds whole VGG16 stages (conv<s>_1 ... as VGG16 names them, so pretrained "
                               "VGG16 weights transplant by name)")
    else:
        c.set("model", "stages", facts.stages, f"pool{facts.stages} ends the trunk: stride {stride}")
    # classes: the score convolutions (and the dataset, when given) must agree
    ks = facts.score_classes
    fr = next((name for name, _ in ks.items() if _score_reads_fc7(n, name, facts)), next(iter(ks)))
    k = ks[fr]
    if "head-classes" in codes or len(set(ks.values())) > 1 or any(
            out != k for _, _, out in facts.head.upsampling):
        why = _first_sentence(codes["head-classes"].message) if "head-classes" in codes else "one K everywhere"
        c.change("model", "num_classes", f"head layers disagree ({_head_widths(facts)})", k,
                 f"doctor head-classes: {why}; the score layer '{fr}' sets K")
    else:
        c.set("model", "num_classes", k, f"num_output of '{fr}'")
    channels, source = _channels(n, facts, bases, weights_shapes)
    c.set("model", "input_channels", channels, source)
    c.set("model", "fc_channels", facts.fc6.convolution_param.num_output)
    d6, d7 = facts.dropout
    if d6 != d7:
        c.change("model", "dropout", f"fc6 {_fmt(d6)}, fc7 {_fmt(d7)}", max(d6, d7),
                 "model.dropout sets both; the larger is kept")
    else:
        c.set("model", "dropout", d6)
    fc6_pad = conv_geometry(facts.fc6)[2]
    if facts.conv1_pad == 1 and fc6_pad == 3:
        c.set("model", "pad", "minimal", "conv1_1 pad 1, fc6 pad 3")
    elif fc6_pad != 0:
        c.change("model", "pad", f"conv1_1 pad {facts.conv1_pad}, fc6 pad {fc6_pad}", facts.conv1_pad,
                 "fcnseg pads fc6 by 0 (or by 3 with pad: minimal, which pads conv1_1 by 1)")
    else:
        c.set("model", "pad", facts.conv1_pad, "conv1_1's padding")
    c.set("model", "at_once", facts.at_once)
    norms = n.layers("BatchNorm")
    if norms:
        c.set("model", "norm", "batch", f"{len(norms)} BatchNorm layers (fcnseg puts one after every trunk "
              "convolution and fc6/fc7)")


def _score_reads_fc7(n: NetFacts, name: str, facts: FcnStructure) -> bool:
    layer = next(layer for layer, _ in facts.head.scores if layer.name == name)
    return skip_source(n, layer, {}, facts) == "fc7"


def _head_widths(facts: FcnStructure) -> str:
    parts = [f"{name} {k}" for name, k in facts.score_classes.items()]
    parts += [f"{layer.name} {out}" for layer, _, out in facts.head.upsampling]
    return ", ".join(parts)


def _first_sentence(text: str) -> str:
    head = re.split(r"(?<=[.])\s+(?=[A-Z])", text, maxsplit=1)[0]
    return head.rstrip(".:")


def _num(x: float) -> float:
    """A float read from a protobuf float field, without float32 noise (0.1, not 0.10000000149011612)."""
    return float(f"{x:.7g}")


def _read_data(n: NetFacts, facts: FcnStructure, c: Choices, findings: list[Finding]) -> None:
    codes = {f.code: f for f in findings}
    layer = facts.image_layer
    batch = 1
    if layer is not None and layer.type in ("Data", "ImageData", "HDF5Data", "WindowData"):
        batch = {"Data": layer.data_param.batch_size, "ImageData": layer.image_data_param.batch_size,
                 "HDF5Data": layer.hdf5_data_param.batch_size,
                 "WindowData": layer.window_data_param.batch_size}[layer.type] or 1
    elif layer is not None and layer.type == "Input" and layer.input_param.shape:
        batch = int(layer.input_param.shape[0].dim[0]) or 1
    c.set("data", "batch_size", batch, f"batch_size of '{layer.name}'" if layer is not None else None)
    if "batch-one" in codes:
        c.note("data", "batch_size", "doctor batch-one (info): kept; raise it (equal-size tiles) or solver.iter_size "
                                     "for less noisy steps")
    t = layer.transform_param if layer is not None and layer.HasField("transform_param") else None
    python_mean = _python_mean(n)
    mean_findings = [codes[k] for k in ("mean-file", "mean-channels") if k in codes]
    because = "; ".join(f"doctor {f.code}: {_first_sentence(f.message)}" for f in mean_findings)
    if t is not None and t.mean_file:
        c.change("data", "mean", f"mean_file {t.mean_file}", "auto",
                 "fcnseg subtracts one value, recorded in the dataset: import with `fcnseg data import ... "
                 f"--mean-file {Path(t.mean_file).name}` and auto keeps your mean"
                 + (f"; {because}" if because else ""))
    elif t is not None and len(t.mean_value):
        values = list(t.mean_value)
        if len(set(values)) == 1 or len(values) == 1:
            c.set("data", "mean", _num(values[0]), "mean_value")
        else:
            c.change("data", "mean", f"mean_value {', '.join(map(_fmt, values))}", _num(sum(values) / len(values)),
                     "fcnseg subtracts one value from every channel; their average is kept")
    elif python_mean:
        if len(set(python_mean)) == 1:
            c.set("data", "mean", python_mean[0], "the Python data layer's mean")
        else:
            c.change("data", "mean", f"the Python layer's mean ({', '.join(map(_fmt, python_mean))})",
                     round(sum(python_mean) / len(python_mean), 4),
                     "fcnseg subtracts one value from every channel; their average is kept")
    else:
        c.set("data", "mean", 0.0, "the prototxt subtracts no mean")
    c.set("data", "scale", _num(t.scale) if t is not None and t.HasField("scale") else 1.0)
    ignore = n.ignore_label
    if ignore is None:
        c.change("data", "ignore_label", "none", 255, "fcnseg labels padding pixels with it; no class uses it")
    else:
        c.set("data", "ignore_label", ignore, f"ignore_label of '{facts.loss.name}'")
    mode = loss_mode(facts.loss)
    c.set("loss", "normalize", mode in ("VALID", "FULL"), f"normalization {mode}")


def _read_solver(solver, c: Choices) -> None:
    kind = solver_type(solver)
    if kind not in SOLVERS:
        raise NotExpressible(f"solver type {kind}: fcnseg's solver.type is one of {', '.join(SOLVERS)}")
    c.set("solver", "type", kind)
    c.set("solver", "base_lr", _num(solver.base_lr))
    policy = solver.lr_policy or "fixed"
    if policy not in POLICIES:
        raise NotExpressible(f"lr_policy {policy}: fcnseg's solver.lr_policy is one of {', '.join(POLICIES)}")
    c.set("solver", "lr_policy", policy)
    for key in ("gamma", "power"):
        if solver.HasField(key):
            c.set("solver", key, _num(getattr(solver, key)))
    if solver.HasField("stepsize"):
        c.set("solver", "stepsize", int(solver.stepsize))
    if len(solver.stepvalue):
        c.set("solver", "stepvalue", [int(v) for v in solver.stepvalue])
    c.set("solver", "momentum", _num(solver.momentum))
    if kind == "Adam" and solver.HasField("momentum2"):
        c.set("solver", "momentum2", _num(solver.momentum2))
    c.set("solver", "weight_decay", _num(solver.weight_decay))
    c.set("solver", "iter_size", int(solver.iter_size or 1))
    c.set("solver", "max_iter", int(solver.max_iter or 1))
    if solver.HasField("clip_gradients") and solver.clip_gradients > 0:
        c.set("solver", "clip_gradients", _num(solver.clip_gradients))
    if solver.HasField("random_seed") and solver.random_seed >= 0:
        c.set("solver", "random_seed", int(solver.random_seed))
    if solver.snapshot > 0:
        c.set("train", "snapshot_interval", int(solver.snapshot), "snapshot")
    if 0 < solver.test_interval <= solver.max_iter:
        c.set("train", "val_interval", int(solver.test_interval), "test_interval")
    elif solver.test_interval > 0:
        c.change("train", "val_interval", f"test_interval {solver.test_interval} (never within max_iter)",
                 max(1, min(500, int(solver.max_iter or 500))), "fcnseg validates during training to pick the best "
                 "weights")
    if solver.display > 0:
        c.set("train", "display_interval", int(solver.display), "display")


def _correct(n: NetFacts, facts: FcnStructure, c: Choices, findings: list[Finding], solver, weights,
             image_size) -> None:
    """Apply what doctor says is wrong (fillers, the step) and note every finding beside a key."""
    codes = {f.code: f for f in findings}
    init = [codes[k] for k in ("zero-init", "upsampling-filler", "upsampling-group", "upsampling-learns") if k in codes]
    if init:
        c.note("init", "weights", "was: " + "; ".join(f"{f.code} on {f.layer or 'the net'}" for f in init)
               + ", now: fcnseg's fillers (msra trunk, zero score layers, fixed bilinear upsampling with group K), "
               "because: doctor " + "; ".join(f"{f.code}: {_first_sentence(f.message)}" for f in init))
    scratch = codes.get("from-scratch")
    step = codes.get("solver-step")
    step_wrong = step is not None and step.severity in ("error", "warning")
    had_norm = c.values.get(("model", "norm")) == "batch"
    recipe = _scratch_recipe(facts, c) if weights is None else None
    added_norm = recipe is not None and not had_norm and c.values.get(("model", "norm")) == "batch"
    if recipe is not None and (step_wrong or solver is None or added_norm
                               or c.values[("solver", "type")] not in ADAPTIVE_SOLVERS):
        r = recipe
        was_type = c.values.get(("solver", "type"), "SGD")
        lr, momentum = (_num(solver.base_lr), _num(solver.momentum)) if solver is not None else \
            (recipes.SUMMED.base_lr, recipes.SUMMED.momentum)  # no solver file: fcnseg's defaults
        old = f"{was_type} base_lr {_fmt(lr)} momentum {_fmt(momentum)}, normalize " \
              f"{_text(c.values[('loss', 'normalize')])}" + ("" if solver is not None else " (no solver given)")
        because = (f"doctor solver-step ({step.severity}): {_first_sentence(step.message)}; " if step_wrong else "") + \
            f"without weights the from-scratch recipe ({r.solver} {r.lr}, normalized loss" + \
            (", BatchNorm" if r is recipes.SCRATCH_NORM else "") + ") is the one measured to learn"
        c.change("solver", "type", old, r.solver, because)
        c.change("solver", "base_lr", _fmt(lr), r.base_lr, "the from-scratch recipe")
        c.change("solver", "momentum", _fmt(momentum), r.momentum, "the from-scratch recipe")
        if not c.values[("loss", "normalize")]:
            c.change("loss", "normalize", "false", True, "the from-scratch recipe's loss is normalized")
        if c.values[("solver", "type")] != "Adam":
            c.values.pop(("solver", "momentum2"), None)
        if added_norm:
            _batchnorm_schedule_and_pad(c)
    elif solver is not None and step_wrong:
        old = (f"{c.values[('solver', 'type')]} base_lr {_fmt(_num(solver.base_lr))} momentum "
               f"{_fmt(_num(solver.momentum))}, normalize {_text(c.values[('loss', 'normalize')])}")
        because = f"doctor solver-step ({step.severity}): {_first_sentence(step.message)}"
        if c.values[("loss", "normalize")]:
            r = recipes.NORMALIZED
            c.change("solver", "type", old, r.solver, because + f"; the normalized-loss recipe is {r.solver} {r.lr} "
                     f"at {r.momentum:g}")
            c.change("solver", "base_lr", _fmt(_num(solver.base_lr)), r.base_lr, "the normalized-loss recipe")
            c.change("solver", "momentum", _fmt(_num(solver.momentum)), r.momentum, "the normalized-loss recipe")
        else:
            r = recipes.SUMMED
            pixels = image_size[0] * image_size[1] if image_size else recipes.REFERENCE_PIXELS
            lr = float(f"{r.base_lr * recipes.REFERENCE_PIXELS / pixels:.2g}")
            c.change("solver", "type", old, r.solver, because + f"; the summed-loss recipe is {r.solver} {r.lr} at "
                     f"{r.momentum:g} on ~500x500 images, scaled to {pixels:,} pixels")
            c.change("solver", "base_lr", _fmt(_num(solver.base_lr)), lr, "the summed-loss recipe")
            c.change("solver", "momentum", _fmt(_num(solver.momentum)), r.momentum, "the summed-loss recipe")
        if c.values[("solver", "type")] != "Adam":
            c.values.pop(("solver", "momentum2"), None)
    elif step is not None:
        c.note("solver", "base_lr", f"doctor solver-step ({step.severity}): kept; {_first_sentence(step.message)}")
    if scratch is not None and weights is None:
        adam = c.values.get(("solver", "type")) == "Adam"
        norm = ", BatchNorm after every convolution" if c.values.get(("model", "norm")) == "batch" else ""
        c.note("init", "weights", f"doctor from-scratch ({scratch.severity}): was: no pretrained weights and "
               f"{'no variance-scaled fillers' if scratch.severity == 'error' else 'a non-adaptive solver'}, now: "
               f"msra fillers on every trunk layer{norm}{', Adam on a normalized loss' if adam else ''} "
               f"({2 ** facts.stages}x stride), because: that is the from-scratch setup measured to learn; "
               f"with pretrained weights ({convert_hint(c.values[('model', 'input_channels')])}) set init.weights "
               "instead")
    elif scratch is not None:
        c.note("init", "weights", "doctor from-scratch: the weights given are used")
    if "snapshot-dir" in codes:
        c.note("train", "snapshot_interval", "was: snapshot_prefix " + solver.snapshot_prefix + ", now: snapshots in "
               "the run folder, because: doctor snapshot-dir: " + _first_sentence(codes["snapshot-dir"].message))
    handled = {"upsampling-stride", "crop-offset", "crop-uncomputable", "zero-init", "upsampling-filler",
               "upsampling-group", "upsampling-learns", "from-scratch", "solver-step", "snapshot-dir", "batch-one",
               "mean-file", "mean-channels", "head-classes"}
    for f in findings:
        if f.code not in handled:
            key = ("data", "root") if f.code.startswith(("data-", "label-", "class-", "ignore-", "val-")) \
                else ("init", "weights")
            c.note(*key, f"doctor {f.code} ({f.severity}): not a config key; {_first_sentence(f.fix)}")


def _scratch_recipe(facts: FcnStructure, c: Choices) -> recipes.Recipe:
    """The from-scratch recipe for the net without weights: a net deeper than recipes.SCRATCH_MAX_STAGES gets
    BatchNorm after every convolution (model.norm: batch, which trains at any depth) and SCRATCH_NORM; a net
    that has BatchNorm already SCRATCH_NORM; a shallower one SCRATCH. Sets model.norm with its comment."""
    if c.values.get(("model", "norm")) == "batch":
        return recipes.SCRATCH_NORM
    if facts.stages <= recipes.SCRATCH_MAX_STAGES:
        return recipes.SCRATCH
    c.change("model", "norm", "none (no normalisation layers)", "batch",
             f"no pretrained weights, and {facts.stages} pooling stages (stride {2 ** facts.stages}) go beyond the "
             f"{recipes.SCRATCH_MAX_STAGES} that train from scratch without normalisation; BatchNorm + Scale after "
             "every convolution trains from scratch at any depth (the HeLa demo's recipe)")
    return recipes.SCRATCH_NORM


def _added_norm(c: Choices) -> bool:
    """Whether `_scratch_recipe` added BatchNorm to a net that had none."""
    return any(t.startswith("was:") for t in c.comments.get(("model", "norm"), []))


def _batchnorm_schedule_and_pad(c: Choices) -> None:
    """What comes with BatchNorm added for training from scratch: the rate decaying linearly to 0 at max_iter
    (poly), and conv1_1 padded by 1 (pad: minimal) instead of a large pad whose zeros would make up most of what
    the first BatchNorms average over on small tiles."""
    policy = c.values.get(("solver", "lr_policy"), "fixed")
    if policy != "poly" or c.values.get(("solver", "power")) != recipes.SCRATCH_NORM_POWER:
        c.change("solver", "lr_policy", policy, "poly", "the from-scratch recipe with BatchNorm decays the rate to 0 "
                 "at solver.max_iter (configs/demo_hela.yaml): the last iterations settle the noisy from-scratch "
                 "curve and the running averages of BatchNorm that validation and inference use")
        c.change("solver", "power", _text(c.values.get(("solver", "power"))), recipes.SCRATCH_NORM_POWER,
                 "a linear decay")
        for key in ("gamma", "stepsize", "stepvalue"):  # parameters of the policy it replaces
            if c.values.pop(("solver", key), None) is not None:
                c.comments.pop(("solver", key), None)
    pad = c.values.get(("model", "pad"))
    if pad != "minimal":
        c.change("model", "pad", pad, "minimal", "from scratch nothing needs the reference's large conv1_1 pad, "
                 "whose zeros would be most of what the first BatchNorms average over on small tiles; minimal pads "
                 "conv1_1 by 1 and fc6 by 3 (inputs: multiples of the stride, which fcnseg infer pads to)")


def _batchnorm_batch(c: Choices, tile: Optional[int]) -> None:
    """With BatchNorm added and a dataset of equal-size tiles, SCRATCH_NORM_BATCH tiles per step instead of one."""
    if _added_norm(c) and tile and c.values.get(("data", "batch_size")) == 1:
        c.change("data", "batch_size", 1, recipes.SCRATCH_NORM_BATCH, "BatchNorm over one image per step has "
                 "statistics that jump from tile to tile, and validation uses their running averages (doctor "
                 f"batchnorm-batch-one); the dataset's {tile}-pixel tiles batch")


def scratch_summary(config: Config, c: Choices, solver) -> Optional[str]:
    """The one line on what --write-config changed to make a weightless net train from scratch, and what
    keeping the original would need; None when nothing was changed for that."""
    changed = [key for key in (("model", "norm"), ("solver", "type"), ("solver", "base_lr"), ("loss", "normalize"))
               if any(t.startswith("was:") for t in c.comments.get(key, []))]
    if not changed:
        return None
    m, s = config.model, config.solver
    norm = "model.norm: batch, " if ("model", "norm") in changed else ""
    with_norm = [(sec, key) for sec, key in (("model", "pad"), ("data", "batch_size")) if ("model", "norm") in changed
                 and any(t.startswith("was:") for t in c.comments.get((sec, key), []))]
    norm += "".join(f"{sec}.{key}: {_text(c.values[(sec, key)])}, " for sec, key in with_norm)
    schedule = f", {s.lr_policy} power {_fmt(s.power)}" if s.lr_policy == "poly" else f", lr_policy {s.lr_policy}"
    loss = "a normalized" if config.loss.normalize else "a summed"
    original = "no BatchNorm, " if norm else ""
    original += f"{solver_type(solver)} {_fmt(_num(solver.base_lr))}" if solver is not None else \
        "fcnseg's default solver"
    return (f"no --weights: kept {m.arch} with {m.stages} stages and moved it to the from-scratch recipe ({norm}"
            f"{s.type} base_lr {_fmt(s.base_lr)} momentum {_fmt(s.momentum)}{schedule} on {loss} loss); keeping the "
            "original "
            f"({original}) needs pretrained weights: "
            f"{convert_hint(m.input_channels)}, then --write-config again with --weights W")


# ---- writing ----------------------------------------------------------------------------------------

def _scalar(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"  # YAML 1.1 reads 1e-10 as a string; 1.0e-10 is a number
        return text
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("...").strip()


def render(config: Config, c: Choices) -> str:
    """The YAML text of `config`, every key of every section, with `c`'s comments beside their keys."""
    lines = [f"# {line}" for line in c.header]
    for section, keys in config.to_dict().items():
        lines.append(f"{section}:")
        for key, value in keys.items():
            comments = c.comments.get((section, key), [])
            text = f"  {key}: {_scalar(value)}"
            if comments:
                text += "  # " + " | ".join(comments)
            lines.append(text)
    return "\n".join(lines) + "\n"


@dataclass
class WrittenConfig:
    path: Path
    config: Config
    changes: list  # "section.key: comment" lines
    remaining: list  # doctor findings on the written config (no errors)
    summary: Optional[str] = None  # the one line on a move to the from-scratch recipe (scratch_summary)

    def lines(self) -> list[str]:
        out = [f"{key}: {text}" for key, text in self.changes]
        out += [self.summary] if self.summary else []
        out += [f"doctor on the written config: {f.severity} {f.code}: {_first_sentence(f.message)}"
                for f in self.remaining if f.severity != "info"]
        out.append(f"wrote {self.path}")
        return out


def write_config(train_val: str | Path, solver_path: Optional[str | Path], out: str | Path,
                 weights: Optional[str | Path] = None, data_root: Optional[str | Path] = None) -> WrittenConfig:
    """Write the corrected fcnseg config for `train_val` (and `solver_path`) to `out` (see the module doc).

    Raises NotExpressible (one line naming the first layer that does not map), ConfigError when a
    remaining doctor error has no config fix, DataError for a bad `data_root`.
    """

    train_val, out = Path(train_val), Path(out)
    n = NetFacts.build(phase_net(read_net(train_val), "TRAIN"))
    solver = read_solver(solver_path) if solver_path is not None else None
    try:
        facts = read_structure(n)
    except NotExpressible as exc:
        raise NotExpressible(f"{train_val}: {exc}; --write-config reads VGG16-trunk FCN-32s/16s/8s nets only (a "
                             "U-Net or another trunk: write the config by hand, e.g. from configs/demo_hela.yaml)"
                             ) from None
    findings = diagnose_files(train_val, solver_path, weights)
    bases = [Path("."), train_val.parent] + ([Path(solver_path).parent] if solver_path else [])
    shapes = None
    if weights is not None:
        try:
            shapes = caffemodel_shapes(weights)
        except ConfigError:
            shapes = None
    c = Choices()
    c.header = [f"Written by `fcnseg doctor --write-config` (fcnseg {__version__}) from {train_val}"
                + (f" and {solver_path}" if solver_path else "") + ".",
                "Keys read from those files; '# was: ..., now: ..., because: ...' marks a correction doctor asked",
                "for, '# doctor CODE: kept ...' a finding the config keeps. Check: fcnseg doctor --config THIS.yaml"]
    _read_net(n, facts, c, findings, bases, shapes)
    _read_data(n, facts, c, findings)
    if solver is not None:
        _read_solver(solver, c)
    image_size = declared_size(n)
    if image_size is None and facts.image_layer is not None and facts.image_layer.type == "Data":
        src = DataSource.peek(facts.image_layer, bases)
        image_size = tuple(src.first[1:]) if src.first else None
    _correct(n, facts, c, findings, solver, weights, image_size)
    if weights is not None:
        c.set("init", "weights", str(Path(weights).resolve()), "--weights")
    if data_root is not None:
        info = read_dataset(data_root)
        c.set("data", "root", str(Path(data_root).resolve()), "--data")
        k = c.values[("model", "num_classes")]
        if info.num_classes != k:
            c.change("model", "num_classes", f"{k} (the prototxt's head)", info.num_classes,
                     f"the dataset {data_root} holds {info.num_classes} classes")
        if c.values[("model", "input_channels")] != info.input_channels:
            c.change("model", "input_channels", c.values[("model", "input_channels")], info.input_channels,
                     f"the dataset {data_root} holds {info.input_channels}-channel images")
        else:
            c.comments[("model", "input_channels")] = ["the dataset's"]
        _batchnorm_batch(c, info.tile)
        if c.values[("data", "ignore_label")] != info.ignore_label:
            c.change("data", "ignore_label", c.values[("data", "ignore_label")], info.ignore_label,
                     f"the dataset {data_root} marks pixels of no class with it")
        mean_file = (read_dataset_yaml(data_root).get("source") or {}).get("mean_file")
        if mean_file and c.values.get(("data", "mean")) == "auto":
            c.note("data", "mean", f"the dataset records {Path(mean_file['path']).name}'s mean "
                                   f"{mean_file['stored_mean']}")
    raw: dict = {}
    for (section, key), value in c.values.items():
        raw.setdefault(section, {})[key] = value
    config = validate_config(raw, f"the config written from {train_val}")
    remaining = diagnose_config(config)
    errors = [f for f in remaining if f.severity == "error"]
    if errors:
        f = errors[0]
        raise ConfigError(f"{train_val}: the corrected config still fails doctor ({f.code}: "
                          f"{_first_sentence(f.message)}); {f.fix.split('. ')[0].rstrip('.')}, then run "
                          "--write-config again" + (" with --weights" if weights is None and f.code == "from-scratch"
                                                    else ""))
    text = render(config, c)
    validate_config(yaml.safe_load(text), str(out))  # the text reads back as the same config
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda part: Path(part).write_text(text))
    changes = [(f"{s}.{k}", " | ".join(v)) for (s, k), v in c.comments.items()
               if any(t.startswith(("was:", "doctor")) or ", now:" in t for t in v)]
    return WrittenConfig(out, config, changes, remaining, scratch_summary(config, c, solver) if weights is None
                         else None)

